"""Collector table in the shape of nProbe 9.0's: flows/s that the `flowprobe` collector, pinned to
one core, delivers to a real ZeroMQ subscriber, per --zmq-format (j, t) and collector mode
(--disable-cache, --collector-passthrough, the default cache), with every record accounted.

One run (one row, one offered rate):

* a subscriber process (``bench.export.SUB_CODE``: ``engine.subscribe``, decoding every message and
  counting flows) connects to the collector's ZeroMQ endpoint; it and the generator share core 1;
* ``flowprobe -i none --collector-port 127.0.0.1:P --zmq tcp://127.0.0.1:Z --zmq-format F MODE
  --dump-stats FILE`` runs pinned to core 0 (``os.sched_setaffinity`` before exec);
* a generator process (``bench.collector._generator``) replays pre-built NetFlow v9 and IPFIX
  datagrams (``bench.collector.build``, 30 records each, half v9 half IPFIX, every record a
  distinct flow key so that cache mode exports one flow per record) at an offered rate, or as fast
  as it can;
* once the collector has taken in everything (its statistics file), it is stopped with SIGTERM
  (cache mode, run with ``-d 1`` so that flows leave the cache during the load, exports the rest
  then); the final statistics give the kernel's UDP drops and the exporter's drops.

Loss accounting, in records: sent = received by the subscriber + kernel UDP drops x 30 + ZeroMQ
export drops + unaccounted. A rate is shown only with its loss.

Rates: ``egress flows/s`` = flows received by the subscriber / (last flow received - first datagram
sent), wall clock (the JSON also has the subscriber's rate from 10% to 90% of the flows,
steady_flows_per_s, which is burstier);
``flows per CPU-second`` = records collected / CPU time the collector
process used from the first datagram to its exit (so interpreter start-up is not counted).

Per row: a run at the generator's maximum rate (repeated ``--reps`` times: median and spread), then
paced runs from 90% of the lower of the measured egress rate and flows per CPU-second, x1.2 after
a run that keeps up and x0.75 after one that does not (at most ``--steps``; it stops at the first
failure above a success). A run keeps up with nothing lost and the last flow received within
LAG_S + 10% of the sending time after the last datagram was sent (a burst that fits in the socket
buffer loses nothing at any speed, so "no loss" alone is not a sustained rate; paced runs send for
paced_s seconds at least); the highest offered rate that kept up is the highest sustained rate
found.
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
import time

from bench import common

HELP = ("flows/s from the flowprobe collector (pinned to one core) to a ZeroMQ subscriber, "
        "nProbe 9.0's table, with loss accounting")

# nProbe's published collector figures (flows/s), Intel Xeon E3-1230 v3, nProbe 9.0 (ntop's
# nProbe documentation, "High-Speed Flow Collection"). Other hardware, other software: shown for
# the shape of the table, not as a comparison of speed.
PUBLISHED = {("j", "nocache"): 33_000, ("t", "nocache"): 73_000,
             ("j", "passthrough"): 58_000, ("t", "passthrough"): 220_000}
PUBLISHED_HW = "nProbe 9.0, Intel Xeon E3-1230 v3 (published figures, other hardware)"

MODES = {"nocache": "--disable-cache", "passthrough": "--collector-passthrough",
         "cache": "-d 1 (cache, the default; 1 s idle timeout)"}
MODE_FLAGS = {"nocache": ["--disable-cache"], "passthrough": ["--collector-passthrough"],
              "cache": ["-d", "1"]}     # flows leave the cache while the load runs
# row order: nProbe's table first (its first row is the improvement baseline), cache mode last
ROWS = [("j", "nocache"), ("t", "nocache"), ("j", "passthrough"), ("t", "passthrough"),
        ("j", "cache"), ("t", "cache")]

# a paced run keeps up when nothing is lost and the last flow reaches the subscriber at most this
# long after the last datagram was sent (partly filled messages leave on the 1 s statistics tick)
LAG_S = 1.0

FULL = {"records": 300_000, "reps": 3, "steps": 3, "paced_s": 5.0}
QUICK = {"records": 30_000, "reps": 1, "steps": 1, "paced_s": 2.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="30k records a run, one repetition")
    p.add_argument("--records", type=int, help="records a run (default 300k, quick 30k)")
    p.add_argument("--reps", type=int, help="runs at the maximum rate per row (default 3)")
    p.add_argument("--steps", type=int, help="paced runs at most per row looking for the "
                                             "highest rate with zero loss (default 3, quick 1)")
    p.add_argument("--rows", default="all", help="e.g. j:nocache,t:passthrough (default all)")
    p.add_argument("--json", help="write the results here (default bench/work/collector-last.json)")


def _proc_cpu(pid: int) -> float:
    """utime + stime of a live process, seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _read_stats(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


_DATAGRAMS: dict = {}


def datagrams(records: int) -> list[bytes]:
    """Half NetFlow v9, half IPFIX, interleaved; every record a distinct flow key (cache mode then
    exports as many flows as records arrive, so loss can be accounted in flows)."""
    from bench import collector as bc
    if records not in _DATAGRAMS:
        half = records // 2
        v9 = bc.build(9, half, 1 << 62)
        ipfix = bc.build(10, half, 1 << 62, first=half)   # keys distinct from v9's
        out = []
        for a, b in zip(v9, ipfix):
            out += [a, b]
        _DATAGRAMS[records] = out
    return _DATAGRAMS[records]


def one_run(dgs: list[bytes], fmt: str, mode: str, rate: float = 0.0) -> dict:
    """One collector run; see the module doc. ``rate``: records/s offered, 0 = as fast as the
    generator goes."""
    from bench import collector as bc
    from bench.engine import flowprobe_cmd
    from bench.export import SUB_CODE
    ccore, lcore = common.two_cores()
    zport, uport = common.free_port(), common.free_port(socket.SOCK_DGRAM)
    url = f"tcp://127.0.0.1:{zport}"
    tmp = tempfile.mkdtemp(prefix="bench-col-")
    stats_path = os.path.join(tmp, "stats.json")
    sub = subprocess.Popen([sys.executable, "-c", SUB_CODE, url, "1.5", str(lcore)],
                           stdout=subprocess.PIPE, text=True, cwd=str(common.ROOT))
    sub.stdout.readline()
    argv = flowprobe_cmd() + ["-i", "none", "--collector-port", f"127.0.0.1:{uport}",
                              "--zmq", url, "--zmq-format", fmt, "-w", str(1 << 20),
                              "--dump-stats", stats_path, "--dump-stats-interval", "0.2",
                              *MODE_FLAGS[mode]]
    err = tempfile.TemporaryFile("w+")
    fp = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                          cwd=str(common.ROOT),
                          preexec_fn=lambda: os.sched_setaffinity(0, {ccore}))
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(stats_path):          # first statistics tick: it is running
            if fp.poll() is not None or time.monotonic() > deadline:
                err.seek(0)
                raise RuntimeError(f"flowprobe collector did not start: {err.read()[-1500:]}")
            time.sleep(0.05)
        time.sleep(0.3)                                 # the subscription reaches the collector
        gen = bc.Generator(uport, dgs, rate)
        cpu0 = _proc_cpu(fp.pid)
        t_first = gen.go()
        sent_dg, send_s = gen.result()
        sent = sent_dg * bc.RECORDS_PER_DATAGRAM
        # wait until the collector has taken in (or the kernel dropped) every datagram
        last, stable_since = None, time.monotonic()
        while time.monotonic() - t_first < 300:
            st = _read_stats(stats_path)
            seen = st.get("collected_records", 0) + st.get("kernel_drops", 0) * \
                bc.RECORDS_PER_DATAGRAM
            if seen >= sent:
                break
            key = (seen, st.get("uptime"))
            if key[0] != (last or (None,))[0]:
                stable_since = time.monotonic()
            elif time.monotonic() - stable_since > 3:      # nothing new for 3 s: stop anyway
                break
            last = key
            time.sleep(0.05)
    finally:
        fp.send_signal(signal.SIGTERM)
        _, status, ru = os.wait4(fp.pid, 0)
        fp.returncode = os.waitstatus_to_exitcode(status)
    got = json.loads(sub.communicate(timeout=120)[0].strip().splitlines()[-1])
    err.seek(0)
    stderr = err.read()
    err.close()
    st = _read_stats(stats_path)
    if fp.returncode != 0 or not st:
        raise RuntimeError(f"flowprobe collector failed ({fp.returncode}): {stderr[-1500:]}")
    ex = st.get("exporters", {})
    kdrops = st.get("kernel_drops", 0)
    export_drops = ex.get("zmq_drops_queue_full", 0) + ex.get("zmq_drops_no_subscriber", 0)
    received = got["flows"]
    counted = kdrops * bc.RECORDS_PER_DATAGRAM + export_drops
    cpu = ru.ru_utime + ru.ru_stime - cpu0
    span = (got["last_flow_t"] - t_first) if got["last_flow_t"] else float("nan")
    for name in ("stats.json",):
        try:
            os.unlink(os.path.join(tmp, name))
        except OSError:
            pass
    os.rmdir(tmp)
    return {"format": fmt, "mode": mode, "offered_rate": rate,
            "achieved_send_rate": sent / send_s if send_s > 0 else None,
            "sent": sent, "received": received, "kernel_drop_datagrams": kdrops,
            "kernel_drops": kdrops * bc.RECORDS_PER_DATAGRAM, "export_drops": export_drops,
            "counted_drops": counted, "unaccounted": sent - received - counted,
            "lost": sent - received, "collected": st.get("collected_records"),
            "exported": st.get("exported_flows"), "messages": ex.get("zmq_messages"),
            "wall_s": span, "egress_flows_per_s": received / span if span == span and span > 0
            else 0.0,
            "steady_flows_per_s": got["steady_flows"] / got["steady_s"] if got["steady_s"] > 0
            else None,
            "send_s": send_s,
            "lag_s": (got["last_flow_t"] - t_first - send_s) if got["last_flow_t"] else None,
            "collector_cpu_s": cpu,
            "flows_per_cpu_s": (st.get("collected_records", 0) / cpu) if cpu > 0 else None,
            "maxrss_bytes": ru.ru_maxrss * 1024, "cores": {"collector": ccore, "load": lcore},
            "summary_line": next((ln for ln in stderr.splitlines()
                                  if ln.startswith("flowprobe:") and "datagrams" in ln), None)}


def _log(msg: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def measure(quick: bool = False, records=None, reps=None, steps=None, rows="all") -> dict:
    cfg = dict(QUICK if quick else FULL)
    records = records or cfg["records"]
    reps = reps or cfg["reps"]
    steps = cfg["steps"] if steps is None else steps
    dgs = datagrams(records)
    want = ROWS if rows == "all" else [tuple(r.split(":")) for r in rows.split(",")]
    out = {"benchmark": "collector", "records_per_run": len(dgs) * 30, "reps": reps,
           "steps": steps, "paced_s": cfg["paced_s"],
           "cores": dict(zip(("collector", "load"), common.two_cores())), "rows": []}
    for fmt, mode in want:
        runs = []
        for _ in range(reps):
            r = one_run(dgs, fmt, mode)
            runs.append(r)
            _log(f"collector {fmt} {mode} max: {r['egress_flows_per_s']:,.0f} flows/s, sent "
                 f"{r['sent']} received {r['received']} counted drops {r['counted_drops']} "
                 f"unaccounted {r['unaccounted']}")
        med = common.summary([r["egress_flows_per_s"] for r in runs])
        cpu_rate = common.summary([r["flows_per_cpu_s"] for r in runs if r["flows_per_cpu_s"]])
        # a burst that fits in the socket buffer shows no loss at any speed: a rate counts as
        # sustained only paced, long enough, with no loss and the egress keeping up
        paced, best = [], None
        rate = 0.9 * min(med["median"], cpu_rate.get("median") or med["median"])
        for _ in range(steps):
            n = int(rate * cfg["paced_s"]) // 60 * 60
            r = one_run(datagrams(max(n, records)), fmt, mode, rate=rate)
            lag_max = LAG_S + 0.1 * r["send_s"] + (1.5 if mode == "cache" else 0)  # + idle timeout
            r["keeps_up"] = r["lost"] == 0 and r["lag_s"] is not None and r["lag_s"] <= lag_max
            paced.append(r)
            _log(f"collector {fmt} {mode} paced {rate:,.0f}/s: {r['egress_flows_per_s']:,.0f} "
                 f"flows/s, lost {r['lost']} (counted {r['counted_drops']}, unaccounted "
                 f"{r['unaccounted']}), lag {r['lag_s']:.2f} s, keeps up: {r['keeps_up']}")
            if r["keeps_up"]:
                best = max(best or 0, rate)
                rate *= 1.2                              # try higher
            elif best:
                break                                    # the step above the best failed
            else:
                rate *= 0.75
        out["rows"].append({
            "format": fmt, "mode": mode, "flag": MODES[mode],
            "egress_flows_per_s": med,
            "flows_per_cpu_s": cpu_rate,
            "sent": sum(r["sent"] for r in runs + paced),
            "received": sum(r["received"] for r in runs + paced),
            "kernel_drops": sum(r["kernel_drops"] for r in runs + paced),
            "export_drops": sum(r["export_drops"] for r in runs + paced),
            "unaccounted": sum(r["unaccounted"] for r in runs + paced),
            "zero_loss_rate": best, "published": PUBLISHED.get((fmt, mode)),
            "runs": runs, "paced": paced})
    base = out["rows"][0]["egress_flows_per_s"]["median"] if out["rows"] else None
    for row in out["rows"]:
        row["improvement"] = row["egress_flows_per_s"]["median"] / base if base else None
    pb = PUBLISHED.get((out["rows"][0]["format"], out["rows"][0]["mode"])) if out["rows"] else None
    for row in out["rows"]:
        row["published_improvement"] = row["published"] / pb if row["published"] and pb else None
    return out


def _busy(row: dict) -> str:
    """Collector CPU time / the run's wall time at full speed: well under 100% means the collector
    was waiting, i.e. the subscriber (or the generator) set the pace."""
    v = [r["collector_cpu_s"] / r["wall_s"] for r in row["runs"] if r.get("wall_s")]
    return "%.0f%%" % (100 * common.summary(v)["median"]) if v else "n/a"


def _sustained(row: dict) -> str:
    z = row["zero_loss_rate"]
    if not z:
        return "not found at the rates tried"
    above = any(not p.get("keeps_up") and p["offered_rate"] > z for p in row["paced"])
    # no failure above it: the real limit is higher than the rates tried
    return ("" if above else ">= ") + common.fmt_rate(z) + " records/s"


def markdown(res: dict) -> str:
    lines = [f"### Collector: flows/s to a ZeroMQ subscriber, collector pinned to core "
             f"{res['cores']['collector']}, load (generator + subscriber) on core "
             f"{res['cores']['load']}", "",
             f"{res['records_per_run']:,} records a run (NetFlow v9 and IPFIX, 30 a datagram, "
             f"every record a new flow); {res['reps']} run(s) at the generator's full speed per "
             "row: median (min-max) of flows received / (last flow received - first datagram "
             "sent). Then "
             "paced runs, sending for at least %g s, from 90%% of the lower of that rate and the "
             "flows per CPU-second, x1.2 after a run that keeps up, x0.75 after one that does not "
             "(%d runs at most, stopping at the first failure above a success). A run keeps up "
             "when it loses nothing and its last flow reaches the subscriber within %g s + 10%% "
             "of the sending time after the last datagram (1.5 s more in cache mode); the highest "
             "offered rate that kept up is the highest sustained rate found. "
             % (res.get("paced_s", 0), res["steps"], LAG_S) +
             "Cache mode runs with `-d 1` so that flows leave the cache while the load runs "
             "(every record is a new flow). Loss in records, summed over all the row's runs: "
             "sent = received + kernel UDP drops + export drops + unaccounted.",
             "",
             "| flowprobe flags | egress flows/s | improvement | flows per CPU-second | "
             "collector core busy | sent | "
             "received | kernel drops | export drops | unaccounted | highest sustained rate "
             "with zero loss | nProbe 9.0 published* | published improvement* |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(
            f"| `--zmq-format {r['format']} {r['flag']}` | "
            f"{common.fmt_summary(r['egress_flows_per_s'])} | "
            f"{'%.2fx' % r['improvement'] if r['improvement'] else 'n/a'} | "
            f"{common.fmt_summary(r['flows_per_cpu_s'])} | {_busy(r)} | "
            f"{r['sent']:,} | {r['received']:,} | "
            f"{r['kernel_drops']:,} | {r['export_drops']:,} | {r['unaccounted']:,} | "
            f"{_sustained(r)} | "
            f"{common.fmt_rate(r['published']) if r['published'] else '-'} | "
            f"{'%.2fx' % r['published_improvement'] if r['published_improvement'] else '-'} |")
    lines += ["", f"\\* {PUBLISHED_HW}; our rows run on the machine described above, through a "
              "Python subscriber that decodes every message on the load core.", "",
              "Flows per CPU-second is the collector's own cost (records collected / the CPU time "
              "of its process, ZeroMQ I/O thread included, from the first datagram to its exit). "
              "Collector core busy = that CPU time / the run's wall time: where it is well under "
              "100% the collector was waiting and the egress rate is the subscriber's (decoding "
              "TLV in Python is slower than JSON with the C json module), not the collector's. "
              "Kernel drops come from the runs at full speed, where the generator outruns the "
              "collector's socket buffer; the paced runs lose nothing."]
    return "\n".join(lines)


def run(args) -> int:
    res = measure(args.quick, args.records, args.reps, args.steps, args.rows)
    res["machine"] = common.machine()
    print(markdown(res))
    path = args.json or str(common.WORK / "collector-last.json")
    common.write_json(__import__("pathlib").Path(path), res)
    return 0 if all(r["unaccounted"] == 0 for r in res["rows"]) else 1
