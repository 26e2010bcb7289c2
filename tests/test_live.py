"""Live capture through pcapy-ng on a veth pair in a network namespace this test creates.

Needs root (CI runs as root) and iproute2; skips with the reason otherwise. The traffic is sent by
the test itself, from inside the namespace, to the other end of the veth pair: nothing leaves the
machine."""
import json
import os
import signal
import subprocess
import sys
import time

from conftest import HOST_IP, NS_IP, ROOT, live

pytestmark = live


SENDER = """
import socket, sys, time
host = sys.argv[1]
for sport, count, size in ((40001, 10, 100), (40002, 25, 1000), (40003, 3, 10)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", sport))
    for i in range(count):
        s.sendto(bytes([i % 256]) * size, (host, 9999))
        time.sleep(0.002)
    s.close()
"""


def test_live_capture_counts_what_was_sent(veth, tmp_path):
    probe_ns, peer_ns, probe_if = veth
    probe = subprocess.Popen(["ip", "netns", "exec", probe_ns, sys.executable, "-m", "engine",
                              "-i", probe_if, "--dump-format", "json", "-b", "1"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        time.sleep(2.0)                          # the capture handle is open and activated
        subprocess.run(["ip", "netns", "exec", peer_ns, sys.executable, "-c", SENDER, HOST_IP],
                       check=True, timeout=60)
        time.sleep(1.0)
        probe.send_signal(signal.SIGINT)         # drains every flow, then exits 0
        out, err = probe.communicate(timeout=30)
    finally:
        probe.kill()
    assert probe.returncode == 0, err
    assert "Traceback" not in err
    flows = [json.loads(line) for line in out.splitlines()]
    udp = {f["L4_SRC_PORT"]: f for f in flows
           if f.get("IPV4_SRC_ADDR") == NS_IP and f["PROTOCOL"] == 17 and f["L4_DST_PORT"] == 9999}
    assert sorted(udp) == [40001, 40002, 40003], out
    for sport, count, size in ((40001, 10, 100), (40002, 25, 1000), (40003, 3, 10)):
        f = udp[sport]
        assert f["IN_PKTS"] == count and f["OUT_PKTS"] == 0
        assert f["IN_BYTES"] == count * (20 + 8 + size)     # veth frames carry no padding
        assert f["SEQ_PLEN"][0 if size <= 64 else 1 if size <= 128 else 4] == count
    assert "packets" in err.splitlines()[-1]
