"""The collector's C decode of NetFlow v5, v9 and IPFIX data sets (engine/collect/_collect.pyx)
held to its reference twin, the numpy conversion of template.py (``Collector(c_decode=False)``),
datagram for datagram: real exporters' datagrams (recorded here, and the development set's), and
generated templates and data sets of every kind of element (variable-length, enterprise and reverse
elements, every time form, ICMP parts, sampling and init time in options and in records)."""
from __future__ import annotations

import socket
import struct
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.collect.collector import Collector
from engine.collect.template import VARLEN, element_map
from engine.fields import REVERSE_PEN, RECORD_DTYPE

from conftest import PCAPS, ROOT, tool
from recorded import NAMES
from test_collect_exports import SHARED_EXPORTS, udp_payloads
from test_collect_malformed import flowset, ipfix, ipset, v9

MODES = ["passthrough", "nocache", "cache"]


def rows(recs: np.ndarray) -> list[bytes]:
    """The records as sorted rows: the twin groups a batch by template, the C decode keeps the
    arrival order."""
    assert recs.dtype == RECORD_DTYPE
    return sorted(r.tobytes() for r in recs)


def twins(mode: str = "passthrough", **kw) -> tuple[Collector, Collector]:
    pair = Collector(mode, c_decode=True, **kw), Collector(mode, c_decode=False, **kw)
    for col in pair:
        col.pending_age = 1e12                     # replayed capture times are old
    return pair


def assert_same(fast: Collector, ref: Collector, batch: list) -> int:
    a, b = fast.feed(batch), ref.feed(batch)
    assert len(a) == len(b)
    if rows(a) != rows(b):                          # name the first differing column
        for ra, rb in zip(rows(a), rows(b)):
            x = np.frombuffer(ra, RECORD_DTYPE)
            y = np.frombuffer(rb, RECORD_DTYPE)
            bad = [c for c in RECORD_DTYPE.names if not np.array_equal(x[c], y[c])]
            assert not bad, (bad, x[bad[0]], y[bad[0]])
    assert fast.stats() == ref.stats()
    return len(a)


def export_files():
    sets = [pytest.param(None, name, id=name) for name in NAMES if "sflow" not in name]
    if SHARED_EXPORTS.is_dir():
        sets += [pytest.param(SHARED_EXPORTS / n, n, id="shared-" + n)
                 for n in NAMES if "sflow" not in n]
    sets += [pytest.param(PCAPS / n, n, id=n) for n in ("netflowv9.pcap", "netflow-fritz.pcap")
             if (PCAPS / n).is_file()]
    return sets


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path,name", export_files())
def test_real_exports_decode_as_the_twin(exports, path, name, mode):
    grams = udp_payloads(path or exports / name)
    fast, ref = twins(mode)
    total = sum(assert_same(fast, ref, [g]) for g in grams)     # datagram for datagram
    if path is None:                                           # recorded here: flows in each
        assert total > 0
    fast, ref = twins(mode)
    assert assert_same(fast, ref, grams) == total               # and the whole file as one batch


# --- generated templates -----------------------------------------------------------------------

KNOWN = sorted(element_map())
SPECIAL = [21, 22, 150, 151, 152, 153, 154, 155, 156, 157, 158, 159, 160, 34, 50, 305, 306,
           176, 177, 178, 179, 32, 139]
LENGTHS = [1, 2, 3, 4, 6, 8, 16]


@st.composite
def element(draw, ipfix_: bool):
    pen, elem = draw(st.one_of(
        st.sampled_from(KNOWN),
        st.tuples(st.just(0), st.sampled_from(SPECIAL)),
        st.tuples(st.just(0), st.integers(1, 400)),
        st.tuples(st.just(REVERSE_PEN), st.integers(1, 300)) if ipfix_ else st.nothing(),
        st.tuples(st.integers(1, 70000), st.integers(1, 0x7FFF)) if ipfix_ else st.nothing()))
    if not ipfix_ and pen:
        pen = 0
    length = draw(st.one_of(st.sampled_from(LENGTHS), st.integers(1, 20),
                            st.just(VARLEN) if ipfix_ else st.nothing()))
    return pen, elem & 0x7FFF, length


def value(draw, length: int) -> bytes:
    if length == VARLEN:
        n = draw(st.one_of(st.integers(0, 20), st.integers(255, 300)))
        body = draw(st.binary(min_size=n, max_size=n))
        return (bytes([n]) if n < 255 else b"\xff" + struct.pack(">H", n)) + body
    return draw(st.binary(min_size=length, max_size=length))


def v9_template_set(tid, fields):
    return flowset(0, struct.pack(">HH", tid, len(fields)) +
                   b"".join(struct.pack(">HH", e, ln) for _, e, ln in fields))


def ipfix_template_set(tid, fields, scope=0):
    body = b""
    for pen, e, ln in fields:
        body += struct.pack(">HH", e | (0x8000 if pen else 0), ln) + \
            (struct.pack(">I", pen) if pen else b"")
    head = struct.pack(">HHH", tid, len(fields), scope) if scope else struct.pack(">HH", tid,
                                                                                 len(fields))
    return ipset(3 if scope else 2, head + body)


@st.composite
def exchange(draw):
    """A template, options with sampling and init time, and data sets: (is IPFIX, datagrams)."""
    is_ipfix = draw(st.booleans())
    fields = draw(st.lists(element(is_ipfix), min_size=1, max_size=14))
    nrec = draw(st.integers(1, 12))
    records = [b"".join(value(draw, ln) for _, _, ln in fields) for _ in range(nrec)]
    tail = draw(st.binary(max_size=6))             # padding or a cut record
    data = b"".join(records) + tail
    opt_fields = [(0, 1, 4), (0, draw(st.sampled_from([34, 50, 305, 160])), 8), (0, 306, 4)]
    opt_data = draw(st.binary(min_size=16, max_size=16))
    secs = draw(st.integers(0, 0xFFFFFFFF))
    uptime = draw(st.integers(0, 0xFFFFFFFF))
    held = draw(st.booleans())                     # the data before its template
    if is_ipfix:
        tmpl = ipfix_template_set(300, fields)
        opt = ipfix_template_set(301, opt_fields, scope=1)
        dsets = [ipset(301, opt_data), ipset(300, data)]
        grams = [ipfix(1, dsets, secs=secs), ipfix(2, [opt, tmpl], secs=secs),
                 ipfix(3, dsets, secs=secs)] if held else \
            [ipfix(1, [opt, tmpl] + dsets, secs=secs), ipfix(2, dsets[::-1], secs=secs)]
    else:
        if any(ln == VARLEN for _, _, ln in fields):
            fields = [(p, e, 4) for p, e, _ in fields]
            data = b"\0" * (4 * len(fields) * nrec)
        tmpl = v9_template_set(300, fields)
        opt = flowset(1, struct.pack(">HHH", 301, 4, 8) +
                      b"".join(struct.pack(">HH", e, ln) for _, e, ln in opt_fields))
        dsets = [flowset(301, opt_data), flowset(300, data)]
        grams = [v9(1, dsets, uptime=uptime, secs=secs), v9(2, [opt, tmpl], uptime=uptime,
                                                             secs=secs)] if held else \
            [v9(1, [opt, tmpl] + dsets, uptime=uptime, secs=secs),
             v9(2, dsets[::-1], uptime=uptime, secs=secs)]
    return is_ipfix, grams


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(exchange(), st.sampled_from(MODES), st.booleans())
def test_generated_templates_decode_as_the_twin(ex, mode, upscale):
    _, grams = ex
    fast, ref = twins(mode, upscale=upscale)
    for g in grams:
        assert_same(fast, ref, [(g, "10.9.0.1", 1.0)])
    fast, ref = twins(mode, upscale=upscale)
    assert_same(fast, ref, [(g, "10.9.0.1", 1.0) for g in grams])


def test_v5_decodes_as_the_twin():
    """v5 records (the fixed template) with sampling in the header, several exporters at once."""
    rng = np.random.default_rng(5)
    grams = []
    for i in range(20):
        count = int(rng.integers(1, 31))
        hdr = struct.pack(">HHIIIIBBH", 5, count, int(rng.integers(0, 1 << 32)),
                          1_700_000_000 + i, 5000, i * 30, 0, i % 3, int(rng.integers(0, 1 << 16)))
        grams.append((hdr + rng.bytes(48 * count), f"10.8.0.{i % 4}", 1.0))
    for mode in MODES:
        fast, ref = twins(mode)
        assert assert_same(fast, ref, grams) > 0


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_receiver_reads_batches_with_their_senders(family, host):
    """recvmmsg: every queued datagram, in order, byte for byte, with its sender's address, in
    calls of up to SLOTS datagrams; nothing more than ``limit``."""
    from engine.collect._collect import SLOTS, Receiver
    rx = socket.socket(family, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind((host, 0))
    tx = socket.socket(family, socket.SOCK_DGRAM)
    tx.bind((host, 0))
    try:
        sent = [bytes([i & 0xFF]) * (1 + (i * 37) % 9000) for i in range(300)] + [b""]
        for d in sent:
            tx.sendto(d, rx.getsockname()[:2])
        r = Receiver()
        out: list = []
        assert r.receive(rx.fileno(), 5.0, out, 100) == 100
        assert r.receive(rx.fileno(), 6.0, out, 1000) == len(sent) - 100
        assert r.receive(rx.fileno(), 7.0, out, 1000) == 0          # drained
        assert [d for d, _, _ in out] == sent
        assert {a for _, a, _ in out} == {host}
        assert [t for _, _, t in out] == [5.0] * 100 + [6.0] * (len(sent) - 100)
        assert r.calls <= 2 * (len(sent) // SLOTS + 2)
    finally:
        rx.close()
        tx.close()


@pytest.mark.parametrize("version", [9, 10])
def test_nf_send_load_is_collected_whole(version):
    """tools/nf-send (the collector bench's generator) at a small rate on loopback: every record it
    reports is read by the Receiver and decoded, with no sequence loss and nothing malformed."""
    tool("gcc")
    sys.path.insert(0, str(ROOT / "tools"))
    import loadgen
    from engine.collect._collect import Receiver
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    rx.bind(("127.0.0.1", 0))
    try:
        rep = loadgen.nf_send(rx.getsockname()[1], version, rate=100000, seconds=10,
                              datagrams=1200, records=30, flows=5000)
        assert rep["datagrams"] == 1200 and rep["records"] == 36000 and rep["send_errors"] == 0
        out: list = []
        r = Receiver()
        while r.receive(rx.fileno(), 1.0, out, 1 << 20):
            pass
        col = Collector("passthrough")
        recs = col.feed(out)
        st_ = col.stats()["exporters"]["127.0.0.1"]
        assert len(out) == 1200 and len(recs) == 36000
        assert st_["lost"] == 0 and st_["bad"] == {} and st_["no_template"] == 0
        assert len(np.unique(recs["src_addr"][:, :4], axis=0)) == 5000     # its flows
        assert (recs["in_bytes"] >= 1000).all() and (recs["in_pkts"] >= 10).all()
    finally:
        rx.close()
