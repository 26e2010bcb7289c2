"""``python -m bench soak``: a long live run at a steady rate, with memory and descriptors sampled.

What a headless probe on an appliance does for weeks, for --minutes (default 10): a seeded capture
(bench.engine.ensure_capture) replayed in a loop by tools/pcap-replay at --rate packets/s from one
network namespace onto a veth pair; `flowprobe -i IFACE --zmq tcp://127.0.0.1:PORT` captures it in
the other (the TPACKET_V3 ring), with a ZeroMQ subscriber reading every message there, as ntopng
would. The flows repeat with every loop of the capture and the probe's clock is the kernel's, so
flows are created, expire (idle -d, lifetime -t) and are exported the whole time: the flow table,
the feature pool and the export path churn as on a real link.

Every --sample seconds: the probe's resident memory (VmRSS) and open file descriptors (/proc), and
its counters from `--dump-stats` (packets, kernel drops, active flows, flows exported, export drops).
At the end: packets sent (the generator's report) against packets received, every drop counter, and
the RSS/fd curve with its drift (the last quarter's mean against the second quarter's: start-up
and the first table fill are not drift).

Results: markdown on stdout; JSON (machine, every sample) in bench/work/soak-last.json, with --save
bench/results/soak-DATE.{md,json}. Needs root and iproute2 (namespaces), gcc and libpcap-dev.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from bench import common

sys.path.insert(0, str(common.ROOT / "tools"))
import loadgen  # noqa: E402

HELP = "a long live run at a steady rate: RSS and file descriptors sampled, loss accounted"

SUBSCRIBER = """
import sys, zmq
s = zmq.Context().socket(zmq.SUB)
s.setsockopt(zmq.SUBSCRIBE, b"")
s.setsockopt(zmq.RCVTIMEO, 500)
s.connect(sys.argv[1])
messages = nbytes = 0
stop = False
import signal
signal.signal(signal.SIGTERM, lambda *a: globals().update(stop=True))
while not stop:
    try:
        for part in s.recv_multipart():
            nbytes += len(part)
        messages += 1
    except zmq.Again:
        pass
print(messages, nbytes, flush=True)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    p.add_argument("--rate", type=float, default=100_000, help="packets/s offered (default 100k)")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples (10)")
    p.add_argument("--no-features", action="store_true", help="run the probe with --no-features")
    p.add_argument("--save", action="store_true", help="write bench/results/soak-DATE.{md,json}")


def _proc(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open descriptors) of ``pid``."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _free_port() -> int:
    with socket.socket() as s:      # a port free here is free in a new namespace too
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drift(samples: list[dict], key: str) -> float:
    """The last quarter's mean over the second quarter's, minus one (0.01: grew 1%)."""
    n = len(samples)
    if n < 4:
        return 0.0
    second = [s[key] for s in samples[n // 4: n // 2]]
    last = [s[key] for s in samples[3 * n // 4:]]
    return (sum(last) / len(last)) / max(sum(second) / len(second), 1) - 1


def run(args) -> int:
    if os.geteuid() != 0:
        print("bench soak: needs root (it makes network namespaces)", file=sys.stderr)
        return 2
    from bench.engine import ensure_capture
    capture = str(ensure_capture(1, 1_000_000, 100_000))
    loops = max(1, round(args.rate * args.minutes * 60 / 1_000_000))
    cpus = sorted(os.sched_getaffinity(0))
    loadgen.build()
    common.WORK.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    samples: list[dict] = []
    with loadgen.veth_pair("sk") as (ns, peer_ns, iface, peer_if), \
            tempfile.TemporaryDirectory() as tmp:
        stats_file = os.path.join(tmp, "stats.json")
        cmd = ["taskset", "-c", str(cpus[0]), sys.executable, "-m", "engine", "-i", iface,
               "--zmq", f"tcp://127.0.0.1:{port}", "--dump-stats", stats_file,
               "--dump-stats-interval", str(max(1.0, args.sample / 2))]
        if args.no_features:
            cmd.append("--no-features")
        env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
        probe = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], cwd=common.ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        sub = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SUBSCRIBER,
                                f"tcp://127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True)
        sent: dict = {}
        try:
            deadline = time.monotonic() + 60
            while not loadgen.capture_sockets(ns, iface):
                if probe.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the probe did not start: {probe.stderr.read()[-2000:]}")
                time.sleep(0.05)
            gen = threading.Thread(target=lambda: sent.update(loadgen.replay(
                peer_if, capture, rate=args.rate, loops=loops, cpu=cpus[-1], netns=peer_ns,
                timeout=args.minutes * 60 * 2 + 120)))
            t0 = time.monotonic()
            gen.start()
            while gen.is_alive():
                gen.join(args.sample)
                rss, fds = _proc(probe.pid)     # `ip netns exec` and taskset exec: the probe's pid
                try:
                    with open(stats_file) as f:
                        st = json.load(f)
                except (OSError, ValueError):
                    st = {}
                samples.append({"t": round(time.monotonic() - t0, 1), "rss_kib": rss, "fds": fds,
                                "packets": st.get("packets"),
                                "kernel_drops": st.get("kernel_drops"),
                                "active_flows": st.get("active_flows"),
                                "exported_flows": st.get("exported_flows")})
                print(f"# {samples[-1]}", file=sys.stderr)
            time.sleep(2.0)                      # the last ring block is handed over
        finally:
            if probe.poll() is None:
                probe.send_signal(signal.SIGINT)
            _, err = probe.communicate(timeout=120)
            time.sleep(1.0)                      # the subscriber reads what the exit flushed
            sub.send_signal(signal.SIGTERM)
            out, _ = sub.communicate(timeout=30)
    summary = [x for x in err.splitlines() if x.startswith("flowprobe: ") and " packets (" in x]
    if not summary or not sent:
        print(f"bench soak: no summary from the probe: {err[-2000:]}", file=sys.stderr)
        return 1
    received = int(summary[-1].split(": ", 1)[1].split(" packets")[0])
    messages = int(out.split()[0]) if out.split() else 0
    result = {"machine": common.machine(), "capture": capture, "rate": args.rate,
              "minutes": args.minutes, "features": not args.no_features, "sent": sent,
              "received": received, "lost": sent["packets"] - received, "summary": summary[-1],
              "zmq_messages_received": messages, "samples": samples,
              "rss_drift": drift(samples, "rss_kib"), "fd_drift": drift(samples, "fds")}
    md = markdown(result)
    print(md)
    base = common.RESULTS / f"soak-{common.today()}" if args.save else common.WORK / "soak-last"
    common.write_json(base.with_suffix(".json"), result)
    base.with_suffix(".md").write_text(md)
    return 0 if result["lost"] == 0 else 1


def markdown(r: dict) -> str:
    m, s = r["machine"], r["samples"]
    rss = [x["rss_kib"] for x in s]
    fds = [x["fds"] for x in s]
    lines = [f"# Soak: {r['minutes']:g} minutes of live capture at {common.fmt_rate(r['rate'])} "
             f"packets/s ({m['cpu_model']}, {m['usable_cpus']} usable CPUs, kernel {m['kernel']})",
             "", f"- sent {r['sent']['packets']:,} packets at {common.fmt_rate(r['sent']['pps'])}"
             f"/s, received {r['received']:,}, lost {r['lost']:,}",
             f"- the probe's summary: `{r['summary']}`",
             f"- the subscriber read {r['zmq_messages_received']:,} ZeroMQ messages",
             f"- RSS {min(rss) / 1024:.1f}-{max(rss) / 1024:.1f} MiB, drift "
             f"{r['rss_drift'] * 100:+.2f}% (last quarter vs second); descriptors "
             f"{min(fds)}-{max(fds)}, drift {r['fd_drift'] * 100:+.2f}%", "",
             "| t (s) | RSS (MiB) | fds | packets | kernel drops | active flows | exported |",
             "|---|---|---|---|---|---|---|"]
    step = max(1, len(s) // 20)
    for x in s[::step] + ([s[-1]] if (len(s) - 1) % step else []):
        lines.append(f"| {x['t']:.0f} | {x['rss_kib'] / 1024:.1f} | {x['fds']} | "
                     f"{x['packets'] or 0:,} | {x['kernel_drops'] or 0:,} | "
                     f"{x['active_flows'] or 0:,} | {x['exported_flows'] or 0:,} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench soak", description=HELP)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
