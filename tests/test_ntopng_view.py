"""What an unmodified ntopng makes of flowprobe's stream, derived from the raw messages: each
TLV payload decoded by nDPI's own deserializer (what ntopng links), then ntopng's rules of the
protocol document applied: host MACs from ids 56/81 (source) and 80/57 (destination), flows
counted per message in 8 bits (§5.3), the probe page from the event messages (§8).
The MACs are checked against dpkt's reading of the capture, not against our own decoder."""
import ipaddress
import json
import socket
import struct
import subprocess
import sys
import time
import zlib

import pytest

import dpkt  # noqa: E402
import zmq  # noqa: E402

from conftest import ROOT, corpus_params  # noqa: E402
from test_zmq_tlv import _load_ndpi, ndpi_decode  # noqa: E402
from test_zmq_e2e import free_port  # noqa: E402

# ntopng's MAC mapping (§7.2): which end each id sets
NTOPNG_SRC_MAC = (56, 81)
NTOPNG_DST_MAC = (80, 57)


@pytest.fixture(scope="module")
def ndpi():
    return _load_ndpi()


@pytest.fixture(scope="module")
def capture(many_flows):
    """A capture of 1,500 flows made by the project's generator (no outside files)."""
    return many_flows[0]


def run_stream(path, *args, fmt="t", compress=True):
    """flowprobe -i path --zmq ... with a raw SUB: every (topic, header, payload) in order."""
    port = free_port()
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    for t in (b"flow", b"event"):
        s.setsockopt(zmq.SUBSCRIBE, t)
    s.connect(f"tcp://127.0.0.1:{port}")
    cmd = [sys.executable, "-m", "engine", "-i", str(path), "--zmq", f"tcp://127.0.0.1:{port}",
           "--zmq-wait-subscriber", "10", "--zmq-format", fmt, *args]
    if not compress:
        cmd.append("--zmq-disable-compression")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    frames = []
    while True:
        if s.poll(200 if proc.poll() is None else 1000):
            frames.append(s.recv_multipart())
        elif proc.poll() is not None:
            break
    out, err = proc.communicate(timeout=30)
    s.close(0)
    ctx.term()
    assert proc.returncode == 0, err
    msgs = []
    for hdr, body in frames:
        topic = hdr[:16].rstrip(b"\0").decode()
        data = zlib.decompress(body) if hdr[17] & 0x04 else body
        msgs.append((topic, hdr, data))
    return msgs, err


def dumped(path):
    out = subprocess.run([sys.executable, "-m", "engine", "-i", str(path), "--dump-format",
                          "json"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def macs_by_address(path):
    """dpkt: for every IP address, the MACs its frames carry (outer headers): the source MAC of
    the frames it sent and the destination MAC of the frames sent to it (a capture between two
    switches or routers may show a host with a different MAC in each direction)."""
    seen: dict[str, set] = {}
    with open(path, "rb") as f:
        try:
            reader = dpkt.pcap.Reader(f)
        except ValueError:
            f.seek(0)
            reader = dpkt.pcapng.Reader(f)
        if reader.datalink() != dpkt.pcap.DLT_EN10MB:
            return None
        for _, buf in reader:
            try:
                eth = dpkt.ethernet.Ethernet(buf)
            except (dpkt.UnpackError, struct.error):
                continue
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP):
                family = socket.AF_INET
            elif isinstance(ip, dpkt.ip6.IP6):
                family = socket.AF_INET6
            else:
                continue
            for addr, mac in ((ip.src, eth.src), (ip.dst, eth.dst)):
                text = socket.inet_ntop(family, addr)
                a = ipaddress.ip_address(text)
                if a.is_multicast or text == "255.255.255.255":      # no host of their own
                    continue
                seen.setdefault(text, set()).add(mac.hex(":"))
    return seen


def ntopng_hosts(flows):
    """(client address, its MAC), (server address, its MAC) per flow, as ntopng assigns them:
    the ids in wire order, a later id overwriting an earlier one."""
    out = []
    for f in flows:
        src_mac = dst_mac = None
        for k, v in f.items():
            if k in NTOPNG_SRC_MAC:
                src_mac = v
            elif k in NTOPNG_DST_MAC:
                dst_mac = v
        client = f.get(8) or f.get(27)
        server = f.get(12) or f.get(28)
        out.append(((client, src_mac), (server, dst_mac)))
    return out


def check_macs(ndpi, path):
    truth = macs_by_address(path)
    if truth is None:
        return 0
    msgs, _ = run_stream(path, "--zmq-stats-interval", "0")      # flows only
    ffi, lib = ndpi
    flows = [f for topic, _, data in msgs if topic == "flow" for f in ndpi_decode(ffi, lib, data)]
    checked = 0
    for (client, cmac), (server, smac) in ntopng_hosts(flows):
        assert cmac is not None and smac is not None
        # a tunnelled flow's addresses are inner ones and never a frame's outer source
        if client in truth:
            assert cmac in truth[client], (path.name, client, cmac, truth[client])
            checked += 1
        if server in truth:
            assert smac in truth[server], (path.name, server, smac, truth[server])
            checked += 1
    return checked


def test_each_host_carries_its_own_mac_generated(ndpi, capture):
    assert check_macs(ndpi, capture) >= 2 * 1500 * 0.9


@pytest.mark.parametrize("pcap", corpus_params(), ids=lambda p: getattr(p, "name", p))
def test_each_host_carries_its_own_mac(ndpi, pcap):
    """Every development capture with Ethernet (the others have no MACs to check)."""
    checked = check_macs(ndpi, pcap)
    if pcap.name == "1kxun.pcap":
        assert checked > 300


@pytest.mark.parametrize("fmt", ["t", "j"])
def test_ntopng_counts_every_flow(ndpi, capture, fmt):
    """ntopng counts each message's flows modulo 256: with at most 255 a message it counts all."""
    msgs, err = run_stream(capture, fmt=fmt)
    ffi, lib = ndpi
    per_message = []
    for topic, hdr, data in msgs:
        if topic != "flow":
            continue
        n = len(ndpi_decode(ffi, lib, data)) if fmt == "t" else len(json.loads(data))
        per_message.append(n)
    total = len(dumped(capture))
    assert total == 1500
    assert sum(per_message) == total
    assert max(per_message) <= 255
    assert sum(n % 256 for n in per_message) == total           # what ntopng's counter shows
    assert len(per_message) >= total // 255


def test_probe_page(capture):
    """The first event precedes the first flow (ntopng counts exported flows from there on);
    every member ntopng reads is set and fits ntopng's fields."""
    msgs, err = run_stream(capture)
    assert msgs[0][0] == "event"
    first = json.loads(msgs[0][2])
    assert first["zmq"]["num_flow_exports"] == 0
    events = [json.loads(d) for t, _, d in msgs if t == "event"]
    last = events[-1]
    nflows = sum(1 for t, _, d in msgs if t == "flow")
    assert nflows >= 6
    assert last["zmq"]["num_flow_exports"] - first["zmq"]["num_flow_exports"] == 1500
    for ev in events:
        assert ev["iface"]["name"] == capture.name[:31]          # the file name, not the path
        assert len(ev["probe"]["uuid"]) <= 35
        assert ev["zmq"]["num_exporters"] == 1
        assert ev["mode"] == "packet_collection"


def test_long_capture_name_is_shortened(tmp_path, capture):
    long = tmp_path / ("a-capture-with-a-name-longer-than-ntopng-keeps" + ".pcap")
    long.symlink_to(capture)
    msgs, _ = run_stream(long, "-d", "60")
    names = {json.loads(d)["iface"]["name"] for t, _, d in msgs if t == "event"}
    assert names == {"a-capture-with-a-name-longer-t~"}           # 31 characters


def test_flows_per_message_flag_is_bounded(ndpi, capture):
    r = subprocess.run([sys.executable, "-m", "engine", "-i", str(capture), "--zmq",
                        "tcp://127.0.0.1:1", "--zmq-max-flows-per-message", "256"], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.startswith("flowprobe: error: --zmq-max-flows-per-message 256: expected "
                               "1..255"), r.stderr
    msgs, _ = run_stream(capture, "--zmq-max-flows-per-message", "100")
    ffi, lib = ndpi
    counts = [len(ndpi_decode(ffi, lib, d)) for t, _, d in msgs if t == "flow"]
    assert max(counts) == 100 and sum(counts) == 1500


def test_final_event_reaches_ntopngs_totals(capture):
    """ntopng folds events into its totals at most once a second: the last one (with the final
    flow count) comes at least a second after the one before it."""
    port = free_port()
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.SUBSCRIBE, b"event")
    s.connect(f"tcp://127.0.0.1:{port}")
    proc = subprocess.Popen([sys.executable, "-m", "engine", "-i", str(capture), "--zmq",
                             f"tcp://127.0.0.1:{port}", "--zmq-wait-subscriber", "10"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stamps = []
    while True:
        if s.poll(200 if proc.poll() is None else 1000):
            s.recv_multipart()
            stamps.append(time.monotonic())
        elif proc.poll() is not None:
            break
    proc.communicate(timeout=30)
    s.close(0)
    ctx.term()
    assert len(stamps) >= 2
    assert stamps[-1] - stamps[-2] >= 0.9
