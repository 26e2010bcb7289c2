#!/usr/bin/env python3
"""The load generators: builds tools/pcap-replay (C, from tools/pcap-replay.c) and runs it, and
tools/nf-send (NetFlow v9/IPFIX datagrams with sendmmsg, for the collector bench: ``nf_send()``).

    python tools/loadgen.py --build                       # what tools/setup-debian.sh runs
    python tools/loadgen.py -i veth0 [-r PPS] [-l LOOPS] [-c CPU] capture.pcap

`replay()` is what the live tests and `python -m bench live` call: it returns pcap-replay's JSON
report (packets, bytes, seconds, pps, bits_per_second, not_sent by reason, ...). `veth_pair()`
makes the network namespaces they replay across; `capture_sockets()` is how they see that a
capture is ready (its packet socket, ring and fanout group, as `ss` shows them).
"""
from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
import uuid
from typing import Iterator, Optional, Sequence

TOOLS = pathlib.Path(__file__).resolve().parent
SOURCE = TOOLS / "pcap-replay.c"
BINARY = TOOLS / "pcap-replay"


NF_SOURCE = TOOLS / "nf-send.c"
NF_BINARY = TOOLS / "nf-send"


def build(source: pathlib.Path = SOURCE, binary: pathlib.Path = BINARY,
          libs: Sequence[str] = ("-lpcap",)) -> pathlib.Path:
    """The binary, compiled first when it is missing or older than its source."""
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        r = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", str(binary), str(source),
                            *libs], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"cannot build {binary.name} (gcc and libpcap-dev are needed): "
                               f"{r.stderr.strip()}")
    return binary


def nf_send(port: int, version: int = 9, rate: float = 0, seconds: float = 1.0,
            datagrams: int = 0, records: int = 30, flows: int = 100000,
            host: str = "127.0.0.1", timeout: float = 600) -> dict:
    """tools/nf-send: NetFlow v9 (or IPFIX, version 10) datagrams of ``records`` records to
    HOST:PORT at ``rate`` records/s (0: as fast as it can) for ``seconds`` or ``datagrams``; its
    JSON report (datagrams, records, seconds, records_per_s, send_errors)."""
    cmd = [str(build(NF_SOURCE, NF_BINARY, ())), "-H", host, "-p", str(port), "-V", str(version),
           "-r", str(rate), "-s", str(seconds), "-n", str(datagrams), "-R", str(records),
           "-f", str(flows)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip() or f"nf-send exited {r.returncode}")
    return json.loads(r.stdout)


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


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@contextlib.contextmanager
def veth_pair(prefix: str = "lg", quiet: bool = True,
              addresses: Optional[tuple[str, str]] = None) -> Iterator[tuple[str, str, str, str]]:
    """Two new network namespaces joined by a veth pair (MTU 9000), removed afterwards. Yields
    (capture namespace, peer namespace, capture interface, peer interface). ``quiet``: IPv6 off
    in both, so that neither kernel sends a packet of its own (with no ``addresses`` either, what
    the capture side sees is exactly what is replayed from the peer). ``addresses``: (capture
    side, peer side) with their prefix length, e.g. ("192.0.2.1/24", "192.0.2.2/24").
    Raises subprocess.CalledProcessError when namespaces cannot be made here."""
    tag = uuid.uuid4().hex[:6]
    ns = (f"{prefix}p{tag}", f"{prefix}q{tag}")
    ifs = (f"{prefix}a{tag}", f"{prefix}b{tag}")
    try:
        for n in ns:
            _sh("ip", "netns", "add", n)
            if quiet:
                _sh("ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1")
        _sh("ip", "link", "add", ifs[0], "netns", ns[0], "mtu", "9000", "type", "veth", "peer",
            "name", ifs[1], "netns", ns[1], "mtu", "9000")
        for n, i, a in zip(ns, ifs, addresses or (None, None)):
            if a:
                _sh("ip", "-n", n, "addr", "add", a, "dev", i)
            _sh("ip", "-n", n, "link", "set", i, "up")
            _sh("ip", "-n", n, "link", "set", "lo", "up")
        yield ns[0], ns[1], ifs[0], ifs[1]
    finally:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def capture_sockets(netns: str, iface: str) -> list[str]:
    """`ss -0 -e`'s entry (several lines: ring, fanout group) of each packet socket bound to
    ``iface`` in ``netns``."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-0", "-e"], capture_output=True,
                         text=True).stdout
    return [e for e in out.split("\np_raw")[1:] if f":{iface} " in e.splitlines()[0]]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--build"]:
        print(build())
        return 0
    return subprocess.call([str(build()), *argv])


if __name__ == "__main__":
    sys.exit(main())
