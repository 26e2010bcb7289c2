"""Multi-core capture (`-g CORES`): one pinned worker process per core, one probe towards ntopng.

Each worker is a fresh interpreter (multiprocessing "spawn": nothing of the parent's ZeroMQ
context, exporter sockets or threads is inherited) pinned to its core with sched_setaffinity. It
runs the ordinary single-process loop (`engine.probe.Probe`) on its own capture handle and its own
fast-path table, with one exporter: `_HandOff`, which pushes what the table finishes to the parent.

* Files: every worker opens the same capture(s) with its own mmap reader (the page cache is shared)
  and its table keeps only the packets whose address-pair hash falls on its shard
  (`FlowTable(shard_index=k, shard_count=N)`; tunnels hash on the inner addresses, fragments on the
  address pair), so N workers produce exactly the flows and counters of one process.
* Live interfaces: every worker opens its own capture (engine.sources.open_live: a TPACKET_V3
  ring by default) and joins one PACKET_FANOUT group in hash mode (the kernel's symmetric flow
  hash), so the kernel spreads flows; tables are not sharded.

Hand-off: a ZeroMQ PUSH socket per worker, connected to one PULL socket the parent binds on an
ipc:// path in a private temporary directory. Messages are multipart `[kind, "index:generation",
payload]`:
  H hello (pid, core) once the capture is open; R finished flows, the raw bytes of a RECORD_DTYPE
  array (gathered up to HANDOFF_FLOWS a message, sent at the latest with the next S); S the worker's
  statistics (its Probe.snapshot(), pickled) about once a second; D done: the last statistics, sent
  after the worker flushed its table and delivered every flow; E a one-line error (cannot open the
  capture...). PUSH blocks at its high-water mark, so a slow parent slows the workers down instead
  of losing flows. The parent runs the exporters (one ZeroMQ endpoint, NetFlow, dump) and therefore
  keeps one message-id sequence; it views each R payload as a record array without copying it.

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
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from engine import __version__
from engine.errors import FlowprobeError
from engine.probe import status_line, summary_line

DRAIN_WAIT_S = 15.0          # SIGINT/SIGTERM: how long the parent waits for every worker's flows
EXIT_GRACE_S = 2.0           # a worker that exited 0 without D: dead once no message came this long
MAX_RESTARTS = 20            # per worker: a live worker that keeps dying is given up after this
SNDHWM = 64                  # messages queued per worker before send blocks (backpressure)
HANDOFF_FLOWS = 4096         # flows per hand-off message (and at least one message a second): a
                             # message per finished batch (~50 flows) cost the parent CPU that the
                             # workers need when there is no spare core

_SUM_KEYS = ("packets", "bytes", "decoded", "kernel_drops", "fragments", "flows_created",
             "active_flows", "feature_pool_exhausted", "other_shard", "kernel_received")


def parse_cores(text: str) -> list[int]:
    """`0,1`, `0-3`, `1,3-5` -> a list of core numbers, in order."""
    cores: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                cores.extend(range(lo, hi + 1))
            else:
                cores.append(int(part))
        except ValueError:
            raise FlowprobeError(f"-g {text!r}: give cores as a list of numbers and ranges, "
                                 "e.g. 0,1 or 0-3 or 1,3-5", status=2) from None
    if not cores:
        raise FlowprobeError(f"-g {text!r}: no core given", status=2)
    allowed = os.sched_getaffinity(0)
    bad = [c for c in cores if c not in allowed]
    if bad:
        raise FlowprobeError(f"-g {text!r}: core {bad[0]} is not available to this process "
                             f"(it may use {_ranges(sorted(allowed))})", status=2)
    return cores


def _ranges(cores: list[int]) -> str:
    out, i = [], 0
    while i < len(cores):
        j = i
        while j + 1 < len(cores) and cores[j + 1] == cores[j] + 1:
            j += 1
        out.append(str(cores[i]) if i == j else f"{cores[i]}-{cores[j]}")
        i = j + 1
    return ",".join(out)


@dataclass
class WorkerPlan:
    """What every worker opens: capture files (sharded) or one live interface (fanout)."""
    kind: str                       # "file" | "live"
    inputs: list
    bpf: Optional[str] = None
    fanout_group: int = 0
    live_options: dict = field(default_factory=dict)    # engine.sources.open_live's


def plan_inputs(inputs: list[str], args) -> WorkerPlan:
    """Classify the -i values for workers without keeping anything open (the workers open their
    own handles). Files are opened once here so that a bad file is one error, not one per worker."""
    from engine.sources import live_backend, live_options
    from engine.sources.pcapfile import FileSource, expand_inputs
    files, live = [], []
    for item in expand_inputs(inputs):
        if item == "none":
            continue
        if os.path.exists(item):
            if not args.bpf_filter:
                FileSource(item).close()          # raises the one-line error for a bad file
            files.append(item)
        else:
            live_backend(item, getattr(args, "pfring", False))   # one error for a bad name
            live.append(item)
    if files and live:
        raise FlowprobeError("-g: give either capture files or interfaces, not both", status=2)
    if len(live) > 1:
        raise FlowprobeError("-g: workers capture on one interface (give one -i IFACE)", status=2)
    common = dict(bpf=args.bpf_filter, fanout_group=(os.getpid() & 0xFFFF),
                  live_options=live_options(args))
    if live:
        return WorkerPlan(kind="live", inputs=live, **common)
    if not files:
        raise FlowprobeError("-g: no capture file or interface to read (the collector runs "
                             "without -g)", status=2)
    return WorkerPlan(kind="file", inputs=files, **common)


@dataclass
class WorkerSpec:
    index: int
    count: int
    core: int
    generation: int
    endpoint: str
    plan: WorkerPlan
    config: object                  # engine.probe.ProbeConfig
    user: Optional[str] = None


# --- the worker process -----------------------------------------------------------------------
class _HandOff:
    """The worker's only exporter: flows and statistics to the parent's PULL socket."""

    def __init__(self, sock, ident: bytes, spec: WorkerSpec):
        self.sock = sock
        self.ident = ident
        self.spec = spec
        self.probe = None
        self.parent = os.getppid()
        self.last: dict = {}
        self.pending: list = []          # finished flows not yet sent (HANDOFF_FLOWS)
        self.pending_flows = 0

    def _send(self, frames) -> None:
        import zmq
        while True:
            try:
                self.sock.send_multipart(frames)
                return
            except zmq.Again:           # the parent is slow (backpressure) or gone
                if os.getppid() != self.parent:
                    raise SystemExit(3)

    def _stats(self, snap: dict) -> dict:
        d = dict(snap)
        d.update(pid=os.getpid(), core=self.spec.core, index=self.spec.index)
        if self.probe is not None:
            d["other_shard"] = self.probe.table.stats()["other_shard"]
            src = self.probe._current
            if src is not None:
                d["kernel_received"] = src.stats().get("kernel_received", 0)
        d.pop("exporters", None)
        return d

    def export(self, records: np.ndarray) -> None:
        if len(records):
            self.pending.append(records)
            self.pending_flows += len(records)
            if self.pending_flows >= HANDOFF_FLOWS:
                self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        records = np.concatenate(self.pending) if len(self.pending) > 1 else \
            np.ascontiguousarray(self.pending[0])
        self.pending, self.pending_flows = [], 0
        self._send([b"R", self.ident, records.data])

    def tick(self, snap: dict) -> None:
        self._flush()
        self.last = self._stats(snap)
        self._send([b"S", self.ident, pickle.dumps(self.last)])
        if os.getppid() != self.parent and self.probe is not None:
            self.probe.stop()            # the parent is gone: stop, nobody reads our flows

    def close(self) -> None:
        self._flush()
        final = dict(self.last)
        final["warnings"] = list(self.probe.warnings) if self.probe is not None else []
        self._send([b"D", self.ident, pickle.dumps(final)])

    def stats(self) -> dict:
        return {}


def _open_sources(spec: WorkerSpec) -> list:
    plan = spec.plan
    if plan.kind == "file":
        from engine.sources.live import PcapySource
        from engine.sources.pcapfile import FileSource
        return [PcapySource(p, live=False, bpf=plan.bpf) if plan.bpf else FileSource(p)
                for p in plan.inputs]
    from engine.sources import open_live
    return [open_live(plan.inputs[0], fanout_group=plan.fanout_group, **plan.live_options)]


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a worker process."""
    state = {"probe": None, "stop": False}

    def on_signal(*_):
        state["stop"] = True
        if state["probe"] is not None:
            state["probe"].stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import zmq
    from engine.probe import Probe
    ident = f"{spec.index}:{spec.generation}".encode()
    ctx = zmq.Context(1)
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    sock.setsockopt(zmq.SNDTIMEO, 5000)
    sock.setsockopt(zmq.LINGER, 30000)
    sock.connect(spec.endpoint)
    parent = os.getppid()
    status = 0
    try:
        try:
            os.sched_setaffinity(0, {spec.core})
        except OSError as e:
            raise FlowprobeError(f"cannot pin to core {spec.core}: {e.strerror}") from None
        sources = _open_sources(spec)
        if spec.user:
            from engine import service
            service.drop_privileges(spec.user)
        hand = _HandOff(sock, ident, spec)
        probe = Probe(spec.config, [hand], log=lambda line: None)
        hand.probe = probe
        state["probe"] = probe
        sock.send_multipart([b"H", ident, pickle.dumps({"pid": os.getpid(), "core": spec.core})])
        if state["stop"]:
            probe.stop()
        probe.run(sources)
    except FlowprobeError as e:
        sock.send_multipart([b"E", ident, str(e).encode()])
        status = 2
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    except Exception as e:  # a bug: one line to the parent, which reports it
        sock.send_multipart([b"E", ident, f"internal error in worker {spec.index}: "
                                          f"{type(e).__name__}: {e}".encode()])
        status = 70
    finally:
        orphan = os.getppid() != parent
        sock.close(linger=0 if orphan else None)   # LINGER: queued messages are delivered first
        ctx.term()
    sys.exit(status)


# --- the parent ---------------------------------------------------------------------------------
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
    last: dict = field(default_factory=dict)
    restarts: int = 0
    error: Optional[str] = None
    prev_packets: int = 0
    pps: float = 0.0
    received: int = 0               # flows received from this generation of the worker


def _sum_stats(stats: list[dict], drop_keys) -> dict:
    out = {k: 0 for k in _SUM_KEYS}
    out["drops"] = {k: 0 for k in drop_keys}
    out["exported_by_reason"] = {k: 0 for k in ("idle", "active", "fin", "rst", "end")}
    for s in stats:
        for k in _SUM_KEYS:
            out[k] += int(s.get(k, 0))
        for d in ("drops", "exported_by_reason"):
            for r, v in (s.get(d) or {}).items():
                out[d][r] = out[d].get(r, 0) + int(v)
    return out


class Supervisor:
    """The parent of `-g`: starts and supervises the workers, runs the exporters, sums the
    statistics. Same interface as engine.probe.Probe for the CLI: stop(), run(), summary_line(),
    warnings, snapshot()."""

    def __init__(self, config, exporters: list, plan: WorkerPlan, cores: list[int],
                 log: Optional[Callable[[str], None]] = None, user: Optional[str] = None,
                 verbose: int = 0):
        import zmq
        from engine._fastpath import FlowTable
        self.config = config
        self.exporters = exporters
        self.plan = plan
        self.cores = cores
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.user = user
        self.verbose = verbose
        self.warnings: list[str] = []
        self.stop_requested = False
        self.started = time.time()
        self.exported_flows = 0
        self.lost_flows = 0
        self.handoff = {"messages": 0, "records": 0, "bytes": 0}
        self._retired: list[dict] = []      # last statistics of workers that died
        self._drop_keys = list(FlowTable(max_flows=1).stats()["drops"])
        self._rates = (0.0, 0.0)
        self._last_counts = (0, 0)
        self._last_tick = time.monotonic()
        self._last_print = time.monotonic()
        self._deadline: Optional[float] = None
        self._last_message = 0.0
        self._error: Optional[str] = None
        self._cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        from engine.service import DropWarnings
        self._drop_warnings = DropWarnings(lambda line: self.log(line))
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
        sharded = self.plan.kind == "file"
        cfg = replace(self.config, shard_index=w.index if sharded else 0,
                      shard_count=n if sharded else 1, stats_interval=0.0)
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
            snap = self.snapshot()
            for e in self.exporters:
                e.tick(snap)
            self._drop_warnings.update(snap, force=True)
            if self.verbose:
                for line in self.worker_lines(snap):
                    self.log(line)
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
            index, gen = (int(x) for x in ident.bytes.split(b":"))
            w = self.workers[index]
            kind = kind.bytes
            self.handoff["messages"] += 1
            if kind == b"R":
                records = np.frombuffer(payload.buffer, dtype=_record_dtype())
                if gen == w.generation:
                    w.received += len(records)
                self.handoff["records"] += len(records)
                self.handoff["bytes"] += len(payload.buffer)
                self.deliver(records)
                continue
            current = gen == w.generation
            if kind == b"S" and current:
                w.last = pickle.loads(payload.bytes)
            elif kind == b"H" and current:
                w.ready = True
            elif kind == b"D" and current:
                w.last = pickle.loads(payload.bytes)
                w.done = True
                for text in w.last.pop("warnings", []):
                    if text not in self.warnings:
                        self.warnings.append(text)
            elif kind == b"E":
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
        lost = int(w.last.get("active_flows", 0)) + \
            max(0, int(w.last.get("exported_flows", 0)) - w.received)
        self.lost_flows += lost
        retired = dict(w.last)
        retired["active_flows"] = 0
        self._retired.append(retired)
        w.last = {}
        head = (f"flowprobe: error: worker {w.index} (core {w.core}, pid {w.pid}) "
                f"{why or 'died (' + self._how(code) + ')'}; {lost} flows lost")
        if w.error is not None:            # it reported why (cannot open the capture...)
            w.gone = True
            return
        restart = (self.plan.kind != "file" and not self.stop_requested
                   and w.restarts < MAX_RESTARTS)
        if restart:
            self.log(head + "; restarting it")
            w.restarts += 1
            w.generation += 1
            self._start(w)
            return
        w.gone = True
        if self.plan.kind == "file":
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
        snap = self.snapshot()
        pk, by = self._last_counts
        self._rates = ((snap["packets"] - pk) / elapsed, (snap["bytes"] - by) * 8 / elapsed)
        self._last_counts = (snap["packets"], snap["bytes"])
        snap["pps"], snap["bps"] = self._rates
        for w in self.workers:
            packets = int(w.last.get("packets", 0))
            w.pps = max(0, packets - w.prev_packets) / elapsed
            w.prev_packets = packets
        for e in self.exporters:
            e.tick(snap)
        self._drop_warnings.update(snap)
        if self.config.stats_interval and now - self._last_print >= self.config.stats_interval:
            self._last_print = now
            self.log(self.status_line(snap))
            for line in self.worker_lines(snap):
                self.log(line)

    def snapshot(self) -> dict:
        """The keys of Probe.snapshot(), summed over the workers (the dead ones' last statistics
        included), plus `lost_flows`, `worker_restarts` and `workers` (one dict per worker)."""
        st = _sum_stats(self._retired + [w.last for w in self.workers], self._drop_keys)
        exporters = {}
        for e in self.exporters:
            exporters.update(e.stats())
        workers = []
        for w in self.workers:
            s = w.last
            workers.append({
                "index": w.index, "core": w.core, "pid": w.pid, "alive": not (w.gone or w.done),
                "restarts": w.restarts, "packets": int(s.get("packets", 0)), "pps": w.pps,
                "active_flows": int(s.get("active_flows", 0)),
                "kernel_drops": int(s.get("kernel_drops", 0)),
                "drops": sum((s.get("drops") or {}).values()),
                "busy_s": float(s.get("uptime", 0.0))})
        return {
            "time": int(time.time()),
            "uptime": time.time() - self.started,
            "packets": st["packets"],
            "bytes": st["bytes"],
            "decoded": st["decoded"],
            "drops": st["drops"],
            "kernel_drops": st["kernel_drops"],
            "fragments": st["fragments"],
            "flows_created": st["flows_created"],
            "active_flows": st["active_flows"],
            "exported_flows": self.exported_flows,
            "collected_records": 0,
            "exported_by_reason": st["exported_by_reason"],
            "feature_pool_exhausted": st["feature_pool_exhausted"],
            "pps": self._rates[0],
            "bps": self._rates[1],
            "exporters": exporters,
            "interface": self.config.interface_name,
            "mode": self.config.mode,
            "idle_timeout": self.config.idle_timeout,
            "lifetime": self.config.lifetime,
            "version": __version__,
            "hostname": socket.gethostname(),
            "lost_flows": self.lost_flows,
            "worker_restarts": sum(w.restarts for w in self.workers),
            "workers": workers,
        }

    def status_line(self, snap: dict) -> str:
        return status_line(snap, f", {len(self.workers)} workers")

    @staticmethod
    def worker_lines(snap: dict) -> list[str]:
        return [f"flowprobe:   worker {w['index']} core {w['core']} pid {w['pid']}: "
                f"{w['pps']:.0f} pkts/s, {w['packets']} pkts, {w['active_flows']} active flows, "
                f"drops {w['drops']}, kernel drops {w['kernel_drops']}, up {w['busy_s']:.3f} s"
                + ("" if w["alive"] else ", finished") + (f", {w['restarts']} restarts"
                                                          if w["restarts"] else "")
                for w in snap["workers"]]

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


_DTYPE = None


def _record_dtype():
    global _DTYPE
    if _DTYPE is None:
        from engine.fields import RECORD_DTYPE
        _DTYPE = RECORD_DTYPE
    return _DTYPE
