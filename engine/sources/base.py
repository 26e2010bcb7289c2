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
import sys
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
    RING = "ring"            # an interface through our TPACKET_V3 ring (Linux, Ethernet/loopback)
    PCAP = "pcap"            # an interface through libpcap (pcap:IFACE, 'any', tun/PPP, not Linux)
    PFRING = "pfring"        # an interface through PF_RING

    @property
    def live(self) -> bool:
        return self is not InputKind.FILE


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
    buffer_kib: int = 64 * 1024             # the ring's (or libpcap's) buffer
    block_kib: int = 1024                   # the ring's block: one batch

    def kinds(self) -> set:
        return {i.kind for i in self.inputs}


RING_HARDWARE_TYPES = (1, 772)        # ARPHRD_ETHER, ARPHRD_LOOPBACK: frames with Ethernet headers


def _hardware_type(iface: str) -> Optional[int]:
    try:
        with open(f"/sys/class/net/{iface}/type") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def classify_interface(name: str, pfring: bool = False) -> Input:
    """How an `-i` value that names an interface is captured (the module docstring of
    engine.sources says which), or one error line when it names none. Opens nothing."""
    prefix, _, rest = name.partition(":")
    if prefix in ("pcap", "pfring") and rest:
        kind, iface = prefix, rest
    else:
        kind, iface = ("pfring" if pfring else ""), name
    if kind == "pfring":                 # PF_RING has names of its own (zc:eth1): it checks them
        from engine.sources.pfring import require_binding
        require_binding()                  # one clear line now if PF_RING is not built
        return Input(InputKind.PFRING, iface)
    hw = _hardware_type(iface)
    if hw is None and iface != "any":
        raise FlowprobeError(f"{name!r}: no such capture file or network interface")
    if kind == "pcap" or not sys.platform.startswith("linux") or hw not in RING_HARDWARE_TYPES:
        return Input(InputKind.PCAP, iface)
    return Input(InputKind.RING, iface)


def plan_sources(capture) -> SourcePlan:
    """Classify ``-i`` values (list files expanded, 'none' skipped): files and interfaces;
    anything else is one clear error. ``capture`` is engine.options.CaptureOptions."""
    from engine.sources.pcapfile import expand_inputs
    inputs = []
    for item in expand_inputs(list(capture.inputs)):
        if item == "none":
            continue
        if os.path.exists(item):
            inputs.append(Input(InputKind.FILE, item))
        else:
            inputs.append(classify_interface(item, capture.pfring))
    return SourcePlan(tuple(inputs), bpf=capture.bpf, snaplen=capture.snaplen,
                      promisc=capture.promisc, buffer_kib=capture.buffer_kib,
                      block_kib=capture.block_kib)


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
    if item.kind is InputKind.PCAP:
        from engine.sources.live import PcapySource
        return PcapySource(item.name, live=True, snaplen=plan.snaplen, promisc=plan.promisc,
                           bpf=plan.bpf, fanout_group=plan.fanout_group,
                           buffer_bytes=plan.buffer_kib * 1024)
    from engine.sources.ring import RingSource
    return RingSource(item.name, snaplen=plan.snaplen, promisc=plan.promisc, bpf=plan.bpf,
                      fanout_group=plan.fanout_group, buffer_kib=plan.buffer_kib,
                      block_kib=plan.block_kib)


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
