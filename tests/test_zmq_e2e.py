"""flowprobe --zmq end to end on loopback: a real flowprobe process, our Subscriber and a raw
pyzmq SUB that checks the header bytes of the spec."""
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib

import pytest

import zmq  # noqa: E402

from engine.subscribe import Subscriber, flows_of, names  # noqa: E402

from conftest import ROOT, tcp_peers, wait_until  # noqa: E402

EVENT_KEYS = {
    "time", "bytes", "packets", "packet_drops", "mode", "iface.name", "iface.speed", "iface.ip",
    "probe.ip", "probe.public_ip", "probe.uuid", "probe.unique_source_id", "probe.version",
    "probe.osname", "probe.license", "probe.edition", "probe.maintenance", "avg.bps", "avg.pps",
    "timeout.lifetime", "timeout.idle", "timeout.collected_lifetime", "drops.export_queue_full",
    "drops.too_many_flows", "drops.elk_flow_drops", "drops.sflow_pkt_sample_drops",
    "drops.flow_collection_drops", "drops.flow_collection_udp_socket_drops",
    "flow_collection.nf_ipfix_flows", "flow_collection.sflow_samples",
    "flow_collection.collection_port", "flow_collection.exporters", "zmq.num_flow_exports",
    "zmq.num_exporters"}
STRING_KEYS = {"mode", "iface.name", "iface.ip", "probe.ip", "probe.public_ip", "probe.uuid",
               "probe.version", "probe.osname", "probe.license", "probe.edition",
               "probe.maintenance"}


def free_port():
    """A free port outside the kernel's ephemeral range: a SUB that connects before the publisher
    binds retries connect(); with an ephemeral-range port it can TCP self-connect and take it."""
    import random
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def flowprobe(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=ROOT, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def dump(path, *extra):
    out = subprocess.run([sys.executable, "-m", "engine", "-i", path, "--dump-format", "json",
                          *extra], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def collect(sub, proc, idle=0.7, limit=30):
    """Every message until the process has exited and the sockets are quiet."""
    msgs = []
    end = time.monotonic() + limit
    while time.monotonic() < end:
        m = sub.recv(0.1)
        if m is not None:
            msgs.append(m)
        elif proc.poll() is not None:
            break
    for m in sub.messages(idle=idle):
        msgs.append(m)
    out, err = proc.communicate(timeout=20)
    return msgs, out, err


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("exporters",):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_stream(msgs, dumped, source_id=0):
    flows = [names(f) for m in msgs if m.topic == "flow" for f in flows_of(m)]
    events = [m.payload for m in msgs if m.topic == "event"]
    ids = [m.header.msg_id for m in msgs]
    assert ids == list(range(1, len(ids) + 1)), ids          # continuous, every topic
    assert all(m.header.source_id == source_id for m in msgs)
    assert all(m.raw_size <= 131072 for m in msgs)
    assert events, "no event message"
    for ev in events:
        f = flat(ev)
        assert EVENT_KEYS <= set(f), EVENT_KEYS - set(f)
        for k in STRING_KEYS:
            assert isinstance(f[k], str), k
    last = events[-1]
    assert last["zmq"]["num_flow_exports"] == len(flows)
    assert len(flows) == len(dumped)
    for key in ("IN_BYTES", "OUT_BYTES", "IN_PKTS", "OUT_PKTS"):
        assert sum(f[key] for f in flows) == sum(d[key] for d in dumped), key
    # the TCP health fields of @NTOPNG@ (TCP flows only) as the dump has them
    for key in ("RETRANSMITTED_IN_PKTS", "RETRANSMITTED_OUT_PKTS", "OOORDER_IN_PKTS",
                "OOORDER_OUT_PKTS", "CLIENT_NW_LATENCY_MS", "SERVER_NW_LATENCY_MS",
                "APPL_LATENCY_MS", "TCP_WIN_MAX_IN", "TCP_WIN_MAX_OUT"):
        assert sum(f.get(key, 0) for f in flows) == sum(d.get(key, 0) for d in dumped), key
        assert sum(key in f for f in flows) == sum(d["PROTOCOL"] == 6 for d in dumped), key
    assert last["packets"] >= sum(d["IN_PKTS"] + d["OUT_PKTS"] for d in dumped)
    return flows, events


@pytest.mark.parametrize("fmt", ["t", "j", "m"])
@pytest.mark.parametrize("compress", [True, False], ids=["zlib", "plain"])
def test_pull_mode_formats(fmt, compress, traffic):
    path = str(traffic[0])
    port = free_port()
    with Subscriber(f"tcp://127.0.0.1:{port}") as sub:
        args = ["-i", path, "--zmq", f"tcp://127.0.0.1:{port}", "--zmq-format", fmt,
                "--zmq-wait-subscriber", "5", "--source-id", "7"]
        if not compress:
            args.append("--zmq-disable-compression")
        if fmt == "j":
            args.append("--json-labels")
        msgs, out, err = collect(sub, flowprobe(*args))
    assert "warning" not in err, err
    flows, _ = check_stream(msgs, dump(path), source_id=7)
    fm = [m for m in msgs if m.topic == "flow"]
    assert all(m.header.compressed == compress for m in msgs)
    assert all(m.format == {"t": "tlv", "j": "json", "m": "msgpack"}[fmt] for m in fm)
    if fmt == "m":
        assert fm[0].payload["schema"] == "flowprobe.flows" and fm[0].payload["version"] == 1


def test_raw_sub_header_bytes_and_probe_mode(many_flows):
    """Probe mode (flowprobe connects, the subscriber binds), headers checked byte by byte."""
    path = str(many_flows[0])
    port = free_port()
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.bind(f"tcp://127.0.0.1:{port}")
    for t in (b"flow", b"event"):
        s.setsockopt(zmq.SUBSCRIBE, t)
    proc = flowprobe("-i", path, "--zmq-probe-mode", "--zmq", f"tcp://127.0.0.1:{port}",
                     "--zmq-wait-subscriber", "5", "--source-id", "258", "-E", "0:42",
                     "-T", "@NTOPNG@ %SEQ_PLEN")
    frames = []
    while True:
        if s.poll(1000 if proc.poll() is None else 700):
            frames.append(s.recv_multipart())
        elif proc.poll() is not None:
            break
    proc.communicate()
    s.close(0)
    ctx.term()
    nflows = 0
    for i, (hdr, body) in enumerate(frames, 1):
        assert len(hdr) == 36
        topic = hdr[:16].rstrip(b"\0")
        assert topic in (b"flow", b"event") and hdr[:16] == topic.ljust(16, b"\0")
        assert hdr[16] == 4
        assert hdr[18:20] == b"\0\0"
        data = zlib.decompress(body)              # compression is on by default
        assert hdr[17] == (0x06 if topic == b"flow" else 0x04)
        assert struct.unpack_from("<I", hdr, 24)[0] == len(data)     # uncompressed length, LE
        assert struct.unpack_from(">I", hdr, 20)[0] == len(data)
        assert struct.unpack_from(">I", hdr, 28)[0] == i             # msg_id, BE, continuous
        assert struct.unpack_from("<I", hdr, 32)[0] == 258           # source_id, LE
        assert len(body) <= 131072 and len(data) <= 131072
        if topic == b"flow":
            assert data[:2] == b"\x01\x01"
            from engine.export import tlv
            recs = tlv.decode(data)
            nflows += len(recs)
            assert all(r[300] == 42 for r in recs)            # OBSERVATION_POINT_ID
            assert all(isinstance(r[57974], str) for r in recs)   # SEQ_PLEN as text
        else:
            ev = json.loads(data)
            assert ev["probe"]["unique_source_id"] == 258
    assert nflows == len(dump(path)) > 1000
    assert sum(1 for h, _ in frames if h.startswith(b"flow")) >= 2      # many flows, several msgs


@pytest.mark.curve
def test_curve_right_and_wrong_key(session_pcap):
    import zmq as z
    pub, sec = z.curve_keypair()
    path = str(session_pcap[0])
    port = free_port()
    with Subscriber(f"tcp://127.0.0.1:{port}", secret_key=sec.decode()) as sub:
        msgs, out, err = collect(sub, flowprobe(
            "-i", path, "--zmq", f"tcp://127.0.0.1:{port}", "--zmq-wait-subscriber", "5",
            "--zmq-encryption-key", pub.hex().upper()))     # the hex form ntopng shows
    check_stream(msgs, dump(path))
    wrong, _ = z.curve_keypair()
    port = free_port()
    with Subscriber(f"tcp://127.0.0.1:{port}", secret_key=sec.decode()) as sub:
        msgs, out, err = collect(sub, flowprobe(
            "-i", path, "--zmq", f"tcp://127.0.0.1:{port}", "--zmq-wait-subscriber", "1.5",
            "--zmq-encryption-key", wrong.decode()))
    assert msgs == []
    assert "no subscriber connected within 1.5 s" in err, err
    assert "zmq_drops_no_subscriber=1" in err, err


def test_several_endpoints(tmp_path, many_flows):
    path = str(many_flows[0])
    ports = [free_port(), free_port()]
    eps = [f"tcp://127.0.0.1:{p}" for p in ports] + [f"ipc://{tmp_path}/fp.sock"]
    subs = [Subscriber(e) for e in eps]
    proc = flowprobe("-i", path, *sum((["--zmq", e] for e in eps), []),
                     "--zmq-wait-subscriber", "5", "--zmq-format", "m")
    per = [[] for _ in subs]
    while proc.poll() is None:
        for i, s in enumerate(subs):
            m = s.recv(0.02)
            if m:
                per[i].append(m)
    for i, s in enumerate(subs):
        per[i] += list(s.messages(idle=0.7))
        s.close()
    out, err = proc.communicate()
    assert "warning" not in err
    total = []
    for msgs in per:
        ids = [m.header.msg_id for m in msgs]
        assert ids == list(range(1, len(ids) + 1))
        f = [x for m in msgs if m.topic == "flow" for x in flows_of(m)]
        assert f, "an endpoint got no flows"
        total += f
    dumped = dump(path)
    assert len(total) == len(dumped)
    assert sum(f["IN_BYTES"] for f in total) == sum(d["IN_BYTES"] for d in dumped)


def test_slow_subscriber_drops_are_counted(many_flows):
    path = str(many_flows[0])
    port = free_port()
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 1)
    s.setsockopt(zmq.RCVBUF, 4096)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(f"tcp://127.0.0.1:{port}")                  # and never reads
    proc = flowprobe("-i", path, "--zmq", f"tcp://127.0.0.1:{port}", "--zmq-sndhwm", "1",
                     "--zmq-max-flows-per-message", "1", "--zmq-wait-subscriber", "1",
                     "--zmq-disable-compression", "-T", "@NTOPNG@ %SEQ_PLEN %SEQ_TDIFF",
                     "-b", "1", env={"FLOWPROBE_ZMQ_SNDBUF": "4096"})
    out, err = proc.communicate(timeout=60)
    s.close(0)
    ctx.term()
    assert proc.returncode == 0, err
    summary = err.strip().splitlines()[-1]
    assert "zmq_drops_queue_full=" in summary, err
    dropped = int(summary.split("zmq_drops_queue_full=")[1].split()[0])
    assert dropped > 0
    assert "does not keep up" in err


@pytest.mark.parametrize("args,needle", [
    (["--zmq-encryption-key", "not-a-key"], "--zmq-encryption-key"),
    (["-T", "%IN_BYTS"], "did you mean IN_BYTES"),
    (["--zmq", "tcp://127.0.0.1:1"] * 8, "at most 8"),
    (["-E", "0:x"], "-E"),
    (["--source-id", "-1"], "--source-id"),
])
def test_bad_flags(args, needle, session_pcap):
    path = str(session_pcap[0])
    r = subprocess.run([sys.executable, "-m", "engine", "-i", path, "--zmq",
                        "tcp://127.0.0.1:1", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowprobe: error:"), r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


def test_listen_command(tmp_path, session_pcap):
    path, flow = str(session_pcap[0]), session_pcap[1]
    port = free_port()
    lst = subprocess.Popen([sys.executable, "-m", "engine.apps.listen", f"tcp://127.0.0.1:{port}",
                            "--idle", "3"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    r = subprocess.run([sys.executable, "-m", "engine", "-i", path, "--zmq",
                        f"tcp://127.0.0.1:{port}", "--zmq-wait-subscriber", "5"], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out, _ = lst.communicate(timeout=30)
    rows = [json.loads(x) for x in out.splitlines()]
    flows = [r["flow"] for r in rows if r["topic"] == "flow"]
    assert [(f["IPV4_SRC_ADDR"], f["IN_PKTS"], f["OUT_BYTES"]) for f in flows] == [
        (flow["src"], flow["in_pkts"], flow["out_bytes"])]
    assert any(r["topic"] == "event" for r in rows)
    kp = subprocess.run([sys.executable, "-m", "engine.apps.listen", "--gen-keypair"], cwd=ROOT,
                        capture_output=True, text=True, check=True)
    keys = json.loads(kp.stdout)
    assert len(keys["public"]) == 40 and len(keys["public_hex"]) == 80


def test_stats_interval_zero_sends_no_events(session_pcap):
    path = str(session_pcap[0])
    port = free_port()
    with Subscriber(f"tcp://127.0.0.1:{port}") as sub:
        msgs, out, err = collect(sub, flowprobe(
            "-i", path, "--zmq", f"tcp://127.0.0.1:{port}", "--zmq-wait-subscriber", "5",
            "--zmq-stats-interval", "0"))
    assert [m.topic for m in msgs] == ["flow"]
    assert [m.header.msg_id for m in msgs] == [1]


def test_listen_flags(session_pcap):
    """flowprobe-listen --bind (collector mode, flowprobe connects), --ids, --count, --no-stats,
    --timeout, and a CURVE server key."""
    import zmq as z
    path, flow = str(session_pcap[0]), session_pcap[1]
    pub, sec = z.curve_keypair()
    port = free_port()
    lst = subprocess.Popen([sys.executable, "-m", "engine.apps.listen", "--bind", "--ids", "--count",
                            "1", "--no-stats", "--timeout", "30", "--secret-key", sec.decode(),
                            f"tcp://127.0.0.1:{port}"], cwd=ROOT, stdout=subprocess.PIPE,
                           text=True)
    wait_until(lambda: tcp_peers(port, "0A"), what="flowprobe-listen bound")
    r = subprocess.run([sys.executable, "-m", "engine", "-i", path, "--zmq",
                        f"tcp://127.0.0.1:{port}", "--zmq-probe-mode", "--zmq-wait-subscriber",
                        "5", "--zmq-encryption-key", pub.decode()], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    out, _ = lst.communicate(timeout=30)
    assert r.returncode == 0 and lst.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.splitlines()]
    assert [row["topic"] for row in rows] == ["flow"]             # --count 1, --no-stats
    assert rows[0]["flow"]["8"] == flow["src"] and rows[0]["flow"]["2"] == flow["in_pkts"]
