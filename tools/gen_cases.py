#!/usr/bin/env python3
"""Small captures that cover every decode path of flowprobe, each with the flows it must give.

    python tools/gen_cases.py -o DIR [NAME ...]

writes ``DIR/NAME.pcap`` (``.pcapng`` for the pcapng cases) and ``DIR/NAME.json`` for every case
(or the ones named): link types 0/1/9/12/14/50/101/104/108/113/228/229/276 and an unknown one;
802.1Q, QinQ, 0x9100 and triple tags; 802.3 + LLC/SNAP; MPLS stacks; PPPoE; IP-in-IP in its four
forms; GRE v0 (IPv4, IPv6, key/sequence/checksum, transparent Ethernet, MPLS), ERSPAN I/II/III,
enhanced GRE v1 carrying PPP; GTP-U, VXLAN, TZSP, CAPWAP (802.3 and 802.11); four nested tunnels
and a fifth; IPv4 and IPv6 fragments (late, orphaned, expired from the cache); IPv6 extension
headers; Ethernet padding, snap-length cuts; a malformed packet for each decode drop reason; pcap in
micro- and nanoseconds, both byte orders; pcapng with several interfaces, if_tsresol, simple
packet blocks and a big-endian section; a capture whose timestamps span years; one TCP session.

The JSON sidecar holds what the generator put in, as DESIGN.md's rules say it must be counted
(written from the packets built here, not from flowprobe's output): ``flows`` (one per flow, the
record columns with addresses and MACs as text, run with timeouts longer than the capture),
``drops`` (reason -> packets), ``packets``, and ``frames`` (per packet: the link-layer length and
the innermost addresses and ports, for checking the generator against tshark).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import struct
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from packets import (C_MAC, S_MAC, capwap, chdlc, erspan1, erspan2, erspan3, eth, frag6,  # noqa
                     gre, gre_pptp, gtpu, icmp, ipv4, ipv6, mpls, null, pcap_file, pcapng_file,
                     ppp, pppoe, sctp, sll, sll2, snap, tcp, tzsp, udp, vxlan, wifi_data)

SEC = 1_000_000_000
MS = 1_000_000
T0 = 1_767_225_600 * SEC                  # 2026-01-01T00:00:00Z
V4 = [ipaddress.ip_address(f"10.0.0.{i}").packed for i in range(1, 9)]
V6 = [ipaddress.ip_address(f"2001:db8::{i}").packed for i in range(1, 9)]
OUTER4 = (ipaddress.ip_address("192.0.2.1").packed, ipaddress.ip_address("192.0.2.2").packed)
OUTER6 = (ipaddress.ip_address("2001:db8:ff::1").packed,
          ipaddress.ip_address("2001:db8:ff::2").packed)
SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10


def text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


class Flow:
    """One flow of a case: its endpoints, and how each of its packets is wrapped."""

    def __init__(self, case, src, dst, proto, sport=0, dport=0, wrap=None, vlans=(),
                 tunnel="none", macs=True):
        self.case, self.src, self.dst, self.proto = case, src, dst, proto
        self.sport, self.dport = sport, dport
        self.v6 = len(src) == 16
        self.wrap = wrap or (lambda ip, d: (eth(ip, 0x86DD if self.v6 else 0x0800,
                                                src=(C_MAC, S_MAC)[d], dst=(S_MAC, C_MAC)[d]), 14))
        self.rec = None
        self.vlans, self.tunnel, self.macs = list(vlans), tunnel, macs

    def l4(self, d, flags=0, payload=b"", icmp_type=None):
        sp, dp = (self.sport, self.dport) if d == 0 else (self.dport, self.sport)
        if self.proto == 6:
            return tcp(sp, dp, flags, payload)
        if self.proto in (17, 136):
            return udp(sp, dp, payload)
        if self.proto in (1, 58):
            t = icmp_type if icmp_type is not None else ((8, 0) if d == 0 else (0, 0))
            return icmp(t[0], t[1], payload)
        if self.proto == 132:
            return sctp(sp, dp, payload)
        return payload

    def ip(self, d, l4, tos=0, **kw):
        a, b = (self.src, self.dst) if d == 0 else (self.dst, self.src)
        if self.v6:
            return ipv6(a, b, self.proto, l4, tclass=tos, ext=kw.get("ext", ()))
        return ipv4(a, b, self.proto, l4, tos=tos, **{k: v for k, v in kw.items() if k != "ext"})

    def send(self, ts, d, flags=0, payload=b"", tos=0, icmp_type=None, pad_to=None, cut=None,
             ip=None, frag=False):
        """One packet of this flow, direction ``d`` (0 client to server)."""
        if ip is None:
            ip = self.ip(d, self.l4(d, flags, payload, icmp_type), tos)
        frame, l2 = self.wrap(ip, d)
        wire = len(frame)
        if pad_to and wire < pad_to:
            frame += bytes(pad_to - wire)       # Ethernet padding: on the wire, so counted
            wire = pad_to
        if cut:
            frame = frame[:cut]                 # the snap length: wire length stays
        self.case.frame(ts, frame, wire, l2, self, ports=frag in (False, "first"))
        self.account(ts, d, wire - l2, flags, tos, frag, icmp_type)

    def account(self, ts, d, nbytes, flags=0, tos=0, frag=False, icmp_type=None):
        r = self.rec
        if r is None:
            c, s = (self.src, self.dst)
            r = self.rec = {
                "ip_version": 6 if self.v6 else 4, "protocol": self.proto, "src": text(c),
                "dst": text(s), "src_port": self.sport, "dst_port": self.dport,
                "vlan": self.vlans[-1] if self.vlans else 0,
                "outer_vlan": self.vlans[0] if len(self.vlans) > 1 else 0,
                "icmp_type": 0, "tunnel": self.tunnel, "in_pkts": 0, "in_bytes": 0,
                "out_pkts": 0, "out_bytes": 0, "first_ms": ts // MS, "last_ms": ts // MS,
                "client_tcp_flags": 0, "server_tcp_flags": 0, "src_tos": 0, "dst_tos": 0,
                "src_frags": 0, "dst_frags": 0, "src_mac": C_MAC.hex(":") if self.macs else
                "00:00:00:00:00:00", "dst_mac": S_MAC.hex(":") if self.macs else
                "00:00:00:00:00:00", "end_reason": "end", "fin_sides": 0}
            if self.proto in (1, 58):
                t = icmp_type if icmp_type is not None else (8, 0)
                r["icmp_type"] = t[0] * 256 + t[1]
            self.case.flows.append(r)
        side = ("in", "out")[d]
        r[f"{side}_pkts"] += 1
        r[f"{side}_bytes"] += nbytes
        r[("client", "server")[d] + "_tcp_flags"] |= flags
        r[("src", "dst")[d] + "_tos"] = tos
        r[("src", "dst")[d] + "_frags"] += bool(frag)
        r["last_ms"] = max(r["last_ms"], ts // MS)
        if self.proto == 6 and r["end_reason"] == "end":
            if flags & RST:
                r["end_reason"] = "rst"
            elif flags & FIN:
                r["fin_sides"] |= 1 << d
                if r["fin_sides"] == 3:
                    r["end_reason"] = "fin"


class Case:
    def __init__(self, name, linktype=1, **fileopts):
        self.name, self.linktype, self.fileopts = name, linktype, fileopts
        self.packets: list = []            # (ts_ns, frame, wirelen)
        self.frames: list = []
        self.flows: list = []
        self.drops: Counter = Counter()
        self.t = T0

    def tick(self, ns=MS) -> int:
        self.t += ns
        return self.t

    def frame(self, ts, frame, wire, l2, flow, ports=True):
        self.packets.append((ts, frame, wire))
        # the link-layer length and the innermost key, as tshark should decode them
        f = {"l2": l2, "src": text(flow.src), "dst": text(flow.dst), "proto": flow.proto,
             "ts": ts, "wire": wire}
        if ports and flow.proto in (6, 17, 132):
            f.update(ports=sorted((flow.sport, flow.dport)))
        self.frames.append(f)

    def drop(self, reason, frame, wire=None, ts=None):
        ts = self.tick() if ts is None else ts
        self.packets.append((ts, frame, len(frame) if wire is None else wire))
        self.frames.append({"drop": reason, "ts": ts})
        self.drops[reason] += 1

    def flow(self, *a, **kw) -> Flow:
        return Flow(self, *a, **kw)

    def tcp_session(self, f: Flow, data=(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),
                    close="fin", tos=(0, 0)):
        """Handshake, a request and an answer, and a FIN (or RST) close."""
        f.send(self.tick(), 0, SYN, tos=tos[0])
        f.send(self.tick(), 1, SYN | ACK, tos=tos[1])
        f.send(self.tick(), 0, ACK, tos=tos[0])
        f.send(self.tick(), 0, PSH | ACK, data[0], tos=tos[0])
        f.send(self.tick(), 1, PSH | ACK, data[1], tos=tos[1])
        if close == "fin":
            f.send(self.tick(), 0, FIN | ACK, tos=tos[0])
            f.send(self.tick(), 1, FIN | ACK, tos=tos[1])
            f.send(self.tick(), 0, ACK, tos=tos[0])
        elif close == "rst":
            f.send(self.tick(), 1, RST | ACK, tos=tos[1])

    def udp_exchange(self, f: Flow, n=2, size=40):
        for k in range(n):
            f.send(self.tick(), k % 2, payload=bytes([k]) * size)

    # --- output -----------------------------------------------------------------------------
    def file_bytes(self) -> bytes:
        if self.fileopts.get("pcapng"):
            return pcapng_file(self.fileopts["pcapng"](self.packets))
        return pcap_file(self.packets, self.linktype,
                         nanoseconds=self.fileopts.get("nanoseconds", False),
                         big_endian=self.fileopts.get("big_endian", False))

    def expected(self) -> dict:
        flows = [{k: v for k, v in r.items() if k != "fin_sides"} for r in self.flows]
        keys = [(f["vlan"], f["protocol"], frozenset(((f["src"], f["src_port"]),
                                                      (f["dst"], f["dst_port"])))) for f in flows]
        assert len(set(keys)) == len(keys), f"{self.name}: two flows of the case share a key"

        frames = self.frames
        if not self.fileopts.get("pcapng") and not self.fileopts.get("nanoseconds"):
            frames = [dict(f, ts=f["ts"] // 1000 * 1000) for f in frames]   # microseconds
        return {"case": self.name, "packets": len(self.packets),
                "decoded": len(self.packets) - sum(self.drops.values()), "flows": flows,
                "drops": dict(self.drops), "frames": frames,
                "linktype": self.linktype, "file": self.file_name()}

    def file_name(self) -> str:
        return self.name + (".pcapng" if self.fileopts.get("pcapng") else ".pcap")


# --- the cases ------------------------------------------------------------------------------
def case_ethernet() -> Case:
    """TCP, UDP, ICMP, ICMPv6, SCTP, UDP-Lite and a protocol without ports, over IPv4 and IPv6;
    ToS, IPv4 options, Ethernet padding, a snap-length cut, a SYN-ACK seen first."""
    c = Case("ethernet")
    c.tcp_session(c.flow(V4[0], V4[1], 6, 40000, 80), tos=(0x10, 0xb8))
    c.tcp_session(c.flow(V6[0], V6[1], 6, 40001, 443), close="rst", tos=(0x28, 0))
    u = c.flow(V4[0], V4[2], 17, 5353, 53)
    u.send(c.tick(), 0, payload=b"q" * 30, pad_to=60)        # 58 bytes, padded to 60
    u.send(c.tick(), 1, payload=b"a" * 400, cut=100)        # captured in part
    c.udp_exchange(c.flow(V6[2], V6[3], 17, 123, 123), n=3, size=48)
    ic = c.flow(V4[3], V4[4], 1)
    ic.send(c.tick(), 0, payload=b"ping" * 8)
    ic.send(c.tick(), 1, payload=b"ping" * 8)
    i6 = c.flow(V6[4], V6[5], 58)
    i6.send(c.tick(), 0, payload=b"x" * 16, icmp_type=(128, 0))
    i6.send(c.tick(), 1, payload=b"x" * 16, icmp_type=(129, 0))
    c.udp_exchange(c.flow(V4[5], V4[6], 132, 2905, 2905), n=2, size=16)
    c.udp_exchange(c.flow(V4[5], V4[7], 136, 7000, 7001), n=2, size=16)
    esp = c.flow(V4[6], V4[7], 50)
    esp.send(c.tick(), 0, payload=b"\0\0\0\1" + bytes(28))
    opt = c.flow(V4[1], V4[3], 17, 1000, 2000)
    ip = ipv4(V4[1], V4[3], 17, udp(1000, 2000, b"o" * 10), options=b"\x94\x04\0\0")
    opt.send(c.tick(), 0, ip=ip)
    sa = c.flow(V4[2], V4[4], 6, 50000, 443)                 # the SYN-ACK first: its receiver
    ip = ipv4(V4[4], V4[2], 6, tcp(443, 50000, SYN | ACK))   # is the client
    frame = eth(ip, src=S_MAC, dst=C_MAC)
    c.frame(c.tick(), frame, len(frame), 14, sa)
    sa.account(c.t, 1, len(ip), SYN | ACK)
    sa.send(c.tick(), 0, ACK)
    return c


def case_vlan() -> Case:
    c = Case("vlan")
    for vlans, tpids in (((100,), None), ((200, 300), None), ((7, 8), (0x9100, 0x8100)),
                         ((1, 2, 3), (0x88A8, 0x8100, 0x8100))):
        for v6 in (False, True):
            a, b = (V6 if v6 else V4)[vlans[-1] % 4], (V6 if v6 else V4)[4 + vlans[-1] % 4]
            et = 0x86DD if v6 else 0x0800
            f = c.flow(a, b, 17, 4000 + vlans[0], 53, vlans=vlans,
                       wrap=lambda ip, d, vl=vlans, tp=tpids, et=et: (eth(
                           ip, et, vlans=vl, tpids=tp, src=(C_MAC, S_MAC)[d],
                           dst=(S_MAC, C_MAC)[d]), 14 + 4 * len(vl)))
            c.udp_exchange(f)
    f = c.flow(V4[0], V4[1], 6, 40000, 80, vlans=(10,), wrap=lambda ip, d: (eth(
        ip, vlans=(10,), src=(C_MAC, S_MAC)[d], dst=(S_MAC, C_MAC)[d]), 18))
    c.tcp_session(f)
    return c


def case_l2_encapsulations() -> Case:
    """802.3 + LLC/SNAP, MPLS stacks (0x8847 and 0x8848, IPv4 and IPv6), PPPoE sessions."""
    c = Case("l2")
    f = c.flow(V4[0], V4[1], 17, 1, 2, wrap=lambda ip, d: (snap(
        ip, src=(C_MAC, S_MAC)[d], dst=(S_MAC, C_MAC)[d]), 22))
    c.udp_exchange(f)
    for k, (labels, et, v6) in enumerate((((16,), 0x8847, False), ((100, 200, 300), 0x8847, True),
                                          ((5,), 0x8848, False))):
        a, b = (V6 if v6 else V4)[len(labels)], (V6 if v6 else V4)[len(labels) + 1]
        f = c.flow(a, b, 17, 3000 + k, 53, wrap=lambda ip, d, lb=labels, et=et: (eth(
            mpls(ip, lb), et, src=(C_MAC, S_MAC)[d], dst=(S_MAC, C_MAC)[d]), 14 + 4 * len(lb)))
        c.udp_exchange(f)
    for v6 in (False, True):
        a, b = (V6 if v6 else V4)[5], (V6 if v6 else V4)[6]
        f = c.flow(a, b, 6, 33000, 22, wrap=lambda ip, d, v6=v6: (eth(
            pppoe(ip, v6), 0x8864, src=(C_MAC, S_MAC)[d], dst=(S_MAC, C_MAC)[d]), 22))
        c.tcp_session(f)
    ppp_vlan = c.flow(V4[2], V4[3], 17, 7, 7, vlans=(42,), wrap=lambda ip, d: (eth(
        pppoe(ip), 0x8864, vlans=(42,), src=(C_MAC, S_MAC)[d], dst=(S_MAC, C_MAC)[d]), 26))
    c.udp_exchange(ppp_vlan)
    mpls_vlan = c.flow(V4[3], V4[4], 17, 8, 8, vlans=(43,), wrap=lambda ip, d: (eth(
        mpls(ip, (1, 2)), 0x8847, vlans=(43,), src=(C_MAC, S_MAC)[d], dst=(S_MAC, C_MAC)[d]),
        26))
    c.udp_exchange(mpls_vlan)
    return c


def _outer(ip_inner, d, proto, v6_outer=False):
    a, b = OUTER6 if v6_outer else OUTER4
    if d:
        a, b = b, a
    return ipv6(a, b, proto, ip_inner) if v6_outer else ipv4(a, b, proto, ip_inner)


def _eth_wrap(outer_ip, d, v6_outer=False):
    return eth(outer_ip, 0x86DD if v6_outer else 0x0800, src=(C_MAC, S_MAC)[d],
               dst=(S_MAC, C_MAC)[d]), 14


def _inner_eth(ip, d, vlans=()):
    return eth(ip, 0x86DD if ip[0] >> 4 == 6 else 0x0800, vlans=vlans,
               src=b"\x02\0\0\0\1\1", dst=b"\x02\0\0\0\1\2")


def case_tunnels() -> Case:
    """Every tunnel, the flow keyed on the inner header; bytes from the outer IP header on."""
    c = Case("tunnels")
    n = [0]

    def tunnel_flow(kind, inner_v6, wrap, vlans=()):
        n[0] += 1
        k = n[0]
        a = (V6 if inner_v6 else V4)[k % 8]
        b = ipaddress.ip_address(("2001:db8:1::%d" if inner_v6 else "10.1.0.%d") % k).packed
        f = c.flow(a, b, 17, 10000 + k, 9, wrap=wrap, tunnel=kind, vlans=vlans)
        c.udp_exchange(f)

    for inner6 in (False, True):
        for outer6 in (False, True):      # 4in4, 6in4, 4in6, 6in6
            tunnel_flow("ipip", inner6, lambda ip, d, o6=outer6: _eth_wrap(
                _outer(ip, d, 41 if ip[0] >> 4 == 6 else 4, o6), d, o6))
    for inner6 in (False, True):
        et = 0x86DD if inner6 else 0x0800
        tunnel_flow("gre", inner6, lambda ip, d, et=et: _eth_wrap(_outer(gre(ip, et), d, 47), d))
        tunnel_flow("gre", inner6, lambda ip, d, et=et: _eth_wrap(
            _outer(gre(ip, et, key=5, seq=9, checksum=True), d, 47), d))
    tunnel_flow("gre", True, lambda ip, d: _eth_wrap(_outer(gre(ip, 0x86DD), d, 47, True), d,
                                                    True))
    tunnel_flow("gre", False, lambda ip, d: _eth_wrap(
        _outer(gre(_inner_eth(ip, d, (77,)), 0x6558), d, 47), d), vlans=(77,))
    tunnel_flow("gre", False, lambda ip, d: _eth_wrap(_outer(gre(mpls(ip, (9,)), 0x8847), d, 47),
                                                     d))
    tunnel_flow("gre", False, lambda ip, d: _eth_wrap(_outer(gre_pptp(ppp(ip)), d, 47), d))
    tunnel_flow("erspan", False, lambda ip, d: _eth_wrap(_outer(erspan1(_inner_eth(ip, d)), d,
                                                                47), d))
    tunnel_flow("erspan", False, lambda ip, d: _eth_wrap(_outer(erspan2(_inner_eth(ip, d)), d,
                                                                47), d))
    tunnel_flow("erspan", True, lambda ip, d: _eth_wrap(_outer(erspan3(_inner_eth(ip, d)), d,
                                                               47), d))
    tunnel_flow("erspan", False, lambda ip, d: _eth_wrap(_outer(erspan3(
        _inner_eth(ip, d), platform=False), d, 47), d))

    def udp_tunnel(port, body):
        return lambda ip, d: _eth_wrap(_outer(udp(*((40000, port) if d == 0 else (port, 40000)),
                                                  body(ip, d)), d, 17), d)
    for inner6 in (False, True):
        tunnel_flow("gtpu", inner6, udp_tunnel(2152, lambda ip, d: gtpu(ip)))
    tunnel_flow("gtpu", False, udp_tunnel(2152, lambda ip, d: gtpu(ip, seq=3)))
    tunnel_flow("vxlan", False, udp_tunnel(4789, lambda ip, d: vxlan(_inner_eth(ip, d))))
    tunnel_flow("vxlan", True, udp_tunnel(4789, lambda ip, d: vxlan(_inner_eth(ip, d, (5,)))),
                vlans=(5,))
    tunnel_flow("tzsp", False, udp_tunnel(37008, lambda ip, d: tzsp(_inner_eth(ip, d))))
    tunnel_flow("capwap", False, udp_tunnel(5247, lambda ip, d: capwap(_inner_eth(ip, d))))
    tunnel_flow("capwap", False, udp_tunnel(5247, lambda ip, d: capwap(wifi_data(ip), True)))

    def nested(levels):                   # IP-in-IP, ``levels`` deep
        def wrap(ip, d):
            for k in range(levels):
                ip = _outer(ip, d, 41 if ip[0] >> 4 == 6 else 4)
            return _eth_wrap(ip, d)
        return wrap
    tunnel_flow("ipip", False, nested(4))                  # the deepest that is decoded
    inner = ipv4(V4[0], V4[1], 17, udp(1, 2, b"deep"))
    c.drop("tunnel_too_deep", nested(5)(inner, 0)[0])
    # tunnels that carry no IP packet stay accounted to the outer flow
    ka = c.flow(OUTER4[0], OUTER4[1], 47)                  # a GRE keepalive
    ka.send(c.tick(), 0, ip=ipv4(OUTER4[0], OUTER4[1], 47, gre(b"\0\0\0\0", 0)))
    echo = c.flow(OUTER4[0], OUTER4[1], 17, 2152, 2152)    # GTP echo request: no G-PDU
    echo.send(c.tick(), 0, ip=ipv4(OUTER4[0], OUTER4[1], 17, udp(2152, 2152, struct.pack(
        "!BBHIHBB", 0x32, 1, 4, 0, 1, 0, 0))))
    arp = eth(b"\0\1\x08\0\6\4\0\1" + bytes(20), 0x0806)
    vx = c.flow(OUTER4[0], OUTER4[1], 17, 40001, 4789)     # VXLAN carrying ARP
    vx.send(c.tick(), 0, ip=ipv4(OUTER4[0], OUTER4[1], 17, udp(40001, 4789, vxlan(arp))))
    return c


def case_fragments() -> Case:
    """IPv4 and IPv6 fragments: the first carries the ports and every later one is accounted to
    its flow; a later fragment whose first was not seen, or came more than 30 s before, is not."""
    c = Case("fragments")
    payload = bytes(range(256)) * 6
    for v6 in (False, True):
        a, b = (V6 if v6 else V4)[0], (V6 if v6 else V4)[1]
        f = c.flow(a, b, 17, 5000, 5001)
        f.send(c.tick(), 0, payload=b"before")
        l4 = udp(5000, 5001, payload)
        parts = [(0, l4[:800], True), (800, l4[800:1200], True), (1200, l4[1200:], False)]
        for k, (off, body, more) in enumerate(parts):
            if v6:
                ip = ipv6(a, b, 17, body, ext=[frag6(off, more, 77)])
            else:
                ip = ipv4(a, b, 17, body, ident=77, mf=more, frag_off=off)
            f.send(c.tick(), 0, ip=ip, frag="first" if k == 0 else True)
        f.send(c.tick(), 1, payload=b"after")
        # a later fragment of a datagram whose first fragment never came
        if v6:
            orphan = ipv6(a, b, 17, l4[800:1200], ext=[frag6(800, True, 78)])
        else:
            orphan = ipv4(a, b, 17, l4[800:1200], ident=78, mf=True, frag_off=800)
        c.drop("fragment_without_first", eth(orphan, 0x86DD if v6 else 0x0800))
        # the first fragment, then a later one 31 s on: the cache entry has expired
        g = c.flow(a, b, 17, 6000, 6001)
        l4 = udp(6000, 6001, payload)
        if v6:
            first = ipv6(a, b, 17, l4[:800], ext=[frag6(0, True, 79)])
            late = ipv6(a, b, 17, l4[800:], ext=[frag6(800, False, 79)])
        else:
            first = ipv4(a, b, 17, l4[:800], ident=79, mf=True)
            late = ipv4(a, b, 17, l4[800:], ident=79, frag_off=800)
        g.send(c.tick(), 0, ip=first, frag="first")
        c.drop("fragment_without_first", eth(late, 0x86DD if v6 else 0x0800),
               ts=c.tick(31 * SEC))
    # an atomic IPv6 fragment (offset 0, no more): a whole datagram
    f = c.flow(V6[2], V6[3], 17, 7000, 7001)
    f.send(c.tick(), 0, ip=ipv6(V6[2], V6[3], 17, udp(7000, 7001, b"atomic"),
                                ext=[frag6(0, False, 80)]))    # not counted as a fragment
    return c


def case_ipv6_extensions() -> Case:
    c = Case("ipv6ext")
    hop = (0, b"\x01\x04\0\0\0\0")
    dst = (60, b"\x01\x04\0\0\0\0" + bytes(8))
    route = (43, b"\0\0\0\0\0\0")
    ah = (51, b"\0\0" + b"\0\0\0\1" + b"\0\0\0\1" + bytes(12))
    mobility = (135, b"\0\0\0\0\0\0")
    for k, chain in enumerate(([hop], [hop, dst], [hop, route, dst], [ah], [dst, ah],
                               [mobility])):
        a, b = V6[k], V6[(k + 3) % 8]
        f = c.flow(a, b, 6 if k % 2 else 17, 20000 + k, 80)
        for d in (0, 1):
            l4 = f.l4(d, ACK if f.proto == 6 else 0, b"ext" * (k + 1))
            f.send(c.tick(), d, ACK if f.proto == 6 else 0,
                   ip=ipv6(*((a, b) if d == 0 else (b, a)), f.proto, l4, ext=chain))
    return c


def case_malformed() -> Case:
    """One packet for every reason a packet is not accounted."""
    c = Case("malformed")
    good = ipv4(V4[0], V4[1], 17, udp(1, 2, b"x" * 20))
    c.drop("truncated", eth(good)[:10])                     # not even an Ethernet header
    c.drop("truncated", eth(good)[:14 + 12])                # IPv4 header cut
    c.drop("truncated", eth(ipv4(V4[0], V4[1], 6, tcp(1, 2, ACK)))[:14 + 20 + 10])
    c.drop("bad_ipv4_header", eth(ipv4(V4[0], V4[1], 17, udp(1, 2), ihl=2)))
    c.drop("bad_ipv4_header", eth(ipv4(V4[0], V4[1], 17, udp(1, 2), total=10)))
    c.drop("bad_ipv4_header", eth(b"\x75" + good[1:]))       # IP version 7
    short = ipv6(V6[0], V6[1], 17, udp(1, 2), ext=[(0, b"\x01\x04\0\0\0\0")])
    c.drop("bad_ipv6_header", eth(short[:4] + struct.pack("!H", 4) + short[6:], 0x86DD))
    c.drop("bad_l4_header", eth(ipv4(V4[0], V4[1], 6, tcp(1, 2, ACK, offset=3))))
    c.drop("bad_tunnel_header", eth(ipv4(V4[0], V4[1], 47, b"\x00\x03\x08\x00" + good)))
    c.drop("non_ip", eth(b"\0\1\x08\0\6\4\0\1" + bytes(20), 0x0806))     # ARP
    c.drop("non_ip", eth(b"\xfe\xfe\x03" + bytes(40), 43))                # 802.3, no SNAP
    c.drop("non_ip", eth(mpls(b"\x00" * 20), 0x8847))                     # MPLS, no IP
    c.drop("ip_length_exceeds_frame", eth(ipv4(V4[0], V4[1], 17, udp(1, 2, b"y" * 10),
                                               total=600)))
    ok = c.flow(V4[2], V4[3], 17, 9, 9)                     # and a good one among them
    c.udp_exchange(ok)
    return c


LINK_CASES = {
    # name: (link type, wrap(ip, v6) -> frame, link-layer length, has MACs)
    "link_null": (0, lambda ip, v6: null(ip, v6), 4),
    "link_loop": (108, lambda ip, v6: null(ip, v6, big_endian=True), 4),
    "link_raw": (101, lambda ip, v6: ip, 0),
    "link_raw12": (12, lambda ip, v6: ip, 0),
    "link_raw14": (14, lambda ip, v6: ip, 0),
    "link_ppp": (9, lambda ip, v6: ppp(ip, v6), 4),
    "link_ppp_hdlc": (50, lambda ip, v6: ppp(ip, v6), 4),
    "link_chdlc": (104, lambda ip, v6: chdlc(ip, 0x86DD if v6 else 0x0800), 4),
    "link_sll": (113, lambda ip, v6: sll(ip, 0x86DD if v6 else 0x0800), 16),
    "link_sll2": (276, lambda ip, v6: sll2(ip, 0x86DD if v6 else 0x0800), 20),
}


def case_link(name) -> Case:
    lt, wrap, l2 = LINK_CASES[name]
    c = Case(name, lt)
    for v6 in (False, True):
        a, b = (V6 if v6 else V4)[0], (V6 if v6 else V4)[1]
        f = c.flow(a, b, 6, 41000, 443, wrap=lambda ip, d, v6=v6: (wrap(ip, v6), l2), macs=False)
        c.tcp_session(f)
    return c


def case_raw_family(name, lt, v6) -> Case:
    """Link types 228 and 229: raw IPv4 only, raw IPv6 only."""
    c = Case(name, lt)
    a, b = (V6 if v6 else V4)[2], (V6 if v6 else V4)[3]
    c.udp_exchange(c.flow(a, b, 17, 53, 53, wrap=lambda ip, d: (ip, 0), macs=False), n=3)
    return c


def case_unknown_link() -> Case:
    c = Case("link_unknown", 147)                           # a user link type
    c.drop("unsupported_link_type", ipv4(V4[0], V4[1], 17, udp(1, 2)))
    return c


def _pcap_variant(name, **opts) -> Case:
    c = Case(name, **opts)
    f = c.flow(V4[0], V4[1], 17, 1234, 5678)
    for k in range(3):                                       # sub-microsecond times
        f.send(c.tick(MS + 123), k % 2, payload=b"v" * (10 + k))
    return c


def case_pcapng() -> Case:
    """Three interfaces (Ethernet in us, raw IP in ns, SLL in 2^-20 s), then a big-endian section
    whose only interface is Ethernet."""
    def layout(packets):
        tagged = [p for p in packets]
        return [dict(interfaces=[(1, None), (101, 9), (113, 0x80 | 20)],
                     packets=[(IFACE[i], ts, fr, w) for i, (ts, fr, w) in enumerate(tagged[:9])]),
                dict(big_endian=True, interfaces=[(1, 6)],
                     packets=[(0, ts, fr, w) for ts, fr, w in tagged[9:]])]
    c = Case("pcapng", pcapng=layout)
    IFACE = []
    for iface, (wrap, l2, macs) in enumerate((
            (lambda ip, d: _eth_wrap(ip, d)[0], 14, True), (lambda ip, d: ip, 0, False),
            (lambda ip, d: sll(ip), 16, False))):
        f = c.flow(V4[iface], V4[iface + 4], 17, 100 + iface, 200, macs=macs,
                   wrap=lambda ip, d, w=wrap, l2=l2: (w(ip, d), l2))
        for k in range(3):
            f.send(c.tick(SEC), k % 2, payload=b"n" * (5 + k))     # exact in every resolution
            IFACE.append(iface)
    c.udp_exchange(c.flow(V6[0], V6[1], 17, 300, 400), n=2)
    return c


def case_pcapng_simple() -> Case:
    """Simple packet blocks: no interface id, no timestamp (flowprobe gives them time 0)."""
    c = Case("pcapng_simple", pcapng=lambda packets: [dict(
        interfaces=[(1, None)], packets=[(0, None, fr, w) for _, fr, w in packets])])
    f = c.flow(V4[0], V4[1], 17, 1, 2)
    for k in range(3):
        f.send(0, k % 2, payload=b"s" * 20)
    return c


def case_session() -> Case:
    """One TCP connection, as a capture of one HTTPS download: the handshake, 12 requests and
    their answers (the larger ones in several segments, each acknowledged), the close."""
    c = Case("session")
    f = c.flow(ipaddress.ip_address("192.168.1.13").packed,
               ipaddress.ip_address("178.62.197.130").packed, 6, 55523, 443)
    f.send(c.tick(), 0, SYN)
    f.send(c.tick(30 * MS), 1, SYN | ACK)
    f.send(c.tick(), 0, ACK)
    for k in range(12):
        f.send(c.tick(5 * MS), 0, PSH | ACK, bytes([k]) * (100 + 37 * k))
        for part in range(1 + k % 3):
            f.send(c.tick(20 * MS), 1, ACK if part < k % 3 else PSH | ACK, bytes([k]) * 1400)
            f.send(c.tick(), 0, ACK)
    f.send(c.tick(100 * MS), 0, FIN | ACK)
    f.send(c.tick(20 * MS), 1, FIN | ACK)
    f.send(c.tick(), 0, ACK)
    return c


def case_span() -> Case:
    """Flows six years apart (as 1kxun.pcap jumps from 2016 to 2022), IPv4 and IPv6, VLANs,
    ToS, TCP flags, ICMP: for NetFlow v5/v9 times that must stay right across the jump."""
    c = Case("span")
    for era, year_ns in enumerate((1_470_000_000 * SEC, 1_660_000_000 * SEC)):  # 2016, 2022
        c.t = year_ns
        for k in range(3):
            vl = (20 + k,) if k != 1 else ()
            wrap = (lambda ip, d, vl=vl, v6=(k == 2): (eth(
                ip, 0x86DD if v6 else 0x0800, vlans=vl, src=(C_MAC, S_MAC)[d],
                dst=(S_MAC, C_MAC)[d]), 14 + 4 * len(vl)))
            a, b = (V6 if k == 2 else V4)[k], (V6 if k == 2 else V4)[k + 4]
            c.tcp_session(c.flow(a, b, 6, 30000 + 10 * era + k, 80 + k, vlans=vl,
                                 wrap=wrap), tos=(0x20 + k, 0x40))
            c.tick(1500 * MS)
        ic = c.flow(V4[3], V4[7 - era], 1)
        ic.send(c.tick(), 0, payload=b"p" * 8, icmp_type=(8, 0), tos=4)
        ic.send(c.tick(250 * MS), 1, payload=b"p" * 8, icmp_type=(0, 0))
        c.udp_exchange(c.flow(V4[2], V4[6], 17, 5000 + 10 * era, 53), n=4)
        c.tick(SEC * 3600 * 24 * 3)                  # 3 days later, still the same era
        c.udp_exchange(c.flow(V4[2], V4[6], 17, 5001 + 10 * era, 53), n=2)
    return c


def all_cases() -> list[Case]:
    out = [case_ethernet(), case_vlan(), case_l2_encapsulations(), case_tunnels(),
           case_fragments(), case_ipv6_extensions(), case_malformed(), case_unknown_link(),
           case_raw_family("link_ipv4", 228, False), case_raw_family("link_ipv6", 229, True),
           _pcap_variant("pcap_nanoseconds", nanoseconds=True),
           _pcap_variant("pcap_big_endian", big_endian=True),
           _pcap_variant("pcap_big_endian_ns", big_endian=True, nanoseconds=True),
           case_pcapng(), case_pcapng_simple(), case_span(), case_session()]
    out += [case_link(name) for name in LINK_CASES]
    return out


def generate(out_dir: str, names=None) -> list[dict]:
    os.makedirs(out_dir, exist_ok=True)
    result = []
    for case in all_cases():
        if names and case.name not in names:
            continue
        exp = case.expected()
        with open(os.path.join(out_dir, case.file_name()), "wb") as f:
            f.write(case.file_bytes())
        with open(os.path.join(out_dir, case.name + ".json"), "w") as f:
            json.dump(exp, f, indent=1)
        result.append(exp)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default="cases", help="directory (created)")
    ap.add_argument("names", nargs="*", help="cases to write (default: all)")
    a = ap.parse_args(argv)
    known = {c.name for c in all_cases()}
    unknown = set(a.names) - known
    if unknown:
        ap.error(f"unknown case {sorted(unknown)[0]!r}; cases: {', '.join(sorted(known))}")
    generate(a.output, a.names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
