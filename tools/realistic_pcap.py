"""Build a capture of real traffic for benchmarks: K copies of the development set's Ethernet
captures, each copy with its own addresses, retimed and merged in time order.

    .venv/bin/python tools/realistic_pcap.py [--pcaps ../shared/pcaps] [-k 266] [-o FILE]

The development captures (nDPI's test suite, ../shared/pcaps) are real traffic but tiny (12 k
packets); the benchmark needs millions of packets with their mix of flow sizes, protocols and
payloads. Copy k XORs k into the second 16-bit word of every IPv4 and IPv6 address (outer headers,
and the inner ones of IP-in-IP and GRE), so each copy's flows are new flows; IP, TCP, UDP and
ICMPv6 checksums are adjusted incrementally (RFC 1624), so they stay valid. Packets whose inner
addresses sit in a UDP tunnel (VXLAN, GTP, CAPWAP, Teredo) keep them, so those few flows merge
across copies. Each file's gaps longer than --max-gap
seconds are shortened to it (1kxun.pcap jumps six years), and copy k of a file starts at a seeded
random time within --span seconds. Frames are written unchanged in length, as classic pcap with
microsecond times. The damaged captures (fuzz-*, badpackets, malformed_*, ip_fragmented_garbage)
are left out: they test error paths, they are not traffic. Not committed: built when needed
(bench/ caches it under bench/work/).
"""
from __future__ import annotations

import argparse
import heapq
import os
import pathlib
import random
import struct
import sys

import dpkt

ETH_VLAN = (0x8100, 0x88A8, 0x9100)
ETH_MPLS = (0x8847, 0x8848)
DAMAGED = ("fuzz-", "badpackets", "malformed_", "ip_fragmented_garbage")


def _adjust(cs: int, old: int, new: int) -> int:
    """Ones'-complement checksum cs after a 16-bit word changed from old to new (RFC 1624 eq. 3)."""
    s = (~cs & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class Rewrite:
    """Where one frame's addresses and checksums are: found once, applied for every copy."""

    __slots__ = ("words", "ip_cs", "l4_cs", "udp_v4")

    def __init__(self) -> None:
        self.words: list[int] = []            # offsets of address words XORed
        self.ip_cs: list[tuple[int, list[int]]] = []   # (IPv4 header checksum offset, its words)
        self.l4_cs: list[tuple[int, list[int], bool]] = []  # (L4 checksum offset, words, is UDP/v4)
        self.udp_v4 = False


def _walk_ip(buf: bytes, off: int, rw: Rewrite, depth: int = 0) -> bool:
    """Record the address words of the IP header at off (and an IP-in-IP/GRE inner one)."""
    if depth > 3 or off >= len(buf):
        return False
    version = buf[off] >> 4
    if version == 4:
        if len(buf) < off + 20:
            return False
        ihl = (buf[off] & 0x0F) * 4
        proto = buf[off + 9]
        frag = struct.unpack_from("!H", buf, off + 6)[0]
        words = [off + 14, off + 18]            # second word of src and dst
        rw.words += words
        rw.ip_cs.append((off + 10, words))
        l4 = off + ihl
        first_fragment = (frag & 0x1FFF) == 0
    elif version == 6:
        if len(buf) < off + 40:
            return False
        proto = buf[off + 6]
        words = [off + 10, off + 26]
        rw.words += words
        l4 = off + 40
        first_fragment = True
        while proto in (0, 43, 60) and len(buf) >= l4 + 8:  # hop-by-hop, routing, destination
            proto, l4 = buf[l4], l4 + (buf[l4 + 1] + 1) * 8
        if proto == 44 and len(buf) >= l4 + 8:  # one fragment header
            first_fragment = (struct.unpack_from("!H", buf, l4 + 2)[0] & 0xFFF8) == 0
            proto = buf[l4]
            l4 += 8
    else:
        return False
    if not first_fragment:
        return True
    if proto in (4, 41):
        _walk_ip(buf, l4, rw, depth + 1)
    elif proto == 47 and len(buf) >= l4 + 4:      # GRE: flags, then the inner protocol
        flags, inner = struct.unpack_from("!HH", buf, l4)
        if inner in (0x0800, 0x86DD) and flags & 0x4000 == 0:
            _walk_ip(buf, l4 + 4 + (4 if flags & 0x8000 else 0) + (4 if flags & 0x2000 else 0)
                     + (4 if flags & 0x1000 else 0), rw, depth + 1)
    cs_at = {6: 16, 17: 6, 58: 2}.get(proto)
    if cs_at is not None and len(buf) >= l4 + cs_at + 2:
        is_udp_v4 = proto == 17 and version == 4
        if not (is_udp_v4 and struct.unpack_from("!H", buf, l4 + cs_at)[0] == 0):
            rw.l4_cs.append((l4 + cs_at, words, is_udp_v4))
    return True


def plan(frame: bytes) -> Rewrite | None:
    """The rewrite of one Ethernet frame, or None when no IP header is found."""
    off, etype = 14, struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0
    while etype in ETH_VLAN and len(frame) >= off + 4:
        etype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if etype in ETH_MPLS:
        while len(frame) >= off + 4:
            bottom = frame[off + 2] & 1
            off += 4
            if bottom:
                break
        etype = {4: 0x0800, 6: 0x86DD}.get(frame[off] >> 4 if off < len(frame) else 0, 0)
    if etype == 0x8864 and len(frame) >= off + 8:  # PPPoE session
        etype = {0x0021: 0x0800, 0x0057: 0x86DD}.get(struct.unpack_from("!H", frame, off + 6)[0], 0)
        off += 8
    if etype not in (0x0800, 0x86DD):
        return None
    rw = Rewrite()
    return rw if _walk_ip(frame, off, rw) else None


def apply(frame: bytes, rw: Rewrite, k: int) -> bytes:
    b = bytearray(frame)
    old = {w: struct.unpack_from("!H", b, w)[0] for w in rw.words}
    for w, v in old.items():
        struct.pack_into("!H", b, w, v ^ k)
    for at, words in rw.ip_cs:
        cs = struct.unpack_from("!H", b, at)[0]
        for w in words:
            cs = _adjust(cs, old[w], old[w] ^ k)
        struct.pack_into("!H", b, at, cs)
    for at, words, is_udp_v4 in rw.l4_cs:
        cs = struct.unpack_from("!H", b, at)[0]
        for w in words:
            cs = _adjust(cs, old[w], old[w] ^ k)
        struct.pack_into("!H", b, at, 0xFFFF if is_udp_v4 and cs == 0 else cs)
    return bytes(b)


def read_ethernet(path: pathlib.Path) -> list[tuple[float, bytes]] | None:
    """The frames of an Ethernet pcap/pcapng file, or None for other link types or bad files."""
    with open(path, "rb") as f:
        try:
            r = dpkt.pcapng.Reader(f) if f.read(4) == b"\x0a\x0d\x0d\x0a" else None
            if r is None:
                f.seek(0)
                r = dpkt.pcap.Reader(f)
            if r.datalink() != dpkt.pcap.DLT_EN10MB:
                return None
            return [(ts, bytes(buf)) for ts, buf in r]
        except (ValueError, dpkt.dpkt.Error, struct.error):
            return None


def retime(frames: list[tuple[float, bytes]], max_gap: float) -> list[tuple[float, bytes]]:
    out, t, prev = [], 0.0, None
    for ts, buf in frames:
        if prev is not None:
            t += min(max(ts - prev, 0.0), max_gap)
        prev = ts
        out.append((t, buf))
    return out


def traffic(pcaps: pathlib.Path, max_gap: float = 10.0) -> list[tuple[str, list]]:
    """(name, retimed frames) of every undamaged Ethernet capture in pcaps."""
    files = []
    for p in sorted(pcaps.iterdir()):
        if p.suffix in (".pcap", ".pcapng", ".cap") and not p.name.startswith(DAMAGED) \
                and (frames := read_ethernet(p)):
            files.append((p.name, retime(frames, max_gap)))
    return files


def copies_for(pcaps: pathlib.Path, packets: int) -> int:
    """Copies of the set that make at least this many packets."""
    per_copy = sum(len(frames) for _, frames in traffic(pcaps))
    return -(-packets // per_copy)


def build(pcaps: pathlib.Path, copies: int, out: pathlib.Path, span: float = 600.0,
          max_gap: float = 10.0, seed: int = 1) -> dict:
    rng = random.Random(seed)
    files = traffic(pcaps, max_gap)
    plans = {name: [plan(buf) for _, buf in frames] for name, frames in files}
    untouched = sum(rw is None for ps in plans.values() for rw in ps)

    def stream(name, frames, k, start):
        for (t, buf), rw in zip(frames, plans[name]):
            yield start + t, apply(buf, rw, k) if rw is not None else buf

    streams = [stream(name, frames, k, rng.uniform(0, span))
               for k in range(1, copies + 1) for name, frames in files]
    base = 1_700_000_000.0
    packets = wire = 0
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t, buf in heapq.merge(*streams, key=lambda x: x[0]):
            us = round((base + t) * 1e6)
            f.write(struct.pack("<IIII", us // 1_000_000, us % 1_000_000, len(buf), len(buf)))
            f.write(buf)
            packets += 1
            wire += len(buf)
    os.replace(tmp, out)
    per_copy = sum(len(fr) for _, fr in files)
    return {"files": len(files), "copies": copies, "packets": packets, "bytes": wire,
            "avg_frame": round(wire / max(packets, 1), 1),
            "not_rewritten_per_copy": untouched, "packets_per_copy": per_copy}


def main(argv: list[str] | None = None) -> int:
    here = pathlib.Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pcaps", type=pathlib.Path,
                    default=pathlib.Path(os.environ.get("FLOWPROBE_SHARED", here.parent / "shared"))
                    / "pcaps", help="the development captures (default ../shared/pcaps)")
    ap.add_argument("-k", "--copies", type=int,
                    help="copies of the set (default: as many as make --packets)")
    ap.add_argument("--packets", type=int, default=3_200_000,
                    help="at least this many packets (default 3.2 M)")
    ap.add_argument("-o", "--output", type=pathlib.Path,
                    help="default bench/work/realistic-K.pcap (where python -m bench realistic "
                         "looks for it)")
    ap.add_argument("--span", type=float, default=600.0,
                    help="seconds over which the copies start (default 600)")
    ap.add_argument("--max-gap", type=float, default=10.0,
                    help="longest gap kept between two packets of one file (default 10 s)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    if not a.pcaps.is_dir():
        print(f"realistic_pcap: {a.pcaps}: no development captures there (--pcaps DIR)",
              file=sys.stderr)
        return 2
    a.copies = a.copies or copies_for(a.pcaps, a.packets)
    if not 1 <= a.copies <= 0xFFFF:
        print("realistic_pcap: --copies must be 1..65535", file=sys.stderr)
        return 2
    a.output = a.output or here / f"bench/work/realistic-{a.copies}.pcap"
    a.output.parent.mkdir(parents=True, exist_ok=True)
    r = build(a.pcaps, a.copies, a.output, a.span, a.max_gap, a.seed)
    print(f"{a.output}: {r['packets']} packets, {r['bytes']} bytes (average frame "
          f"{r['avg_frame']}), {r['copies']} copies of {r['files']} captures; "
          f"{r['not_rewritten_per_copy']} of {r['packets_per_copy']} packets a copy keep their "
          f"addresses (no IP header found)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
