"""Flow exports the test session records itself: softflowd (NetFlow v5, v9, IPFIX) and pmacctd
(nfprobe IPFIX, sfprobe sFlow) replay a capture made by tools/gen_pcap.py to a UDP socket on
loopback; the datagrams are saved as pcaps named as in ../shared/pcaps/exports (so the same
parser and tshark read either set)."""
from __future__ import annotations

import pathlib
import socket
import struct
import subprocess

from conftest import tool, wait_until

NAMES = {
    # file: (exporter, version or plugin, destination port tshark knows it on)
    "softflowd-netflow-v5.pcap": ("softflowd", "5", 9995),
    "softflowd-netflow-v9.pcap": ("softflowd", "9", 9995),
    "softflowd-ipfix.pcap": ("softflowd", "10", 4739),
    "pmacctd-nfprobe-ipfix.pcap": ("pmacctd", "nfprobe", 4739),
    "pmacctd-sflow-v5.pcap": ("pmacctd", "sfprobe", 6343),
}
PMACCT_CONF = """daemonize: false
pcap_savefile: {pcap}
pcap_savefile_wait: false
plugins: {plugin}
{plugin}_receiver: 127.0.0.1:{port}
{extra}
sampling_rate: 1
"""


def datagram_pcap(path, datagrams, dport: int, first_second: int = 1_700_000_000) -> None:
    """Datagrams as raw-IP UDP packets 127.0.0.1:40000 -> 127.0.0.1:dport (link type 101)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for i, d in enumerate(datagrams):
            udp = struct.pack(">HHHH", 40000, dport, 8 + len(d), 0) + d
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                             socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
            words = struct.unpack(">10H", ip)
            s = sum(words)
            s = (s & 0xFFFF) + (s >> 16)
            ip = ip[:10] + struct.pack(">H", ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF) + ip[12:]
            f.write(struct.pack("<IIII", first_second + i, 0, len(ip) + len(udp),
                                len(ip) + len(udp)) + ip + udp)


def receive_all(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on ``sock`` (the sender has exited: on loopback they are all
    queued, or counted as dropped by the kernel, which the caller checks)."""
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            return out


def export(capture, exporter: str, version: str, workdir: pathlib.Path) -> list[bytes]:
    """The datagrams ``exporter`` sends for ``capture``."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    try:
        if exporter == "softflowd":
            subprocess.run([tool("softflowd"), "-r", str(capture), "-n", f"127.0.0.1:{port}",
                            "-v", version], capture_output=True, timeout=120, check=True)
            return receive_all(rx)
        conf = workdir / f"pmacctd-{version}.conf"
        conf.write_text(PMACCT_CONF.format(pcap=capture, plugin=version, port=port, extra=(
            "nfprobe_version: 10" if version == "nfprobe" else "")))
        # pmacctd exits (1 when the plugin ends before its core) once the file is read; its
        # plugin process may still be sending: wait until it is gone too
        p = subprocess.run([tool("pmacctd"), "-f", str(conf)], capture_output=True, timeout=120)
        wait_until(lambda: not plugin_running(conf), timeout=30, what="pmacctd's plugin to end")
        assert p.returncode in (0, 1), p.stderr
        return receive_all(rx)
    finally:
        rx.close()


def plugin_running(conf: pathlib.Path) -> bool:
    """Whether a process of pmacctd started with ``conf`` is still alive (/proc)."""
    for proc in pathlib.Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(conf) in (proc / "cmdline").read_text():
                return True
        except OSError:
            continue
    return False


def record(directory: pathlib.Path, capture) -> pathlib.Path:
    """Every export of NAMES for ``capture``, as pcaps in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, (exporter, version, dport) in NAMES.items():
        grams = export(capture, exporter, version, directory)
        assert grams, f"{exporter} {version} sent nothing"
        datagram_pcap(directory / name, grams, dport)
    return directory
