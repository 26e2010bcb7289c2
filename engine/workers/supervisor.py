"""The parent of `-g`: starts one worker per core, supervises and restarts them, runs the
exporters on the flows they hand off, and sums their statistics.

Supervision: the parent polls the PULL socket and every worker's process sentinel. A worker that
exits without its D message is reported on stderr (worker, core, pid, how it ended); the flows its
table held and those it had finished but not handed off (by its last statistics) are counted as
`lost_flows`. Live workers are restarted (same core, same fanout group). File workers are not: a
restarted worker would read its shard again and export its flows twice; the run finishes the other
shards and exits with status 1.
SIGINT/SIGTERM in the parent are forwarded (SIGTERM) to the workers; each stops reading, flushes its
table, sends its flows and D; the parent waits up to DRAIN_WAIT_S for every D, kills what is left
(counted as lost), closes the exporters and returns normally.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import resource
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from engine.errors import FlowprobeError
from engine.fields import RECORD_DTYPE
from engine.probe import RunLoop
from engine.stats import Snapshot, status_line, summary_line
from engine.workers.handoff import (DONE, ERROR, HELLO, RECORDS, SNDHWM, STATS, parse_ident)
from engine.workers.plan import sharded
from engine.workers.worker import WorkerSpec, worker_main

DRAIN_WAIT_S = 15.0          # SIGINT/SIGTERM: how long the parent waits for every worker's flows
EXIT_GRACE_S = 2.0           # a worker that exited 0 without D: dead once no message came this long
MAX_RESTARTS = 20            # per worker: a live worker that keeps dying is given up after this


@dataclass
class _Worker:
    index: int
    core: int
    generation: int = 0
    process: object = None
    pid: int = 0
    ready: bool = False
    done: bool = False
    gone: bool = False              # dead, not restarted
    exited_at: float = 0.0
    last: Snapshot = field(default_factory=Snapshot)
    restarts: int = 0
    error: Optional[str] = None
    prev_packets: int = 0
    pps: float = 0.0
    received: int = 0               # flows received from this generation of the worker


class Supervisor(RunLoop):
    """The parent of `-g`: starts and supervises the workers, runs the exporters, sums the
    statistics. Same interface as engine.probe.Probe for the CLI: stop(), run(), summary_line(),
    warnings, snapshot()."""

    def __init__(self, config, exporters: list, plan, cores: list[int],
                 log: Optional[Callable[[str], None]] = None, user: Optional[str] = None,
                 verbose: int = 0):
        import zmq
        from engine._fastpath import FlowTable
        super().__init__(config, exporters, log)
        self.plan = plan
        self.cores = cores
        self.user = user
        self.verbose = verbose
        self.lost_flows = 0
        self.handoff = {"messages": 0, "records": 0, "bytes": 0}
        self._retired: list[Snapshot] = []    # last statistics of workers that died
        self._drop_keys = list(FlowTable(max_flows=1).stats()["drops"])
        self._sharded = sharded(plan)
        self._deadline: Optional[float] = None
        self._last_message = 0.0
        self._error: Optional[str] = None
        self._cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        self.tmpdir = tempfile.mkdtemp(prefix="flowprobe-")
        self.endpoint = f"ipc://{self.tmpdir}/flows"
        self.ctx = zmq.Context(1)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.RCVHWM, SNDHWM)
        self.pull.bind(self.endpoint)
        self.mp = multiprocessing.get_context("spawn")
        self.workers = [_Worker(index=k, core=c) for k, c in enumerate(cores)]
        for w in self.workers:
            self._start(w)

    # --- processes --------------------------------------------------------------------------
    def _spec(self, w: _Worker) -> WorkerSpec:
        n = len(self.workers)
        cfg = replace(self.config, shard_index=w.index if self._sharded else 0,
                      shard_count=n if self._sharded else 1, stats_interval=0.0)
        return WorkerSpec(index=w.index, count=n, core=w.core, generation=w.generation,
                          endpoint=self.endpoint, plan=self.plan, config=cfg, user=self.user)

    def _start(self, w: _Worker) -> None:
        p = self.mp.Process(target=worker_main, args=(self._spec(w),),
                            name=f"flowprobe-worker-{w.index}", daemon=True)
        p.start()
        w.process, w.pid = p, p.pid
        w.ready = w.done = False
        w.exited_at = 0.0
        w.received = 0

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def stop(self) -> None:
        """SIGINT/SIGTERM: every worker drains its table; the parent waits for their flows."""
        self.stop_requested = True
        if self._deadline is None:
            self._deadline = time.monotonic() + DRAIN_WAIT_S
        for w in self.workers:
            if w.ready:      # one still starting has no handler yet: it is told once it says HELLO
                self._signal_stop(w)

    @staticmethod
    def _signal_stop(w) -> None:
        if w.process is not None and w.process.exitcode is None:
            try:
                os.kill(w.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # --- the loop -----------------------------------------------------------------------------
    def run(self, sources=None) -> None:
        try:
            self._loop()
            self._receive(limit=None)
            snap = self._final_tick()
            if self.verbose:
                for line in self.worker_lines(snap):
                    self.log(line)
                if self.verbose >= 2:           # the parent's own cost: for tuning -g
                    self.log(self.handoff_line())
        finally:
            try:
                for e in self.exporters:
                    e.close()
            finally:
                self._cleanup()
        if self._error:
            raise FlowprobeError(self._error)

    def _loop(self) -> None:
        import zmq
        while True:
            poller = zmq.Poller()
            poller.register(self.pull, zmq.POLLIN)
            for w in self.workers:
                if w.process is not None and not w.gone and w.exited_at == 0.0:
                    poller.register(w.process.sentinel, zmq.POLLIN)
            poller.poll(200)
            self._receive(limit=0.25)
            self._reap()
            self._maybe_tick()
            if all(w.done or w.gone for w in self.workers):
                return
            if self._deadline is not None and time.monotonic() > self._deadline:
                running = [w for w in self.workers if not (w.done or w.gone)
                           and w.process.exitcode is None]
                for w in running:           # (the exited ones' D is queued: _reap decides)
                    self._kill(w, f"did not finish within {DRAIN_WAIT_S:.0f} s of the stop "
                                  "request")
                if all(w.done or w.gone for w in self.workers):
                    return

    def _receive(self, limit: Optional[float]) -> None:
        """Messages until none is waiting or `limit` seconds passed (the loop must still tick
        while a slow exporter, e.g. a JSON dump, keeps the parent busy)."""
        import zmq
        end = None if limit is None else time.monotonic() + limit
        while end is None or time.monotonic() < end:
            try:
                kind, ident, payload = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._last_message = time.monotonic()
            index, gen = parse_ident(ident.bytes)
            w = self.workers[index]
            kind = kind.bytes
            self.handoff["messages"] += 1
            if kind == RECORDS:
                records = np.frombuffer(payload.buffer, dtype=RECORD_DTYPE)
                if gen == w.generation:
                    w.received += len(records)
                self.handoff["records"] += len(records)
                self.handoff["bytes"] += len(payload.buffer)
                self.deliver(records)
                continue
            current = gen == w.generation
            if kind == STATS and current:
                w.last = pickle.loads(payload.bytes)
            elif kind == HELLO and current:
                w.ready = True
                if self.stop_requested:
                    self._signal_stop(w)
            elif kind == DONE and current:
                last, warnings = pickle.loads(payload.bytes)
                w.last = last or w.last
                w.done = True
                for text in warnings:
                    if text not in self.warnings:
                        self.warnings.append(text)
            elif kind == ERROR:
                text = payload.bytes.decode(errors="replace")
                w.error = text
                if self._error is None:
                    self._error = text
                    self.stop()             # the same error would hit every worker: stop all

    def _reap(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.gone or w.process is None:
                continue
            code = w.process.exitcode
            if code is None:
                continue
            if not w.exited_at:
                w.exited_at = now
            if w.done:
                continue
            if code == 0 and now - max(w.exited_at, self._last_message) < EXIT_GRACE_S:
                continue                    # its D is still queued behind other messages
            self._died(w, code)

    @staticmethod
    def _how(code) -> str:
        if code is None:
            return "killed"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def _died(self, w: _Worker, code, why: Optional[str] = None) -> None:
        self._receive(limit=1.0)            # what it sent before dying counts
        if w.done:
            return
        # the flows its table held, and those it had finished (by its last statistics) but
        # not yet handed off
        lost = w.last.active_flows + max(0, w.last.exported_flows - w.received)
        self.lost_flows += lost
        self._retired.append(w.last.replace(active_flows=0))
        w.last = Snapshot()
        head = (f"flowprobe: error: worker {w.index} (core {w.core}, pid {w.pid}) "
                f"{why or 'died (' + self._how(code) + ')'}; {lost} flows lost")
        if w.error is not None:            # it reported why (cannot open the capture...)
            w.gone = True
            return
        restart = (not self._sharded and not self.stop_requested
                   and w.restarts < MAX_RESTARTS)
        if restart:
            self.log(head + "; restarting it")
            w.restarts += 1
            w.generation += 1
            self._start(w)
            return
        w.gone = True
        if self._sharded:
            self.log(head + "; not restarted (it would read its share of the input again)")
            self.warnings.append(f"worker {w.index} (core {w.core}) died: its share of the input "
                                 "was not fully processed")
        elif not self.stop_requested:
            self.log(head + f"; not restarted after {w.restarts} restarts")
            self.warnings.append(f"worker {w.index} (core {w.core}) kept dying; given up")
        else:
            self.log(head)

    def _kill(self, w: _Worker, why: str) -> None:
        try:
            w.process.kill()
            w.process.join(2.0)
        except Exception:
            pass
        self._died(w, w.process.exitcode, why)

    def _cleanup(self) -> None:
        for w in self.workers:
            p = w.process
            if p is None:
                continue
            p.join(1.0 if w.done else 0.0)
            if p.exitcode is None:
                p.kill()
                p.join(1.0)
        self.pull.close(linger=0)
        self.ctx.term()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    # --- flows and statistics ---------------------------------------------------------------
    def _elapsed(self, seconds: float) -> None:
        for w in self.workers:
            packets = w.last.packets
            w.pps = max(0, packets - w.prev_packets) / seconds
            w.prev_packets = packets

    def snapshot(self) -> Snapshot:
        """Probe.snapshot()'s counters summed over the workers (the dead ones' last statistics
        included), with `lost_flows`, `worker_restarts` and `workers` (one dict per worker)."""
        exporters = {}
        for e in self.exporters:
            exporters.update(e.stats())
        workers = []
        for w in self.workers:
            s = w.last
            workers.append({
                "index": w.index, "core": w.core, "pid": w.pid, "alive": not (w.gone or w.done),
                "restarts": w.restarts, "packets": s.packets, "pps": w.pps,
                "active_flows": s.active_flows, "kernel_drops": s.kernel_drops,
                "drops": sum(s.drops.values()), "busy_s": s.uptime})
        c = self.config
        return Snapshot.total(
            self._retired + [w.last for w in self.workers],
            drops={k: 0 for k in self._drop_keys},
            exported_by_reason={k: 0 for k in ("idle", "active", "fin", "rst", "end")},
            time=int(time.time()), uptime=time.time() - self.started,
            exported_flows=self.exported_flows, pps=self._rates[0], bps=self._rates[1],
            exporters=exporters, interface=c.interface_name, mode=c.mode,
            idle_timeout=c.idle_timeout, lifetime=c.lifetime, hostname=socket.gethostname(),
            exporting=self.exporting,
            lost_flows=self.lost_flows, worker_restarts=sum(w.restarts for w in self.workers),
            workers=workers)

    def status_lines(self, snap: Snapshot) -> list[str]:
        return [status_line(snap, f", {len(self.workers)} workers")] + self.worker_lines(snap)

    @staticmethod
    def worker_lines(snap: Snapshot) -> list[str]:
        return [f"flowprobe:   worker {w['index']} core {w['core']} pid {w['pid']}: "
                f"{w['pps']:.0f} pkts/s, {w['packets']} pkts, {w['active_flows']} active flows, "
                f"drops {w['drops']}, kernel drops {w['kernel_drops']}, up {w['busy_s']:.3f} s"
                + ("" if w["alive"] else ", finished") + (f", {w['restarts']} restarts"
                                                          if w["restarts"] else "")
                for w in snap.workers]

    def handoff_line(self) -> str:
        now = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (now.ru_utime + now.ru_stime) - (self._cpu0.ru_utime + self._cpu0.ru_stime)
        h = self.handoff
        per = cpu / h["records"] * 1e6 if h["records"] else 0.0
        return (f"flowprobe: hand-off: {h['messages']} messages, {h['records']} flows, "
                f"{h['bytes'] / 1e6:.1f} MB from {len(self.workers)} workers; parent CPU "
                f"{cpu:.2f} s ({per:.2f} us per flow, exporters included)")

    def summary_line(self) -> str:
        return summary_line(self.snapshot(), time.time() - self.started,
                            f", {len(self.workers)} workers")
