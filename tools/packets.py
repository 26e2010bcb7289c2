"""Packet and capture-file builders (struct only): the headers flowprobe decodes, and pcap/pcapng
writers for every variant its reader takes. Used by tools/gen_cases.py and the tests.

Builders return bytes. Checksums: IPv4 header checksums are correct; TCP/UDP checksums are 0
(no decoder involved here verifies them; UDP 0 means "no checksum").
"""
from __future__ import annotations

import struct

C_MAC, S_MAC = b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# --- link layer -----------------------------------------------------------------------------------
def eth(payload: bytes, ethertype=0x0800, vlans=(), src=C_MAC, dst=S_MAC, tpids=None) -> bytes:
    """Ethernet II with 802.1Q tags (``vlans``; QinQ's first tag 0x88A8 unless ``tpids``)."""
    hdr = dst + src
    for i, v in enumerate(vlans):
        tpid = tpids[i] if tpids else (0x88A8 if i == 0 and len(vlans) > 1 else 0x8100)
        hdr += struct.pack("!HH", tpid, v)
    return hdr + struct.pack("!H", ethertype) + payload


def snap(payload: bytes, ethertype=0x0800, src=C_MAC, dst=S_MAC) -> bytes:
    """802.3 with LLC/SNAP: the length field instead of an ethertype."""
    body = b"\xaa\xaa\x03\0\0\0" + struct.pack("!H", ethertype) + payload
    return dst + src + struct.pack("!H", len(body)) + body


def mpls(inner: bytes, labels=(16,)) -> bytes:
    out = b""
    for i, lab in enumerate(labels):
        out += struct.pack("!I", (lab << 12) | ((1 if i == len(labels) - 1 else 0) << 8) | 64)
    return out + inner


def pppoe(inner: bytes, v6=False) -> bytes:
    return struct.pack("!BBHHH", 0x11, 0, 1, len(inner) + 2, 0x0057 if v6 else 0x0021) + inner


def sll(inner: bytes, ethertype=0x0800) -> bytes:
    """Linux cooked capture v1 (link type 113)."""
    return struct.pack("!HHH8sH", 0, 1, 6, C_MAC + b"\0\0", ethertype) + inner


def sll2(inner: bytes, ethertype=0x0800) -> bytes:
    """Linux cooked capture v2 (link type 276)."""
    return struct.pack("!HHIHBB8s", ethertype, 0, 1, 1, 0, 6, C_MAC + b"\0\0") + inner


def null(inner: bytes, v6=False, big_endian=False) -> bytes:
    """BSD loopback: link type 0 (host byte order, little-endian here) or 108 (big-endian)."""
    return struct.pack(">I" if big_endian else "<I", 30 if v6 else 2) + inner


def ppp(inner: bytes, v6=False, address_control=True) -> bytes:
    """PPP (link types 9 and 50), optionally with the FF 03 address/control bytes."""
    return (b"\xff\x03" if address_control else b"") + struct.pack(
        "!H", 0x0057 if v6 else 0x0021) + inner


def chdlc(inner: bytes, ethertype=0x0800) -> bytes:
    """Cisco HDLC (link type 104)."""
    return struct.pack("!BBH", 0x0F, 0, ethertype) + inner


# --- IP and transport -------------------------------------------------------------------------
def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, tos=0, ident=1, mf=False,
         frag_off=0, options=b"", ttl=64, total=None, ihl=None) -> bytes:
    hl = 20 + len(options)
    assert hl % 4 == 0
    tot = hl + len(payload) if total is None else total
    fo = (0x2000 if mf else 0) | (frag_off // 8)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | (hl // 4 if ihl is None else ihl), tos, tot, ident,
                      fo, ttl, proto, 0, src, dst) + options
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src: bytes, dst: bytes, nh: int, payload: bytes, tclass=0, ext=()) -> bytes:
    """``ext``: [(type, body)] extension headers in order; a fragment header's body is 6 bytes,
    AH's (51) a multiple of 4 bytes plus 2, the others a multiple of 8 bytes plus 6."""
    chain = b""
    types = [t for t, _ in ext] + [nh]
    for i, (t, body) in enumerate(ext):
        nxt = types[i + 1]
        if t == 44:
            chain += struct.pack("!B", nxt) + body
        elif t == 51:
            chain += struct.pack("!BB", nxt, (len(body) + 2) // 4 - 2) + body
        else:
            chain += struct.pack("!BB", nxt, (len(body) + 2) // 8 - 1) + body
    payload = chain + payload
    return struct.pack("!IHBB16s16s", (6 << 28) | (tclass << 20), len(payload), types[0], 64,
                       src, dst) + payload


def frag6(offset: int, more: bool, ident: int) -> tuple:
    """An IPv6 fragment extension header for ``ipv6(ext=...)``."""
    return (44, struct.pack("!BHI", 0, offset | (1 if more else 0), ident))


def tcp(sport, dport, flags, payload=b"", options=b"", seq=1, ack=0, offset=None,
        win=65535) -> bytes:
    hl = 20 + len(options)
    words = hl // 4 if offset is None else offset
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, words << 4, flags, win, 0,
                       0) + options + payload


def udp(sport, dport, payload=b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(typ, code, payload=b"") -> bytes:
    return struct.pack("!BBHI", typ, code, 0, 0) + payload


def sctp(sport, dport, payload=b"") -> bytes:
    return struct.pack("!HHII", sport, dport, 0, 0) + payload


# --- tunnels ------------------------------------------------------------------------------------
def gre(inner: bytes, proto=0x0800, key=None, seq=None, checksum=False) -> bytes:
    fl = (0x8000 if checksum else 0) | (0x2000 if key is not None else 0) | \
         (0x1000 if seq is not None else 0)
    hdr = struct.pack("!HH", fl, proto)
    if checksum:
        hdr += b"\0\0\0\0"
    if key is not None:
        hdr += struct.pack("!I", key)
    if seq is not None:
        hdr += struct.pack("!I", seq)
    return hdr + inner


def gre_pptp(ppp_frame: bytes, call_id=7, seq=1) -> bytes:
    """Enhanced GRE (version 1, PPTP) with key and sequence number, carrying a PPP frame."""
    return struct.pack("!HHHHI", 0x3001, 0x880B, len(ppp_frame), call_id, seq) + ppp_frame


def erspan2(inner_eth: bytes, session=5, seq=9) -> bytes:
    """GRE (with a sequence number) carrying ERSPAN type II."""
    return gre(struct.pack("!II", (1 << 28) | (3 << 16) | session, 0) + inner_eth, 0x88BE,
               seq=seq)


def erspan1(inner_eth: bytes) -> bytes:
    """GRE without a sequence number, 0x88BE: ERSPAN type I (no ERSPAN header)."""
    return gre(inner_eth, 0x88BE)


def erspan3(inner_eth: bytes, session=5, platform=True) -> bytes:
    """GRE carrying ERSPAN type III, with the optional platform sub-header."""
    hdr = struct.pack("!IIHBB", (2 << 28) | session, 12345, 0, 0, 1 if platform else 0)
    return gre(hdr + (bytes(8) if platform else b"") + inner_eth, 0x22EB, seq=1)


def vxlan(inner_eth: bytes, vni=42) -> bytes:
    return struct.pack("!II", 0x08000000, vni << 8) + inner_eth


def gtpu(inner_ip: bytes, teid=7, seq=None) -> bytes:
    if seq is None:
        return struct.pack("!BBHI", 0x30, 0xFF, len(inner_ip), teid) + inner_ip
    return struct.pack("!BBHIHBB", 0x32, 0xFF, len(inner_ip) + 4, teid, seq, 0, 0) + inner_ip


def tzsp(inner_eth: bytes) -> bytes:
    """TZSP version 1, type 0 (received), encapsulation 1 (Ethernet), one padding tag, END."""
    return struct.pack("!BBH", 1, 0, 1) + b"\x00\x01" + inner_eth


def capwap(inner: bytes, wireless=False) -> bytes:
    """CAPWAP data (UDP 5247): header length 2 words; T bit and WBID 1 for an 802.11 frame."""
    hlen_words = 2
    b1 = hlen_words << 3
    b2 = ((1 << 1) | 1) if wireless else (1 << 1)       # WBID 1 (802.11), T bit
    return struct.pack("!BBBB", 0, b1, b2, 0) + b"\0\0\0\0" + inner


def wifi_data(inner_ip: bytes, ethertype=0x0800) -> bytes:
    """An 802.11 data frame (to DS) with LLC/SNAP."""
    return struct.pack("<HH", 0x0108, 0) + S_MAC + C_MAC + S_MAC + b"\0\0" + \
        b"\xaa\xaa\x03\0\0\0" + struct.pack("!H", ethertype) + inner_ip


# --- capture files -------------------------------------------------------------------------------
def pcap_file(packets, linktype=1, nanoseconds=False, big_endian=False, snaplen=65535) -> bytes:
    """Classic pcap. ``packets``: (ts_ns, frame, wirelen)."""
    e = ">" if big_endian else "<"
    out = [struct.pack(e + "IHHiIII", 0xA1B23C4D if nanoseconds else 0xA1B2C3D4, 2, 4, 0, 0,
                       snaplen, linktype)]
    for ts, frame, wire in packets:
        sub = ts % 1_000_000_000 if nanoseconds else ts % 1_000_000_000 // 1000
        out.append(struct.pack(e + "IIII", ts // 1_000_000_000, sub, len(frame), wire) + frame)
    return b"".join(out)


def _block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def pcapng_file(sections) -> bytes:
    """pcapng. ``sections``: [dict(big_endian=bool, interfaces=[(linktype, tsresol or None)],
    packets=[(interface, ts_ns or None, frame, wirelen)])]; ts None writes a simple packet block
    (interface 0, no timestamp). tsresol is the if_tsresol option byte (6: us, 9: ns, 0x80|k:
    2^-k s)."""
    out = []
    for sec in sections:
        e = ">" if sec.get("big_endian") else "<"
        out.append(_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)))
        resol = []
        for lt, tsresol in sec["interfaces"]:
            opts = b""
            if tsresol is not None:
                opts = struct.pack(e + "HH", 9, 1) + bytes([tsresol, 0, 0, 0]) + \
                    struct.pack(e + "HH", 0, 0)
            out.append(_block(e, 1, struct.pack(e + "HHI", lt, 0, 65535) + opts))
            if tsresol is None:
                resol.append(10 ** 6)
            else:
                resol.append(1 << (tsresol & 0x7F) if tsresol & 0x80 else 10 ** tsresol)
        for iface, ts, frame, wire in sec["packets"]:
            if ts is None:
                out.append(_block(e, 3, struct.pack(e + "I", wire) + frame))
                continue
            units = ts * resol[iface] // 1_000_000_000
            out.append(_block(e, 6, struct.pack(e + "IIIII", iface, units >> 32,
                                                units & 0xFFFFFFFF, len(frame), wire) + frame))
    return b"".join(out)
