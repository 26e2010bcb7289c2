# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The data plane: decode packets, keep flows, compute behaviour features, read pcap files.

Everything per packet runs with the GIL released; Python is crossed once per batch. Every read of
packet bytes goes through a length check first: a short or malformed packet becomes a counted
reason, never an exception. See docs/DESIGN.md for the semantics (keys, expiry, features).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset, memcmp
from libc.stdlib cimport malloc, calloc, free
from libc.math cimport log2

import numpy as np
cimport numpy as cnp

from engine._fastpath cimport flow_record_t, pkt_meta_t

cnp.import_array()

# --- reasons a packet is not (fully) accounted, in the order of REASONS ----------------------
cdef enum:
    R_OK = 0
    R_TRUNCATED
    R_BAD_IPV4
    R_BAD_IPV6
    R_BAD_L4
    R_BAD_TUNNEL
    R_NON_IP
    R_UNSUPPORTED_LINK
    R_ORPHAN_FRAGMENT
    R_TUNNEL_DEPTH
    R_TABLE_FULL
    R_IP_LENGTH
    R_COUNT

REASONS = ("ok", "truncated", "bad_ipv4_header", "bad_ipv6_header", "bad_l4_header",
           "bad_tunnel_header", "non_ip", "unsupported_link_type", "fragment_without_first",
           "tunnel_too_deep", "flow_table_full", "ip_length_exceeds_frame")

cdef enum:
    END_IDLE = 0
    END_ACTIVE
    END_FIN
    END_RST
    END_END

cdef enum:
    TUN_NONE = 0
    TUN_GRE
    TUN_IPIP
    TUN_GTPU
    TUN_VXLAN
    TUN_TZSP
    TUN_CAPWAP
    TUN_ERSPAN

# link types (pcap LINKTYPE_ values)
cdef enum:
    LT_NULL = 0
    LT_ETHERNET = 1
    LT_PPP = 9
    LT_RAW = 101
    LT_C_HDLC = 104
    LT_LOOP = 108
    LT_LINUX_SLL = 113
    LT_IPV4 = 228
    LT_IPV6 = 229
    LT_LINUX_SLL2 = 276

cdef extern from *:
    """
    #define FP_NONE32 0xFFFFFFFFu
    """
    const uint32_t NONE32 "FP_NONE32"    # no flow / empty slot / no histogram
    void prefetch "__builtin_prefetch"(const void* p) noexcept nogil

cdef enum:
    MAX_TUNNEL_DEPTH = 4
    WINDOW = 256                         # behaviour-feature window, packets
    FRAG_SLOTS = 4096                    # fragment cache entries (power of two)
    FRAG_TTL_US = 30000000
    POOL_CHUNK = 1024                    # entropy histograms allocated per chunk
    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_ACK = 0x10

# --- decoded packet ----------------------------------------------------------------------------
ctypedef struct pkt_t:
    uint64_t ts_us
    const uint8_t* payload       # captured L4 payload
    uint32_t payload_cap         # captured payload bytes at payload
    uint32_t payload_len         # payload length from the IP/L4 lengths
    uint32_t ip_bytes            # IP-layer bytes: wire length minus the link-layer header
    uint16_t sport
    uint16_t dport
    uint16_t vlan
    uint16_t outer_vlan
    uint16_t icmp_type
    uint8_t src[16]
    uint8_t dst[16]
    uint8_t smac[6]
    uint8_t dmac[6]
    uint8_t ip_version
    uint8_t proto
    uint8_t tcp_flags
    uint8_t tos
    uint8_t tunnel
    uint8_t is_frag
    uint8_t have_mac
    uint8_t vlans_seen
    uint32_t outer_ip_len        # total length the outermost IP header claims
    uint32_t l2_len              # bytes before the outermost IP header: the link-layer header
    const uint8_t* frame         # start of the frame, to measure l2_len

# First fragment's flow key, so that later fragments of the same datagram reach the same flow.
ctypedef struct frag_t:
    uint8_t src[16]
    uint8_t dst[16]
    uint32_t ident
    uint8_t proto
    uint8_t ip_version
    uint8_t used
    # the flow key the first fragment decoded to (inner, when tunnelled)
    uint8_t k_src[16]
    uint8_t k_dst[16]
    uint16_t k_sport
    uint16_t k_dport
    uint16_t k_icmp
    uint8_t k_proto
    uint8_t k_ip_version
    uint8_t k_tunnel
    uint64_t ts_us

ctypedef struct flow_t:
    uint8_t a_addr[16]           # client
    uint8_t b_addr[16]           # server
    uint64_t first_us
    uint64_t last_us
    uint64_t bytes[2]
    uint32_t pkts[2]
    uint32_t frags[2]
    uint32_t hash
    uint32_t prev
    uint32_t next
    uint16_t a_port
    uint16_t b_port
    uint16_t vlan
    uint16_t outer_vlan
    uint16_t icmp_type
    uint8_t flags[2]
    uint8_t tos[2]
    uint8_t smac[6]
    uint8_t dmac[6]
    uint8_t proto
    uint8_t ip_version
    uint8_t tunnel
    uint8_t fin                  # bit 0: client sent FIN, bit 1: server sent FIN
    uint8_t closed               # 0 open, END_FIN or END_RST + 1 when closed
    uint8_t hs                   # TCP handshake: 0 none, 1 SYN seen, 2 SYN-ACK seen, 3 done
    uint8_t window_open

ctypedef struct feat_t:
    uint64_t last_us[3]          # last window packet: any direction, client, server
    uint16_t plen[18]            # 3 x 6 bins: both, client, server
    uint16_t tdiff[18]
    uint32_t hist                # entropy histogram slot, NONE32 when none
    uint16_t window              # packets counted in the window (0..256)
    uint16_t entropy[2]
    uint8_t seen[2]              # a window packet of this direction was seen

ctypedef struct stats_t:
    uint64_t packets
    uint64_t bytes
    uint64_t reasons[R_COUNT]
    uint64_t flows_created
    uint64_t flows_exported
    uint64_t exported_by_reason[5]
    uint64_t active_flows
    uint64_t fragments
    uint64_t pool_exhausted
    uint64_t other_shard         # packets left to the other workers of a sharded run


# --- byte order helpers ------------------------------------------------------------------------
cdef inline uint16_t be16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]

cdef inline uint32_t be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline uint16_t le16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[1] << 8) | p[0]

cdef inline uint32_t le32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]

cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    x ^= x >> 33
    x *= <uint64_t>0xff51afd7ed558ccd
    x ^= x >> 33
    x *= <uint64_t>0xc4ceb9fe1a85ec53
    x ^= x >> 33
    return x

cdef inline uint64_t side_hash(const uint8_t* addr, uint16_t port) noexcept nogil:
    cdef uint64_t lo, hi
    memcpy(&lo, addr, 8)
    memcpy(&hi, addr + 8, 8)
    return mix64(lo ^ mix64(hi ^ port))

cdef inline uint32_t key_hash(const uint8_t* a, uint16_t ap, const uint8_t* b, uint16_t bp,
                              uint8_t proto, uint16_t vlan) noexcept nogil:
    # symmetric: both directions of a flow hash alike
    return <uint32_t>mix64(side_hash(a, ap) + side_hash(b, bp) + ((<uint64_t>proto << 16) | vlan))


# --- decode ------------------------------------------------------------------------------------
cdef int decode_by_ethertype(uint16_t et, const uint8_t* d, uint32_t n, pkt_t* p,
                             frag_t* frags, stats_t* st, int depth) noexcept nogil:
    """The frame after its Ethernet header (and tags): IP, MPLS or PPPoE."""
    cdef uint32_t off = 0
    cdef uint16_t ppp
    if et == 0x0800 or et == 0x86DD:
        return decode_ip(d, n, p, frags, st, depth)
    if et == 0x8847 or et == 0x8848:           # MPLS: pop the label stack, guess IP by version
        while True:
            if off + 4 > n:
                return R_TRUNCATED
            off += 4
            if d[off - 2] & 0x01:                # bottom of stack
                break
        if off >= n:
            return R_TRUNCATED
        if (d[off] >> 4) == 4 or (d[off] >> 4) == 6:
            return decode_ip(d + off, n - off, p, frags, st, depth)
        return R_NON_IP
    if et == 0x8864:                            # PPPoE session: 6-byte header + PPP protocol
        if n < 8:
            return R_TRUNCATED
        ppp = be16(d + 6)
        if ppp == 0x0021 or ppp == 0x0057:
            return decode_ip(d + 8, n - 8, p, frags, st, depth)
        return R_NON_IP
    return R_NON_IP


cdef int decode_ether(const uint8_t* d, uint32_t n, pkt_t* p, frag_t* frags, stats_t* st,
                      int depth, bint outer) noexcept nogil:
    cdef uint32_t off = 14
    cdef uint16_t et, tag
    if n < 14:
        return R_TRUNCATED
    if outer:
        memcpy(p.dmac, d, 6)
        memcpy(p.smac, d + 6, 6)
        p.have_mac = 1
    et = be16(d + 12)
    while et == 0x8100 or et == 0x88A8 or et == 0x9100:
        if off + 4 > n:
            return R_TRUNCATED
        # the last tag is the flow's VLAN (the customer tag of QinQ, as ndpiReader keys it);
        # the first of several is kept as the outer (service) tag
        tag = be16(d + off) & 0x0FFF
        if p.vlans_seen == 1:
            p.outer_vlan = p.vlan
        p.vlan = tag
        p.vlans_seen += 1
        et = be16(d + off + 2)
        off += 4
    if et <= 1500:                              # 802.3 length: LLC, IP only behind SNAP
        if off + 8 <= n and d[off] == 0xAA and d[off + 1] == 0xAA and d[off + 2] == 0x03:
            et = be16(d + off + 6)
            off += 8
        else:
            return R_NON_IP
    return decode_by_ethertype(et, d + off, n - off, p, frags, st, depth)


cdef int decode_80211(const uint8_t* d, uint32_t n, pkt_t* p, frag_t* frags, stats_t* st,
                      int depth) noexcept nogil:
    """An 802.11 data frame (CAPWAP native binding) down to its LLC/SNAP ethertype."""
    cdef uint32_t off = 24
    cdef uint16_t fc
    if n < 24:
        return R_TRUNCATED
    fc = le16(d)
    if ((fc >> 2) & 0x3) != 2 and ((d[1] >> 2) & 0x3) == 2:
        fc = be16(d)                            # Cisco APs send the frame control swapped
    if ((fc >> 2) & 0x3) != 2:                  # not a data frame
        return R_NON_IP
    if (fc & 0x0300) == 0x0300:                 # ToDS and FromDS: a fourth address
        off += 6
    if (fc >> 4) & 0x8:                         # QoS data
        off += 2
    if (fc >> 4) & 0x4:                         # null data, no payload
        return R_NON_IP
    if off + 8 > n:
        return R_TRUNCATED
    if d[off] != 0xAA or d[off + 1] != 0xAA or d[off + 2] != 0x03:
        return R_NON_IP
    return decode_by_ethertype(be16(d + off + 6), d + off + 8, n - off - 8, p, frags, st, depth)


cdef int decode_gre(const uint8_t* d, uint32_t n, pkt_t* p, frag_t* frags, stats_t* st,
                    int depth) noexcept nogil:
    cdef uint16_t fl, proto
    cdef uint32_t off = 4
    if n < 4:
        return R_TRUNCATED
    fl = be16(d)
    proto = be16(d + 2)
    if (fl & 0x7) == 1:                         # enhanced GRE (PPTP): key always, optional ack
        if proto != 0x880B:
            return R_BAD_TUNNEL
        off += 4
        if fl & 0x1000:
            off += 4
        if fl & 0x0080:
            off += 4
        if off + 2 > n:
            return R_TRUNCATED
        if d[off] == 0xFF and d[off + 1] == 0x03:
            off += 2
        if off + 1 > n:
            return R_TRUNCATED
        if d[off] == 0x21:
            return decode_ip(d + off + 1, n - off - 1, p, frags, st, depth)
        if off + 2 <= n and be16(d + off) in (0x0021, 0x0057):
            return decode_ip(d + off + 2, n - off - 2, p, frags, st, depth)
        return R_NON_IP
    if (fl & 0x7) != 0:
        return R_BAD_TUNNEL
    if fl & 0x8000:
        off += 4
    if fl & 0x2000:
        off += 4
    if fl & 0x1000:
        off += 4
    if off > n:
        return R_TRUNCATED
    if proto == 0x0800 or proto == 0x86DD:
        return decode_ip(d + off, n - off, p, frags, st, depth)
    if proto == 0x6558:                         # transparent Ethernet bridging
        return decode_ether(d + off, n - off, p, frags, st, depth, False)
    if proto == 0x88BE:                         # ERSPAN: type II when sequenced, else type I
        p.tunnel = TUN_ERSPAN if p.tunnel == TUN_GRE else p.tunnel
        if fl & 0x1000:
            off += 8
        if off > n:
            return R_TRUNCATED
        return decode_ether(d + off, n - off, p, frags, st, depth, False)
    if proto == 0x22EB:                         # ERSPAN type III, optional platform sub-header
        p.tunnel = TUN_ERSPAN if p.tunnel == TUN_GRE else p.tunnel
        if off + 12 > n:
            return R_TRUNCATED
        if d[off + 11] & 0x01:
            off += 8
        off += 12
        if off > n:
            return R_TRUNCATED
        return decode_ether(d + off, n - off, p, frags, st, depth, False)
    if proto == 0x8847:
        return decode_by_ethertype(proto, d + off, n - off, p, frags, st, depth)
    return R_NON_IP


cdef int decode_gtpu(const uint8_t* d, uint32_t n, pkt_t* p, frag_t* frags, stats_t* st,
                     int depth) noexcept nogil:
    """GTP-U G-PDU: 8-byte header, optional sequence/N-PDU/extension headers, then IP.
    Returns -1 when the datagram is not a G-PDU (kept as a plain UDP flow)."""
    cdef uint32_t off = 8
    cdef uint8_t nxt
    if n < 8:
        return -1
    if (d[0] >> 5) != 1 or not (d[0] & 0x10) or d[1] != 0xFF:
        return -1
    if d[0] & 0x07:
        if n < 12:
            return R_TRUNCATED
        nxt = d[11]
        off = 12
        while nxt != 0:
            if off + 1 > n or d[off] == 0:
                return R_BAD_TUNNEL
            off += 4 * d[off]
            if off > n:
                return R_TRUNCATED
            nxt = d[off - 1]
    if off >= n:
        return R_TRUNCATED
    if (d[off] >> 4) != 4 and (d[off] >> 4) != 6:
        return -1
    return decode_ip(d + off, n - off, p, frags, st, depth)


cdef inline bint is_udp_tunnel_port(uint16_t sp, uint16_t dp) noexcept nogil:
    return (sp == 2152 or dp == 2152 or sp == 4789 or dp == 4789 or sp == 37008 or dp == 37008
            or sp == 5247 or dp == 5247)


cdef int decode_udp_tunnel(const uint8_t* d, uint32_t n, pkt_t* p, frag_t* frags, stats_t* st,
                           int depth) noexcept nogil:
    """UDP-carried tunnels by port. Returns -1 when the datagram is not a tunnel we strip."""
    cdef uint16_t sp = p.sport, dp = p.dport
    cdef uint32_t off, hlen
    cdef uint8_t tag
    cdef int r
    if dp == 2152 or sp == 2152:
        if p.tunnel == TUN_NONE:
            p.tunnel = TUN_GTPU
        r = decode_gtpu(d, n, p, frags, st, depth)
        if r == -1 and p.tunnel == TUN_GTPU and depth == 0:
            p.tunnel = TUN_NONE
        return r
    if dp == 4789 or sp == 4789:
        if n < 8 or not (d[0] & 0x08):
            return -1
        if p.tunnel == TUN_NONE:
            p.tunnel = TUN_VXLAN
        return decode_ether(d + 8, n - 8, p, frags, st, depth, False)
    if dp == 37008 or sp == 37008:                  # TZSP: tagged fields end with tag 1
        if n < 4 or d[0] != 1 or be16(d + 2) != 1:  # version 1, Ethernet encapsulation only
            return -1
        off = 4
        while True:
            if off >= n:
                return R_TRUNCATED
            tag = d[off]
            if tag == 1:
                off += 1
                break
            if tag == 0:
                off += 1
                continue
            if off + 2 > n:
                return R_TRUNCATED
            off += 2 + d[off + 1]
        if p.tunnel == TUN_NONE:
            p.tunnel = TUN_TZSP
        return decode_ether(d + off, n - off, p, frags, st, depth, False)
    if dp == 5247 or sp == 5247:                    # CAPWAP data channel
        if n < 8 or (d[0] >> 4) != 0:
            return -1
        hlen = ((d[1] >> 3) & 0x1F) * 4
        if hlen < 8 or hlen > n:
            return R_BAD_TUNNEL
        if d[3] & 0x80:                             # a fragment: leave it on the outer flow
            return -1
        if p.tunnel == TUN_NONE:
            p.tunnel = TUN_CAPWAP
        if d[2] & 0x01:                             # T: native frame of the binding (802.11)
            if ((d[2] >> 1) & 0x1F) != 1:
                return R_NON_IP
            return decode_80211(d + hlen, n - hlen, p, frags, st, depth)
        return decode_ether(d + hlen, n - hlen, p, frags, st, depth, False)
    return -1


cdef int frag_slot(const uint8_t* src, const uint8_t* dst, uint32_t ident, uint8_t proto) noexcept nogil:
    return <int>(mix64(side_hash(src, <uint16_t>proto) ^ side_hash(dst, 0) ^ ident) & (FRAG_SLOTS - 1))


cdef int decode_l4(const uint8_t* d, uint32_t cap, uint32_t l4len, pkt_t* p, frag_t* frags,
                   stats_t* st, int depth) noexcept nogil:
    """Transport header at d (cap bytes captured, l4len bytes by the IP lengths), then tunnels."""
    cdef uint32_t hl = 0
    cdef int r
    cdef uint8_t proto = p.proto
    cdef pkt_t outer
    if proto == 6:
        if cap < 20:
            return R_TRUNCATED
        hl = (d[12] >> 4) * 4
        if hl < 20:
            return R_BAD_L4
        p.sport = be16(d)
        p.dport = be16(d + 2)
        p.tcp_flags = d[13]
    elif proto == 17 or proto == 136:
        if cap < 8:
            return R_TRUNCATED
        hl = 8
        p.sport = be16(d)
        p.dport = be16(d + 2)
    elif proto == 1 or proto == 58:
        if cap < 4:
            return R_TRUNCATED
        p.icmp_type = be16(d)
        hl = 8
    elif proto == 132:
        if cap < 12:
            return R_TRUNCATED
        hl = 12
        p.sport = be16(d)
        p.dport = be16(d + 2)
    elif proto == 4 or proto == 41:
        if depth >= MAX_TUNNEL_DEPTH:
            return R_TUNNEL_DEPTH
        if p.tunnel == TUN_NONE:
            p.tunnel = TUN_IPIP
        return decode_ip(d, cap, p, frags, st, depth + 1)
    elif proto == 47:
        if depth >= MAX_TUNNEL_DEPTH:
            return R_TUNNEL_DEPTH
        memcpy(&outer, p, sizeof(pkt_t))
        if p.tunnel == TUN_NONE:
            p.tunnel = TUN_GRE
        r = decode_gre(d, cap, p, frags, st, depth + 1)
        if r != R_NON_IP:
            return r
        # GRE keepalives, PPP control and other non-IP payloads: the outer GRE flow, like a
        # UDP tunnel that carries no IP packet
        memcpy(p, &outer, sizeof(pkt_t))
    # payload length from the header lengths; the captured part may be shorter (snaplen)
    p.payload_len = l4len - hl if l4len > hl else 0
    p.payload = d + hl if hl < cap else d + cap
    p.payload_cap = cap - hl if hl < cap else 0
    if (proto == 17) and depth < MAX_TUNNEL_DEPTH and is_udp_tunnel_port(p.sport, p.dport):
        # a tunnel that carries no IP packet (CAPWAP management, 802.11 control...) stays
        # accounted to the outer UDP flow, as ndpiReader does
        memcpy(&outer, p, sizeof(pkt_t))
        r = decode_udp_tunnel(d + 8, cap - 8, p, frags, st, depth + 1)
        if r == -1 or r == R_NON_IP:
            memcpy(p, &outer, sizeof(pkt_t))
            return R_OK
        return r
    return R_OK


cdef inline void save_fragment_key(frag_t* f, pkt_t* p, uint64_t ts) noexcept nogil:
    memcpy(f.k_src, p.src, 16)
    memcpy(f.k_dst, p.dst, 16)
    f.k_sport = p.sport
    f.k_dport = p.dport
    f.k_icmp = p.icmp_type
    f.k_proto = p.proto
    f.k_ip_version = p.ip_version
    f.k_tunnel = p.tunnel
    f.ts_us = ts
    f.used = 1


cdef int fragment(const uint8_t* d, uint32_t cap, uint32_t l4len, bint first, uint32_t ident,
                  pkt_t* p, frag_t* frags, stats_t* st, int depth) noexcept nogil:
    """A fragment: the first one decodes its transport header and leaves the resulting flow key
    in the fragment cache; the later ones take their flow key from there."""
    cdef frag_t* f = &frags[frag_slot(p.src, p.dst, ident, p.proto)]
    cdef int r
    p.is_frag = 1
    if first:
        memcpy(f.src, p.src, 16)
        memcpy(f.dst, p.dst, 16)
        f.ident = ident
        f.proto = p.proto
        f.ip_version = p.ip_version
        r = decode_l4(d, cap, l4len, p, frags, st, depth)
        if r == R_OK:
            save_fragment_key(f, p, p.ts_us)
        else:
            f.used = 0
        return r
    if (not f.used or f.ident != ident or f.proto != p.proto or f.ip_version != p.ip_version
            or memcmp(f.src, p.src, 16) != 0 or memcmp(f.dst, p.dst, 16) != 0
            or p.ts_us - f.ts_us > FRAG_TTL_US):
        return R_ORPHAN_FRAGMENT
    memcpy(p.src, f.k_src, 16)
    memcpy(p.dst, f.k_dst, 16)
    p.sport = f.k_sport
    p.dport = f.k_dport
    p.icmp_type = f.k_icmp
    p.proto = f.k_proto
    p.ip_version = f.k_ip_version
    p.tunnel = f.k_tunnel
    p.payload = d
    p.payload_cap = cap
    p.payload_len = l4len
    return R_OK


cdef int decode_ip(const uint8_t* d, uint32_t n, pkt_t* p, frag_t* frags, stats_t* st,
                   int depth) noexcept nogil:
    cdef uint32_t hl, total, off, l4len, cap, ident
    cdef uint16_t fo
    cdef uint8_t nh, ver
    cdef bint first
    if n < 1:
        return R_TRUNCATED
    ver = d[0] >> 4
    if ver == 4:
        if n < 20:
            return R_TRUNCATED
        hl = (d[0] & 0x0F) * 4
        total = be16(d + 2)
        if hl < 20 or total < hl:
            return R_BAD_IPV4
        if hl > n:
            return R_TRUNCATED
        if depth == 0:
            p.outer_ip_len = total
            p.l2_len = <uint32_t>(d - p.frame)
        p.ip_version = 4
        memset(p.src, 0, 16)
        memset(p.dst, 0, 16)
        memcpy(p.src, d + 12, 4)
        memcpy(p.dst, d + 16, 4)
        p.proto = d[9]
        p.tos = d[1]
        p.sport = p.dport = p.icmp_type = 0
        cap = (total if total < n else n) - hl
        l4len = total - hl
        fo = be16(d + 6)
        if fo & 0x3FFF:                            # MF set or offset non-zero
            st.fragments += 1
            return fragment(d + hl, cap, l4len, (fo & 0x1FFF) == 0, be16(d + 4), p, frags, st, depth)
        return decode_l4(d + hl, cap, l4len, p, frags, st, depth)
    if ver == 6:
        if n < 40:
            return R_TRUNCATED
        p.ip_version = 6
        memcpy(p.src, d + 8, 16)
        memcpy(p.dst, d + 24, 16)
        p.tos = <uint8_t>((be16(d) >> 4) & 0xFF)
        p.sport = p.dport = p.icmp_type = 0
        total = 40 + be16(d + 4)
        if total == 40:                             # jumbogram or no payload: trust the capture
            total = n
        if depth == 0:
            p.outer_ip_len = total
            p.l2_len = <uint32_t>(d - p.frame)
        nh = d[6]
        off = 40
        while nh == 0 or nh == 43 or nh == 60 or nh == 51 or nh == 135 or nh == 44:
            if off + 8 > n:
                return R_TRUNCATED
            if nh == 44:                            # fragment header
                fo = be16(d + off + 2)
                ident = be32(d + off + 4)
                p.proto = d[off]
                off += 8
                if off > total:
                    return R_BAD_IPV6
                cap = (total if total < n else n) - off
                if (fo & 0xFFF9) == 0:              # offset 0 and no MF: an atomic fragment
                    return decode_l4(d + off, cap, total - off, p, frags, st, depth)
                st.fragments += 1
                return fragment(d + off, cap, total - off, (fo & 0xFFF8) == 0, ident, p, frags,
                                st, depth)
            if nh == 51:
                hl = (d[off + 1] + 2) * 4
            else:
                hl = (d[off + 1] + 1) * 8
            nh = d[off]
            off += hl
        if off > n or off > total:
            return R_TRUNCATED if off > n else R_BAD_IPV6
        p.proto = nh
        cap = (total if total < n else n) - off
        return decode_l4(d + off, cap, total - off, p, frags, st, depth)
    return R_BAD_IPV4 if depth == 0 else R_BAD_TUNNEL


cdef inline uint32_t ppp_header_len(const uint8_t* d, uint32_t cap) noexcept nogil:
    """PPP: optional address/control bytes (FF 03), then a 2-byte protocol. 0 if truncated."""
    cdef uint32_t off = 2 if cap >= 2 and d[0] == 0xFF and d[1] == 0x03 else 0
    return off + 2 if off + 2 <= cap else 0


cdef int decode_packet(const uint8_t* d, uint32_t cap, uint32_t wire, uint32_t lt,
                       uint32_t stripped_tag, pkt_t* p, frag_t* frags, stats_t* st) noexcept nogil:
    """Decode one frame from its link-layer header down to the innermost flow key.
    ``stripped_tag``: the meta row's ``reserved`` (META_VLAN_TAG | TCI when the capture took the
    outer 802.1Q tag out of an Ethernet frame)."""
    cdef uint32_t fam, off
    cdef uint16_t proto
    cdef int r
    p.vlan = p.outer_vlan = 0
    p.vlans_seen = 0
    p.tunnel = TUN_NONE
    p.is_frag = 0
    p.have_mac = 0
    p.tcp_flags = 0
    p.payload = NULL
    p.payload_cap = p.payload_len = 0
    p.ip_version = 0
    p.outer_ip_len = 0
    p.l2_len = 0
    p.frame = d
    if lt == LT_ETHERNET:
        if stripped_tag & META_VLAN_TAG:       # as if the tag were still before the EtherType
            p.vlan = stripped_tag & 0x0FFF
            p.vlans_seen = 1
        # the IP bytes of the packet are counted from the first IP header on: find it
        r = decode_ether(d, cap, p, frags, st, 0, True)
    elif lt == LT_RAW or lt == LT_IPV4 or lt == LT_IPV6 or lt == 12 or lt == 14:
        r = decode_ip(d, cap, p, frags, st, 0)
    elif lt == LT_NULL or lt == LT_LOOP:
        if cap < 4:
            return R_TRUNCATED
        fam = le32(d) if lt == LT_NULL else be32(d)
        if fam > 0xFFFF:
            fam = be32(d) if lt == LT_NULL else le32(d)
        if fam != 2 and fam != 24 and fam != 28 and fam != 30:
            return R_NON_IP
        r = decode_ip(d + 4, cap - 4, p, frags, st, 0)
    elif lt == LT_LINUX_SLL:
        if cap < 16:
            return R_TRUNCATED
        r = decode_by_ethertype(be16(d + 14), d + 16, cap - 16, p, frags, st, 0)
    elif lt == LT_LINUX_SLL2:
        if cap < 20:
            return R_TRUNCATED
        r = decode_by_ethertype(be16(d), d + 20, cap - 20, p, frags, st, 0)
    elif lt == LT_C_HDLC:
        if cap < 4:
            return R_TRUNCATED
        r = decode_by_ethertype(be16(d + 2), d + 4, cap - 4, p, frags, st, 0)
    elif lt == LT_PPP or lt == 50:
        off = ppp_header_len(d, cap)
        if off == 0:
            return R_TRUNCATED
        proto = be16(d + off - 2)
        if proto == 0x0021 or proto == 0x0057:
            r = decode_ip(d + off, cap - off, p, frags, st, 0)
        elif proto == 0x0281:
            r = decode_by_ethertype(0x8847, d + off, cap - off, p, frags, st, 0)
        else:
            return R_NON_IP
    else:
        return R_UNSUPPORTED_LINK
    return r


cdef inline uint32_t shard_of(pkt_t* p, uint32_t count) noexcept nogil:
    """The worker that owns a packet in a sharded run: a symmetric hash of the innermost address
    pair, so that both directions, every fragment and every tunnelled packet of a flow land on
    one worker. Packets that never reached an IP header go to worker 0."""
    if p.ip_version == 0:
        return 0
    return <uint32_t>(mix64(side_hash(p.src, 0) + side_hash(p.dst, 0)) % count)


# --- entropy histogram pool -------------------------------------------------------------------
cdef enum:
    XLOGX_SIZE = 4096
cdef double XLOGX[XLOGX_SIZE]           # c * log2(c) for the common small counts


cdef void _init_xlogx() noexcept:
    cdef int c
    XLOGX[0] = 0.0
    for c in range(1, XLOGX_SIZE):
        XLOGX[c] = <double>c * log2(<double>c)


_init_xlogx()


cdef inline double xlogx(uint32_t c) noexcept nogil:
    return XLOGX[c] if c < XLOGX_SIZE else <double>c * log2(<double>c)


cdef double entropy_bits(const uint32_t* h) noexcept nogil:
    # no branch on empty bins (XLOGX[0] is 0); four partial sums (bin i into sum i % 4, added as
    # (s0 + s1) + (s2 + s3)) so that the additions do not wait on each other, in the reference
    # implementation's order, so that the doubles agree bit for bit
    cdef uint64_t total = 0
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    cdef int i
    for i in range(0, 256, 4):
        total += <uint64_t>h[i] + h[i + 1] + h[i + 2] + h[i + 3]
        s0 += xlogx(h[i])
        s1 += xlogx(h[i + 1])
        s2 += xlogx(h[i + 2])
        s3 += xlogx(h[i + 3])
    if total == 0:
        return 0.0
    return log2(<double>total) - ((s0 + s1) + (s2 + s3)) / <double>total


cdef inline void hist_add(uint32_t* h, const uint8_t* q, uint32_t n) noexcept nogil:
    """Count the bytes q[0:n] into h, eight from each 64-bit load (the order of the counts does
    not matter). Straight into the flow's histogram: measured on the bench capture's payloads,
    this is about twice as fast as counting into local sub-histograms first, whose clearing and
    merging cost more than the runs of equal bytes they protect against, even for all-zero
    payloads."""
    cdef uint32_t k = 0
    cdef uint64_t v
    while k + 8 <= n:
        memcpy(&v, q + k, 8)
        h[v & 255] += 1
        h[(v >> 8) & 255] += 1
        h[(v >> 16) & 255] += 1
        h[(v >> 24) & 255] += 1
        h[(v >> 32) & 255] += 1
        h[(v >> 40) & 255] += 1
        h[(v >> 48) & 255] += 1
        h[v >> 56] += 1
        k += 8
    while k < n:
        h[q[k]] += 1
        k += 1


cdef inline uint16_t entropy_x1000(const uint32_t* h) noexcept nogil:
    cdef double e = entropy_bits(h)
    if e < 0:
        e = 0
    return <uint16_t>(e * 1000.0 + 0.5)


cdef inline int plen_bin(uint32_t n) noexcept nogil:
    if n <= 64:
        return 0
    if n <= 128:
        return 1
    if n <= 256:
        return 2
    if n <= 512:
        return 3
    if n <= 1024:
        return 4
    return 5


cdef inline int tdiff_bin(uint64_t us) noexcept nogil:
    if us <= 1000:
        return 0
    if us <= 5000:
        return 1
    if us <= 10000:
        return 2
    if us <= 50000:
        return 3
    if us <= 100000:
        return 4
    return 5


def seq_plen_bin(n: int) -> int:
    """Payload-length bin of one payload length (0..5)."""
    return plen_bin(n)


def seq_tdiff_bin(gap_us: int) -> int:
    """Inter-arrival bin of one gap in microseconds (0..5)."""
    return tdiff_bin(gap_us)


# --- the flow table ----------------------------------------------------------------------------
cdef class FlowTable:
    """Flows of one capture queue: decode, account, expire, export into an owned record buffer.

    ``process`` takes a batch (a buffer and a pkt_meta_t array of offsets into it) and stops early
    when the output holds ``output_size - 2`` records; ``take`` hands the finished flows over.
    """
    cdef flow_t* flows
    cdef feat_t* feats
    cdef uint32_t* slots             # hash table: flow index or NONE32
    cdef uint32_t mask
    cdef uint32_t capacity
    cdef uint32_t free_head          # free list through flow.next
    cdef uint32_t never_used         # slots from here on have never held a flow
    cdef uint32_t lru_head, lru_tail       # open flows, least recently seen first
    cdef uint32_t cl_head, cl_tail         # closed (FIN/RST) flows awaiting their linger
    cdef frag_t* frags
    cdef uint32_t** pool_chunks
    cdef uint32_t pool_nchunks
    cdef uint32_t pool_free
    cdef uint32_t pool_next
    cdef stats_t st
    cdef public uint64_t idle_us
    cdef public uint64_t lifetime_us
    cdef public uint64_t linger_us
    cdef readonly bint features
    cdef readonly uint32_t shard_index
    cdef readonly uint32_t shard_count
    cdef object out_array
    cdef flow_record_t* out
    cdef uint32_t out_n
    cdef uint32_t out_cap
    cdef uint64_t now_us

    def __cinit__(self, uint32_t max_flows=262144, double idle_timeout=30.0,
                  double lifetime=120.0, bint features=True, uint32_t output_size=8192,
                  double linger=2.0, uint32_t shard_index=0, uint32_t shard_count=1):
        cdef uint32_t size = 16
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        if output_size < 4:
            raise ValueError("output_size must be at least 4")
        if shard_count < 1 or shard_index >= shard_count:
            raise ValueError("shard_index must be below shard_count")
        self.shard_index = shard_index
        self.shard_count = shard_count
        while size < 2 * <uint64_t>max_flows:
            size <<= 1
        self.capacity = max_flows
        self.mask = size - 1
        # calloc'd pages are only backed by memory once touched: an idle table costs little
        self.flows = <flow_t*>calloc(max_flows, sizeof(flow_t))
        self.slots = <uint32_t*>malloc(size * sizeof(uint32_t))
        self.frags = <frag_t*>calloc(FRAG_SLOTS, sizeof(frag_t))
        self.features = features
        self.feats = <feat_t*>calloc(max_flows, sizeof(feat_t)) if features else NULL
        self.pool_nchunks = (max_flows + POOL_CHUNK - 1) // POOL_CHUNK
        self.pool_chunks = <uint32_t**>calloc(self.pool_nchunks, sizeof(uint32_t*))
        if (self.flows == NULL or self.slots == NULL or self.frags == NULL or
                self.pool_chunks == NULL or (features and self.feats == NULL)):
            raise MemoryError("cannot allocate a flow table of %d flows" % max_flows)
        memset(self.slots, 0xFF, size * sizeof(uint32_t))
        # slots are handed out in order first, then recycled through the free list, so the
        # pages of slots never used are never touched
        self.free_head = NONE32
        self.never_used = 0
        self.lru_head = self.lru_tail = NONE32
        self.cl_head = self.cl_tail = NONE32
        self.pool_free = NONE32
        self.pool_next = 0
        memset(&self.st, 0, sizeof(stats_t))
        self.idle_us = <uint64_t>(idle_timeout * 1e6)
        self.lifetime_us = <uint64_t>(lifetime * 1e6)
        self.linger_us = <uint64_t>(linger * 1e6)
        if self.linger_us > self.idle_us:
            self.linger_us = self.idle_us
        self.out_array = np.zeros(output_size, dtype=_record_dtype())
        self.out = <flow_record_t*>cnp.PyArray_DATA(self.out_array)
        self.out_cap = output_size
        self.out_n = 0
        self.now_us = 0

    def __dealloc__(self):
        cdef uint32_t i
        free(self.flows)
        free(self.slots)
        free(self.frags)
        free(self.feats)
        if self.pool_chunks != NULL:
            for i in range(self.pool_nchunks):
                free(self.pool_chunks[i])
            free(self.pool_chunks)

    # ---- lists ---------------------------------------------------------------------------
    cdef inline void unlink(self, uint32_t i) noexcept nogil:
        cdef flow_t* f = &self.flows[i]
        if f.prev != NONE32:
            self.flows[f.prev].next = f.next
        elif f.closed:
            self.cl_head = f.next
        else:
            self.lru_head = f.next
        if f.next != NONE32:
            self.flows[f.next].prev = f.prev
        elif f.closed:
            self.cl_tail = f.prev
        else:
            self.lru_tail = f.prev

    cdef inline void append(self, uint32_t i) noexcept nogil:
        """Insert flow i into its list (open or closed) in order of last packet time: at the
        tail, unless capture timestamps went back (then it walks back to its place)."""
        cdef flow_t* f = &self.flows[i]
        cdef uint32_t* head = &self.cl_head if f.closed else &self.lru_head
        cdef uint32_t* tail = &self.cl_tail if f.closed else &self.lru_tail
        cdef uint32_t after = tail[0]
        while after != NONE32 and self.flows[after].last_us > f.last_us:
            after = self.flows[after].prev
        f.prev = after
        if after == NONE32:
            f.next = head[0]
            head[0] = i
        else:
            f.next = self.flows[after].next
            self.flows[after].next = i
        if f.next == NONE32:
            tail[0] = i
        else:
            self.flows[f.next].prev = i

    # ---- entropy pool --------------------------------------------------------------------
    cdef uint32_t pool_get(self) noexcept nogil:
        cdef uint32_t s, c
        if self.pool_free != NONE32:
            s = self.pool_free
            self.pool_free = self.hist(s)[0]
        else:
            s = self.pool_next
            c = s // POOL_CHUNK
            if c >= self.pool_nchunks:
                return NONE32
            if self.pool_chunks[c] == NULL:
                self.pool_chunks[c] = <uint32_t*>malloc(POOL_CHUNK * 512 * sizeof(uint32_t))
                if self.pool_chunks[c] == NULL:
                    return NONE32
            self.pool_next += 1
        memset(self.hist(s), 0, 512 * sizeof(uint32_t))
        return s

    cdef inline uint32_t* hist(self, uint32_t s) noexcept nogil:
        return self.pool_chunks[s // POOL_CHUNK] + (s % POOL_CHUNK) * 512

    cdef void close_window(self, feat_t* ft) noexcept nogil:
        """Entropy is final once the window closes; the histograms go back to the pool."""
        cdef uint32_t* h
        if ft.hist == NONE32:
            return
        h = self.hist(ft.hist)
        ft.entropy[0] = entropy_x1000(h)
        ft.entropy[1] = entropy_x1000(h + 256)
        h[0] = self.pool_free
        self.pool_free = ft.hist
        ft.hist = NONE32

    # ---- hash table ----------------------------------------------------------------------
    cdef uint32_t find(self, pkt_t* p, uint32_t h, int* direction) noexcept nogil:
        cdef uint32_t pos = h & self.mask, i
        cdef flow_t* f
        while True:
            i = self.slots[pos]
            if i == NONE32:
                return NONE32
            f = &self.flows[i]
            if (f.hash == h and f.proto == p.proto and f.vlan == p.vlan
                    and f.ip_version == p.ip_version):
                if (f.a_port == p.sport and f.b_port == p.dport and
                        memcmp(f.a_addr, p.src, 16) == 0 and memcmp(f.b_addr, p.dst, 16) == 0):
                    direction[0] = 0
                    return i
                if (f.a_port == p.dport and f.b_port == p.sport and
                        memcmp(f.a_addr, p.dst, 16) == 0 and memcmp(f.b_addr, p.src, 16) == 0):
                    direction[0] = 1
                    return i
            pos = (pos + 1) & self.mask

    cdef void remove_slot(self, uint32_t i) noexcept nogil:
        """Delete flow i from the hash table (linear probing, backward-shift deletion: no
        tombstones, so lookups never slow down as flows come and go)."""
        cdef uint32_t pos = self.flows[i].hash & self.mask, nxt, j
        while self.slots[pos] != i:
            pos = (pos + 1) & self.mask
        nxt = pos
        while True:
            nxt = (nxt + 1) & self.mask
            j = self.slots[nxt]
            if j == NONE32:
                break
            # j may fill the hole when the hole lies on its probe path (home .. nxt)
            if ((nxt - (self.flows[j].hash & self.mask)) & self.mask) >= ((nxt - pos) & self.mask):
                self.slots[pos] = j
                pos = nxt
        self.slots[pos] = NONE32

    # ---- export --------------------------------------------------------------------------
    cdef void emit(self, uint32_t i, uint8_t reason) noexcept nogil:
        cdef flow_t* f = &self.flows[i]
        cdef flow_record_t* r = &self.out[self.out_n]
        cdef feat_t* ft
        cdef uint32_t* h
        self.out_n += 1
        memset(r, 0, sizeof(flow_record_t))
        r.first_ms = f.first_us // 1000
        r.last_ms = f.last_us // 1000
        r.in_bytes = f.bytes[0]
        r.in_pkts = f.pkts[0]
        r.out_bytes = f.bytes[1]
        r.out_pkts = f.pkts[1]
        memcpy(r.src_addr, f.a_addr, 16)
        memcpy(r.dst_addr, f.b_addr, 16)
        r.src_frags = f.frags[0]
        r.dst_frags = f.frags[1]
        r.src_port = f.a_port
        r.dst_port = f.b_port
        r.vlan = f.vlan
        r.outer_vlan = f.outer_vlan
        r.icmp_type = f.icmp_type
        memcpy(r.src_mac, f.smac, 6)
        memcpy(r.dst_mac, f.dmac, 6)
        r.ip_version = f.ip_version
        r.protocol = f.proto
        r.client_tcp_flags = f.flags[0]
        r.server_tcp_flags = f.flags[1]
        r.src_tos = f.tos[0]
        r.dst_tos = f.tos[1]
        r.end_reason = reason
        r.tunnel = f.tunnel
        if self.features:
            ft = &self.feats[i]
            memcpy(r.seq_plen, ft.plen, 6 * sizeof(uint16_t))
            memcpy(r.seq_plen_c2s, ft.plen + 6, 6 * sizeof(uint16_t))
            memcpy(r.seq_plen_s2c, ft.plen + 12, 6 * sizeof(uint16_t))
            memcpy(r.seq_tdiff, ft.tdiff, 6 * sizeof(uint16_t))
            memcpy(r.seq_tdiff_c2s, ft.tdiff + 6, 6 * sizeof(uint16_t))
            memcpy(r.seq_tdiff_s2c, ft.tdiff + 12, 6 * sizeof(uint16_t))
            if ft.hist != NONE32:
                h = self.hist(ft.hist)
                r.entropy_c2s = entropy_x1000(h)
                r.entropy_s2c = entropy_x1000(h + 256)
            else:
                r.entropy_c2s = ft.entropy[0]
                r.entropy_s2c = ft.entropy[1]
        self.st.flows_exported += 1
        self.st.exported_by_reason[reason] += 1

    cdef void release(self, uint32_t i) noexcept nogil:
        """Forget flow i: out of its list, the hash table and the pool; back to the free list."""
        self.unlink(i)
        self.remove_slot(i)
        if self.features:
            if self.feats[i].hist != NONE32:
                self.hist(self.feats[i].hist)[0] = self.pool_free
                self.pool_free = self.feats[i].hist
            self.feats[i].hist = NONE32
        self.flows[i].next = self.free_head
        self.free_head = i
        self.st.active_flows -= 1

    cdef inline void expire_flow(self, uint32_t i, uint8_t reason) noexcept nogil:
        self.prefetch_histograms(self.flows[i].next)
        self.emit(i, reason)
        self.release(i)

    cdef inline void prefetch_histograms(self, uint32_t i) noexcept nogil:
        """Expiry walks a list of flows whose histograms have long left the cache: start loading
        the next one's while this one's entropy is computed."""
        cdef uint32_t s
        cdef const char* h
        cdef int k
        if i == NONE32 or not self.features:
            return
        s = self.feats[i].hist
        if s == NONE32:
            return
        h = <const char*>self.hist(s)
        for k in range(0, 512 * sizeof(uint32_t), 64):
            prefetch(h + k)

    cdef void expire_due(self, uint64_t now) noexcept nogil:
        """Export flows whose idle time or close linger has passed, while the output has room."""
        cdef flow_t* f
        while self.lru_head != NONE32 and self.out_n < self.out_cap:
            f = &self.flows[self.lru_head]
            if f.last_us + self.idle_us > now:
                break
            self.expire_flow(self.lru_head, END_IDLE)
        while self.cl_head != NONE32 and self.out_n < self.out_cap:
            f = &self.flows[self.cl_head]
            if f.last_us + self.linger_us > now:
                break
            self.expire_flow(self.cl_head, f.closed - 1)

    cdef uint32_t create(self, pkt_t* p, uint32_t h, int* direction) noexcept nogil:
        cdef uint32_t i = self.free_head, pos
        cdef flow_t* f
        cdef feat_t* ft
        cdef bint swap
        if i != NONE32:
            self.free_head = self.flows[i].next
        elif self.never_used < self.capacity:
            i = self.never_used
            self.never_used += 1
        else:
            return NONE32
        f = &self.flows[i]
        # the client sends the first packet, except that a SYN-ACK comes from the server
        swap = p.proto == 6 and (p.tcp_flags & 0x12) == 0x12
        direction[0] = 1 if swap else 0
        if swap:
            memcpy(f.a_addr, p.dst, 16)
            memcpy(f.b_addr, p.src, 16)
            f.a_port = p.dport
            f.b_port = p.sport
            if p.have_mac:
                memcpy(f.smac, p.dmac, 6)
                memcpy(f.dmac, p.smac, 6)
        else:
            memcpy(f.a_addr, p.src, 16)
            memcpy(f.b_addr, p.dst, 16)
            f.a_port = p.sport
            f.b_port = p.dport
            if p.have_mac:
                memcpy(f.smac, p.smac, 6)
                memcpy(f.dmac, p.dmac, 6)
        if not p.have_mac:
            memset(f.smac, 0, 6)
            memset(f.dmac, 0, 6)
        f.hash = h
        f.proto = p.proto
        f.ip_version = p.ip_version
        f.vlan = p.vlan
        f.outer_vlan = p.outer_vlan
        f.icmp_type = p.icmp_type
        f.tunnel = p.tunnel
        f.closed = 0
        f.fin = 0
        f.hs = 0
        f.window_open = 0
        self.reset_counters(f, p.ts_us)
        f.flags[0] = f.flags[1] = 0
        if self.features:
            ft = &self.feats[i]
            memset(ft, 0, sizeof(feat_t))
            ft.hist = NONE32
        pos = h & self.mask
        while self.slots[pos] != NONE32:
            pos = (pos + 1) & self.mask
        self.slots[pos] = i
        self.append(i)
        self.st.flows_created += 1
        self.st.active_flows += 1
        return i

    cdef inline void reset_counters(self, flow_t* f, uint64_t ts) noexcept nogil:
        f.first_us = f.last_us = ts
        f.bytes[0] = f.bytes[1] = 0
        f.pkts[0] = f.pkts[1] = 0
        f.frags[0] = f.frags[1] = 0
        f.tos[0] = f.tos[1] = 0

    cdef void features_update(self, uint32_t i, flow_t* f, pkt_t* p, int d) noexcept nogil:
        cdef feat_t* ft = &self.feats[i]
        cdef uint8_t fl = p.tcp_flags
        cdef uint32_t b
        # TCP: the window opens after the three-way handshake (SYN, SYN-ACK, ACK are not in it)
        if not f.window_open:
            if f.proto != 6:
                f.window_open = 1
            elif f.hs == 0:
                if (fl & 0x12) == 0x02 and d == 0:
                    f.hs = 1
                    return
                f.window_open = 1            # joined mid-connection: no handshake to wait for
            elif f.hs == 1:
                if (fl & 0x12) == 0x12 and d == 1:
                    f.hs = 2
                    return
                if p.payload_len == 0:
                    return                   # retransmitted SYN and the like
                f.window_open = 1
            elif f.hs == 2:
                if (fl & 0x12) == 0x10 and d == 0 and p.payload_len == 0:
                    f.hs = 3
                    f.window_open = 1
                    return
                if p.payload_len == 0:
                    return
                f.window_open = 1
        if ft.window >= WINDOW:
            return
        if ft.window == 0:
            ft.hist = self.pool_get()
            if ft.hist == NONE32:
                self.st.pool_exhausted += 1
        else:
            b = tdiff_bin(p.ts_us - ft.last_us[0] if p.ts_us > ft.last_us[0] else 0)
            ft.tdiff[b] += 1
        if ft.seen[d]:
            b = tdiff_bin(p.ts_us - ft.last_us[1 + d] if p.ts_us > ft.last_us[1 + d] else 0)
            ft.tdiff[6 * (1 + d) + b] += 1
        ft.seen[d] = 1
        ft.last_us[0] = p.ts_us
        ft.last_us[1 + d] = p.ts_us
        if p.payload_len > 0:
            b = plen_bin(p.payload_len)
            ft.plen[b] += 1
            ft.plen[6 * (1 + d) + b] += 1
            if ft.hist != NONE32 and p.payload_cap > 0:
                hist_add(self.hist(ft.hist) + 256 * d, p.payload, p.payload_cap)
        ft.window += 1
        if ft.window == WINDOW:
            self.close_window(ft)

    cdef int account(self, pkt_t* p) noexcept nogil:
        cdef int d = 0
        cdef uint32_t h = key_hash(p.src, p.sport, p.dst, p.dport, p.proto, p.vlan)
        cdef uint32_t i = self.find(p, h, &d)
        cdef flow_t* f
        cdef uint8_t fl = p.tcp_flags
        if i != NONE32:
            f = &self.flows[i]
            if f.closed and p.proto == 6 and (fl & 0x12) == 0x02:
                # a new connection on a closed 5-tuple
                self.expire_flow(i, f.closed - 1)
                i = NONE32
            elif p.ts_us - f.first_us >= self.lifetime_us and p.ts_us > f.first_us:
                self.emit(i, END_ACTIVE)       # lifetime reached: export this slice, go on
                self.reset_counters(f, p.ts_us)
        if i == NONE32:
            i = self.create(p, h, &d)
            if i == NONE32:
                return R_TABLE_FULL
        f = &self.flows[i]
        f.pkts[d] += 1
        f.bytes[d] += p.ip_bytes
        f.flags[d] |= fl
        f.tos[d] = p.tos
        if p.is_frag:
            f.frags[d] += 1
        if p.ts_us > f.last_us:
            f.last_us = p.ts_us
        if self.features:
            self.features_update(i, f, p, d)
        if p.proto == 6 and not f.closed:
            if fl & TH_RST:
                f.closed = END_RST + 1
            elif fl & TH_FIN:
                f.fin |= 1 << d
                if f.fin == 3:
                    f.closed = END_FIN + 1
            if f.closed:
                # move to the closed list; it is exported once it lingers past linger_us
                f.closed, fl = 0, f.closed
                self.unlink(i)
                f.closed = fl
                self.append(i)
                return R_OK
        self.unlink(i)
        self.append(i)
        return R_OK

    cdef Py_ssize_t run(self, const uint8_t* buf, Py_ssize_t buflen, pkt_meta_t* meta,
                        Py_ssize_t start, Py_ssize_t end) noexcept nogil:
        cdef Py_ssize_t k
        cdef pkt_meta_t* m
        cdef pkt_t p
        cdef int r
        cdef uint32_t cap, l2
        for k in range(start, end):
            if self.out_n + 2 > self.out_cap:
                return k
            m = &meta[k]
            p.ts_us = m.ts_ns // 1000
            if p.ts_us >= self.now_us:          # O(1) when nothing is due
                self.now_us = p.ts_us
                self.expire_due(p.ts_us)
                if self.out_n + 2 > self.out_cap:
                    return k
            cap = m.caplen
            if <Py_ssize_t>m.offset + cap > buflen:
                r = R_TRUNCATED
                p.ip_version = 0
            else:
                r = decode_packet(buf + m.offset, cap, m.wirelen, m.linktype, m.reserved, &p,
                                  self.frags, &self.st)
            if self.shard_count > 1 and shard_of(&p, self.shard_count) != self.shard_index:
                self.st.other_shard += 1
                continue
            self.st.packets += 1
            self.st.bytes += m.wirelen
            if r == R_OK:
                l2 = p.l2_len
                if m.reserved & META_VLAN_TAG:  # wirelen counts the tag taken out of the frame
                    l2 += 4
                p.ip_bytes = m.wirelen - l2 if m.wirelen > l2 else 0
                if p.outer_ip_len > p.ip_bytes:
                    r = R_IP_LENGTH             # the IP header claims more than the frame holds
                else:
                    r = self.account(&p)
            self.st.reasons[r] += 1
        return end

    def process(self, buffer, cnp.ndarray meta, Py_ssize_t start=0, Py_ssize_t end=-1) -> int:
        """Account packets ``meta[start:end]`` whose bytes are in ``buffer``. Returns the index of
        the first packet not processed: ``end`` unless the output filled up (call ``take``)."""
        cdef const uint8_t[::1] view = buffer
        cdef Py_ssize_t n = meta.shape[0]
        cdef pkt_meta_t* mp
        cdef const uint8_t* bp = &view[0] if view.shape[0] else NULL
        cdef Py_ssize_t blen = view.shape[0]
        cdef Py_ssize_t done
        if meta.dtype != META_DTYPE or not meta.flags.c_contiguous:
            raise TypeError("meta must be a contiguous array of META_DTYPE")
        if end < 0 or end > n:
            end = n
        if start >= end:
            return end
        mp = <pkt_meta_t*>cnp.PyArray_DATA(meta)
        with nogil:
            done = self.run(bp, blen, mp, start, end)
        return done

    def expire(self, uint64_t now_ns) -> bool:
        """Export flows idle (or closed and lingering) as of ``now_ns``; for live capture, where
        time passes without packets. Returns False when the output filled up first."""
        cdef uint64_t now = now_ns // 1000
        with nogil:
            if now > self.now_us:
                self.now_us = now
            self.expire_due(now)
        return self.out_n < self.out_cap

    def flush(self) -> bool:
        """Export every flow (end of input). Returns True once the table is empty; when False,
        ``take`` the output and call again."""
        cdef uint32_t i
        with nogil:
            while self.out_n < self.out_cap:
                if self.cl_head != NONE32:
                    i = self.cl_head
                    self.expire_flow(i, self.flows[i].closed - 1)
                elif self.lru_head != NONE32:
                    self.expire_flow(self.lru_head, END_END)
                else:
                    break
        return self.lru_head == NONE32 and self.cl_head == NONE32

    def take(self):
        """The finished flows since the last call (a new array of RECORD_DTYPE)."""
        out = self.out_array[:self.out_n].copy()
        self.out_n = 0
        return out

    @property
    def pending(self) -> int:
        return self.out_n

    @property
    def active_flows(self) -> int:
        return self.st.active_flows

    @property
    def capacity(self) -> int:
        return self.capacity

    def stats(self) -> dict:
        """Counters since creation: packets, bytes, flows, and every reason a packet was not
        (fully) accounted."""
        cdef int r
        d = {"packets": self.st.packets, "bytes": self.st.bytes,
             "flows_created": self.st.flows_created, "flows_exported": self.st.flows_exported,
             "active_flows": self.st.active_flows, "fragments": self.st.fragments,
             "feature_pool_exhausted": self.st.pool_exhausted,
             "other_shard": self.st.other_shard}
        d["decoded"] = self.st.reasons[R_OK]
        d["drops"] = {REASONS[r]: self.st.reasons[r] for r in range(1, R_COUNT)}
        d["exported_by_reason"] = {name: self.st.exported_by_reason[k]
                                   for k, name in enumerate(("idle", "active", "fin", "rst", "end"))}
        return d


# --- pcap / pcapng reader ----------------------------------------------------------------------
cdef class PcapReader:
    """Zero-copy reader of a pcap or pcapng file through mmap: ``next_batch`` fills a META_DTYPE
    array with offsets into ``buffer``. Raises ValueError for a file that is neither format."""
    cdef object _mmap
    cdef object _file
    cdef const uint8_t[::1] view
    cdef Py_ssize_t size
    cdef Py_ssize_t pos
    cdef readonly str format
    cdef readonly int linktype          # of the first interface
    cdef readonly bint truncated        # the file ended inside a record
    cdef readonly uint64_t packets
    cdef bint swapped
    cdef uint64_t ts_mul                # pcap: ns per timestamp fraction unit
    # pcapng interfaces of the current section
    cdef uint32_t if_count
    cdef uint32_t if_linktype[64]
    cdef uint64_t if_num[64]            # timestamp unit = if_num / if_den seconds
    cdef uint64_t if_den[64]

    def __cinit__(self, path):
        import mmap, os
        self._file = open(path, "rb")
        self.size = os.fstat(self._file.fileno()).st_size
        if self.size < 24:
            self._file.close()
            raise ValueError("not a pcap or pcapng file (only %d bytes)" % self.size)
        self._mmap = mmap.mmap(self._file.fileno(), 0, flags=mmap.MAP_SHARED,
                               prot=mmap.PROT_READ)
        if hasattr(self._mmap, "madvise"):
            self._mmap.madvise(mmap.MADV_SEQUENTIAL)
        self.view = self._mmap
        self.pos = 0
        self.truncated = False
        self.packets = 0
        self.if_count = 0
        self._header()

    cdef uint32_t u32(self, Py_ssize_t at):
        return be32(&self.view[at]) if self.swapped else le32(&self.view[at])

    cdef uint16_t u16(self, Py_ssize_t at):
        return be16(&self.view[at]) if self.swapped else le16(&self.view[at])

    cdef _header(self):
        cdef uint32_t magic = le32(&self.view[0])
        if magic in (0xA1B2C3D4, 0xA1B23C4D, 0xD4C3B2A1, 0x4D3CB2A1):
            self.format = "pcap"
            self.swapped = magic in (0xD4C3B2A1, 0x4D3CB2A1)
            self.ts_mul = 1 if magic in (0xA1B23C4D, 0x4D3CB2A1) else 1000
            self.linktype = self.u32(20) & 0x0FFFFFFF
            self.pos = 24
        elif magic == 0x0A0D0D0A:
            self.format = "pcapng"
            self.linktype = -1
            self._pcapng_section(0)
            self._pcapng_scan_interfaces()
        else:
            raise ValueError("not a pcap or pcapng file (magic 0x%08x)" % magic)

    cdef _pcapng_section(self, Py_ssize_t at):
        cdef uint32_t bom
        if at + 28 > self.size:
            raise ValueError("truncated pcapng section header")
        bom = le32(&self.view[at + 8])
        if bom == 0x1A2B3C4D:
            self.swapped = False
        elif bom == 0x4D3C2B1A:
            self.swapped = True
        else:
            raise ValueError("bad pcapng byte-order magic")
        self.if_count = 0
        self.pos = at + self.u32(at + 4)

    cdef _pcapng_scan_interfaces(self):
        # the link type of the first interface, for reporting (packets carry their own)
        cdef Py_ssize_t at = self.pos
        cdef uint32_t btype, blen
        while at + 12 <= self.size:
            btype = self.u32(at)
            blen = self.u32(at + 4)
            if blen < 12:
                break
            if btype == 1 and at + 16 <= self.size:
                self.linktype = self.u16(at + 8)
                return
            at += blen

    cdef void _pcapng_interface(self, Py_ssize_t at, uint32_t blen):
        cdef Py_ssize_t o = at + 16, end = at + blen - 4
        cdef uint16_t code, olen
        cdef uint8_t res
        cdef uint32_t k
        if self.if_count >= 64:
            return
        k = self.if_count
        self.if_count += 1
        self.if_linktype[k] = self.u16(at + 8)
        self.if_num[k] = 1
        self.if_den[k] = 1000000
        while o + 4 <= end:
            code = self.u16(o)
            olen = self.u16(o + 2)
            if code == 0:
                break
            if code == 9 and olen >= 1 and o + 5 <= end:
                res = self.view[o + 4]
                if res & 0x80:
                    self.if_den[k] = (<uint64_t>1) << (res & 0x7F) if (res & 0x7F) < 63 else 1
                else:
                    self.if_den[k] = 1
                    for _ in range(res if res < 19 else 19):
                        self.if_den[k] *= 10
            o += 4 + ((olen + 3) & ~3)

    def next_batch(self, cnp.ndarray meta) -> int:
        """Fill ``meta`` (META_DTYPE) with up to len(meta) packets; 0 at end of file."""
        cdef pkt_meta_t* m = <pkt_meta_t*>cnp.PyArray_DATA(meta)
        cdef Py_ssize_t cap = meta.shape[0], n = 0
        cdef Py_ssize_t pos = self.pos, size = self.size
        cdef const uint8_t* v = &self.view[0]
        cdef uint32_t incl, orig, btype, blen, ifid
        cdef uint64_t ts
        cdef bint sw = self.swapped
        if meta.dtype != META_DTYPE:
            raise TypeError("meta must be of META_DTYPE")
        if self.format == "pcap":
            with nogil:
                while n < cap:
                    if pos + 16 > size:
                        if pos < size:
                            self.truncated = True
                        break
                    incl = be32(v + pos + 8) if sw else le32(v + pos + 8)
                    orig = be32(v + pos + 12) if sw else le32(v + pos + 12)
                    if pos + 16 + incl > size:
                        self.truncated = True
                        pos = size
                        break
                    ts = (<uint64_t>(be32(v + pos) if sw else le32(v + pos))) * 1000000000 + \
                         (<uint64_t>(be32(v + pos + 4) if sw else le32(v + pos + 4))) * self.ts_mul
                    m[n].ts_ns = ts
                    m[n].offset = pos + 16
                    m[n].caplen = incl
                    m[n].wirelen = orig if orig >= incl else incl
                    m[n].linktype = self.linktype
                    m[n].reserved = 0
                    n += 1
                    pos += 16 + incl
            self.pos = pos
            self.packets += n
            return n
        # pcapng: walk blocks in Python-free code except for section/interface blocks
        while n < cap:
            if pos + 12 > size:
                if pos < size:
                    self.truncated = True
                break
            btype = self.u32(pos)
            blen = self.u32(pos + 4)
            if btype == 0x0A0D0D0A:
                self._pcapng_section(pos)
                pos = self.pos
                continue
            if blen < 12 or blen % 4 or pos + blen > size:
                self.truncated = True
                pos = size
                break
            if btype == 1:
                self._pcapng_interface(pos, blen)
            elif btype == 6 or btype == 2:                 # enhanced (or obsolete) packet block
                ifid = self.u32(pos + 8) if btype == 6 else self.u16(pos + 8)
                incl = self.u32(pos + 20)
                orig = self.u32(pos + 24)
                if ifid < self.if_count and 28 + incl <= blen:
                    ts = ((<uint64_t>self.u32(pos + 12)) << 32) | self.u32(pos + 16)
                    m[n].ts_ns = _scale_ts(ts, self.if_num[ifid], self.if_den[ifid])
                    m[n].offset = pos + 28
                    m[n].caplen = incl
                    m[n].wirelen = orig if orig >= incl else incl
                    m[n].linktype = self.if_linktype[ifid]
                    m[n].reserved = 0
                    n += 1
            elif btype == 3 and self.if_count > 0:          # simple packet block
                orig = self.u32(pos + 8)
                incl = orig if orig <= blen - 16 else blen - 16
                m[n].ts_ns = 0
                m[n].offset = pos + 12
                m[n].caplen = incl
                m[n].wirelen = orig
                m[n].linktype = self.if_linktype[0]
                m[n].reserved = 0
                n += 1
            pos += blen
        self.pos = pos
        self.packets += n
        return n

    @property
    def buffer(self):
        """The whole file, for FlowTable.process (offsets in meta point into it)."""
        return self._mmap

    def close(self):
        """Release the mapping; safe to call twice."""
        self.view = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


cdef inline uint64_t _scale_ts(uint64_t ts, uint64_t num, uint64_t den) noexcept:
    # ts units of num/den seconds to nanoseconds
    if den == 1000000000:
        return ts
    if den < 1000000000 and 1000000000 % den == 0:
        return ts * (1000000000 // den)
    return <uint64_t>(<double>ts * 1e9 / <double>den)


# --- layout ------------------------------------------------------------------------------------
META_DTYPE = np.dtype([("ts_ns", "u8"), ("offset", "u8"), ("caplen", "u4"), ("wirelen", "u4"),
                       ("linktype", "u4"), ("reserved", "u4")], align=True)

_RECORD_DTYPE = None


def _record_dtype():
    global _RECORD_DTYPE
    if _RECORD_DTYPE is None:
        from engine.fields import RECORD_DTYPE
        _RECORD_DTYPE = RECORD_DTYPE
    return _RECORD_DTYPE


def record_layout() -> dict:
    """Size and field offsets of flow_record_t as this compiler laid it out."""
    cdef flow_record_t r
    base = <size_t>&r
    return {
        "size": sizeof(flow_record_t),
        "first_ms": <size_t>&r.first_ms - base, "src_addr": <size_t>&r.src_addr - base,
        "exporter_addr": <size_t>&r.exporter_addr - base, "src_frags": <size_t>&r.src_frags - base,
        "observation_point": <size_t>&r.observation_point - base,
        "src_port": <size_t>&r.src_port - base, "icmp_type": <size_t>&r.icmp_type - base,
        "seq_plen": <size_t>&r.seq_plen - base, "seq_tdiff_s2c": <size_t>&r.seq_tdiff_s2c - base,
        "entropy_c2s": <size_t>&r.entropy_c2s - base, "entropy_s2c": <size_t>&r.entropy_s2c - base,
        "src_mac": <size_t>&r.src_mac - base, "dst_mac": <size_t>&r.dst_mac - base,
        "ip_version": <size_t>&r.ip_version - base, "end_reason": <size_t>&r.end_reason - base,
        "exporter_ip_version": <size_t>&r.exporter_ip_version - base,
    }


def sizes() -> dict:
    """Bytes of C memory per flow slot, per feature slot and per entropy histogram."""
    return {"flow": sizeof(flow_t), "features": sizeof(feat_t), "histogram": 512 * 4,
            "hash_slot": sizeof(uint32_t)}


def _check_layout():
    dt = _record_dtype()
    lay = record_layout()
    if dt.itemsize != lay["size"]:
        raise ImportError("RECORD_DTYPE is %d bytes, flow_record_t %d" % (dt.itemsize, lay["size"]))
    for name, off in lay.items():
        if name != "size" and dt.fields[name][1] != off:
            raise ImportError("RECORD_DTYPE.%s at %d, flow_record_t at %d"
                              % (name, dt.fields[name][1], off))
    if META_DTYPE.itemsize != sizeof(pkt_meta_t):
        raise ImportError("META_DTYPE does not match pkt_meta_t")


_check_layout()
