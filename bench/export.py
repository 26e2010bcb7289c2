"""ZeroMQ export: flows/s encoded and sent per format (TLV, JSON, msgpack), with and without zlib,
into a real subscriber process, checking that every flow is received or counted as dropped."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np

from bench import common
from bench.common import WORK

HELP = "flows/s exported over ZeroMQ per format, with/without compression, zero unaccounted loss"

SUB_CODE = r"""
import os, sys, json, time
from engine.subscribe import Subscriber, flows_of
if len(sys.argv) > 3 and hasattr(os, "sched_setaffinity"):    # optional core to pin to
    os.sched_setaffinity(0, {int(sys.argv[3])})
n = 0; msgs = 0; first = last = None; marks = []
with Subscriber(sys.argv[1]) as sub:
    print("ready", flush=True)
    m = sub.recv(60.0)                          # the first message may take a while
    while m is not None:
        msgs += 1
        if m.topic == "flow":
            n += len(flows_of(m))
            last = time.monotonic()
            marks.append((last, n))
            if first is None:
                first = last
        m = sub.recv(float(sys.argv[2]))        # then: ends after this long without one
# steady state: from the message that takes the count past 10% of the flows to the one past 90%
a = next((m for m in marks if m[1] >= 0.1 * n), None)
b = next((m for m in marks if m[1] >= 0.9 * n), None)
print(json.dumps({"flows": n, "messages": msgs, "first_flow_t": first, "last_flow_t": last,
                  "steady_flows": b[1] - a[1] if a and b else 0,
                  "steady_s": b[0] - a[0] if a and b else 0}), flush=True)
"""


def add_arguments(p) -> None:
    p.add_argument("--pcap", help="capture to take flow records from (default: the bench capture "
                                  "in bench/work, else the largest development pcap)")
    p.add_argument("--quick", action="store_true", help="30k records a run, one repetition")
    p.add_argument("--flows", type=int, help="records to export per run (default 200k, quick 30k)")
    p.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    p.add_argument("--formats", default="t,j,m")
    p.add_argument("--json", action="store_true", help="print results as JSON")


def _records(path: str, limit: int) -> np.ndarray:
    from engine.probe import capture_records
    recs, _ = capture_records(path, max_flows=1 << 20)
    if len(recs) < limit:                       # repeat to reach the requested count
        recs = np.concatenate([recs] * (limit // len(recs) + 1))
    return recs[:limit]


def _default_pcap() -> str:
    """The bench capture if one was built (bench/work), else the project's demo capture."""
    cands = sorted(WORK.glob("*.pcap"))
    return str(cands[0]) if cands else str(common.ROOT / "data" / "demo.pcap")


def one(records: np.ndarray, fmt: str, compress: bool) -> dict:
    from engine.export.zmq import ZMQExporter
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    sub = subprocess.Popen([sys.executable, "-c", SUB_CODE, url, "2"], stdout=subprocess.PIPE,
                           text=True)
    sub.stdout.readline()
    exp = ZMQExporter([url], fmt={"t": "tlv", "j": "json", "m": "msgpack"}.get(fmt, fmt), compress=compress, wait_subscriber=10,
                      stats_interval=0, offline=True, sndhwm=10000)
    exp.export(records[:1])                     # waits for the subscription
    t0 = time.perf_counter(); c0 = time.process_time()
    step = 8192
    for i in range(1, len(records), step):
        exp.export(records[i:i + step])
    exp.close()
    wall = time.perf_counter() - t0; cpu = time.process_time() - c0
    st = exp.final
    got = json.loads(sub.communicate(timeout=120)[0].splitlines()[-1])
    dropped = st["zmq_drops_queue_full"] + st["zmq_drops_no_subscriber"]
    return {"format": fmt, "compress": compress, "flows": len(records), "wall_s": wall,
            "cpu_s": cpu, "flows_per_s": (len(records) - 1) / wall, "received": got["flows"],
            "dropped_counted": dropped, "unaccounted": len(records) - got["flows"] - dropped,
            "messages": st["zmq_messages"]}


FULL = {"flows": 200_000, "reps": 3}
QUICK = {"flows": 30_000, "reps": 1}


def measure(quick: bool = False, pcap=None, flows=None, reps=None, formats="t,j,m") -> dict:
    cfg = QUICK if quick else FULL
    flows = flows or cfg["flows"]
    reps = reps or cfg["reps"]
    path = pcap or _default_pcap()
    records = _records(path, flows)
    cases = [(f, c) for f in formats.split(",") for c in (False, True)]
    runs = {case: [] for case in cases}
    for _ in range(reps):                       # interleaved repetitions
        for case in cases:
            runs[case].append(one(records, *case))
    rows = []
    for (fmt, compress), rs in runs.items():
        rows.append({"format": fmt, "compress": compress,
                     "flows_per_s": common.summary([r["flows_per_s"] for r in rs]),
                     "flows_per_cpu_s": common.summary([r["flows"] / r["cpu_s"] for r in rs
                                                        if r["cpu_s"] > 0]),
                     "sent": sum(r["flows"] for r in rs),
                     "received": sum(r["received"] for r in rs),
                     "dropped_counted": sum(r["dropped_counted"] for r in rs),
                     "unaccounted": sum(r["unaccounted"] for r in rs),
                     "messages": rs[0]["messages"], "runs": rs})
    import os
    return {"benchmark": "export", "pcap": os.path.relpath(path, common.ROOT),
            "flows_per_run": flows, "reps": reps, "rows": rows}


FORMAT_NAMES = {"t": "TLV", "j": "JSON", "m": "msgpack"}


def markdown(res: dict) -> str:
    lines = [f"### Export: flows/s encoded and sent into a ZeroMQ subscriber process "
             f"({res['flows_per_run']:,} flow records from `{res['pcap']}` a run, "
             f"{res['reps']} repetition(s): median (min-max))", "",
             "| --zmq-format | compression | flows/s | flows per CPU-second (exporter) | "
             "messages a run | sent | received | counted drops | unaccounted |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| `{r['format']}` ({FORMAT_NAMES.get(r['format'], r['format'])}) | "
                     f"{'zlib' if r['compress'] else 'none (--zmq-disable-compression)'} | "
                     f"{common.fmt_summary(r['flows_per_s'])} | "
                     f"{common.fmt_summary(r['flows_per_cpu_s'])} | {r['messages']} | "
                     f"{r['sent']:,} | {r['received']:,} | {r['dropped_counted']:,} | "
                     f"{r['unaccounted']:,} |")
    lines += ["", "The exporter (engine.export.zmq.ZMQExporter, as `flowprobe --zmq` uses it) runs "
              "in the benchmark process; the subscriber (engine.subscribe, decoding every "
              "message) in another. Flows/s: wall time from the first to the last export call "
              "and the exporter's close (queued messages delivered)."]
    return "\n".join(lines)


def run(args) -> int:
    res = measure(getattr(args, "quick", False), args.pcap, args.flows, args.reps, args.formats)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(markdown(res))
    common.write_json(common.WORK / "export-last.json", res)
    return 0 if all(r["unaccounted"] == 0 for r in res["rows"]) else 1
