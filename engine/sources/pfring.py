"""Live capture through PF_RING (`-i pfring:IFACE`, or `--pfring`), via the cffi binding built from
bindings/pfring_build.py (module `engine._pfring`, only built where libpfring is installed).

The C shim (bindings/pfring_shim.c) copies up to a batch of packets out of the ring into one buffer
plus a META_DTYPE array per call, so packets cross into Python once per batch, as with the other
sources. Several workers (`-g`) join one PF_RING cluster (per-flow, 2-tuple balancing), the
counterpart of PACKET_FANOUT for pcapy-ng handles.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from engine._fastpath import META_DTYPE
from engine.errors import FlowprobeError
from engine.sources.base import Source

NOT_BUILT = ("PF_RING capture is not available: the PF_RING binding (engine._pfring) was not "
             "built, because libpfring and pfring.h were not found when flowprobe was built")


def require_binding():
    """The cffi module, or one clear error line."""
    try:
        from engine import _pfring           # type: ignore[attr-defined]
    except ImportError:
        raise FlowprobeError(NOT_BUILT) from None
    return _pfring


class PfringSource(Source):
    def __init__(self, name: str, *, snaplen: int = 65535, promisc: bool = True,
                 bpf: Optional[str] = None, batch: int = 4096, timeout_ms: int = 100,
                 cluster_id: Optional[int] = None, buffer_size: int = 8 << 20):
        mod = require_binding()
        self.ffi, self.lib = mod.ffi, mod.lib
        super().__init__(name)
        self.live = True
        self.timeout_ms = timeout_ms
        err = self.ffi.new("char[256]")
        self.ring = self.lib.fp_open(name.encode(), snaplen, 1 if promisc else 0,
                                     bpf.encode() if bpf else self.ffi.NULL,
                                     -1 if cluster_id is None else cluster_id, err, 256)
        if self.ring == self.ffi.NULL:
            raise FlowprobeError(f"{name!r}: PF_RING: {self.ffi.string(err).decode(errors='replace')}")
        self.meta = np.zeros(batch, dtype=META_DTYPE)
        self.buf = bytearray(buffer_size)
        self._buf_c = self.ffi.from_buffer(self.buf)
        self._meta_c = self.ffi.cast("fp_meta_t *", self.ffi.from_buffer(self.meta))

    def batches(self) -> Iterator[tuple[object, np.ndarray]]:
        while not self.stopped:
            n = self.lib.fp_recv_batch(self.ring, self._buf_c, len(self.buf), self._meta_c,
                                       len(self.meta), self.timeout_ms)
            if n < 0:
                raise FlowprobeError(f"{self.name!r}: PF_RING receive failed ({n})")
            yield self.buf, self.meta[:n]

    def stats(self) -> dict:
        st = self.ffi.new("uint64_t[2]")
        if self.lib.fp_stats(self.ring, st) != 0:
            return {"kernel_drops": 0}
        return {"kernel_received": int(st[0]), "kernel_drops": int(st[1])}

    def close(self) -> None:
        if self.ring != self.ffi.NULL:
            self.lib.fp_close(self.ring)
            self.ring = self.ffi.NULL
