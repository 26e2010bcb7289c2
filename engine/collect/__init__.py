"""The flow collector: NetFlow v5/v9, IPFIX and sFlow v5 over UDP, as a source of flow records.

Modes (nProbe 9.0): the default merges collected records in a flow cache and exports them on the
idle/lifetime timeouts; ``--disable-cache`` converts each record and exports it at once;
``--collector-passthrough`` converts 1:1 with no flow state.

Input: UDP ports (``--collector-port [udp://][ADDR:]PORT``), and flowrelay instances
(``--collector-port tcp://RELAY:PORT``, engine/collect/relay.py): the probe connects out to the
relay and takes the datagrams it forwards, CURVE-encrypted with ``--collector-encryption-key``.
"""
from __future__ import annotations

import os
import re
import select
import socket
import struct
import time
from typing import Iterator, Optional

import numpy as np

from engine.errors import FlowprobeError, os_error_message
from engine.fields import RECORD_DTYPE
from engine.collect.cache import FlowCache
from engine.collect.collector import Collector

RCVBUF = 64 << 20
BATCH_DATAGRAMS = 1024


def add_arguments(p) -> None:
    g = p.add_argument_group("flow collection")
    g.add_argument("--collector-port", "-3", action="append", default=[],
                   metavar="[udp://][ADDR:]PORT",
                   help="collect NetFlow v5/v9, IPFIX and sFlow on this UDP port (repeatable); "
                        "tcp://RELAY:PORT connects to a flowrelay and collects what it forwards")
    g.add_argument("--collector-encryption-key", metavar="KEY",
                   help="the flowrelay's CURVE public key (40 Z85 characters or hex) for "
                        "tcp:// collector ports")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--disable-cache", action="store_true",
                      help="convert every collected record and export it at once (no cache)")
    mode.add_argument("--collector-passthrough", action="store_true",
                      help="convert collected records 1:1 with no flow state (fastest)")
    mode.add_argument("--enable-collection-cache", action="store_true",
                      help="merge collected records in the flow cache (the default)")
    g.add_argument("--disable-upscale", action="store_true",
                   help="do not multiply sampled counters by the sampling rate")
    g.add_argument("--dump-bad-packets", metavar="FILE.pcap",
                   help="write malformed collected datagrams to this pcap file")
    g.add_argument("--collector-idle-exit", type=float, default=0.0, metavar="SEC",
                   help="stop collecting after SEC seconds without datagrams (tests, replays)")


def parse_port(text: str) -> tuple[str, int]:
    """'[udp://][ADDR:]PORT' -> (address, port)."""
    s = text.strip()
    if s.startswith("udp://"):
        s = s[6:]
    elif "://" in s:
        raise FlowprobeError(f"--collector-port {text}: only udp:// is supported", status=2)
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]:|([^:\[\]]+):)?(\d+)", s)
    if not m:
        raise FlowprobeError(f"--collector-port {text!r}: expected [udp://][ADDR:]PORT",
                             status=2)
    addr = m.group(1) or m.group(2) or "0.0.0.0"
    port = int(m.group(3))
    if not 0 < port < 65536:
        raise FlowprobeError(f"--collector-port {text!r}: port must be 1..65535", status=2)
    return addr, port


def parse_relay(text: str) -> Optional[str]:
    """'tcp://HOST:PORT' -> the ZeroMQ URL to connect to; None for a UDP port."""
    s = text.strip()
    if not s.startswith("tcp://"):
        return None
    m = re.fullmatch(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^:\[\]/*]+):(\d+)", s)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise FlowprobeError(f"--collector-port {text!r}: expected tcp://RELAY:PORT (a flowrelay "
                             "to connect to)", status=2)
    return s


def relay_key(text: Optional[str]) -> Optional[bytes]:
    if text is None:
        return None
    from engine.export.zmq import parse_curve_key
    try:
        import zmq
    except ImportError:
        raise FlowprobeError("--collector-encryption-key: pyzmq is not installed",
                             status=2) from None
    try:
        key = parse_curve_key(text)
    except ValueError as e:
        raise FlowprobeError(f"--collector-encryption-key: {e}", status=2) from None
    if not zmq.has("curve"):
        raise FlowprobeError("--collector-encryption-key: this libzmq has no CURVE support",
                             status=2)
    return key


def from_args(args, config) -> list:
    ports = getattr(args, "collector_port", None) or []
    if not ports:
        return []
    if args.disable_cache:
        mode = "nocache"
    elif args.collector_passthrough:
        mode = "passthrough"
    else:
        mode = "cache"
    if args.collector_idle_exit < 0:
        raise FlowprobeError("--collector-idle-exit must be >= 0", status=2)
    relays = [u for u in (parse_relay(p) for p in ports) if u]
    binds = [parse_port(p) for p in ports if not parse_relay(p)]
    key_text = getattr(args, "collector_encryption_key", None)
    if key_text is not None and not relays:
        raise FlowprobeError("--collector-encryption-key is for a tcp://RELAY:PORT collector "
                             "port (flowrelay)", status=2)
    key = relay_key(key_text)
    bad = BadPacketWriter(args.dump_bad_packets) if args.dump_bad_packets else None
    try:
        src = CollectorSource(binds, mode=mode, upscale=not args.disable_upscale,
                              idle_timeout=config.idle_timeout, lifetime=config.lifetime,
                              max_flows=config.max_flows, bad_dump=bad,
                              idle_exit=args.collector_idle_exit, relays=relays,
                              relay_key=key)
    except FlowprobeError:
        if bad:
            bad.close()
        raise
    try:
        config.mode = "flow_collection"
    except AttributeError:
        pass
    return [src]


class BadPacketWriter:
    """Malformed datagrams as raw-IP/UDP packets (link type 101) in a pcap file, the exporter as
    source address."""

    def __init__(self, path: str, port: int = 0):
        try:
            self.f = open(path, "wb")
        except OSError as e:
            raise FlowprobeError(os_error_message(f"write {path!r}", e), status=2) from None
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        self.written = 0

    def write(self, exp, data: bytes) -> None:
        t = time.time()
        data = bytes(data[:65000])
        udp_len = 8 + len(data)
        if exp.ipv == 4:
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0,
                             exp.addr16[:4], b"\x7f\0\0\x01")
        else:
            ip = struct.pack(">IHBB16s16s", 0x60000000, udp_len, 17, 64, exp.addr16,
                             b"\0" * 15 + b"\x01")
        pkt = ip + struct.pack(">HHHH", 0, 0, udp_len, 0) + data
        self.f.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(pkt), len(pkt)) + pkt)
        self.written += 1

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:
            pass


def merge_flow_collection(source_stats: list) -> dict:
    """ntopng's ``flow_collection`` object from the stats() of every source (packet sources
    have none): for Probe.snapshot()."""
    out: dict = {"nf_ipfix_flows": 0, "sflow_samples": 0, "collection_port": 0,
                 "exporters": {}}
    for st in source_stats:
        fc = st.get("flow_collection")
        if not fc:
            continue
        out["nf_ipfix_flows"] += fc["nf_ipfix_flows"]
        out["sflow_samples"] += fc["sflow_samples"]
        out["collection_port"] = out["collection_port"] or fc["collection_port"]
        out["exporters"].update(fc["exporters"])
    return out


def status_text(source_stats: list) -> str:
    """A short collector summary for the -b status line and the final summary ('' if no
    collector): datagrams, records, sequence losses, bad datagrams, kernel drops."""
    parts = [st for st in source_stats if st.get("source") == "collector"]
    if not parts:
        return ""
    dg = rec = lost = bad = kdrop = 0
    for st in parts:
        t = st["collector"]["totals"]
        dg += t["datagrams"]
        rec += t["records"]
        bad += t["bad_datagrams"]
        lost += sum(e["lost"] for e in st["collector"]["exporters"].values())
        kdrop += st.get("kernel_drops", 0)
    nexp = sum(len(st["collector"]["exporters"]) for st in parts)
    return (f"collector: {dg} datagrams, {rec} records from {nexp} exporters, "
            f"{lost} lost (sequence), {bad} bad, {kdrop} kernel drops")


def udp_socket_rows() -> Iterator[list[str]]:
    """The rows of /proc/net/udp and /proc/net/udp6 (Linux), split into columns: [1] the local
    address as HEXADDR:HEXPORT, [9] the inode, [12] the socket's drop counter."""
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                next(f)
                rows = [line.split() for line in f]
        except (OSError, StopIteration):
            continue
        yield from (r for r in rows if len(r) >= 13)


def udp_drops(sock: socket.socket) -> Optional[int]:
    """The kernel's drop counter for ``sock``, matched by its inode."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return None
    return next((int(r[12]) for r in udp_socket_rows() if r[9] == inode), None)


class CollectorSource:
    """A record source (``kind = "records"``) over one UDP socket per collector port, and one
    ZeroMQ PULL socket per flowrelay (``relays``: tcp:// URLs, ``relay_key``: its CURVE public
    key)."""
    kind = "records"

    def __init__(self, binds, mode="cache", upscale=True, idle_timeout=30.0, lifetime=120.0,
                 max_flows=262144, bad_dump=None, idle_exit=0.0, relays=(), relay_key=None):
        self.mode = mode
        self.collector = Collector(mode=mode, upscale=upscale, bad_dump=bad_dump)
        self.cache = FlowCache(max_flows, idle_timeout, lifetime) if mode == "cache" else None
        self.bad_dump = bad_dump
        self.idle_exit = idle_exit
        self.socks: list[socket.socket] = []
        self.relays: list = []
        self._zctx = None
        self._poller = None
        self.ports: list[int] = []
        self._stop = False
        self._kernel_drops_base: dict[int, int] = {}
        self.rcvbuf = 0
        for addr, port in binds:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
                    if opt is None:
                        continue
                    try:
                        s.setsockopt(socket.SOL_SOCKET, opt, RCVBUF)
                        break
                    except OSError:
                        continue
                self.rcvbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                s.bind((addr, port))
                s.setblocking(False)
            except OSError as e:
                s.close()
                self.close()
                raise FlowprobeError(os_error_message(f"listen on UDP {addr}:{port}", e),
                                     status=2) from None
            self.socks.append(s)
            self.ports.append(s.getsockname()[1])
            self._kernel_drops_base[len(self.socks) - 1] = udp_drops(s) or 0
        if relays:
            self._open_relays(relays, relay_key)
        self.received = 0
        self.last_datagram = time.monotonic()
        self._buf = bytearray(65536)
        self._mv = memoryview(self._buf)
        self._last_expire = None
        self._drained = False

    def _open_relays(self, urls, key) -> None:
        try:
            import zmq
        except ImportError:
            self.close()
            raise FlowprobeError("--collector-port tcp://: pyzmq is not installed",
                                 status=2) from None
        from engine.collect.relay import RelayReceiver
        self._zctx = zmq.Context()
        self._poller = zmq.Poller()
        for s in self.socks:
            self._poller.register(s, zmq.POLLIN)
        for url in urls:
            try:
                r = RelayReceiver(self._zctx, url, key)
            except zmq.ZMQError as e:
                self.close()
                raise FlowprobeError(f"--collector-port {url}: {e}", status=2) from None
            self.relays.append(r)
            self._poller.register(r.sock, zmq.POLLIN)

    # --- the source protocol ---------------------------------------------------------------
    def stop(self) -> None:
        self._stop = True

    def receive(self, timeout: float) -> list:
        """Up to BATCH_DATAGRAMS datagrams from every socket (waiting at most ``timeout``)."""
        if self.relays:
            return self._receive_all(timeout)
        try:
            ready, _, _ = select.select(self.socks, [], [], timeout)
        except (OSError, ValueError, InterruptedError):
            return []
        out: list = []
        self._drain_udp(ready, time.time(), out)
        return out

    def _drain_udp(self, ready, now: float, out: list) -> None:
        """Up to BATCH_DATAGRAMS datagrams from each ready UDP socket, as (bytes, sender, time)."""
        buf, mv = self._buf, self._mv
        for s in ready:
            recv = s.recvfrom_into
            for _ in range(BATCH_DATAGRAMS):
                try:
                    n, addr = recv(buf)
                except OSError:            # BlockingIOError (drained), EINTR, socket errors
                    break
                out.append((mv[:n].tobytes(), addr[0], now))

    def _receive_all(self, timeout: float) -> list:
        """receive() with flowrelay sockets too: one zmq poll over UDP and ZeroMQ sockets."""
        try:
            ready = dict(self._poller.poll(int(timeout * 1000)))
        except Exception:          # zmq.ZMQError (EINTR), closed sockets
            ready = {}
        out: list = []
        now = time.time()
        self._drain_udp([s for s in self.socks if s in ready], now, out)
        for r in self.relays:      # edge-triggered fd: always try, never rely on the poll alone
            r.receive(now, out)
        return out

    def process(self, datagrams: list, now: Optional[float] = None) -> np.ndarray:
        """Datagrams -> records to export now (passthrough/no-cache: all; cache: expired)."""
        recs = self.collector.feed(datagrams)
        if self.cache is None:
            return recs
        now = time.monotonic() if now is None else now
        overflow = self.cache.add(recs, now)
        last = self._last_expire
        if last is None or now - last >= 0.25 or now < last:   # timeouts are in seconds
            self._last_expire = now
            exp = self.cache.expire(now)
            if len(overflow):
                exp = np.concatenate([overflow, exp])
            return exp
        return overflow

    def batches(self) -> Iterator[np.ndarray]:
        """Record batches until stop() or --collector-idle-exit; the last batch carries what
        was still queued in the sockets and, in cache mode, the whole cache (the probe stops
        reading after the batch during which stop() was called, so nothing is left for later)."""
        empty = np.zeros(0, RECORD_DTYPE)
        while True:
            dgrams = self.receive(0.1)
            now = time.monotonic()
            if dgrams:
                self.received += len(dgrams)
                self.last_datagram = now
            idle_done = bool(self.idle_exit and not dgrams
                             and now - self.last_datagram >= self.idle_exit)
            if dgrams or self.cache is not None:
                out = self.process(dgrams, now)
            else:
                out = empty
            if self._stop or idle_done:
                yield self._final(out)
                return
            yield out if len(out) else empty

    def drain(self) -> np.ndarray:
        """Records still held (queued datagrams, the cache) once the probe stopped reading
        batches(); empty if batches() already returned them. For Probe._run_records to call
        after its loop, so a stop() during delivery loses nothing."""
        if self._drained:
            return np.zeros(0, RECORD_DTYPE)
        return self._final(np.zeros(0, RECORD_DTYPE))

    def _final(self, out: np.ndarray) -> np.ndarray:
        self._drained = True
        parts = [out] if len(out) else []
        for _ in range(64):                   # what is still queued in the sockets
            dgrams = self.receive(0) if (self.socks or self.relays) else []
            if not dgrams:
                break
            self.received += len(dgrams)
            recs = self.process(dgrams)
            if len(recs):
                parts.append(recs)
        if self.cache is not None:
            recs = self.cache.flush()
            if len(recs):
                parts.append(recs)
        if not parts:
            return np.zeros(0, RECORD_DTYPE)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def kernel_drops(self) -> int:
        total = 0
        for i, s in enumerate(self.socks):
            d = udp_drops(s)
            if d is not None:
                total += d - self._kernel_drops_base.get(i, 0)
        return total

    def stats(self) -> dict:
        c = self.collector.stats()
        fc = self.collector.flow_collection()
        fc["collection_port"] = self.ports[0] if self.ports else 0
        fc["collection_ports"] = list(self.ports)
        drops = self.kernel_drops() if self.socks else 0
        fc_drops = sum(e["num_drops"] for e in fc["exporters"].values()) + \
            c["totals"]["exporters_over_limit"]
        d = {"source": "collector", "mode": self.mode, "datagrams": self.received,
             "kernel_drops": drops, "collector": c, "flow_collection": fc,
             "collector_drops": {"flow_collection_drops": fc_drops,
                                 "flow_collection_udp_socket_drops": drops},
             "rcvbuf": self.rcvbuf}
        if self.cache is not None:
            d["cache"] = dict(self.cache.stats, active=len(self.cache))
        if self.bad_dump is not None:
            d["bad_packets_written"] = self.bad_dump.written
        if self.relays:
            d["relays"] = [r.stats() for r in self.relays]
            bad = sum(r.counters["bad_frames"] for r in self.relays)
            d["collector"]["totals"]["relay_bad_frames"] = bad
            d["collector_drops"]["flow_collection_drops"] += bad
        return d

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []
        for r in self.relays:
            r.close()
        self.relays = []
        if self._zctx is not None:
            self._zctx.term()
            self._zctx = None
        if self.bad_dump is not None:
            self.bad_dump.close()
