"""The collector's C walk and decode of NetFlow v5, v9 and IPFIX datagrams
(engine/collect/_collect.pyx: Scanner, decode_sets) held to its reference twin, every datagram
parsed in Python and converted by numpy (``Collector(c_decode=False)``), datagram for datagram,
records, statistics and per-domain state: real exporters' datagrams (recorded here, and the
development set's), generated templates and data sets of every kind of element (variable-length,
enterprise and reverse elements, every time form, ICMP parts, sampling and init time in options and
in records), and generated streams of several exporters and domains (sequence gaps, repeats and
resets, template changes and withdrawals, data before its template, cut datagrams)."""
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
    assert state(fast) == state(ref)
    return len(a)


def state(col: Collector) -> dict:
    """What the parsers keep per exporter and domain: sequence, sampling, init time, templates,
    held data sets."""
    return {name: (e.time_last_flow, {k: (d.next_seq, d.last_seq, d.sampling, d.init_ms,
                                          sorted(d.templates), d.npending)
                                      for k, d in e.domains.items()})
            for name, e in col.exporters.items()}


def parsed_in_python(col: Collector) -> list:
    """The datagrams the C walk leaves to the Python parsers, recorded as they go."""
    seen: list = []
    parse = col._parse

    def counting(data, addr, t):
        seen.append(data)
        parse(data, addr, t)
    col._parse = counting                           # type: ignore[method-assign]
    return seen


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


# --- the C walk: headers, set walk, template lookup, sequence accounting ---------------------------

EXPORTERS = ["10.9.0.1", "10.9.0.2", "2001:db8::9", "::ffff:10.9.0.3"]


@st.composite
def stream(draw):
    """Datagrams of several exporters, versions and domains: data sets of the templates known at
    the time (and of one never sent), template changes and refreshes, withdrawals, sequence numbers
    in order, skipped, repeated, reset and counted softflowd's way, cut datagrams."""
    templates: dict = {}            # (exporter, version, domain) -> {tid: fields}
    seqs: dict = {}
    grams = []
    for _ in range(draw(st.integers(1, 24))):
        addr = draw(st.sampled_from(EXPORTERS))
        version = draw(st.sampled_from([5, 9, 10, 10]))
        domain = draw(st.integers(0, 1))
        key = (addr, version, domain)
        seq = seqs.get(key)
        if seq is None:
            seq = draw(st.integers(0, 0xFFFFFFFF))
        seq = (seq + draw(st.sampled_from([0, 0, 0, 0, 1, 7, -1, -2, 1 << 31]))) & 0xFFFFFFFF
        kind = draw(st.sampled_from(["data", "data", "data", "data", "template", "withdraw",
                                     "cut"]))
        secs = draw(st.integers(1_600_000_000, 1_800_000_000))
        uptime = draw(st.integers(0, 0xFFFFFFFF))
        if version == 5:
            count = draw(st.integers(1, 30))
            gram = struct.pack(">HHIIIIBBH", 5, count, uptime, secs, draw(st.integers(0, 10**9)),
                               seq, 0, domain, draw(st.integers(0, 0xFFFF))) + \
                draw(st.binary(min_size=48 * count, max_size=48 * count))
            advance = count
        else:
            known = templates.setdefault(key, {})
            sets = []
            if kind == "template" or not known:
                tid = draw(st.integers(256, 258))
                fields = draw(st.lists(element(version == 10), min_size=1, max_size=8))
                if version == 9:
                    fields = [(0, e, 4 if ln == VARLEN else ln) for _, e, ln in fields]
                known[tid] = fields
                sets.append(ipfix_template_set(tid, fields) if version == 10 else
                            v9_template_set(tid, fields))
            elif kind == "withdraw" and version == 10:
                tid = draw(st.sampled_from(sorted(known)))
                del known[tid]
                sets.append(ipset(2, struct.pack(">HH", tid, 0)))
            advance = 0
            for _ in range(draw(st.integers(0 if sets else 1, 3))):
                tid = draw(st.sampled_from(sorted(known) + [259]))
                fields = known.get(tid, [(0, 1, 4)])
                nrec = draw(st.integers(0, 40))
                body = b"".join(value(draw, ln) for _ in range(nrec) for _, _, ln in fields)
                sets.append(ipset(tid, body) if version == 10 else flowset(tid, body))
                advance += nrec
            if version == 10:
                gram = ipfix(seq, sets, domain=domain, secs=secs)
            else:
                gram = v9(seq, sets, source_id=domain, uptime=uptime, secs=secs)
                advance = 1
        if kind == "cut":
            gram = gram[:draw(st.integers(0, len(gram) - 1))]
        elif draw(st.booleans()):                   # the exporter counts this message (softflowd)
            advance = 0
        seqs[key] = (seq + advance) & 0xFFFFFFFF
        grams.append((gram, addr, float(draw(st.integers(1, 2000)))))
    return grams


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(stream(), st.sampled_from(MODES), st.booleans())
def test_generated_streams_walk_as_the_twin(grams, mode, upscale):
    """Datagram for datagram and as one batch: the same records, statistics and domain state as
    the twin; the batch's records in arrival order, as the datagrams fed one by one give them."""
    fast, ref = twins(mode, upscale=upscale)
    one_by_one = [fast.feed([g]) for g in grams]
    for g, got in zip(grams, one_by_one):
        want = ref.feed([g])
        assert rows(got) == rows(want)
    assert fast.stats() == ref.stats() and state(fast) == state(ref)
    fast, ref = twins(mode, upscale=upscale)
    batch = assert_same(fast, ref, grams)
    fast, _ = twins(mode, upscale=upscale)
    assert batch == sum(len(r) for r in one_by_one)
    assert fast.feed(grams).tobytes() == b"".join(r.tobytes() for r in one_by_one)


def test_data_only_datagrams_are_walked_in_c():
    """Only the datagrams that carry templates (or are cut) reach the Python parsers; sequence
    gaps, repeats and resets in the walked ones are counted as the twin counts them."""
    tmpl = v9_template_set(256, [(0, 8, 4), (0, 12, 4), (0, 1, 4), (0, 2, 4), (0, 7, 2),
                                 (0, 11, 2), (0, 4, 1)])
    rec = bytes(range(21))
    seqs = [1, 2, 3, 5, 5, 6, 100, 101, 2, 3]                       # gaps, a repeat, a reset
    grams = [(v9(0, [tmpl]), "10.9.0.1", 1.0)] + \
        [(v9(s, [flowset(256, rec * 30)]), "10.9.0.1", 2.0) for s in seqs] + \
        [(v9(11, [flowset(256, rec * 30)])[:-7], "10.9.0.1", 3.0)]   # cut: bad_flowset_length
    for batch in ([grams], [[g] for g in grams]):
        fast, ref = twins()
        python = parsed_in_python(fast)
        assert sum(assert_same(fast, ref, b) for b in batch) == 30 * len(seqs)
        assert python == [grams[0][0], grams[-1][0]]
        st_ = fast.stats()["exporters"]["10.9.0.1"]
        assert st_["netflow_v9"] == len(grams) and st_["lost"] > 0 and st_["sequence_resets"] > 0
        assert st_["bad"] == {"bad_flowset_length": 1}


def test_walk_output_grows_past_its_first_buffer():
    """Datagrams of many short records (more rows than the walk's first buffer holds) in one
    batch, among v5 and IPFIX datagrams of other exporters."""
    tmpl = ipfix_template_set(300, [(0, 4, 1)])
    grams = [(ipfix(0, [tmpl]), "10.9.0.1", 1.0)]
    grams += [(ipfix(1 + 1000 * i, [ipset(300, bytes([6, 17]) * 500)]), "10.9.0.1", 1.0)
              for i in range(6)]
    grams += [(struct.pack(">HHIIIIBBH", 5, 2, 0, 1_700_000_000, 0, i, 0, 0, 0) + bytes(96),
               "10.9.0.2", 1.0) for i in range(3)]
    fast, ref = twins()
    python = parsed_in_python(fast)
    assert assert_same(fast, ref, grams) == 6000 + 6
    assert python == [grams[0][0], grams[7][0]]            # a new exporter, a new v5 domain


def test_exporter_and_domain_limits_as_the_twin():
    """Datagrams past the exporter limit and the per-exporter domain limit are counted as the
    twin counts them, among walked ones."""
    from engine.collect.collector import MAX_DOMAINS_PER_EXPORTER
    tmpl = ipfix_template_set(300, [(0, 8, 4), (0, 2, 4)])
    grams = []
    for d in range(MAX_DOMAINS_PER_EXPORTER + 3):
        grams.append((ipfix(0, [tmpl], domain=d), "10.9.0.1", 1.0))
        grams.append((ipfix(0, [ipset(300, bytes(8) * 3)], domain=d), "10.9.0.1", 1.0))
    grams += [(ipfix(0, [tmpl, ipset(300, bytes(8))]), f"10.7.0.{i}", 1.0) for i in range(5)]
    fast, ref = twins(max_exporters=3)
    assert assert_same(fast, ref, grams) == 3 * MAX_DOMAINS_PER_EXPORTER + 2
    assert fast.stats()["totals"]["exporters_over_limit"] == 3
