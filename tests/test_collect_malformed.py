"""Bad input never stops collection and is counted; memory stays bounded; IPFIX corner cases
(variable-length and enterprise elements, reverse elements, every timestamp form, withdrawal)."""
from __future__ import annotations

import socket
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.collect.collector import Collector
from engine.collect.template import NTP_EPOCH_OFFSET

from recorded import NAMES
from test_collect_exports import udp_payloads


@pytest.fixture(scope="module")
def real(exports) -> list[bytes]:
    """Every datagram of the recorded softflowd and pmacctd exports."""
    return [d for name in NAMES for d, _a, _t in udp_payloads(exports / name)]


def warmed(real) -> Collector:
    """A collector that has seen every real stream (so it knows their templates)."""
    col = Collector("passthrough")
    col.feed([(d, "127.0.0.1", 1.0) for d in real])
    return col


@pytest.fixture(scope="module")
def fuzzed(real) -> Collector:
    return warmed(real)


def test_truncated_real_datagrams_are_counted(real):
    col = warmed(real)
    before = col.totals["bad_datagrams"]
    fed = 0
    for d in real:
        for cut in range(0, len(d), 23):
            col.feed([(d[:cut], "10.0.0.1", 2.0)])
            fed += 1
    e = col.stats()["exporters"]["10.0.0.1"]
    assert e["datagrams"] == fed
    assert col.totals["bad_datagrams"] > before
    assert sum(e["bad"].values()) > 0
    assert set(e["bad"]) <= {"too_short", "truncated_header", "truncated", "bad_count",
                             "bad_flowset_length", "bad_set_length", "bad_message_length",
                             "truncated_sample", "truncated_record", "malformed",
                             "flow_sample_without_header", "sample_not_ip", "bad_template",
                             "bad_options_template", "unknown_version"}


prefixes = st.sampled_from([b"\x00\x05", b"\x00\x09", b"\x00\x0a", b"\x00\x00\x00\x05", b""])


def accounted(col: Collector, datagrams: list, exporter: str) -> np.ndarray:
    """Feed ``datagrams``: each one is counted, and every record it gave counted too (sFlow
    records name their agent, which a mutated datagram may change, as the exporter)."""
    before = (col.totals["datagrams"], col.totals["records"],
              col.exporters[exporter].stats["datagrams"] if exporter in col.exporters else 0)
    recs = col.feed([(d, exporter, 3.0) for d in datagrams])
    after = (col.totals["datagrams"], col.totals["records"],
             col.exporters[exporter].stats["datagrams"])
    assert after == (before[0] + len(datagrams), before[1] + len(recs),
                     before[2] + len(datagrams))
    return recs


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(prefix=prefixes, body=st.binary(max_size=600))
def test_random_datagrams_never_raise(fuzzed, prefix, body):
    bad = fuzzed.totals["bad_datagrams"]
    recs = accounted(fuzzed, [prefix + body], "10.9.9.9")
    if not prefix:                             # no known version: counted as bad, nothing else
        assert fuzzed.totals["bad_datagrams"] == bad + 1 and len(recs) == 0


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(idx=st.integers(min_value=0, max_value=10 ** 6), flips=st.lists(
    st.tuples(st.integers(min_value=0, max_value=1500), st.integers(min_value=0, max_value=255)),
    min_size=1, max_size=8))
def test_mutated_real_datagrams_never_raise(fuzzed, real, idx, flips):
    d = bytearray(real[idx % len(real)])
    for pos, val in flips:
        if pos < len(d):
            d[pos] = val
    accounted(fuzzed, [bytes(d)], "127.0.0.1")


def v9(seq, flowsets, source_id=0, uptime=100000, secs=1700000000):
    body = b"".join(flowsets)
    return struct.pack(">HHIIII", 9, 1, uptime, secs, seq, source_id) + body


def flowset(sid, body):
    pad = (-len(body)) % 4
    return struct.pack(">HH", sid, 4 + len(body) + pad) + body + b"\0" * pad


def test_template_flood_is_bounded():
    col = Collector(max_templates=100)
    sets = [flowset(0, struct.pack(">HHHH", 256 + i, 1, 1, 4)) for i in range(1000)]
    for i in range(0, 1000, 50):
        col.feed([(v9(i // 50, sets[i:i + 50]), "10.1.1.1", 1.0)])
    e = col.exporters["10.1.1.1"]
    assert len(e.domains[(9, 0)].templates) == 100
    assert e.bad["template_limit"] == 900


def test_exporter_flood_is_bounded():
    col = Collector(max_exporters=10)
    for i in range(30):
        col.feed([(v9(0, []), f"10.2.0.{i}", 1.0)])
    assert len(col.exporters) == 10
    assert col.totals["exporters_over_limit"] == 20


def test_pending_data_is_bounded():
    col = Collector(max_pending=5)
    for i in range(20):
        col.feed([(v9(i, [flowset(300, b"\0" * 8)]), "10.3.0.1", 1.0)])
    st_ = col.stats()["exporters"]["10.3.0.1"]
    assert st_["no_template"] == 20 and st_["no_template_dropped"] == 15


def test_sequence_gaps_are_lost_datagrams():
    col = Collector()
    for seq in (10, 11, 12, 20, 21):
        col.feed([(v9(seq, []), "10.4.0.1", 1.0)])
    assert col.exporters["10.4.0.1"].stats["lost"] == 7


def test_v9_times_and_sampling_options():
    col = Collector("passthrough")
    tmpl = flowset(0, struct.pack(">HH", 256, 4) + struct.pack(">HHHHHHHH", 8, 4, 2, 4, 22, 4,
                                                                21, 4))
    opt = flowset(1, struct.pack(">HHH", 257, 4, 4) + struct.pack(">HHHH", 2, 4, 34, 4))
    optdata = flowset(257, struct.pack(">II", 1, 10))
    data = flowset(256, struct.pack(">4sIII", bytes([10, 0, 0, 1]), 5, 90000, 95000))
    r = col.feed([(v9(1, [tmpl, opt, optdata, data], uptime=100000, secs=1700000000),
                   "10.5.0.1", 1.0)])
    assert len(r) == 1
    assert r["in_pkts"][0] == 50                      # upscaled by the sampling interval 10
    assert r["first_ms"][0] == 1700000000000 - 10000
    assert r["last_ms"][0] == 1700000000000 - 5000
    raw = Collector("passthrough", upscale=False).feed(
        [(v9(1, [tmpl, opt, optdata, data]), "10.5.0.1", 1.0)])
    assert raw["in_pkts"][0] == 5


def ipfix(seq, sets, domain=7, secs=1700000000):
    body = b"".join(sets)
    return struct.pack(">HHIII", 10, 16 + len(body), secs, seq, domain) + body


def ipset(sid, body):
    return struct.pack(">HH", sid, 4 + len(body)) + body


def ntp(ms):
    secs, frac_ms = divmod(ms, 1000)
    return ((secs + NTP_EPOCH_OFFSET) << 32) | ((frac_ms << 32) // 1000 + 1)


@pytest.mark.parametrize("form", ["sec", "ms", "us", "ns", "delta", "uptime"])
def test_ipfix_timestamp_forms(form):
    start, end, export = 1700000000000 - 7000, 1700000000000 - 2000, 1700000000
    if form == "sec":
        fields, vals = [(150, 4), (151, 4)], struct.pack(">II", start // 1000, end // 1000)
    elif form == "ms":
        fields, vals = [(152, 8), (153, 8)], struct.pack(">QQ", start, end)
    elif form in ("us", "ns"):
        e = (154, 155) if form == "us" else (156, 157)
        fields, vals = [(e[0], 8), (e[1], 8)], struct.pack(">QQ", ntp(start), ntp(end))
    elif form == "delta":
        fields, vals = [(158, 4), (159, 4)], struct.pack(">II", 7000000, 2000000)
    else:
        fields, vals = [(22, 4), (21, 4)], struct.pack(">II", 1000, 6000)
    sets = []
    if form == "uptime":       # systemInitTimeMilliseconds in options data
        sets.append(ipset(3, struct.pack(">HHH", 300, 2, 1) + struct.pack(">HHHH", 149, 4,
                                                                          160, 8)))
        sets.append(ipset(300, struct.pack(">IQ", 7, start - 1000)))
    tfields = [(8, 4), (2, 4)] + fields
    sets.append(ipset(2, struct.pack(">HH", 256, len(tfields)) +
                      b"".join(struct.pack(">HH", a, b) for a, b in tfields)))
    sets.append(ipset(256, bytes([10, 0, 0, 2]) + struct.pack(">I", 3) + vals))
    r = Collector("passthrough").feed([(ipfix(0, sets, secs=export), "10.6.0.1", 1.0)])
    assert len(r) == 1 and r["in_pkts"][0] == 3
    want = (start // 1000 * 1000, end // 1000 * 1000) if form == "sec" else (start, end)
    assert (int(r["first_ms"][0]), int(r["last_ms"][0])) == want
    assert r["observation_point"][0] == 7


def test_ipfix_varlen_enterprise_reverse_and_withdrawal():
    col = Collector("passthrough")
    # sourceIPv4, varlen (82 interfaceName), enterprise element (PEN 9, id 1, 4 bytes),
    # octetDeltaCount, reverse octetDeltaCount and packetDeltaCount (PEN 29305)
    tf = (struct.pack(">HH", 8, 4) + struct.pack(">HH", 82, 65535) +
          struct.pack(">HHI", 0x8001, 4, 9) + struct.pack(">HH", 1, 8) +
          struct.pack(">HHI", 0x8001, 8, 29305) + struct.pack(">HHI", 0x8002, 4, 29305))
    tmpl = ipset(2, struct.pack(">HH", 400, 6) + tf)

    def rec(addr, name, b, rb, rp):
        n = name.encode()
        ln = bytes([len(n)]) if len(n) < 255 else b"\xff" + struct.pack(">H", len(n))
        return bytes(addr) + ln + n + b"ABCD" + struct.pack(">QQI", b, rb, rp)
    data = ipset(400, rec([10, 0, 0, 3], "eth0", 100, 200, 4) +
                 rec([10, 0, 0, 4], "x" * 300, 111, 222, 5))
    r = col.feed([(ipfix(0, [tmpl, data]), "10.7.0.1", 1.0)])
    assert len(r) == 2
    assert r["in_bytes"].tolist() == [100, 111]
    assert r["out_bytes"].tolist() == [200, 222]
    assert r["out_pkts"].tolist() == [4, 5]
    assert bytes(r["src_addr"][1][:4]) == bytes([10, 0, 0, 4])
    # withdraw template 400: its data is held again
    w = ipset(2, struct.pack(">HH", 400, 0))
    r = col.feed([(ipfix(2, [w, data]), "10.7.0.1", 1.0)])
    assert len(r) == 0
    e = col.exporters["10.7.0.1"].stats
    assert e["template_withdrawals"] == 1 and e["no_template"] == 1


def test_bad_packets_are_dumped(tmp_path):
    """The dump holds each rejected datagram as sent, from its exporter to the collector's port
    (read back by dpkt)."""
    import dpkt
    from engine.collect.badpackets import BadPacketWriter
    w = BadPacketWriter(str(tmp_path / "bad.pcap"), port=2055)
    col = Collector(bad_dump=w)
    col.feed([(b"\x00\x07garbage", "10.8.0.1", 1.0), (b"\x00", "10.8.0.2", 1.0),
              (v9(0, []), "10.8.0.1", 1.0)])
    w.close()
    assert w.written == 2
    with open(tmp_path / "bad.pcap", "rb") as f:
        rd = dpkt.pcap.Reader(f)
        frames = [buf for _, buf in rd]
        link = rd.datalink()
    got = []
    for buf in frames:
        ip = dpkt.ethernet.Ethernet(buf).data if link == dpkt.pcap.DLT_EN10MB else \
            dpkt.ip.IP(buf)
        got.append((socket.inet_ntoa(ip.src), ip.data.dport, bytes(ip.data.data)))
    assert got == [("10.8.0.1", 2055, b"\x00\x07garbage"), ("10.8.0.2", 2055, b"\x00")]


def _compact_to_expanded(d: bytes) -> bytes:
    """An sFlow v5 datagram with its compact flow samples rewritten as expanded ones, and an
    IPv6 agent address."""
    out = bytearray(struct.pack(">II", 5, 2) + bytes(range(16)))
    off = 12
    sub, seq, up, n = struct.unpack_from(">IIII", d, off)
    out += struct.pack(">IIII", sub, seq, up, n)
    off += 16
    for _ in range(n):
        tag, ln = struct.unpack_from(">II", d, off)
        body = d[off + 8:off + 8 + ln]
        off += 8 + ln
        if tag == 1:
            sq, src, rate, pool, drops, inp, outp, nrec = struct.unpack_from(">8I", body)
            body = struct.pack(">11I", sq, src >> 24, src & 0xFFFFFF, rate, pool, drops, 0, inp,
                               0, outp, nrec) + body[32:]
            tag = 3
        out += struct.pack(">II", tag, len(body)) + body
    return bytes(out)


def test_sflow_expanded_samples_and_ipv6_agent(exports):
    dg = udp_payloads(exports / "pmacctd-sflow-v5.pcap")
    compact = Collector("passthrough").feed(dg)
    exp = Collector("passthrough").feed([(_compact_to_expanded(d), a, t) for d, a, t in dg])
    assert len(exp) == len(compact) > 0
    for c in ("in_bytes", "in_pkts", "src_addr", "dst_addr", "src_port", "input_snmp"):
        assert np.array_equal(exp[c], compact[c])
    assert (exp["exporter_ip_version"] == 6).all()
    assert bytes(exp["exporter_addr"][0]) == bytes(range(16))


# --- sequence numbers and observation domains ---------------------------------------------------
def ipfix_flows(seq, n, domain=7, tid=256, src_base=0):
    """An IPFIX message of template ``tid`` (source address, packets) with ``n`` records."""
    tmpl = ipset(2, struct.pack(">HHHHHH", tid, 2, 8, 4, 2, 4))
    body = b"".join(bytes([10, 0, (src_base + i) >> 8, (src_base + i) & 255]) +
                    struct.pack(">I", i + 1) for i in range(n))
    return ipfix(seq, [tmpl, ipset(tid, body)], domain=domain)


@pytest.mark.parametrize("seqs,lost,resets", [
    ([(0, 5), (5, 5), (10, 5)], 0, 0),                          # in order: seq = records sent
    ([(0, 5), (5, 5), (17, 5)], 7, 0),                          # 7 records never arrived
    ([(0xFFFFFFFE, 5), (3, 5), (8, 1)], 0, 0),                  # the 32-bit counter wraps
    ([(100, 5), (105, 5), (50, 5)], 0, 1),                      # backwards: a reset, not a loss
])
def test_ipfix_sequence_loss_wrap_and_reordering(seqs, lost, resets):
    col = Collector("passthrough")
    recs = col.feed([(ipfix_flows(s, n), "10.20.0.1", 1.0) for s, n in seqs])
    st = col.exporters["10.20.0.1"].stats
    assert len(recs) == sum(n for _, n in seqs)
    assert (st["lost"], st["sequence_resets"]) == (lost, resets)


def sflow_datagram(seq, agent=b"\x0a\x15\x00\x01"):
    """An sFlow v5 datagram with one counter sample (no flows)."""
    sample = struct.pack(">II", 2, 12) + struct.pack(">III", 1, 1, 0)
    return struct.pack(">II4sIII", 5, 1, agent, 0, seq, 1000) + struct.pack(">I", 1) + sample


def test_sflow_sequence_loss():
    col = Collector("passthrough")
    col.feed([(sflow_datagram(s), "10.21.0.1", 1.0) for s in (1, 2, 3, 7, 8)])
    assert col.exporters["10.21.0.1"].stats["lost"] == 3              # datagrams 4, 5 and 6


def test_templates_belong_to_their_observation_domain():
    """Two domains of one exporter use template 256 with different layouts: each domain's data
    is read with its own template, and a domain without it holds its data."""
    col = Collector("passthrough")
    a = ipfix_flows(0, 2, domain=1)                                     # source, packets
    tmpl_b = ipset(2, struct.pack(">HHHHHH", 256, 2, 2, 4, 8, 4))       # packets, source
    data_b = ipset(256, struct.pack(">I4s", 9, bytes([192, 0, 2, 9])))
    recs = col.feed([(a, "10.22.0.1", 1.0), (ipfix(0, [tmpl_b, data_b], domain=2), "10.22.0.1",
                                              1.0)])
    got = sorted((bytes(r["src_addr"][:4]), int(r["in_pkts"]), int(r["observation_point"]))
                 for r in recs)
    assert got == [(bytes([10, 0, 0, 0]), 1, 1), (bytes([10, 0, 0, 1]), 2, 1),
                   (bytes([192, 0, 2, 9]), 9, 2)]
    held = col.feed([(ipfix(0, [data_b], domain=3), "10.22.0.1", 1.0)])   # domain 3: no template
    assert len(held) == 0 and col.exporters["10.22.0.1"].stats["no_template"] == 1
