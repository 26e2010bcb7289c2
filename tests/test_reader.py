"""The capture file reader (engine/_reader.pyx) on pcap and pcapng files built here.

tshark is the oracle: it reads every well-formed file as the reader does (timestamps, lengths,
link types, bytes; several interfaces with their own if_tsresol and if_tsoffset, simple packet
blocks, a big-endian section), and a damaged file ends where tshark's reading ends too. Random
and mutated files (hypothesis) end in a bounded number of calls with a named reason, and every
packet the reader hands over lies inside the file.
"""
import faulthandler
import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT, corpus_files
from engine._fastpath import META_DTYPE
from engine._reader import PcapReader

FRAME = bytes.fromhex("02000000000202000000000108004500002800010000400679cf0a0000010a000002"
                      "9c4001bb000000010000000050180400c5b80000")      # Ethernet, IPv4, TCP
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
SETTINGS = settings(max_examples=int(os.environ.get("READER_EXAMPLES", 200)), deadline=None,
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- building captures -------------------------------------------------------------------------
def pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def block(btype: int, body: bytes, order="<", blen=None, trailer=None) -> bytes:
    n = 12 + len(body)
    return (struct.pack(order + "II", btype, n if blen is None else blen) + body
            + struct.pack(order + "I", n if trailer is None else trailer))


def option(code: int, value: bytes, order="<") -> bytes:
    return struct.pack(order + "HH", code, len(value)) + pad4(value)


def shb(order="<", blen=None) -> bytes:
    return block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order, blen)


def idb(linktype: int, order="<", snaplen=0, tsresol=None, tsoffset=None, name=None) -> bytes:
    opts = b""
    if name is not None:
        opts += option(2, name.encode(), order)
    if tsresol is not None:
        opts += option(9, bytes([tsresol]), order)
    if tsoffset is not None:
        opts += option(14, struct.pack(order + "q", tsoffset), order)
    if opts:
        opts += option(0, b"", order)
    return block(1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts, order)


def epb(ifid: int, ts: int, data: bytes, order="<", orig=None, caplen=None, blen=None) -> bytes:
    head = struct.pack(order + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF,
                       len(data) if caplen is None else caplen,
                       len(data) if orig is None else orig)
    return block(6, head + pad4(data), order, blen)


def spb(data: bytes, order="<", orig=None) -> bytes:
    return block(3, struct.pack(order + "I", len(data) if orig is None else orig) + pad4(data),
                 order)


def pcap(records, order="<", nano=False, linktype=1, snaplen=65535, version=(2, 4)) -> bytes:
    """records: (seconds, fraction, data[, wire length]); the two lengths of a record are
    written as ``version`` places them (swapped before 2.3)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, *version, 0, 0, snaplen, linktype)
    for sec, frac, data, *rest in records:
        lengths = (len(data), rest[0] if rest else len(data))
        out += struct.pack(order + "IIII", sec, frac, *(lengths[::-1] if version < (2, 3)
                                                         else lengths)) + data
    return out


# --- reading them ------------------------------------------------------------------------------
def read(path, batch=5):
    """Every packet as (ts_ns, bytes, wirelen, linktype), and the reader (closed)."""
    out = []
    meta = np.zeros(batch, dtype=META_DTYPE)
    with PcapReader(str(path)) as rd:
        while n := rd.next_batch(meta):
            for m in meta[:n]:
                o, c = int(m["offset"]), int(m["caplen"])
                out.append((int(m["ts_ns"]), bytes(rd.buffer[o:o + c]), int(m["wirelen"]),
                            int(m["linktype"])))
    return out, rd


# Wireshark's own numbers for the link types these tests write (wiretap's WTAP_ENCAP_*)
WTAP_ENCAP_LINKTYPE = {1: 1, 7: 101, 25: 113, 15: 0}


def tshark(path):
    """What tshark reads: (ts_ns or 0 for a packet without a timestamp, bytes, wirelen, link
    type) per packet, and its complaint about the file ("" for none)."""
    r = subprocess.run([TSHARK, "-r", str(path), "-T", "json", "-x"], capture_output=True,
                       text=True, timeout=120)
    out = []
    for p in json.loads(r.stdout or "[]"):
        layers = p["_source"]["layers"]
        frame = layers["frame"]
        sec, _, frac = frame.get("frame.time_epoch", "0.0").partition(".")
        out.append((int(sec) * 10 ** 9 + int(frac.ljust(9, "0")[:9]),
                    bytes.fromhex(layers["frame_raw"][0]), int(frame["frame.len"]),
                    WTAP_ENCAP_LINKTYPE.get(int(frame["frame.encap_type"]))))
    complaint = "\n".join(line for line in r.stderr.splitlines() if "Running as user" not in line)
    return out, complaint


# --- well-formed files: what tshark reads ------------------------------------------------------
def several_sections() -> tuple[bytes, list]:
    """Two sections: a little-endian one with three interfaces of different link types and
    timestamp resolutions, and a big-endian one with offsets, each with simple packet blocks,
    and a packet cut by the snap length and blocks that carry no packet in the first."""
    ip = FRAME[14:]
    sll = struct.pack(">HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", 0x0800) + ip
    nrb = block(4, struct.pack("<HH", 0, 0))                  # name resolution, no records
    isb = block(5, struct.pack("<III", 0, 0, 0))              # interface statistics
    le = (shb() + idb(1, name="eth0") + idb(101, tsresol=9) + idb(113, tsresol=0x80 | 20) + nrb
          + epb(0, 1_700_000_000_123_456, FRAME)
          + epb(1, 1_700_000_000_123_456_789, ip)
          + epb(2, (1_700_000_001 << 20) + 123_457, sll)
          + spb(FRAME)
          + epb(0, 1_700_000_002_000_000, FRAME[:40], orig=len(FRAME))
          + isb)
    be = (shb(">") + idb(0, ">", tsresol=3, tsoffset=-10) + idb(1, ">", tsoffset=7)
          + epb(0, 1_700_000_003_250, b"\x02\0\0\0" + ip, ">")
          + epb(1, 1_700_000_004_000_001, FRAME, ">")
          + spb(b"\x02\0\0\0" + ip, ">"))
    frac = (123_457 * 10 ** 9) >> 20
    want = [(1_700_000_000_123_456_000, FRAME, len(FRAME), 1),
            (1_700_000_000_123_456_789, ip, len(ip), 101),
            (1_700_000_001 * 10 ** 9 + frac, sll, len(sll), 113),
            (0, FRAME, len(FRAME), 1),
            (1_700_000_002_000_000_000, FRAME[:40], len(FRAME), 1),
            (1_699_999_993_250_000_000, b"\x02\0\0\0" + ip, len(ip) + 4, 0),
            (1_700_000_011_000_001_000, FRAME, len(FRAME), 1),
            (0, b"\x02\0\0\0" + ip, len(ip) + 4, 0)]
    return le + be, want


def test_several_interfaces_and_sections_read_as_built(tmp_path):
    data, want = several_sections()
    (tmp_path / "s.pcapng").write_bytes(data)
    got, rd = read(tmp_path / "s.pcapng", batch=3)
    assert got == want
    assert (rd.format, rd.linktype, rd.end_reason, rd.packets) == ("pcapng", 1, "", len(want))


@needs_tshark
def test_several_interfaces_and_sections_read_as_tshark_reads_them(tmp_path):
    path = tmp_path / "s.pcapng"
    path.write_bytes(several_sections()[0])
    theirs, complaint = tshark(path)
    assert complaint == ""
    ours, _ = read(path)
    assert ours == theirs


@needs_tshark
@pytest.mark.parametrize("order,nano", [("<", False), (">", True), (">", False)])
def test_pcap_reads_as_tshark_reads_it(tmp_path, order, nano):
    unit = 10 ** 9 if nano else 10 ** 6
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap([(1_700_000_000, k * unit // 7, FRAME[:30 + k], 60 + k)
                           for k in range(6)], order, nano))
    theirs, complaint = tshark(path)
    ours, rd = read(path)
    assert complaint == "" and rd.end_reason == ""
    assert [(ts, b, w) for ts, b, w, _ in ours] == [(ts, b, w) for ts, b, w, _ in theirs]


@needs_tshark
@pytest.mark.parametrize("version", [(2, 0), (2, 1), (2, 3)])
def test_old_pcap_versions_read_as_tshark_reads_them(tmp_path, version):
    """Before version 2.3 a record's captured and wire lengths were written the other way
    round; in 2.3 either way. The reader, libpcap and tshark all swap them back."""
    path = tmp_path / "old.pcap"
    path.write_bytes(pcap([(1_700_000_000, k, FRAME[:20 + 7 * k], 100 + k) for k in range(5)],
                          version=version))
    theirs, complaint = tshark(path)
    ours, rd = read(path)
    assert complaint == "" and rd.end_reason == ""
    assert ours == theirs and [w for _, _, w, _ in ours] == [100, 101, 102, 103, 104]


# --- damaged files: where they end and why -----------------------------------------------------
def faults():
    """(name, file, reason, packets before it): libpcap (tcpdump) and tshark stop at the same
    packet, except where ``TSHARK_READS`` says otherwise."""
    ok = shb() + idb(1) + epb(0, 1, FRAME) + epb(0, 2, FRAME)
    zero_shb = struct.pack("<II", 0x0A0D0D0A, 0) + struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    zero_shb += struct.pack("<I", 0)
    assert len(zero_shb) == 28
    pkt = pcap([(1, 0, FRAME)])
    yield "28-byte section header of length 0", zero_shb, "bad_block_length", 0
    yield "second section header of length 0", ok + zero_shb, "bad_block_length", 2
    yield ("big-endian second section of length 0", ok + shb(">", blen=0)[:28],
           "bad_block_length", 2)
    yield "block of length 4", ok + struct.pack("<II", 6, 4) + bytes(24), "bad_block_length", 2
    yield ("packet block shorter than its fields",
           ok + block(6, struct.pack("<II", 0, 0), blen=20), "bad_block_length", 2)
    yield ("block length not a multiple of 4", ok + epb(0, 3, FRAME, blen=len(epb(0, 3, FRAME)) - 2)
           + bytes(2), "bad_block_length", 2)
    yield ("trailer length differs", ok + block(6, epb(0, 3, FRAME)[8:-4], trailer=12),
           "bad_block_length", 2)
    yield ("captured length past its block", ok + epb(0, 3, FRAME, caplen=len(FRAME) + 40),
           "bad_block_length", 2)
    yield ("captured length over 262144", ok + epb(0, 3, FRAME, caplen=300_000),
           "bad_block_length", 2)
    yield "unknown interface", ok + epb(5, 3, FRAME), "unknown_interface", 2
    yield "simple packet before any interface", shb() + spb(FRAME), "unknown_interface", 0
    yield ("option past its block",
           shb() + block(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 2, 200) + b"abcd")
           + epb(0, 1, FRAME), "bad_block_length", 0)
    yield ("second section with a bad byte-order magic",
           ok + shb()[:8] + b"\x01\x02\x03\x04" + shb()[12:], "bad_section_header", 2)
    yield "block past the end of the file", ok + epb(0, 3, FRAME)[:-8], "truncated", 2
    yield "pcap record past the end of the file", pkt + pkt[24:-10], "truncated", 1
    yield "pcap record header cut", pkt + pkt[24:30], "truncated", 1
    yield ("pcap record over 262144 bytes",
           pkt + struct.pack("<IIII", 1, 0, 300_000, 300_000) + bytes(300_000),
           "bad_record_length", 1)


FAULTS = list(faults())
# tshark 4.0 reads a block whose length is not a multiple of 4 (libpcap and the format do not),
# and a pcap record too long for any capture makes it guess another pcap variant
TSHARK_READS = {"block length not a multiple of 4": 3, "pcap record over 262144 bytes": None}
TCPDUMP = shutil.which("tcpdump")


@pytest.mark.parametrize("name,data,reason,before", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_damaged_file_ends_with_its_reason(tmp_path, name, data, reason, before):
    path = tmp_path / "bad"
    path.write_bytes(data)
    got, rd = read(path, batch=1)
    assert (rd.end_reason, len(got)) == (reason, before)
    assert rd.end_detail and 0 <= rd.end_offset < len(data)
    assert rd.truncated == (reason == "truncated")
    if TCPDUMP:
        r = subprocess.run([TCPDUMP, "-nr", str(path)], capture_output=True, text=True,
                           timeout=60)
        assert (r.returncode, len(r.stdout.splitlines())) == (1, before), r.stderr
    if TSHARK and TSHARK_READS.get(name, before) is not None:
        theirs, complaint = tshark(path)
        assert len(theirs) == TSHARK_READS.get(name, before)
        assert "damaged" in complaint or "cut short" in complaint, complaint


def flowprobe(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_28_byte_file_ends_promptly_with_its_reason(tmp_path):
    """A section header of total length 0 once left the reader where it was, forever."""
    path = tmp_path / "zero.pcapng"
    path.write_bytes(FAULTS[0][1])
    r = flowprobe("-i", path, "--dump-format", "json")
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    assert "file_bad_block_length=1" in r.stderr                 # the summary line counts it
    assert ("'zero.pcapng': a pcapng block of type 0xa0d0d0a whose total length of 0 bytes is "
            "less than its minimum at byte 0 (bad_block_length); reading stopped there, the 0 "
            "packets before it were used") in r.stderr


def test_second_section_of_length_0_keeps_the_packets_before_it(tmp_path):
    path = tmp_path / "two.pcapng"
    data = FAULTS[1][1]
    path.write_bytes(data)
    r = flowprobe("-i", path, "--dump-format", "json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    flows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(flows) == 1 and flows[0]["IN_PKTS"] == 2
    assert (f"at byte {len(data) - 28} (bad_block_length); reading stopped there, the 2 packets "
            "before it were used") in r.stderr


# --- signals during a long walk ----------------------------------------------------------------
def test_a_signal_is_handled_within_a_batch(tmp_path):
    """Two million blocks that carry no packet, then one packet: a timer's handler stops the
    reader while next_batch walks them (the walk looks at signals every so many blocks), so the
    packet behind them is never reached."""
    path = tmp_path / "long.pcapng"
    path.write_bytes(shb() + idb(1) + block(0xBAD, b"") * 2_000_000 + epb(0, 1, FRAME))
    meta = np.zeros(8, dtype=META_DTYPE)
    handled = []
    with PcapReader(str(path)) as rd:
        def handler(signum, frame):
            handled.append(signum)
            rd.stop()
        old = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
            n = rd.next_batch(meta)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert handled and rd.stopped and n == 0
        assert rd.next_batch(meta) == 0 and rd.end_reason == ""


def test_stopping_the_file_source_stops_its_reader(tmp_path):
    from engine.sources.pcapfile import FileSource
    path = tmp_path / "p.pcap"
    path.write_bytes(pcap([(1, 0, FRAME)] * 3))
    src = FileSource(str(path))
    src.stop()
    assert list(src.batches()) == [] and src.reader.stopped
    src.close()


# --- random and mutated files: never a hang, a crash or a read outside the file ----------------
@st.composite
def pcapng_files(draw):
    """A pcapng file of 1-3 sections of either byte order, each with interfaces of their own
    link types and timestamp resolutions, and the packets a reader must find in it."""
    data, want = b"", []
    for _ in range(draw(st.integers(1, 3))):
        order = draw(st.sampled_from("<>"))
        data += shb(order)
        ifaces = []
        for _ in range(draw(st.integers(1, 3))):
            lt = draw(st.sampled_from([1, 101, 113, 0]))
            res = draw(st.sampled_from([None, 3, 6, 9, 0x80 | 10, 0x80 | 30]))
            off = draw(st.sampled_from([None, 0, 5, -7]))
            snap = draw(st.sampled_from([0, 0, 64, 65535]))
            ifaces.append((lt, res, off, snap))
            data += idb(lt, order, snaplen=snap, tsresol=res, tsoffset=off)
        for _ in range(draw(st.integers(0, 6))):
            kind = draw(st.sampled_from(["epb", "epb", "spb", "other"]))
            frame = draw(st.binary(max_size=80))
            if kind == "other":
                data += block(draw(st.sampled_from([4, 5, 0xBAD])), pad4(frame), order)
                continue
            lt, res, off, snap = ifaces[0]
            if kind == "spb":
                cap = frame if snap == 0 else frame[:snap]
                data += spb(cap, order, orig=len(frame))
                want.append((0, cap, len(frame), lt))
                continue
            k = draw(st.integers(0, len(ifaces) - 1))
            lt, res, off, snap = ifaces[k]
            ts = draw(st.integers(0, 2 ** 52))
            orig = len(frame) + draw(st.sampled_from([0, 0, 100]))
            data += epb(k, ts, frame, order, orig=orig)
            units = 10 ** 6 if res is None else (2 ** (res & 0x7F) if res & 0x80 else 10 ** res)
            ts_ns = ts // units * 10 ** 9 + ts % units * 10 ** 9 // units + (off or 0) * 10 ** 9
            want.append((ts_ns % 2 ** 64, frame, orig, lt))
    return data, want


@st.composite
def pcap_files(draw):
    order, nano = draw(st.sampled_from("<>")), draw(st.booleans())
    unit = 10 ** 9 if nano else 10 ** 6
    records = [(draw(st.integers(0, 2 ** 32 - 1)), draw(st.integers(0, unit - 1)),
                draw(st.binary(max_size=80))) for _ in range(draw(st.integers(0, 6)))]
    lt = draw(st.sampled_from([1, 101, 113]))
    return pcap(records, order, nano, lt), [
        (s * 10 ** 9 + f * (10 ** 9 // unit), d, len(d), lt) for s, f, d in records]


@SETTINGS
@given(st.one_of(pcapng_files(), pcap_files()), st.integers(1, 4))
def test_random_files_read_as_built(tmp_path_factory, capture, batch):
    data, want = capture
    path = tmp_path_factory.mktemp("r") / "f"
    path.write_bytes(data)
    got, rd = read(path, batch)
    assert (got, rd.end_reason) == (want, "")


def corpus_seeds():
    """The first 16 KiB of a few development captures (pcap and pcapng), when they are here."""
    names = {"gre.pcapng", "ssh.pcap", "tftp.pcap", "fuzz-2021-10-13.pcap", "1kxun.pcap"}
    return [p.read_bytes()[:16384] for p in corpus_files() if p.name in names]


SEEDS = corpus_seeds()


@st.composite
def mutated_files(draw):
    """A random, a built or a development capture, with lengths and bytes changed, cut, or a
    section header of length 0 put in."""
    sources = [pcapng_files().map(lambda c: c[0]), pcap_files().map(lambda c: c[0])]
    if SEEDS:
        sources.append(st.sampled_from(SEEDS))
    data = bytearray(draw(st.one_of(sources)))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["word", "byte", "cut", "zero_shb", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "word" and len(data) >= 4:
            at = min(at - at % 4, len(data) - 4)
            data[at:at + 4] = struct.pack(draw(st.sampled_from("<>")) + "I", draw(
                st.sampled_from([0, 1, 4, 11, 12, 13, 16, 28, 32, 0x7FFFFFFF, 0xFFFFFFFF,
                                 len(data), len(data) - at, 262145])))
        elif how == "byte" and data:
            data[at] = draw(st.integers(0, 255))
        elif how == "cut":
            del data[at:]
        elif how == "zero_shb":
            data[at:at] = FAULTS[0][1]
        else:
            data[at:at] = data[draw(st.integers(0, len(data))):][:draw(st.integers(0, 64))]
    return bytes(data)


@SETTINGS
@given(mutated_files(), st.integers(1, 9))
def test_mutated_files_end_in_bounded_calls_inside_the_file(tmp_path_factory, data, batch):
    path = tmp_path_factory.mktemp("m") / "f"
    path.write_bytes(data)
    meta = np.zeros(batch, dtype=META_DTYPE)
    faulthandler.dump_traceback_later(60, exit=True)   # a hang ends the run, loudly
    try:
        try:
            rd = PcapReader(str(path))
        except ValueError:
            return                                     # not a capture: one line at the CLI
        with rd:
            calls = 0
            while n := rd.next_batch(meta):
                calls += 1
                assert calls <= len(data) // 12 + 1    # every call moves past a record
                for m in meta[:n]:
                    assert 16 <= m["offset"] and m["offset"] + m["caplen"] <= len(data)
                    assert m["caplen"] <= 262144 and m["wirelen"] >= m["caplen"]
            assert rd.next_batch(meta) == 0
            assert rd.end_reason in ("", "truncated", "bad_record_length", "bad_block_length",
                                     "bad_section_header", "unknown_interface")
            assert rd.packets <= len(data) // 16
    finally:
        faulthandler.cancel_dump_traceback_later()
