"""The collector beside nfcapd: records per CPU-second and loss at a set rate, in one run.

tools/nf-send (sendmmsg, NetFlow v9 datagrams of 30 records) offers the same load at RATE records/s
for SECONDS to each receiver in turn, repetitions interleaved: nfcapd (Debian's nfdump, storing
uncompressed files) and flowprobe collecting in passthrough (TLV, plain and zlib), --disable-cache
and cache mode, exporting to a ZeroMQ subscriber process that only counts (bench/realistic.py's).
CPU is the receiver's own (/proc/PID/stat, user + system) over the run; records are what it says
it received (nfdump -I on nfcapd's files; flowprobe's summary line); lost = offered - received
(the kernel's UDP drops).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from bench import common, engine
from bench.realistic import Drain

HELP = "collector records per CPU-second beside nfcapd on the same NetFlow v9 load"

ROWS = {   # label -> flowprobe arguments after the collector port
    "passthrough, TLV": ["--collector-passthrough", "--zmq-disable-compression"],
    "passthrough, TLV + zlib": ["--collector-passthrough"],
    "--disable-cache, TLV": ["--disable-cache", "--zmq-disable-compression"],
    "cache, TLV": ["--zmq-disable-compression"],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=1_000_000, help="records/s offered (1 M)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", help="default bench/work/vs-nfcapd-last.json")


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def _bound(port: int) -> bool:
    from engine.collect.receive import udp_socket_rows
    return any(r[1].endswith(f":{port:04X}") for r in udp_socket_rows())


def _wait_bound(port: int, proc) -> None:
    deadline = time.monotonic() + 30
    while not _bound(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"receiver did not bind UDP {port}: {proc.args}")
        time.sleep(0.05)


def _nfcapd(rate: float, seconds: float) -> dict:
    from loadgen import nf_send        # tools/, on the path from run()
    port = common.free_port(socket.SOCK_DGRAM)
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.Popen([shutil.which("nfcapd") or "/usr/bin/nfcapd", "-w", d, "-p",
                              str(port), "-B", str(64 << 20)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        _wait_bound(port, p)
        c0 = _cpu(p.pid)
        sent = nf_send(port, 9, rate, seconds)
        time.sleep(1.0)
        cpu = _cpu(p.pid) - c0
        p.send_signal(signal.SIGTERM)
        p.wait(30)
        out = subprocess.run(["nfdump", "-R", d, "-I"], capture_output=True, text=True).stdout
    m = re.search(r"^Flows:\s+(\d+)", out, re.M)
    return {"sent": sent["records"], "received": int(m.group(1)) if m else 0, "cpu_s": cpu,
            "offered_per_s": sent["records_per_s"]}


def _flowprobe(extra: list[str], rate: float, seconds: float) -> dict:
    from loadgen import nf_send        # tools/, on the path from run()
    port = common.free_port(socket.SOCK_DGRAM)
    drain = Drain()
    p = subprocess.Popen(engine.flowprobe_cmd() + [
        "-i", "none", "--collector-port", f"127.0.0.1:{port}", "--zmq",
        f"tcp://127.0.0.1:{drain.port}", "--zmq-stats-interval", "0", "-d", "1"] + extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=str(common.ROOT))
    _wait_bound(port, p)
    time.sleep(0.5)                    # the subscriber's subscription
    c0 = _cpu(p.pid)
    sent = nf_send(port, 9, rate, seconds)
    time.sleep(1.5)                    # the last batch, and the cache's 1 s idle timeout
    cpu = _cpu(p.pid) - c0
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=60)[1]
    drain.finish()
    m = re.search(r"(\d+) records from", err)
    return {"sent": sent["records"], "received": int(m.group(1)) if m else 0, "cpu_s": cpu,
            "offered_per_s": sent["records_per_s"], "summary": err.strip().splitlines()[-1]}


def run(args) -> int:
    sys.path.insert(0, str(common.ROOT / "tools"))
    rows = {"nfcapd (nfdump 1.7, files uncompressed)": lambda: _nfcapd(args.rate, args.seconds)}
    for label, extra in ROWS.items():
        rows[f"flowprobe {label}"] = (lambda e: lambda: _flowprobe(e, args.rate, args.seconds))(
            extra)
    runs: dict[str, list] = {k: [] for k in rows}
    for i in range(args.reps):
        for k, fn in rows.items():
            r = fn()
            runs[k].append(r)
            print(f"# {i + 1}/{args.reps} {k}: {r['received']}/{r['sent']} records, "
                  f"{r['cpu_s']:.2f} CPU-s", file=sys.stderr, flush=True)
    lines = [f"### Collector beside nfcapd: NetFlow v9, 30 records a datagram, offered at "
             f"{args.rate / 1e6:g} M records/s for {args.seconds:g} s (tools/nf-send), "
             f"{args.reps} repetitions, median (min-max)", "",
             "| receiver | records per CPU-second | vs nfcapd | lost (kernel) |",
             "|---|---|---|---|"]
    med = {}
    for k, rs in runs.items():
        s = common.summary([r["received"] / r["cpu_s"] for r in rs if r["cpu_s"] > 0])
        med[k] = s["median"]
        lost = [r["sent"] - r["received"] for r in rs]
        lines.append(f"| {k} | {common.fmt_summary(s)} | "
                     f"{s['median'] / med[next(iter(runs))]:.2f}x | "
                     f"{min(lost):,}-{max(lost):,} of {rs[0]['sent']:,} |")
    print("\n".join(lines))
    common.write_json(pathlib.Path(args.json or common.WORK / "vs-nfcapd-last.json"),
                      {"benchmark": "vs-nfcapd", "rate": args.rate, "seconds": args.seconds,
                       "runs": runs, "machine": common.machine()})
    return 0
