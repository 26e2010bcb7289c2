"""The receiving side of flowprobe's (and nProbe's) ZeroMQ export: what ntopng does, in Python.

    from engine.subscribe import Subscriber
    with Subscriber(["tcp://127.0.0.1:5556"]) as sub:            # connect, like ntopng -i tcp://..
        for msg in sub.messages(timeout=5):
            print(msg.topic, msg.header.msg_id, msg.payload)

``Subscriber(endpoints, bind=False, secret_key=None)``: one SUB socket per endpoint, subscribed to
ntopng's nine topics; ``bind=True`` (or an endpoint ending in ``c``, as ntopng's ``tcp://*:5556c``)
binds instead of connecting. ``secret_key`` (Z85) makes it a CURVE server, as ntopng with
``--zmq-encryption``. Each message is decompressed and decoded: TLV flows to a list of dicts keyed
by numeric id (or string label), JSON to Python objects, msgpack (flowprobe's schema) to a dict.
``names(flow)`` turns numeric keys into registry names.
"""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import zmq

from engine.export._encode import decode_tlv
from engine.ntopng import MAX_PAYLOAD, TOPICS, DecodeError, Header, parse_header, split_endpoint


@dataclass
class Message:
    topic: str
    header: Header
    payload: Any           # flows: list of dicts; event: dict; ...
    raw_size: int          # payload frame length as received
    format: str            # "tlv", "json", "msgpack"


def decode_payload(header: Header, payload: bytes, keys: Optional[dict] = None
                   ) -> tuple[Any, str]:
    """(decoded payload, format name) as ntopng would read it; ``keys`` ({id: name}) names the
    numeric keys of TLV flows."""
    if len(payload) > MAX_PAYLOAD:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    data = payload
    if header.compressed:
        try:
            data = zlib.decompress(payload)
        except zlib.error as e:
            raise DecodeError(f"uncompress error: {e}") from None
    elif header.length != 36 and payload[:1] == b"\0":       # legacy: marker byte + zlib
        data = zlib.decompress(payload[1:])
    first = header.topic[:1]
    if header.tlv and first in ("f", "c"):
        return decode_tlv(data, keys), "tlv"
    if header.length == 24 and header.version == 3 or header.length == 28 and header.version == 3:
        return decode_tlv(data, keys), "tlv"
    lead = data.lstrip()[:1]
    if lead in (b"{", b"[") or not lead:
        try:
            return json.loads(data), "json"
        except ValueError as e:
            raise DecodeError(f"invalid JSON: {e}") from None
    try:
        import msgpack
        return msgpack.unpackb(data, raw=False, strict_map_key=False), "msgpack"
    except Exception as e:
        raise DecodeError(f"neither JSON nor msgpack: {e}") from None


def flows_of(msg: Message) -> list[dict]:
    """The flows of a `flow` message as a list of dicts, whatever the format."""
    p = msg.payload
    if msg.format == "msgpack" and isinstance(p, dict):
        return list(p.get("flows", []))
    if isinstance(p, dict):
        return [p]
    return list(p)


_ID_NAMES: Optional[dict] = None


def id_names() -> dict:
    """{numeric id: registry name} of every field with an id (built once)."""
    global _ID_NAMES
    if _ID_NAMES is None:
        from engine.export.templates import PROBE_FIELDS
        from engine.fields import BY_V9
        table = {p.v9: p.name for p in PROBE_FIELDS.values()}
        table.update({k: f.name for k, f in BY_V9.items()})
        _ID_NAMES = table
    return _ID_NAMES


def names(flow: dict) -> dict:
    """Numeric keys (ints or digit strings) replaced by registry names where known; values as sent
    (TLV six-bin vectors arrive as "a,b,c,d,e,f" text)."""
    by_id = id_names()
    out = {}
    for k, v in flow.items():
        if isinstance(k, str) and k.isdigit():
            k = int(k)
        out[by_id.get(k, k) if isinstance(k, int) else k] = v
    return out


class Subscriber:
    def __init__(self, endpoints, bind: bool = False, secret_key: Optional[str] = None,
                 topics=TOPICS, rcvhwm: int = 0, rcvbuf: int = 8388608, ctx=None,
                 names: bool = False):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        self.ctx = ctx or zmq.Context()
        self._own_ctx = ctx is None
        self.sockets = []
        self.poller = zmq.Poller()
        for ep in endpoints:
            ep, c_suffix = split_endpoint(ep)
            do_bind = bind or c_suffix
            s = self.ctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            if rcvbuf:
                s.setsockopt(zmq.RCVBUF, rcvbuf)
            if rcvhwm:
                s.setsockopt(zmq.RCVHWM, rcvhwm)
            if secret_key:
                sk = secret_key.encode() if isinstance(secret_key, str) else secret_key
                s.curve_server = True
                s.curve_secretkey = sk
                s.curve_publickey = zmq.curve_public(sk)
            for t in topics:
                s.setsockopt(zmq.SUBSCRIBE, t)
            if do_bind:
                s.bind(ep)
            else:
                s.connect(ep)
            self.sockets.append(s)
            self.poller.register(s, zmq.POLLIN)
        self.errors: list[str] = []
        self.keys = id_names() if names else None     # TLV flows keyed by name, not id

    def recv_raw(self, timeout: Optional[float] = None) -> Optional[tuple[bytes, bytes]]:
        """(header frame, payload frame) of the next message, or None on timeout."""
        events = dict(self.poller.poll(None if timeout is None else int(timeout * 1000)))
        for s in self.sockets:
            if s in events:
                frames = s.recv_multipart()
                if len(frames) != 2:
                    self.errors.append(f"message with {len(frames)} frames")
                    return frames[0], b"".join(frames[1:])
                return frames[0], frames[1]
        return None

    def recv(self, timeout: Optional[float] = None) -> Optional[Message]:
        raw = self.recv_raw(timeout)
        if raw is None:
            return None
        hdr, payload = raw
        h = parse_header(hdr)
        p, fmt = decode_payload(h, payload, self.keys)
        return Message(h.topic, h, p, len(payload), fmt)

    def messages(self, timeout: Optional[float] = None, idle: Optional[float] = None
                 ) -> Iterator[Message]:
        """Messages until ``timeout`` seconds in all, or ``idle`` seconds without one."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = idle
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return
                wait = left if wait is None else min(wait, left)
            m = self.recv(wait)
            if m is None:
                if idle is not None:
                    return
                continue
            yield m

    def close(self) -> None:
        for s in self.sockets:
            s.close(0)
        self.sockets = []
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
