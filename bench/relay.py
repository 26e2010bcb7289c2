"""``python -m bench relay``: datagrams/s that ``flowrelay`` (engine/relay.py) forwards from UDP to
ZeroMQ on loopback, plain and CURVE, with every datagram accounted.

One run (one row, one repetition):

* ``python -m engine.apps.flowrelay -c 127.0.0.1:U -z tcp://127.0.0.1:Zc [-k SECRET] -v`` runs pinned to
  core 0 (default ``--queue``: 10000 datagrams);
* a receiver process (``RECV_CODE``) connects to it exactly as ``flowprobe --collector-port
  tcp://...`` does (``engine.collect.relay.RelayReceiver``: a PULL socket, CURVE client with the
  relay's public key and a fresh key pair of its own), waits for the ZeroMQ handshake, then counts
  two-frame messages until it has had none for ``IDLE_S``;
* a generator process (``bench.collector._generator``) replays pre-built NetFlow v9 and IPFIX
  datagrams (``bench.zmqcollector.datagrams``: ``bench.collector.build``, 30 records each, v9 and
  IPFIX interleaved) to the relay's UDP port as fast as it can; it and the receiver share core 1;
* once the relay has taken in everything and its queue is empty, the kernel's drop counter of the
  relay's UDP socket is read (/proc/net/udp), the receiver finishes, the relay is stopped with
  SIGTERM and its final statistics line (``flowrelay: received=... queue_drops=... queued=...``)
  is parsed.

Accounting, in datagrams: sent = forwarded (received by the receiver) + relay-counted drops
(queue_drops + invalid + not_allowed) + kernel UDP drops + unaccounted.
Rate: datagrams received by the receiver / (last one received - first one sent), wall clock
(CLOCK_MONOTONIC, shared by the processes). Each row: median (min-max) of ``--reps`` runs.

``end to end`` row: the receiver is a real ``flowprobe -i none --collector-port tcp://...
--collector-encryption-key PUBLIC --collector-passthrough -n none`` (CURVE); forwarded = the
datagrams of its summary line, the last receive time = when its ``--dump-stats`` file (every
0.2 s) last showed new records, so that rate is coarser (+-0.2 s).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from bench import collector as bc, common

HELP = "datagrams/s forwarded by flowrelay (UDP -> ZeroMQ), plain and CURVE, with loss accounting"

IDLE_S = 1.5            # the receiver stops after this long without a message
FULL = {"datagrams": 100_000, "reps": 3}
QUICK = {"datagrams": 6_000, "reps": 1}

# A receiver connected as flowprobe connects (engine.collect.relay.RelayReceiver's socket).
RECV_CODE = r"""
import json, os, sys, time
import zmq
from zmq.utils.monitor import recv_monitor_message
url, key, idle, core = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
if core != "-" and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {int(core)})
ctx = zmq.Context()
s = ctx.socket(zmq.PULL)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.RCVHWM, 1000)
if key != "-":
    pub, sec = zmq.curve_keypair()
    s.curve_serverkey = key.encode()
    s.curve_publickey = pub
    s.curve_secretkey = sec
mon = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
s.connect(url)
if not mon.poll(30000):
    print(json.dumps({"error": "no ZeroMQ handshake"}), flush=True)
    sys.exit(1)
recv_monitor_message(mon)
print("ready", flush=True)
n = bad = nbytes = 0
first = last = None
poller = zmq.Poller()
poller.register(s, zmq.POLLIN)
wait_ms = 120000                      # the first message may take a while
while poller.poll(wait_ms):
    while True:
        try:
            m = s.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            break
        if len(m) != 2:
            bad += 1
            continue
        n += 1
        nbytes += len(m[1].buffer)
    last = time.monotonic()
    if first is None:
        first = last
    wait_ms = int(idle * 1000)
print(json.dumps({"messages": n, "bad_frames": bad, "bytes": nbytes, "first_t": first,
                  "last_t": last}), flush=True)
"""

STATS = re.compile(r"(\w+)=(\d+)")
SUMMARY = re.compile(r"collector: (\d+) datagrams, (\d+) records")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="6k datagrams a run, one repetition")
    p.add_argument("--datagrams", type=int, help="datagrams a run (default 100k, quick 6k)")
    p.add_argument("--reps", type=int, help="runs per row (default 3, quick 1)")
    p.add_argument("--no-probe", action="store_true", help="leave out the end-to-end row "
                                                           "through flowprobe")
    p.add_argument("--save", action="store_true",
                   help="write bench/results/relay-<date>[-quick].{md,json}")
    p.add_argument("--out", help="output stem (default bench/work/relay-last)")


def udp_drops_by_port(port: int) -> int | None:
    """The kernel's drop counter of the UDP socket(s) bound to ``port`` (another process's)."""
    from engine.collect.receive import udp_socket_rows
    drops = [int(r[12]) for r in udp_socket_rows() if r[1].endswith(":%04X" % port)]
    return sum(drops) if drops else None


class _Relay:
    def __init__(self, secret: str | None, core: int):
        self.udp, self.zport = common.free_port(socket.SOCK_DGRAM), common.free_port()
        self.err = tempfile.TemporaryFile("w+")
        argv = [sys.executable, "-m", "engine.apps.flowrelay", "-c", f"127.0.0.1:{self.udp}",
                "-z", f"tcp://127.0.0.1:{self.zport}c", "-v", "--stats-interval", "0.2"]
        if secret:
            argv += [f"--key={secret}"]  # a Z85 key may start with "-"
        self.proc = subprocess.Popen(argv, cwd=str(common.ROOT), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.err, text=True,
                                     preexec_fn=lambda: os.sched_setaffinity(0, {core}))
        self.url = f"tcp://127.0.0.1:{self.zport}"
        deadline = time.monotonic() + 30
        while "listening on" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flowrelay did not start: {self.text()[-1500:]}")
            time.sleep(0.02)

    def text(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def stats(self) -> dict:
        for line in reversed(self.text().splitlines()):
            if "received=" in line:
                return {k: int(v) for k, v in STATS.findall(line)}
        return {}

    def wait_drained(self, sent: int, timeout: float = 300) -> None:
        """Until the relay has taken in (or the kernel dropped) every datagram and its queue is
        empty; or nothing has changed for 3 s."""
        t0 = time.monotonic()
        last, since = None, time.monotonic()
        while time.monotonic() - t0 < timeout:
            st = self.stats()
            kd = udp_drops_by_port(self.udp) or 0
            if st and st["received"] + kd >= sent and st["queued"] == 0:
                return
            key = (st.get("received"), st.get("forwarded"))
            if key != last:
                last, since = key, time.monotonic()
            elif time.monotonic() - since > 3:
                return
            time.sleep(0.05)

    def finish(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        st = self.stats()
        self.err.close()
        return st


def one_run(dgs: list, curve: bool) -> dict:
    """flowrelay with a counting receiver; see the module doc."""
    import zmq
    rcore, lcore = common.two_cores()
    public = secret = None
    if curve:
        public, secret = (k.decode() for k in zmq.curve_keypair())
    relay = _Relay(secret, rcore)
    try:
        if curve and f"CURVE public key {public}" not in relay.text():
            raise RuntimeError("flowrelay printed another public key than ours")
        rx = subprocess.Popen([sys.executable, "-c", RECV_CODE, relay.url, public or "-",
                               str(IDLE_S), str(lcore)], stdout=subprocess.PIPE, text=True,
                              cwd=str(common.ROOT))
        line = rx.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"relay receiver did not connect: {line}")
        gen = bc.Generator(relay.udp, dgs)
        t_first = gen.go()
        sent, send_s = gen.result()
        relay.wait_drained(sent)
        kdrops = udp_drops_by_port(relay.udp)
        got = json.loads(rx.communicate(timeout=300)[0].strip().splitlines()[-1])
    finally:
        st = relay.finish()
    return _account("plain" if not curve else "curve", sent, send_s, t_first, st, kdrops,
                    got["messages"], got["last_t"], bad_frames=got["bad_frames"],
                    bytes=got["bytes"])


def _account(case, sent, send_s, t_first, st, kdrops, received, last_t, **extra) -> dict:
    counted = st.get("queue_drops", 0) + st.get("invalid", 0) + st.get("not_allowed", 0)
    span = (last_t - t_first) if last_t else float("nan")
    d = {"case": case, "sent": sent, "send_s": send_s,
         "offered_per_s": sent / send_s if send_s > 0 else None,
         "relay": st, "relay_received": st.get("received"), "relay_forwarded": st.get("forwarded"),
         "received": received, "relay_drops": counted,
         "queue_drops": st.get("queue_drops", 0), "kernel_drops": kdrops,
         "unaccounted": sent - received - counted - (kdrops or 0),
         "wall_s": span,
         "datagrams_per_s": received / span if span == span and span > 0 else 0.0}
    d.update(extra)
    return d


def probe_run(dgs: list) -> dict:
    """flowrelay (CURVE) -> a real flowprobe -i none --collector-port tcp://... -n none."""
    import zmq
    from bench.engine import flowprobe_cmd
    rcore, lcore = common.two_cores()
    public, secret = (k.decode() for k in zmq.curve_keypair())
    relay = _Relay(secret, rcore)
    tmp = tempfile.mkdtemp(prefix="bench-relay-")
    stats_path = os.path.join(tmp, "stats.json")
    err = tempfile.TemporaryFile("w+")
    argv = flowprobe_cmd() + ["-i", "none", "--collector-port", relay.url,
                              "--collector-encryption-key", public, "--collector-passthrough",
                              "-n", "none", "--dump-stats", stats_path,
                              "--dump-stats-interval", "0.2"]
    fp = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                          cwd=str(common.ROOT),
                          preexec_fn=lambda: os.sched_setaffinity(0, {lcore}))
    marks = []                       # (time a stats file was first seen with this count, count)

    def poll_stats():
        try:
            with open(stats_path) as f:
                n = json.load(f).get("collected_records", 0)
        except (OSError, ValueError):
            return
        if not marks or marks[-1][1] != n:
            marks.append((time.monotonic(), n))
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(stats_path):
            if fp.poll() is not None or time.monotonic() > deadline:
                err.seek(0)
                raise RuntimeError(f"flowprobe did not start: {err.read()[-1500:]}")
            time.sleep(0.05)
        time.sleep(1.0)                          # its CURVE handshake with the relay
        gen = bc.Generator(relay.udp, dgs)
        t_first = gen.go()
        while gen.proc.is_alive():
            poll_stats()
            time.sleep(0.05)
        sent, send_s = gen.result()
        t_sent = time.monotonic()
        while True:                              # relay drained, probe idle for 1.5 s
            poll_stats()
            st = relay.stats()
            if st.get("queued", 1) == 0 and marks and time.monotonic() - marks[-1][0] > IDLE_S:
                break
            if time.monotonic() - t_sent > 300:
                break
            time.sleep(0.05)
        kdrops = udp_drops_by_port(relay.udp)
    finally:
        fp.send_signal(signal.SIGTERM)
        try:
            fp.wait(timeout=60)
        except subprocess.TimeoutExpired:
            fp.kill()
            fp.wait()
        st = relay.finish()
    err.seek(0)
    stderr = err.read()
    err.close()
    try:
        os.unlink(stats_path)
        os.rmdir(tmp)
    except OSError:
        pass
    m = [SUMMARY.search(x) for x in stderr.splitlines() if SUMMARY.search(x)]
    if fp.returncode != 0 or not m:
        raise RuntimeError(f"flowprobe failed ({fp.returncode}): {stderr[-1500:]}")
    received, records = int(m[-1][1]), int(m[-1][2])
    # the last change of the record count: its first sighting is within 0.2 s after it happened
    last_t = marks[-1][0] if marks and marks[-1][1] else None
    return _account("end to end (CURVE, flowprobe)", sent, send_s, t_first, st, kdrops, received,
                    last_t, records=records)


ROWS = [("plain", "ZeroMQ, plain"), ("curve", "ZeroMQ, CURVE"),
        ("probe", "end to end: CURVE into `flowprobe -i none --collector-passthrough -n none`")]


def _log(msg: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def measure(quick: bool = False, datagrams=None, reps=None, probe: bool = True) -> dict:
    from bench import zmqcollector
    cfg = QUICK if quick else FULL
    n = datagrams or cfg["datagrams"]
    reps = reps or cfg["reps"]
    dgs = zmqcollector.datagrams(n * 30)[:n]
    rows = [r for r in ROWS if probe or r[0] != "probe"]
    runs: dict = {key: [] for key, _ in rows}
    for i in range(reps):                        # interleaved repetitions
        for key, _ in rows:
            r = probe_run(dgs) if key == "probe" else one_run(dgs, key == "curve")
            runs[key].append(r)
            _log(f"{key} {i + 1}/{reps}: {r['datagrams_per_s']:,.0f} datagrams/s, sent "
                 f"{r['sent']} received {r['received']} relay drops {r['relay_drops']} kernel "
                 f"drops {r['kernel_drops']} unaccounted {r['unaccounted']}")
    out = []
    for key, label in rows:
        rs = runs[key]
        med = common.summary([r["datagrams_per_s"] for r in rs])
        out.append({"key": key, "label": label, "datagrams_per_s": med,
                    "offered_per_s": common.summary([r["offered_per_s"] or 0 for r in rs]),
                    "sent": sum(r["sent"] for r in rs),
                    "received": sum(r["received"] for r in rs),
                    "relay_drops": sum(r["relay_drops"] for r in rs),
                    "kernel_drops": (sum(r["kernel_drops"] for r in rs)
                                     if all(r["kernel_drops"] is not None for r in rs) else None),
                    "unaccounted": sum(r["unaccounted"] for r in rs), "runs": rs})
    return {"benchmark": "relay", "datagrams_per_run": n, "reps": reps,
            "datagram_bytes": sum(len(d) for d in dgs) / len(dgs), "rows": out}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"### flowrelay: datagrams/s forwarded from UDP to ZeroMQ on loopback, "
             f"{res['date']}{' (quick)' if res['quick'] else ''}", "",
             f"Machine: {m['cpu_model']}, {m['usable_cpus']} usable of {m['logical_cpus']} "
             f"logical CPUs, kernel {m['kernel']}, Python {m['python']}, pyzmq "
             f"{m['versions'].get('pyzmq')} (libzmq {m.get('libzmq')}), flowprobe "
             f"{m['versions'].get('flowprobe')} (git {m.get('git_commit')}"
             f"{', uncommitted changes' if m.get('git_dirty') else ''}); load average at start "
             f"{' / '.join('%.2f' % x for x in m['loadavg_at_start'])}.", "",
             f"{res['datagrams_per_run']:,} datagrams a run (NetFlow v9 and IPFIX interleaved, "
             f"30 records, {res['datagram_bytes']:.0f} bytes on average), sent as fast as the "
             f"generator goes; {res['reps']} run(s) a row: datagrams/s is the median (min-max), "
             f"the counts are totals over the runs.", "",
             "| path | datagrams/s forwarded | offered (sent/s) | sent | forwarded (received) | "
             "relay-counted drops | kernel UDP drops | unaccounted |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        kd = "n/a" if r["kernel_drops"] is None else f"{r['kernel_drops']:,}"
        lines.append(f"| {r['label']} | {common.fmt_summary(r['datagrams_per_s'])} | "
                     f"{common.fmt_summary(r['offered_per_s'])} | {r['sent']:,} | "
                     f"{r['received']:,} | {r['relay_drops']:,} | {kd} | "
                     f"{r['unaccounted']:,} |")
    lines += ["", "flowrelay (`python -m engine.apps.flowrelay -v`, default --queue 10000) pinned to one "
              "core; the generator and the receiver (a ZeroMQ PULL socket, CURVE client, as "
              "flowprobe connects) share the other. Datagrams/s: received / (last received - "
              "first sent). Relay-counted drops: queue_drops + invalid + not_allowed from the "
              "relay's final statistics line; kernel UDP drops: the drop counter of the relay's "
              "socket in /proc/net/udp. End to end: received = the datagrams in flowprobe's "
              "summary line, last receive time from its --dump-stats file (0.2 s resolution).",
              "", f"Reproduce: `{res['command']}`."]
    return "\n".join(lines)


def run(args) -> int:
    import zmq
    started = time.time()
    res = {"benchmark": "relay", "date": common.today(), "quick": bool(args.quick),
           "command": "python -m bench relay" + (" --quick" if args.quick else "")
           + (f" --datagrams {args.datagrams}" if args.datagrams else "")
           + (f" --reps {args.reps}" if args.reps else "")
           + (" --no-probe" if args.no_probe else "") + (" --save" if args.save else ""),
           "machine": common.machine()}
    res["machine"]["versions"]["pyzmq"] = common._pkg_version("pyzmq")
    res["machine"]["libzmq"] = zmq.zmq_version()
    res.update(measure(args.quick, args.datagrams, args.reps, probe=not args.no_probe))
    res["date"] = common.today()
    res["elapsed_s"] = time.time() - started
    res["machine"]["loadavg_at_end"] = os.getloadavg()
    res["problems"] = [f"{r['label']}: {r['unaccounted']} unaccounted" for r in res["rows"]
                       if r["unaccounted"]] + \
                      [f"{r['label']}: rate 0" for r in res["rows"]
                       if not r["datagrams_per_s"].get("median")]
    if args.save:
        stem = common.RESULTS / f"relay-{res['date']}{'-quick' if args.quick else ''}"
    else:
        stem = pathlib.Path(args.out) if args.out else common.WORK / "relay-last"
    text = markdown(res)
    if res["problems"]:
        text += "\n\nPROBLEMS: " + "; ".join(res["problems"])
    print(text)
    stem.parent.mkdir(parents=True, exist_ok=True)
    common.write_json(pathlib.Path(f"{stem}.json"), res)
    pathlib.Path(f"{stem}.md").write_text(text + "\n")
    print(f"# wrote {stem}.md, {stem}.json", file=sys.stderr)
    return 1 if res["problems"] else 0

