"""Flows and probe statistics to ntopng over ZeroMQ (wire format: docs ntopng-zmq-protocol.md).

* Sockets: one XPUB per ``--zmq`` endpoint (up to 8; flows spread by flow hash), bound (pull mode,
  ntopng connects: ``ntopng -i tcp://PROBE:5556``) or, with ``--zmq-probe-mode``, connected to an
  ntopng that binds (``ntopng -i "tcp://*:5556c"``). XPUB with XPUB_NODROP and non-blocking sends:
  a full queue raises zmq.Again and the flows of that message are counted as dropped; XPUB also
  tells us about subscriptions, so flows sent while nobody subscribes are counted too.
* Frames: a 36-byte version-4 header (topic, flags 0x02 TLV / 0x04 zlib, uncompressed length at
  offset 20 BE and 24 LE, msg_id BE at 28, source_id LE at 32) and one payload <= 131072 bytes.
  One msg_id counter per endpoint stream (every topic), starting at 1.
* Formats: ``t`` nDPI TLV (numeric keys, narrowest widths), ``j`` JSON (numeric keys, or names
  with --json-labels), ``m`` msgpack (schema in docs/zmq-msgpack.md). Many flows per message: at
  most 255 in TLV and JSON, which ntopng counts in 8 bits.
* ``event`` messages (spec §8, every key, strings included) every --zmq-stats-interval seconds,
  the first before the first flow (ntopng counts exported flows from the first event it sees).
* CURVE: flowprobe is the CURVE client; --zmq-encryption-key is ntopng's public key.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import struct
import sys
import time
import uuid
import zlib
from typing import Optional

import numpy as np

from engine import __version__
from engine.errors import FlowprobeError
from engine.export import tlv
from engine.export.templates import COLLECTOR_FIELDS, TemplateError, parse_template

try:
    import zmq
except ImportError:          # pragma: no cover - pyzmq is a dependency
    zmq = None

MAX_PAYLOAD = 131072
# ntopng's TLV (and JSON) parser returns a message's flow count in 8 bits: a message of more
# flows is counted modulo 256 in its statistics (spec §5.3)
MAX_FLOWS_PER_MESSAGE = 255
MAX_ENDPOINTS = 8
HEADER = struct.Struct("<16sBBxx")       # topic, version, flags, padding: 20 bytes
FLAG_TLV = 0x02
FLAG_ZLIB = 0x04
MSG_VERSION = 4
MSGPACK_SCHEMA = "flowprobe.flows"
MSGPACK_SCHEMA_VERSION = 1
FORMATS = {"t": "tlv", "j": "json", "m": "msgpack", "tlv": "tlv", "json": "json",
           "msgpack": "msgpack"}


def header(topic: bytes, flags: int, uncompressed_len: int, msg_id: int, source_id: int) -> bytes:
    """The 36-byte v3 header, version byte 4 (spec §3.4/§3.6)."""
    return (HEADER.pack(topic, MSG_VERSION, flags) + struct.pack(">I", uncompressed_len)
            + struct.pack("<I", uncompressed_len) + struct.pack(">I", msg_id & 0xFFFFFFFF)
            + struct.pack("<I", source_id & 0xFFFFFFFF))


# --- keys --------------------------------------------------------------------------------------
def parse_curve_key(text: str) -> bytes:
    """A CURVE public key as the 40-character Z85 text zmq wants. Accepts Z85 (40 chars), the
    80-hex-digit form ntopng's interface page shows (hex of the Z85 text) and 64 hex digits (the
    raw 32 bytes). Raises ValueError with a readable message otherwise."""
    from zmq.utils import z85
    t = text.strip()
    if len(t) == 80 and all(c in "0123456789abcdefABCDEF" for c in t):
        t = bytes.fromhex(t).decode("ascii", errors="replace")
    elif len(t) == 64 and all(c in "0123456789abcdefABCDEF" for c in t):
        return z85.encode(bytes.fromhex(t))
    if len(t) != 40:
        raise ValueError(f"CURVE key must be 40 Z85 characters or 80 hex digits, got {len(text.strip())} "
                         "characters")
    try:
        raw = z85.decode(t.encode("ascii"))
    except Exception:
        raw = b""
    if len(raw) != 32 or z85.encode(raw) != t.encode("ascii"):
        raise ValueError("CURVE key is not valid Z85 text")
    return t.encode("ascii")


# --- encoders ------------------------------------------------------------------------------------
class FlowEncoder:
    """Records -> list of per-flow byte strings, and a list of those -> one payload."""

    def __init__(self, fmt: str, template, constants=(), labels: bool = False):
        self.fmt = fmt
        self.template = template
        self.constants = list(constants)
        self.labels = labels
        if fmt in ("tlv", "json"):
            # the C encoder; engine/export/tlv.py and json.dumps are its reference (tests)
            from engine.export._encode import Encoder
            from engine.fields import RECORD_DTYPE
            fields = template.fields
            self._c = Encoder(fields, RECORD_DTYPE, [tlv.field_key(f) for f in fields],
                              [str(tlv.field_key(f, labels)) for f in fields])
            if fmt == "tlv":
                self._suffix = tlv.RecordEncoder((), self.constants).suffix
            else:
                self._suffix = "".join(
                    f",{json.dumps(str(tlv.field_key(p, labels)))}:{json.dumps(v)}"
                    for p, v in self.constants).encode()
        elif fmt == "msgpack":
            import msgpack
            self._packer = msgpack.Packer(use_bin_type=True)

    def encode(self, records: np.ndarray) -> list[bytes]:
        if self.fmt == "tlv":
            return self._c.tlv(records, self._suffix)
        if self.fmt == "json":
            return self._c.json(records, self._suffix)
        from engine.fields import field_values
        fields = self.template.fields
        labels = self.labels or self.fmt == "msgpack"
        keys = [tlv.field_key(f, labels) for f in fields]
        consts = [(tlv.field_key(p, labels), v) for p, v in self.constants]
        cols = [field_values(f, records) for f in fields]
        rows = []
        for row in zip(*cols):
            d = {k: v for k, v in zip(keys, row) if v is not None}
            for k, v in consts:
                d[k] = v
            rows.append(d)
        if self.fmt == "json":
            dumps = json.JSONEncoder(separators=(",", ":")).encode
            return [dumps({str(k): v for k, v in d.items()}).encode() for d in rows]
        pack = self._packer.pack
        return [pack(d) for d in rows]

    def overhead(self, n: int) -> int:
        """Bytes a payload of n flows adds to the sum of their encodings."""
        if self.fmt == "tlv":
            return 2
        if self.fmt == "json":
            return 2 + max(n - 1, 0)
        return 64

    def payload(self, recs: list[bytes]) -> bytes:
        if self.fmt == "tlv":
            return tlv.PREAMBLE + b"".join(recs)
        if self.fmt == "json":
            return b"[" + b",".join(recs) + b"]"
        import msgpack
        n = len(recs)
        if n < 16:
            arr = bytes((0x90 | n,))
        elif n < 65536:
            arr = b"\xdc" + struct.pack(">H", n)
        else:
            arr = b"\xdd" + struct.pack(">I", n)
        head = msgpack.packb({"schema": MSGPACK_SCHEMA, "version": MSGPACK_SCHEMA_VERSION})
        # a 3-entry map: schema, version, flows
        return b"\x83" + head[1:] + msgpack.packb("flows") + arr + b"".join(recs)


# --- endpoints --------------------------------------------------------------------------------
class Endpoint:
    """One XPUB socket and its message stream (own msg_id counter)."""

    def __init__(self, ctx, url: str, probe_mode: bool, curve_server_key: Optional[bytes],
                 sndhwm: int, sndbuf: int = 0, log=None):
        self.url = url
        self.probe_mode = probe_mode
        self.log = log
        self.sock = ctx.socket(zmq.XPUB)
        s = self.sock
        s.setsockopt(zmq.SNDHWM, sndhwm)
        if sndbuf:
            s.setsockopt(zmq.SNDBUF, sndbuf)
        s.setsockopt(zmq.XPUB_NODROP, 1)
        s.setsockopt(zmq.XPUB_VERBOSER, 1)       # every (un)subscription, so we can count them
        s.setsockopt(zmq.LINGER, 0)
        if curve_server_key is not None:
            pub, sec = zmq.curve_keypair()
            s.curve_serverkey = curve_server_key
            s.curve_publickey = pub
            s.curve_secretkey = sec
        self.monitor = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                            | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            if probe_mode:
                s.connect(url)
            else:
                s.bind(url)
        except zmq.ZMQError as e:
            s.close(0)
            raise FlowprobeError(f"--zmq {url}: cannot {'connect' if probe_mode else 'bind'}: {e}",
                                 status=2) from None
        self.subs: dict[bytes, int] = {}
        self.handshake_failures = 0
        self.handshakes = 0
        self.msg_id = 0
        self.messages = 0
        self.flows = 0
        self.bytes = 0
        self.drops_queue_full = 0
        self.drops_no_subscriber = 0
        self.pending: list[bytes] = []
        self.pending_size = 0

    def poll_subscriptions(self) -> None:
        s = self.sock
        while True:
            try:
                msg = s.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if msg:
                topic = msg[1:]
                self.subs[topic] = self.subs.get(topic, 0) + (1 if msg[0] == 1 else -1)
        mon = self.monitor
        while mon is not None:
            try:
                frames = mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            event = struct.unpack_from("=H", frames[0])[0]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshakes += 1
                continue
            self.handshake_failures += 1
            if self.handshake_failures == 1 and self.log is not None:
                self.log(f"flowprobe: warning: --zmq {self.url}: CURVE handshake failed: wrong "
                         "--zmq-encryption-key?" + ("" if self.probe_mode else
                         " In pull mode a failed handshake can leave ntopng unable to connect "
                         "again until it restarts; --zmq-probe-mode recovers by itself"))

    def subscribed(self, topic: bytes) -> bool:
        return any(n > 0 and topic.startswith(t) for t, n in self.subs.items())

    def close(self) -> None:
        if self.monitor is not None:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(0)
            self.monitor = None
        self.sock.close(0)


class ZMQExporter:
    def __init__(self, endpoints: list[str], *, fmt: str = "tlv", template=None,
                 compress: bool = True, probe_mode: bool = False,
                 curve_server_key: Optional[bytes] = None, source_id: int = 0,
                 observation_point: Optional[int] = None, labels: bool = False,
                 wait_subscriber: float = 0.0, stats_interval: float = 1.0, sndhwm: int = 1000,
                 sndbuf: int = 0, max_flows_per_message: int = 0, offline: bool = False,
                 log=None, defaults: Optional[dict] = None):
        if zmq is None:
            raise FlowprobeError("--zmq needs pyzmq: pip install pyzmq", status=2)
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.fmt = fmt
        self.compress = compress
        self.source_id = source_id
        self.observation_point = observation_point
        self.wait_subscriber = wait_subscriber
        self.stats_interval = stats_interval
        counted = fmt in ("tlv", "json")          # ntopng parses and counts these
        self.max_flows = (min(max_flows_per_message or MAX_FLOWS_PER_MESSAGE, MAX_FLOWS_PER_MESSAGE)
                          if counted else max_flows_per_message)
        self.offline = offline
        self.probe_ip = _probe_ip()
        template = template or parse_template(None)
        if observation_point is not None:
            template = template.with_fields("OBSERVATION_POINT_ID")
        self.template = template
        constants = template.constants({"UNIQUE_SOURCE_ID": source_id,
                                        "NPROBE_IPV4_ADDRESS": self.probe_ip or None})
        self.encoder = FlowEncoder(fmt, template, constants, labels)
        self.ctx = zmq.Context()
        self.endpoints: list[Endpoint] = []
        try:
            for url in endpoints:
                self.endpoints.append(Endpoint(self.ctx, url, probe_mode, curve_server_key,
                                               sndhwm, sndbuf, log=self.log))
        except BaseException:
            for ep in self.endpoints:
                ep.close()
            raise
        self.probe_mode = probe_mode
        self.curve = curve_server_key is not None
        self._waited = False
        self._blocking_budget = offline     # offline: wait for a slow subscriber once, then drop
        self._last_stats = 0.0
        self._stats_sent = False
        self._last_snapshot: Optional[dict] = None
        self.defaults = dict(defaults or {})
        self.seen_packets = 0          # from exported records: the final event when no tick came
        self.seen_bytes = 0
        # 32 hex digits: ntopng keeps 35 characters of probe.uuid
        self.uuid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{socket.gethostname()}/{source_id}").hex

    # --- waiting for subscribers ----------------------------------------------------------
    def _wait_for_subscribers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        missing = list(self.endpoints)
        while True:
            for ep in missing:
                ep.poll_subscriptions()
            missing = [ep for ep in missing if not ep.subscribed(b"flow")]
            if not missing or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        for ep in missing:
            why = ("CURVE handshake failed: wrong --zmq-encryption-key?" if ep.handshake_failures
                   else "is ntopng running" + (" with the matching --zmq-encryption key?"
                                               if self.curve else "?"))
            self.log(f"flowprobe: warning: --zmq {ep.url}: no subscriber connected within "
                     f"{timeout:g} s ({why}); flows sent without a subscriber are lost and counted "
                     f"as drops")

    def _ensure_waited(self) -> None:
        if self._waited:
            return
        self._waited = True
        if self.wait_subscriber > 0:
            self._wait_for_subscribers(self.wait_subscriber)

    # --- sending ---------------------------------------------------------------------------
    def _send(self, ep: Endpoint, topic: bytes, body: bytes, flags: int, nflows: int) -> bool:
        ep.poll_subscriptions()
        ulen = len(body)
        if self.compress:
            body = zlib.compress(body, 1)
            flags |= FLAG_ZLIB
        ep.msg_id += 1
        hdr = header(topic, flags, ulen, ep.msg_id, self.source_id)
        if not ep.subscribed(topic):
            ep.drops_no_subscriber += nflows
            # still handed to zmq: a subscriber may be mid-handshake; it costs nothing
            try:
                ep.sock.send_multipart((hdr, body), zmq.NOBLOCK)
            except zmq.Again:
                pass
            return False
        try:
            ep.sock.send_multipart((hdr, body), zmq.NOBLOCK)
        except zmq.Again:
            if self._blocking_budget and self.wait_subscriber > 0:
                # reading a file: no real-time constraint, wait (bounded) for the subscriber
                if ep.sock.poll(int(self.wait_subscriber * 1000), zmq.POLLOUT):
                    try:
                        ep.sock.send_multipart((hdr, body), zmq.NOBLOCK)
                        return self._sent(ep, body, nflows)
                    except zmq.Again:
                        pass
                self._blocking_budget = False
                self.log(f"flowprobe: warning: --zmq {ep.url}: subscriber does not keep up; "
                         "dropping (and counting) what cannot be queued")
            ep.drops_queue_full += nflows
            return False
        return self._sent(ep, body, nflows)

    @staticmethod
    def _sent(ep: Endpoint, body: bytes, nflows: int) -> bool:
        ep.messages += 1
        ep.flows += nflows
        ep.bytes += len(body)
        return True

    def _flush(self, ep: Endpoint) -> None:
        if not ep.pending:
            return
        recs = ep.pending
        ep.pending = []
        ep.pending_size = 0
        flags = FLAG_TLV if self.fmt == "tlv" else 0
        self._send(ep, b"flow", self.encoder.payload(recs), flags, len(recs))

    def export(self, records: np.ndarray) -> None:
        if len(records) == 0:
            return
        self._ensure_waited()
        if not self._stats_sent and self.stats_interval > 0:
            # ntopng's probe page counts exported flows from the value in the first event it
            # sees: that event must come before the first flow
            self._last_stats = time.monotonic()
            self.send_stats(dict(self.defaults, **(self._last_snapshot or {})))
        self.seen_packets += int(records["in_pkts"].sum() + records["out_pkts"].sum())
        self.seen_bytes += int(records["in_bytes"].sum() + records["out_bytes"].sum())
        if self.observation_point is not None:
            records = records.copy()
            records["observation_point"] = self.observation_point
        n_ep = len(self.endpoints)
        if n_ep == 1:
            groups = [(self.endpoints[0], records)]
        else:
            h = flow_hash(records) % n_ep
            groups = [(ep, records[h == i]) for i, ep in enumerate(self.endpoints)]
        enc = self.encoder
        for ep, recs in groups:
            if len(recs) == 0:
                continue
            for b in enc.encode(recs):
                if ep.pending and (ep.pending_size + len(b) + enc.overhead(len(ep.pending) + 1)
                                   > MAX_PAYLOAD or (self.max_flows and
                                                     len(ep.pending) >= self.max_flows)):
                    self._flush(ep)
                ep.pending.append(b)
                ep.pending_size += len(b)

    def tick(self, stats: dict) -> None:
        self._last_snapshot = stats
        for ep in self.endpoints:
            self._flush(ep)
        now = time.monotonic()
        if self.stats_interval > 0 and now - self._last_stats >= self.stats_interval:
            self._last_stats = now
            self.send_stats(stats)

    # --- probe statistics -------------------------------------------------------------------
    def event(self, snap: dict, ep: Endpoint) -> dict:
        """The `event` message of spec §8: every key, strings included."""
        table_drops = snap.get("drops") or {}
        too_many = int(table_drops.get("flow_table_full", 0))
        kernel = int(snap.get("kernel_drops", 0))
        iface = iface_label(str(snap.get("interface", "")))
        export_drops = sum(e.drops_queue_full + e.drops_no_subscriber for e in self.endpoints)
        mode = snap.get("mode", "packet_collection")
        collected = int(snap.get("collected_records", 0))
        collector_drops = {"flow_collection_drops": 0, "flow_collection_udp_socket_drops": 0,
                           **snap.get("collector_drops", {})}
        return {
            "time": int(snap.get("time", time.time())),
            "bytes": int(snap.get("bytes", 0)),
            "packets": int(snap.get("packets", 0)),
            "packet_drops": kernel + too_many,
            "mode": mode,
            "iface": {"name": iface, "speed": _iface_speed(iface), "ip": _iface_ip(iface)},
            "probe": {"ip": self.probe_ip, "public_ip": "", "uuid": self.uuid,
                      "unique_source_id": self.source_id, "uuid_num": self.source_id,
                      "version": f"flowprobe {snap.get('version', __version__)}",
                      "osname": f"{platform.system()} {platform.release()}".strip(),
                      "license": "GPL-3.0-or-later", "edition": "community",
                      "maintenance": "", "hostname": str(snap.get("hostname", ""))},
            "avg": {"bps": int(snap.get("bps", 0)), "pps": int(snap.get("pps", 0))},
            "timeout": {"lifetime": int(snap.get("lifetime", 120)),
                        "idle": int(snap.get("idle_timeout", 30)),
                        "collected_lifetime": int(snap.get("lifetime", 120))},
            "drops": {"export_queue_full": export_drops, "too_many_flows": too_many,
                      "elk_flow_drops": 0, "sflow_pkt_sample_drops": 0,
                      **collector_drops},
            "flow_collection": snap.get("flow_collection") or {
                "nf_ipfix_flows": collected, "sflow_samples": 0, "collection_port": 0,
                "exporters": {}},
            # this probe is one exporter; a collector stands for the routers it collects from
            "zmq": {"num_flow_exports": ep.flows,
                    "num_exporters": max(len((snap.get("flow_collection") or {})
                                             .get("exporters") or ()), 1)},
        }

    def send_stats(self, snap: dict) -> None:
        self._ensure_waited()
        self._stats_sent = True
        self._stats_sent_at = time.monotonic()
        for ep in self.endpoints:
            body = json.dumps(self.event(snap, ep), separators=(",", ":")).encode()
            self._send(ep, b"event", body, 0, 0)

    # --- end -----------------------------------------------------------------------------------
    def close(self) -> None:
        if not self.endpoints:
            return
        for ep in self.endpoints:
            self._flush(ep)
        snap = dict(self.defaults, **(self._last_snapshot or {}))
        snap["packets"] = max(int(snap.get("packets", 0)), self.seen_packets)
        snap["bytes"] = max(int(snap.get("bytes", 0)), self.seen_bytes)
        if self.stats_interval > 0 and (self._last_snapshot is not None or self._waited):
            # a last event so that the collector sees the final counters; ntopng folds events
            # into its totals at most once a second, so one sent sooner would not be counted
            if self._stats_sent and any(any(n > 0 for n in ep.subs.values())
                                        for ep in self.endpoints):
                time.sleep(max(0.0, self._stats_sent_at + 1.05 - time.monotonic()))
            snap["time"] = int(time.time())
            self.send_stats(snap)
        # deliver what is queued: linger bounded by --zmq-wait-subscriber
        linger = int(max(self.wait_subscriber, 0.1) * 1000)
        for ep in self.endpoints:
            ep.sock.setsockopt(zmq.LINGER, linger)
            if ep.monitor is not None:
                try:
                    ep.sock.disable_monitor()
                except zmq.ZMQError:
                    pass
                ep.monitor.close(0)
                ep.monitor = None
        t0 = time.monotonic()
        for ep in self.endpoints:
            ep.sock.close()
        self.ctx.term()          # waits for the lingering messages (bounded by LINGER)
        if time.monotonic() - t0 >= linger / 1000 - 0.05 and self.wait_subscriber > 0:
            self.log("flowprobe: warning: --zmq: queued messages may not all have been delivered "
                     f"within {self.wait_subscriber:g} s")
        self.final = self.stats()
        self.endpoints_closed = list(self.endpoints)
        self.endpoints = []

    def stats(self) -> dict:
        eps = self.endpoints or getattr(self, "endpoints_closed", [])
        return {
            "zmq_flows": sum(e.flows for e in eps),
            "zmq_messages": sum(e.messages for e in eps),
            "zmq_drops_queue_full": sum(e.drops_queue_full for e in eps),
            "zmq_drops_no_subscriber": sum(e.drops_no_subscriber for e in eps),
        }


def flow_hash(records: np.ndarray) -> np.ndarray:
    """A hash of the flow key per record (the same for every slice of one flow)."""
    src = np.ascontiguousarray(records["src_addr"]).view("<u8")
    dst = np.ascontiguousarray(records["dst_addr"]).view("<u8")
    h = (src[:, 0] ^ src[:, 1] * np.uint64(0x9E3779B97F4A7C15)
         ^ dst[:, 0] * np.uint64(0xC2B2AE3D27D4EB4F) ^ dst[:, 1])
    h ^= (records["src_port"].astype(np.uint64) << np.uint64(16)
          | records["dst_port"].astype(np.uint64)
          | records["protocol"].astype(np.uint64) << np.uint64(32)
          | records["vlan"].astype(np.uint64) << np.uint64(40))
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return h


# --- host facts for the event message ----------------------------------------------------------
IFACE_NAME_MAX = 31          # ntopng keeps 31 characters of iface.name


def iface_label(inputs: str) -> str:
    """What ntopng shows as the probe's interface: interface names as they are, captures by
    file name (not path), within ntopng's 31 characters."""
    names = [os.path.basename(i) if "/" in i or os.path.isfile(i) else i
             for i in inputs.split(",") if i]
    label = ",".join(names)
    if len(label) > IFACE_NAME_MAX and len(names) == 1:
        label = os.path.splitext(label)[0]          # drop ".pcap" before cutting the name
    if len(label) > IFACE_NAME_MAX:
        label = label[:IFACE_NAME_MAX - 1] + "~"
    return label


def _probe_ip() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))          # no packet is sent; picks the routing source
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def _iface_speed(name: str) -> int:
    try:
        with open(f"/sys/class/net/{name}/speed") as f:
            return max(int(f.read().strip()), 0)
    except (OSError, ValueError):
        return 0


def _iface_ip(name: str) -> str:
    if not name or not os.path.exists(f"/sys/class/net/{name}"):
        return ""
    try:
        import fcntl
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            res = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            return socket.inet_ntoa(res[20:24])
    except OSError:
        return ""


# --- command line ------------------------------------------------------------------------------
def _has(parser, flag: str) -> bool:
    return flag in parser._option_string_actions


def add_arguments(parser) -> None:
    g = parser.add_argument_group("ZeroMQ export to ntopng")
    g.add_argument("--zmq", action="append", default=[], metavar="ENDPOINT",
                   help="export flows to ntopng: tcp://*:5556 binds (ntopng -i tcp://PROBE:5556), "
                        "with --zmq-probe-mode tcp://NTOPNG:5556 connects (ntopng -i "
                        "\"tcp://*:5556c\"); ipc:// works too; up to 8, flows spread by flow hash")
    g.add_argument("--zmq-probe-mode", action="store_true",
                   help="connect to an ntopng that binds (collector mode), e.g. behind NAT")
    g.add_argument("--zmq-format", default="t", choices=("t", "j", "m"),
                   help="t: nDPI TLV (default, what community ntopng reads), j: JSON, m: msgpack")
    g.add_argument("--json-labels", action="store_true",
                   help="JSON keys are field names instead of numeric ids")
    g.add_argument("--zmq-disable-compression", action="store_true",
                   help="do not zlib-compress messages")
    g.add_argument("--zmq-encryption-key", metavar="KEY",
                   help="ntopng's CURVE public key (40 Z85 characters, or the 80 hex digits "
                        "ntopng's interface page shows)")
    if not _has(parser, "-T"):
        g.add_argument("-T", "--flow-templ", metavar="TEMPLATE",
                       help="exported fields: %%NAME items and @NTOPNG@ (default @NTOPNG@)")
    if not _has(parser, "-E"):
        g.add_argument("-E", "--observation-point", metavar="0:ID",
                       help="observation point id sent as OBSERVATION_POINT_ID on every flow")
    g.add_argument("--source-id", type=str, default="0", metavar="N",
                   help="source id in the ZMQ header (0..4294967295), tells probes apart in ntopng")
    g.add_argument("--zmq-wait-subscriber", type=float, default=None, metavar="SEC",
                   help="when reading files: wait up to SEC for a subscriber before the first "
                        "message and at exit until queued messages are sent (default 10)")
    g.add_argument("--zmq-stats-interval", type=float, default=1.0, metavar="SEC",
                   help="send probe statistics (event messages) every SEC seconds; 0: never")
    g.add_argument("--zmq-sndhwm", type=int, default=1000, metavar="MSGS",
                   help="messages queued per endpoint before sends fail and count as drops")
    g.add_argument("--zmq-max-flows-per-message", type=int, default=0, metavar="N",
                   help="at most N flows per message (default and most for TLV and JSON: 255, "
                        "ntopng counts a message's flows in 8 bits; msgpack: as many as fit in "
                        "128 KiB)")


def _is_offline(inputs: list[str]) -> bool:
    items = [i for i in inputs if i != "none"]
    return bool(items) and all(os.path.isfile(i) for i in items)


def from_args(args, config) -> list:
    if not args.zmq:
        return []
    if len(args.zmq) > MAX_ENDPOINTS:
        raise FlowprobeError(f"--zmq given {len(args.zmq)} times; at most {MAX_ENDPOINTS} "
                             "endpoints", status=2)
    for url in args.zmq:
        if "://" not in url:
            raise FlowprobeError(f"--zmq {url!r}: expected tcp://HOST:PORT or ipc://PATH",
                                 status=2)
    if args.zmq_probe_mode:
        for url in args.zmq:
            if url.startswith("tcp://*"):
                raise FlowprobeError(f"--zmq {url}: --zmq-probe-mode connects to ntopng; give its "
                                     "address, e.g. tcp://192.168.1.10:5556", status=2)
    key = None
    if args.zmq_encryption_key is not None:
        try:
            key = parse_curve_key(args.zmq_encryption_key)
        except ValueError as e:
            raise FlowprobeError(f"--zmq-encryption-key: {e}", status=2) from None
        if not zmq.has("curve"):
            raise FlowprobeError("--zmq-encryption-key: this libzmq has no CURVE support", status=2)
    try:
        text = getattr(args, "flow_templ", None)
        template = parse_template(text)
        if getattr(config, "mode", "") == "flow_collection" and not text:
            template = template.with_fields(*COLLECTOR_FIELDS)
    except (TemplateError, ValueError) as e:
        raise FlowprobeError(f"-T: {e}", status=2) from None
    obs = None
    if getattr(args, "observation_point", None):
        text = args.observation_point
        part = text.split(":", 1)[-1]
        try:
            obs = int(part, 0)
        except ValueError:
            obs = -1
        if not 0 <= obs <= 0xFFFF:
            raise FlowprobeError(f"-E {text!r}: expected 0:ID with ID between 0 and 65535",
                                 status=2)
    try:
        source_id = int(args.source_id, 0)
    except ValueError:
        source_id = -1
    if not 0 <= source_id <= 0xFFFFFFFF:
        raise FlowprobeError(f"--source-id {args.source_id!r}: expected 0..4294967295", status=2)
    if args.zmq_sndhwm < 1:
        raise FlowprobeError("--zmq-sndhwm must be at least 1", status=2)
    offline = _is_offline(getattr(args, "interface", []))
    wait = args.zmq_wait_subscriber
    if wait is None:
        wait = 10.0 if offline else 0.0
    if wait < 0:
        raise FlowprobeError("--zmq-wait-subscriber must be >= 0", status=2)
    if args.zmq_stats_interval < 0:
        raise FlowprobeError("--zmq-stats-interval must be >= 0", status=2)
    fmt = FORMATS[args.zmq_format]
    n = args.zmq_max_flows_per_message
    if n < 0 or (fmt != "msgpack" and n > MAX_FLOWS_PER_MESSAGE):
        raise FlowprobeError(f"--zmq-max-flows-per-message {n}: expected 1.."
                             f"{MAX_FLOWS_PER_MESSAGE} (ntopng counts the flows of a message in 8 "
                             "bits, so more would be miscounted)" if n > 0 else
                             f"--zmq-max-flows-per-message {n}: expected a positive number",
                             status=2)
    if fmt == "msgpack":
        try:
            import msgpack  # noqa: F401
        except ImportError:
            raise FlowprobeError("--zmq-format m needs msgpack: pip install msgpack", status=2)
    return [ZMQExporter(args.zmq, fmt=fmt, template=template,
                        compress=not args.zmq_disable_compression,
                        probe_mode=args.zmq_probe_mode, curve_server_key=key,
                        source_id=source_id, observation_point=obs, labels=args.json_labels,
                        wait_subscriber=wait, stats_interval=args.zmq_stats_interval,
                        sndhwm=args.zmq_sndhwm,
                        sndbuf=int(os.environ.get("FLOWPROBE_ZMQ_SNDBUF", "0") or 0),
                        max_flows_per_message=args.zmq_max_flows_per_message, offline=offline,
                        defaults={"interface": getattr(config, "interface_name", ""),
                                  "idle_timeout": getattr(config, "idle_timeout", 30),
                                  "lifetime": getattr(config, "lifetime", 120),
                                  "mode": getattr(config, "mode", "packet_collection")})]
