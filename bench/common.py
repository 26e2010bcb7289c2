"""Helpers shared by the benchmarks: machine description, timing of child processes, statistics."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"


# --- machine -------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(cmd: Sequence[str]) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else None
    except (OSError, subprocess.SubprocessError):
        return None


def _pkg_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


def _meminfo_total() -> Optional[int]:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine() -> dict:
    """What the numbers were measured on."""
    d = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": _meminfo_total(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "versions": {n: _pkg_version(n) for n in ("numpy", "Cython", "flowprobe", "nfstream",
                                                     "dpkt", "pcapy-ng")},
        "loadavg_at_start": os.getloadavg(),
    }
    if shutil.which("softflowd"):
        dpkg = _version(["dpkg-query", "-W", "-f", "${Version}", "softflowd"])
        d["versions"]["softflowd"] = dpkg
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        d["git_commit"] = rev.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10)
        d["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        d["git_commit"] = None
    return d


# --- statistics ----------------------------------------------------------------------------------
def summary(values: Sequence[float]) -> dict:
    v = sorted(values)
    if not v:
        return {"n": 0}
    med = statistics.median(v)
    return {"n": len(v), "median": med, "min": v[0], "max": v[-1],
            "spread_pct": (100.0 * (v[-1] - v[0]) / med) if med else 0.0,
            "values": list(values)}


def fmt_rate(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    if x >= 1e6:
        return "%.2f M" % (x / 1e6)
    if x >= 1e3:
        return "%.1f k" % (x / 1e3)
    return "%.0f" % x


def fmt_summary(s: dict, fmt=fmt_rate) -> str:
    """'median (min-max)'."""
    if not s or not s.get("n"):
        return "n/a"
    if s["n"] == 1:
        return fmt(s["median"])
    return "%s (%s-%s)" % (fmt(s["median"]), fmt(s["min"]), fmt(s["max"]))


# --- child processes -----------------------------------------------------------------------------
@dataclass
class ChildResult:
    argv: list
    returncode: int
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    maxrss_bytes: int
    stdout: str = ""
    stderr: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s


# Linux keeps a process's peak RSS across execve: a child forked from a large benchmark process
# reports (in ru_maxrss) at least its parent's RSS at the fork. GNU time, a small process, forks the
# command itself, so its %M is the command's own peak; the CPU time still comes from os.wait4.
GNU_TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None


def run_child(argv: Sequence[str], capture_stdout: bool = False, timeout: float = 900,
              env: Optional[dict] = None, cwd: Optional[str] = None) -> ChildResult:
    """Run a command to completion; wall time, and CPU time and peak RSS of it and its waited-for
    descendants (os.wait4; peak RSS through GNU time when installed, see GNU_TIME). stdout goes to
    /dev/null unless captured; stderr is kept."""
    rss_file = None
    if GNU_TIME:
        fd, rss_file = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        argv = [GNU_TIME, "-f", "%M", "-o", rss_file, *argv]
    try:
        res = _run_child(argv, capture_stdout, timeout, env, cwd)
        if rss_file:
            res.argv = res.argv[5:]
            try:
                lines = open(rss_file).read().split()
                res.maxrss_bytes = int(lines[-1]) * 1024
            except (OSError, ValueError, IndexError):
                pass
        return res
    finally:
        if rss_file:
            os.unlink(rss_file)


def _run_child(argv: Sequence[str], capture_stdout: bool, timeout: float,
               env: Optional[dict], cwd: Optional[str]) -> ChildResult:
    with tempfile.TemporaryFile("w+") as err, tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL,
                             stdout=out if capture_stdout else subprocess.DEVNULL,
                             stderr=err, env=env, cwd=cwd or str(ROOT))
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        out.seek(0)
        return ChildResult(list(argv), p.returncode, wall, ru.ru_utime, ru.ru_stime,
                           ru.ru_maxrss * 1024, out.read() if capture_stdout else "", err.read())


def python_child(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def today() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d")


def write_json(path: pathlib.Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def free_port(kind=socket.SOCK_STREAM) -> int:
    """A port nothing listens on now (127.0.0.1)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_cores() -> tuple[int, int]:
    """(core under test, load core): the first two usable CPUs (the same one on a 1-CPU box)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    return cpus[0], cpus[1] if len(cpus) > 1 else cpus[0]
