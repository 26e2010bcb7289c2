"""Probe on real traffic: flowprobe beside softflowd on a capture built from the development
captures (tools/realistic_pcap.py: K address-rewritten copies of nDPI's Ethernet captures), the
CPU each output format adds per flow, and, where flowprobe has nDPI, application detection beside
Debian's ndpiReader (the same libndpi, one thread), all rows in one run.

Rows are whole commands timed with os.wait4 (CPU = user + system, start-up included), repetitions
interleaved across rows so that load from other work hits all rows alike; median (min-max).
NetFlow rows send to a loopback receiver in this process (bench/engine.py's V9Receiver), ZeroMQ
rows to a subscriber process that only counts bytes, so neither costs the measured command CPU.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import time

from bench import common, engine

HELP = "flowprobe vs softflowd on a capture of real traffic; CPU per flow of each output format"

SHARED = pathlib.Path(os.environ.get("FLOWPROBE_SHARED", common.ROOT.parent / "shared"))

# a subscriber that must not be the bottleneck: it counts messages and bytes, decodes nothing
DRAIN = r"""
import sys, zmq
s = zmq.Context().socket(zmq.SUB); s.setsockopt(zmq.SUBSCRIBE, b""); s.setsockopt(zmq.RCVHWM, 0)
s.connect(sys.argv[1]); print("ready", flush=True)
n = b = 0
while s.poll(int(float(sys.argv[2]) * 1000)):
    for f in s.recv_multipart():
        b += len(f)
    n += 1
print(n, b, flush=True)
"""

FORMATS = {   # label -> flowprobe arguments ({zmq} is the subscriber's endpoint)
    "TLV": ["--zmq", "{zmq}", "--zmq-disable-compression"],
    "TLV + zlib": ["--zmq", "{zmq}"],
    "JSON": ["--zmq", "{zmq}", "--zmq-format", "j", "--zmq-disable-compression"],
    "msgpack": ["--zmq", "{zmq}", "--zmq-format", "m", "--zmq-disable-compression"],
    "NetFlow v9": ["-n", "{nf}", "-V", "9"],
    "IPFIX": ["-n", "{nf}", "-V", "10"],
    "text dump": ["--dump-format", "text"],
    "JSON dump": ["--dump-format", "json"],
    "CSV dump": ["--dump-format", "csv"],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pcap", help="this capture instead of building one from ../shared/pcaps")
    p.add_argument("--packets", type=int, default=3_200_000,
                   help="build the capture with at least this many packets (default 3.2 M)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-formats", action="store_true", help="only the softflowd table")
    p.add_argument("--json", help="write the results here (default bench/work/realistic-last.json)")


def capture(packets: int) -> pathlib.Path:
    if not (SHARED / "pcaps").is_dir():
        raise SystemExit(f"bench: error: {SHARED / 'pcaps'}: no development captures to build "
                         "the capture from (FLOWPROBE_SHARED=DIR, or --pcap FILE)")
    sys.path.insert(0, str(common.ROOT / "tools"))
    import realistic_pcap
    copies = realistic_pcap.copies_for(SHARED / "pcaps", packets)
    out = common.WORK / f"realistic-{copies}.pcap"
    if not out.exists():
        common.WORK.mkdir(parents=True, exist_ok=True)
        info = realistic_pcap.build(SHARED / "pcaps", copies, out)
        print(f"# built {out}: {info}", file=sys.stderr, flush=True)
    return out


class Drain:
    """The counting subscriber, one per row run."""

    def __init__(self):
        self.port = common.free_port()
        self.p = subprocess.Popen([sys.executable, "-c", DRAIN, f"tcp://127.0.0.1:{self.port}",
                                   "3"], stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "ready"

    def finish(self) -> tuple[int, int]:
        out = self.p.communicate(timeout=120)[0].split()
        return int(out[0]), int(out[1])


def _has_flag(flag: str) -> bool:
    r = common.run_child(engine.flowprobe_cmd() + ["--help"], capture_stdout=True, timeout=60)
    return flag in r.stdout


def _flowprobe(pcap: pathlib.Path, extra: list[str]):
    def go():
        rx = drain = None
        args = list(extra)
        if "{nf}" in args:
            rx = engine.V9Receiver()
            args[args.index("{nf}")] = f"127.0.0.1:{rx.port}"
        if "{zmq}" in args:
            drain = Drain()
            args[args.index("{zmq}")] = f"tcp://127.0.0.1:{drain.port}"
        if "--dump-format" not in args and "-n" not in args and "--zmq" not in args:
            args = ["-n", "none"] + args
        r = common.run_child(engine.flowprobe_cmd() + ["-i", str(pcap)] + args)  # dumps: /dev/null
        if r.returncode != 0:
            raise RuntimeError(f"flowprobe failed ({r.returncode}): {r.stderr[-1500:]}")
        r.extra = engine._parse_summary(r.stderr)
        if rx is not None:
            rx.finish()
            r.extra.update(datagrams=rx.datagrams)
        if drain is not None:
            r.extra["messages"], r.extra["message_bytes"] = drain.finish()
        return r
    return go


def _ndpireader(pcap: pathlib.Path):
    r = common.run_child(["ndpiReader", "-i", str(pcap), "-n", "1", "-q"])
    if r.returncode != 0:
        raise RuntimeError(f"ndpiReader failed ({r.returncode}): {r.stderr[-1500:]}")
    r.extra = {}
    return r


def measure(pcap: pathlib.Path, reps: int, formats: bool) -> dict:
    rows: dict[str, dict] = {}

    def add(key, label, fn):
        rows[key] = {"label": label, "fn": fn, "runs": []}

    # softflowd does no application detection: the rows beside it run without nDPI (-l7 rows
    # show what it adds), where the installed flowprobe has it
    nol7 = ["--disable-l7"] if _has_flag("--disable-l7") else []
    add("none", "flowprobe -n none", _flowprobe(pcap, nol7))
    add("none_nof", "flowprobe -n none --no-features", _flowprobe(pcap, nol7 + ["--no-features"]))
    add("v9", "flowprobe -n 127.0.0.1:PORT -V 9", _flowprobe(pcap, nol7 + FORMATS["NetFlow v9"]))
    add("v9_nof", "flowprobe -n 127.0.0.1:PORT -V 9 --no-features",
        _flowprobe(pcap, nol7 + FORMATS["NetFlow v9"] + ["--no-features"]))
    if nol7:
        add("v9_l7", "flowprobe -n 127.0.0.1:PORT -V 9 with nDPI",
            _flowprobe(pcap, FORMATS["NetFlow v9"]))
    add("softflowd", "softflowd -r FILE -v 9 -n 127.0.0.1:PORT",
        lambda: engine.run_softflowd(pcap, 262144))
    if nol7 and shutil.which("ndpiReader"):
        # application detection beside nDPI's own reader (one thread, the same libndpi)
        add("l7", "flowprobe -n none with nDPI", _flowprobe(pcap, []))
        add("ndpireader", "ndpiReader -i FILE -n 1 -q", lambda: _ndpireader(pcap))
    if formats:
        for label, args in FORMATS.items():
            if label != "NetFlow v9":
                add(f"fmt {label}", f"flowprobe ({label}) --no-features",
                    _flowprobe(pcap, nol7 + args + ["--no-features"]))
    for i in range(reps):
        for key, row in rows.items():
            row["runs"].append(row["fn"]())
            r = row["runs"][-1]
            print(f"# {time.strftime('%H:%M:%S')} {i + 1}/{reps} {row['label']}: "
                  f"{r.cpu_s:.2f} CPU-s", file=sys.stderr, flush=True)
    out = {"benchmark": "realistic", "capture": {"path": str(pcap), "bytes": pcap.stat().st_size},
           "reps": reps, "rows": []}
    for key, row in rows.items():
        runs = row["runs"]
        out["rows"].append({"key": key, "label": row["label"],
                            "cpu_s": common.summary([r.cpu_s for r in runs]),
                            "wall_s": common.summary([r.wall_s for r in runs]),
                            "maxrss_bytes": common.summary([r.maxrss_bytes for r in runs]),
                            "detail": [r.extra for r in runs]})
    first = out["rows"][0]["detail"][0]
    out["capture"].update(packets=first.get("packets"), flows=first.get("flows"))
    return out


def markdown(res: dict) -> str:
    cap, rows = res["capture"], {r["key"]: r for r in res["rows"]}
    packets, flows = cap["packets"], cap["flows"]
    med = {k: r["cpu_s"]["median"] for k, r in rows.items()}
    sf = med["softflowd"]
    lines = [f"### Probe on real traffic: `{os.path.basename(cap['path'])}` ({packets:,} packets, "
             f"{flows:,} flows, {cap['bytes'] / 1e6:.0f} MB), whole commands, {res['reps']} "
             "repetitions, median (min-max)", "",
             "| command | CPU time | packets per CPU-second | vs softflowd (per CPU-second) | "
             "wall time | peak RSS |", "|---|---|---|---|---|---|"]
    for key in ("none", "none_nof", "v9", "v9_nof", "v9_l7", "softflowd"):
        if key not in rows:
            continue
        r = rows[key]
        lines.append(f"| `{r['label']}` | {common.fmt_summary(r['cpu_s'], lambda x: '%.2f s' % x)}"
                     f" | {common.fmt_rate(packets / med[key])} | {sf / med[key]:.2f}x | "
                     f"{common.fmt_summary(r['wall_s'], lambda x: '%.2f s' % x)} | "
                     f"{r['maxrss_bytes']['median'] / 1e6:.0f} MB |")
    if "ndpireader" in rows:
        nd = med["ndpireader"]
        lines += ["", "**Application detection beside ndpiReader** (the same libndpi, one thread "
                  "each):", "", "| command | CPU time | packets per CPU-second | vs ndpiReader |",
                  "|---|---|---|---|"]
        for key in ("l7", "none", "ndpireader"):
            r = rows[key]
            lines.append(f"| `{r['label']}` | "
                         f"{common.fmt_summary(r['cpu_s'], lambda x: '%.2f s' % x)} | "
                         f"{common.fmt_rate(packets / med[key])} | {nd / med[key]:.2f}x |")
    sfd = rows["softflowd"]["detail"][0]
    lines += ["", f"softflowd expired {sfd.get('flows')} flows and sent {sfd.get('records')} v9 "
              "records (one a direction); flowprobe's flows are bidirectional."]
    fmts = [r for r in res["rows"] if r["key"].startswith("fmt ")]
    if fmts:
        base = med["none_nof"]
        lines += ["", f"**CPU each output format adds per flow** (`--no-features`, over `-n none "
                  f"--no-features` on the same capture, divided by its {flows:,} flows; rows "
                  "without nDPI where it is built):", "",
                  "| output | CPU time | added per flow | flows per added CPU-second |",
                  "|---|---|---|---|"]
        for r in [rows["v9_nof"]] + fmts:
            added = r["cpu_s"]["median"] - base
            label = "NetFlow v9" if r["key"] == "v9_nof" else r["key"][4:]
            lines.append(f"| {label} | {r['cpu_s']['median']:.2f} s | {added / flows * 1e9:.0f} ns"
                         f" | {common.fmt_rate(flows / added) if added > 0 else 'n/a'} |")
    return "\n".join(lines)


def run(args) -> int:
    pcap = pathlib.Path(args.pcap) if args.pcap else capture(args.packets)
    res = measure(pcap, args.reps, not args.no_formats)
    res["machine"] = common.machine()
    print(markdown(res))
    common.write_json(pathlib.Path(args.json or common.WORK / "realistic-last.json"), res)
    return 0
