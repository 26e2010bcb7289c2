"""The generated capture set (tools/gen_cases.py): every link type, encapsulation, tunnel,
fragment rule, malformed packet and capture-file variant flowprobe reads, with no file from
outside the repository.

Each case's sidecar says what the generator put in (written from the packets it built, by
DESIGN.md's counting rules). The fast path, its Python mirror and the CLI's JSON dump must give
exactly those flows and drops; tshark and dpkt, reading the same files, must find in every frame
the link-layer length, the innermost addresses and ports, the time and the wire length the
generator claims, so the sidecar is not our decoder's opinion of itself.
"""
from __future__ import annotations

import collections
import json
import subprocess
import sys

import dpkt
import numpy as np
import pytest

import cases
from conftest import ROOT
from corpus import run_fastpath
from engine import reference
from engine._fastpath import FlowTable
from test_reference import capture_packets, fast_flows

# frames tshark reads otherwise, and why (case -> {frame index: reason})
TSHARK_DIFFERS = {
    # RFC 6275: a mobility header ends the chain (its payload proto must be 59); DESIGN.md
    # walks it as an extension header like the others
    "ipv6ext": {10: "mobility header", 11: "mobility header"},
    "link_unknown": {0: "link type 147 is a user type tshark does not decode"},
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return cases.write(tmp_path_factory.mktemp("cases"))


def test_generator_is_deterministic(generated, tmp_path):
    again = cases.write(tmp_path)
    for name, (path, _) in generated.items():
        assert path.read_bytes() == again[name][0].read_bytes(), name
    assert len(generated) == len(cases.NAMES) >= 26


@pytest.mark.parametrize("name", cases.NAMES)
def test_fast_path_gives_the_generators_flows(generated, name):
    path, exp = generated[name]
    records, stats = run_fastpath(path)
    assert cases.canon(cases.as_sidecar(records)) == cases.canon(exp["flows"])
    assert {k: v for k, v in stats["drops"].items() if v} == exp["drops"]
    assert (stats["packets"], stats["decoded"]) == (exp["packets"], exp["decoded"])


@pytest.mark.parametrize("name", cases.NAMES)
def test_reference_gives_the_generators_flows(generated, name):
    path, exp = generated[name]
    tables: list = []
    flows = reference.reference_flows(capture_packets(str(path)), idle_timeout=1e9,
                                      lifetime=1e9, table=tables)
    recs = np.zeros(len(flows), dtype=FlowTable(max_flows=16).take().dtype)
    for i, f in enumerate(flows):
        for k, v in f.items():
            recs[i][k] = v
    assert cases.canon(cases.as_sidecar(recs)) == cases.canon(exp["flows"])
    assert dict(tables[0].drops) == exp["drops"]


@pytest.mark.tools("tshark")
@pytest.mark.parametrize("name", cases.NAMES)
def test_tshark_reads_what_the_generator_claims(generated, name):
    path, exp = generated[name]
    seen = cases.tshark_frames(path)
    assert len(seen) == exp["packets"]
    differs = TSHARK_DIFFERS.get(name, {})
    mismatched = []
    for i, (claim, frame) in enumerate(zip(exp["frames"], seen)):
        # simple packet blocks carry no time: tshark shows none, flowprobe gives them 0
        assert frame["ts"] == (None if name == "pcapng_simple" else claim["ts"]), (i, frame)
        if "drop" in claim or i in differs:
            continue
        got = (frame["l2"], {frame["src"], frame["dst"]}, frame["wire"],
               frame["ports"] if "ports" in claim else None)
        want = (claim["l2"], {claim["src"], claim["dst"]}, claim["wire"], claim.get("ports"))
        if got != want:
            mismatched.append((i, got, want, frame["protos"]))
    assert not mismatched, mismatched[:3]
    for i in differs:                          # the exceptions are still what they say
        assert "mipv6" in seen[i]["protos"] or name == "link_unknown", seen[i]


def dpkt_inner(frame: bytes):
    """The innermost IP header dpkt finds through Ethernet, VLAN, MPLS, PPPoE, VXLAN and GTP-U,
    and the offset of the outermost one."""
    e = dpkt.ethernet.Ethernet(frame)
    ip = e.data
    if isinstance(ip, dpkt.pppoe.PPPoE):
        ip = ip.data.data
    outer = len(frame) - len(bytes(ip))
    while True:
        l4 = ip.data
        inner = None
        if isinstance(l4, dpkt.udp.UDP) and 4789 in (l4.sport, l4.dport):
            inner = dpkt.ethernet.Ethernet(bytes(l4.data)[8:]).data
        elif isinstance(l4, dpkt.udp.UDP) and 2152 in (l4.sport, l4.dport) and l4.data[1] == 0xFF:
            raw = bytes(l4.data)                      # dpkt has no GTP: its 8 or 12 bytes
            raw = raw[12 if raw[0] & 7 else 8:]
            inner = (dpkt.ip6.IP6 if raw[0] >> 4 == 6 else dpkt.ip.IP)(raw)
        if not isinstance(inner, (dpkt.ip.IP, dpkt.ip6.IP6)):
            return outer, ip
        ip = inner


def test_dpkt_reads_mpls_pppoe_vxlan_and_gtp(generated):
    import ipaddress
    checked = collections.Counter()
    for name in ("l2", "tunnels"):
        path, exp = generated[name]
        with open(path, "rb") as f:
            for (ts, buf), claim in zip(dpkt.pcap.Reader(f), exp["frames"]):
                kind = buf[12:14]
                tunnel = buf[14 + 9] == 17 and {2152, 4789} & {
                    int.from_bytes(buf[34:36], "big"), int.from_bytes(buf[36:38], "big")}
                if kind not in (b"\x88\x47", b"\x88\x64", b"\x81\x00") and not tunnel:
                    continue
                outer, ip = dpkt_inner(buf)
                ends = {str(ipaddress.ip_address(ip.src)), str(ipaddress.ip_address(ip.dst))}
                if ends != {"192.0.2.1", "192.0.2.2"}:      # a tunnel without an IP payload
                    assert ends == {claim["src"], claim["dst"]}, (name, claim)
                    checked[kind.hex() if not tunnel else "udp-tunnel"] += 1
                if not tunnel:
                    assert outer == claim["l2"], (name, claim)
    assert checked == {"8847": 4, "8864": 16, "8100": 4, "udp-tunnel": 10}, checked


def json_key(d: dict) -> tuple:
    v = d["IP_PROTOCOL_VERSION"]
    return (d[f"IPV{v}_SRC_ADDR"], d[f"IPV{v}_DST_ADDR"], d.get("L4_SRC_PORT", 0),
            d.get("L4_DST_PORT", 0), d["PROTOCOL"], d["SRC_VLAN"], d["DOT1Q_SRC_VLAN"],
            d["IN_PKTS"], d["IN_BYTES"], d["OUT_PKTS"], d["OUT_BYTES"],
            d["FLOW_START_MILLISECONDS"], d["FLOW_END_MILLISECONDS"], d["FIRST_SWITCHED"],
            d["LAST_SWITCHED"], d["CLIENT_TCP_FLAGS"], d["SERVER_TCP_FLAGS"], d["SRC_TOS"],
            d["DST_TOS"], d["TUNNEL_TYPE"], d["IN_SRC_MAC"], d["IN_DST_MAC"],
            d.get("ICMP_TYPE", 0), d["SRC_FRAGMENTS"], d["DST_FRAGMENTS"], d["FLOW_END_REASON"])


def sidecar_key(f: dict) -> tuple:
    reason = {"end": 4, "fin": 3, "rst": 3, "idle": 1, "active": 2}[f["end_reason"]]
    return (f["src"], f["dst"], f["src_port"], f["dst_port"], f["protocol"], f["vlan"],
            f["outer_vlan"], f["in_pkts"], f["in_bytes"], f["out_pkts"], f["out_bytes"],
            f["first_ms"], f["last_ms"], f["first_ms"] // 1000, f["last_ms"] // 1000,
            f["client_tcp_flags"], f["server_tcp_flags"], f["src_tos"], f["dst_tos"],
            f["tunnel"], f["src_mac"], f["dst_mac"], f["icmp_type"], f["src_frags"],
            f["dst_frags"], reason)


@pytest.mark.parametrize("name", cases.NAMES)
def test_cli_json_dump_gives_the_generators_flows(generated, name):
    path, exp = generated[name]
    r = subprocess.run([sys.executable, "-m", "engine", "-i", str(path), "--dump-format",
                        "json", "-d", "1000000000", "-t", "1000000000"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = collections.Counter(json_key(json.loads(line)) for line in r.stdout.splitlines())
    assert got == collections.Counter(sidecar_key(f) for f in exp["flows"])
    summary = r.stderr.strip().splitlines()[-1]
    assert f"{exp['packets']} packets" in summary
    for reason, n in exp["drops"].items():
        assert f"{reason}={n}" in summary, (reason, summary)
    if not exp["drops"]:
        assert "drops: none" in summary


def test_fragment_cache_evicts_and_counts():
    """5,000 first fragments, then the later fragment of each: a 4,096-entry cache cannot hold
    them all, so at least 904 later fragments find their first evicted; every one is either
    accounted or counted, never lost."""
    from packets import eth, ipv4, udp
    n = 5000
    body = udp(1000, 2000, bytes(64))
    frames = [eth(ipv4(bytes([10, 9, k >> 8, k & 255]), bytes([10, 8, 0, 1]), 17, body[:40],
                       ident=k, mf=True)) for k in range(n)]
    frames += [eth(ipv4(bytes([10, 9, k >> 8, k & 255]), bytes([10, 8, 0, 1]), 17, body[40:],
                        ident=k, frag_off=40)) for k in range(n)]
    stats: list = []
    flows = fast_flows([(10**18 + k * 1000, f, len(f), 1) for k, f in enumerate(frames)],
                       idle_timeout=1e9, lifetime=1e9, max_flows=16384, stats=stats)
    st = stats[0]
    orphans = st["drops"]["fragment_without_first"]
    joined = sum(f["src_frags"] == 2 for f in flows)
    assert len(flows) == n and joined + orphans == n
    assert orphans >= n - 4096 and joined > 0
    assert st["decoded"] + orphans == 2 * n
