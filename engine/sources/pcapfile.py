"""Packet files: our zero-copy mmap reader for pcap/pcapng, and list files of captures."""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from engine._fastpath import META_DTYPE
from engine._reader import PcapReader
from engine.errors import FlowprobeError, os_error_message
from engine.sources.base import Source

PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
               b"\x0a\x0d\x0d\x0a"}


def is_capture(path: str) -> bool:
    """True when the file starts like a pcap or pcapng file."""
    with open(path, "rb") as f:
        return f.read(4) in PCAP_MAGICS


def expand_inputs(inputs: list[str]) -> list[str]:
    """-i values in order, with list files (one capture path per line, # comments) expanded.
    Names that are not files are returned as they are (interfaces, 'none')."""
    out: list[str] = []
    for item in inputs:
        if not os.path.exists(item):
            out.append(item)
            continue
        try:
            if is_capture(item) or os.path.getsize(item) == 0:
                out.append(item)
                continue
            with open(item, "rb") as f:
                head = f.read(4096)
        except OSError as e:
            raise FlowprobeError(os_error_message(f"read {item!r}", e)) from None
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            out.append(item)          # binary, not a capture: the reader reports it
            continue
        if "\0" in text:
            out.append(item)
            continue
        base = os.path.dirname(item)
        with open(item, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                path = line if os.path.isabs(line) else os.path.join(base, line)
                if not os.path.isfile(path):
                    raise FlowprobeError(f"{item!r} is not a pcap/pcapng file, and read as a "
                                         f"list of captures its line {lineno} names no file")
                out.append(path)
    return out


class FileSource(Source):
    """Batches of one capture file, read in place through mmap."""

    def __init__(self, path: str, batch: int = 1024):
        # 1024 packets (~0.5 MB of frames) are still in L2 when the fast path decodes them
        self.path = path
        try:
            self.reader = PcapReader(path)
        except OSError as e:
            raise FlowprobeError(os_error_message(f"read {path!r}", e)) from None
        except ValueError as e:
            raise FlowprobeError(f"{path!r}: {e}") from None
        self.meta = np.zeros(batch, dtype=META_DTYPE)
        super().__init__(os.path.basename(path))

    def batches(self) -> Iterator[tuple[object, np.ndarray]]:
        while True:
            n = self.reader.next_batch(self.meta)
            if n == 0:
                return
            yield self.reader.buffer, self.meta[:n]

    def stats(self) -> dict:
        """``file_errors`` counts why the file ended early (PcapReader.end_reason), and
        ``file_error`` says so in one line for the end of the run ("" when it did not)."""
        r = self.reader
        reason = r.end_reason
        text = (f"{r.end_detail} at byte {r.end_offset} ({reason}); reading stopped there, the "
                f"{r.packets} packets before it were used") if reason else ""
        return {"file_errors": {reason: 1} if reason else {}, "file_error": text,
                "kernel_drops": 0}

    def stop(self) -> None:
        super().stop()
        self.reader.stop()            # within the batch being read, not after it

    def close(self) -> None:
        self.reader.close()
