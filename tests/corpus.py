"""The development corpus: ndpiReader's expected flow tables, and our flows for the same capture."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

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
                          _endpoint(right), *map(int, c.groups())))
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
