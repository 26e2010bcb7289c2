"""The development corpus: ndpiReader's expected flow tables, and our flows for the same capture."""
from __future__ import annotations

import collections
import ipaddress
import re
import subprocess
from dataclasses import dataclass, field

import numpy as np

from engine._fastpath import META_DTYPE, FlowTable
from engine._reader import PcapReader

FLOW = re.compile(r'^\t(\d+)\t(\S+) (\S+) (<->|->) (\S+) (\[.*)$')
CNT = re.compile(r'\[(\d+) pkts/(\d+) bytes (?:<->|->) (\d+) pkts/(\d+) bytes\]')
L4 = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58, "SCTP": 132, "IGMP": 2, "ESP": 50,
      "PIM": 103, "OSPF": 89, "GRE": 47}


@dataclass(frozen=True)
class Flow:
    vlan: int
    proto: int
    left: tuple          # (address text, port): the sender of the first packet (ndpiReader)
    right: tuple
    l2r_pkts: int
    l2r_bytes: int
    r2l_pkts: int
    r2l_bytes: int
    info: str = field(default="", compare=False)     # ndpiReader's bracketed columns

    def key(self):
        return (self.vlan, self.proto, frozenset((self.left, self.right)))


def _endpoint(text: str) -> tuple:
    addr, _, port = text.rpartition(":")
    addr = addr.strip("[]")
    try:
        addr = str(ipaddress.ip_address(addr))
    except ValueError:       # ndpiReader prints some fuzzed IPv6 addresses in no valid form
        pass
    return (addr, int(port))


def expected_flows(path) -> list[Flow]:
    flows = []
    for line in open(path, encoding="utf-8", errors="replace"):
        m = FLOW.match(line.rstrip("\n"))
        if not m:
            continue
        l4, left, right, rest = m.group(2), m.group(3), m.group(5), m.group(6)
        c = CNT.search(rest)
        vlan = re.search(r'\[VLAN: (\d+)\]', rest)
        proto = L4[l4] if l4 in L4 else int(l4)
        flows.append(Flow(int(vlan.group(1)) if vlan else 0, proto, _endpoint(left),
                          _endpoint(right), *map(int, c.groups()), info=rest))
    return flows


def run_fastpath(path, **kw) -> tuple[np.ndarray, dict]:
    """All flows of a capture, with timeouts long enough that nothing expires before the end
    (ndpiReader has no timeouts in file mode)."""
    kw.setdefault("idle_timeout", 1e9)
    kw.setdefault("lifetime", 1e9)
    table = FlowTable(max_flows=65536, **kw)
    out = []
    with PcapReader(str(path)) as reader:
        meta = np.zeros(4096, dtype=META_DTYPE)
        while (n := reader.next_batch(meta)):
            i = 0
            while i < n:
                i = table.process(reader.buffer, meta[:n], i)
                out.append(table.take())
    while not table.flush():
        out.append(table.take())
    out.append(table.take())
    return np.concatenate(out), table.stats()


def our_flows(records: np.ndarray) -> list[Flow]:
    flows = []
    for r in records:
        n = 4 if r["ip_version"] == 4 else 16
        src = str(ipaddress.ip_address(bytes(r["src_addr"][:n])))
        dst = str(ipaddress.ip_address(bytes(r["dst_addr"][:n])))
        flows.append(Flow(int(r["vlan"]), int(r["protocol"]), (src, int(r["src_port"])),
                          (dst, int(r["dst_port"])), int(r["in_pkts"]), int(r["in_bytes"]),
                          int(r["out_pkts"]), int(r["out_bytes"])))
    return flows


def capture_packets(path, truncated=None) -> list[tuple]:
    """Every packet of a capture as (ts_ns, frame, wirelen, linktype), read by PcapReader."""
    out = []
    with PcapReader(str(path)) as rd:
        meta = np.zeros(4096, dtype=META_DTYPE)
        buf = rd.buffer
        while (n := rd.next_batch(meta)):
            for m in meta[:n]:
                o, c = int(m["offset"]), int(m["caplen"])
                out.append((int(m["ts_ns"]), bytes(buf[o:o + c]), int(m["wirelen"]),
                            int(m["linktype"])))
        if truncated is not None:
            truncated.append(rd.truncated)
    return out


def _text(addr: bytes, version: int) -> str:
    return str(ipaddress.ip_address(addr[:4] if version == 4 else addr))


def packet_owners(packets) -> list:
    """For every packet, (flow key, sender endpoint) as the mirror (engine/reference.py) assigns
    it, or None where it is not accounted. Only the assignment comes from the mirror: what is
    counted for each packet is checked against tshark and ndpiReader."""
    from engine.reference import Decoder, Drop
    dec = Decoder()
    out = []
    for ts, frame, wire, lt in packets:
        try:
            p = dec.decode(frame, lt, ts // 1000)
        except Drop:
            out.append(None)
            continue
        if p.outer_ip_len > max(wire - (p.l2_len or 0), 0):
            out.append(None)
            continue
        a = (_text(p.src, p.ip_version), p.sport)
        b = (_text(p.dst, p.ip_version), p.dport)
        out.append(((p.vlan, p.proto, frozenset((a, b))), a))
    return out


_PACKET = re.compile(r"<packet>(.*?)</packet>", re.S)
_PROTO = re.compile(r'<proto name="([^"]+)"[^>]*?pos="(\d+)"')
_FIELD = re.compile(r'<field name="([a-z0-9_.]+)"[^>]*? show="([^"]*)"')


def tshark_packets(path) -> list[dict]:
    """tshark's reading of every frame of a capture (no reassembly): ``l2``, the offset of the
    first IP header (None: no IP); ``ts_ns``; ``tcp``, the innermost TCP segment as (sender,
    receiver, flags) and ``udp`` the innermost UDP datagram as (sender, receiver), None where
    there is none outside an ICMP error or a Teredo tunnel (which the flow key does not look
    into)."""
    from conftest import tool
    out = subprocess.run([tool("tshark"), "-n", "-o", "ip.defragment:FALSE", "-o",
                          "ipv6.defragment:FALSE", "-o", "tcp.desegment_tcp_streams:FALSE",
                          "-r", str(path), "-T", "pdml"], capture_output=True, timeout=300,
                         text=True, errors="replace").stdout
    packets = []
    for m in _PACKET.finditer(out):
        body = m.group(1)
        pk = {"l2": None, "ts_ns": None, "tcp": None, "udp": None}
        src = dst = None
        # the protocol elements in order, each with the text up to the next one
        marks = [(p.start(), p.group(1), int(p.group(2))) for p in _PROTO.finditer(body)]
        for i, (start, name, pos) in enumerate(marks):
            text = body[start:marks[i + 1][0] if i + 1 < len(marks) else len(body)]
            fields = dict(_FIELD.findall(text))
            if name == "frame":
                sec, _, frac = fields.get("frame.time_epoch", "0.").partition(".")
                pk["ts_ns"] = int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])
            elif name in ("ip", "ipv6"):
                if pk["l2"] is None:
                    pk["l2"] = pos
                src, dst = fields.get(name + ".src"), fields.get(name + ".dst")
            elif name in ("icmp", "icmpv6", "teredo"):
                break
            elif name in ("tcp", "udp") and src and name + ".srcport" in fields:
                ends = ((str(ipaddress.ip_address(src)), int(fields[name + ".srcport"])),
                        (str(ipaddress.ip_address(dst)), int(fields[name + ".dstport"])))
                pk["tcp"] = pk["udp"] = None                 # the innermost one counts
                if name == "tcp" and "tcp.flags" in fields:
                    pk["tcp"] = (*ends, int(fields["tcp.flags"], 16) & 0xFF)
                elif name == "udp":
                    pk["udp"] = ends
        packets.append(pk)
    return packets


def ndpi_columns(info: str) -> dict:
    """ndpiReader's other columns of a flow line: duration (s, or None for "< 1 sec"), tunnel
    prefix of the protocol, payload-length bins, IAT min/max per direction (ms)."""
    out = {"duration": None, "tunnel": None, "plen_bins": None, "iat": None}
    m = re.search(r"\[([\d.]+) sec\]", info)
    if m:
        out["duration"] = float(m.group(1))
    m = re.search(r"\[proto: (?:([A-Z]+):)?", info)
    out["tunnel"] = m.group(1) if m else None
    m = re.search(r"\[Plen Bins: ([\d,]+)\]", info)
    if m:
        out["plen_bins"] = [int(x) for x in m.group(1).split(",")]
    m = re.search(r"\[IAT c2s/s2c min/avg/max/stddev: (\d+)/(\d+) [\d.]+/[\d.]+ (\d+)/(\d+)", info)
    if m:
        out["iat"] = tuple(int(x) for x in m.groups())      # min c2s, min s2c, max c2s, max s2c
    return out


def l2_sums(owners, tshark) -> tuple[collections.Counter, int]:
    """Bytes of link-layer header per (flow key, sender) by tshark's offsets, and how many
    accounted packets tshark found no IP header in."""
    sums: collections.Counter = collections.Counter()
    unseen = 0
    for owner, t in zip(owners, tshark):
        if owner is None:
            continue
        if t["l2"] is None:
            unseen += 1
            continue
        sums[owner] += t["l2"]
    return sums, unseen
