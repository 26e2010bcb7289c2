"""TCP health (docs/DESIGN.md, fast-path semantics): retransmissions, out-of-order segments,
zero windows, the largest window, the handshake and application latencies, against tshark's
``tcp.analysis`` fields: on a capture this test builds (known timestamps, one case of each kind,
so it runs without ../shared) and on every development capture that has TCP.

Where our definition and tshark's differ (DESIGN.md): Wireshark also tracks ACKs, and calls a
segment we count out of order a retransmission when it repeats the sequence number of duplicate
ACKs (fast retransmission) or carries data already acknowledged (spurious retransmission). So
retransmissions plus out-of-order segments must agree, and our out-of-order count may exceed
tshark's by at most its fast and spurious retransmissions; the rest of the rule is the same."""
from __future__ import annotations

import collections
import ipaddress
import subprocess

import pytest

import cases  # noqa: F401  (tools/ on the path)
from conftest import corpus_params, tool
from corpus import run_fastpath
from engine.fields import BY_NAME, field_values, records_to_dicts
from engine.export.templates import NTOPNG_FIELDS
from packets import eth, ipv4, ipv6, pcap_file, tcp, udp

MS = 1_000_000                       # ns
T0 = 1_700_000_000 * 1_000_000_000  # capture start, ns
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
TCP_FIELDS = ("RETRANSMITTED_IN_PKTS", "RETRANSMITTED_OUT_PKTS", "RETRANSMITTED_IN_BYTES",
              "RETRANSMITTED_OUT_BYTES", "OOORDER_IN_PKTS", "OOORDER_OUT_PKTS",
              "ZERO_WINDOW_IN_PKTS", "ZERO_WINDOW_OUT_PKTS", "TCP_WIN_MAX_IN", "TCP_WIN_MAX_OUT",
              "CLIENT_NW_LATENCY_MS", "SERVER_NW_LATENCY_MS", "APPL_LATENCY_MS")


# --- the generated capture ---------------------------------------------------------------------
def _conversation(c, s, v6=False, cport=40000, sport=80):
    """A builder of (ts_ns, frame) for one connection: seg(ms, from_client, flags, seq, ...)."""
    out = []

    def seg(ms, client, flags, seq, payload=b"", ack=0, win=None):
        src, dst = (c, s) if client else (s, c)
        sp, dp = (cport, sport) if client else (sport, cport)
        w = (64240 if client else 29200) if win is None else win
        t = tcp(sp, dp, flags, payload, seq=seq, ack=ack, win=w)
        ip = ipv6(src, dst, 6, t) if v6 else ipv4(src, dst, 6, t)
        out.append((T0 + int(ms * MS), eth(ip, ethertype=0x86DD if v6 else 0x0800)))
    return out, seg


C4, S4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def generated_packets() -> list:
    """Three connections and a UDP flow; EXPECTED says what each must give, by construction."""
    a, seg = _conversation(C4, S4)
    seg(0, 1, SYN, 1000)
    seg(10, 0, SYN | ACK, 5000, ack=1001)                 # server latency (10 - 0) / 2 = 5 ms
    seg(14, 1, ACK, 1001, ack=5001)                       # client latency (14 - 10) / 2 = 2 ms
    seg(20, 1, PSH | ACK, 1001, b"q" * 100, ack=5001)     # the request
    seg(50, 0, ACK, 5001, b"r" * 1000, ack=1101)          # the response: 30 ms after
    seg(51, 0, ACK, 6001, b"r" * 1000, ack=1101)
    seg(52, 0, ACK, 8001, b"r" * 1000, ack=1101)          # 7001..8000 not yet seen
    seg(55, 0, ACK, 7001, b"r" * 1000, ack=1101)          # 3 ms later, < RTT 14 ms: out of order
    seg(60, 1, ACK, 1101, ack=6001, win=0)                # zero window from the client
    seg(100, 0, ACK, 8001, b"r" * 1000, ack=1101)         # 48 ms later: a retransmission
    seg(300, 1, ACK, 1101, ack=9001, win=65535)
    seg(310, 1, PSH | ACK, 1101, b"x" * 50, ack=9001)
    seg(320, 1, PSH | ACK, 1101, b"x" * 50, ack=9001)     # ends where nxt is: a retransmission
    seg(330, 1, ACK, 1150, b"k", ack=9001)                # keep-alive: neither
    seg(400, 1, FIN | ACK, 1151, ack=9001)
    seg(401, 0, FIN | ACK, 9001, ack=1152)
    seg(402, 1, ACK, 1152, ack=9002)
    seg(900, 1, FIN | ACK, 1151, ack=9002)                # the FIN again: a retransmission

    b, seg = _conversation(C4, S4, cport=40001)
    seg(0, 1, SYN, 70000)
    seg(1000, 1, SYN, 70000)                              # retransmitted SYN
    seg(1020, 0, SYN | ACK, 9000, ack=70001)              # 20 ms after the latest SYN: 10 ms
    seg(1026, 1, ACK, 70001, ack=9001)                    # client 3 ms
    seg(1030, 1, PSH | ACK, 70001, b"GET", ack=9001)
    seg(1031, 0, ACK, 9001, ack=70004)                    # an ACK is no response
    seg(1042, 0, PSH | ACK, 9001, b"200 OK", ack=70004)   # 12 ms

    C6, S6 = b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02"
    c, seg = _conversation(C6, S6, v6=True, sport=25)
    seg(0, 1, SYN, 1)
    seg(4, 0, SYN | ACK, 1, ack=2)                        # 2 ms
    seg(5, 1, ACK, 2, ack=2)                              # 0.5 ms: rounds to 1 ms (half up)
    seg(10, 0, PSH | ACK, 2, b"220 smtp ready\r\n", ack=2)  # a greeting is no response
    seg(30, 1, PSH | ACK, 2, b"EHLO x\r\n", ack=18)
    seg(55, 0, PSH | ACK, 18, b"250 hi\r\n", ack=10)      # 25 ms
    seg(56, 0, ACK, 26, ack=10, win=0)                    # zero window from the server
    seg(57, 0, RST, 26, win=0)                            # RST with window 0: no zero window

    d = [(T0 + k * MS, eth(ipv4(C4, S4, 17, udp(5000, 53, b"dns")))) for k in range(3)]
    return sorted(a + b + c + d, key=lambda p: p[0])


# (client port): the expected fields, from the construction above
EXPECTED = {
    40000: dict(RETRANSMITTED_IN_PKTS=2, RETRANSMITTED_OUT_PKTS=1, RETRANSMITTED_IN_BYTES=2 * 40 + 50,
                RETRANSMITTED_OUT_BYTES=1040, OOORDER_IN_PKTS=0, OOORDER_OUT_PKTS=1,
                ZERO_WINDOW_IN_PKTS=1, ZERO_WINDOW_OUT_PKTS=0, TCP_WIN_MAX_IN=65535,
                TCP_WIN_MAX_OUT=29200, CLIENT_NW_LATENCY_MS=2, SERVER_NW_LATENCY_MS=5,
                APPL_LATENCY_MS=30),
    40001: dict(RETRANSMITTED_IN_PKTS=1, RETRANSMITTED_OUT_PKTS=0, RETRANSMITTED_IN_BYTES=40,
                RETRANSMITTED_OUT_BYTES=0, OOORDER_IN_PKTS=0, OOORDER_OUT_PKTS=0,
                ZERO_WINDOW_IN_PKTS=0, ZERO_WINDOW_OUT_PKTS=0, TCP_WIN_MAX_IN=64240,
                TCP_WIN_MAX_OUT=29200, CLIENT_NW_LATENCY_MS=3, SERVER_NW_LATENCY_MS=10,
                APPL_LATENCY_MS=12),
    25: dict(RETRANSMITTED_IN_PKTS=0, RETRANSMITTED_OUT_PKTS=0, RETRANSMITTED_IN_BYTES=0,
             RETRANSMITTED_OUT_BYTES=0, OOORDER_IN_PKTS=0, OOORDER_OUT_PKTS=0,
             ZERO_WINDOW_IN_PKTS=0, ZERO_WINDOW_OUT_PKTS=1, TCP_WIN_MAX_IN=64240,
             TCP_WIN_MAX_OUT=29200, CLIENT_NW_LATENCY_MS=1, SERVER_NW_LATENCY_MS=2,
             APPL_LATENCY_MS=25),
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    path = tmp_path_factory.mktemp("tcp") / "tcp_health.pcap"
    path.write_bytes(pcap_file([(ts, f, len(f)) for ts, f in generated_packets()]))
    return path


def _flows_by_port(records) -> dict:
    out = {}
    for rec, d in zip(records, records_to_dicts(records, ("L4_SRC_PORT", "L4_DST_PORT",
                                                            "PROTOCOL") + TCP_FIELDS)):
        out[d["L4_DST_PORT"] if d["L4_DST_PORT"] == 25 else d["L4_SRC_PORT"]] = d
    return out


def test_generated_capture_gives_the_constructed_values(generated):
    recs, _ = run_fastpath(generated)
    flows = _flows_by_port(recs)
    for port, want in EXPECTED.items():
        assert {k: flows[port][k] for k in want} == want, port
    # the fields apply to TCP flows only: a UDP flow has none of them
    udp_flow = flows[5000]
    assert not any(k in udp_flow for k in TCP_FIELDS)
    assert all(v is None for v in field_values(BY_NAME["RETRANSMITTED_IN_PKTS"],
                                               recs[recs["protocol"] == 17]))


def test_ntopng_template_carries_what_ntopng_reads():
    for name in ("RETRANSMITTED_IN_PKTS", "RETRANSMITTED_OUT_PKTS", "OOORDER_IN_PKTS",
                 "OOORDER_OUT_PKTS", "CLIENT_NW_LATENCY_MS", "SERVER_NW_LATENCY_MS",
                 "APPL_LATENCY_MS", "TCP_WIN_MAX_IN", "TCP_WIN_MAX_OUT"):
        assert name in NTOPNG_FIELDS
    # ids as in ../shared/docs/ntopng-zmq-protocol.md §7.3 and nProbe's element list
    ids = {"RETRANSMITTED_IN_PKTS": 57581, "RETRANSMITTED_OUT_PKTS": 57582,
           "OOORDER_IN_PKTS": 57583, "OOORDER_OUT_PKTS": 57584, "CLIENT_NW_LATENCY_MS": 57595,
           "SERVER_NW_LATENCY_MS": 57596, "APPL_LATENCY_MS": 57597,
           "RETRANSMITTED_IN_BYTES": 57599, "RETRANSMITTED_OUT_BYTES": 57600,
           "TCP_WIN_MAX_IN": 57888, "TCP_WIN_MAX_OUT": 57892}
    assert {n: BY_NAME[n].v9 for n in ids} == ids


# --- tshark ------------------------------------------------------------------------------------
TSHARK_FIELDS = ("frame.time_epoch", "ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst",
                 "tcp.dstport", "tcp.len", "tcp.flags", "tcp.window_size_value",
                 "tcp.analysis.retransmission", "tcp.analysis.out_of_order",
                 "tcp.analysis.zero_window", "tcp.analysis.fast_retransmission",
                 "tcp.analysis.spurious_retransmission",
                 "tcp.analysis.ack_rtt", "tcp.analysis.initial_rtt")


def tshark_tcp(path) -> dict:
    """Per connection (client, server endpoints, as the first SYN or first packet says), what
    tshark's tcp.analysis says of each direction, and the handshake and request/response times
    from its frame times. Frames with an IP fragment or an ICMP error around the segment are left
    out (they are not the flow's segments to us either), and so are frames with both an IPv4
    and an IPv6 header (tunnels: -T fields cannot say which one is inside)."""
    out = subprocess.run(
        [tool("tshark"), "-n", "-r", str(path), "-Y", "tcp && !icmp && !icmpv6 && !(ip.flags.mf == 1) "
         "&& !(ip.frag_offset > 0)", "-T", "fields", "-E", "occurrence=l",
         "-E", "separator=\t"] + [a for f in TSHARK_FIELDS for a in ("-e", f)],
        capture_output=True, text=True, timeout=300).stdout
    conns: dict = {}
    for line in out.splitlines():
        v = dict(zip(TSHARK_FIELDS, line.split("\t")))
        if (v["ip.src"] and v["ipv6.src"]) or not v["tcp.srcport"] or not v["tcp.flags"]:
            continue                         # a tunnel, or a header cut short
        src, dst = v["ip.src"] or v["ipv6.src"], v["ip.dst"] or v["ipv6.dst"]
        a = (str(ipaddress.ip_address(src)), int(v["tcp.srcport"]))
        b = (str(ipaddress.ip_address(dst)), int(v["tcp.dstport"]))
        flags = int(v["tcp.flags"], 16)
        key = frozenset((a, b))
        c = conns.get(key)
        if c is None:
            client = b if flags & (SYN | ACK) == SYN | ACK else a
            c = conns[key] = {"client": client, "retr": [0, 0], "ooo": [0, 0], "zero": [0, 0],
                              "fast": [0, 0], "win": [0, 0], "synack": False, "ack_rtt": None,
                              "irtt": None,
                              "request": None, "appl": None}
        d = 0 if a == c["client"] else 1
        c["retr"][d] += bool(v["tcp.analysis.retransmission"])
        c["fast"][d] += bool(v["tcp.analysis.fast_retransmission"] or
                             v["tcp.analysis.spurious_retransmission"])
        c["ooo"][d] += bool(v["tcp.analysis.out_of_order"])
        c["zero"][d] += bool(v["tcp.analysis.zero_window"])
        c["win"][d] = max(c["win"][d], int(v["tcp.window_size_value"] or 0))
        # the handshake: tshark's initial RTT (the latest SYN to the client's ACK) and the RTT
        # of that ACK (from the SYN-ACK it acknowledges)
        if flags & (SYN | ACK) == SYN | ACK and d == 1:
            c["synack"] = True
        elif (flags & (SYN | ACK) == ACK and d == 0 and c["synack"] and c["ack_rtt"] is None
              and v["tcp.analysis.ack_rtt"]):
            c["ack_rtt"] = float(v["tcp.analysis.ack_rtt"])
        if v["tcp.analysis.initial_rtt"] and c["irtt"] is None:
            c["irtt"] = float(v["tcp.analysis.initial_rtt"])
        t, n = float(v["frame.time_epoch"]), int(v["tcp.len"] or 0)
        if n and not flags & SYN:
            if d == 0 and c["request"] is None:
                c["request"] = t
            elif d == 1 and c["request"] is not None and c["appl"] is None:
                c["appl"] = t - c["request"]
    return conns


def ours_by_connection(records) -> dict:
    out = {}
    for r in records[records["protocol"] == 6]:
        n = 4 if r["ip_version"] == 4 else 16
        a = (str(ipaddress.ip_address(bytes(r["src_addr"][:n]))), int(r["src_port"]))
        b = (str(ipaddress.ip_address(bytes(r["dst_addr"][:n]))), int(r["dst_port"]))
        out.setdefault(frozenset((a, b)), []).append((a, r))
    return out


def compare(path) -> dict:
    """Our flows against tshark's connections, summed over every connection of a capture whose
    endpoints are one flow of ours (one VLAN, no port reuse): counts of each kind, and how many
    connections agree exactly / within 1 ms."""
    recs, _ = run_fastpath(path)
    theirs, ours = tshark_tcp(path), ours_by_connection(recs)
    tally = collections.Counter()
    for key, c in theirs.items():
        if len(ours.get(key, ())) != 1:
            continue
        client, r = ours[key][0]
        if client != c["client"]:
            continue
        tally["connections"] += 1
        for d, side in ((0, "c2s"), (1, "s2c")):
            tally["tshark_retr"] += c["retr"][d]
            tally["tshark_fast"] += c["fast"][d]
            tally["tshark_ooo"] += c["ooo"][d]
            tally["ours_retr"] += int(r["retr_pkts_" + side])
            tally["ours_ooo"] += int(r["ooo_pkts_" + side])
            # retransmissions and out-of-order segments together: what differs is the split
            tally["moved"] += abs(int(r["retr_pkts_" + side]) + int(r["ooo_pkts_" + side])
                                  - c["retr"][d] - c["ooo"][d])
            tally["zero_diff"] += abs(int(r["zero_win_" + side]) - c["zero"][d])
            tally["win_diff"] += int(r["win_max_" + side]) != c["win"][d]
        if c["ack_rtt"] is not None and c["irtt"] is not None:
            tally["handshakes"] += 1
            cli = c["ack_rtt"] * 1000 / 2
            srv = (c["irtt"] - c["ack_rtt"]) * 1000 / 2
            tally["latency_off"] += (abs(int(r["server_nw_latency_ms"]) - srv) > 0.5 + 1e-6 or
                                     abs(int(r["client_nw_latency_ms"]) - cli) > 0.5 + 1e-6)
        if c["appl"] is not None:
            tally["appl"] += 1
            tally["appl_off"] += abs(int(r["appl_latency_ms"]) - c["appl"] * 1000) > 0.5 + 1e-6
    return tally


@pytest.mark.tools("tshark")
def test_generated_capture_against_tshark(generated):
    t = compare(generated)
    assert t["connections"] == 3 and t["handshakes"] == 3 and t["appl"] == 3
    assert t["ours_retr"] == t["tshark_retr"] == 4 and t["ours_ooo"] == t["tshark_ooo"] == 1
    assert t["zero_diff"] == t["win_diff"] == t["latency_off"] == t["appl_off"] == 0


@pytest.mark.tools("tshark")
@pytest.mark.parametrize("path", corpus_params(), ids=lambda p: p.name if p else "none")
def test_development_captures_against_tshark(path):
    t = compare(path)
    # the same rule: zero windows, largest windows and the latencies agree exactly (within the
    # rounding to ms); retransmissions and out-of-order segments differ by no more than the
    # segments tshark judged by ACKs (fast and spurious retransmissions; a spurious one can be
    # data never seen, which advances our sequence numbers)
    assert t["zero_diff"] == 0 and t["win_diff"] == 0 and t["latency_off"] == 0, dict(t)
    assert t["appl_off"] == 0, dict(t)
    assert t["moved"] <= t["tshark_fast"], dict(t)
    assert abs(t["ours_ooo"] - t["tshark_ooo"]) <= t["tshark_fast"], dict(t)
    assert abs(t["ours_retr"] - t["tshark_retr"]) <= t["tshark_fast"], dict(t)


def test_slices_split_the_counters_and_keep_the_latencies(generated):
    """With a 200 ms lifetime the first connection is cut into slices: the counters of its slices
    add up to the whole connection's, every slice carries the handshake latencies."""
    whole = _flows_by_port(run_fastpath(generated)[0])[40000]
    recs, _ = run_fastpath(generated, lifetime=0.2)
    first = recs[(recs["src_port"] == 40000) & (recs["ip_version"] == 4)]
    assert len(first) >= 3
    for name in ("RETRANSMITTED_IN_PKTS", "RETRANSMITTED_OUT_PKTS", "RETRANSMITTED_IN_BYTES",
                 "OOORDER_OUT_PKTS", "ZERO_WINDOW_IN_PKTS"):
        assert sum(field_values(BY_NAME[name], first)) == whole[name], name
    for name in ("CLIENT_NW_LATENCY_MS", "SERVER_NW_LATENCY_MS"):
        assert set(field_values(BY_NAME[name], first)) == {whole[name]}, name


def test_reference_twin_agrees(generated):
    """engine/reference.py, written from DESIGN.md, gives the same records on this capture."""
    from test_reference import assert_same
    from corpus import capture_packets
    assert_same(capture_packets(generated))
    assert_same(capture_packets(generated), lifetime=0.2)


@pytest.mark.parametrize("version", [9, 10])
def test_over_netflow_and_back_through_the_collector(generated, version):
    """The fields with ids go out in NetFlow v9/IPFIX (nProbe's ids) and come back into the same
    columns through the collector, as an nProbe's export would."""
    import socket
    from engine.collect.collector import Collector
    from engine.export.netflow import NetFlowExporter
    from engine.export.templates import parse_template
    recs, _ = run_fastpath(generated)
    recs = recs[recs["protocol"] == 6]
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    with_ids = [n for n in TCP_FIELDS if BY_NAME[n].v9 is not None]
    tmpl = parse_template("@NTOPNG@ " + " ".join("%" + n for n in with_ids))
    exp = NetFlowExporter([(f"127.0.0.1:{port}", ("127.0.0.1", port), socket.AF_INET)],
                          version=version, template=tmpl)
    exp.export(recs)
    exp.close()
    data = rx.recv(65535)
    rx.close()
    got = Collector(mode="passthrough").feed([(data, "127.0.0.1", 0.0)])
    assert len(got) == len(recs) == 3
    cols = ["src_port", "dst_port"] + [BY_NAME[n].column for n in with_ids]
    assert sorted(got[cols].tolist()) == sorted(recs[cols].tolist())
    assert got["retr_pkts_c2s"].any() and got["appl_latency_ms"].all()


def test_json_dump_carries_them_by_name(generated):
    """flowprobe's JSON dump (the default fields) names them, on TCP flows only."""
    import json
    import sys
    from conftest import ROOT
    out = subprocess.run([sys.executable, "-m", "engine", "-i", str(generated), "--dump-format",
                          "json"], capture_output=True, text=True, timeout=120, cwd=ROOT).stdout
    flows = {(f["L4_SRC_PORT"], f["L4_DST_PORT"]): f for f in map(json.loads, out.splitlines())}
    for (sport, dport), port in (((40000, 80), 40000), ((40001, 80), 40001), ((40000, 25), 25)):
        assert {k: flows[(sport, dport)][k] for k in EXPECTED[port]} == EXPECTED[port]
    assert not set(TCP_FIELDS) & set(flows[(5000, 53)])
