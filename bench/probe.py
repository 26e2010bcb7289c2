"""Probe table: packets/s and flows/s of the `flowprobe` command on a capture (the seeded generated
one, or --pcap), features on/off, 1..N pinned workers (-g), and in the same run the installed
peers (softflowd, nfstream, pmacctd), each row with its CPU time and peak memory.

Every row is a whole command (or, for nfstream, a whole Python process) timed with os.wait4:
wall time, CPU time (user + system, waited-for children included) and peak RSS. Repetitions are
interleaved across rows so that load from other work hits all rows alike; median (min-max).
The building blocks (capture generation, softflowd's loopback receiver, the nfstream worker) are
bench/engine.py's.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time

from bench import common, engine

HELP = "packets/s and flows/s of flowprobe (features, workers) beside softflowd, nfstream, pmacctd"

FULL = {"packets": 2_000_000, "flows": 200_000, "reps": 3}
QUICK = {"packets": 200_000, "flows": 20_000, "reps": 1}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="200k-packet capture, one repetition")
    p.add_argument("--pcap", help="benchmark this capture instead of the generated one")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reps", type=int, help="repetitions per row (default 3, quick 1)")
    p.add_argument("--no-peers", action="store_true", help="flowprobe rows only")
    p.add_argument("--json", help="write the results here (default bench/work/probe-last.json)")


def _workers_available() -> bool:
    r = common.run_child(engine.flowprobe_cmd() + ["--help"], capture_stdout=True, timeout=60)
    return "--cpu-affinity" in r.stdout


def _pmacctd() -> str | None:
    return shutil.which("pmacctd") or ("/usr/sbin/pmacctd" if os.path.exists("/usr/sbin/pmacctd")
                                       else None)


def run_pmacctd(pcap: pathlib.Path) -> common.ChildResult:
    """pmacctd reading the file, 5-tuple aggregation, print plugin to a CSV file."""
    with tempfile.TemporaryDirectory() as d:
        r = common.run_child([_pmacctd(), "-I", str(pcap), "-c",
                              "src_host,dst_host,src_port,dst_port,proto", "-P", "print", "-O",
                              "csv", "-o", os.path.join(d, "out.csv")], timeout=300)
    # its print plugin purges the cache in parts (entries per purge in its log): the total of
    # flows is not reliable, so none is reported
    qn = [int(x) for x in re.findall(r"QN: (\d+)/", r.stderr)]
    r.extra = {"flows": None, "purge_entries": qn, "note": "unidirectional aggregates"}
    if r.returncode != 0:
        raise RuntimeError(f"pmacctd failed ({r.returncode}): {r.stderr[-800:]}")
    return r


def measure(quick: bool = False, pcap: str | None = None, reps: int | None = None,
            seed: int = 1, peers: bool = True) -> dict:
    cfg = dict(QUICK if quick else FULL)
    reps = reps or cfg["reps"]
    path = pathlib.Path(pcap).resolve() if pcap else engine.ensure_capture(
        seed, cfg["packets"], cfg["flows"])
    side = engine.sidecar(path)
    ncpu = len(os.sched_getaffinity(0))
    # without nDPI, like the peers beside it (bench/realistic.py has a row with it)
    base = engine.flowprobe_cmd() + ["-i", str(path), "-n", "none", "--disable-l7"]
    rows: dict[str, dict] = {}

    def add(key, label, kind, fn):
        rows[key] = {"label": label, "kind": kind, "fn": fn, "runs": []}

    def fp(extra):
        def go():
            r = common.run_child(base + extra)
            if r.returncode != 0:
                raise RuntimeError(f"flowprobe failed ({r.returncode}): {r.stderr[-1500:]}")
            r.extra = engine._parse_summary(r.stderr)
            return r
        return go

    add("fp_features", "flowprobe -n none", "flowprobe", fp([]))
    add("fp_nofeatures", "flowprobe -n none --no-features", "flowprobe", fp(["--no-features"]))
    if _workers_available():
        cpus = sorted(os.sched_getaffinity(0))
        for n in range(1, ncpu + 1):
            cores = ",".join(map(str, cpus[:n]))
            add(f"fp_g{n}", f"flowprobe -n none -g {cores} ({n} worker{'s' if n > 1 else ''})",
                "flowprobe", fp(["-g", cores]))
    skipped = {}
    if peers:
        if shutil.which("softflowd") or os.path.exists("/usr/sbin/softflowd"):
            add("softflowd", "softflowd -r FILE -v 9 -c none (export to loopback)", "peer",
                lambda: engine.run_softflowd(path, 262144))
        else:
            skipped["softflowd"] = "not installed"
        if importlib.util.find_spec("nfstream"):
            add("nfstream", "nfstream, statistical_analysis=False, n_dissections=0", "peer",
                lambda: engine._worker("nfstream", path, "--dissections", "0"))
        else:
            skipped["nfstream"] = "not installed (pip install nfstream)"
        if _pmacctd():
            add("pmacctd", "pmacctd -I FILE -P print (5-tuple)", "peer", lambda: run_pmacctd(path))
        else:
            skipped["pmacctd"] = "not installed"
    for _ in range(reps):
        for key, row in rows.items():
            r = row["fn"]()
            row["runs"].append(r)
    n_packets = side.get("packets")
    if n_packets is None:                # no sidecar: the packets flowprobe read
        n_packets = rows["fp_features"]["runs"][0].extra.get("packets")
    out = {"benchmark": "probe", "capture": {
        "path": os.path.relpath(path, common.ROOT), "bytes": path.stat().st_size,
        "packets": n_packets, "flows": side.get("flows"),
        "seed": side.get("seed", seed) if not pcap else None},
        "reps": reps, "rows": [], "skipped": skipped}
    for key, row in rows.items():
        runs = row["runs"]
        pk = [r.extra.get("packets", n_packets) or n_packets for r in runs]
        fl = [r.extra.get("flows") for r in runs]
        d = {"key": key, "label": row["label"], "kind": row["kind"],
             "wall_s": common.summary([r.wall_s for r in runs]),
             "cpu_s": common.summary([r.cpu_s for r in runs]),
             "maxrss_bytes": common.summary([r.maxrss_bytes for r in runs]),
             "packets": pk[0], "flows": fl[0],
             "pkts_per_s": common.summary([n_packets / r.wall_s for r in runs]) if n_packets
             else {"n": 0},
             "flows_per_s": common.summary([f / r.wall_s for f, r in zip(fl, runs) if f])
             if fl[0] else {"n": 0},
             "pkts_per_cpu_s": common.summary([n_packets / r.cpu_s for r in runs if r.cpu_s])
             if n_packets else {"n": 0},
             "detail": [r.extra for r in runs]}
        out["rows"].append(d)
        print(f"# {time.strftime('%H:%M:%S')} probe {row['label']}: "
              f"{common.fmt_summary(d['pkts_per_s'])} pkts/s", file=sys.stderr, flush=True)
    return out


def markdown(res: dict) -> str:
    cap = res["capture"]
    lines = [f"### Probe: `{cap['path']}` ({cap['packets']:,} packets, "
             f"{cap['flows'] if cap['flows'] is None else format(cap['flows'], ',')} flows, "
             f"{cap['bytes'] / 1e6:.0f} MB), whole commands, {res['reps']} repetition(s): "
             "median (min-max)", "",
             "| command | packets/s | flows/s | flows out | wall time | CPU time | "
             "packets per CPU-second | peak RSS |", "|---|---|---|---|---|---|---|---|"]
    for d in res["rows"]:
        if d["key"] == "pmacctd":          # see run_pmacctd: its flow count is not reliable
            d = dict(d, flows=None, flows_per_s={"n": 0})
        lines.append(f"| {d['label']} | {common.fmt_summary(d['pkts_per_s'])} | "
                     f"{common.fmt_summary(d['flows_per_s'])} | "
                     f"{d['flows'] if d['flows'] is not None else 'n/a'} | "
                     f"{common.fmt_summary(d['wall_s'], lambda x: '%.2f s' % x)} | "
                     f"{common.fmt_summary(d['cpu_s'], lambda x: '%.2f s' % x)} | "
                     f"{common.fmt_summary(d['pkts_per_cpu_s'])} | "
                     f"{d['maxrss_bytes']['median'] / 1e6:.0f} MB |")
    for k, why in res.get("skipped", {}).items():
        lines.append(f"| {k} | skipped: {why} | | | | | | |")
    lines += ["", "Flows out: flowprobe's exported flows (bidirectional); softflowd's expired "
              "flows; nfstream's flows; pmacctd: not counted (its print plugin purges its cache of "
              "unidirectional 5-tuple aggregates in parts), and its wall time includes the "
              "plugin's exit wait, so compare its CPU time (which counts its plugin processes only "
              "when pmacctd reaps them, hence its spread). Peak RSS "
              "includes the capture's mapped pages where a tool maps the file."]
    return "\n".join(lines)


def run(args) -> int:
    res = measure(args.quick, args.pcap, args.reps, args.seed, not args.no_peers)
    res["machine"] = common.machine()
    print(markdown(res))
    common.write_json(pathlib.Path(args.json or common.WORK / "probe-last.json"), res)
    return 0
