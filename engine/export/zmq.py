"""Flows and probe statistics to ntopng over ZeroMQ (wire format: engine/ntopng.py and the
protocol document docs ntopng-zmq-protocol.md).

* Sockets: one XPUB per endpoint (up to 8; flows spread by flow hash), bound (pull mode, ntopng
  connects: ``ntopng -i tcp://PROBE:5556``) or, in probe mode, connected to an ntopng that binds
  (``ntopng -i "tcp://*:5556c"``). XPUB with XPUB_NODROP and non-blocking sends: a full queue
  raises zmq.Again and the flows of that message are counted as dropped; XPUB also tells us about
  subscriptions, so flows sent while nobody subscribes are counted too.
* Frames: the 36-byte version-4 header and one payload <= 131072 bytes. One msg_id counter per
  endpoint stream (every topic), starting at 1.
* Formats (engine/export/encoders.py): nDPI TLV (numeric keys, narrowest widths), JSON (numeric
  keys, or names with labels), msgpack (schema in docs/zmq-msgpack.md). Many flows per message: at
  most 255 in TLV and JSON, which ntopng counts in 8 bits.
* ``event`` messages (spec §8, every key, strings included) every ``stats_interval`` seconds,
  the first before the first flow (ntopng counts exported flows from the first event it sees).
* CURVE: flowprobe is the CURVE client; ``curve_server_key`` is ntopng's public key.
"""
from __future__ import annotations

import errno
import fcntl
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

from engine.errors import FlowprobeError
from engine.export.base import Exporter
from engine.export.encoders import FlowEncoder
from engine.export.templates import parse_template
from engine.ntopng import FLAG_TLV, FLAG_ZLIB, MAX_FLOWS_PER_MESSAGE, MAX_PAYLOAD, header
from engine.options import MessageFormat
from engine.stats import Snapshot

try:
    import zmq
except ImportError:          # pragma: no cover - pyzmq is a dependency
    zmq = None


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
            hint = ""
            if not probe_mode and e.errno == errno.EADDRNOTAVAIL:
                hint = ("; that address is not this host's: to connect to an ntopng there, add "
                        '--zmq-probe-mode (ntopng -i "tcp://*:PORTc")')
            raise FlowprobeError(f"cannot {'connect' if probe_mode else 'bind'}: {e}{hint}",
                                 status=2, setting="zmq.endpoints", value=url) from None
        self.subs: dict[bytes, int] = {}
        self.handshake_failures = 0
        self.handshakes = 0
        self.msg_id = 0
        self.messages = 0
        self.flows = 0
        self.bytes = 0
        self.drops_queue_full = 0
        self.drops_no_subscriber = 0

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


class ZMQExporter(Exporter):
    def __init__(self, endpoints: list[str], *, fmt=MessageFormat.TLV, template=None,
                 compress: bool = True, probe_mode: bool = False,
                 curve_server_key: Optional[bytes] = None, source_id: int = 0,
                 observation_point: Optional[int] = None, labels: bool = False,
                 wait_subscriber: float = 0.0, stats_interval: float = 1.0, sndhwm: int = 1000,
                 sndbuf: int = 0, max_flows_per_message: int = 0, offline: bool = False,
                 log=None, defaults: Optional[dict] = None):
        if zmq is None:
            raise FlowprobeError("ZeroMQ export needs pyzmq: pip install pyzmq", status=2)
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.fmt = MessageFormat(fmt)
        self.compress = compress
        self.source_id = source_id
        self.observation_point = observation_point
        self.wait_subscriber = wait_subscriber
        self.stats_interval = stats_interval
        if self.fmt is not MessageFormat.MSGPACK:      # ntopng parses and counts these
            max_flows_per_message = min(max_flows_per_message or MAX_FLOWS_PER_MESSAGE,
                                        MAX_FLOWS_PER_MESSAGE)
        self.max_flows = max_flows_per_message
        self.offline = offline
        self.probe_ip = _probe_ip()
        template = template or parse_template(None)
        if observation_point is not None:
            template = template.with_fields("OBSERVATION_POINT_ID")
        self.template = template
        constants = template.constants({"UNIQUE_SOURCE_ID": source_id,
                                        "NPROBE_IPV4_ADDRESS": self.probe_ip or None})
        self.encoder = FlowEncoder(self.fmt, template, constants, labels)
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
        self._stats_sent_at: Optional[float] = None
        self._last_snapshot: Optional[Snapshot] = None
        # what the events say before the run's first statistics (interface, timeouts, mode)
        self.defaults = Snapshot(**(defaults or {}))
        self.seen_packets = 0          # from exported records: the final event when no tick came
        self.seen_bytes = 0
        # 32 hex digits: ntopng keeps 35 characters of probe.uuid
        self.uuid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{socket.gethostname()}/{source_id}").hex
        self.final: Optional[dict] = None

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


    def export(self, records: np.ndarray) -> None:
        if len(records) == 0:
            return
        self._ensure_waited()
        if self._stats_sent_at is None and self.stats_interval > 0:
            # ntopng's probe page counts exported flows from the value in the first event it
            # sees: that event must come before the first flow
            self._last_stats = time.monotonic()
            self.send_stats(self._last_snapshot or self.defaults)
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
        flags = FLAG_TLV if self.fmt is MessageFormat.TLV else 0
        for ep, recs in groups:
            if len(recs):
                for payload, n in self.encoder.messages(recs, MAX_PAYLOAD, self.max_flows):
                    self._send(ep, b"flow", payload, flags, n)

    def tick(self, snap: Snapshot) -> None:
        self._last_snapshot = snap
        now = time.monotonic()
        if self.stats_interval > 0 and now - self._last_stats >= self.stats_interval:
            self._last_stats = now
            self.send_stats(snap)

    # --- probe statistics -------------------------------------------------------------------
    def event(self, snap: Snapshot, ep: Endpoint) -> dict:
        """The `event` message of spec §8: every key, strings included."""
        too_many = int(snap.drops.get("flow_table_full", 0))
        iface = iface_label(snap.interface)
        export_drops = sum(e.drops_queue_full + e.drops_no_subscriber for e in self.endpoints)
        # nProbe counts every exporter's full queue here: the other exporters' too (Kafka's)
        export_drops += sum(v for k, v in snap.exporters.items()
                            if k.endswith("drops_queue_full") and not k.startswith("zmq_"))
        collector_drops = {"flow_collection_drops": 0, "flow_collection_udp_socket_drops": 0,
                           **snap.collector_drops}
        flow_collection = snap.flow_collection
        return {
            "time": int(snap.time or time.time()),
            "bytes": int(snap.bytes),
            "packets": int(snap.packets),
            "packet_drops": int(snap.kernel_drops) + too_many,
            "mode": snap.mode,
            "iface": {"name": iface, "speed": _iface_speed(iface), "ip": _iface_ip(iface)},
            "probe": {"ip": self.probe_ip, "public_ip": "", "uuid": self.uuid,
                      "unique_source_id": self.source_id, "uuid_num": self.source_id,
                      "version": f"flowprobe {snap.version}",
                      "osname": f"{platform.system()} {platform.release()}".strip(),
                      "license": "GPL-3.0-or-later", "edition": "community",
                      "maintenance": "", "hostname": snap.hostname},
            "avg": {"bps": int(snap.bps), "pps": int(snap.pps)},
            "timeout": {"lifetime": int(snap.lifetime), "idle": int(snap.idle_timeout),
                        "collected_lifetime": int(snap.lifetime)},
            "drops": {"export_queue_full": export_drops, "too_many_flows": too_many,
                      "elk_flow_drops": 0, "sflow_pkt_sample_drops": 0,
                      **collector_drops},
            "flow_collection": flow_collection,
            # this probe is one exporter; a collector stands for the routers it collects from
            "zmq": {"num_flow_exports": ep.flows,
                    "num_exporters": max(len(flow_collection.get("exporters") or ()), 1)},
        }

    def send_stats(self, snap: Snapshot) -> None:
        self._ensure_waited()
        self._stats_sent_at = time.monotonic()
        for ep in self.endpoints:
            body = json.dumps(self.event(snap, ep), separators=(",", ":")).encode()
            self._send(ep, b"event", body, 0, 0)

    # --- end -----------------------------------------------------------------------------------
    def close(self) -> None:
        if not self.endpoints:
            return
        snap = self._last_snapshot or self.defaults
        snap = snap.replace(packets=max(snap.packets, self.seen_packets),
                            bytes=max(snap.bytes, self.seen_bytes))
        if self.stats_interval > 0 and (self._last_snapshot is not None or self._waited):
            # a last event so that the collector sees the final counters; ntopng folds events
            # into its totals at most once a second, so one sent sooner would not be counted
            if self._stats_sent_at is not None and any(any(n > 0 for n in ep.subs.values())
                                                       for ep in self.endpoints):
                time.sleep(max(0.0, self._stats_sent_at + 1.05 - time.monotonic()))
            self.send_stats(snap.replace(time=int(time.time())))
        # deliver what is queued: linger bounded by the subscriber wait
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

    def undelivered(self) -> str:
        st = self.stats()
        lost = st["zmq_drops_queue_full"] + st["zmq_drops_no_subscriber"]
        if st["zmq_flows"] or not lost:
            return ""
        return (f"--zmq: none of the {lost} flows reached a subscriber "
                f"({st['zmq_drops_no_subscriber']} without one, {st['zmq_drops_queue_full']} on a "
                "full queue): is ntopng running and connected" +
                (", with the matching --zmq-encryption-key?" if self.curve else "?"))


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
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            res = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            return socket.inet_ntoa(res[20:24])
    except OSError:
        return ""
