"""Collector benchmark: records/s parsed on one core for NetFlow v9 and IPFIX, in the three modes
(--collector-passthrough, --disable-cache, the default cache), from pre-built datagrams.

Two measurements per case:
* ``parse``: ``Collector.feed`` (plus the cache in cache mode) over the datagrams in memory, in
  batches of 1024 (the collector's receive batch): the pure parsing rate on one core.
* ``udp``: a generator process replays the datagrams over loopback UDP to a ``CollectorSource``
  in this process; every datagram is accounted: received, dropped by the kernel (the socket's
  drop counter), or missing (sent - received - kernel drops; should be 0).

Usage: python -m bench collector-parse [--records N] [--udp/--no-udp] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import struct
import sys
import time

import numpy as np

RECORDS_PER_DATAGRAM = 30
# a typical router template: 13 fields, 45 bytes a record
FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (5, 1), (6, 1), (10, 4), (14, 4),
          (2, 4), (1, 4), (22, 4), (21, 4)]
FIELDS_IPFIX = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (5, 1), (6, 1), (10, 4), (14, 4),
                (2, 4), (1, 4), (152, 8), (153, 8)]


def _records(fields, start: int, n: int, nflows: int) -> bytes:
    dt = np.dtype([(f"f{i}", ">u%d" % ln) for i, (_e, ln) in enumerate(fields)])
    a = np.zeros(n, dt)
    k = (np.arange(start, start + n) % nflows).astype(np.uint64)
    a["f0"] = (0x0A000000 + (k >> np.uint64(8))).astype(np.uint32)
    a["f1"] = (0xC0A80000 + (k & np.uint64(0xFF))).astype(np.uint32)
    a["f2"] = 1024 + (k % 50000).astype(np.uint16)
    a["f3"] = 443
    a["f4"] = 6
    a["f6"] = 0x1B
    a["f7"] = 1
    a["f8"] = 2
    a["f9"] = 10
    a["f10"] = 1500
    if fields is FIELDS:
        a["f11"] = 50000
        a["f12"] = 59000
    else:
        a["f11"] = 1700000000000
        a["f12"] = 1700000009000
    return a.tobytes()


def build(version: int, total_records: int, nflows: int, first: int = 0) -> list[bytes]:
    """Datagrams of RECORDS_PER_DATAGRAM records; the template in the first one and every 100th
    (template refresh, as routers do). Record i has flow key (first + i) % nflows."""
    fields = FIELDS if version == 9 else FIELDS_IPFIX
    out = []
    ndg = total_records // RECORDS_PER_DATAGRAM
    for i in range(ndg):
        sets = []
        if i % 100 == 0:
            body = struct.pack(">HH", 256, len(fields)) + b"".join(
                struct.pack(">HH", e, ln) for e, ln in fields)
            sets.append(struct.pack(">HH", 0 if version == 9 else 2, 4 + len(body)) + body)
        recs = _records(fields, first + i * RECORDS_PER_DATAGRAM, RECORDS_PER_DATAGRAM, nflows)
        pad = (-len(recs)) % 4 if version == 9 else 0
        sets.append(struct.pack(">HH", 256, 4 + len(recs) + pad) + recs + b"\0" * pad)
        body = b"".join(sets)
        if version == 9:
            hdr = struct.pack(">HHIIII", 9, len(sets), 60000, 1700000010, i, 1)
        else:
            hdr = struct.pack(">HHIII", 10, 16 + len(body), 1700000010,
                              i * RECORDS_PER_DATAGRAM, 1)
        out.append(hdr + body)
    return out


def parse_rate(datagrams, mode: str, sink=None) -> dict:
    """``sink``: optional callable given every output record batch (an exporter's ``export``,
    to measure egress too)."""
    from engine.collect import CollectorSource
    src = CollectorSource([("127.0.0.1", 0)], mode=mode, max_flows=1 << 20)
    batch = 1024
    items = [(d, "192.0.2.1", 0.0) for d in datagrams]
    n = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    for i in range(0, len(items), batch):
        out = src.process(items[i:i + batch], now=0.0)
        if sink is not None and len(out):
            sink(out)
    if src.cache is not None:
        out = src.cache.flush()
        if sink is not None and len(out):
            sink(out)
    c1 = time.process_time()
    t1 = time.perf_counter()
    n = src.collector.totals["records"]
    src.close()
    return {"records": n, "seconds": t1 - t0, "cpu_seconds": c1 - c0,
            "records_per_s": n / (t1 - t0)}


def _generator(port: int, datagrams, ready, go, result, rate: float):
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    ready.set()
    go.wait()
    sent = 0
    t0 = time.perf_counter()
    for i, d in enumerate(datagrams):
        while True:
            try:
                s.sendto(d, ("127.0.0.1", port))
                break
            except BlockingIOError:
                continue
        sent += 1
        if rate and i % 32 == 31:              # paced: `rate` records/s
            due = t0 + (i + 1) * RECORDS_PER_DATAGRAM / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    result.put((sent, time.perf_counter() - t0))


class Generator:
    """The load: a forked process running ``_generator``, started and waiting at its mark."""

    def __init__(self, port: int, datagrams, rate: float = 0.0):
        ctx = mp.get_context("fork")
        ready, self._go, self._result = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_generator,
                                args=(port, datagrams, ready, self._go, self._result, rate))
        self.proc.start()
        ready.wait()

    def go(self) -> float:
        """Start sending; returns the (monotonic) time just before the first datagram."""
        t = time.monotonic()
        self._go.set()
        return t

    def result(self) -> tuple[int, float]:
        """(datagrams sent, seconds sending), once it has finished."""
        sent, send_s = self._result.get(timeout=600)
        self.proc.join()
        return sent, send_s


def udp_rate(datagrams, mode: str, rate: float = 0.0, sink=None) -> dict:
    from engine.collect import CollectorSource
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    src = CollectorSource([("127.0.0.1", 0)], mode=mode, max_flows=1 << 20)
    # warm up (imports, numpy dtype caches) on a throw-away collector, as a running probe is
    from engine.collect.collector import Collector
    Collector(mode).feed([(d, "192.0.2.9", 0.0) for d in datagrams[:200]])
    port = src.ports[0]
    gen = Generator(port, datagrams, rate)
    gen.go()
    received = 0
    first = last = None
    c0 = time.process_time()
    idle_since = time.perf_counter()
    while True:
        dg = src.receive(0.05)
        now = time.perf_counter()
        if dg:
            if first is None:
                first = now
            received += len(dg)
            out = src.process(dg, now=0.0)
            if sink is not None and len(out):
                sink(out)
            last = time.perf_counter()
            idle_since = last
        elif not gen.proc.is_alive() and now - idle_since > 0.3:
            break
        elif now - idle_since > 5:
            break
    if src.cache is not None:
        out = src.cache.flush()
        if sink is not None and len(out):
            sink(out)
    c1 = time.process_time()
    sent, send_s = gen.result()
    kdrops = src.kernel_drops()
    records = src.collector.totals["records"]
    src_rcvbuf = src.rcvbuf
    src.close()
    secs = (last - first) if first and last and last > first else float("nan")
    return {"offered_rate": rate, "rcvbuf": src_rcvbuf, "sent": sent, "received": received, "kernel_drops": kdrops,
            "unaccounted": sent - received - kdrops, "records": records,
            "expected_records": sent * RECORDS_PER_DATAGRAM, "seconds": secs,
            "cpu_seconds": c1 - c0, "records_per_s": records / secs if secs == secs else 0,
            "sender_seconds": send_s}


def _show(label, flag, u):
    what = "udp" if not u["offered_rate"] else f"udp@{u['offered_rate'] / 1e6:.2f}M"
    print(f"{label + ' ' + flag + ' ' + what:<28} {u['records_per_s']:>12,.0f} "
          f"{u['records']:>9} sent={u['sent']} rcv={u['received']} "
          f"kdrop={u['kernel_drops']} lost={u['unaccounted']}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench collector-parse",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=600000)
    ap.add_argument("--flows", type=int, default=100000, help="distinct flow keys")
    ap.add_argument("--no-udp", action="store_true", help="only the in-memory parse rate")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    results = []
    print(f"{'case':<28} {'records/s':>12} {'records':>9} {'loss':>28}")
    for version, label in ((9, "v9"), (10, "ipfix")):
        dgs = build(version, args.records, args.flows)
        for mode, flag in (("passthrough", "--collector-passthrough"),
                           ("nocache", "--disable-cache"), ("cache", "cache")):
            r = parse_rate(dgs, mode)
            r.update(case=f"{label} {flag}", kind="parse")
            results.append(r)
            print(f"{label + ' ' + flag + ' parse':<28} {r['records_per_s']:>12,.0f} "
                  f"{r['records']:>9}", flush=True)
            if not args.no_udp:
                u = udp_rate(dgs, mode)
                u.update(case=f"{label} {flag}", kind="udp")
                results.append(u)
                _show(label, flag, u)
                # the highest offered rate the collector keeps up with, without loss
                base = u["records_per_s"]
                for frac in (1.0, 0.8, 0.6, 0.4, 0.2):
                    z = udp_rate(dgs, mode, rate=base * frac)
                    z.update(case=f"{label} {flag}", kind="udp_paced")
                    results.append(z)
                    _show(label, flag, z)
                    if z["kernel_drops"] == 0 and z["unaccounted"] == 0:
                        break
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "cpus": os.cpu_count()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
