#!/usr/bin/env python3
"""Seeded generator of a realistic synthetic capture (classic pcap, Ethernet, microsecond stamps).

    python tools/gen_pcap.py --seed 1 --packets 2000000 --flows 200000 -o big.pcap

writes ``big.pcap`` and ``big.pcap.json`` (the expected totals: packets, bytes, flows, per protocol
and IP version), so a test or a benchmark can check a probe's numbers against it.

The traffic, by flows: about 75% TCP / 25% UDP and 80% IPv4 / 20% IPv6.

* TCP flows open with a three-way handshake (SYN and SYN-ACK carry an MSS option), exchange data
  both ways (downloads: a request, then full-size segments from the server acknowledged by pure
  ACKs every one or two segments; uploads: the mirror image; interactive: small segments both
  ways) and close with FIN from both sides plus the last ACK (5% are reset instead: RST).
  Sequence and acknowledgement numbers follow the bytes sent.
* UDP flows: DNS-like request/response (port 53, sometimes a retried query or no answer),
  QUIC-like flows to port 443 (padded 1200+ byte Initial, large server datagrams, small client
  ones) and NTP-like exchanges.
* Frame sizes are a realistic mix: many 54-100 byte ACKs and small packets, many 1514-byte
  full-size frames, some in between. Payloads come from two pools: uniform random bytes (TLS,
  SSH, QUIC: entropy near 8 bits/byte) and text-like bytes (HTTP, DNS names: about 4-5 bits).
* Flows start at random times over the capture (about 1000 new flows per second unless
  ``--duration`` says otherwise) and overlap; timestamps increase through the file.
* Every flow has its own 5-tuple, lasts at most 60 s and never pauses 10 s or more, and a closed
  TCP flow's last ACK follows the FINs within 0.5 s, so a probe with the default timeouts (idle 30
  s, lifetime 120 s, 2 s FIN linger) sees exactly ``flows`` flows.

IPv4 header checksums and TCP/UDP checksums are correct. Packets are written in chunks built with
numpy (headers as a byte matrix, payload slices joined), so 2 million packets take seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

BASE_EPOCH_US = 1_767_225_600 * 1_000_000          # 2026-01-01T00:00:00Z
MAX_FLOW_US = 60_000_000                           # flows last < 60 s (lifetime 120 s)
MAX_GAP_US = 9_000_000                             # never idle 10 s (idle timeout 30 s)
LAST_ACK_MAX_US = 500_000                          # last ACK within the 2 s FIN linger

PROTO_TCP, PROTO_UDP = 6, 17
# TCP flags
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# packet roles (internal)
R_SYN, R_SYNACK, R_ACK3, R_DATA, R_FIN1, R_FIN2, R_LASTACK, R_RST, R_UDP = range(9)

# flow kinds
K_DOWN, K_UP, K_INTER, K_DNS, K_QUIC, K_NTP = range(6)
KIND_NAMES = ("tcp_download", "tcp_upload", "tcp_interactive", "udp_dns", "udp_quic", "udp_ntp")

TEXT_WORDS = (
    "GET POST HTTP/1.1 Host: www example com org net api v1 v2 index html json Accept: text/html "
    "application/json User-Agent: Mozilla/5.0 (X11; Linux x86_64) Content-Type: Content-Length: "
    "Connection: keep-alive Cookie: session id user name value the of and to in is that for it as "
    "with was on be by this are from at or an have not data time server client request response "
    "status OK 200 404 301 cache-control max-age=3600 gzip deflate br en-US,en;q=0.9 <html> <head> "
    "<title> </title> <body> <div class=\"content\"> </div> <p> </p> <a href=\"/path/to/page\"> "
    "{\"id\": 12345, \"name\": \"value\", \"items\": [1, 2, 3], \"ok\": true} mail cdn static img "
    "assets js css login search query results page next previous 2026-01-01T00:00:00Z"
).split()


def _text_pool(rng: np.random.Generator, size: int) -> np.ndarray:
    """Text-like bytes: words with Zipf-ish frequencies, spaces and line breaks."""
    words = [w.encode() for w in TEXT_WORDS]
    ranks = np.arange(1, len(words) + 1, dtype=float)
    p = 1.0 / ranks ** 0.9
    p /= p.sum()
    order = rng.permutation(len(words))
    n_words = size // 5 + 16
    picks = order[rng.choice(len(words), size=n_words, p=p)]
    seps = rng.choice([b" ", b" ", b" ", b" ", b"\r\n", b", ", b"="], size=n_words)
    words_arr = np.array(words, dtype=object)
    out = b"".join(w + s for w, s in zip(words_arr[picks].tolist(), seps.tolist()))
    while len(out) < size:
        out += out
    return np.frombuffer(out[:size], dtype=np.uint8).copy()


def _segment_ids(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For segments of the given lengths: segment id of each element and position within it."""
    total = int(counts.sum())
    seg = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    return seg, pos


def _exclusive_segment_cumsum(values: np.ndarray, seg_start_of_elem: np.ndarray) -> np.ndarray:
    """Per-segment exclusive prefix sum (elements are grouped by segment, in order)."""
    c = np.cumsum(values, dtype=np.int64)
    excl = c - values
    return excl - excl[seg_start_of_elem]


class Plan:
    """The whole capture as per-packet arrays (in flow order until ``sort``)."""


def plan(seed: int, n_packets: int, n_flows: int, duration_s: float | None) -> Plan:
    rng = np.random.default_rng(seed)
    F = n_flows
    if F < 1 or n_packets < 1:
        raise ValueError("need at least one flow and one packet")

    # --- flows -----------------------------------------------------------------------------
    is_tcp = rng.random(F) < 0.75
    is_v6 = rng.random(F) < 0.20
    kind = np.empty(F, dtype=np.int64)
    u = rng.random(F)
    kind[is_tcp] = np.where(u[is_tcp] < 0.60, K_DOWN, np.where(u[is_tcp] < 0.72, K_UP, K_INTER))
    ku = u[~is_tcp]
    kind[~is_tcp] = np.where(ku < 0.65, K_DNS, np.where(ku < 0.90, K_QUIC, K_NTP))
    rst_close = is_tcp & (rng.random(F) < 0.05)

    # minimum packets per flow: TCP 3 handshake + 1 data + 3 close (RST: + 1), DNS 1-3, NTP 2
    minimum = np.ones(F, dtype=np.int64)
    minimum[is_tcp] = 7
    minimum[rst_close] = 5
    dns = kind == K_DNS
    du = rng.random(F)
    minimum[dns] = np.where(du[dns] < 0.88, 2, np.where(du[dns] < 0.94, 1, 3))
    minimum[kind == K_QUIC] = 4
    minimum[kind == K_NTP] = 2
    need = int(minimum.sum())
    if need > n_packets:
        raise ValueError("%d flows need at least %d packets (asked for %d); lower --flows"
                         % (F, need, n_packets))
    extra = n_packets - need
    # heavy-tailed sizes for TCP and QUIC flows: a few elephants, many mice
    grows = is_tcp | (kind == K_QUIC)
    weights = np.zeros(F)
    w = rng.pareto(1.2, size=F) + 0.05
    w = np.minimum(w, np.quantile(w, 0.999) * 4)
    weights[grows] = w[grows]
    weights[kind == K_INTER] *= 0.5
    if weights.sum() == 0:
        weights[:] = 1.0
    counts = minimum + rng.multinomial(extra, weights / weights.sum())

    # addresses: clients and servers in separate ranges; every flow its own 5-tuple
    n_clients = max(1, min(F, max(2000, F // 50)))
    n_servers = max(1, min(F, max(300, F // 200)))
    client = rng.integers(0, n_clients, size=F)
    server = rng.integers(0, n_servers, size=F)
    # client port: per client, consecutive ephemeral ports from a random start
    order = np.argsort(client, kind="stable")
    per_client = np.bincount(client, minlength=n_clients)
    _, rank_sorted = _segment_ids(per_client)
    rank = np.empty(F, dtype=np.int64)
    rank[order] = rank_sorted
    port_base = rng.integers(32768, 50000, size=n_clients)
    if per_client.max() > 60999 - 50000:
        raise ValueError("too many flows per client; raise the client count")
    cport = port_base[client] + rank
    sport_tab = {K_DOWN: (443, 443, 443, 80, 8080, 443), K_UP: (443, 22, 21, 445, 443),
                 K_INTER: (22, 23, 5222, 443), K_DNS: (53,), K_QUIC: (443,), K_NTP: (123,)}
    dport = np.empty(F, dtype=np.int64)
    for k, ports in sport_tab.items():
        m = kind == k
        dport[m] = np.asarray(ports)[rng.integers(0, len(ports), size=int(m.sum()))]
    # payload randomness per flow: probability a data packet is random bytes (else text-like)
    p_random = np.where(np.isin(dport, (443, 22, 445, 5222)), 0.95, 0.15)
    p_random[kind == K_DNS] = 0.0
    p_random[kind == K_NTP] = 1.0

    # timing
    if duration_s is None:
        duration_s = max(1.0, F / 1000.0)
    t0 = rng.random(F) * duration_s * 1e6
    rtt = np.clip(rng.lognormal(np.log(20e3), 0.8, size=F), 300, 400e3)        # us
    gap_mean = np.where(kind == K_INTER, rng.lognormal(np.log(150e3), 0.8, size=F),
                        rng.lognormal(np.log(800), 1.0, size=F))
    gap_mean[kind == K_QUIC] = rng.lognormal(np.log(3e3), 1.0, size=int((kind == K_QUIC).sum()))

    # --- packets (flow order) ----------------------------------------------------------------
    fid, pos = _segment_ids(counts)
    P = len(fid)
    n_f = counts[fid]
    fkind = kind[fid]
    ftcp = is_tcp[fid]
    last = pos == n_f - 1
    role = np.full(P, R_DATA, dtype=np.int64)
    role[~ftcp] = R_UDP
    role[ftcp & (pos == 0)] = R_SYN
    role[ftcp & (pos == 1)] = R_SYNACK
    role[ftcp & (pos == 2)] = R_ACK3
    frst = rst_close[fid]
    fin_close = ftcp & ~frst
    role[fin_close & (pos == n_f - 3)] = R_FIN1
    role[fin_close & (pos == n_f - 2)] = R_FIN2
    role[fin_close & last] = R_LASTACK
    role[frst & last] = R_RST

    # direction: 0 client->server, 1 server->client
    r = rng.random(P)
    d = np.zeros(P, dtype=np.int64)
    pl = np.zeros(P, dtype=np.int64)                    # L4 payload length
    mss = np.where(is_v6[fid], 1440, 1460)
    data = role == R_DATA
    first_data = data & (pos == 3)
    r2 = rng.random(P)
    # downloads: request first, then the server sends, the client ACKs
    m = data & (fkind == K_DOWN)
    srv = m & ~first_data & (r < 0.62)
    req = m & (first_data | (~first_data & (r >= 0.95)))
    d[srv] = 1
    pl[srv] = np.where(r2[srv] < 0.8, mss[srv], rng.integers(1, mss[srv] + 1))
    pl[req] = rng.integers(150, 900, size=int(req.sum()))
    # uploads: the mirror image
    m = data & (fkind == K_UP)
    cli = m & (first_data | (r < 0.62))
    d[m & ~cli] = 1
    pl[cli] = np.where(r2[cli] < 0.8, mss[cli], rng.integers(1, mss[cli] + 1))
    small = m & ~cli & (r >= 0.95)
    pl[small] = rng.integers(20, 200, size=int(small.sum()))
    # interactive: small segments both ways, some pure ACKs
    m = data & (fkind == K_INTER)
    d[m] = (r[m] < 0.5).astype(np.int64)
    withp = m & ((r2 < 0.7) | first_data)
    pl[withp] = np.clip(rng.lognormal(np.log(60), 1.0, size=int(withp.sum())), 1, 1400).astype(np.int64)
    # TCP control packets
    d[role == R_SYNACK] = 1
    flip = fin_close & (rng.random(F) < 0.3)[fid]        # server closes first
    d[role == R_FIN1] = flip[role == R_FIN1]
    d[role == R_FIN2] = 1 - flip[role == R_FIN2]
    d[role == R_LASTACK] = flip[role == R_LASTACK]
    d[role == R_RST] = (r[role == R_RST] < 0.5)
    # UDP
    m = fkind == K_DNS
    dn = n_f
    d[m] = np.where(dn[m] == 3, (pos[m] == 2), (pos[m] % 2 == 1)).astype(np.int64)
    q = m & (d == 0)
    pl[q] = rng.integers(28, 64, size=int(q.sum()))
    a = m & (d == 1)
    pl[a] = np.clip(rng.lognormal(np.log(120), 0.6, size=int(a.sum())), 40, 1200).astype(np.int64)
    m = fkind == K_QUIC
    d[m] = np.where(pos[m] == 0, 0, (r[m] < 0.7)).astype(np.int64)
    big = m & (d == 1)
    pl[big] = np.where(r2[big] < 0.75, rng.integers(1200, 1351, size=int(big.sum())),
                       rng.integers(30, 600, size=int(big.sum())))
    c = m & (d == 0)
    pl[c] = rng.integers(30, 70, size=int(c.sum()))
    init = m & (pos == 0)
    pl[init] = rng.integers(1200, 1253, size=int(init.sum()))
    m = fkind == K_NTP
    d[m] = pos[m] % 2
    pl[m] = 48

    # TCP flags
    flags = np.zeros(P, dtype=np.int64)
    flags[ftcp] = ACK
    flags[role == R_SYN] = SYN
    flags[role == R_SYNACK] = SYN | ACK
    flags[(role == R_DATA) & (pl > 0)] |= PSH
    flags[(role == R_FIN1) | (role == R_FIN2)] = FIN | ACK
    flags[role == R_RST] = RST | ACK

    # timestamps: gaps within the flow
    fstart = np.cumsum(counts) - counts
    prev = np.maximum(np.arange(P) - 1, 0)
    gap = rng.exponential(1.0, size=P) * gap_mean[fid]
    turn = (pos > 0) & (d != d[prev]) & (pl[prev] > 0)          # an answer to a request
    gap = np.where(turn, gap + rtt[fid] * rng.uniform(0.9, 1.3, size=P), gap)
    gap[role == R_SYNACK] = rtt[fid][role == R_SYNACK]
    gap[role == R_ACK3] = rng.uniform(20, 200, size=int((role == R_ACK3).sum()))
    udp_ans = (~ftcp) & (d == 1) & (fkind != K_QUIC)
    gap[udp_ans] = rtt[fid][udp_ans] * rng.uniform(0.5, 2.0, size=int(udp_ans.sum()))
    gap = np.minimum(gap, MAX_GAP_US)
    gap[role == R_LASTACK] = np.minimum(gap[role == R_LASTACK], LAST_ACK_MAX_US)
    gap[pos == 0] = 0.0
    dur = np.bincount(fid, weights=gap, minlength=F)
    scale = np.where(dur > MAX_FLOW_US, MAX_FLOW_US / np.maximum(dur, 1.0), 1.0)
    gap_us = np.maximum(np.floor(gap * scale[fid]).astype(np.int64), 1)
    gap_us[pos == 0] = 0
    rel = _exclusive_segment_cumsum(gap_us, fstart[fid]) + gap_us
    ts = BASE_EPOCH_US + t0.astype(np.int64)[fid] + rel

    # TCP sequence numbers (consumed sequence space: payload, +1 for SYN and FIN)
    consumed = pl + ((flags & (SYN | FIN)) != 0)
    isn = rng.integers(0, 2 ** 32, size=(F, 2), dtype=np.int64)
    sent_c = _exclusive_segment_cumsum(np.where(d == 0, consumed, 0), fstart[fid])
    sent_s = _exclusive_segment_cumsum(np.where(d == 1, consumed, 0), fstart[fid])
    seq = np.where(d == 0, isn[fid, 0] + sent_c, isn[fid, 1] + sent_s) & 0xFFFFFFFF
    ackn = np.where(d == 0, isn[fid, 1] + sent_s, isn[fid, 0] + sent_c) & 0xFFFFFFFF
    ackn[role == R_SYN] = 0
    ip_id0 = rng.integers(0, 65536, size=F)

    # payload sources: even offsets into a random pool or a text pool
    is_rand = rng.random(P) < p_random[fid]

    pl_ = Plan()
    pl_.rng = rng
    pl_.n_clients, pl_.n_servers = n_clients, n_servers
    pl_.F, pl_.P = F, P
    pl_.flow = dict(is_tcp=is_tcp, is_v6=is_v6, kind=kind, client=client, server=server,
                    cport=cport, dport=dport, rst=rst_close, counts=counts)
    order = np.argsort(ts, kind="stable")
    pl_.pkt = {name: arr[order] for name, arr in dict(
        fid=fid, pos=pos, role=role, d=d, pl=pl, flags=flags, ts=ts, seq=seq, ack=ackn,
        is_rand=is_rand).items()}
    pl_.ip_id0 = ip_id0
    pl_.duration_s = duration_s
    return pl_


# --- bytes ---------------------------------------------------------------------------------------
def _put(mat: np.ndarray, col: int, values: np.ndarray, nbytes: int, little: bool = False) -> None:
    v = values.astype(np.uint64)
    for i in range(nbytes):
        shift = 8 * (i if little else nbytes - 1 - i)
        mat[:, col + i] = ((v >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.uint8)


def _fold(s: np.ndarray) -> np.ndarray:
    s = s.astype(np.int64)
    for _ in range(4):
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _word_sum(mat: np.ndarray) -> np.ndarray:
    """Sum of the big-endian 16-bit words of each row (even width)."""
    w = mat.astype(np.int64)
    return (w[:, 0::2] * 256 + w[:, 1::2]).sum(axis=1)


class Writer:
    def __init__(self, p: Plan, pool_size: int = 1 << 21):
        rng = p.rng
        self.p = p
        self.pools = np.concatenate([rng.integers(0, 256, size=pool_size, dtype=np.uint8),
                                     _text_pool(rng, pool_size)])
        self.pool_size = pool_size
        self.pool_bytes = self.pools.tobytes()
        w = self.pools.astype(np.int64)
        words = w[0::2] * 256 + w[1::2]
        self.word_prefix = np.concatenate([[0], np.cumsum(words)])
        F = p.F
        fl = p.flow
        # per flow addresses (16 bytes each; IPv4 in the first 4)
        self.caddr = np.zeros((F, 16), dtype=np.uint8)
        self.saddr = np.zeros((F, 16), dtype=np.uint8)
        v4 = ~fl["is_v6"]
        c = fl["client"].astype(np.int64) + 1
        s = fl["server"].astype(np.int64) + 1
        a4c = (10 << 24) + c                                     # 10.0.0.0/8
        a4s = (198 << 24) + (18 << 16) + s                       # 198.18.0.0/15
        _put(self.caddr[:, :4], 0, a4c, 4)
        _put(self.saddr[:, :4], 0, a4s, 4)
        v6c = np.zeros((F, 16), dtype=np.uint8)
        v6s = np.zeros((F, 16), dtype=np.uint8)
        v6c[:, :6] = [0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01]         # 2001:db8:1::/48
        v6s[:, :6] = [0x20, 0x01, 0x0d, 0xb8, 0x00, 0xff]         # 2001:db8:ff::/48
        _put(v6c, 12, c, 4)
        _put(v6s, 12, s, 4)
        v6c[:, 8] = 0x02
        self.caddr[~v4] = v6c[~v4]
        self.saddr[~v4] = v6s[~v4]
        cm = np.zeros((F, 6), dtype=np.uint8)
        cm[:, 0] = 0x02
        _put(cm, 2, c, 4)
        self.cmac = cm
        self.gw_mac = np.array([0x00, 0x1b, 0x21, 0x3a, 0x4f, 0x01], dtype=np.uint8)

    def frames(self, lo: int, hi: int) -> bytes:
        p, fl = self.p, self.p.flow
        k = hi - lo
        g = {n: a[lo:hi] for n, a in p.pkt.items()}
        fid, d, plen = g["fid"], g["d"], g["pl"]
        v6 = fl["is_v6"][fid]
        tcp = fl["is_tcp"][fid]
        syn = (g["flags"] & SYN) != 0
        l4h = np.where(tcp, np.where(syn, 24, 20), 8)
        iph = np.where(v6, 40, 20)
        l4len = l4h + plen
        caplen = 14 + iph + l4len
        H = np.zeros((k, 16 + 14 + 40 + 24), dtype=np.uint8)
        ts = g["ts"]
        _put(H, 0, ts // 1_000_000, 4, little=True)
        _put(H, 4, ts % 1_000_000, 4, little=True)
        _put(H, 8, caplen, 4, little=True)
        _put(H, 12, caplen, 4, little=True)
        # Ethernet: client -> gateway or gateway -> client
        cm = self.cmac[fid]
        H[:, 16:22] = np.where(d[:, None] == 0, self.gw_mac[None, :], cm)
        H[:, 22:28] = np.where(d[:, None] == 0, cm, self.gw_mac[None, :])
        _put(H, 28, np.where(v6, 0x86DD, 0x0800), 2)
        src = np.where(d[:, None] == 0, self.caddr[fid], self.saddr[fid])
        dst = np.where(d[:, None] == 0, self.saddr[fid], self.caddr[fid])
        proto = np.where(tcp, PROTO_TCP, PROTO_UDP)

        # L4 header (24 columns) and checksum
        L = np.zeros((k, 24), dtype=np.uint8)
        cport, dport = fl["cport"][fid], fl["dport"][fid]
        _put(L, 0, np.where(d == 0, cport, dport), 2)
        _put(L, 2, np.where(d == 0, dport, cport), 2)
        t = tcp
        Lt = L[t]
        _put(Lt, 4, g["seq"][t], 4)
        _put(Lt, 8, g["ack"][t], 4)
        Lt[:, 12] = (l4h[t] // 4) << 4
        Lt[:, 13] = g["flags"][t]
        _put(Lt, 14, np.where(d[t] == 0, 64240, 65160), 2)
        sy = syn[t]
        Lt[sy, 20] = 2
        Lt[sy, 21] = 4
        Lt[sy, 22:24] = np.where(v6[t][sy][:, None], [[0x05, 0xa0]], [[0x05, 0xb4]])
        L[t] = Lt
        u = ~tcp
        Lu = L[u]
        _put(Lu, 4, l4len[u], 2)
        L[u] = Lu
        # payload source offsets (even) in the pools
        rnd = g["is_rand"]
        span = self.pool_size - 1500
        off = (self.p.rng.integers(0, span // 2, size=k) * 2) + np.where(rnd, 0, self.pool_size)
        # checksum: pseudo header + L4 header + payload (odd tail byte padded)
        half = plen // 2
        psum = self.word_prefix[off // 2 + half] - self.word_prefix[off // 2]
        odd = (plen & 1) == 1
        tail = np.where(odd, self.pools[np.minimum(off + plen - 1, len(self.pools) - 1)].astype(np.int64) * 256, 0)
        pseudo = np.where(v6, _word_sum(src) + _word_sum(dst),
                          _word_sum(src[:, :4]) + _word_sum(dst[:, :4])) + l4len + proto
        hsum = _word_sum(L)     # unused option bytes are zero
        ck = (~_fold(pseudo + hsum + psum + tail)) & 0xFFFF
        ck = np.where((~tcp) & (ck == 0), 0xFFFF, ck)
        ccol = np.where(tcp, 16, 6)
        rows = np.arange(k)
        L[rows, ccol] = (ck >> 8).astype(np.uint8)
        L[rows, ccol + 1] = (ck & 0xFF).astype(np.uint8)

        # IP headers
        m4 = ~v6
        if m4.any():
            I4 = np.zeros((int(m4.sum()), 20), dtype=np.uint8)
            I4[:, 0] = 0x45
            _put(I4, 2, 20 + l4len[m4], 2)
            ipid = (self.p.ip_id0[fid[m4]] * (1 + d[m4] * 7) + g["pos"][m4]) & 0xFFFF
            _put(I4, 4, ipid, 2)
            I4[:, 6] = 0x40                                  # DF
            I4[:, 8] = np.where(d[m4] == 0, 64, 53)
            I4[:, 9] = proto[m4]
            I4[:, 12:16] = src[m4, :4]
            I4[:, 16:20] = dst[m4, :4]
            c4 = (~_fold(_word_sum(I4))) & 0xFFFF
            _put(I4, 10, c4, 2)
            H[m4, 30:50] = I4
            H[m4, 50:74] = L[m4]
        if v6.any():
            I6 = np.zeros((int(v6.sum()), 40), dtype=np.uint8)
            label = (fid[v6] * 2654435761 + d[v6]) & 0xFFFFF
            _put(I6, 0, (6 << 28) | label, 4)
            _put(I6, 4, l4len[v6], 2)
            I6[:, 6] = proto[v6]
            I6[:, 7] = np.where(d[v6] == 0, 64, 55)
            I6[:, 8:24] = src[v6]
            I6[:, 24:40] = dst[v6]
            H[v6, 30:70] = I6
            H[v6, 70:94] = L[v6]
        hlen = 30 + iph + l4h
        Hb = H.tobytes()
        W = H.shape[1]
        pool = self.pool_bytes
        hs = (np.arange(k) * W).tolist()
        he = (np.arange(k) * W + hlen).tolist()
        ps = off.tolist()
        pe = (off + plen).tolist()
        parts = []
        app = parts.append
        for a, b, c, e in zip(hs, he, ps, pe):
            app(Hb[a:b])
            app(pool[c:e])
        return b"".join(parts)


def expected_totals(p: Plan) -> dict:
    fl, pk = p.flow, p.pkt
    fid = pk["fid"]
    tcp = fl["is_tcp"][fid]
    v6 = fl["is_v6"][fid]
    syn = (pk["flags"] & SYN) != 0
    l4h = np.where(tcp, np.where(syn, 24, 20), 8)
    ipb = np.where(v6, 40, 20) + l4h + pk["pl"]           # IP-layer bytes
    frame = 14 + ipb

    def part(fmask, pmask):
        return {"flows": int(fmask.sum()), "packets": int(pmask.sum()),
                "ip_bytes": int(ipb[pmask].sum()), "frame_bytes": int(frame[pmask].sum())}

    kinds = {name: part(fl["kind"] == k, fl["kind"][fid] == k) for k, name in enumerate(KIND_NAMES)}
    sizes = np.bincount(np.searchsorted([64, 128, 256, 512, 1024, 1400], frame, side="left"),
                        minlength=7)
    return {
        "packets": int(p.P), "flows": int(p.F), "ip_bytes": int(ipb.sum()),
        "frame_bytes": int(frame.sum()),
        "file_bytes": 24 + 16 * int(p.P) + int(frame.sum()),
        "tcp": part(fl["is_tcp"], tcp), "udp": part(~fl["is_tcp"], ~tcp),
        "ipv4": part(~fl["is_v6"], ~v6), "ipv6": part(fl["is_v6"], v6),
        "by_kind": kinds,
        "tcp_rst_closed_flows": int(fl["rst"].sum()),
        "payload_bytes": int(pk["pl"].sum()),
        "frame_size_histogram": dict(zip(["<=64", "65-128", "129-256", "257-512", "513-1024",
                                          "1025-1400", ">1400"], map(int, sizes))),
        "first_ts_us": int(pk["ts"][0]), "last_ts_us": int(pk["ts"][-1]),
        "max_flow_packets": int(fl["counts"].max()),
    }


def generate(out: str, seed: int = 1, packets: int = 2_000_000, flows: int = 200_000,
             duration: float | None = None, chunk: int = 100_000, quiet: bool = True) -> dict:
    t = time.perf_counter()
    p = plan(seed, packets, flows, duration)
    w = Writer(p)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(np.array([0xA1B2C3D4], "<u4").tobytes() + np.array([2, 4], "<u2").tobytes()
                + np.array([0, 0, 65535, 1], "<u4").tobytes())
        for lo in range(0, p.P, chunk):
            f.write(w.frames(lo, min(p.P, lo + chunk)))
    os.replace(tmp, out)
    meta = {"generator": "tools/gen_pcap.py", "seed": seed, "requested_packets": packets,
            "requested_flows": flows, "duration_s": p.duration_s, "linktype": 1,
            "timestamp_resolution": "us"}
    meta.update(expected_totals(p))
    meta["expect_with_timeouts"] = {"idle_s": 30, "lifetime_s": 120, "fin_linger_s": 2,
                                   "note": "flows < 60 s, gaps < 10 s: one flow record each"}
    with open(out + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    if not quiet:
        print("%s: %d packets, %d flows, %.1f MB in %.1f s" % (
            out, p.P, p.F, os.path.getsize(out) / 1e6, time.perf_counter() - t), file=sys.stderr)
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--flows", type=int, default=200_000)
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds over which flows start (default: flows/1000, at least 1)")
    ap.add_argument("-o", "--output", default="capture.pcap")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        generate(a.output, a.seed, a.packets, a.flows, a.duration, quiet=a.quiet)
    except ValueError as e:
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
