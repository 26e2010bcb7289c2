#!/usr/bin/env python3
"""The load generator: builds tools/pcap-replay (C, from tools/pcap-replay.c) and runs it.

    python tools/loadgen.py --build                       # what tools/setup-debian.sh runs
    python tools/loadgen.py -i veth0 [-r PPS] [-l LOOPS] [-c CPU] capture.pcap

`replay()` is what the live tests and `python -m bench live` call: it returns pcap-replay's JSON
report (packets, bytes, seconds, pps, bits_per_second, not_sent by reason, ...).
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Optional, Sequence

TOOLS = pathlib.Path(__file__).resolve().parent
SOURCE = TOOLS / "pcap-replay.c"
BINARY = TOOLS / "pcap-replay"


def build() -> pathlib.Path:
    """The binary, compiled first when it is missing or older than its source."""
    if not BINARY.exists() or BINARY.stat().st_mtime < SOURCE.stat().st_mtime:
        r = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", str(BINARY), str(SOURCE),
                            "-lpcap"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"cannot build {BINARY.name} (gcc and libpcap-dev are needed): "
                               f"{r.stderr.strip()}")
    return BINARY


def command(iface: str, capture: str, rate: float = 0, loops: int = 1,
            cpu: Optional[int] = None, netns: Optional[str] = None) -> list[str]:
    cmd = [str(build()), "-i", iface, "-r", str(rate), "-l", str(loops)]
    if cpu is not None:
        cmd += ["-c", str(cpu)]
    cmd.append(str(capture))
    return (["ip", "netns", "exec", netns] if netns else []) + cmd


def replay(iface: str, capture: str, rate: float = 0, loops: int = 1, cpu: Optional[int] = None,
           netns: Optional[str] = None, timeout: float = 600) -> dict:
    """Send the capture (rate 0: as fast as possible) and return what pcap-replay reports."""
    r = subprocess.run(command(iface, capture, rate, loops, cpu, netns), capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip() or f"pcap-replay exited {r.returncode}")
    return json.loads(r.stdout)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--build"]:
        print(build())
        return 0
    return subprocess.call([str(build()), *argv])


if __name__ == "__main__":
    sys.exit(main())
