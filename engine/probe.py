"""The control loop of one capture queue: sources -> fast path -> exporters, with statistics.

Packet sources yield (buffer, META_DTYPE array) batches; record sources (the collector) yield
finished flow records directly. Exporters take record arrays. Nothing here runs per packet.
"""
from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np

from engine import __version__
from engine._fastpath import FlowTable
from engine.collect import merge_flow_collection, status_text


class Exporter(Protocol):
    def export(self, records: np.ndarray) -> None: ...
    def tick(self, stats: dict) -> None: ...      # about once a second, with Probe.snapshot()
    def close(self) -> None: ...                  # deliver what is queued (bounded wait)
    def stats(self) -> dict: ...                  # counters, drops included


@dataclass
class ProbeConfig:
    max_flows: int = 262144
    idle_timeout: float = 30.0
    lifetime: float = 120.0
    features: bool = True
    stats_interval: float = 0.0          # -b: print statistics every this many seconds (0: never)
    interface_name: str = ""
    mode: str = "packet_collection"
    shard_index: int = 0                 # a worker of `-g` owns this hash shard
    shard_count: int = 1                 # of this many (1: every packet; live fanout workers)


@dataclass
class Probe:
    config: ProbeConfig
    exporters: list = field(default_factory=list)
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)

    def __post_init__(self):
        c = self.config
        self.table = FlowTable(max_flows=c.max_flows, idle_timeout=c.idle_timeout,
                               lifetime=c.lifetime, features=c.features,
                               shard_index=c.shard_index, shard_count=c.shard_count)
        self.sources: list = []
        self.stop_requested = False
        self.started = time.time()
        self.exported_flows = 0
        self.collected_records = 0
        self._last_tick = time.monotonic()
        self._last_print = time.monotonic()
        self._last_counts = (0, 0)
        self._rates = (0.0, 0.0)      # packets/s, bits/s over the last interval
        self._finished_sources: list[dict] = []
        self._current = None
        self._source_stats: list[dict] = []
        self.warnings: list[str] = []     # problems with the input, reported at the end
        # packets not accounted -> rate-limited warnings (one line with a count)
        from engine.service import DropWarnings
        self._drop_warnings = DropWarnings(lambda line: self.log(line))

    # --- running ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to end after the current batch (signal handlers call this)."""
        self.stop_requested = True
        for s in self.sources:
            if hasattr(s, "stop"):
                s.stop()

    def run(self, sources: list) -> None:
        """Process every source in order, then flush the table and close the exporters."""
        self.sources = sources
        try:
            for src in sources:
                if self.stop_requested:
                    break
                self._current = src
                if getattr(src, "kind", "packets") == "records":
                    self._run_records(src)
                else:
                    self._run_packets(src)
                st = src.stats()
                if st.get("truncated_file"):
                    self.warnings.append(f"{src.name!r}: the file ends inside a packet record "
                                         "(truncated capture); the packets before it were used")
                self._finished_sources.append(st)
                self._current = None
                src.close()
            self._drain()
            snap = self.snapshot()           # the final statistics reach the exporters too
            for e in self.exporters:
                e.tick(snap)
            self._drop_warnings.update(snap, force=True)
        finally:
            for e in self.exporters:
                e.close()

    def _run_packets(self, src) -> None:
        table = self.table
        for buf, meta in src.batches():
            n = len(meta)
            if n == 0:
                table.expire(time.time_ns())
            i = 0
            while i < n:
                i = table.process(buf, meta, i)
                if table.pending:
                    self.deliver(table.take())
            if table.pending:
                self.deliver(table.take())
            self._maybe_tick()
            if self.stop_requested and not src.live:   # a live source reads what it holds, then
                break                                  # ends by itself

    def _run_records(self, src) -> None:
        for records in src.batches():
            if len(records):
                self.collected_records += len(records)
                self.deliver(records)
            self._maybe_tick()
            if self.stop_requested:
                break
        rest = src.drain()                   # a stop during delivery must not lose the cache
        if len(rest):
            self.collected_records += len(rest)
            self.deliver(rest)

    def _drain(self) -> None:
        while True:
            done = self.table.flush()
            if self.table.pending:
                self.deliver(self.table.take())
            if done:
                break

    def deliver(self, records: np.ndarray) -> None:
        self.exported_flows += len(records)
        for e in self.exporters:
            e.export(records)

    def _maybe_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick < 1.0:
            return
        elapsed = now - self._last_tick
        self._last_tick = now
        st = self.table.stats()
        pk, by = self._last_counts
        self._rates = ((st["packets"] - pk) / elapsed, (st["bytes"] - by) * 8 / elapsed)
        self._last_counts = (st["packets"], st["bytes"])
        snap = self.snapshot(st)
        for e in self.exporters:
            e.tick(snap)
        self._drop_warnings.update(snap)
        if self.config.stats_interval and now - self._last_print >= self.config.stats_interval:
            self._last_print = now
            self.log(self.status_line(snap))

    # --- statistics ---------------------------------------------------------------------
    def snapshot(self, table_stats: Optional[dict] = None) -> dict:
        """Everything counted so far, in one dict (the ZeroMQ `event` message is built from it)."""
        st = table_stats or self.table.stats()
        sources = list(self._finished_sources)
        if self._current is not None:
            sources.append(self._current.stats())
        kernel_drops = sum(s.get("kernel_drops", 0) for s in sources)
        collector_drops = {"flow_collection_drops": 0, "flow_collection_udp_socket_drops": 0}
        for s in sources:
            for k, v in s.get("collector_drops", {}).items():
                collector_drops[k] = collector_drops.get(k, 0) + v
        self._source_stats = sources
        exporters = {}
        for e in self.exporters:
            exporters.update(e.stats())
        return {
            "time": int(time.time()),
            "uptime": time.time() - self.started,
            "packets": st["packets"],
            "bytes": st["bytes"],
            "decoded": st["decoded"],
            "drops": st["drops"],
            "kernel_drops": kernel_drops,
            "fragments": st["fragments"],
            "flows_created": st["flows_created"],
            "active_flows": st["active_flows"],
            "exported_flows": self.exported_flows,
            "collected_records": self.collected_records,
            "exported_by_reason": st["exported_by_reason"],
            "feature_pool_exhausted": st["feature_pool_exhausted"],
            "pps": self._rates[0],
            "bps": self._rates[1],
            "exporters": exporters,
            "flow_collection": merge_flow_collection(sources),
            "collector_drops": collector_drops,
            "interface": self.config.interface_name,
            "mode": self.config.mode,
            "idle_timeout": self.config.idle_timeout,
            "lifetime": self.config.lifetime,
            "version": __version__,
            "hostname": socket.gethostname(),
        }

    def status_line(self, snap: dict) -> str:
        return status_line(snap, self._collector_text())

    def _collector_text(self) -> str:
        text = status_text(self._source_stats)
        return f", {text}" if text else ""

    def summary_line(self) -> str:
        return summary_line(self.snapshot(), time.time() - self.started, self._collector_text())


# --- the lines -b and the end of a run print (one process or -g workers alike) -----------------
def drops_text(snap: dict) -> str:
    """Every non-zero drop counter of a snapshot: decode reasons, kernel, exporters, lost flows."""
    drops = {k: v for k, v in snap["drops"].items() if v}
    if snap["kernel_drops"]:
        drops["kernel"] = snap["kernel_drops"]
    for k, v in snap["exporters"].items():
        if "drop" in k and v:
            drops[k] = v
    if snap.get("lost_flows"):
        drops["lost_flows"] = snap["lost_flows"]
    return " ".join(f"{k}={v}" for k, v in drops.items()) or "none"


def status_line(snap: dict, extra: str = "") -> str:
    return (f"flowprobe: {snap['pps']:.0f} pkts/s {snap['bps'] / 1e6:.2f} Mbit/s, "
            f"{snap['packets']} pkts, {snap['active_flows']} active flows, "
            f"{snap['exported_flows']} exported, drops: {drops_text(snap)}{extra}")


def summary_line(snap: dict, seconds: float, extra: str = "") -> str:
    secs = max(seconds, 1e-9)
    return (f"flowprobe: {snap['packets']} packets ({snap['bytes']} bytes on the wire) "
            f"in {secs:.2f} s ({snap['packets'] / secs:.0f} pkts/s), "
            f"{snap['flows_created']} flows, {snap['exported_flows']} flows exported, "
            f"drops: {drops_text(snap)}{extra}")
