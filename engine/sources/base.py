"""What every packet source is: the contract between a capture and the fast path.

A source yields *batches*: ``(buffer, meta)``, one buffer of frames and a ``META_DTYPE`` array
with one row per packet (timestamp in ns, offset into the buffer, captured and wire length, link
type). The fast path reads the frames in place; a batch stays valid until the caller asks for the
next one, so a source that hands out memory it must give back (a kernel ring block, a reused
buffer) does so when its generator is resumed. A live source yields an empty batch when the link
has been quiet for its poll timeout, so the caller can expire flows by wall-clock time.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from engine.errors import FlowprobeError


class Source:
    """A packet source. Subclasses implement :meth:`batches`; the rest has defaults."""

    kind = "packets"          # record sources (the collector) say "records"
    live = False              # a network interface, as opposed to a file

    def __init__(self, name: str):
        self.name = name
        self.stopped = False

    def batches(self) -> Iterator[tuple[object, np.ndarray]]:
        raise NotImplementedError

    def stats(self) -> dict:
        """Counters of the capture itself: ``kernel_drops`` always, others as the source has
        them (``kernel_received``, ``file_errors``)."""
        return {"kernel_drops": 0}

    def describe(self, stats: dict) -> str:
        """What the summary lines add about this source ('' for nothing)."""
        return ""

    def stop(self) -> None:
        """End :meth:`batches` after the current batch (called from signal handlers)."""
        self.stopped = True

    def close(self) -> None:
        """Release the capture; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- what to open ------------------------------------------------------------------------------
class InputKind(enum.Enum):
    FILE = "file"            # pcap/pcapng, read in place (or through libpcap with a BPF filter)
    LIVE = "live"            # a network interface
    PFRING = "pfring"        # a network interface through PF_RING


@dataclass(frozen=True)
class Input:
    kind: InputKind
    name: str


@dataclass(frozen=True)
class SourcePlan:
    """The packet inputs of a run, classified but not opened (workers open their own)."""
    inputs: tuple[Input, ...]
    bpf: Optional[str] = None
    snaplen: int = 65535
    promisc: bool = True
    fanout_group: Optional[int] = None      # live workers: one PACKET_FANOUT group / PF_RING cluster

    def kinds(self) -> set:
        return {i.kind for i in self.inputs}


def plan_sources(capture) -> SourcePlan:
    """Classify ``-i`` values (list files expanded, 'none' skipped): files, interfaces, PF_RING
    interfaces; anything else is one clear error. ``capture`` is engine.options.CaptureOptions."""
    from engine.sources.pcapfile import expand_inputs
    inputs = []
    for item in expand_inputs(list(capture.inputs)):
        if item == "none":
            continue
        if os.path.exists(item):
            inputs.append(Input(InputKind.FILE, item))
        elif item.startswith("pfring:"):
            inputs.append(Input(InputKind.PFRING, item.split(":", 1)[1]))
        elif os.path.exists(f"/sys/class/net/{item}") or item in ("any", "lo"):
            inputs.append(Input(InputKind.PFRING if capture.pfring else InputKind.LIVE, item))
        else:
            raise FlowprobeError(f"{item!r}: no such capture file or network interface")
    if any(i.kind is InputKind.PFRING for i in inputs):
        from engine.sources.pfring import require_binding
        require_binding()                  # one clear line now if PF_RING is not built
    return SourcePlan(tuple(inputs), bpf=capture.bpf, snaplen=capture.snaplen,
                      promisc=capture.promisc)


def open_source(plan: SourcePlan, item: Input) -> Source:
    if item.kind is InputKind.FILE:
        if plan.bpf:          # libpcap applies the filter; our reader has no BPF engine
            from engine.sources.live import PcapySource
            return PcapySource(item.name, live=False, bpf=plan.bpf)
        from engine.sources.pcapfile import FileSource
        return FileSource(item.name)
    if item.kind is InputKind.PFRING:
        from engine.sources.pfring import PfringSource
        return PfringSource(item.name, snaplen=plan.snaplen, promisc=plan.promisc, bpf=plan.bpf,
                            cluster_id=plan.fanout_group)
    from engine.sources.live import PcapySource
    return PcapySource(item.name, live=True, snaplen=plan.snaplen, promisc=plan.promisc,
                       bpf=plan.bpf, fanout_group=plan.fanout_group)


def open_sources(plan: SourcePlan) -> list[Source]:
    """Every input of the plan opened, in order; on an error the ones opened are closed."""
    out: list[Source] = []
    try:
        for item in plan.inputs:
            out.append(open_source(plan, item))
    except BaseException:
        for s in out:
            s.close()
        raise
    return out
