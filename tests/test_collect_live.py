"""Real exporters (softflowd, pmacctd) replay captures the project generates to `flowprobe -i none
--collector-port` on loopback; what we collect matches, flow for flow, an independent collector
(nfcapd + nfdump) fed the very same datagrams through a UDP tee, and for sFlow (pmacctd sfprobe,
every packet sampled) the flows our packet path finds in the same capture."""
from __future__ import annotations

import csv
import collections
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import ROOT, tool, udp_queue, wait_until
from engine.collect.receive import udp_socket_rows
from recorded import PMACCT_CONF, datagram_pcap, plugin_running


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def udp_bound(port: int) -> bool:
    """Whether a UDP socket (v4 or v6) is bound to port, read from /proc: probing by binding the
    port ourselves would race with the process that is about to bind it."""
    return any(int(r[1].rsplit(":", 1)[1], 16) == port for r in udp_socket_rows())


def wait_bound(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    """Until something listens on UDP port; fails at once if proc, which should bind it, died."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if udp_bound(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode} before binding "
                               f"UDP {port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on UDP {port}")


SENTINEL = b"flowprobe-test: end of the stream"


class Tee:
    """Receives on a port and forwards every datagram to several ports, in order. ``drain()``
    returns once every datagram sent to it so far has been forwarded: loopback queues datagrams
    in the order they were sent, so a sentinel sent after them arrives after them."""

    def __init__(self, targets):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.targets = targets
        self.count = 0
        self.datagrams = []
        self.done = False
        self.drained = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done:
            try:
                data, _ = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            if data == SENTINEL:
                self.drained.set()
                continue
            self.count += 1
            self.datagrams.append(data)
            for p in self.targets:
                self.out.sendto(data, ("127.0.0.1", p))
                time.sleep(0.0002)

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every datagram that reached the tee so far has been forwarded (the
        sender must have exited, or finished sending)."""
        self.drained.clear()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(SENTINEL, ("127.0.0.1", self.port))
        assert self.drained.wait(timeout), "the tee did not forward the stream"
        assert udp_queue(self.port) == (0, 0), "the tee's socket dropped datagrams"

    def close(self):
        self.done = True
        self.thread.join()
        self.sock.close()
        self.out.close()


class Flowprobe:
    def __init__(self, port: int, *extra: str, idle_exit: float = 60.0):
        # stdout to a file, not a pipe: a pipe nobody reads yet fills up and blocks the dump
        self.out = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "-i", "none", "--collector-port",
             f"127.0.0.1:{port}", "--dump-format", "json", "--collector-idle-exit",
             str(idle_exit), *extra],
            cwd=ROOT, stdout=self.out, stderr=subprocess.PIPE, text=True)
        self.port = port
        wait_bound(port, self.proc)

    def finish(self, timeout: float = 30.0, terminate: bool = True):
        if terminate:       # once the collector has read every datagram it was sent
            wait_until(lambda: udp_queue(self.port) == (0, 0), what="the collector reading")
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        self.out.seek(0)
        out = self.out.read()
        self.out.close()
        return [json.loads(line) for line in out.splitlines() if line.strip()], err


class Nfcapd:
    def __init__(self, port: int, tmp: str):
        self.dir = os.path.join(tmp, "nfcapd")
        os.makedirs(self.dir, exist_ok=True)
        self.port = port
        self.proc = subprocess.Popen([tool("nfcapd"), "-w", self.dir, "-p", str(port),
                                      "-b", "127.0.0.1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_bound(port, self.proc)

    def finish(self) -> list:
        wait_until(lambda: udp_queue(self.port) == (0, 0), what="nfcapd reading every datagram")
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        rows = []
        for name in sorted(os.listdir(self.dir)):
            if not name.startswith("nfcapd.2"):
                continue
            out = subprocess.run([tool("nfdump"), "-r", os.path.join(self.dir, name), "-o", "csv",
                                  "-q"], capture_output=True, text=True, check=True).stdout
            if not out.startswith("ts,"):
                out = NFDUMP_HEADER + "\n" + out
            for r in csv.DictReader(io.StringIO(out)):
                if r.get("sa") and r["sa"] not in ("Summary", "flows"):
                    rows.append(r)
        return rows


NFDUMP_HEADER = ("ts,te,td,sa,da,sp,dp,pr,flg,fwd,stos,ipkt,ibyt,opkt,obyt,in,out,sas,das,smk,"
                 "dmk,dtos,dir,nh,nhb,svln,dvln,ismc,odmc,idmc,osmc,mpls1,mpls2,mpls3,mpls4,"
                 "mpls5,mpls6,mpls7,mpls8,mpls9,mpls10,cl,sl,al,ra,eng,exid,tr")


def norm(a: str) -> str:
    a = a.strip()
    fam = socket.AF_INET6 if ":" in a else socket.AF_INET
    return socket.inet_ntop(fam, socket.inet_pton(fam, a))


def ours_key(d: dict):
    src = d.get("IPV4_SRC_ADDR") or d.get("IPV6_SRC_ADDR")
    dst = d.get("IPV4_DST_ADDR") or d.get("IPV6_DST_ADDR")
    ports = (d.get("L4_SRC_PORT", 0), d.get("L4_DST_PORT", 0))
    if d["PROTOCOL"] in (1, 58):
        ports = ICMP
    return (norm(src), norm(dst), *ports, d["IN_PKTS"], d["IN_BYTES"])


# ICMP's type: exporters send it as the destination port or as element 32/139, and nfdump shows
# one or the other; the collector's reading of it is checked against tshark (test_collect_exports)
ICMP = ("icmp", "icmp")


def nfdump_key(r: dict):
    ports = (int(float(r["sp"])), int(float(r["dp"])))
    if r["pr"].strip() in ("ICMP", "ICMP6"):
        ports = ICMP
    return (norm(r["sa"]), norm(r["da"]), *ports, int(r["ipkt"]), int(r["ibyt"]))


def run_exporter_to_both(cmd_for_port, tmp, *fp_args, conf=None):
    nf_port, fp_port = free_port(), free_port()
    nfc = Nfcapd(nf_port, tmp)
    fp = Flowprobe(fp_port, "--collector-passthrough", *fp_args)
    tee = Tee([nf_port, fp_port])
    try:
        run_exporter(cmd_for_port(tee.port), conf)
        tee.drain()
    finally:
        tee.close()
    ours, err = fp.finish()
    theirs = nfc.finish()
    return ours, theirs, tee.count, err


def compare(ours, theirs):
    a = collections.Counter(ours_key(d) for d in ours)
    b = collections.Counter(nfdump_key(r) for r in theirs)
    assert sum(b.values()) > 0
    assert a == b, (a - b, b - a)


def run_exporter(cmd, conf=None):
    """Run an exporter to its end: softflowd exits when the file is read; pmacctd (``conf``)
    exits too (status 1 when its plugin ends first), and its plugin process may still send, so
    wait until that is gone as well."""
    r = subprocess.run(cmd, capture_output=True, timeout=120)
    if conf is None:
        assert r.returncode == 0, r.stderr
    else:
        wait_until(lambda: not plugin_running(conf), timeout=30, what="pmacctd's plugin to end")


@pytest.fixture(scope="module")
def replays(generated, traffic):
    """What the exporters replay: a mixed capture (IPv4, IPv6, TCP, UDP), tools/gen_cases.py's
    varied one (ICMP, SCTP, ESP, a SYN-ACK first) and its capture from 2016 and 2022."""
    return {"traffic": traffic[0], "ethernet": generated["ethernet"][0],
            "span": generated["span"][0]}


@pytest.mark.tools("nfcapd", "nfdump", "softflowd")
@pytest.mark.parametrize("version", ["5", "9", "10"])
@pytest.mark.parametrize("capture", ["traffic", "ethernet", "span"])
def test_softflowd_matches_nfdump(version, capture, tmp_path, replays):
    ours, theirs, n, err = run_exporter_to_both(
        lambda port: [tool("softflowd"), "-r", str(replays[capture]), "-n", f"127.0.0.1:{port}",
                      "-v", version], str(tmp_path))
    assert n > 0
    compare(ours, theirs)


@pytest.mark.tools("nfcapd", "nfdump", "pmacctd")
@pytest.mark.parametrize("capture", ["traffic", "ethernet"])
def test_pmacctd_nfprobe_ipfix_matches_nfdump(capture, tmp_path, replays):
    conf = tmp_path / "pmacctd.conf"

    def cmd(port):
        conf.write_text(PMACCT_CONF.format(pcap=replays[capture], plugin="nfprobe", port=port,
                                           extra="nfprobe_version: 10"))
        return [tool("pmacctd"), "-f", str(conf)]
    ours, theirs, n, err = run_exporter_to_both(cmd, str(tmp_path), conf=conf)
    assert n > 0
    compare(ours, theirs)


def packet_path_flows(capture):
    out = subprocess.run([sys.executable, "-m", "engine", "-i", str(capture),
                          "--dump-format", "json", "--no-features"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def biflow_key(d):
    src = norm(d.get("IPV4_SRC_ADDR") or d.get("IPV6_SRC_ADDR"))
    dst = norm(d.get("IPV4_DST_ADDR") or d.get("IPV6_DST_ADDR"))
    ends = sorted([(src, d.get("L4_SRC_PORT", 0)), (dst, d.get("L4_DST_PORT", 0))])
    return (tuple(ends), d["PROTOCOL"], d["IN_PKTS"] + d["OUT_PKTS"],
            d["IN_BYTES"] + d["OUT_BYTES"])


@pytest.mark.tools("pmacctd", "tshark")
@pytest.mark.parametrize("capture", ["traffic", "ethernet"])
def test_pmacctd_sfprobe_cache(capture, tmp_path, replays):
    """pmacctd samples (nearly) every packet; the cache merges the samples into biflows.
    Oracles: tshark's dissection of the very datagrams (number of samples, sum of frame lengths
    minus stripped FCS and Ethernet header) and the flows our packet path finds in the capture
    (same flow keys; no flow has more packets than there)."""
    port = free_port()
    # the default mode (cache); ends by --collector-idle-exit, which empties the cache
    fp = Flowprobe(port, "-d", "60", idle_exit=4.0)
    tee = Tee([port])
    conf = tmp_path / "pmacctd.conf"
    conf.write_text(PMACCT_CONF.format(pcap=replays[capture], plugin="sfprobe", port=tee.port,
                                       extra=""))
    try:
        run_exporter([tool("pmacctd"), "-f", str(conf)], conf)
        tee.drain()
    finally:
        tee.close()
    ours, err = fp.finish(terminate=False)
    assert tee.count > 0
    pcap = tmp_path / "sflow.pcap"
    datagram_pcap(pcap, tee.datagrams, 6343)
    out = subprocess.run([tool("tshark"), "-r", str(pcap), "-T", "fields", "-E", "occurrence=a",
                          "-e", "sflow_245.header.frame_length",
                          "-e", "sflow_245.header.payload_stripped"],
                         capture_output=True, text=True, check=True).stdout
    frames = []
    for line in out.splitlines():
        fl, st = line.split("\t")
        if not fl:                 # a datagram of counter samples only: no sampled header
            continue
        frames += [int(a) - int(b) - 14 for a, b in zip(fl.split(","), st.split(","))]
    assert sum(d["IN_PKTS"] + d["OUT_PKTS"] for d in ours) == len(frames) > 0
    assert sum(d["IN_BYTES"] + d["OUT_BYTES"] for d in ours) == sum(frames)
    expected = {biflow_key(d)[:2]: biflow_key(d)[2] for d in packet_path_flows(replays[capture])}
    got = {biflow_key(d)[:2]: biflow_key(d)[2] for d in ours}
    assert len(got) == len(ours)                     # one biflow per key: the cache merged
    assert set(got) <= set(expected)
    assert all(got[k] <= expected[k] for k in got)
    assert sum(got.values()) >= 0.9 * sum(expected.values())
