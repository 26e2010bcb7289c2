"""The flow collector as a record source: UDP ports and flowrelay connections in, flow records out.

Modes (nProbe 9.0): the default merges collected records in a flow cache and exports them on the
idle/lifetime timeouts; no-cache converts each record and exports it at once; passthrough
converts 1:1 with no flow state.

Input: UDP sockets, and flowrelay instances (engine/collect/from_relay.py): the probe connects
out to the relay and takes the datagrams it forwards, CURVE-encrypted with the relay's key.
"""
from __future__ import annotations

import select
import socket
import time
from typing import Iterator, Optional

import numpy as np

from engine.collect._cache import FlowCache
from engine.collect._collect import Receiver
from engine.collect.collector import Collector
from engine.collect.receive import BATCH_DATAGRAMS, RCVBUF, udp_drops
from engine.errors import FlowprobeError, os_error_message
from engine.fields import RECORD_DTYPE, join_records
from engine.options import CollectorMode
from engine.sources.base import Source


class CollectorSource(Source):
    """A record source over one UDP socket per (address, port) of ``binds``, and one ZeroMQ PULL
    socket per flowrelay (``relays``: tcp:// URLs, ``relay_key``: its CURVE public key)."""
    kind = "records"

    socks: list[socket.socket]
    relays: list
    ports: list[int]
    _kernel_drops_base: dict[int, int]

    def __init__(self, binds, mode=CollectorMode.CACHE, upscale=True, idle_timeout=30.0,
                 lifetime=120.0, max_flows=262144, bad_dump=None, idle_exit=0.0, relays=(),
                 relay_key=None):
        super().__init__("collector")
        self.mode = mode = CollectorMode(mode)
        self.collector = Collector(mode=mode, upscale=upscale, bad_dump=bad_dump)
        self.cache = (FlowCache(max_flows, idle_timeout, lifetime)
                      if mode is CollectorMode.CACHE else None)
        self.bad_dump = bad_dump
        self.idle_exit = idle_exit
        self.socks = []
        self.relays = []
        self._zctx = None
        self._poller = None
        self.ports = []
        self._kernel_drops_base = {}
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
                                     status=2, setting="collector.binds") from None
            self.socks.append(s)
            self.ports.append(s.getsockname()[1])
            self._kernel_drops_base[len(self.socks) - 1] = udp_drops(s) or 0
        if bad_dump is not None and self.ports:
            bad_dump.port = self.ports[0]       # the dumped packets' destination port
        if relays:
            self._open_relays(relays, relay_key)
        self.received = 0
        self.last_datagram = time.monotonic()
        self._receiver = Receiver()             # recvmmsg: SLOTS datagrams a system call
        self._last_expire = None
        self._drained = False

    def _open_relays(self, urls, key) -> None:
        try:
            import zmq
        except ImportError:
            self.close()
            raise FlowprobeError("collecting from flowrelay needs pyzmq: pip install pyzmq",
                                 status=2) from None
        from engine.collect.from_relay import RelayReceiver
        self._zctx = zmq.Context()
        self._poller = zmq.Poller()
        for s in self.socks:
            self._poller.register(s, zmq.POLLIN)
        for url in urls:
            try:
                r = RelayReceiver(self._zctx, url, key)
            except zmq.ZMQError as e:
                self.close()
                raise FlowprobeError(str(e), status=2, setting="collector.relays",
                                     value=url) from None
            self.relays.append(r)
            self._poller.register(r.sock, zmq.POLLIN)

    # --- the source protocol ---------------------------------------------------------------
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
        for s in ready:
            self._receiver.receive(s.fileno(), now, out, BATCH_DATAGRAMS)

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
                exp = join_records([overflow, exp])
            return exp
        return overflow

    def batches(self) -> Iterator[np.ndarray]:  # type: ignore[override]  # records, not packets
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
            if self.stopped or idle_done:
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
        return join_records(parts)

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
        d = {"source": "collector", "mode": self.mode.value, "datagrams": self.received,
             "kernel_drops": drops, "collector": c, "flow_collection": fc,
             "collector_drops": {"flow_collection_drops": fc_drops,
                                 "flow_collection_udp_socket_drops": drops},
             "rcvbuf": self.rcvbuf}
        if self.cache is not None:
            d["cache"] = dict(self.cache.stats, active=len(self.cache))
        if self.bad_dump is not None:
            d["bad_packets_written"] = self.bad_dump.written
            d["bad_packets_not_dumped"] = self.bad_dump.write_errors
        if self.relays:
            d["relays"] = [r.stats() for r in self.relays]
            bad = sum(r.counters["bad_frames"] for r in self.relays)
            d["collector"]["totals"]["relay_bad_frames"] = bad
            d["collector_drops"]["flow_collection_drops"] += bad
        return d

    @staticmethod
    def describe(st: dict) -> str:
        """A short summary for the -b status line and the final summary: datagrams, records,
        sequence losses, bad datagrams, kernel drops."""
        t = st["collector"]["totals"]
        exporters = st["collector"]["exporters"]
        lost = sum(e["lost"] for e in exporters.values())
        return (f"collector: {t['datagrams']} datagrams, {t['records']} records from "
                f"{len(exporters)} exporters, {lost} lost (sequence), {t['bad_datagrams']} bad, "
                f"{st.get('kernel_drops', 0)} kernel drops")

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
