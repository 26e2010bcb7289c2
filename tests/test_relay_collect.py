"""``--collector-port tcp://RELAY:PORT``: flowprobe collecting through a flowrelay (engine/relay.py)
over CURVE-encrypted ZeroMQ, on loopback.

softflowd -> tee -> flowrelay -> (CURVE ZeroMQ) -> flowprobe, and the same datagrams from the tee
straight to a second flowprobe on UDP: both dump the very same flows. A datagram from an exporter
outside --allow and a datagram that is no flow export are counted and dropped by the relay. A
probe that goes away and comes back gets everything the relay queued meanwhile (bounded: the
oldest beyond --queue are dropped and counted).
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from cases import v5_datagram
from conftest import ROOT, tcp_peers, tool, wait_until
from test_collect_live import Tee, free_port, run_exporter, wait_bound

import zmq  # noqa: E402


def keypair():
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


class Relay:
    def __init__(self, *args):
        self.udp, self.zport = free_port(), free_port()
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.apps.flowrelay", "-c", f"127.0.0.1:{self.udp}",
             "-z", f"tcp://127.0.0.1:{self.zport}c", *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.err, text=True)
        wait_bound(self.udp, self.proc)
        self.url = f"tcp://127.0.0.1:{self.zport}"

    def lines(self):
        self.err.seek(0)
        return self.err.read().splitlines()

    def last_stats(self) -> dict:
        for line in reversed(self.lines()):
            if "received=" in line:
                return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
        return {}

    def finish(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=15)
        return self.last_stats()


class Probe:
    """flowprobe -i none --collector-port URL --collector-passthrough --dump-format json."""

    def __init__(self, port_spec: str, *extra: str, idle_exit: float = 0.0):
        self.out = tempfile.TemporaryFile("w+")
        args = [sys.executable, "-m", "engine", "-i", "none", "--collector-port", port_spec,
                "--collector-passthrough", "--dump-format", "json", *extra]
        if idle_exit:
            args += ["--collector-idle-exit", str(idle_exit)]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.out, stderr=subprocess.PIPE,
                                     text=True)

    def finish(self, terminate: bool = True, timeout: float = 30.0):
        if terminate:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        self.out.seek(0)
        flows = [json.loads(line) for line in self.out.read().splitlines() if line.strip()]
        self.out.close()
        return flows, err


def summary_counts(err: str) -> tuple[int, int]:
    m = re.search(r"collector: (\d+) datagrams, (\d+) records", err)
    assert m, err
    return int(m.group(1)), int(m.group(2))


def canon(flows):
    return sorted(json.dumps(f, sort_keys=True) for f in flows)


def relay_counts(relay, **want) -> dict:
    """Wait until the relay's statistics line shows ``want`` (counter=value), and return it."""
    return wait_until(lambda: (lambda st: st if all(st.get(k) == v for k, v in want.items())
                               else None)(relay.last_stats()), what=f"the relay's {want}")


# --- softflowd -> relay -> probe, against the same datagrams over UDP ------------------------
@pytest.mark.curve
@pytest.mark.tools("softflowd")
@pytest.mark.parametrize("capture,version", [("traffic", "9"), ("traffic", "10"),
                                             ("ethernet", "5")])
def test_softflowd_through_relay_matches_direct_udp(capture, version, generated, traffic):
    path = traffic[0] if capture == "traffic" else generated[capture][0]
    public, secret = keypair()
    relay = Relay(f"--key={secret}", "--allow", "127.0.0.1/32", "-v", "--stats-interval", "0.2")
    direct_port = free_port()
    # the relay queues what arrives before the probe has connected: no need to wait for it;
    # each probe ends by itself once no datagram came for 3 s
    via_relay = Probe(relay.url, "--collector-encryption-key", public, idle_exit=3.0)
    direct = Probe(f"127.0.0.1:{direct_port}", idle_exit=3.0)
    wait_bound(direct_port, direct.proc)
    tee = Tee([relay.udp, direct_port])
    try:
        run_exporter([tool("softflowd"), "-r", str(path), "-n", f"127.0.0.1:{tee.port}", "-v",
                      version, "-c", "none"])
        tee.drain()
    finally:
        tee.close()
    # what the relay must drop: no flow export, and an exporter outside --allow
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.sendto(b"GET / HTTP/1.0\r\n\r\n", ("127.0.0.1", relay.udp))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.2", 0))
    other.sendto(tee.datagrams[0], ("127.0.0.1", relay.udp))
    tx.close()
    other.close()
    relay_counts(relay, received=tee.count + 2, forwarded=tee.count, queued=0)
    ours, err = via_relay.finish(terminate=False)
    theirs, err_direct = direct.finish(terminate=False)
    stats = relay.finish()
    assert tee.count > 0 and len(theirs) > 0
    assert stats["received"] == tee.count + 2
    assert stats["forwarded"] == tee.count
    assert stats["invalid"] == 1 and stats["not_allowed"] == 1 and stats["queue_drops"] == 0
    assert summary_counts(err) == summary_counts(err_direct) == (tee.count, len(theirs))
    assert canon(ours) == canon(theirs)           # flow for flow, exporter address included
    print(f"{capture} v{version}: {tee.count} datagrams, {len(ours)} flows, "
          f"{sum(f['IN_PKTS'] for f in ours)} packets, {sum(f['IN_BYTES'] for f in ours)} bytes "
          f"through the relay = direct UDP")


# --- disconnect / reconnect -------------------------------------------------------------------
def send_v5(port: int, start: int, count: int, n: int = 10) -> None:
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for k in range(start, start + count):
        tx.sendto(v5_datagram(k * n, k * n, n), ("127.0.0.1", port))
        if k % 100 == 99:
            time.sleep(0.002)
    tx.close()


def flow_ids(flows) -> list[int]:
    return sorted(f["IN_PKTS"] - 1 for f in flows)


@pytest.mark.curve
def test_probe_reconnects_and_gets_what_the_relay_queued():
    public, secret = keypair()
    relay = Relay(f"--key={secret}", "--queue", "300", "-v", "--stats-interval", "0.2")
    try:
        a = Probe(relay.url, "--collector-encryption-key", public, idle_exit=3.0)
        send_v5(relay.udp, 0, 200)                      # flows 0..1999, for probe a
        relay_counts(relay, forwarded=200, queued=0)
        first, _ = a.finish(terminate=False)            # it ends 3 s after the last datagram
        assert flow_ids(first) == list(range(2000))
        wait_until(lambda: tcp_peers(relay.zport) == 0, what="the probe's connection closed")
        send_v5(relay.udp, 200, 400)                    # no probe: 300 queued, 100 dropped
        st = relay_counts(relay, received=600)
        assert st["forwarded"] == 200 and st["queue_drops"] == 100 and st["queued"] == 300
        b = Probe(relay.url, "--collector-encryption-key", public, idle_exit=2.0)
        second, err = b.finish(terminate=False)
        assert flow_ids(second) == list(range(3000, 6000))   # datagrams 300..599, in full
        assert summary_counts(err) == (300, 3000)
    finally:
        stats = relay.finish()
    assert stats["forwarded"] == 500 and stats["queue_drops"] == 100 and stats["queued"] == 0


# --- bad frames and keys ----------------------------------------------------------------------
def test_bad_frames_counted_not_raised():
    from engine.collect import CollectorSource
    from engine.collect.from_relay import parse_sender
    assert parse_sender(b"192.0.2.1:2055") == "192.0.2.1"
    assert parse_sender(b"[2001:db8::1]:4739") == "2001:db8::1"
    assert parse_sender(b"[fe80::1%eth0]:4739") == "fe80::1"
    for bad in (b"", b"192.0.2.1", b"192.0.2.999:1", b"host:1", b"\xff\xfe:1", b"1.2.3.4:x",
                b"[1.2.3.4]:5", b"2001:db8::1:4739"):
        assert parse_sender(bad) is None, bad
    port = free_port()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind(f"tcp://127.0.0.1:{port}")
    src = CollectorSource([], mode="passthrough", relays=[f"tcp://127.0.0.1:{port}"])
    try:
        good = v5_datagram(0, 0, 3)
        for msg in ([b"10.0.0.1:2055"], [b"nonsense", good], [b"10.0.0.1:2055", good, b"x"],
                    [b"10.0.0.1:2055", b"\x00\x05junk"], [b"10.0.0.1:2055", good],
                    [b"[2001:db8::7]:9", good]):
            push.send_multipart(msg)
        recs = []
        deadline = time.time() + 5
        while time.time() < deadline and len(recs) < 6:
            recs += list(src.process(src.receive(0.1)))
        st = src.stats()
        assert len(recs) == 6
        r = st["relays"][0]
        assert (r["messages"], r["datagrams"], r["bad_frames"]) == (6, 3, 3)
        assert st["collector"]["totals"]["relay_bad_frames"] == 3
        ex = st["collector"]["exporters"]
        assert set(ex) == {"10.0.0.1", "2001:db8::7"}
        assert sum(ex["10.0.0.1"]["bad"].values()) == 1 and ex["10.0.0.1"]["records"] == 3
    finally:
        src.close()
        push.close(linger=0)
        ctx.term()


@pytest.mark.parametrize("args,needle", [
    (["--collector-port", "tcp://127.0.0.1"], "tcp://RELAY:PORT"),
    (["--collector-port", "tcp://*:5556"], "tcp://RELAY:PORT"),
    (["--collector-port", "tcp://127.0.0.1:5556", "--collector-encryption-key", "short"],
     "--collector-encryption-key"),
    (["--collector-port", "127.0.0.1:5556", "--collector-encryption-key", "x" * 40],
     "tcp://RELAY:PORT")])
def test_bad_relay_options_one_line(args, needle):
    r = subprocess.run([sys.executable, "-m", "engine", "-i", "none", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.curve
def test_hex_key_and_wrong_key():
    """A hex public key works as Z85 does; a wrong key delivers nothing and is counted."""
    from zmq.utils import z85
    from engine.arguments import curve_key
    from engine.collect import CollectorSource
    public, secret = keypair()
    relay = Relay(f"--key={secret}", "-v", "--stats-interval", "0.2")
    srcs = []
    try:
        hexkey = z85.decode(public.encode()).hex()
        good = CollectorSource([], mode="passthrough", relays=[relay.url],
                               relay_key=curve_key("--collector-encryption-key", hexkey))
        wrong = CollectorSource([], mode="passthrough", relays=[relay.url],
                                relay_key=zmq.curve_keypair()[0])
        srcs = [good, wrong]
        send_v5(relay.udp, 0, 5)                        # queued until a probe can take them
        recs = []

        def fifty():
            recs.extend(good.process(good.receive(0.1)))
            wrong.receive(0)
            return len(recs) >= 50
        wait_until(fifty, what="the 50 flows through the relay")
        assert len(recs) == 50
        wait_until(lambda: wrong.receive(0) or wrong.stats()["relays"][0][
            "handshake_failures"] >= 1, what="the wrong key's failed handshake")
        assert good.stats()["relays"][0]["handshakes"] == 1
    finally:
        for s in srcs:
            s.close()
        relay.finish()


def test_genkey_prints_a_matching_key_pair():
    r = subprocess.run([sys.executable, "-m", "engine.apps.flowrelay", "--gen-keypair"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    keys = json.loads(r.stdout)
    assert set(keys) == {"public", "public_hex", "secret"}
    assert zmq.curve_public(keys["secret"].encode()).decode() == keys["public"]
    assert keys["public"] != zmq.curve_keypair()[0].decode()       # a new pair each time
