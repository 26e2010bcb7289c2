"""``python -m bench live``: live capture on a veth pair, flowprobe beside tcpdump and softflowd.

A seeded capture (tools/gen_pcap.py, via bench.engine.ensure_capture) is replayed by
tools/pcap-replay (sendmmsg, pinned to the last usable CPU) from one network namespace onto a veth
pair whose other end the tool under test captures in another (both namespaces made here, quiet:
no address, no IPv6). First the generator's highest rate with nothing capturing is measured; then
every tool runs at offered rates of 1/8, 1/4, 1/2 and 1 of it (the last as fast as possible; with
--quick 1/4 and 1), one fresh process per run, pinned to the first CPU (`-g` pins itself):

  flowprobe -i IFACE -n none               the TPACKET_V3 ring, features on / --no-features
  flowprobe -i pcap:IFACE -n none          libpcap through pcapy-ng, features on / off
  flowprobe -g C0 / -g C0,C1 -i IFACE      one and two workers in a PACKET_FANOUT group
  tcpdump -i IFACE -w /dev/null            (libpcap's default 2 MiB buffer)
  softflowd -d -i IFACE -v 9 -n 127.0.0.1:9995 (its statistics through softflowctl)

Per run: packets sent (the generator's report) and the rate achieved, packets the tool received
(flowprobe's summary, tcpdump's "captured", softflowd's "processed"), the kernel's drops as the
tool reports them, loss (sent - received), and CPU per received packet: the CPU time of the tool's
process tree (/proc, workers included) from just before the replay to the moment it went idle
after it, so start-up and exit are not counted. The kernel's receive work (the copy into the ring)
runs in the generator's softirq on its own CPU for every tool alike and is in no row. The
highest zero-loss rate of each tool is the highest achieved rate of a run that lost nothing.

Results: markdown on stdout; JSON (machine, every run) in bench/work/live-last.json, with --save
bench/results/live-DATE.{md,json}, with --out STEM STEM.{md,json}. Needs root, iproute2, gcc and libpcap-dev (for the generator);
tcpdump and softflowd rows are skipped, with a line, where they are not installed.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

from bench import common

sys.path.insert(0, str(common.ROOT / "tools"))
import loadgen  # noqa: E402

HELP = "live capture on veth: packets, kernel drops and CPU per packet, beside tcpdump/softflowd"
FULL = {"packets": 1_000_000, "flows": 100_000, "fractions": (0.125, 0.25, 0.5, 1.0)}
QUICK = {"packets": 100_000, "flows": 10_000, "fractions": (0.25, 1.0)}
TICK = os.sysconf("SC_CLK_TCK")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a 100k-packet capture, two rates")
    p.add_argument("--capture", help="replay this Ethernet capture instead of a generated one")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--only", help="comma-separated row names (see the table), e.g. ring,tcpdump")
    p.add_argument("--save", action="store_true", help="write bench/results/live-DATE.{md,json}")
    p.add_argument("--out", help="write STEM.md and STEM.json (default bench/work/live-last)")


def rows(iface: str, cpu: int, cores: tuple[int, int]) -> dict[str, Optional[list[str]]]:
    """name -> command run in the capture namespace (None: not installed)."""
    probe = [sys.executable, "-m", "engine", "-n", "none", "-b", "1"]
    pin = ["taskset", "-c", str(cpu)]
    sf, td = shutil.which("softflowd"), shutil.which("tcpdump")
    return {
        "ring": pin + probe + ["-i", iface],
        "ring-no-features": pin + probe + ["-i", iface, "--no-features"],
        "pcap": pin + probe + ["-i", f"pcap:{iface}"],
        "pcap-no-features": pin + probe + ["-i", f"pcap:{iface}", "--no-features"],
        "ring-g1": probe + ["-i", iface, "-g", str(cores[0])],
        "ring-g2": probe + ["-i", iface, "-g", f"{cores[0]},{cores[1]}"],
        "tcpdump": pin + [td, "-i", iface, "-w", "/dev/null"] if td else None,
        "softflowd": pin + [sf, "-d", "-i", iface, "-v", "9", "-n", "127.0.0.1:9995", "-c",
                            "CONTROL"] if sf else None,
    }


LABELS = {"ring": "`flowprobe -i IFACE` (ring)", "ring-no-features": "`... --no-features` (ring)",
          "pcap": "`flowprobe -i pcap:IFACE` (pcapy-ng)",
          "pcap-no-features": "`... --no-features` (pcapy-ng)",
          "ring-g1": "`flowprobe -g C0` (ring)", "ring-g2": "`flowprobe -g C0,C1` (ring, fanout)",
          "tcpdump": "`tcpdump -w /dev/null`", "softflowd": "`softflowd -i IFACE`"}


# --- the process tree's CPU time -----------------------------------------------------------------
def tree_cpu(pid: int) -> float:
    """User + system seconds of ``pid`` and every living descendant (workers included)."""
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / TICK
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo += [c for c, pp in parent.items() if pp == p]
    return total


def wait_idle(pid: int, quiet_s: float = 1.5, limit_s: float = 60.0) -> float:
    """The tree's CPU time once it stopped growing for ``quiet_s``: longer than libpcap's block
    timeout (1 s in tcpdump and softflowd), so the last block was handed over and processed."""
    last, since, start = tree_cpu(pid), time.monotonic(), time.monotonic()
    while time.monotonic() - start < limit_s:
        time.sleep(0.05)
        now = tree_cpu(pid)
        if now > last + 1.0 / TICK:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


# --- one run -------------------------------------------------------------------------------------
def _ready(ns: str, iface: str, sockets: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        entries = loadgen.capture_sockets(ns, iface)
        if len(entries) >= sockets and (sockets == 1 or sum("fanout(" in e for e in entries)
                                        == sockets):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the capture exited first: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no capture socket on {iface} after 60 s")
        time.sleep(0.02)


def _received(name: str, err: str, control: str, ns: str) -> tuple[int, int]:
    """(packets received, kernel drops) as the tool reports them."""
    if name == "tcpdump":
        got = re.search(r"(\d+) packets? captured", err)
        drop = re.search(r"(\d+) packets? dropped by kernel", err)
        return int(got[1]), int(drop[1]) if drop else 0
    if name == "softflowd":
        out = subprocess.run(["ip", "netns", "exec", ns, "softflowctl", "-c", control,
                              "statistics"], capture_output=True, text=True).stdout
        got = re.search(r"Packets processed: (\d+)", out)
        drop = re.search(r"Packets dropped by libpcap: (\d+)", out)
        if not got:
            raise RuntimeError(f"softflowctl statistics: {out[-500:]}")
        return int(got[1]), int(drop[1]) if drop else 0
    line = [x for x in err.splitlines() if " packets (" in x][-1]
    kernel = re.search(r"kernel=(\d+)", line)
    return int(line.split(": ", 1)[1].split(" packets")[0]), int(kernel[1]) if kernel else 0


def one_run(name: str, cmd: list[str], pair: tuple, capture: str, rate: float,
            gen_cpu: int, tmp: str) -> dict:
    ns, peer_ns, iface, peer_if = pair
    control = os.path.join(tmp, "softflowd.ctl")
    cmd = [control if x == "CONTROL" else x for x in cmd]
    if os.path.exists(control):
        os.unlink(control)
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], cwd=common.ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(common.ROOT)})
    try:
        _ready(ns, iface, 2 if name == "ring-g2" else 1, proc)
        if name == "softflowd":               # its control socket comes after the capture
            while not os.path.exists(control):
                time.sleep(0.02)
        cpu0 = tree_cpu(proc.pid)
        sent = loadgen.replay(peer_if, capture, rate=rate, cpu=gen_cpu, netns=peer_ns)
        cpu1 = wait_idle(proc.pid)
        if name == "softflowd":
            received, drops = _received(name, "", control, ns)
        proc.send_signal(signal.SIGTERM if name == "softflowd" else signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        if name != "softflowd":
            received, drops = _received(name, err, control, ns)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"row": name, "offered_pps": rate, "sent": sent["packets"],
            "achieved_pps": sent["pps"], "received": received, "kernel_drops": drops,
            "lost": sent["packets"] - received, "cpu_s": cpu1 - cpu0,
            "cpu_ns_per_packet": (cpu1 - cpu0) / received * 1e9 if received else None}


# --- the table -----------------------------------------------------------------------------------
def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    for r in runs:
        s = out.setdefault(r["row"], {"zero_loss_pps": None, "runs": []})
        s["runs"].append(r)
        if r["lost"] == 0 and (s["zero_loss_pps"] or 0) < r["achieved_pps"]:
            s["zero_loss_pps"] = r["achieved_pps"]
    for s in out.values():
        cpu = [r["cpu_ns_per_packet"] for r in s["runs"] if r["cpu_ns_per_packet"]]
        s["cpu_ns_per_packet_median"] = sorted(cpu)[len(cpu) // 2] if cpu else None
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Live capture on veth ({m['cpu_model']}, {m['usable_cpus']} usable CPUs, kernel "
             f"{m['kernel']}); {result['packets']:,} packets replayed a run; the generator's "
             f"highest rate with nothing capturing: {common.fmt_rate(result['generator_pps'])} "
             "packets/s", "",
             "| capture | offered packets/s | achieved | received / sent | kernel drops | "
             "lost | CPU per packet |", "|---|---|---|---|---|---|---|"]
    for name, s in result["rows"].items():
        for r in s["runs"]:
            offered = "highest" if r["offered_pps"] == 0 else common.fmt_rate(r["offered_pps"])
            cpu = f"{r['cpu_ns_per_packet']:.0f} ns" if r["cpu_ns_per_packet"] else "n/a"
            lines.append(f"| {LABELS[name]} | {offered} | {common.fmt_rate(r['achieved_pps'])} | "
                         f"{r['received']:,} / {r['sent']:,} | {r['kernel_drops']:,} | "
                         f"{r['lost']:,} | {cpu} |")
    lines += ["", "| capture | highest zero-loss rate (packets/s) | CPU per packet (median) | "
              "packets per CPU-second |", "|---|---|---|---|"]
    for name, s in result["rows"].items():
        zl = s["zero_loss_pps"]
        cpu = s["cpu_ns_per_packet_median"]
        lines.append(f"| {LABELS[name]} | {common.fmt_rate(zl) if zl else 'none'} | "
                     f"{f'{cpu:.0f} ns' if cpu else 'n/a'} | "
                     f"{common.fmt_rate(1e9 / cpu) if cpu else 'n/a'} |")
    lines += [""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("bench live: needs root and iproute2 (it makes network namespaces)", file=sys.stderr)
        return 2
    cfg = QUICK if args.quick else FULL
    if args.capture:
        capture = args.capture
    else:
        from bench.engine import ensure_capture
        capture = str(ensure_capture(args.seed, cfg["packets"], cfg["flows"]))
    cpus = sorted(os.sched_getaffinity(0))
    cores = (cpus[0], cpus[1] if len(cpus) > 1 else cpus[0])
    gen_cpu = cpus[-1]
    notes = [f"capture {os.path.basename(capture)}; generator `tools/pcap-replay` pinned to CPU "
             f"{gen_cpu}, single-process captures to CPU {cpus[0]}; one run per cell",
             "CPU per packet: the capture's process tree from just before the replay until it "
             "went idle after it (start-up and exit excluded); the kernel's copy into the "
             "capture buffer runs on the generator's CPU for every row alike"]
    loadgen.build()
    common.WORK.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    with loadgen.veth_pair("bl") as pair, tempfile.TemporaryDirectory() as tmp:
        ns, peer_ns, iface, peer_if = pair
        top = loadgen.replay(peer_if, capture, rate=0, cpu=gen_cpu, netns=peer_ns)
        rates = [0 if f == 1.0 else round(top["pps"] * f) for f in cfg["fractions"]]
        todo = rows(iface, cpus[0], cores)
        only = set(args.only.split(",")) if args.only else set(todo)
        for name in [n for n in todo if n in only]:
            if todo[name] is None:
                notes.append(f"{name}: not installed, skipped")
                continue
            for rate in rates:
                r = one_run(name, todo[name], pair, capture, rate, gen_cpu, tmp)
                print(f"# {name} at {'highest' if not rate else f'{rate:.0f}'}: "
                      f"{r['received']}/{r['sent']} received, {r['kernel_drops']} kernel drops, "
                      f"{r['cpu_ns_per_packet'] or 0:.0f} ns CPU/packet", file=sys.stderr)
                runs.append(r)
    result = {"machine": common.machine(), "capture": capture, "packets": top["packets"],
              "generator_pps": top["pps"], "rows": summarize(runs), "notes": notes}
    md = markdown(result)
    print(md)
    base = (pathlib.Path(args.out) if args.out else common.RESULTS / f"live-{common.today()}"
            if args.save else common.WORK / "live-last")
    common.write_json(base.with_suffix(".json"), result)
    base.with_suffix(".md").write_text(md)
    bad = [r for r in runs if r["received"] <= 0 or r["received"] + r["kernel_drops"] > r["sent"]]
    if bad:
        print(f"bench live: inconsistent runs: {bad}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench live", description=HELP)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
