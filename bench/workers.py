"""``python -m bench workers``: packets/s of `-g` with 1 and 2 worker processes.

File: `flowprobe -n none -b 1 -i CAPTURE` without -g, with `-g C0` and with `-g C0,C1`, run in
turn (side by side, interleaved, --repeat times) on the same generated capture (page cache warm).
Two rates per run: end to end (packets / the flowprobe process's wall time, interpreter and
worker start-up included)
and worker (packets / the slowest worker's time from its capture opened to its table flushed).
Live (--live, root): the capture replayed by tcpreplay --topspeed from one network namespace to a
veth in another where the probe runs; rate = packets the probe accounted / tcpreplay's duration,
with the kernel's drops.

Wiring (bench/__main__.py): SUBCOMMANDS["workers"] = "bench.workers".
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid

from bench import common

HELP = "packets/s with 1 and 2 worker processes (-g), from a file and live on veth"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--packets", type=int, default=1_000_000)
    p.add_argument("--flows", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--capture", help="use this capture instead of generating one")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--live", action="store_true", help="also replay on a veth pair (root)")
    p.add_argument("--cores", help="the two cores to use (default: the first two available)")
    p.add_argument("--output", help="write the results as JSON here (default: bench/results/"
                                    "workers-DATE.json and .md)")


SUMMARY = re.compile(r"(\d+) packets \(.*?\) in ([\d.]+) s")
WORKER = re.compile(r"worker (\d+) core (\d+) pid \d+: .*?(\d+) pkts, .*kernel drops (\d+), "
                    r"up ([\d.]+) s")
HANDOFF = re.compile(r"hand-off: (\d+) messages, (\d+) flows, .*parent CPU ([\d.]+) s")


def probe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def parse(stderr: str) -> dict:
    lines = stderr.splitlines()
    m = SUMMARY.search([x for x in lines if SUMMARY.search(x)][-1])
    out = {"packets": int(m[1]), "elapsed_s": float(m[2])}
    workers = {}
    for line in lines:                      # the last line of each worker: its final numbers
        w = WORKER.search(line)
        if w:
            workers[int(w[1])] = {"core": int(w[2]), "packets": int(w[3]),
                                  "kernel_drops": int(w[4]), "busy_s": float(w[5])}
    out["workers"] = [workers[k] for k in sorted(workers)]
    h = [HANDOFF.search(x) for x in lines if HANDOFF.search(x)]
    if h:
        out["handoff"] = {"messages": int(h[-1][1]), "flows": int(h[-1][2]),
                          "parent_cpu_s": float(h[-1][3])}
    return out


def file_run(capture: str, g: list[str]) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run(probe_cmd(*g, "-b", "2", "-n", "none", "-i", capture), cwd=common.ROOT,
                       capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"flowprobe {' '.join(g)} failed: {r.stderr[-2000:]}")
    d = parse(r.stderr)
    d["process_wall_s"] = wall
    d["pps_end_to_end"] = d["packets"] / wall      # interpreter start to exit
    if d["workers"]:
        d["pps_workers"] = d["packets"] / max(w["busy_s"] for w in d["workers"])
    else:
        d["pps_workers"] = d["pps_end_to_end"]
    return d


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


def live_run(capture: str, g: list[str]) -> dict:
    tag = uuid.uuid4().hex[:6]
    pns, qns, pif, qif = f"bwp{tag}", f"bwq{tag}", f"bwa{tag}", f"bwb{tag}"
    try:
        _sh("ip", "netns", "add", pns)
        _sh("ip", "netns", "add", qns)
        _sh("ip", "link", "add", pif, "netns", pns, "type", "veth", "peer", "name", qif,
            "netns", qns)
        _sh("ip", "-n", pns, "link", "set", pif, "up")
        _sh("ip", "-n", qns, "link", "set", qif, "up")
        probe = subprocess.Popen(["ip", "netns", "exec", pns, *probe_cmd(
            *g, "-b", "2", "-n", "none", "-i", pif)], cwd=common.ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)                   # workers started and joined the fanout group
        t0 = time.perf_counter()
        rep = subprocess.run(["ip", "netns", "exec", qns, "tcpreplay", "-i", qif, "--topspeed",
                              capture], capture_output=True, text=True, timeout=900)
        replay_s = time.perf_counter() - t0
        time.sleep(2.0)                   # the last packets are read
        probe.send_signal(signal.SIGINT)
        _, err = probe.communicate(timeout=120)
    finally:
        for ns in (pns, qns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    sent = re.search(r"Actual: (\d+) packets .*? ([\d.]+) seconds", rep.stdout)
    d = parse(err)
    d["sent"] = int(sent[1]) if sent else None
    d["replay_s"] = float(sent[2]) if sent else replay_s
    d["kernel_drops"] = sum(w["kernel_drops"] for w in d["workers"])
    d["pps_accounted"] = d["packets"] / d["replay_s"]
    return d


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def run(args) -> int:
    if args.capture:
        capture = args.capture
    else:
        from bench.engine import ensure_capture
        capture = str(ensure_capture(args.seed, args.packets, args.flows))
    cores = ([int(c) for c in args.cores.split(",")] if args.cores
             else sorted(os.sched_getaffinity(0))[:2])
    if len(cores) < 2:
        cores = cores * 2
    configs = {"one process (no -g)": [], "1 worker": ["-g", str(cores[0])],
               "2 workers": ["-g", f"{cores[0]},{cores[1]}"]}
    results = {"machine": common.machine(), "capture": capture, "cores": cores,
               "file": {k: [] for k in configs}, "live": {}}
    file_run(capture, [])                  # page cache warm
    for i in range(args.repeat):
        for name, g in configs.items():    # interleaved: load changes hit every config alike
            d = file_run(capture, g)
            results["file"][name].append(d)
            print(f"file {name}: {d['pps_end_to_end']:.0f} pkts/s end to end, "
                  f"{d['pps_workers']:.0f} pkts/s workers", file=sys.stderr)
    if args.live:
        if os.geteuid() != 0 or not shutil.which("tcpreplay"):
            print("live: skipped (needs root and tcpreplay)", file=sys.stderr)
        else:
            results["live"] = {k: [] for k in ("1 worker", "2 workers")}
            for i in range(args.repeat):
                for name in ("1 worker", "2 workers"):
                    d = live_run(capture, configs[name])
                    results["live"][name].append(d)
                    print(f"live {name}: {d['pps_accounted']:.0f} pkts/s accounted, "
                          f"{d['packets']}/{d['sent']} packets, kernel drops "
                          f"{d['kernel_drops']}", file=sys.stderr)
    md = markdown(results)
    print(md)
    out = args.output or str(common.RESULTS / f"workers-{common.today()}.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(md)
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# -g scaling ({m['cpu_model']}, {m['usable_cpus']} usable CPUs; capture "
             f"{os.path.basename(r['capture'])}); medians of {len(r['file']['1 worker'])} runs",
             "", "| input | configuration | pkts/s end to end | pkts/s workers | scaling vs 1 "
             "worker (end to end / workers) |", "|---|---|---|---|---|"]
    f = r["file"]
    base_e, base_w = _median(f["1 worker"], "pps_end_to_end"), _median(f["1 worker"], "pps_workers")
    for name, runs in f.items():
        e, w = _median(runs, "pps_end_to_end"), _median(runs, "pps_workers")
        lines.append(f"| file | {name} | {e:,.0f} | {w:,.0f} | {e / base_e:.2f}x / "
                     f"{w / base_w:.2f}x |")
    if r["live"]:
        base = _median(r["live"]["1 worker"], "pps_accounted")
        for name, runs in r["live"].items():
            p = _median(runs, "pps_accounted")
            drops = max(x["kernel_drops"] for x in runs)
            sent = runs[0]["sent"]
            got = _median(runs, "packets")
            lines.append(f"| live veth (tcpreplay --topspeed) | {name} | {p:,.0f} accounted "
                         f"({got:,.0f} of {sent:,} sent, kernel drops up to {drops:,}) | | "
                         f"{p / base:.2f}x |")
    h = [x["handoff"] for x in f["2 workers"] if "handoff" in x]
    if h:
        per = statistics.median(x["parent_cpu_s"] / max(x["flows"], 1) * 1e9 for x in h)
        lines += ["", f"Parent (exporter side, `-n none`): {per:.0f} ns CPU per flow received "
                      f"({h[0]['flows']:,} flows in {h[0]['messages']:,} messages)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=HELP)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
