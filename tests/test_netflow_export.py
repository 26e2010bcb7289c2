"""-n HOST:PORT: NetFlow v5, v9 and IPFIX export, read back by real collectors (nfdump's nfcapd,
tshark) and by our own header checks (sequence numbers, MTU, round robin, templates)."""
import ipaddress
import json
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from conftest import PCAPS, ROOT

VERSIONS = (5, 9, 10)


def pcap(name):
    p = PCAPS / name
    if not p.exists():
        pytest.skip(f"{p} not found")
    return str(p)


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

    def drain(self, quiet=0.3):
        out = []
        self.sock.settimeout(quiet)
        try:
            while True:
                out.append(self.sock.recv(65535))
        except socket.timeout:
            pass
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


def sent_rows(flows, version):
    """(src, dst, in pkts, in bytes, out pkts, out bytes) as a collector should see them."""
    rows = []
    for d in flows:
        s, t = flow_key(d)
        if version == 5:                 # IPv4 only, one unidirectional record per direction
            if d["IP_PROTOCOL_VERSION"] != 4:
                continue
            rows.append((s, t, d["IN_PKTS"], d["IN_BYTES"], 0, 0))
            if d["OUT_PKTS"]:
                rows.append((t, s, d["OUT_PKTS"], d["OUT_BYTES"], 0, 0))
        else:
            rows.append((s, t, d["IN_PKTS"], d["IN_BYTES"], d["OUT_PKTS"], d["OUT_BYTES"]))
    return sorted(rows)


# --- nfdump ----------------------------------------------------------------------------------
needs_nfdump = pytest.mark.skipif(not (shutil.which("nfcapd") and shutil.which("nfdump")),
                                  reason="nfdump not installed (apt install nfdump)")


def nfcapd_collect(tmp_path, port, run):
    d = tmp_path / f"nf{port}"
    d.mkdir()
    log = open(tmp_path / f"nfcapd{port}.log", "w+")
    p = subprocess.Popen(["nfcapd", "-w", str(d), "-p", str(port), "-b", "127.0.0.1",
                          "-t", "3600", "-B", "8000000"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            log.seek(0)
            if "Startup" in log.read():
                break
            time.sleep(0.05)
        time.sleep(0.2)
        result = run()
        time.sleep(0.3)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)
    out = subprocess.run(["nfdump", "-R", str(d), "-q", "-o", "csv"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    rows = []
    for line in out.stdout.splitlines():
        c = line.split(",")
        if len(c) < 15 or not c[11].strip().isdigit():
            continue
        rows.append((str(ipaddress.ip_address(c[3])), str(ipaddress.ip_address(c[4])),
                     int(c[11]), int(c[12]), int(c[13]), int(c[14])))
    return sorted(rows), result


@needs_nfdump
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["1kxun.pcap", "443-curl.pcap", "6in6tunnel.pcap"])
def test_nfdump_reads_what_we_sent(tmp_path, version, name):
    path = pcap(name)
    flows = expected_flows(path)
    port = free_udp_port()
    got, r = nfcapd_collect(tmp_path, port, lambda: flowprobe(
        "-i", path, "-n", f"127.0.0.1:{port}", "-V", str(version)))
    assert r.returncode == 0, r.stderr
    want = sent_rows(flows, version)
    assert got == want
    totals = [sum(x[i] for x in got) for i in (2, 3, 4, 5)]
    print(f"{name} v{version}: {len(got)} records, pkts {totals[0]}+{totals[2]}, "
          f"bytes {totals[1]}+{totals[3]}")


# --- tshark ----------------------------------------------------------------------------------
def write_pcap(path, datagrams, dport):
    """LINKTYPE_RAW pcap of IPv4/UDP packets 127.0.0.1:40000 -> 127.0.0.1:dport."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for i, d in enumerate(datagrams):
            udp = struct.pack(">HHHH", 40000, dport, 8 + len(d), 0) + d
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                             socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
            csum = sum(struct.unpack(">10H", ip))
            csum = (csum & 0xFFFF) + (csum >> 16)
            csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
            pkt = ip[:10] + struct.pack(">H", csum) + ip[12:] + udp
            f.write(struct.pack("<IIII", 1000 + i, 0, len(pkt), len(pkt)) + pkt)


@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark not installed")
@pytest.mark.parametrize("version", VERSIONS)
def test_tshark_dissects_every_datagram(tmp_path, version):
    rx = Receiver()
    r = flowprobe("-i", pcap("1kxun.pcap"), "-n", rx.target, "-V", str(version),
                  "-T", "@NTOPNG@ %ICMP_TYPE %FLOW_END_REASON %ENTROPY_CLIENT_BYTES %SEQ_PLEN")
    assert r.returncode == 0, r.stderr
    grams = rx.drain()
    assert grams
    f = tmp_path / "export.pcap"
    write_pcap(f, grams, 2055)
    base = ["tshark", "-n", "-r", str(f), "-d", "udp.port==2055,cflow"]
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
def test_sequence_numbers_mtu_and_engine(version):
    rx = Receiver()
    r = flowprobe("-i", pcap("1kxun.pcap"), "-n", rx.target, "-V", str(version), "--mtu", "600",
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
    assert seq == 213


def test_round_robin_and_all():
    a, b = Receiver(), Receiver()
    r = flowprobe("-i", pcap("1kxun.pcap"), "-n", a.target, "-n", b.target, "-V", "9")
    assert r.returncode == 0, r.stderr
    ga, gb = a.drain(), b.drain()
    assert ga and gb and abs(len(ga) - len(gb)) <= 1
    for grams in (ga, gb):           # each collector gets templates first and its own sequence
        assert any(sid == 0 for sid, _ in ipfix_sets(grams[0], 9))
        assert [struct.unpack_from(">I", g, 12)[0] for g in grams] == list(range(len(grams)))
    a, b = Receiver(), Receiver()
    r = flowprobe("-i", pcap("1kxun.pcap"), "-n", a.target, "-n", b.target, "-V", "10", "-a")
    assert r.returncode == 0, r.stderr
    ga, gb = a.drain(), b.drain()
    assert len(ga) == len(gb) > 0 and [g[16:] for g in ga] == [g[16:] for g in gb]


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
def test_bad_collector_one_line(value, needle):
    r = flowprobe("-i", pcap("443-curl.pcap"), "-n", value)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [(["-V", "7"], "-V 7"), (["--mtu", "100"], "--mtu"),
                                         (["-U", "12"], "-U 12"), (["-E", "x:y"], "-E")])
def test_bad_options_one_line(args, needle):
    r = flowprobe("-i", pcap("443-curl.pcap"), "-n", "127.0.0.1:9", *args)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_none_still_means_no_export():
    r = flowprobe("-i", pcap("443-curl.pcap"), "-n", "none")
    assert r.returncode == 0 and r.stdout == ""


# --- flowrelay -------------------------------------------------------------------------------
def test_relay_classifies_our_exports_and_rejects_garbage():
    from engine.apps.flowrelay import classify
    want = {5: "netflow5", 9: "netflow9", 10: "ipfix"}
    for version in VERSIONS:
        rx = Receiver()
        r = flowprobe("-i", pcap("1kxun.pcap"), "-n", rx.target, "-V", str(version))
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


def test_relay_end_to_end_curve_allow_queue_reconnect():
    zmq = pytest.importorskip("zmq")
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
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
        time.sleep(0.5)
        s = pull(zmq, url, public)
        got = recv_all(s, 5)
        assert [struct.unpack_from(">I", m[1], 16)[0] for m in got] == [3, 4, 5, 6, 7]
        assert got[0][0].decode().startswith("127.0.0.1:")
        # a real export, relayed byte for byte while the probe is connected (-a: copy to rx)
        rx = Receiver()
        r = flowprobe("-i", pcap("1kxun.pcap"), "-n", f"127.0.0.1:{udp}", "-n", rx.target,
                      "-a", "-V", "10")
        assert r.returncode == 0, r.stderr
        sent = rx.drain()
        got = recv_all(s, len(sent))
        assert [m[1] for m in got] == sent
        # the probe goes away and comes back: what arrived meanwhile is delivered
        s.close()
        time.sleep(0.5)
        for i in range(3):
            tx.sendto(v5[:16] + struct.pack(">I", 100 + i) + v5[20:], ("127.0.0.1", udp))
        time.sleep(0.3)
        s = pull(zmq, url, public)
        got = recv_all(s, 3)
        assert [struct.unpack_from(">I", m[1], 16)[0] for m in got] == [100, 101, 102]
        s.close()
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=10)
    last = err.strip().splitlines()[-1]
    assert "invalid=1" in last and "not_allowed=1" in last and "queue_drops=3" in last, err
