"""Typed contract of the collector's C decode (engine/collect/_collect.pyx)."""
from typing import final

import numpy as np

HDR: int
H_NFIELDS: int
H_RECLEN: int
H_MINLEN: int
H_NSTEPS: int
H_FIRST: int
H_FIRST_KIND: int
H_LAST: int
H_LAST_KIND: int
H_INIT: int
H_FLAGS: int
H_IPVERSION: int
FLAG_ICMP: int
FLAG_HAD_ICMP: int
STEP_WORDS: int
OP_INT: int
OP_COPY: int
OP_EXP4: int
OP_EXP6: int
OP_ICMP_SET: int
OP_ICMP_HI: int
OP_ICMP_LO: int
OP_SAMPLING: int
SET_WORDS: int
S_OFF: int
S_LEN: int
S_PROG: int
S_COUNT: int
S_IPV: int
S_DOMAIN: int
S_EXPORT_MS: int
S_UPTIME_MS: int
S_INIT_MS: int
S_SAMPLING: int
VARLEN: int
SLOTS: int
RECORD_DTYPE: np.dtype

@final
class Receiver:
    calls: int
    def __init__(self) -> None: ...
    def receive(self, fd: int, now: float, out: list, limit: int) -> int: ...

@final
class Scanner:
    def __init__(self, v5prog: np.ndarray) -> None: ...
    def add_exporter(self, name: str, addr16: bytes, ipv: int) -> int: ...
    def add_domain(self, eslot: int, version: int, did: int) -> int: ...
    def set_domain(self, dslot: int, next_seq: int | None, last_seq: int | None, sampling: int,
                   init_ms: int) -> None: ...
    def set_template(self, dslot: int, tid: int, prog: np.ndarray | None) -> None: ...
    def fold(self) -> tuple[list, list, int, int]: ...
    def scan(self, datagrams: list, start: int, out: np.ndarray, n: int, upscale: bool,
             normalize: bool) -> tuple[int, int, int]: ...

def count_records(prog: np.ndarray, data: bytes | memoryview) -> int: ...
def decode_sets(buf: bytes, progs: np.ndarray, sets: np.ndarray, exporters: np.ndarray,
                out: np.ndarray, upscale: bool, normalize: bool) -> int: ...
