"""-n HOST:PORT: NetFlow v5, v9 and IPFIX export, read back by real collectors (nfdump's nfcapd,
tshark) and by our own header checks (sequence numbers, MTU, round robin, templates)."""
import datetime
import ipaddress
import os
import json
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from conftest import PCAPS, ROOT, tcp_peers, tool, udp_queue, wait_until
from recorded import datagram_pcap, receive_all
from test_collect_live import udp_bound

VERSIONS = (5, 9, 10)


def pcap(name):
    p = PCAPS / name
    if not p.exists():
        pytest.skip(f"{p} not found")
    return str(p)


@pytest.fixture(scope="module")
def capture(traffic):
    """The capture most tests export: tools/gen_pcap.py's mixed one (path text)."""
    return str(traffic[0])




def flowprobe(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A UDP socket on loopback that keeps every datagram."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"

    def drain(self):
        """Every datagram sent to it; the sender has finished (on loopback they are all queued
        by then, and none was dropped)."""
        assert udp_queue(self.port)[1] == 0, "the receiver's socket dropped datagrams"
        out = receive_all(self.sock)
        self.sock.close()
        return out


def expected_flows(path, *extra):
    """What flowprobe exports for a capture: its own JSON dump of the same run."""
    r = flowprobe("-i", path, "--dump-format", "json", *extra)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def flow_key(d):
    v = d["IP_PROTOCOL_VERSION"]
    src = d.get("IPV4_SRC_ADDR") if v == 4 else d.get("IPV6_SRC_ADDR")
    dst = d.get("IPV4_DST_ADDR") if v == 4 else d.get("IPV6_DST_ADDR")
    return str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst))


# --- nfdump: every field, record for record ------------------------------------------------
NFDUMP_FIELDS = ("ts", "te", "sa", "da", "sp", "dp", "pr", "flg", "stos", "dtos", "ipkt", "ibyt",
                 "opkt", "obyt", "svln", "dvln", "ismc", "idmc")
FLAG_LETTERS = "CEUAPRSF"                 # nfdump's flag string, 0x80 first
L4_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMP6", 132: "SCTP", 47: "GRE", 50: "ESP"}
NO_MAC = "00:00:00:00:00:00"


def nfcapd_collect(tmp_path, port, run):
    """nfcapd on ``port`` while ``run()`` sends to it; (nfdump's records, run's result). Each
    record: NFDUMP_FIELDS, times as epoch milliseconds."""
    d = tmp_path / f"nf{port}"
    d.mkdir()
    log = open(tmp_path / f"nfcapd{port}.log", "w+")
    p = subprocess.Popen([tool("nfcapd"), "-w", str(d), "-p", str(port), "-b", "127.0.0.1",
                          "-t", "3600", "-B", "8000000"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: udp_bound(port), what=f"nfcapd listening on UDP {port}")
        result = run()
        # the sender has exited, so every datagram is in nfcapd's socket queue (loopback) or
        # counted as dropped there: nfcapd has read them all once the queue is empty
        wait_until(lambda: udp_queue(port) == (0, 0), what="nfcapd reading every datagram")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)
    out = subprocess.run([tool("nfdump"), "-6", "-R", str(d), "-q", "-o",
                          "fmt:" + "|".join("%" + f for f in NFDUMP_FIELDS)],
                         capture_output=True, text=True, timeout=30, env={**os.environ,
                                                                          "TZ": "UTC"})
    assert out.returncode == 0, out.stderr
    rows = []
    for line in out.stdout.splitlines():
        c = [x.strip() for x in line.split("|")]
        if len(c) != len(NFDUMP_FIELDS):
            continue
        r = dict(zip(NFDUMP_FIELDS, c))
        for t in ("ts", "te"):
            dt = datetime.datetime.strptime(r[t], "%Y-%m-%d %H:%M:%S.%f").replace(
                tzinfo=datetime.timezone.utc)
            r[t] = int(dt.timestamp() * 1000 + 0.5)
        for k in ("ipkt", "ibyt", "opkt", "obyt", "stos", "dtos", "svln", "dvln"):
            r[k] = int(r[k])
        r["sa"], r["da"] = (str(ipaddress.ip_address(r[k])) for k in ("sa", "da"))
        rows.append(tuple(r[k] for k in NFDUMP_FIELDS))
    return sorted(rows), result


def flags_text(flags: int) -> str:
    return "".join(ch if flags & (0x80 >> i) else "." for i, ch in enumerate(FLAG_LETTERS))


def nfdump_rows(flows, version):
    """The records nfdump must show for what flowprobe dumped (its JSON, the same run's flows):
    v5 one record a direction (no VLAN, no MACs, one ToS and the flags of that direction), v9 and
    IPFIX one biflow record (the OR of both directions' flags)."""
    rows = []
    for d in flows:
        v = d["IP_PROTOCOL_VERSION"]
        if version == 5 and v != 4:
            continue
        sa, da = (str(ipaddress.ip_address(d[f"IPV{v}_{k}_ADDR"])) for k in ("SRC", "DST"))
        sp, dp, pr = d.get("L4_SRC_PORT", 0), d.get("L4_DST_PORT", 0), d["PROTOCOL"]
        if pr in (1, 58):                      # nfdump shows ICMP as type.code in dp
            sp, dp = 0, d["ICMP_TYPE"]
        if version == 5:
            ts, te = d["FLOW_START_MILLISECONDS"], d["FLOW_END_MILLISECONDS"]
            rows.append((ts, te, sa, da, sp, dp, pr, d["CLIENT_TCP_FLAGS"], d["SRC_TOS"], 0,
                         d["IN_PKTS"], d["IN_BYTES"], 0, 0, 0, 0, NO_MAC, NO_MAC))
            if d["OUT_PKTS"]:
                rows.append((ts, te, da, sa, 0 if pr in (1, 58) else dp,
                             dp if pr in (1, 58) else sp, pr, d["SERVER_TCP_FLAGS"],
                             d["DST_TOS"], 0, d["OUT_PKTS"], d["OUT_BYTES"], 0, 0, 0, 0,
                             NO_MAC, NO_MAC))
        else:
            # the template has SRC_VLAN (58) and dot1qVlanId (243: the outer tag, or the only
            # one); nfdump keeps 243 from v9 and 58 from IPFIX
            vlan = d["DOT1Q_SRC_VLAN"] or d["SRC_VLAN"] if version == 9 else d["SRC_VLAN"]
            rows.append((d["FLOW_START_MILLISECONDS"], d["FLOW_END_MILLISECONDS"], sa, da, sp,
                         dp, pr, d["CLIENT_TCP_FLAGS"] | d["SERVER_TCP_FLAGS"], d["SRC_TOS"],
                         d["DST_TOS"], d["IN_PKTS"], d["IN_BYTES"], d["OUT_PKTS"],
                         d["OUT_BYTES"], vlan, 0, d["IN_SRC_MAC"], d["IN_DST_MAC"]))
    out = []
    for r in rows:
        pr = r[6]
        dp = f"{r[5] >> 8}.{r[5] & 255}" if pr in (1, 58) else str(r[5])
        out.append((*r[:4], str(r[4]), dp, L4_NAMES.get(pr, str(pr)), flags_text(r[7]), *r[8:]))
    return sorted(out)


def export_matches_nfdump(tmp_path, path, version):
    flows = expected_flows(path)
    port = free_udp_port()
    got, r = nfcapd_collect(tmp_path, port, lambda: flowprobe(
        "-i", path, "-n", f"127.0.0.1:{port}", "-V", str(version)))
    assert r.returncode == 0, r.stderr
    want = nfdump_rows(flows, version)
    assert len(got) == len(want) and (want or version == 5)    # v5: no IPv6
    wrong = [(g, w) for g, w in zip(got, want) if g != w]
    assert not wrong, f"{len(wrong)} of {len(want)} records differ; first (nfdump, ours): " \
                      f"{wrong[0]}"
    return got


@pytest.mark.tools("nfcapd", "nfdump")
@pytest.mark.parametrize("version", VERSIONS)
def test_nfdump_reads_every_field_of_a_capture_spanning_years(tmp_path, version, generated):
    """tools/gen_cases.py's span case: flows in 2016 and in 2022 (as 1kxun.pcap), VLANs, IPv6,
    ToS, TCP flags, ICMP. v5/v9 times are 32-bit uptime milliseconds: every datagram needs a base
    its flows fit."""
    got = export_matches_nfdump(tmp_path, str(generated["span"][0]), version)
    years = {datetime.datetime.fromtimestamp(r[0] / 1000, datetime.timezone.utc).year
             for r in got}
    assert years == {2016, 2022}


@pytest.mark.tools("nfcapd", "nfdump")
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["1kxun.pcap", "vxlan.pcap", "4in4tunnel.pcap",
                                  "http_ipv6.pcap", "6in6tunnel.pcap", "syslog.pcap"])
def test_nfdump_reads_every_field_we_sent(tmp_path, version, name):
    export_matches_nfdump(tmp_path, pcap(name), version)


def test_a_flow_longer_than_the_uptime_clock_is_counted_not_sent():
    import numpy as np
    from engine.export.netflow import NetFlowExporter
    from engine.fields import RECORD_DTYPE
    for version in (5, 9):
        rx = Receiver()
        e = NetFlowExporter([(rx.target, ("127.0.0.1", rx.port), socket.AF_INET)],
                            version=version)
        rec = np.zeros(3, dtype=RECORD_DTYPE)
        rec["ip_version"] = 4
        rec["in_pkts"] = 1
        rec["first_ms"] = [1_470_000_000_000, 1_470_000_000_000, 1_660_000_000_000]
        rec["last_ms"] = [1_470_000_001_000, 1_660_000_000_000, 1_660_000_001_000]   # 6 years
        e.export(rec)
        e.close()
        st = e.stats()
        assert st["netflow_times_not_representable"] == st["netflow_conversion_drops"] == 1
        grams = rx.drain()
        assert len(grams) == 2 + (version == 9) * 0            # one datagram a base
        assert st["netflow_records"] == 2


# --- tshark ----------------------------------------------------------------------------------
@pytest.mark.tools("tshark")
@pytest.mark.parametrize("version", VERSIONS)
def test_tshark_dissects_every_datagram(tmp_path, version, capture):
    rx = Receiver()
    r = flowprobe("-i", capture, "-n", rx.target, "-V", str(version),
                  "-T", "@NTOPNG@ %ICMP_TYPE %FLOW_END_REASON %ENTROPY_CLIENT_BYTES %SEQ_PLEN")
    assert r.returncode == 0, r.stderr
    grams = rx.drain()
    assert grams
    f = tmp_path / "export.pcap"
    datagram_pcap(f, grams, 2055)
    base = [tool("tshark"), "-n", "-r", str(f), "-d", "udp.port==2055,cflow"]
    bad = subprocess.run(base + ["-Y", "_ws.malformed || _ws.expert.severity >= warning"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 0, bad.stderr
    assert bad.stdout.strip() == ""
    ok = subprocess.run(base + ["-Y", "cflow", "-T", "fields", "-e", "cflow.version"],
                        capture_output=True, text=True, timeout=60)
    assert ok.stdout.split() == [str(version)] * len(grams)
    if version != 5:      # the vector is skipped, said once
        assert r.stderr.count("not exportable") == 1 and "SEQ_PLEN" in r.stderr


# --- headers: sequence numbers, MTU, templates, destinations ---------------------------------
def ipfix_sets(d, version):
    """[(set id, body)] of one v9/IPFIX datagram."""
    off = 20 if version == 9 else 16
    out = []
    while off + 4 <= len(d):
        sid, length = struct.unpack_from(">HH", d, off)
        assert length >= 4 and off + length <= len(d)
        out.append((sid, d[off + 4:off + length]))
        off += length
    assert off == len(d)
    return out


def template_lengths(grams, version):
    lengths = {}
    for d in grams:
        for sid, body in ipfix_sets(d, version):
            if sid not in (0, 2):
                continue
            off = 0
            while off + 4 <= len(body):
                tid, n = struct.unpack_from(">HH", body, off)
                off += 4
                total = 0
                for _ in range(n):
                    fid, flen = struct.unpack_from(">HH", body, off)
                    off += 8 if (version == 10 and fid & 0x8000) else 4
                    total += flen
                lengths[tid] = total
    return lengths


@pytest.mark.parametrize("version", VERSIONS)
def test_sequence_numbers_mtu_and_engine(version, capture):
    rx = Receiver()
    r = flowprobe("-i", capture, "-n", rx.target, "-V", str(version), "--mtu", "600",
                  "-E", "3:7", "-U", "300")
    assert r.returncode == 0, r.stderr
    grams = rx.drain()
    assert len(grams) > 3
    assert all(len(g) <= 600 - 28 for g in grams)
    if version == 5:
        seq = 0
        for g in grams:
            ver, count, _, _, _, s, etype, eid, _ = struct.unpack_from(">HHIIIIBBH", g)
            assert (ver, etype, eid) == (5, 3, 7) and len(g) == 24 + 48 * count
            assert s == seq
            seq += count
        return
    lengths = template_lengths(grams[:1], version)      # templates come first
    assert set(lengths) == {300, 301}
    seq = 0
    for i, g in enumerate(grams):
        if version == 9:
            ver, count, _, _, s, src = struct.unpack_from(">HHIIII", g)
            assert (ver, src, s) == (9, 7, i)
        else:
            ver, length, _, s, dom = struct.unpack_from(">HHIII", g)
            assert (ver, length, dom, s) == (10, len(g), 7, seq)
        records = sum(len(body) // lengths[sid] for sid, body in ipfix_sets(g, version)
                      if sid >= 256)
        if version == 9:
            tsets = sum(1 for sid, _ in ipfix_sets(g, version) if sid == 0)
            assert count == records + (2 if tsets else 0)
        seq += records
    assert seq == len(expected_flows(capture))


def test_round_robin_and_all(capture):
    a, b = Receiver(), Receiver()
    r = flowprobe("-i", capture, "-n", a.target, "-n", b.target, "-V", "9")
    assert r.returncode == 0, r.stderr
    ga, gb = a.drain(), b.drain()
    assert ga and gb and abs(len(ga) - len(gb)) <= 1
    for grams in (ga, gb):           # each collector gets templates first and its own sequence
        assert any(sid == 0 for sid, _ in ipfix_sets(grams[0], 9))
        assert [struct.unpack_from(">I", g, 12)[0] for g in grams] == list(range(len(grams)))
    a, b = Receiver(), Receiver()
    r = flowprobe("-i", capture, "-n", a.target, "-n", b.target, "-V", "10", "-a")
    assert r.returncode == 0, r.stderr
    ga, gb = a.drain(), b.drain()
    assert len(ga) == len(gb) > 0 and [g[16:] for g in ga] == [g[16:] for g in gb]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("all_destinations", [False, True])
def test_datagrams_built_in_c_equal_the_python_ones(version, all_destinations, capture):
    """Full datagrams go out through _encode.send_datagrams (sendmmsg); with c_send=False every
    datagram is built by the Python reference: the bytes must be the same, and so the counters."""
    from engine.probe import capture_records
    from engine.export.netflow import NetFlowExporter
    records, _ = capture_records(capture)
    sent = {}
    for c_send in (True, False):
        rx = [Receiver() for _ in range(2 if all_destinations else 1)]
        e = NetFlowExporter([(r.target, ("127.0.0.1", r.port), socket.AF_INET) for r in rx],
                            version=version, mtu=700, all_destinations=all_destinations,
                            c_send=c_send)
        assert e.c_send == c_send
        for k in range(0, len(records), 100):   # several calls, so remainders carry over
            e.export(records[k:k + 100])
        e.close()
        sent[c_send] = ([r.drain() for r in rx], e.stats())
    (c_grams, c_stats), (py_grams, py_stats) = sent[True], sent[False]
    assert c_stats == py_stats and c_stats["netflow_datagrams"] == sum(map(len, c_grams)) > 10
    for c, py in zip(c_grams, py_grams):
        assert len(c) == len(py)
        # v9/IPFIX headers carry the export time, the same in both runs; their bytes must match
        assert c == py


def test_refused_datagrams_are_counted():
    """A datagram the kernel refuses (here: an address of the wrong family for the socket)
    is counted per datagram by the C sender, as one failed sendto(2) each would be."""
    from engine.export._encode import send_datagrams
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v6 = struct.pack("=H", socket.AF_INET6) + struct.pack(">HI", 9, 0) + bytes(16) + bytes(4)
    try:
        assert send_datagrams(9, bytes(50 * 10), 10, 7, 256, 0, 0, 0, 0, s.fileno(), v6, 0) \
            == (0, 8, 8)
    finally:
        s.close()


def test_template_refresh_in_process():
    import numpy as np
    from engine.export.netflow import NetFlowExporter
    from engine.fields import RECORD_DTYPE
    rx = Receiver()
    e = NetFlowExporter([(rx.target, ("127.0.0.1", rx.port), socket.AF_INET)], version=10,
                        template_refresh=0.2)
    rec = np.zeros(2, dtype=RECORD_DTYPE)
    rec["ip_version"] = 4
    rec["first_ms"] = rec["last_ms"] = 1_700_000_000_000
    rec["in_pkts"] = 1
    e.export(rec)
    e.tick({})
    time.sleep(0.3)
    e.tick({})                       # no flows: the template set alone, again
    e.close()
    grams = rx.drain()
    assert [[sid for sid, _ in ipfix_sets(g, 10)] for g in grams] == [[2, 256 + 1], [2]]
    assert e.stats()["netflow_records"] == 2


@pytest.mark.parametrize("value,needle", [
    ("localhost", "expected HOST:PORT"), ("127.0.0.1:0", "port must be"),
    ("127.0.0.1:http", "port must be"), ("no-such-host.invalid:2055", "cannot resolve")])
def test_bad_collector_one_line(value, needle, capture):
    r = flowprobe("-i", capture, "-n", value)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [(["-V", "7"], "-V 7"), (["--mtu", "100"], "--mtu"),
                                         (["-U", "12"], "-U 12"), (["-E", "x:y"], "-E")])
def test_bad_options_one_line(args, needle, capture):
    r = flowprobe("-i", capture, "-n", "127.0.0.1:9", *args)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_none_still_means_no_export(capture):
    r = flowprobe("-i", capture, "-n", "none")
    assert r.returncode == 0 and r.stdout == ""


# --- flowrelay -------------------------------------------------------------------------------
def test_relay_classifies_our_exports_and_rejects_garbage(capture):
    from engine.apps.flowrelay import classify
    want = {5: "netflow5", 9: "netflow9", 10: "ipfix"}
    for version in VERSIONS:
        rx = Receiver()
        r = flowprobe("-i", capture, "-n", rx.target, "-V", str(version))
        assert r.returncode == 0, r.stderr
        grams = rx.drain()
        assert grams and {classify(g) for g in grams} == {want[version]}
        assert classify(grams[0][:-1]) is None
    sflow = struct.pack(">IIIIIII", 5, 1, 0x7F000001, 0, 1, 1000, 0)
    assert classify(sflow) == "sflow5"
    for junk in (b"", b"hello world", b"\x00\x05" + b"\x00" * 40, struct.pack(">HH", 10, 99),
                 sflow[:20], struct.pack(">IIIIIII", 5, 3, 0, 0, 1, 1000, 0)):
        assert classify(junk) is None




def relay_proc(*args):
    p = subprocess.Popen([sys.executable, "-m", "engine.apps.flowrelay", *args], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    while "listening" not in line:
        line = p.stderr.readline()
        assert line, p.communicate()
    return p


def pull(zmq, url, public):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.PULL)
    pub, sec = zmq.curve_keypair()
    s.curve_serverkey = public.encode()
    s.curve_publickey, s.curve_secretkey = pub, sec
    s.setsockopt(zmq.LINGER, 0)
    s.connect(url)
    return s


def recv_all(s, n, timeout=5.0):
    out = []
    deadline = time.time() + timeout
    while len(out) < n and time.time() < deadline:
        if s.poll(100):
            out.append(s.recv_multipart())
    return out


@pytest.mark.curve
def test_relay_end_to_end_curve_allow_queue_reconnect(capture):
    import zmq
    public, secret = (k.decode() for k in zmq.curve_keypair())
    udp, zport = free_udp_port(), free_udp_port()
    p = relay_proc("-c", f"127.0.0.1:{udp}", "-z", f"tcp://127.0.0.1:{zport}c", f"--key={secret}",
                   "--allow", "127.0.0.1/32", "--queue", "5", "-v", "--stats-interval", "60")
    try:
        url = f"tcp://127.0.0.1:{zport}"
        v5 = struct.pack(">HHIIIIBBH", 5, 1, 0, 0, 0, 0, 0, 0, 0) + bytes(48)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind(("127.0.0.2", 0))
        for i in range(8):               # nobody connected: 5 queued, 3 dropped
            tx.sendto(v5[:16] + struct.pack(">I", i) + v5[20:], ("127.0.0.1", udp))
        tx.sendto(b"not a flow datagram", ("127.0.0.1", udp))
        other.sendto(v5, ("127.0.0.1", udp))
        # the relay has read and queued them all once its socket is empty
        wait_until(lambda: udp_queue(udp) == (0, 0), what="the relay reading its socket")
        s = pull(zmq, url, public)
        got = recv_all(s, 5)
        assert [struct.unpack_from(">I", m[1], 16)[0] for m in got] == [3, 4, 5, 6, 7]
        assert got[0][0].decode().startswith("127.0.0.1:")
        # a real export, relayed byte for byte while the probe is connected (-a: copy to rx)
        rx = Receiver()
        r = flowprobe("-i", capture, "-n", f"127.0.0.1:{udp}", "-n", rx.target,
                      "-a", "-V", "10")
        assert r.returncode == 0, r.stderr
        sent = rx.drain()
        got = recv_all(s, len(sent))
        assert [m[1] for m in got] == sent
        # the probe goes away and comes back: what arrived meanwhile is delivered
        s.close()
        wait_until(lambda: tcp_peers(zport) == 0, what="the probe's connection closed")
        for i in range(3):
            tx.sendto(v5[:16] + struct.pack(">I", 100 + i) + v5[20:], ("127.0.0.1", udp))
        wait_until(lambda: udp_queue(udp) == (0, 0), what="the relay reading its socket")
        s = pull(zmq, url, public)
        got = recv_all(s, 3)
        assert [struct.unpack_from(">I", m[1], 16)[0] for m in got] == [100, 101, 102]
        s.close()
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=10)
    last = err.strip().splitlines()[-1]
    assert "invalid=1" in last and "not_allowed=1" in last and "queue_drops=3" in last, err
