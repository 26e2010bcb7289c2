"""Probe statistics: one ``Snapshot`` type (what `-b` prints, the ZeroMQ event message,
--dump-stats and the Prometheus metrics are made from), the lines printed from it, and the
rate-limited warnings its drop counters raise."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

from engine import __version__

# the counters a -g parent adds up over its workers
SUMMED = ("packets", "bytes", "decoded", "kernel_drops", "kernel_received", "fragments",
          "flows_created", "active_flows", "other_shard", "feature_pool_exhausted",
          "l7_packets", "l7_pool_empty")
SUMMED_BY_REASON = ("drops", "exported_by_reason")


def empty_flow_collection() -> dict:
    return {"nf_ipfix_flows": 0, "sflow_samples": 0, "collection_port": 0, "exporters": {}}


@dataclass
class Snapshot:
    """Everything a run has counted, at one moment."""
    time: int = 0                     # epoch seconds
    uptime: float = 0.0
    packets: int = 0
    bytes: int = 0
    decoded: int = 0
    drops: dict = field(default_factory=dict)          # packets not accounted, by reason
    kernel_drops: int = 0
    kernel_received: int = 0
    file_errors: dict = field(default_factory=dict)    # capture files that ended early, by why
    fragments: int = 0
    flows_created: int = 0
    active_flows: int = 0
    other_shard: int = 0              # -g file workers: packets of another worker's shard
    exported_flows: int = 0           # finished flows handed to the exporters
    exporting: bool = True            # False: no exporter takes flows (-n none)
    collected_records: int = 0
    exported_by_reason: dict = field(default_factory=dict)
    feature_pool_exhausted: int = 0
    l7_packets: int = 0               # packets given to nDPI
    l7_pool_empty: int = 0            # flows left undetected: no nDPI flow state was free
    pps: float = 0.0
    bps: float = 0.0
    exporters: dict = field(default_factory=dict)      # every exporter's counters
    flow_collection: dict = field(default_factory=empty_flow_collection)   # ntopng's object
    collector_drops: dict = field(default_factory=dict)
    interface: str = ""
    mode: str = "packet_collection"
    idle_timeout: float = 30.0
    lifetime: float = 120.0
    version: str = __version__
    hostname: str = ""
    lost_flows: int = 0               # -g: flows of workers that died
    worker_restarts: int = 0
    workers: list = field(default_factory=list)        # -g: one dict per worker

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Snapshot":
        return dataclasses.replace(self, **changes)

    @classmethod
    def total(cls, parts: list["Snapshot"], **other) -> "Snapshot":
        """The counters of ``parts`` added up (workers' statistics), the rest from ``other``."""
        out = cls(**other)
        for p in parts:
            for reason, v in p.file_errors.items():     # every -g worker reads every file
                out.file_errors[reason] = max(out.file_errors.get(reason, 0), v)
            for k in SUMMED:
                setattr(out, k, getattr(out, k) + getattr(p, k))
            for k in SUMMED_BY_REASON:
                mine = getattr(out, k)
                for reason, v in getattr(p, k).items():
                    mine[reason] = mine.get(reason, 0) + v
        return out


# --- the lines -b and the end of a run print (one process or -g workers alike) -----------------
def drops_text(snap: Snapshot) -> str:
    """Every non-zero drop counter: decode reasons, kernel, exporters, lost flows."""
    drops = {k: v for k, v in snap.drops.items() if v}
    if snap.kernel_drops:
        drops["kernel"] = snap.kernel_drops
    for k, v in snap.file_errors.items():              # capture files that ended early
        drops[f"file_{k}"] = v
    for k, v in snap.exporters.items():
        if "drop" in k and v:
            drops[k] = v
    if snap.lost_flows:
        drops["lost_flows"] = snap.lost_flows
    return " ".join(f"{k}={v}" for k, v in drops.items()) or "none"


def delivery_text(snap: Snapshot) -> str:
    """What exporters say about their deliveries (stats keys ending in _status), e.g. Kafka's."""
    return "".join(f", {v}" for k, v in snap.exporters.items() if k.endswith("_status") and v)


def _exported(snap: Snapshot, short: bool = False) -> str:
    if snap.exporting:
        return f"{snap.exported_flows} {'' if short else 'flows '}exported"
    return f"{snap.exported_flows} {'' if short else 'flows '}finished (-n none: not exported)"


def status_line(snap: Snapshot, extra: str = "") -> str:
    return (f"flowprobe: {snap.pps:.0f} pkts/s {snap.bps / 1e6:.2f} Mbit/s, "
            f"{snap.packets} pkts, {snap.active_flows} active flows, "
            f"{_exported(snap, short=True)}, drops: {drops_text(snap)}"
            f"{delivery_text(snap)}{extra}")


def summary_line(snap: Snapshot, seconds: float, extra: str = "") -> str:
    secs = max(seconds, 1e-9)
    return (f"flowprobe: {snap.packets} packets ({snap.bytes} bytes on the wire) "
            f"in {secs:.2f} s ({snap.packets / secs:.0f} pkts/s), "
            f"{snap.flows_created} flows, {_exported(snap)}, "
            f"drops: {drops_text(snap)}{delivery_text(snap)}{extra}")


# --- rate-limited warnings ------------------------------------------------------------------
class DropWarnings:
    """A warning when a drop counter of the statistics grows: one line per reason at once,
    then at most one a window with the count (never one per packet)."""

    def __init__(self, emit: Callable[[str], None]):
        self.limiter = RateLimitedWarnings(emit)
        self.seen: dict[str, int] = {}

    def update(self, snap: Snapshot, force: bool = False) -> None:
        drops = dict(snap.drops)
        drops["kernel"] = snap.kernel_drops
        for reason, total in drops.items():
            new = total - self.seen.get(reason, 0)
            if new > 0:
                self.seen[reason] = total
                self.limiter.warn(reason, "flowprobe: warning: {count}{more} packets not "
                                  f"accounted ({reason}){{period}}", new)
        self.limiter.flush(force=force)


class RateLimitedWarnings:
    """The first warning of a kind is logged at once; more of the same kind within `window`
    seconds are only counted, and one line with the total follows when the window ends (or at
    exit, `flush(force=True)`)."""

    def __init__(self, emit: Callable[[str], None], window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.emit, self.window, self.clock = emit, window, clock
        self._open: dict[str, list] = {}     # key -> [window start, suppressed count, total, fmt]

    def warn(self, key: str, fmt: str, count: int = 1) -> None:
        """fmt has '{count}' (how many of the thing happened) and '{more}' ('' or ' more')."""
        now = self.clock()
        self.flush()
        st = self._open.get(key)
        if st is None:
            self._open[key] = [now, 0, 0, fmt]
            self.emit(fmt.format(count=count, more="", period=""))
        else:
            st[1] += 1
            st[2] += count
            st[3] = fmt

    def flush(self, force: bool = False) -> None:
        now = self.clock()
        for key, st in list(self._open.items()):
            start, repeats, total, fmt = st
            if not force and now - start < self.window:
                continue
            if repeats:
                self.emit(fmt.format(count=total, more=" more",
                                     period=f" in the last {now - start:.0f} s") +
                          f" ({repeats} repeated warnings suppressed)")
                self._open[key] = [now, 0, 0, fmt]
            else:
                del self._open[key]
