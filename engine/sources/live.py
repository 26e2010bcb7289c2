"""Live capture (and BPF-filtered file reading) through pcapy-ng's batch API."""
from __future__ import annotations

import select
from typing import Iterator, Optional

import numpy as np

from engine._fastpath import META_DTYPE
from engine.errors import FlowprobeError
from engine.sources.base import Source

NO_PERMISSION = "no permission to capture (run as root or grant CAP_NET_RAW and CAP_NET_ADMIN)"
# pcap_activate() statuses (pcap/pcap.h)
ACTIVATE_ERRORS = {-5: "no such network interface", -8: NO_PERMISSION,
                   -9: "the interface is not up", -11: "no permission for promiscuous mode "
                                                        "(try --no-promisc)",
                   -4: "already capturing on this handle", -6: "monitor mode not supported"}

PCAPY_META = np.dtype([("sec", "=u4"), ("usec", "=u4"), ("offset", "=u4"), ("caplen", "=u4")])


def to_meta(packed: bytes, linktype: int) -> np.ndarray:
    """pcapy-ng's packed (sec, usec, offset, caplen) records as a META_DTYPE array, vectorised.
    pcapy-ng does not hand over the wire length: caplen stands in for it (set -s large enough)."""
    raw = np.frombuffer(packed, dtype=PCAPY_META)
    meta = np.empty(len(raw), dtype=META_DTYPE)
    meta["ts_ns"] = raw["sec"].astype(np.uint64) * 1_000_000_000 + raw["usec"].astype(np.uint64) * 1000
    meta["offset"] = raw["offset"]
    meta["caplen"] = raw["caplen"]
    meta["wirelen"] = raw["caplen"]
    meta["linktype"] = linktype
    meta["reserved"] = 0
    return meta


class PcapySource(Source):
    """A pcapy-ng handle: a live interface, or a file when a BPF filter must be applied."""

    def __init__(self, name: str, *, live: bool, snaplen: int = 65535, promisc: bool = True,
                 bpf: Optional[str] = None, batch: int = 4096, timeout_ms: int = 100,
                 fanout_group: Optional[int] = None, buffer_bytes: int = 64 << 20):
        import pcapy  # type: ignore[import-not-found]
        super().__init__(name)
        self.live = live
        self.batch = batch
        self.timeout_ms = timeout_ms
        try:
            if live:
                self.handle = pcapy.create(name)
                self.handle.set_snaplen(snaplen)
                self.handle.set_promisc(1 if promisc else 0)
                self.handle.set_timeout(timeout_ms)
                self.handle.set_buffer_size(buffer_bytes)
                status = self.handle.activate()    # libpcap reports failure as a status
                if status < 0:
                    raise FlowprobeError(f"{name!r}: " + ACTIVATE_ERRORS.get(
                        status, f"cannot start capturing (libpcap status {status})"))
                if fanout_group is not None:
                    self.handle.set_fanout(fanout_group, pcapy.PACKET_FANOUT_HASH)
            else:
                self.handle = pcapy.open_offline(name)
        except pcapy.PcapError as e:
            msg = str(e)
            if "No such device" in msg or "doesn't exist" in msg or "No such file" in msg:
                raise FlowprobeError(f"{name!r}: no such capture file or interface") from None
            if "ermission" in msg or "not permitted" in msg:
                raise FlowprobeError(f"{name!r}: {NO_PERMISSION}") from None
            raise FlowprobeError(f"{name!r}: {msg}") from None
        if bpf:
            try:
                self.handle.setfilter(bpf)
            except pcapy.PcapError as e:
                raise FlowprobeError(f"bad filter {bpf!r}: {e}") from None
        self.linktype = self.handle.datalink()

    def batches(self) -> Iterator[tuple[bytes, np.ndarray]]:
        """Batches until the file ends (or, live, until stop()); an empty batch when the link
        has been quiet for the poll timeout lets the caller expire flows."""
        if not self.live:
            while True:
                buf, packed = self.handle.next_batch(self.batch)
                if not packed:
                    return
                yield buf, to_meta(packed, self.linktype)
        # Live: a blocking next_batch can hold on for seconds while packets trickle in (and a
        # signal cannot stop it); non-blocking reads with our own poll bound the latency.
        self.handle.setnonblock(1)
        poller = select.poll()
        poller.register(self.handle.getfd(), select.POLLIN)
        while not self.stopped:
            buf, packed = self.handle.next_batch(self.batch)
            if packed:
                yield buf, to_meta(packed, self.linktype)
                continue
            if not poller.poll(self.timeout_ms):
                yield b"", np.empty(0, dtype=META_DTYPE)

    def stats(self) -> dict:
        if not self.live:
            return {"kernel_drops": 0}
        try:
            recv, drop, ifdrop = self.handle.stats()
        except Exception:
            return {"kernel_drops": 0}
        return {"kernel_received": recv, "kernel_drops": drop + ifdrop}

    def close(self) -> None:
        try:
            self.handle.close()
        except Exception:
            pass
