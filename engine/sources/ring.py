"""Live capture on Linux through a TPACKET_V3 ring (engine/sources/_ring.pyx): the default for
`-i IFACE` on Ethernet-like interfaces.

Each ring block becomes one batch whose META rows point at the frames inside the mmap'ed ring (no
copy); the block goes back to the kernel when the next batch is asked for. The ring is
``--buffer-size`` KiB in blocks of ``--ring-block-size`` KiB.
"""
from __future__ import annotations

import errno
import os
import signal
import threading
import time
from typing import Iterator, Optional

import numpy as np

from engine._fastpath import META_DTYPE
from engine.errors import FlowprobeError
from engine.sources.base import Source
from engine.sources.live import NO_PERMISSION

DEFAULT_BUFFER_KIB = 64 * 1024         # the ring (per socket; each -g worker has one)
DEFAULT_BLOCK_KIB = 1024               # one block is one batch
PAGE = os.sysconf("SC_PAGE_SIZE")
ERRNO_TEXT = {errno.EPERM: NO_PERMISSION, errno.EACCES: NO_PERMISSION,
              errno.ENODEV: "no such network interface", errno.ENXIO: "no such network interface",
              errno.ENETDOWN: "the interface is down (ip link set IFACE up)"}


def available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def ring_geometry(buffer_kib: int, block_kib: int, snaplen: int) -> tuple[int, int]:
    """(block size in bytes, block count) for the flags, or one line saying what is wrong."""
    block = block_kib * 1024
    if block % PAGE:
        raise FlowprobeError(f"--ring-block-size must be a multiple of the page size "
                             f"({PAGE // 1024} KiB), not {block_kib} KiB", status=2)
    if block < snaplen + 4096:               # a frame never spans blocks
        raise FlowprobeError(f"--ring-block-size ({block_kib} KiB) must hold a whole packet of "
                             f"the snapshot length (-s {snaplen}) plus its header", status=2)
    count = max(2, -(-buffer_kib // block_kib))
    free = available_memory()
    if free is not None and block * count > free:
        raise FlowprobeError(f"a capture ring of {block * count >> 20} MiB does not fit in the "
                             f"available memory ({free >> 20} MiB): lower --buffer-size")
    return block, count


class RingSource(Source):
    """A TPACKET_V3 ring on one interface; joins a PACKET_FANOUT group for `-g` workers."""

    live = True

    def __init__(self, name: str, *, snaplen: int = 65535, promisc: bool = True,
                 bpf: Optional[str] = None, fanout_group: Optional[int] = None,
                 buffer_kib: int = DEFAULT_BUFFER_KIB, block_kib: int = DEFAULT_BLOCK_KIB,
                 timeout_ms: int = 100):
        from engine.sources import _ring
        super().__init__(name)
        self.timeout_ms = timeout_ms
        block, count = ring_geometry(buffer_kib, block_kib, snaplen)
        try:
            program = (_ring.compile_filter(name, bpf, snaplen) if bpf
                       else _ring.accept_all(snaplen))
            self.ring = _ring.Ring(name, block_size=block, block_count=count, program=program,
                                   promisc=promisc, timeout_ms=timeout_ms,
                                   fanout_group=-1 if fanout_group is None else fanout_group)
        except ValueError as e:
            raise FlowprobeError(f"bad filter {bpf!r}: {e}") from None
        except OSError as e:
            raise FlowprobeError(f"{name!r}: {self._error_text(e, block * count)}") from None
        self.meta = np.zeros(block // _ring.MIN_FRAME + 1, dtype=META_DTYPE)
        self.wakeup = self._wake_on_signals()

    def _wake_on_signals(self) -> Optional[tuple[int, int]]:
        """A signal may be delivered to another thread (the metrics server's): then poll() in
        this one is not interrupted, and its handler would wait for the poll timeout. Python's
        signal wake-up fd, polled beside the ring, ends the wait at once. Only in the main
        thread, and only when nothing else uses the wake-up fd."""
        if threading.current_thread() is not threading.main_thread():
            return None
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if signal.set_wakeup_fd(w, warn_on_full_buffer=False) != -1:
            signal.set_wakeup_fd(-1)      # not ours to replace: put it back
            os.close(r)
            os.close(w)
            return None
        self.ring.wake_on(r)
        return r, w

    @staticmethod
    def _error_text(e: OSError, ring_bytes: int) -> str:
        if e.errno in ERRNO_TEXT:
            return ERRNO_TEXT[e.errno]
        if e.errno == errno.ENOMEM:
            return (f"the kernel cannot allocate a capture ring of {ring_bytes >> 20} MiB: lower "
                    "--buffer-size")
        return str(e.strerror or e)

    def batches(self) -> Iterator[tuple[object, np.ndarray]]:
        """One batch per ring block; an empty one when the link was quiet for the poll timeout.
        After stop(), the blocks the kernel hands over within one more retire period are still
        read up to the first packet that arrived after the stop, so every packet that arrived
        before it counts (the last block retires at most one period late) and none after it."""
        ring, meta = self.ring, self.meta
        period = self.timeout_ms / 1000
        while True:
            try:
                n = ring.next_block(meta, self.timeout_ms)
            except OSError as e:
                raise FlowprobeError(f"{self.name!r}: capture failed: "
                                     f"{ERRNO_TEXT.get(e.errno or 0) or e.strerror}") from None
            rows = meta[:n]
            if not self.stopped:
                yield ring, rows
                continue
            late = rows["ts_ns"] > self.stopped_ns
            if late.any():
                rows = rows[~late]
            if len(rows):
                yield ring, rows
            waited = time.monotonic() - self.stopped_at
            if late.any() or (not n and waited >= period) or waited >= 2 * period:
                return

    def stop(self) -> None:
        if not self.stopped:
            self.stopped_ns, self.stopped_at = time.time_ns(), time.monotonic()
        super().stop()

    def stats(self) -> dict:
        return self.ring.stats()

    def close(self) -> None:
        self.ring.close()
        if self.wakeup is not None:
            self.ring.wake_on(-1)
            signal.set_wakeup_fd(-1)
            for fd in self.wakeup:
                os.close(fd)
            self.wakeup = None
