"""The generated capture set (tools/gen_cases.py), once per session, and our flows in the
sidecar's terms. Needs no file from outside the repository."""
from __future__ import annotations

import ipaddress
import pathlib
import socket
import struct
import sys

import numpy as np

from conftest import ROOT
from engine.fields import END_REASONS, TUNNELS

sys.path.insert(0, str(ROOT / "tools"))
import gen_cases  # noqa: E402
import packets  # noqa: E402,F401  (the builders, for tests)

NAMES = [c.name for c in gen_cases.all_cases()]
COMPARED = ("ip_version", "protocol", "src", "dst", "src_port", "dst_port", "vlan", "outer_vlan",
            "icmp_type", "tunnel", "in_pkts", "in_bytes", "out_pkts", "out_bytes", "first_ms",
            "last_ms", "client_tcp_flags", "server_tcp_flags", "src_tos", "dst_tos", "src_frags",
            "dst_frags", "src_mac", "dst_mac", "end_reason")


SCALARS = set(COMPARED) - {"src", "dst", "src_mac", "dst_mac", "tunnel", "end_reason"}


def write(directory: pathlib.Path) -> dict:
    """Every case written to ``directory``: name -> (capture path, sidecar)."""
    out = {}
    for exp in gen_cases.generate(str(directory)):
        out[exp["case"]] = (directory / exp["file"], exp)
    return out


def as_sidecar(records: np.ndarray) -> list[dict]:
    """Flow records in the sidecar's form (addresses and MACs as text, names for enums)."""
    out = []
    for r in records:
        n = 4 if r["ip_version"] == 4 else 16
        d = {k: int(r[k]) for k in COMPARED if k in SCALARS}
        d["src"] = str(ipaddress.ip_address(bytes(r["src_addr"][:n])))
        d["dst"] = str(ipaddress.ip_address(bytes(r["dst_addr"][:n])))
        d["src_mac"], d["dst_mac"] = bytes(r["src_mac"]).hex(":"), bytes(r["dst_mac"]).hex(":")
        d["tunnel"] = TUNNELS[int(r["tunnel"])]
        d["end_reason"] = END_REASONS[int(r["end_reason"])]
        out.append(d)
    return out


def canon(flows: list[dict]) -> list[tuple]:
    return sorted(tuple(f[k] for k in COMPARED) for f in flows)


def tshark_frames(path) -> list[dict]:
    """tshark's reading of every frame (no reassembly): the offset of the first IP header, the
    innermost addresses and ports, the time and wire length, and the protocols it found."""
    import subprocess
    import xml.etree.ElementTree as ET
    from conftest import tool
    out = subprocess.run([tool("tshark"), "-n", "-o", "ip.defragment:FALSE",
                          "-o", "ipv6.defragment:FALSE", "-o", "capwap.swap_fc:FALSE",
                          "-r", str(path), "-T", "pdml"], capture_output=True, check=True,
                         timeout=120).stdout
    frames = []
    for pkt in ET.fromstring(out).iter("packet"):
        f = {"l2": None, "src": None, "dst": None, "ports": None, "protos": []}
        for proto in pkt.iter("proto"):
            name = proto.get("name")
            f["protos"].append(name)
            fields = {x.get("name"): x.get("show") for x in proto.iter("field")}
            if name == "frame":
                sec, _, frac = fields.get("frame.time_epoch", "").partition(".")
                f["ts"] = int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9]) if sec else None
                f["wire"] = int(fields["frame.len"])
            elif name in ("ip", "ipv6"):
                if f["l2"] is None:
                    f["l2"] = int(proto.get("pos"))
                f["src"], f["dst"] = fields.get(name + ".src"), fields.get(name + ".dst")
                f["ports"] = None
            elif name in ("tcp", "udp", "sctp"):
                f["ports"] = sorted((int(fields[name + ".srcport"]),
                                     int(fields[name + ".dstport"])))
        frames.append(f)
    return frames


# --- collector input ---------------------------------------------------------------------------
def v5_datagram(seq: int, first: int, n: int = 10) -> bytes:
    """NetFlow v5 with ``n`` flows numbered first..first+n-1 (10.1.x.y -> 10.2.x.y)."""
    head = struct.pack(">HHIIIIBBH", 5, n, 100_000, 1_700_000_000, 0, seq, 0, 0, 0)
    recs = []
    for i in range(first, first + n):
        src = socket.inet_aton(f"10.1.{i >> 8 & 255}.{i & 255}")
        dst = socket.inet_aton(f"10.2.{i >> 8 & 255}.{i & 255}")
        recs.append(src + dst + bytes(4) + struct.pack(
            ">HHIIIIHHBBBBHHBBH", 1, 2, i + 1, 100 * (i + 1), 50_000, 90_000, 1000 + i % 50000,
            80, 0, 0x18, 6, 0, 0, 0, 24, 24, 0))
    return head + b"".join(recs)
