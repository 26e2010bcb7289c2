"""Live capture through pcapy-ng on a veth pair in network namespaces this test creates.

Needs root (CI runs as root) and iproute2. The traffic is sent by the test itself, from inside
the peer namespace, to the other end of the veth pair: nothing leaves the machine. Readiness is
observed: the probe's first status line (-b 1: its capture loop runs), then its status lines
and its dump."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import HOST_IP, NS_IP, Running, live, wait_until

pytestmark = live

SENDER = """
import socket, sys, time
host, spec = sys.argv[1], sys.argv[2]
for item in spec.split(","):
    sport, count, size, gap = (float(x) for x in item.split(":"))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sport)))
    for i in range(int(count)):
        s.sendto(bytes([i % 256]) * int(size), (host, 9999))
        time.sleep(gap)
    s.close()
"""


def send(peer_ns, flows):
    """flows: [(source port, packets, payload bytes, seconds between packets)]."""
    spec = ",".join(":".join(map(str, f)) for f in flows)
    subprocess.run(["ip", "netns", "exec", peer_ns, sys.executable, "-c", SENDER, HOST_IP, spec],
                   check=True, timeout=60)


def start_probe(veth, *args, backend: str = "") -> Running:
    """The probe on the veth, once it is capturing: a bound packet socket is not enough (a
    packet that comes before libpcap has set up its ring is lost), the capture loop's first
    status line is. ``backend``: "" (our ring, the default) or "pcap:" (libpcap)."""
    probe_ns, _, probe_if = veth
    run = Running(["ip", "netns", "exec", probe_ns, sys.executable, "-m", "engine", "-i",
                   backend + probe_if, "--dump-format", "json", "-b", "1", *args],
                  stdout=subprocess.PIPE)
    run.wait_for(r" pkts/s .* pkts, ")
    return run


def ours(flows_text, first_port, n):
    flows = [json.loads(line) for line in flows_text.splitlines()]
    return [f for f in flows if f.get("IPV4_SRC_ADDR") == NS_IP and f["PROTOCOL"] == 17
            and f["L4_DST_PORT"] == 9999 and first_port <= f["L4_SRC_PORT"] < first_port + n]


def status(line):
    """The numbers of a -b status line: packets, active flows, exported flows."""
    m = re.search(r" (\d+) pkts, (\d+) active flows, (\d+) exported, drops: ", line)
    return tuple(map(int, m.groups())) if m else None


def test_live_capture_counts_what_was_sent(veth):
    run = start_probe(veth)
    flows = [(40001, 10, 100, 0.002), (40002, 25, 1000, 0.002), (40003, 3, 10, 0.002)]
    send(veth[1], flows)
    # the statistics line shows the 38 packets once the probe has them (a second or so)
    run.wait_for(r" (3[89]|[4-9]\d|\d{3,}) pkts, ")
    run.proc.send_signal(signal.SIGINT)          # drains every flow, then exits 0
    out, err = run.finish()
    assert run.proc.returncode == 0, err
    assert "Traceback" not in err
    got = {f["L4_SRC_PORT"]: f for f in ours(out, 40001, 3)}
    assert sorted(got) == [40001, 40002, 40003], out
    for sport, count, size, _ in flows:
        f = got[sport]
        assert f["IN_PKTS"] == count and f["OUT_PKTS"] == 0
        assert f["IN_BYTES"] == count * (20 + 8 + size)     # veth frames carry no padding
        assert f["SEQ_PLEN"][0 if size <= 64 else 1 if size <= 128 else 4] == count
    # the per-second lines count up to the summary, whose numbers they end at
    lines = [s for s in map(status, err.splitlines()) if s]
    assert lines and all(a[0] <= b[0] for a, b in zip(lines, lines[1:]))
    summary = re.search(r"flowprobe: (\d+) packets .*, (\d+) flows, (\d+) flows (?:exported|finished)",
                        err.splitlines()[-1])
    assert summary and int(summary[1]) >= 38 and lines[-1][0] <= int(summary[1])
    assert int(summary[2]) == int(summary[3]) >= 3


def test_idle_and_lifetime_expiry_on_a_quiet_link(veth):
    """Nothing arrives after the last packet: the flows must still be exported by wall-clock
    time (FlowTable.expire on the capture's quiet polls), while the probe runs. A flow that
    keeps sending past the lifetime is exported in slices."""
    run = start_probe(veth, "-d", "2", "-t", "3")
    sent = time.time()
    send(veth[1], [(41001, 3, 50, 0.01)])
    idle = wait_until(lambda: ours(run.stdout(), 41001, 1), timeout=20,
                      what="the idle flow in the dump while the probe runs")
    waited = time.time() - sent
    assert run.proc.poll() is None
    (f,) = idle
    assert (f["IN_PKTS"], f["FLOW_END_REASON"]) == (3, 1)          # 1: idle timeout
    assert waited >= 2.0                                          # not before last + idle
    assert run.wait_for(r" 0 active flows, [1-9]\d* exported")   # and the table is empty
    # 9 packets over 4 s with a 3 s lifetime: a slice ends (active) while packets come
    send(veth[1], [(42001, 9, 50, 0.5)])
    slices = wait_until(lambda: len(ours(run.stdout(), 42001, 1)) >= 2 and
                        ours(run.stdout(), 42001, 1), timeout=20,
                        what="both slices of the long flow in the dump")
    run.proc.send_signal(signal.SIGINT)
    out, err = run.finish()
    assert run.proc.returncode == 0, err
    slices = sorted(ours(out, 42001, 1), key=lambda f: f["FLOW_START_MILLISECONDS"])
    assert [f["FLOW_END_REASON"] for f in slices] == [2, 1]       # active, then idle
    assert sum(f["IN_PKTS"] for f in slices) == 9
    assert slices[0]["FLOW_END_MILLISECONDS"] - slices[0]["FLOW_START_MILLISECONDS"] < 3000


def promiscuity(namespace: str, name: str) -> int:
    out = subprocess.run(["ip", "-d", "-n", namespace, "link", "show", name], check=True,
                         capture_output=True, text=True).stdout
    return int(re.search(r"promiscuity (\d+)", out)[1])


@pytest.mark.parametrize("backend", ["", "pcap:"], ids=["ring", "libpcap"])
def test_snaplen_and_promiscuous_mode(veth, backend):
    """-s 100: frames up to 100 bytes are counted as usual; longer ones are cut to 100 bytes.
    The ring knows their wire length, so they count in full; pcapy-ng gives none, so their IP
    header claims more than the frame holds: each is counted as ip_length_exceeds_frame, none
    goes missing. Promiscuous mode is on unless --no-promisc (the interface's promiscuity count
    while the probe runs)."""
    probe_ns, _, probe_if = veth
    for promisc, extra in ((1, ()), (0, ("--no-promisc",))):
        run = start_probe(veth, "-s", "100", *extra, backend=backend)
        assert promiscuity(probe_ns, probe_if) == promisc
        send(veth[1], [(43001, 5, 10, 0.002), (43002, 4, 500, 0.002)])
        run.wait_for(r" (9|[1-9]\d+) pkts, ")
        run.proc.send_signal(signal.SIGINT)
        out, err = run.finish()
        assert run.proc.returncode == 0, err
        (small,) = ours(out, 43001, 1)
        assert (small["IN_PKTS"], small["IN_BYTES"]) == (5, 5 * 38)
        if not backend:
            (big,) = ours(out, 43002, 1)
            assert (big["IN_PKTS"], big["IN_BYTES"]) == (4, 4 * 528)
            continue
        assert not ours(out, 43002, 1)
        # the 4 long ones, and the ICMP errors the peer's stack sends back for the closed port
        exceeds = int(re.search(r"ip_length_exceeds_frame=(\d+)", err.splitlines()[-1])[1])
        assert exceeds >= 4, err
