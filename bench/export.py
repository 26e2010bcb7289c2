"""ZeroMQ export: flows/s encoded and sent per format (TLV, JSON, msgpack), with and without zlib,
into a real subscriber process, checking that every flow is received or counted as dropped."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np

HELP = "flows/s exported over ZeroMQ per format, with/without compression, zero unaccounted loss"

SUB_CODE = r"""
import sys, json
from engine.subscribe import Subscriber, flows_of
n = 0; msgs = 0
with Subscriber(sys.argv[1]) as sub:
    print("ready", flush=True)
    for m in sub.messages(idle=float(sys.argv[2])):
        msgs += 1
        if m.topic == "flow":
            n += len(flows_of(m))
print(json.dumps({"flows": n, "messages": msgs}), flush=True)
"""


def add_arguments(p) -> None:
    p.add_argument("--pcap", help="capture to take flow records from (default: the bench capture "
                                  "in bench/work, else the largest development pcap)")
    p.add_argument("--flows", type=int, default=200000, help="records to export per run")
    p.add_argument("--formats", default="t,j,m")
    p.add_argument("--json", action="store_true", help="print results as JSON")


def _records(path: str, limit: int) -> np.ndarray:
    from engine._fastpath import FlowTable
    from engine.sources.pcapfile import FileSource
    table = FlowTable(max_flows=1 << 20, idle_timeout=30, lifetime=120, features=True)
    out, n = [], 0
    src = FileSource(path)
    for buf, meta in src.batches():
        i = 0
        while i < len(meta):
            i = table.process(buf, meta, i)
            if table.pending:
                r = table.take(); out.append(r); n += len(r)
        if n >= limit:
            break
    while n < limit:
        done = table.flush()
        if table.pending:
            r = table.take(); out.append(r); n += len(r)
        if done:
            break
    src.close()
    recs = np.concatenate(out)
    if len(recs) < limit:                       # repeat to reach the requested count
        recs = np.concatenate([recs] * (limit // len(recs) + 1))
    return recs[:limit]


def _default_pcap() -> str:
    from bench.common import WORK
    from tests.conftest import PCAPS
    cands = sorted(WORK.glob("*.pcap"))
    if cands:
        return str(cands[0])
    return str(max(PCAPS.glob("*.pcap"), key=lambda p: p.stat().st_size))


def one(records: np.ndarray, fmt: str, compress: bool) -> dict:
    from engine.export.zmq import FORMATS, ZMQExporter
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    sub = subprocess.Popen([sys.executable, "-c", SUB_CODE, url, "2"], stdout=subprocess.PIPE,
                           text=True)
    sub.stdout.readline()
    exp = ZMQExporter([url], fmt=FORMATS[fmt], compress=compress, wait_subscriber=10,
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


def run(args) -> int:
    path = args.pcap or _default_pcap()
    records = _records(path, args.flows)
    results = []
    for fmt in args.formats.split(","):
        for compress in (False, True):
            r = one(records, fmt, compress)
            results.append(r)
            if not args.json:
                print(f"{fmt} {'zlib ' if compress else 'plain'} {r['flows_per_s']:>10,.0f} flows/s "
                      f"(cpu {r['cpu_s']:.2f} s) received {r['received']} dropped {r['dropped_counted']}"
                      f" unaccounted {r['unaccounted']} messages {r['messages']}", flush=True)
    if args.json:
        print(json.dumps({"pcap": path, "results": results}, indent=1))
    return 0 if all(r["unaccounted"] == 0 for r in results) else 1
