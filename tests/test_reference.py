"""The fast path against its pure-Python reference (engine/reference.py), and dpkt as a third,
independent decoder. Packets come from hypothesis strategies (built with struct), from hand-made
feature scenarios and from every development capture in /work/shared/pcaps."""
from __future__ import annotations

import math
import os
import struct
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dpkt  # noqa: E402

from conftest import NO_SHARED, corpus_files  # noqa: E402
from engine import reference as ref  # noqa: E402
from engine._fastpath import META_DTYPE, FlowTable  # noqa: E402
from engine.fields import COLUMNS  # noqa: E402
import cases  # noqa: E402,F401  (tools/ on the path)
from corpus import capture_packets  # noqa: E402

# REFERENCE_EXAMPLES=5000 REFERENCE_RANDOM=1 for a longer, non-reproducible bug hunt
SETTINGS = settings(max_examples=int(os.environ.get("REFERENCE_EXAMPLES", 200)), deadline=None,
                    derandomize=not os.environ.get("REFERENCE_RANDOM"), database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MS = 1_000_000          # ns
SEC = 1_000_000_000


# --- running both implementations --------------------------------------------------------------
def to_dicts(records: np.ndarray) -> list:
    out = []
    for rec in records:
        d = {}
        for name, _, count in COLUMNS:
            v = rec[name]
            d[name] = [int(x) for x in v] if count > 1 else int(v)
        out.append(d)
    return out


def fast_flows(packets, idle_timeout=30.0, lifetime=120.0, features=True, linger=2.0,
               output_size=8192, max_flows=4096, stats=None):
    """packets: (ts_ns, frame, wirelen, linktype) through a FlowTable, as record dicts."""
    packets = list(packets)
    meta = np.zeros(len(packets), dtype=META_DTYPE)
    buf = bytearray()
    for k, (ts, frame, wire, lt) in enumerate(packets):
        meta[k] = (ts, len(buf), len(frame), wire, lt, 0)
        buf += frame
    buf = bytes(buf) or b"\0"
    ft = FlowTable(max_flows=max_flows, idle_timeout=idle_timeout, lifetime=lifetime,
                   features=features, output_size=output_size, linger=linger)
    recs = []
    k = 0
    while k < len(packets):
        k = ft.process(buf, meta, k)
        recs.append(ft.take())
    while not ft.flush():
        recs.append(ft.take())
    recs.append(ft.take())
    if stats is not None:
        stats.append(ft.stats())
    return to_dicts(np.concatenate(recs)) if recs else []


def canon(flows: list) -> list:
    return sorted(flows, key=lambda d: tuple((k, tuple(v) if isinstance(v, list) else v)
                                             for k, v in sorted(d.items())))


def assert_same(packets, **kw):
    packets = list(packets)
    st_fast, st_ref = [], []
    fast = canon(fast_flows(packets, stats=st_fast, **kw))
    kw.pop("output_size", None)
    want = canon(ref.reference_flows(packets, table=st_ref, **kw))
    if fast != want:
        # a readable first difference
        for a, b in zip(fast, want):
            if a != b:
                diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
                raise AssertionError(f"{len(fast)} fast vs {len(want)} reference flows; first "
                                     f"differing record (fast, reference): {diff}\nfast={a}")
        raise AssertionError(f"{len(fast)} fast vs {len(want)} reference flows")
    drops = {k: v for k, v in st_fast[0]["drops"].items() if v}
    assert drops == dict(st_ref[0].drops)
    assert st_fast[0]["decoded"] == st_ref[0].decoded
    return want


# --- packet builders: tools/packets.py ----------------------------------------------------------
from packets import (eth, gre, gtpu, icmp, ipv4, ipv6, mpls, pppoe, sctp, tcp,  # noqa: E402
                     udp, vxlan)


V4 = [bytes([10, 0, 0, i]) for i in range(1, 5)]
V6 = [bytes([0x20, 0x01, 0x0d, 0xb8] + [0] * 11 + [i]) for i in range(1, 5)]
TUNNEL_PORTS = {2152, 4789, 37008, 5247}


# --- hypothesis strategies ----------------------------------------------------------------------
ports = st.integers(1, 65535).filter(lambda p: p not in TUNNEL_PORTS)


@st.composite
def flow_specs(draw):
    """A flow: endpoints, protocol, and how every packet of it is encapsulated."""
    v6 = draw(st.booleans())
    addrs = V6 if v6 else V4
    a, b = draw(st.sampled_from(addrs)), draw(st.sampled_from(addrs))
    proto = draw(st.sampled_from([6, 6, 6, 17, 17, 1 if not v6 else 58, 132, 136, 50]))
    encap = draw(st.sampled_from(["eth", "eth", "vlan", "qinq", "mpls", "pppoe", "raw", "null",
                                  "sll", "ipip", "gre", "gre-key", "gre-eth", "vxlan", "gtpu",
                                  "v6ext", "ipip6", "gre6", "deep", "vxlan-arp", "gtp-echo"]))
    return dict(v6=v6, a=a, b=b, sport=draw(ports), dport=draw(ports), proto=proto, encap=encap,
                vlan=draw(st.integers(0, 4095)), vlan2=draw(st.integers(0, 4095)),
                depth=draw(st.integers(2, 6)),
                tos=draw(st.integers(0, 255)), v4opts=draw(st.sampled_from([b"", b"\x01" * 4,
                                                                            b"\x94\x04\0\0"])))


def l4_bytes(spec, reverse, flags, payload, tcp_opts=b""):
    sp, dp = (spec["dport"], spec["sport"]) if reverse else (spec["sport"], spec["dport"])
    proto = spec["proto"]
    if proto == 6:
        return tcp(sp, dp, flags, payload, tcp_opts)
    if proto in (17, 136):
        return udp(sp, dp, payload)
    if proto in (1, 58):
        return icmp(8 if not reverse else 0, 0, payload)
    if proto == 132:
        return sctp(sp, dp, payload)
    return payload


def ip_bytes(spec, reverse, l4, ident=1, frag=None):
    src, dst = (spec["b"], spec["a"]) if reverse else (spec["a"], spec["b"])
    if spec["v6"]:
        ext = []
        if spec["encap"] == "v6ext":
            ext = [(0, b"\x01\x04\0\0\0\0"), (60, b"\x01\x04\0\0\0\0" + b"\0" * 8)]
        if frag is not None:
            off, more = frag
            ext.append((44, struct.pack("!BHI", 0, off | (1 if more else 0), ident)))
        return ipv6(src, dst, spec["proto"], l4, tclass=spec["tos"], ext=ext)
    if frag is not None:
        off, more = frag
        return ipv4(src, dst, spec["proto"], l4, tos=spec["tos"], ident=ident, mf=more,
                    frag_off=off, options=spec["v4opts"])
    return ipv4(src, dst, spec["proto"], l4, tos=spec["tos"], ident=ident,
                options=spec["v4opts"])


OUTER4 = (bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))


def frame_bytes(spec, ip, reverse):
    """Wrap an IP packet in the flow's encapsulation: (frame, linktype)."""
    enc = spec["encap"]
    et = 0x86DD if spec["v6"] else 0x0800
    o1, o2 = OUTER4[::-1] if reverse else OUTER4
    macs = dict(src=b"\x02\0\0\0\0\x02", dst=b"\x02\0\0\0\0\x01") if reverse else {}
    if enc in ("eth", "v6ext"):
        return eth(ip, et, **macs), 1
    if enc == "vlan":
        return eth(ip, et, vlans=(spec["vlan"],), **macs), 1
    if enc == "qinq":
        return eth(ip, et, vlans=(spec["vlan"], spec["vlan2"]), **macs), 1
    if enc == "mpls":
        return eth(mpls(ip, (100, 200)), 0x8847, **macs), 1
    if enc == "pppoe":
        return eth(pppoe(ip, spec["v6"]), 0x8864, **macs), 1
    if enc == "raw":
        return ip, 101
    if enc == "null":
        return struct.pack("<I", 30 if spec["v6"] else 2) + ip, 0
    if enc == "sll":
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, et) + ip, 113
    if enc == "ipip":
        return eth(ipv4(o1, o2, 41 if spec["v6"] else 4, ip), **macs), 1
    if enc == "gre":
        return eth(ipv4(o1, o2, 47, gre(ip, et)), **macs), 1
    if enc == "gre-key":
        return eth(ipv4(o1, o2, 47, gre(ip, et, key=5, seq=9, checksum=True)), **macs), 1
    if enc == "gre-eth":
        return eth(ipv4(o1, o2, 47, gre(eth(ip, et, vlans=(spec["vlan"],)), 0x6558)), **macs), 1
    if enc == "vxlan":
        return eth(ipv4(o1, o2, 17, udp(40000, 4789, vxlan(eth(ip, et)))), **macs), 1
    if enc == "ipip6":
        return eth(ipv6(V6[2], V6[3], 41 if spec["v6"] else 4, ip), 0x86DD, **macs), 1
    if enc == "gre6":
        return eth(ipv6(V6[3], V6[2], 47, gre(ip, et, key=1)), 0x86DD, **macs), 1
    if enc == "deep":                         # nested IP-in-IP: more than 4 is too deep
        for k in range(spec["depth"]):
            ip = ipv4(o1, bytes([o2[0], o2[1], o2[2], k]), 41 if spec["v6"] and k == 0 else 4, ip)
        return eth(ip, **macs), 1
    if enc == "vxlan-arp":                    # a VXLAN datagram carrying no IP stays UDP
        arp = eth(b"\0\1\x08\0\6\4\0\1" + bytes(20), 0x0806)
        return eth(ipv4(o1, o2, 17, udp(40000, 4789, vxlan(arp)) + ip[:8]), **macs), 1
    if enc == "gtp-echo":                     # GTP-U signalling (not a G-PDU) stays UDP
        return eth(ipv4(o1, o2, 17, udp(2152, 2152, struct.pack("!BBHIHBB", 0x32, 1, 4, 0, 1, 0,
                                                                  0)) + ip[:4]), **macs), 1
    if enc == "gtpu":
        return eth(ipv4(o1, o2, 17, udp(2152, 2152, gtpu(ip, seq=3 if spec["tos"] & 1 else None))),
                   **macs), 1
    raise AssertionError(enc)


TCP_FLAGS = st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x14, 0x04, 0x19, 0x10, 0x18, 0x18,
                             0x00, 0x29, 0xC2])
GAPS = st.one_of(st.integers(0, 2 * MS), st.integers(0, 120 * MS),
                 st.sampled_from([0, 1000, 999_999, 1_000_000, 1_000_001, 5 * MS, 10 * MS,
                                  50 * MS, 100 * MS, 100 * MS + 1000, 2 * SEC, 3 * SEC, 6 * SEC,
                                  13 * SEC]))


@st.composite
def payloads(draw):
    kind = draw(st.sampled_from(["none", "small", "bytes", "big", "same"]))
    if kind == "none":
        return b""
    if kind == "small":
        return draw(st.binary(min_size=1, max_size=80))
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=600))
    if kind == "same":
        return bytes([draw(st.integers(0, 255))]) * draw(st.integers(1, 1500))
    n = draw(st.integers(600, 1460))
    return draw(st.randoms(use_true_random=False)).randbytes(n)


@st.composite
def scenarios(draw):
    """Several flows, interleaved packets with increasing timestamps: (ts_ns, frame, wire, lt)."""
    specs = draw(st.lists(flow_specs(), min_size=1, max_size=4))
    n = draw(st.integers(1, 40))
    ts = 1_700_000_000 * SEC + draw(st.integers(0, 10**9))
    out = []
    ident = 100
    for _ in range(n):
        spec = draw(st.sampled_from(specs))
        reverse = draw(st.booleans())
        flags = draw(TCP_FLAGS)
        payload = draw(payloads())
        opts = draw(st.sampled_from([b"", b"\x02\x04\x05\xb4", b"\x01" * 12]))
        ts += draw(GAPS)
        ident += 1
        fragmented = draw(st.integers(0, 9)) == 0 and len(payload) >= 16
        if fragmented and spec["encap"] not in ("gtpu", "vxlan"):
            # two fragments of one datagram; sometimes the first is lost
            l4 = l4_bytes(spec, reverse, flags, payload, opts)
            cut = max(8, (len(l4) // 2) // 8 * 8)
            parts = [(l4[:cut], (0, True)), (l4[cut:], (cut, False))]
            if draw(st.integers(0, 3)) == 0:
                parts = parts[1:]
            for body, fr in parts:
                ip = ip_bytes(spec, reverse, body, ident=ident, frag=fr)
                frame, lt = frame_bytes(spec, ip, reverse)
                out.append((ts, frame, len(frame), lt))
                ts += draw(st.integers(0, 3 * MS))
            continue
        ip = ip_bytes(spec, reverse, l4_bytes(spec, reverse, flags, payload, opts))
        frame, lt = frame_bytes(spec, ip, reverse)
        wire = len(frame)
        if lt == 1 and wire < 60 and draw(st.booleans()):
            frame += b"\0" * (60 - wire)          # Ethernet padding counts as IP bytes
            wire = 60
        if payload and draw(st.integers(0, 4)) == 0:
            frame = frame[:len(frame) - draw(st.integers(1, len(payload)))]   # snap length
        out.append((ts, frame, wire, lt))
    return out


# --- (a) fast path == reference on generated traffic --------------------------------------------
@SETTINGS
@given(scenarios(), st.sampled_from([(30.0, 120.0), (5.0, 12.0), (2.0, 3.0), (0.5, 120.0)]),
       st.booleans())
def test_generated_traffic_matches_reference(packets, timeouts, features):
    idle, lifetime = timeouts
    assert_same(packets, idle_timeout=idle, lifetime=lifetime, features=features)


@st.composite
def tcp_conversations(draw):
    """One or two TCP connections with a handshake, data, and a FIN/RST ending, sometimes
    reopened by a new SYN; exercises the window, linger and close rules."""
    out = []
    ts = 1_600_000_000 * SEC
    for c in range(draw(st.integers(1, 2))):
        spec = draw(flow_specs().map(lambda s: dict(s, proto=6)))
        if draw(st.booleans()):
            spec["encap"] = "eth"
        steps = [(False, 0x02, b""), (True, 0x12, b""), (False, 0x10, b"")]
        if draw(st.booleans()):
            steps = steps[:draw(st.integers(0, 3))]
        for _ in range(draw(st.integers(0, 12))):
            steps.append((draw(st.booleans()), draw(st.sampled_from([0x10, 0x18])),
                          draw(payloads())))
        ending = draw(st.sampled_from(["fin", "rst", "none", "fin1"]))
        if ending == "fin":
            steps += [(False, 0x11, b""), (True, 0x11, b""), (False, 0x10, b"")]
        elif ending == "fin1":
            steps += [(True, 0x11, b"")]
        elif ending == "rst":
            steps += [(draw(st.booleans()), 0x14, b"")]
        if draw(st.booleans()):
            steps += [(False, 0x02, b""), (True, 0x12, b""), (False, 0x18, b"x" * 10)]
        # sequence numbers (near the 32-bit wrap too) that mostly advance, sometimes step back
        # or repeat, and windows, for the TCP health rules (retransmission, out of order...)
        nxt = [draw(st.sampled_from([1, 2**32 - 100, draw(st.integers(0, 2**32 - 1))]))
               for _ in range(2)]
        for reverse, flags, payload in steps:
            ts += draw(GAPS)
            how = draw(st.sampled_from(["next", "next", "next", "back", "one_below", "same"]))
            seq = {"next": nxt[reverse], "same": nxt[reverse], "one_below": nxt[reverse] - 1,
                   "back": nxt[reverse] - draw(st.integers(1, 3000))}[how] % 2**32
            if how == "next":
                nxt[reverse] = (seq + len(payload) + bool(flags & 0x02) + bool(flags & 0x01)) % 2**32
            win = draw(st.sampled_from([65535, 65535, 0, 512]))
            ip = ip_bytes(spec, reverse, tcp(*((spec["dport"], spec["sport"]) if reverse else
                                               (spec["sport"], spec["dport"])), flags, payload,
                                             seq=seq, win=win))
            frame, lt = frame_bytes(spec, ip, reverse)
            out.append((ts, frame, len(frame), lt))
    return out


@SETTINGS
@given(tcp_conversations(), st.sampled_from([(30.0, 120.0, 2.0), (1.0, 120.0, 2.0),
                                             (30.0, 4.0, 0.5)]))
def test_tcp_conversations_match_reference(packets, params):
    idle, lifetime, linger = params
    assert_same(packets, idle_timeout=idle, lifetime=lifetime, linger=linger)


@st.composite
def single_packets(draw):
    """One packet, mutated: random flags and lengths, random truncation of headers too."""
    spec = draw(flow_specs())
    payload = draw(st.binary(max_size=64))
    ip = ip_bytes(spec, False, l4_bytes(spec, False, draw(TCP_FLAGS), payload))
    frame, lt = frame_bytes(spec, ip, False)
    mutate = draw(st.sampled_from(["none", "cut", "byte"]))
    if mutate == "cut" and not (spec["proto"] in (1, 58)):
        frame = frame[:draw(st.integers(0, len(frame)))]
    elif mutate == "byte":
        i = draw(st.integers(0, len(frame) - 1))
        frame = frame[:i] + bytes([draw(st.integers(0, 255))]) + frame[i + 1:]
    return frame, lt


@SETTINGS
@given(st.lists(single_packets(), min_size=1, max_size=6))
def test_mutated_packets_match_reference(frames):
    # a mutated byte may turn into anything: the fast path and the reference must still agree
    # on every accounted flow and every drop reason
    ts = 1_000 * SEC
    assert_same([(ts + k * MS, f, len(f), lt) for k, (f, lt) in enumerate(frames)])


# --- fast-path bugs the reference found (fixed): minimal reproducers ----------------------------------------------------
def test_gre_keepalive_stays_on_the_outer_gre_flow():
    keepalive = gre(b"\x00\x00\x00\x00", proto=0x0000)        # GRE carrying no IP packet
    frame = eth(ipv4(V4[0], V4[1], 47, keepalive))
    recs = assert_same([(SEC, frame, len(frame), 1)])
    assert len(recs) == 1 and recs[0]["protocol"] == 47 and recs[0]["tunnel"] == 0
    assert recs[0]["in_bytes"] == len(frame) - 14


def test_gtp_non_gpdu_stays_plain_udp():
    echo = struct.pack("!BBHIHBB", 0x32, 0x01, 4, 0, 1, 0, 0)          # GTP echo request
    frame = eth(ipv4(V4[0], V4[1], 17, udp(2152, 2152, echo)))
    recs = assert_same([(SEC, frame, len(frame), 1)])
    assert recs[0]["tunnel"] == 0


def test_payload_len_of_tcp_header_cut_by_snaplen():
    seg = tcp(1000, 80, 0x18, b"A" * 100, options=b"\x01" * 40)           # data offset 60
    frame = eth(ipv4(V4[0], V4[1], 6, seg))
    cut = frame[:14 + 20 + 30]                                         # 30 of 60 TCP bytes
    recs = assert_same([(SEC, cut, len(frame), 1)])
    assert recs[0]["seq_plen"] == [0, 1, 0, 0, 0, 0]                   # 100 bytes: bin 65-128


def test_payload_len_of_icmp_header_cut_by_snaplen():
    frame = eth(ipv4(V4[0], V4[1], 1, icmp(8, 0, b"B" * 62)))
    recs = assert_same([(SEC, frame[:14 + 20 + 4], len(frame), 1)])
    assert recs[0]["seq_plen"] == [1, 0, 0, 0, 0, 0]                   # 62 bytes: bin <=64


def test_expiry_resumes_after_output_full():
    pkts = []
    for i in range(6):
        f = eth(ipv4(V4[0], V4[1], 17, udp(1000 + i, 53, b"q")))
        pkts.append((i * MS, f, len(f), 1))
    late = eth(ipv4(V4[0], V4[1], 17, udp(1005, 53, b"q")))
    pkts.append((40 * SEC, late, len(late), 1))
    assert_same(pkts, output_size=4)


BUG_D = ("bug D (fixed): _fastpath.pyx link_header_len disagreed with decode: it returns 16 for Linux "
         "cooked v1, 20 for v2, 4 for Cisco HDLC unless the ethertype is 0x8847, and off + 8 for "
         "802.3/SNAP, although decode_by_ethertype pops MPLS/PPPoE behind all of them, so those "
         "headers are counted as IP bytes (DESIGN.md: bytes exclude everything before the first "
         "IP header)")
_IP_D = ipv4(V4[0], V4[1], 17, udp(1000, 53, b"q"))
_SLL = struct.pack("!HHH8s", 0, 1, 6, b"\x02" * 8)


@pytest.mark.parametrize("frame,lt", [
    pytest.param(_SLL + b"\x88\x47" + mpls(_IP_D, (1, 2)), 113, id="sll-mpls"),
    pytest.param(_SLL + b"\x88\x64" + pppoe(_IP_D), 113, id="sll-pppoe"),
    pytest.param(struct.pack("!HHIHBB8s", 0x8847, 0, 1, 1, 0, 6, bytes(8)) + mpls(_IP_D), 276,
                 id="sll2-mpls"),
    pytest.param(b"\x0f\x00\x88\x48" + mpls(_IP_D), 104, id="hdlc-mpls-multicast"),
    pytest.param(b"\x0f\x00\x88\x64" + pppoe(_IP_D), 104, id="hdlc-pppoe"),
    pytest.param(eth(b"\xaa\xaa\x03\0\0\0\x88\x47" + mpls(_IP_D), len(_IP_D) + 12), 1,
                 id="snap-mpls"),
    pytest.param(eth(b"\xaa\xaa\x03\0\0\0\x88\x64" + pppoe(_IP_D), len(_IP_D) + 16), 1,
                 id="snap-pppoe"),
])
def test_bytes_exclude_link_layer_headers(frame, lt):
    recs = assert_same([(SEC, frame, len(frame), lt)])
    assert recs[0]["in_bytes"] == len(_IP_D)


def test_idle_expiry_with_timestamps_out_of_order():
    a = eth(ipv4(V4[0], V4[1], 17, udp(1, 2, b"a")))
    b = eth(ipv4(V4[2], V4[3], 17, udp(1, 2, b"b")))
    c = eth(ipv4(V4[0], V4[3], 17, udp(5, 6, b"c")))
    pkts = [(10 * SEC, a, len(a), 1), (5 * SEC, b, len(b), 1), (36 * SEC, c, len(c), 1),
            (37 * SEC, b, len(b), 1)]
    recs = assert_same(pkts)
    assert sorted(r["end_reason"] for r in recs) == [0, 4, 4, 4]        # b expired idle at 36 s


# --- (b) dpkt as an independent decoder --------------------------------------------------------
@st.composite
def dpkt_packets(draw):
    v6 = draw(st.booleans())
    spec = draw(flow_specs())
    spec["v6"] = v6
    spec["a"], spec["b"] = (V6 if v6 else V4)[0], (V6 if v6 else V4)[1]
    spec["proto"] = draw(st.sampled_from([6, 17, 58 if v6 else 1]))
    spec["encap"] = draw(st.sampled_from(["eth", "vlan", "qinq", "ipip", "gre", "ipip6"]))
    spec["v4opts"] = b""
    flags = draw(st.sampled_from([0x02, 0x10, 0x18, 0x11, 0x04]))
    ip = ip_bytes(spec, False, l4_bytes(spec, False, flags, draw(st.binary(max_size=40))))
    frame, _ = frame_bytes(spec, ip, False)
    return frame


def dpkt_key(frame: bytes) -> dict:
    e = dpkt.ethernet.Ethernet(frame)
    tags = getattr(e, "vlan_tags", [])
    ip = e.data
    while True:                                   # strip IP-in-IP and GRE as dpkt parses them
        inner = ip.data
        if isinstance(inner, dpkt.gre.GRE):
            inner = inner.data
        if isinstance(inner, (dpkt.ip.IP, dpkt.ip6.IP6)):
            ip = inner
        else:
            break
    if isinstance(ip, dpkt.ip.IP):
        src, dst, proto = ip.src + bytes(12), ip.dst + bytes(12), ip.p
    else:
        src, dst, proto = ip.src, ip.dst, ip.nxt
    l4 = ip.data
    sport = dport = icmp_type = 0
    if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
        sport, dport = l4.sport, l4.dport
    elif isinstance(l4, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)):
        icmp_type = l4.type * 256 + l4.code
    if isinstance(ip, dpkt.ip6.IP6):
        proto = ip.p                              # after dpkt's extension header walk
    return dict(src_addr=list(src), dst_addr=list(dst), protocol=proto, src_port=sport,
                dst_port=dport, icmp_type=icmp_type, vlan=tags[-1].id if tags else 0,
                outer_vlan=tags[0].id if len(tags) > 1 else 0,
                src_mac=list(e.src), dst_mac=list(e.dst), ip_version=4 if
                isinstance(ip, dpkt.ip.IP) else 6)


@SETTINGS
@given(dpkt_packets())
def test_decode_agrees_with_dpkt(frame):
    want = dpkt_key(frame)
    p = ref.decode_packet(frame, 1)
    got_ref = dict(src_addr=list(p.src), dst_addr=list(p.dst), protocol=p.proto,
                   src_port=p.sport, dst_port=p.dport, icmp_type=p.icmp_type, vlan=p.vlan,
                   outer_vlan=p.outer_vlan, src_mac=list(p.smac), dst_mac=list(p.dmac),
                   ip_version=p.ip_version)
    assert got_ref == want
    (rec,) = fast_flows([(SEC, frame, len(frame), 1)])
    assert {k: rec[k] for k in want} == want


# --- (c) behaviour features ----------------------------------------------------------------------
C_MAC, S_MAC = b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"


def tcp_pkt(ts, reverse, flags, payload=b""):
    a, b, sp, dp = (V4[1], V4[0], 443, 50000) if reverse else (V4[0], V4[1], 50000, 443)
    f = eth(ipv4(a, b, 6, tcp(sp, dp, flags, payload)), src=S_MAC if reverse else C_MAC,
            dst=C_MAC if reverse else S_MAC)
    return (ts, f, len(f), 1)


def udp_pkt(ts, reverse, payload):
    a, b, sp, dp = (V4[1], V4[0], 53, 40000) if reverse else (V4[0], V4[1], 40000, 53)
    f = eth(ipv4(a, b, 17, udp(sp, dp, payload)))
    return (ts, f, len(f), 1)


HANDSHAKE = [tcp_pkt(0, False, 0x02), tcp_pkt(MS // 10, True, 0x12),
             tcp_pkt(MS // 5, False, 0x10)]
SEED_PAYLOADS = [100, 400, 256, 1064, 1400]


def only_flow(packets, **kw):
    (rec,) = assert_same(packets, **kw)
    return rec


def test_seed_example_tcp_after_handshake():
    pkts = list(HANDSHAKE)
    for k, n in enumerate(SEED_PAYLOADS):
        pkts.append(tcp_pkt(MS * (10 + k * 200), k % 2 == 1, 0x18, b"x" * n))
    rec = only_flow(pkts)
    assert rec["seq_plen"] == [0, 1, 1, 1, 0, 2]
    assert rec["seq_plen_c2s"] == [0, 1, 1, 0, 0, 1]       # 100, 256, 1400
    assert rec["seq_plen_s2c"] == [0, 0, 0, 1, 0, 1]       # 400, 1064


def test_seed_example_udp():
    pkts = [udp_pkt(MS * k * 200, False, b"y" * n) for k, n in enumerate(SEED_PAYLOADS)]
    rec = only_flow(pkts)
    assert rec["seq_plen"] == [0, 1, 1, 1, 0, 2]
    assert rec["seq_plen_c2s"] == [0, 1, 1, 1, 0, 2]
    assert rec["seq_plen_s2c"] == [0] * 6


def test_seq_tdiff_example():
    gaps_us = [500, 2500, 4000, 23000]
    ts, pkts = 5 * SEC, []
    pkts.append(udp_pkt(ts, False, b"a"))
    for g in gaps_us:
        ts += g * 1000
        pkts.append(udp_pkt(ts, False, b"a"))
    rec = only_flow(pkts)
    assert rec["seq_tdiff"] == [1, 2, 0, 1, 0, 0]
    assert rec["seq_tdiff_c2s"] == [1, 2, 0, 1, 0, 0]


def test_seq_tdiff_per_direction():
    # c, s, c, s at 0, 1, 3, 10 ms: any-direction gaps 1, 2, 7 ms; client 3 ms; server 9 ms
    pkts = [udp_pkt(0, False, b"a"), udp_pkt(MS, True, b"b"), udp_pkt(3 * MS, False, b"c"),
            udp_pkt(10 * MS, True, b"d")]
    rec = only_flow(pkts)
    assert rec["seq_tdiff"] == [1, 1, 1, 0, 0, 0]
    assert rec["seq_tdiff_c2s"] == [0, 1, 0, 0, 0, 0]
    assert rec["seq_tdiff_s2c"] == [0, 0, 1, 0, 0, 0]


def test_entropy_all_equal_bytes_is_zero():
    rec = only_flow([udp_pkt(k * MS, False, b"\x41" * 300) for k in range(3)])
    assert rec["entropy_c2s"] == 0 and rec["entropy_s2c"] == 0


def test_entropy_uniform_bytes_is_8000():
    uniform = bytes(range(256))
    rec = only_flow([udp_pkt(0, False, uniform), udp_pkt(MS, True, uniform * 3)])
    assert rec["entropy_c2s"] == 8000 and rec["entropy_s2c"] == 8000


def test_entropy_rounding_and_direction():
    payload = b"aab"                                     # H = 0.918295... bits: 918
    rec = only_flow([udp_pkt(0, False, payload), udp_pkt(MS, True, b"abcd")])
    assert rec["entropy_c2s"] == int(1000 * (math.log2(3) - (2 * 1 + 0) / 3) + 0.5) == 918
    assert rec["entropy_s2c"] == 2000


@pytest.mark.parametrize("n", [255, 256, 257, 4099, 65532, 65533, 131065])
def test_entropy_of_long_payloads(n):
    # IPv6 payload length 0 (jumbogram): the capture gives the length, so one packet can carry
    # more than 64 KiB; the fast path counts long payloads through 16-bit sub-histograms
    import random
    rnd = random.Random(n)
    payload = bytes(rnd.choice([0, 0, 0, 1, 2, 255, 17]) for _ in range(n))
    ip = struct.pack("!IHBB16s16s", 6 << 28, 0, 17, 64, V6[0], V6[1]) + udp(1, 2)[:4] + \
        b"\0\0\0\0" + payload
    f = eth(ip, 0x86DD)
    rec = only_flow([(SEC, f, len(f), 1)])
    assert rec["entropy_c2s"] == ref.entropy_x1000(Counter(payload)) > 0


def test_window_is_limited_to_256_packets():
    pkts = [udp_pkt(k * 2 * MS, k % 3 == 1, bytes([k % 256])) for k in range(300)]
    pkts += [udp_pkt(700 * MS, False, bytes(range(256)) * 4)]        # outside the window
    rec = only_flow(pkts)
    assert sum(rec["seq_plen"]) == 256
    assert sum(rec["seq_tdiff"]) == 255
    assert rec["in_pkts"] + rec["out_pkts"] == 301
    c2s = [k for k in range(256) if k % 3 != 1]
    assert rec["entropy_c2s"] == ref.entropy_x1000(Counter(bytes(c2s))) == 7418   # log2(171)


def test_handshake_packets_not_in_window():
    pkts = list(HANDSHAKE) + [tcp_pkt(MS, False, 0x18, b"x" * 10)]
    rec = only_flow(pkts)
    assert rec["seq_plen"] == [1, 0, 0, 0, 0, 0]
    assert sum(rec["seq_tdiff"]) == 0                  # one window packet: no gap yet
    assert rec["in_pkts"] == 3 and rec["out_pkts"] == 1


def test_pure_acks_are_in_window_but_not_binned():
    pkts = list(HANDSHAKE) + [tcp_pkt(MS, False, 0x18, b"x" * 10), tcp_pkt(3 * MS, True, 0x10)]
    rec = only_flow(pkts)
    assert rec["seq_plen"] == [1, 0, 0, 0, 0, 0]
    assert rec["seq_tdiff"] == [0, 1, 0, 0, 0, 0]


def test_midstream_tcp_opens_window_at_once():
    pkts = [tcp_pkt(0, False, 0x10), tcp_pkt(20 * MS, True, 0x18, b"z" * 70)]
    rec = only_flow(pkts)
    assert rec["seq_plen"] == [0, 1, 0, 0, 0, 0] and rec["seq_tdiff"] == [0, 0, 0, 1, 0, 0]


def test_payload_before_handshake_completes_opens_window():
    pkts = [tcp_pkt(0, False, 0x02), tcp_pkt(MS, False, 0x18, b"e" * 5),
            tcp_pkt(2 * MS, True, 0x12)]
    rec = only_flow(pkts)
    assert rec["seq_plen"] == [1, 0, 0, 0, 0, 0] and sum(rec["seq_tdiff"]) == 1


def test_syn_ack_first_makes_receiver_the_client():
    rec = only_flow([tcp_pkt(0, True, 0x12), tcp_pkt(MS, False, 0x10)])
    assert rec["src_port"] == 50000 and rec["in_pkts"] == 1 and rec["out_pkts"] == 1
    # the SYN-ACK went from the server's MAC to the client's: the client's is the source MAC
    assert (rec["src_mac"], rec["dst_mac"]) == (list(C_MAC), list(S_MAC))
    assert (rec["client_tcp_flags"], rec["server_tcp_flags"]) == (0x10, 0x12)


def test_rst_linger_and_new_syn():
    pkts = list(HANDSHAKE) + [tcp_pkt(MS, True, 0x14), tcp_pkt(1500 * MS, False, 0x10),
                              tcp_pkt(1600 * MS, False, 0x02), tcp_pkt(6 * SEC, True, 0x12)]
    recs = assert_same(pkts)
    reasons = sorted(r["end_reason"] for r in recs)
    assert reasons == [3, 4]                           # rst (straggler counted), then end


def test_lifetime_slices_carry_features():
    # packets every 3 s, lifetime 10 s: the packet at 12 s ends the slice 0-9 s (4 packets),
    # the one at 24 s the slice 12-21 s (4), the last slice has 24 and 27 s (2). Counters start
    # again in each slice; the behaviour features go on counting the same window
    pkts = [udp_pkt(k * SEC, False, b"q" * 10) for k in range(0, 30, 3)]
    recs = sorted(assert_same(pkts, lifetime=10.0), key=lambda r: r["first_ms"])
    assert [(r["end_reason"], r["first_ms"], r["last_ms"], r["in_pkts"], r["in_bytes"])
            for r in recs] == [(1, 0, 9000, 4, 4 * 38), (1, 12000, 21000, 4, 4 * 38),
                               (4, 24000, 27000, 2, 2 * 38)]
    assert [r["seq_plen"] for r in recs] == [[4, 0, 0, 0, 0, 0], [8, 0, 0, 0, 0, 0],
                                             [10, 0, 0, 0, 0, 0]]
    assert [r["seq_tdiff"] for r in recs] == [[0] * 5 + [3], [0] * 5 + [7], [0] * 5 + [9]]


@pytest.mark.parametrize("gap_us,flows", [(30_000_000 - 1, 1), (30_000_000, 2)])
def test_idle_expiry_at_exactly_last_plus_idle(gap_us, flows):
    recs = sorted(assert_same([udp_pkt(0, False, b"a"), udp_pkt(gap_us * 1000, False, b"b")]),
                  key=lambda r: r["first_ms"])
    assert [r["end_reason"] for r in recs] == ([4] if flows == 1 else [0, 4])
    assert sum(r["in_pkts"] for r in recs) == 2


@pytest.mark.parametrize("after_ms,same_flow", [(1999, True), (2000, False)])
def test_fin_linger_keeps_stragglers_for_two_seconds(after_ms, same_flow):
    fin = list(HANDSHAKE) + [tcp_pkt(MS, False, 0x11), tcp_pkt(2 * MS, True, 0x11)]
    straggler = tcp_pkt(2 * MS + after_ms * MS, False, 0x10)
    recs = sorted(assert_same(fin + [straggler]), key=lambda r: r["first_ms"])
    if same_flow:                   # the last ACK within the linger counts to the closed flow
        assert [(r["end_reason"], r["in_pkts"], r["out_pkts"]) for r in recs] == [(2, 4, 2)]
    else:                           # exported at last + 2 s; the ACK starts a flow of its own
        assert [(r["end_reason"], r["in_pkts"], r["out_pkts"]) for r in recs] == [
            (2, 3, 2), (4, 1, 0)]


# --- (d) development captures ---------------------------------------------------------------------
CAPTURES = [str(p) for p in corpus_files()]


@pytest.mark.parametrize("path", [pytest.param(str(p), id=p.name) for p in corpus_files()] or [
    pytest.param(None, marks=pytest.mark.skip(reason=NO_SHARED), id="no-development-set")])
def test_capture_matches_reference(path):
    assert_same(capture_packets(path))


def dpkt_frames(path):
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        rd = dpkt.pcapng.Reader(fh) if head == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(fh)
        return [(ts, bytes(buf)) for ts, buf in rd]


# dpkt reads the two length fields of a pcap record the same way in every version; libpcap and
# tshark swap them before version 2.3, as the reader does (tests/test_reader.py)
DPKT_XFAIL = {"fuzz-2021-10-13.pcap": "pcap 2.0: dpkt does not swap the record's lengths"}


@pytest.mark.parametrize("path", [pytest.param(str(p), id=p.name, marks=(
    [pytest.mark.xfail(strict=True, reason=DPKT_XFAIL[p.name])] if p.name in DPKT_XFAIL else []))
    for p in corpus_files()] or [
    pytest.param(None, marks=pytest.mark.skip(reason=NO_SHARED), id="no-development-set")])
def test_capture_reader_agrees_with_dpkt(path):
    """PcapReader and dpkt read the same frames with the same timestamps (to 1 us)."""
    cut = []
    ours = capture_packets(path, cut)
    theirs = dpkt_frames(path)
    if cut[0]:
        # the file ends inside a record: PcapReader leaves the partial record out, dpkt hands
        # over what is there
        assert len(theirs) - len(ours) in (0, 1)
        theirs = theirs[:len(ours)]
    assert len(ours) == len(theirs)
    for (ts_ns, frame, _, _), (ts, buf) in zip(ours, theirs):
        assert frame == buf
        assert abs(ts_ns / 1e9 - float(ts)) < 2e-6


def _frame_pool():
    """A few hundred distinct frames from the captures, for mutation (cached per session)."""
    pool, seen = [], set()
    for path in CAPTURES:
        for ts, frame, wire, lt in capture_packets(path)[:400:7]:
            if (lt, frame[:64]) not in seen:
                seen.add((lt, frame[:64]))
                pool.append((frame, wire, lt))
    return pool


FRAME_POOL = _frame_pool() if CAPTURES else []


@st.composite
def mutated_capture_frames(draw):
    frame, wire, lt = draw(st.sampled_from(FRAME_POOL))
    frame = bytearray(frame)
    for _ in range(draw(st.integers(0, 3))):
        if frame:
            frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        frame = frame[:draw(st.integers(0, len(frame)))]
    return bytes(frame), max(wire, len(frame)), lt


@pytest.mark.skipif(not FRAME_POOL, reason=NO_SHARED)
@SETTINGS
@given(st.lists(mutated_capture_frames(), min_size=1, max_size=8))
def test_mutated_capture_frames_match_reference(frames):
    assert_same([(SEC + k * 3 * MS, f, w, lt) for k, (f, w, lt) in enumerate(frames)])


@st.composite
def many_flows(draw):
    """Hundreds of short UDP/TCP flows through a small table: hash collisions, deletions
    (backward shift), a full table, idle expiry interleaved with creation."""
    n = draw(st.integers(50, 250))
    ts = 3 * SEC
    out = []
    for _ in range(n):
        ts += draw(st.sampled_from([0, 10 * MS, 200 * MS, 700 * MS]))
        host = draw(st.integers(0, 40))
        port = draw(st.integers(1, 6))
        rev = draw(st.booleans())
        a, b = bytes([10, 1, 0, host]), bytes([10, 2, 0, 1])
        if rev:
            a, b = b, a
        if draw(st.booleans()):
            l4 = udp(*((53, port) if rev else (port, 53)), b"x" * draw(st.integers(0, 3)))
            ip = ipv4(a, b, 17, l4)
        else:
            l4 = tcp(*((80, port) if rev else (port, 80)), draw(TCP_FLAGS))
            ip = ipv4(a, b, 6, l4)
        f = eth(ip)
        out.append((ts, f, len(f), 1))
    return out


@settings(SETTINGS, max_examples=max(SETTINGS.max_examples // 4, 1))
@given(many_flows(), st.sampled_from([8, 32, 64]))
def test_many_flows_small_table_match_reference(packets, max_flows):
    assert_same(packets, idle_timeout=2.0, lifetime=5.0, linger=0.5, max_flows=max_flows)
