"""A small pure-Python reference of the fast path: decode, flow accounting, behaviour features.

This is the test oracle for ``engine/_fastpath.pyx`` (as aiohttp's pure-Python HTTP parser is for
its C parser): written from docs/DESIGN.md ("Fast-path semantics") for readability, not speed.
``reference_flows(packets)`` takes ``(ts_ns, frame, wirelen, linktype)`` tuples and returns one
dict per exported flow (slice), keyed by the ``RECORD_DTYPE`` column names.

Where DESIGN.md is silent the reference follows the fast path's documented choices: the last
802.1Q tag keys the flow (``outer_vlan`` keeps the first of QinQ); a UDP datagram on a tunnel port
that carries no IP packet stays on the outer UDP flow; a frame whose outermost IP header claims
more than the frame holds is dropped (``ip_length_exceeds_frame``); a fragment cache entry lives
30 s; idle/linger expire when ``last + timeout <= now`` (linger counted from the last packet);
flows still lingering at end of input keep their FIN/RST reason. Being a mirror, it is not the
only oracle: the tests also hold both against tools/gen_cases.py's sidecars, dpkt, tshark and
ndpiReader's tables.
"""
from __future__ import annotations

import dataclasses
import heapq
import math
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Optional

from engine.fields import COLUMNS, END_REASONS, TUNNELS

# drop reasons, named as FlowTable.stats()["drops"] names them
TRUNCATED = "truncated"
BAD_IPV4 = "bad_ipv4_header"
BAD_IPV6 = "bad_ipv6_header"
BAD_L4 = "bad_l4_header"
BAD_TUNNEL = "bad_tunnel_header"
NON_IP = "non_ip"
UNSUPPORTED_LINK = "unsupported_link_type"
ORPHAN_FRAGMENT = "fragment_without_first"
TUNNEL_DEPTH = "tunnel_too_deep"
TABLE_FULL = "flow_table_full"
IP_LENGTH = "ip_length_exceeds_frame"

IDLE, ACTIVE, FIN, RST, END = (END_REASONS.index(n)
                                for n in ("idle", "active", "fin", "rst", "end"))
T_NONE, T_GRE, T_IPIP, T_GTPU, T_VXLAN, T_TZSP, T_CAPWAP, T_ERSPAN = (
    TUNNELS.index(n) for n in ("none", "gre", "ipip", "gtpu", "vxlan", "tzsp", "capwap", "erspan"))

MAX_TUNNELS = 4
WINDOW = 256
FRAG_TTL_US = 30_000_000
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
IP_ETHERTYPES = (0x0800, 0x86DD)
PPP_IP = (0x0021, 0x0057)
IPV6_EXT = (0, 43, 60, 51, 135, 44)
SYN, ACK, FIN_F, RST_F = 0x02, 0x10, 0x01, 0x04
TUNNEL_PORTS = {2152, 4789, 37008, 5247}


class Drop(Exception):
    """The packet is not accounted; ``reason`` is the stats() drop name."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _be16(d: bytes, i: int) -> int:
    return (d[i] << 8) | d[i + 1]


def _need(d: bytes, n: int) -> None:
    if len(d) < n:
        raise Drop(TRUNCATED)


@dataclass
class Packet:
    """One decoded packet: the innermost flow key plus what accounting needs."""
    ts_us: int = 0
    src: bytes = bytes(16)
    dst: bytes = bytes(16)
    sport: int = 0
    dport: int = 0
    proto: int = 0
    ip_version: int = 0
    icmp_type: int = 0
    tos: int = 0
    tcp_flags: int = 0
    vlan: int = 0                 # the last 802.1Q tag (QinQ: the customer tag)
    outer_vlan: int = 0           # QinQ: the first (service) tag
    vlans_seen: int = 0
    smac: bytes = bytes(6)
    dmac: bytes = bytes(6)
    tunnel: int = T_NONE
    is_frag: bool = False
    payload: bytes = b""          # captured L4 payload bytes (within the IP total length)
    payload_len: int = 0          # from the header lengths
    l4_cap: int = 0               # captured transport bytes of the innermost header
    l4_hdr: int = 0               # its transport header length by the header fields
    l2_len: Optional[int] = None  # bytes before the outermost IP header
    outer_ip_len: int = 0         # total length the outermost IP header claims
    tcp_seq: int = 0
    tcp_win: int = 0

    def set_tunnel(self, kind: int) -> None:
        if self.tunnel == T_NONE:   # the outermost tunnel is the one recorded
            self.tunnel = kind


class Decoder:
    """Link layer down to the innermost flow key. Keeps the first-fragment cache."""

    def __init__(self):
        self.frags: dict = {}     # (src, dst, ident, proto, version) -> (key fields, ts_us)

    # -- link layer --------------------------------------------------------------------------
    def decode(self, frame: bytes, linktype: int, ts_us: int) -> Packet:
        p = Packet(ts_us=ts_us)
        self.frame_len = len(frame)
        lt = linktype
        if lt == 1:
            self.ether(frame, p, 0, outer=True)
        elif lt in (101, 12, 14, 228, 229):
            self.ip(frame, p, 0)
        elif lt in (0, 108):
            _need(frame, 4)
            fam_le, fam_be = struct.unpack_from("<I", frame)[0], struct.unpack_from(">I", frame)[0]
            fam = fam_le if lt == 0 else fam_be
            if fam > 0xFFFF:
                fam = fam_be if lt == 0 else fam_le
            if fam not in (2, 24, 28, 30):
                raise Drop(NON_IP)
            self.ip(frame[4:], p, 0)
        elif lt == 113:
            _need(frame, 16)
            self.ethertype(_be16(frame, 14), frame[16:], p, 0)
        elif lt == 276:
            _need(frame, 20)
            self.ethertype(_be16(frame, 0), frame[20:], p, 0)
        elif lt == 104:                       # Cisco HDLC: address, control, ethertype
            _need(frame, 4)
            self.ethertype(_be16(frame, 2), frame[4:], p, 0)
        elif lt in (9, 50):                   # PPP: optional FF 03, then the protocol
            off = 2 if frame[:2] == b"\xff\x03" else 0
            _need(frame, off + 2)
            proto, off = _be16(frame, off), off + 2
            if proto in PPP_IP:
                self.ip(frame[off:], p, 0)
            elif proto == 0x0281:
                self.ethertype(0x8847, frame[off:], p, 0)
            else:
                raise Drop(NON_IP)
        else:
            raise Drop(UNSUPPORTED_LINK)
        return p

    def ether(self, d: bytes, p: Packet, depth: int, outer: bool) -> None:
        _need(d, 14)
        if outer:
            p.dmac, p.smac = bytes(d[0:6]), bytes(d[6:12])
        et, off = _be16(d, 12), 14
        while et in VLAN_TAGS:
            _need(d, off + 4)
            tag = _be16(d, off) & 0x0FFF
            if p.vlans_seen == 1:
                p.outer_vlan = p.vlan         # QinQ: the first tag is the service tag
            p.vlan = tag                      # the last tag keys the flow
            p.vlans_seen += 1
            et, off = _be16(d, off + 2), off + 4
        if et <= 1500:                        # 802.3: IP only behind LLC/SNAP
            if len(d) >= off + 8 and d[off:off + 3] == b"\xaa\xaa\x03":
                et, off = _be16(d, off + 6), off + 8
            else:
                raise Drop(NON_IP)
        self.ethertype(et, d[off:], p, depth)

    def ethertype(self, et: int, d: bytes, p: Packet, depth: int) -> None:
        if et in IP_ETHERTYPES:
            return self.ip(d, p, depth)
        if et in (0x8847, 0x8848):            # MPLS label stack, then guess by version nibble
            off = 0
            while True:
                _need(d, off + 4)
                off += 4
                if d[off - 2] & 1:
                    break
            _need(d, off + 1)
            if d[off] >> 4 in (4, 6):
                return self.ip(d[off:], p, depth)
            raise Drop(NON_IP)
        if et == 0x8864:                      # PPPoE session
            _need(d, 8)
            if _be16(d, 6) in PPP_IP:
                return self.ip(d[8:], p, depth)
            raise Drop(NON_IP)
        raise Drop(NON_IP)

    # -- IP ----------------------------------------------------------------------------------
    def ip(self, d: bytes, p: Packet, depth: int) -> None:
        outermost = p.l2_len is None
        if outermost:                         # the first IP header: the link layer ends here
            p.l2_len = self.frame_len - len(d)
        _need(d, 1)
        ver = d[0] >> 4
        if ver == 4:
            _need(d, 20)
            hl, total = (d[0] & 15) * 4, _be16(d, 2)
            if hl < 20 or total < hl:
                raise Drop(BAD_IPV4)
            _need(d, hl)
            if outermost:
                p.outer_ip_len = total
            p.ip_version, p.proto, p.tos = 4, d[9], d[1]
            p.src, p.dst = bytes(d[12:16]) + bytes(12), bytes(d[16:20]) + bytes(12)
            p.sport = p.dport = p.icmp_type = 0
            body = d[hl:min(total, len(d))]
            fo = _be16(d, 6)
            if fo & 0x3FFF:
                return self.fragment(body, total - hl, (fo & 0x1FFF) == 0, _be16(d, 4), p, depth)
            return self.l4(body, total - hl, p, depth)
        if ver == 6:
            _need(d, 40)
            p.ip_version = 6
            p.src, p.dst = bytes(d[8:24]), bytes(d[24:40])
            p.tos = (_be16(d, 0) >> 4) & 0xFF
            p.sport = p.dport = p.icmp_type = 0
            total = 40 + _be16(d, 4)
            if total == 40:                   # jumbogram or empty: trust the capture
                total = len(d)
            if outermost:
                p.outer_ip_len = total
            nh, off = d[6], 40
            while nh in IPV6_EXT:
                _need(d, off + 8)
                if nh == 44:                  # fragment header
                    fo, ident = _be16(d, off + 2), struct.unpack_from(">I", d, off + 4)[0]
                    p.proto = d[off]
                    off += 8
                    if off > total:
                        raise Drop(BAD_IPV6)
                    body = d[off:min(total, len(d))]
                    if fo & 0xFFF9 == 0:      # atomic fragment: offset 0, no MF
                        return self.l4(body, total - off, p, depth)
                    return self.fragment(body, total - off, fo & 0xFFF8 == 0, ident, p, depth)
                hl = (d[off + 1] + 2) * 4 if nh == 51 else (d[off + 1] + 1) * 8
                nh, off = d[off], off + hl
            if off > len(d):
                raise Drop(TRUNCATED)
            if off > total:
                raise Drop(BAD_IPV6)
            p.proto = nh
            return self.l4(d[off:min(total, len(d))], total - off, p, depth)
        raise Drop(BAD_IPV4 if depth == 0 else BAD_TUNNEL)

    def fragment(self, body: bytes, l4len: int, first: bool, ident: int, p: Packet, depth: int):
        p.is_frag = True
        ck = (p.src, p.dst, ident, p.proto, p.ip_version)
        if first:
            self.frags.pop(ck, None)
            self.l4(body, l4len, p, depth)    # a Drop leaves nothing in the cache
            self.frags[ck] = ((p.src, p.dst, p.sport, p.dport, p.icmp_type, p.proto,
                               p.ip_version, p.tunnel), p.ts_us)
            return
        hit = self.frags.get(ck)
        if hit is None or p.ts_us - hit[1] > FRAG_TTL_US:
            raise Drop(ORPHAN_FRAGMENT)
        (p.src, p.dst, p.sport, p.dport, p.icmp_type, p.proto, p.ip_version, p.tunnel) = hit[0]
        p.payload, p.payload_len = body, l4len   # a later fragment is all payload

    # -- transport and tunnels ---------------------------------------------------------------
    def l4(self, d: bytes, l4len: int, p: Packet, depth: int) -> None:
        """``d``: the captured transport bytes (within the IP length); ``l4len``: by the header."""
        proto = p.proto
        if proto == 6:
            _need(d, 20)
            hl = (d[12] >> 4) * 4
            if hl < 20:
                raise Drop(BAD_L4)
            p.sport, p.dport, p.tcp_flags = _be16(d, 0), _be16(d, 2), d[13]
            p.tcp_seq, p.tcp_win = struct.unpack_from("!I", d, 4)[0], _be16(d, 14)
        elif proto in (17, 136):
            _need(d, 8)
            hl = 8
            p.sport, p.dport = _be16(d, 0), _be16(d, 2)
        elif proto in (1, 58):
            _need(d, 4)
            hl = 8
            p.icmp_type = _be16(d, 0)
        elif proto == 132:
            _need(d, 12)
            hl = 12
            p.sport, p.dport = _be16(d, 0), _be16(d, 2)
        elif proto in (4, 41):
            if depth >= MAX_TUNNELS:
                raise Drop(TUNNEL_DEPTH)
            p.set_tunnel(T_IPIP)
            return self.ip(d, p, depth + 1)
        elif proto == 47:
            if depth >= MAX_TUNNELS:
                raise Drop(TUNNEL_DEPTH)
            outer = dataclasses.replace(p)
            p.set_tunnel(T_GRE)
            try:
                return self.gre(d, p, depth + 1)
            except Drop as e:                 # a GRE payload that is not IP: the outer flow
                if e.reason != NON_IP:
                    raise
                p.__dict__.update(outer.__dict__)
                hl = 0
        else:
            hl = 0
        p.payload = d[hl:]
        p.payload_len = max(l4len - hl, 0)
        p.l4_cap, p.l4_hdr = len(d), hl
        if proto == 17 and depth < MAX_TUNNELS and {p.sport, p.dport} & TUNNEL_PORTS:
            # a tunnel that carries no IP packet stays accounted to the outer UDP flow
            outer = dataclasses.replace(p)
            try:
                self.udp_tunnel(d[8:], p, depth + 1)
            except Drop as e:
                if e.reason != NON_IP:
                    raise
                p.__dict__.update(outer.__dict__)

    def gre(self, d: bytes, p: Packet, depth: int) -> None:
        _need(d, 4)
        fl, proto = _be16(d, 0), _be16(d, 2)
        if fl & 7 == 1:                       # enhanced GRE (PPTP) carrying PPP
            if proto != 0x880B:
                raise Drop(BAD_TUNNEL)
            off = 8 + (4 if fl & 0x1000 else 0) + (4 if fl & 0x0080 else 0)
            _need(d, off + 2)
            if d[off:off + 2] == b"\xff\x03":
                off += 2
            _need(d, off + 1)
            if d[off] == 0x21:
                return self.ip(d[off + 1:], p, depth)
            if len(d) >= off + 2 and _be16(d, off) in PPP_IP:
                return self.ip(d[off + 2:], p, depth)
            raise Drop(NON_IP)
        if fl & 7:
            raise Drop(BAD_TUNNEL)
        off = 4 + sum(4 for bit in (0x8000, 0x2000, 0x1000) if fl & bit)
        _need(d, off)
        if proto in IP_ETHERTYPES:
            return self.ip(d[off:], p, depth)
        if proto == 0x6558:
            return self.ether(d[off:], p, depth, outer=False)
        if proto == 0x88BE:                   # ERSPAN II (sequenced) or I
            if p.tunnel == T_GRE:
                p.tunnel = T_ERSPAN
            off += 8 if fl & 0x1000 else 0
            _need(d, off)
            return self.ether(d[off:], p, depth, outer=False)
        if proto == 0x22EB:                   # ERSPAN III, optional platform sub-header
            if p.tunnel == T_GRE:
                p.tunnel = T_ERSPAN
            _need(d, off + 12)
            off += 12 + (8 if d[off + 11] & 1 else 0)
            _need(d, off)
            return self.ether(d[off:], p, depth, outer=False)
        if proto == 0x8847:
            return self.ethertype(proto, d[off:], p, depth)
        raise Drop(NON_IP)

    def udp_tunnel(self, d: bytes, p: Packet, depth: int) -> None:
        """Strip a UDP tunnel (by port) when the datagram is one; else leave the UDP flow."""
        ports = (p.sport, p.dport)
        if 2152 in ports:
            if not self.is_gpdu(d):
                return
            off = 8
            if d[0] & 7:                      # sequence / N-PDU / extension headers present
                _need(d, 12)
                nxt, off = d[11], 12
                while nxt:
                    if len(d) < off + 1 or d[off] == 0:
                        raise Drop(BAD_TUNNEL)
                    off += 4 * d[off]
                    _need(d, off)
                    nxt = d[off - 1]
            _need(d, off + 1)
            if d[off] >> 4 not in (4, 6):
                return                        # not IP: nothing stripped, the flow stays UDP
            p.set_tunnel(T_GTPU)
            return self.ip(d[off:], p, depth)
        if 4789 in ports:
            if len(d) < 8 or not d[0] & 0x08:
                return
            p.set_tunnel(T_VXLAN)
            return self.ether(d[8:], p, depth, outer=False)
        if 37008 in ports:                    # TZSP, Ethernet encapsulation; tags end with 1
            if len(d) < 4 or d[0] != 1 or _be16(d, 2) != 1:
                return
            off = 4
            while True:
                _need(d, off + 1)
                tag = d[off]
                if tag == 1:
                    off += 1
                    break
                if tag == 0:
                    off += 1
                    continue
                _need(d, off + 2)
                off += 2 + d[off + 1]
            p.set_tunnel(T_TZSP)
            return self.ether(d[off:], p, depth, outer=False)
        if 5247 in ports:                     # CAPWAP data
            if len(d) < 8 or d[0] >> 4 != 0:
                return
            hlen = ((d[1] >> 3) & 0x1F) * 4
            if hlen < 8 or hlen > len(d):
                raise Drop(BAD_TUNNEL)
            if d[3] & 0x80:                   # a fragment stays on the outer flow
                return
            p.set_tunnel(T_CAPWAP)
            if d[2] & 1:                      # T bit: 802.11 frame (binding 1)
                if (d[2] >> 1) & 0x1F != 1:
                    raise Drop(NON_IP)
                return self.ieee80211(d[hlen:], p, depth)
            return self.ether(d[hlen:], p, depth, outer=False)

    @staticmethod
    def is_gpdu(d: bytes) -> bool:
        return len(d) >= 8 and d[0] >> 5 == 1 and bool(d[0] & 0x10) and d[1] == 0xFF

    def ieee80211(self, d: bytes, p: Packet, depth: int) -> None:
        _need(d, 24)
        fc = d[0] | (d[1] << 8)
        if (fc >> 2) & 3 != 2 and (d[1] >> 2) & 3 == 2:
            fc = _be16(d, 0)                  # Cisco APs send the frame control swapped
        if (fc >> 2) & 3 != 2:
            raise Drop(NON_IP)
        off = 24 + (6 if fc & 0x0300 == 0x0300 else 0) + (2 if (fc >> 4) & 8 else 0)
        if (fc >> 4) & 4:
            raise Drop(NON_IP)
        _need(d, off + 8)
        if d[off:off + 3] != b"\xaa\xaa\x03":
            raise Drop(NON_IP)
        self.ethertype(_be16(d, off + 6), d[off + 8:], p, depth)


# --- flows -----------------------------------------------------------------------------------
def plen_bin(n: int) -> int:
    for b, top in enumerate((64, 128, 256, 512, 1024)):
        if n <= top:
            return b
    return 5


def tdiff_bin(gap_us: int) -> int:
    for b, top in enumerate((1000, 5000, 10000, 50000, 100000)):
        if gap_us <= top:
            return b
    return 5


def entropy_x1000(counts: Counter) -> int:
    """round(1000 x Shannon entropy), computed as log2(total) - sum(c log2 c)/total, the sum
    taken as the fast path takes it (bin b into partial sum b % 4, then (s0 + s1) + (s2 + s3)),
    so that the doubles agree bit for bit."""
    total = sum(counts[b] for b in range(256))
    if total == 0:
        return 0
    partial = [0.0] * 4
    for b in range(256):
        c = counts[b]
        if c:
            partial[b % 4] += c * math.log2(c)
    acc = (partial[0] + partial[1]) + (partial[2] + partial[3])
    e = max(math.log2(total) - acc / total, 0.0)
    return int(e * 1000.0 + 0.5)


@dataclass
class Features:
    window: int = 0
    last_any: int = 0
    last_dir: list = field(default_factory=lambda: [None, None])
    plen: list = field(default_factory=lambda: [[0] * 6 for _ in range(3)])    # both, c2s, s2c
    tdiff: list = field(default_factory=lambda: [[0] * 6 for _ in range(3)])
    hist: list = field(default_factory=lambda: [Counter(), Counter()])
    entropy: Optional[list] = None          # final once the window is full

    def add(self, p: Packet, d: int) -> None:
        if self.window >= WINDOW:
            return
        if self.window:
            self.tdiff[0][tdiff_bin(max(p.ts_us - self.last_any, 0))] += 1
        if self.last_dir[d] is not None:
            self.tdiff[1 + d][tdiff_bin(max(p.ts_us - self.last_dir[d], 0))] += 1
        self.last_any = self.last_dir[d] = p.ts_us
        if p.payload_len > 0:
            b = plen_bin(p.payload_len)
            self.plen[0][b] += 1
            self.plen[1 + d][b] += 1
            self.hist[d].update(p.payload)
        self.window += 1
        if self.window == WINDOW:
            self.entropy = [entropy_x1000(h) for h in self.hist]

    def entropies(self) -> list:
        return self.entropy if self.entropy is not None else [entropy_x1000(h) for h in self.hist]


U32 = 1 << 32


def _before(a: int, b: int) -> bool:
    """Sequence number a comes before b (RFC 1982 serial arithmetic on 32 bits)."""
    return (a - b) % U32 >= 1 << 31


@dataclass
class TcpHealth:
    """TCP health of one flow (DESIGN.md): [0] client, [1] server side. Times are taken modulo
    2^32 microseconds, as the fast path keeps them."""
    handshake: str = "none"       # none, syn, synack, over
    mark: int = 0                 # the latest SYN, then SYN-ACK, then the client's first payload
    rtt: list = field(default_factory=lambda: [0, 0, 0])   # SYN->SYN-ACK, SYN-ACK->ACK, appl.
    request: bool = False
    response: bool = False
    nxt: list = field(default_factory=lambda: [None, None])
    nxt_at: list = field(default_factory=lambda: [0, 0])
    retr_pkts: list = field(default_factory=lambda: [0, 0])
    retr_bytes: list = field(default_factory=lambda: [0, 0])
    ooo: list = field(default_factory=lambda: [0, 0])
    zero_win: list = field(default_factory=lambda: [0, 0])
    win_max: list = field(default_factory=lambda: [0, 0])

    def new_slice(self) -> None:
        for name in ("retr_pkts", "retr_bytes", "ooo", "zero_win", "win_max"):
            setattr(self, name, [0, 0])

    def segment(self, p: Packet, d: int, ip_bytes: int) -> None:
        fl, now, n = p.tcp_flags, p.ts_us, p.payload_len
        self.win_max[d] = max(self.win_max[d], p.tcp_win)
        if p.tcp_win == 0 and not fl & (SYN | FIN_F | RST_F):
            self.zero_win[d] = min(self.zero_win[d] + 1, 0xFFFF)     # 16 bits a slice
        syn_ack = fl & (SYN | ACK)
        if self.handshake != "over":
            if syn_ack == SYN and d == 0 and self.handshake in ("none", "syn"):
                self.handshake, self.mark = "syn", now
            elif syn_ack == SYN | ACK and d == 1 and self.handshake in ("syn", "synack"):
                if self.handshake == "syn":
                    self.rtt[0] = (now - self.mark) % U32
                self.handshake, self.mark = "synack", now
            elif syn_ack == ACK and d == 0 and self.handshake == "synack":
                self.handshake, self.rtt[1] = "over", (now - self.mark) % U32
            else:
                self.handshake = "over"
        if self.handshake == "over" and n > 0 and not self.response:
            if d == 0 and not self.request:
                self.request, self.mark = True, now
            elif d == 1 and self.request:
                self.response, self.rtt[2] = True, (now - self.mark) % U32
        seq = p.tcp_seq
        end = (seq + n + bool(fl & SYN) + bool(fl & FIN_F)) % U32
        nxt = self.nxt[d]
        if nxt is not None:
            occupies = n > 0 or fl & (SYN | FIN_F)
            one_below = seq == (nxt - 1) % U32 and (n > 1 or n == 1 and not fl & (SYN | FIN_F | RST_F))
            if occupies and _before(seq, nxt) and not one_below:
                irtt = (self.rtt[0] + self.rtt[1]) % U32 if self.rtt[1] else 3000
                if (now - self.nxt_at[d]) % U32 < irtt and end != nxt:
                    self.ooo[d] += 1
                else:
                    self.retr_pkts[d] += 1
                    self.retr_bytes[d] += ip_bytes
            if end == nxt or _before(end, nxt):
                return
        self.nxt[d], self.nxt_at[d] = end, now % U32

    def columns(self) -> dict:
        return dict(retr_pkts_c2s=self.retr_pkts[0], retr_pkts_s2c=self.retr_pkts[1],
                    retr_bytes_c2s=self.retr_bytes[0], retr_bytes_s2c=self.retr_bytes[1],
                    ooo_pkts_c2s=self.ooo[0], ooo_pkts_s2c=self.ooo[1],
                    zero_win_c2s=self.zero_win[0], zero_win_s2c=self.zero_win[1],
                    server_nw_latency_ms=(self.rtt[0] + 1000) // 2000,
                    client_nw_latency_ms=(self.rtt[1] + 1000) // 2000,
                    appl_latency_ms=(self.rtt[2] + 500) // 1000,
                    win_max_c2s=self.win_max[0], win_max_s2c=self.win_max[1])


@dataclass
class Flow:
    key: tuple
    client: tuple                 # (address, port) of the client
    server: tuple
    first_us: int
    last_us: int
    proto: int
    ip_version: int
    vlan: int
    outer_vlan: int
    icmp_type: int
    tunnel: int
    smac: bytes
    dmac: bytes
    pkts: list = field(default_factory=lambda: [0, 0])
    bytes: list = field(default_factory=lambda: [0, 0])
    frags: list = field(default_factory=lambda: [0, 0])
    tos: list = field(default_factory=lambda: [0, 0])
    flags: list = field(default_factory=lambda: [0, 0])
    swapped: bool = False         # created by a SYN-ACK: its sender is the server
    fin_sides: int = 0
    closed: Optional[int] = None  # FIN or RST once closed
    hs: str = "none"              # TCP handshake: none, syn, synack, done
    window_open: bool = False
    feat: Features = field(default_factory=Features)
    tcp: TcpHealth = field(default_factory=TcpHealth)

    def new_slice(self, ts: int) -> None:
        self.first_us = self.last_us = ts
        self.pkts, self.bytes, self.frags, self.tos = [0, 0], [0, 0], [0, 0], [0, 0]
        self.tcp.new_slice()


def flow_key(p: Packet) -> tuple:
    a, b = (p.src, p.sport), (p.dst, p.dport)
    return (p.vlan, p.proto, p.ip_version) + ((a, b) if a <= b else (b, a))


class ReferenceTable:
    def __init__(self, idle_timeout=30.0, lifetime=120.0, features=True, linger=2.0,
                 max_flows=1 << 30):
        self.idle_us = int(idle_timeout * 1e6)
        self.lifetime_us = int(lifetime * 1e6)
        self.linger_us = min(int(linger * 1e6), self.idle_us)
        self.features = features
        self.max_flows = max_flows
        self.flows: dict = {}
        self.deadlines: list = []   # heap of (deadline, seq, key) for lazy expiry
        self.seq = 0
        self.now_us = 0
        self.decoder = Decoder()
        self.out: list = []
        self.drops = Counter()
        self.decoded = 0

    # -- expiry ------------------------------------------------------------------------------
    def deadline(self, f: Flow) -> int:
        return f.last_us + (self.linger_us if f.closed is not None else self.idle_us)

    def touch(self, f: Flow) -> None:
        self.seq += 1
        heapq.heappush(self.deadlines, (self.deadline(f), self.seq, f.key))

    def expire_due(self, now: int) -> None:
        while self.deadlines and self.deadlines[0][0] <= now:
            dl, _, key = heapq.heappop(self.deadlines)
            f = self.flows.get(key)
            if f is not None and self.deadline(f) == dl:
                self.export(f, IDLE if f.closed is None else f.closed)

    def export(self, f: Flow, reason: int, keep: bool = False) -> None:
        self.out.append(self.record(f, reason))
        if not keep:
            del self.flows[f.key]

    # -- packets -----------------------------------------------------------------------------
    def packet(self, ts_ns: int, frame: bytes, wirelen: int, linktype: int) -> None:
        ts = ts_ns // 1000
        if ts > self.now_us:
            self.now_us = ts
            self.expire_due(ts)
        try:
            p = self.decoder.decode(frame, linktype, ts)
        except Drop as e:
            self.drops[e.reason] += 1
            return
        l2 = p.l2_len or 0
        ip_bytes = max(wirelen - l2, 0)
        if p.outer_ip_len > ip_bytes:         # the IP header claims more than the frame holds
            self.drops[IP_LENGTH] += 1
            return
        key = flow_key(p)
        f = self.flows.get(key)
        if f is not None:
            if f.closed is not None and p.proto == 6 and p.tcp_flags & (SYN | ACK) == SYN:
                self.export(f, f.closed)      # a new connection on a closed 5-tuple
                f = None
            elif ts - f.first_us >= self.lifetime_us and ts > f.first_us:
                self.export(f, ACTIVE, keep=True)
                f.new_slice(ts)
        if f is None:
            if len(self.flows) >= self.max_flows:
                self.drops[TABLE_FULL] += 1
                return
            f = self.create(p, key)
            # the first packet's direction: the server's when it is a SYN-ACK (this matters
            # only where both ends are the same address and port)
            d = 0 if f.client == (p.src, p.sport) and not f.swapped else 1
        else:
            d = 0 if (p.src, p.sport) == f.client else 1
        self.decoded += 1
        f.pkts[d] += 1
        f.bytes[d] += ip_bytes
        f.flags[d] |= p.tcp_flags
        f.tos[d] = p.tos
        f.frags[d] += p.is_frag
        f.last_us = max(f.last_us, ts)
        if self.features:
            self.features_update(f, p, d)
        if p.proto == 6 and not p.is_frag:
            f.tcp.segment(p, d, ip_bytes)
        if p.proto == 6 and f.closed is None:
            if p.tcp_flags & RST_F:
                f.closed = RST
            elif p.tcp_flags & FIN_F:
                f.fin_sides |= 1 << d
                if f.fin_sides == 3:
                    f.closed = FIN
        self.touch(f)

    def create(self, p: Packet, key: tuple) -> Flow:
        a, b = (p.src, p.sport), (p.dst, p.dport)
        smac, dmac = p.smac, p.dmac
        swapped = p.proto == 6 and p.tcp_flags & (SYN | ACK) == SYN | ACK
        if swapped:
            a, b, smac, dmac = b, a, dmac, smac   # a SYN-ACK comes from the server
        f = Flow(key=key, client=a, server=b, first_us=p.ts_us, last_us=p.ts_us, proto=p.proto,
                 ip_version=p.ip_version, vlan=p.vlan, outer_vlan=p.outer_vlan,
                 icmp_type=p.icmp_type, tunnel=p.tunnel, smac=smac, dmac=dmac, swapped=swapped)
        self.flows[key] = f
        return f

    def features_update(self, f: Flow, p: Packet, d: int) -> None:
        """The window opens after the TCP handshake (DESIGN.md, behaviour features)."""
        if not f.window_open:
            fl = p.tcp_flags & (SYN | ACK)
            if f.proto != 6:
                f.window_open = True
            elif f.hs == "none":
                if fl == SYN and d == 0:
                    f.hs = "syn"
                    return
                f.window_open = True          # joined mid-connection
            elif f.hs == "syn":
                if fl == SYN | ACK and d == 1:
                    f.hs = "synack"
                    return
                if p.payload_len == 0:
                    return
                f.window_open = True
            elif f.hs == "synack":
                if fl == ACK and d == 0 and p.payload_len == 0:
                    f.hs, f.window_open = "done", True
                    return
                if p.payload_len == 0:
                    return
                f.window_open = True
        f.feat.add(p, d)

    def flush(self) -> None:
        for f in sorted(self.flows.values(), key=lambda f: f.closed is None):
            self.export(f, END if f.closed is None else f.closed, keep=True)
        self.flows.clear()

    # -- records -----------------------------------------------------------------------------
    def record(self, f: Flow, reason: int) -> dict:
        r = {name: ([0] * count if count > 1 else 0) for name, _, count in COLUMNS}
        r.update(first_ms=f.first_us // 1000, last_ms=f.last_us // 1000,
                 in_bytes=f.bytes[0], in_pkts=f.pkts[0], out_bytes=f.bytes[1], out_pkts=f.pkts[1],
                 src_addr=list(f.client[0]), dst_addr=list(f.server[0]),
                 src_frags=f.frags[0], dst_frags=f.frags[1],
                 src_port=f.client[1], dst_port=f.server[1], vlan=f.vlan,
                 outer_vlan=f.outer_vlan, icmp_type=f.icmp_type,
                 src_mac=list(f.smac), dst_mac=list(f.dmac), ip_version=f.ip_version,
                 protocol=f.proto, client_tcp_flags=f.flags[0], server_tcp_flags=f.flags[1],
                 src_tos=f.tos[0], dst_tos=f.tos[1], end_reason=reason, tunnel=f.tunnel)
        r["exporter_addr"] = [0] * 16
        if f.proto == 6:
            r.update(f.tcp.columns())
        if self.features:
            ft = f.feat
            for k, suffix in enumerate(("", "_c2s", "_s2c")):
                r["seq_plen" + suffix] = list(ft.plen[k])
                r["seq_tdiff" + suffix] = list(ft.tdiff[k])
            r["entropy_c2s"], r["entropy_s2c"] = ft.entropies()
        return r


def reference_flows(packets: Iterable, idle_timeout: float = 30.0, lifetime: float = 120.0,
                    features: bool = True, linger: float = 2.0, table: Optional[list] = None,
                    max_flows: int = 1 << 30) -> list:
    """Every flow record (as a dict of RECORD_DTYPE columns) that ``packets`` produce:
    ``(ts_ns, frame_bytes, wirelen, linktype)`` tuples in capture order. Pass a list as
    ``table`` to get the ReferenceTable back (its ``drops`` mirror stats()["drops"])."""
    t = ReferenceTable(idle_timeout=idle_timeout, lifetime=lifetime, features=features,
                       linger=linger, max_flows=max_flows)
    for ts_ns, frame, wirelen, linktype in packets:
        t.packet(ts_ns, bytes(frame), wirelen, linktype)
    t.flush()
    if table is not None:
        table.append(t)
    return t.out


def decode_packet(frame: bytes, linktype: int = 1, ts_us: int = 0) -> Packet:
    """Decode one frame (raises Drop); for tests that compare decoders."""
    return Decoder().decode(bytes(frame), linktype, ts_us)
