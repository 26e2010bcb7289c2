"""Fuzz targets: each takes one input (bytes) and raises only on a finding.

Our parsers count bad input and carry on; the only exceptions a target lets pass are the ones a
parser documents for input it refuses as a whole (a file that is not a capture, a TLV payload
that is not one, a configuration line that is not an option). Anything else, a crash or a hang,
is a finding. Used by tools/fuzz/run.py (atheris, coverage-guided) and, over the kept inputs, by
tests/test_fuzz.py.
"""
from __future__ import annotations

import os
import struct
import tempfile

import numpy as np

from engine._fastpath import META_DTYPE, FlowTable, l7_info
from engine._reader import PcapReader
from engine.arguments import build_parser
from engine.collect._cache import FlowCache
from engine.collect.collector import Collector, _parsers
from engine.config import read_config
from engine.errors import FlowprobeError
from engine.export._encode import decode_tlv
from engine.export.tlv import TLVError, decode

_parsers()          # the parser modules, imported here so that atheris instruments them
_PARSER = build_parser()

_TMP = tempfile.mkdtemp(prefix="flowprobe-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                        else None)
_META = np.zeros(256, META_DTYPE)
# the link types the decoder knows, and one it does not
LINKTYPES = (1, 0, 9, 12, 14, 50, 101, 104, 108, 113, 228, 229, 276, 147)


def reader(data: bytes) -> None:
    """A capture file: pcap or pcapng, read to its end (or to its first bad length)."""
    path = os.path.join(_TMP, "capture")
    with open(path, "wb") as f:
        f.write(data)
    try:
        rd = PcapReader(path)
    except ValueError:                  # "not a pcap or pcapng file ..."
        return
    with rd:
        total = 0
        while (n := rd.next_batch(_META)):
            rows = _META[:n]
            end = rows["offset"] + rows["caplen"]
            assert int(end.max()) <= len(data), "a packet past the end of the file"
            total += n
        assert total == rd.packets


def _frames(data: bytes) -> list[bytes]:
    """Up to 16 frames: each a 1-byte length then that many bytes (the rest is the last one)."""
    out, i = [], 0
    while i < len(data) and len(out) < 15:
        n = data[i]
        out.append(data[i + 1:i + 1 + n])
        i += 1 + n
    out.append(data[i:])
    return out


_L7_TABLE = None
L7_AVAILABLE = l7_info()["available"]


def decoder(data: bytes) -> None:
    """Frames of one link type (the first byte picks it) through the flow table, two seconds
    apart so that the timeouts expire some flows, then flushed. A first byte of 128 or more
    takes the table with nDPI detection (one for the run: building nDPI's module takes ~60 ms),
    whose flows every input's flush ends."""
    global _L7_TABLE
    if not data:
        return
    linktype = LINKTYPES[data[0] % len(LINKTYPES)]
    frames = _frames(data[1:])
    meta = np.zeros(len(frames), META_DTYPE)
    meta["offset"] = np.cumsum([0] + [len(f) for f in frames[:-1]])
    meta["caplen"] = [len(f) for f in frames]
    meta["wirelen"] = meta["caplen"]
    meta["linktype"] = linktype
    meta["ts_ns"] = np.arange(len(frames), dtype=np.uint64) * 2_000_000_000
    if data[0] >= 128 and L7_AVAILABLE:
        if _L7_TABLE is None:
            _L7_TABLE = FlowTable(max_flows=64, idle_timeout=3.0, lifetime=5.0, output_size=16,
                                  l7=True)
        table = _L7_TABLE
    else:
        table = FlowTable(max_flows=64, idle_timeout=3.0, lifetime=5.0, output_size=16)
    before = table.stats()["packets"]
    buf = b"".join(frames)
    i = 0
    while i < len(frames):
        i = table.process(buf, meta, i)
        table.take()
    while not table.flush():
        table.take()
    st = table.stats()
    assert st["packets"] - before == len(frames), st
    assert st["active_flows"] == 0, st



def collector(data: bytes) -> None:
    """Datagrams from one exporter (each a 2-byte length then its bytes) in one batch, through
    the collector in the mode the first byte picks: NetFlow v5/v9, IPFIX and sFlow alike, so
    that templates sent in one datagram shape the data of the next. The C walk and decode give
    the records and counters of the Python twin (``c_decode=False``)."""
    if not data:
        return
    mode = ("passthrough", "nocache", "cache")[data[0] % 3]
    dgrams, i = [], 1
    while i + 2 <= len(data) and len(dgrams) < 32:
        n = struct.unpack_from(">H", data, i)[0]
        dgrams.append((data[i + 2:i + 2 + n], "192.0.2.1", 1.0 + len(dgrams)))
        i += 2 + n
    col = Collector(mode)
    recs = col.feed(dgrams)
    ref = Collector(mode, c_decode=False)
    want = ref.feed(dgrams)
    assert sorted(r.tobytes() for r in recs) == sorted(r.tobytes() for r in want)
    assert col.stats() == ref.stats()
    if mode == "cache":
        cache = FlowCache(64, 1.0, 2.0)
        cache.add(recs, 0.0)
        cache.expire(10.0)
        cache.flush()
    col.stats()
    col.flow_collection()


def tlv(data: bytes) -> None:
    """A TLV payload: the C decoder and the Python reference agree, value for value, or both
    refuse it."""
    try:
        want = decode(data)
    except TLVError:
        want = None
    try:
        got = decode_tlv(data)
    except TLVError:
        got = None
    if want is not None and got is not None:        # NaN floats compare by their bits
        want, got = repr(want), repr(got)
    assert got == want, (got, want)


def config(data: bytes) -> None:
    """A configuration file: its options, or one error line naming the line."""
    path = os.path.join(_TMP, "flowprobe.conf")
    with open(path, "wb") as f:
        f.write(data)
    try:
        read_config(path, _PARSER)
    except FlowprobeError as e:
        assert "\n" not in str(e).strip() and str(e), repr(str(e))


TARGETS = {"reader": reader, "decoder": decoder, "collector": collector, "tlv": tlv,
           "config": config}
