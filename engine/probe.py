"""The control loop of one capture queue: sources -> fast path -> exporters, with statistics.

Packet sources yield (buffer, META_DTYPE array) batches; record sources (the collector) yield
finished flow records directly. Exporters take record arrays. Nothing here runs per packet.
"""
from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from engine._fastpath import FlowTable
from engine.fields import join_records
from engine.stats import DropWarnings, Snapshot, empty_flow_collection, status_line, summary_line


# finished flows are handed to the exporters in batches of this many (and at least once a
# second): an encoder's per-call cost is then spread over thousands of flows, not ~50
DELIVERY_FLOWS = 4096


@dataclass(frozen=True)
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
    l7: bool = False                     # nDPI detection (the CLI turns it on where available)
    l7_tcp_packets: int = 80
    l7_other_packets: int = 24


def feed(table: FlowTable, buf, meta: np.ndarray, deliver: Callable[[np.ndarray], None]) -> None:
    """One batch through the table; every flow it finishes goes to ``deliver``."""
    n, i = len(meta), 0
    while i < n:
        i = table.process(buf, meta, i)
        if table.pending:
            deliver(table.take())


def drain(table: FlowTable, deliver: Callable[[np.ndarray], None]) -> None:
    """Every flow still in the table to ``deliver`` (end of input)."""
    while True:
        done = table.flush()
        if table.pending:
            deliver(table.take())
        if done:
            return


def capture_records(path: str, **table_options) -> tuple[np.ndarray, dict]:
    """Every flow of one capture file as one record array, and the table's statistics: the
    fast path without a run loop (tests, benchmarks, notebooks). ``table_options`` are
    FlowTable's (max_flows, idle_timeout, lifetime, features...)."""
    from engine.sources.pcapfile import FileSource
    table = FlowTable(**table_options)
    out: list = []
    with FileSource(path) as src:
        for buf, meta in src.batches():
            feed(table, buf, meta, out.append)
    drain(table, out.append)
    records = join_records(out)
    return records, table.stats()


def merge_flow_collection(source_stats: list) -> dict:
    """ntopng's ``flow_collection`` object from the stats() of every source (packet sources
    have none)."""
    out = empty_flow_collection()
    for st in source_stats:
        fc = st.get("flow_collection")
        if not fc:
            continue
        out["nf_ipfix_flows"] += fc["nf_ipfix_flows"]
        out["sflow_samples"] += fc["sflow_samples"]
        out["collection_port"] = out["collection_port"] or fc["collection_port"]
        out["exporters"].update(fc["exporters"])
    return out


class RunLoop:
    """What one process (Probe) and the -g parent (engine.workers.Supervisor) share: every
    finished flow to the exporters, and about once a second the statistics to the exporters,
    the drop warnings and, with -b, the log. Subclasses provide snapshot() and run()."""

    def __init__(self, config: ProbeConfig, exporters: list, log=None):
        self.config = config
        self.exporters = exporters
        self.log: Callable[[str], None] = log or (lambda line: print(line, file=sys.stderr,
                                                                      flush=True))
        self.stop_requested = False
        self.started = time.time()
        self.exported_flows = 0
        self.warnings: list[str] = []     # problems with the input, reported at the end
        self._last_tick = self._last_print = time.monotonic()
        self._last_counts = (0, 0)
        self._rates = (0.0, 0.0)      # packets/s, bits/s over the last interval
        # packets not accounted -> rate-limited warnings (one line with a count)
        self._drop_warnings = DropWarnings(lambda line: self.log(line))
        self._gathered: list[np.ndarray] = []
        self._gathered_flows = 0

    def snapshot(self) -> Snapshot:
        raise NotImplementedError

    @property
    def exporting(self) -> bool:
        """Whether any exporter takes flows (not with -n none and nothing else)."""
        return any(not e.passive for e in self.exporters)

    def undelivered(self) -> list[str]:
        """One line per exporter that was given flows and delivered none (no subscriber, a
        wrong key, no broker): a run that looked fine and sent nothing anywhere."""
        return [t for t in (e.undelivered() for e in self.exporters) if t]

    def status_lines(self, snap: Snapshot) -> list[str]:
        """What -b prints every second."""
        return [status_line(snap)]

    def deliver(self, records: np.ndarray) -> None:
        """Finished flows, gathered for the exporters (DELIVERY_FLOWS at a time)."""
        self.exported_flows += len(records)
        self._gathered.append(records)
        self._gathered_flows += len(records)
        if self._gathered_flows >= DELIVERY_FLOWS:
            self.hand_over()

    def hand_over(self) -> None:
        """Every gathered flow to the exporters, now."""
        if not self._gathered:
            return
        parts, self._gathered, self._gathered_flows = self._gathered, [], 0
        records = join_records(parts)
        for e in self.exporters:
            e.export(records)

    def _elapsed(self, seconds: float) -> None:
        """Called once a second before the snapshot is taken (per-worker rates)."""

    def _maybe_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick < 1.0:
            return
        elapsed = now - self._last_tick
        self._last_tick = now
        self.hand_over()
        self._elapsed(elapsed)
        snap = self.snapshot()
        pk, by = self._last_counts
        self._rates = ((snap.packets - pk) / elapsed, (snap.bytes - by) * 8 / elapsed)
        self._last_counts = (snap.packets, snap.bytes)
        snap = snap.replace(pps=self._rates[0], bps=self._rates[1])
        for e in self.exporters:
            e.tick(snap)
        self._drop_warnings.update(snap)
        if self.config.stats_interval and now - self._last_print >= self.config.stats_interval:
            self._last_print = now
            for line in self.status_lines(snap):
                self.log(line)

    def _final_tick(self) -> Snapshot:
        """The last flows and statistics reach the exporters, and the warnings too."""
        self.hand_over()
        snap = self.snapshot()
        for e in self.exporters:
            e.tick(snap)
        self._drop_warnings.update(snap, force=True)
        return snap


class Probe(RunLoop):
    def __init__(self, config: ProbeConfig, exporters: Optional[list] = None, log=None):
        super().__init__(config, exporters if exporters is not None else [], log)
        c = config
        self.table = FlowTable(max_flows=c.max_flows, idle_timeout=c.idle_timeout,
                               lifetime=c.lifetime, features=c.features,
                               shard_index=c.shard_index, shard_count=c.shard_count, l7=c.l7,
                               l7_tcp_packets=c.l7_tcp_packets,
                               l7_other_packets=c.l7_other_packets)
        self.sources: list = []
        self.collected_records = 0
        self._finished: list[tuple] = []          # (source, its last stats())
        self._current = None

    # --- running ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to end after the current batch (signal handlers call this)."""
        self.stop_requested = True
        for s in self.sources:
            s.stop()

    def run(self, sources: list) -> None:
        """Process every source in order, then flush the table and close the exporters."""
        self.sources = sources
        if self.stop_requested:         # asked before the run: live sources still hand over
            for s in sources:           # what they already hold, files are not read
                s.stop()
        try:
            for src in sources:
                if self.stop_requested and not src.live:
                    break
                self._current = src
                if src.kind == "records":
                    self._run_records(src)
                else:
                    self._run_packets(src)
                st = src.stats()
                if st.get("file_error"):
                    self.warnings.append(f"{src.name!r}: {st['file_error']}")
                self._finished.append((src, st))
                self._current = None
                src.close()
            self._drain()
            self._final_tick()
        finally:
            for e in self.exporters:
                e.close()

    def _run_packets(self, src) -> None:
        for buf, meta in src.batches():
            if len(meta) == 0:              # a quiet link: time passes without packets
                self.table.expire(time.time_ns())
            feed(self.table, buf, meta, self.deliver)
            if self.table.pending:          # what expire() finished
                self.deliver(self.table.take())
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
        drain(self.table, self.deliver)

    # --- statistics ---------------------------------------------------------------------
    def _sources(self) -> list[tuple]:
        """(source, stats) of every source so far, the current one included."""
        out = list(self._finished)
        if self._current is not None:
            out.append((self._current, self._current.stats()))
        return out

    def snapshot(self) -> Snapshot:
        """Everything counted so far (the ZeroMQ `event` message is built from it)."""
        st = self.table.stats()
        sources = [s for _, s in self._sources()]
        collector_drops = {"flow_collection_drops": 0, "flow_collection_udp_socket_drops": 0}
        file_errors: dict = {}                  # capture files that ended early, by reason
        for s in sources:
            for k, v in s.get("collector_drops", {}).items():
                collector_drops[k] = collector_drops.get(k, 0) + v
            for k, v in s.get("file_errors", {}).items():
                file_errors[k] = file_errors.get(k, 0) + v
        exporters = {}
        for e in self.exporters:
            exporters.update(e.stats())
        c = self.config
        return Snapshot(
            time=int(time.time()), uptime=time.time() - self.started,
            packets=st["packets"], bytes=st["bytes"], decoded=st["decoded"], drops=st["drops"],
            kernel_drops=sum(s.get("kernel_drops", 0) for s in sources),
            kernel_received=sum(s.get("kernel_received", 0) for s in sources),
            file_errors=file_errors,
            fragments=st["fragments"], flows_created=st["flows_created"],
            # the collector's cache holds flows too
            active_flows=st["active_flows"] + sum(s.get("cache", {}).get("active", 0)
                                                  for s in sources),
            other_shard=st["other_shard"],
            exported_flows=self.exported_flows, collected_records=self.collected_records,
            exported_by_reason=st["exported_by_reason"],
            feature_pool_exhausted=st["feature_pool_exhausted"],
            l7_packets=st["l7_packets"], l7_pool_empty=st["l7_pool_empty"],
            pps=self._rates[0], bps=self._rates[1], exporters=exporters,
            flow_collection=merge_flow_collection(sources), collector_drops=collector_drops,
            interface=c.interface_name, mode=c.mode, idle_timeout=c.idle_timeout,
            lifetime=c.lifetime, hostname=socket.gethostname(), exporting=self.exporting)

    def _sources_text(self) -> str:
        texts = [src.describe(st) for src, st in self._sources()]
        return "".join(f", {t}" for t in texts if t)

    def status_lines(self, snap: Snapshot) -> list[str]:
        return [status_line(snap, self._sources_text())]

    def summary_line(self) -> str:
        return summary_line(self.snapshot(), time.time() - self.started, self._sources_text())
