"""What every packet source is: the contract between a capture and the fast path.

A source yields *batches*: ``(buffer, meta)``, one buffer of frames and a ``META_DTYPE`` array
with one row per packet (timestamp in ns, offset into the buffer, captured and wire length, link
type). The fast path reads the frames in place; a batch stays valid until the caller asks for the
next one, so a source that hands out memory it must give back (a kernel ring block, a reused
buffer) does so when its generator is resumed. A live source yields an empty batch when the link
has been quiet for its poll timeout, so the caller can expire flows by wall-clock time.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


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

    def stop(self) -> None:
        """End :meth:`batches` after the current batch (called from signal handlers)."""
        self.stopped = True

    def close(self) -> None:
        """Release the capture; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
