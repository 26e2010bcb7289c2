# The packet decoders: one frame from its link-layer header down to the innermost flow key
# (docs/DESIGN.md, "Decode"). Every read goes through the cursor, so a short or malformed packet
# is a reason code, never a read past its bytes. Inline, so that they compile into the fast
# path's batch loop (and into engine._decode, the Python-level decoder the tests use).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset, memcmp

from engine._cursor cimport (cursor_t, cur_init, cur_read, cur_peek, cur_skip, cur_skip_at_most,
                             cur_limit)
from engine._hash cimport mix64, side_hash
from engine.includes.hton cimport load_be16, load_be32, load_le16, load_le32


# Why a packet is not (fully) accounted, in the order of engine._decode.REASONS. The decoders
# return R_OK .. R_TUNNEL_DEPTH; the flow table adds the last two.
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

# the outermost tunnel stripped, as engine.fields.TUNNELS names them
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

cdef enum:
    MAX_TUNNEL_DEPTH = 4
    FRAG_SLOTS = 4096                    # fragment cache entries (power of two)
    FRAG_TTL_US = 30000000
    NOT_A_TUNNEL = -1                    # a UDP tunnel port, but not a tunnel we strip


# One decoded packet.
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
    uint32_t tcp_seq             # TCP: sequence number and (unscaled) window of the segment
    uint16_t tcp_win
    uint32_t caplen              # captured bytes of the frame
    const uint8_t* l3            # the innermost IP header (what nDPI reads); NULL for a
                                 # fragment after the first, which has no L4 header

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

# What decoding keeps from one packet to the next.
ctypedef struct decoder_t:
    frag_t* frags                # FRAG_SLOTS entries
    uint64_t fragments           # fragments seen (every one, accounted or not)


cdef inline int decode_by_ethertype(uint16_t et, cursor_t c, pkt_t* p, decoder_t* dec,
                                    int depth) noexcept nogil:
    """The frame after its Ethernet header (and tags): IP, MPLS or PPPoE."""
    cdef const uint8_t* h
    if et == 0x0800 or et == 0x86DD:
        return decode_ip(c, p, dec, depth)
    if et == 0x8847 or et == 0x8848:           # MPLS: pop the label stack, guess IP by version
        while True:
            h = cur_read(&c, 4)
            if h == NULL:
                return R_TRUNCATED
            if h[2] & 0x01:                      # bottom of stack
                break
        h = cur_peek(&c, 1)
        if h == NULL:
            return R_TRUNCATED
        if (h[0] >> 4) == 4 or (h[0] >> 4) == 6:
            return decode_ip(c, p, dec, depth)
        return R_NON_IP
    if et == 0x8864:                            # PPPoE session: 6-byte header + PPP protocol
        h = cur_read(&c, 8)
        if h == NULL:
            return R_TRUNCATED
        et = load_be16(h + 6)
        if et == 0x0021 or et == 0x0057:
            return decode_ip(c, p, dec, depth)
        return R_NON_IP
    return R_NON_IP


cdef inline int decode_ether(cursor_t c, pkt_t* p, decoder_t* dec, int depth,
                             bint outer) noexcept nogil:
    cdef const uint8_t* h = cur_read(&c, 14)
    cdef uint16_t et
    if h == NULL:
        return R_TRUNCATED
    if outer:
        memcpy(p.dmac, h, 6)
        memcpy(p.smac, h + 6, 6)
        p.have_mac = 1
    et = load_be16(h + 12)
    while et == 0x8100 or et == 0x88A8 or et == 0x9100:
        h = cur_read(&c, 4)
        if h == NULL:
            return R_TRUNCATED
        # the last tag is the flow's VLAN (the customer tag of QinQ, as ndpiReader keys it);
        # the first of several is kept as the outer (service) tag
        if p.vlans_seen == 1:
            p.outer_vlan = p.vlan
        p.vlan = load_be16(h) & 0x0FFF
        p.vlans_seen += 1
        et = load_be16(h + 2)
    if et <= 1500:                              # 802.3 length: LLC, IP only behind SNAP
        h = cur_peek(&c, 8)
        if h == NULL or h[0] != 0xAA or h[1] != 0xAA or h[2] != 0x03:
            return R_NON_IP
        et = load_be16(h + 6)
        cur_skip(&c, 8)
    return decode_by_ethertype(et, c, p, dec, depth)


cdef inline int decode_80211(cursor_t c, pkt_t* p, decoder_t* dec, int depth) noexcept nogil:
    """An 802.11 data frame (CAPWAP native binding) down to its LLC/SNAP ethertype."""
    cdef const uint8_t* h = cur_peek(&c, 24)
    cdef uint32_t hl = 24
    cdef uint16_t fc
    if h == NULL:
        return R_TRUNCATED
    fc = load_le16(h)
    if ((fc >> 2) & 0x3) != 2 and ((h[1] >> 2) & 0x3) == 2:
        fc = load_be16(h)                       # Cisco APs send the frame control swapped
    if ((fc >> 2) & 0x3) != 2:                  # not a data frame
        return R_NON_IP
    if (fc & 0x0300) == 0x0300:                 # ToDS and FromDS: a fourth address
        hl += 6
    if (fc >> 4) & 0x8:                         # QoS data
        hl += 2
    if (fc >> 4) & 0x4:                         # null data, no payload
        return R_NON_IP
    if not cur_skip(&c, hl):
        return R_TRUNCATED
    h = cur_read(&c, 8)
    if h == NULL:
        return R_TRUNCATED
    if h[0] != 0xAA or h[1] != 0xAA or h[2] != 0x03:
        return R_NON_IP
    return decode_by_ethertype(load_be16(h + 6), c, p, dec, depth)


cdef inline int decode_gre(cursor_t c, pkt_t* p, decoder_t* dec, int depth) noexcept nogil:
    cdef const uint8_t* h = cur_read(&c, 4)
    cdef uint16_t fl, proto
    cdef uint32_t skip = 0
    if h == NULL:
        return R_TRUNCATED
    fl = load_be16(h)
    proto = load_be16(h + 2)
    if (fl & 0x7) == 1:                         # enhanced GRE (PPTP): key always, optional ack
        if proto != 0x880B:
            return R_BAD_TUNNEL
        skip = 4
        if fl & 0x1000:
            skip += 4
        if fl & 0x0080:
            skip += 4
        if not cur_skip(&c, skip):
            return R_TRUNCATED
        h = cur_peek(&c, 2)
        if h == NULL:
            return R_TRUNCATED
        if h[0] == 0xFF and h[1] == 0x03:
            cur_skip(&c, 2)
        h = cur_peek(&c, 1)
        if h == NULL:
            return R_TRUNCATED
        if h[0] == 0x21:
            cur_skip(&c, 1)
            return decode_ip(c, p, dec, depth)
        h = cur_peek(&c, 2)
        if h != NULL and (load_be16(h) == 0x0021 or load_be16(h) == 0x0057):
            cur_skip(&c, 2)
            return decode_ip(c, p, dec, depth)
        return R_NON_IP
    if (fl & 0x7) != 0:
        return R_BAD_TUNNEL
    if fl & 0x8000:
        skip += 4
    if fl & 0x2000:
        skip += 4
    if fl & 0x1000:
        skip += 4
    if not cur_skip(&c, skip):
        return R_TRUNCATED
    if proto == 0x0800 or proto == 0x86DD:
        return decode_ip(c, p, dec, depth)
    if proto == 0x6558:                         # transparent Ethernet bridging
        return decode_ether(c, p, dec, depth, False)
    if proto == 0x88BE:                         # ERSPAN: type II when sequenced, else type I
        p.tunnel = TUN_ERSPAN if p.tunnel == TUN_GRE else p.tunnel
        if fl & 0x1000 and not cur_skip(&c, 8):
            return R_TRUNCATED
        return decode_ether(c, p, dec, depth, False)
    if proto == 0x22EB:                         # ERSPAN type III, optional platform sub-header
        p.tunnel = TUN_ERSPAN if p.tunnel == TUN_GRE else p.tunnel
        h = cur_peek(&c, 12)
        if h == NULL:
            return R_TRUNCATED
        if not cur_skip(&c, 20 if h[11] & 0x01 else 12):
            return R_TRUNCATED
        return decode_ether(c, p, dec, depth, False)
    if proto == 0x8847:
        return decode_by_ethertype(proto, c, p, dec, depth)
    return R_NON_IP


cdef inline int decode_gtpu(cursor_t c, pkt_t* p, decoder_t* dec, int depth) noexcept nogil:
    """GTP-U G-PDU: 8-byte header, optional sequence/N-PDU/extension headers, then IP.
    NOT_A_TUNNEL when the datagram is not a G-PDU (kept as a plain UDP flow)."""
    cdef const uint8_t* h = cur_peek(&c, 8)
    cdef uint8_t nxt
    cdef uint32_t elen
    if h == NULL:
        return NOT_A_TUNNEL
    if (h[0] >> 5) != 1 or not (h[0] & 0x10) or h[1] != 0xFF:
        return NOT_A_TUNNEL
    if h[0] & 0x07:
        h = cur_read(&c, 12)
        if h == NULL:
            return R_TRUNCATED
        nxt = h[11]
        while nxt != 0:
            h = cur_peek(&c, 1)
            if h == NULL or h[0] == 0:
                return R_BAD_TUNNEL
            elen = 4 * h[0]
            h = cur_read(&c, elen)
            if h == NULL:
                return R_TRUNCATED
            nxt = h[elen - 1]
    else:
        cur_skip(&c, 8)
    h = cur_peek(&c, 1)
    if h == NULL:
        return R_TRUNCATED
    if (h[0] >> 4) != 4 and (h[0] >> 4) != 6:
        return NOT_A_TUNNEL
    return decode_ip(c, p, dec, depth)


cdef inline bint is_udp_tunnel_port(uint16_t sp, uint16_t dp) noexcept nogil:
    return (sp == 2152 or dp == 2152 or sp == 4789 or dp == 4789 or sp == 37008 or dp == 37008
            or sp == 5247 or dp == 5247)


cdef inline int decode_udp_tunnel(cursor_t c, pkt_t* p, decoder_t* dec, int depth) noexcept nogil:
    """UDP-carried tunnels by port (c: the UDP payload). NOT_A_TUNNEL when the datagram is not
    a tunnel we strip."""
    cdef uint16_t sp = p.sport, dp = p.dport
    cdef const uint8_t* h
    cdef uint32_t hlen
    cdef int r
    if dp == 2152 or sp == 2152:
        if p.tunnel == TUN_NONE:
            p.tunnel = TUN_GTPU
        r = decode_gtpu(c, p, dec, depth)
        if r == NOT_A_TUNNEL and p.tunnel == TUN_GTPU and depth == 0:
            p.tunnel = TUN_NONE
        return r
    if dp == 4789 or sp == 4789:
        h = cur_read(&c, 8)
        if h == NULL or not (h[0] & 0x08):
            return NOT_A_TUNNEL
        if p.tunnel == TUN_NONE:
            p.tunnel = TUN_VXLAN
        return decode_ether(c, p, dec, depth, False)
    if dp == 37008 or sp == 37008:                  # TZSP: tagged fields end with tag 1
        h = cur_read(&c, 4)
        if h == NULL or h[0] != 1 or load_be16(h + 2) != 1:   # version 1, Ethernet only
            return NOT_A_TUNNEL
        while True:
            h = cur_read(&c, 1)
            if h == NULL:
                return R_TRUNCATED
            if h[0] == 1:
                break
            if h[0] == 0:
                continue
            h = cur_read(&c, 1)
            if h == NULL or not cur_skip(&c, h[0]):
                return R_TRUNCATED
        if p.tunnel == TUN_NONE:
            p.tunnel = TUN_TZSP
        return decode_ether(c, p, dec, depth, False)
    if dp == 5247 or sp == 5247:                    # CAPWAP data channel
        h = cur_peek(&c, 8)
        if h == NULL or (h[0] >> 4) != 0:
            return NOT_A_TUNNEL
        hlen = ((h[1] >> 3) & 0x1F) * 4
        if hlen < 8 or hlen > c.n:
            return R_BAD_TUNNEL
        if h[3] & 0x80:                             # a fragment: leave it on the outer flow
            return NOT_A_TUNNEL
        if p.tunnel == TUN_NONE:
            p.tunnel = TUN_CAPWAP
        cur_skip(&c, hlen)
        if h[2] & 0x01:                             # T: native frame of the binding (802.11)
            if ((h[2] >> 1) & 0x1F) != 1:
                return R_NON_IP
            return decode_80211(c, p, dec, depth)
        return decode_ether(c, p, dec, depth, False)
    return NOT_A_TUNNEL


cdef inline int decode_l4(cursor_t c, uint32_t l4len, pkt_t* p, decoder_t* dec,
                          int depth) noexcept nogil:
    """Transport header (c: the bytes captured within the IP length, l4len: bytes by the IP
    lengths), then tunnels."""
    cdef const uint8_t* h
    cdef uint32_t hl = 0
    cdef int r
    cdef uint8_t proto = p.proto
    cdef pkt_t outer
    if proto == 6:
        h = cur_peek(&c, 20)
        if h == NULL:
            return R_TRUNCATED
        hl = (h[12] >> 4) * 4
        if hl < 20:
            return R_BAD_L4
        p.sport = load_be16(h)
        p.dport = load_be16(h + 2)
        p.tcp_flags = h[13]
        p.tcp_seq = load_be32(h + 4)
        p.tcp_win = load_be16(h + 14)
    elif proto == 17 or proto == 136:
        h = cur_peek(&c, 8)
        if h == NULL:
            return R_TRUNCATED
        hl = 8
        p.sport = load_be16(h)
        p.dport = load_be16(h + 2)
    elif proto == 1 or proto == 58:
        h = cur_peek(&c, 4)
        if h == NULL:
            return R_TRUNCATED
        p.icmp_type = load_be16(h)
        hl = 8
    elif proto == 132:
        h = cur_peek(&c, 12)
        if h == NULL:
            return R_TRUNCATED
        hl = 12
        p.sport = load_be16(h)
        p.dport = load_be16(h + 2)
    elif proto == 4 or proto == 41:
        if depth >= MAX_TUNNEL_DEPTH:
            return R_TUNNEL_DEPTH
        if p.tunnel == TUN_NONE:
            p.tunnel = TUN_IPIP
        return decode_ip(c, p, dec, depth + 1)
    elif proto == 47:
        if depth >= MAX_TUNNEL_DEPTH:
            return R_TUNNEL_DEPTH
        memcpy(&outer, p, sizeof(pkt_t))
        if p.tunnel == TUN_NONE:
            p.tunnel = TUN_GRE
        r = decode_gre(c, p, dec, depth + 1)
        if r != R_NON_IP:
            return r
        # GRE keepalives, PPP control and other non-IP payloads: the outer GRE flow, like a
        # UDP tunnel that carries no IP packet
        memcpy(p, &outer, sizeof(pkt_t))
    # payload length from the header lengths; the captured part may be shorter (snaplen)
    p.payload_len = l4len - hl if l4len > hl else 0
    cur_skip_at_most(&c, hl)
    p.payload = c.p
    p.payload_cap = <uint32_t>c.n
    if proto == 17 and depth < MAX_TUNNEL_DEPTH and is_udp_tunnel_port(p.sport, p.dport):
        # a tunnel that carries no IP packet (CAPWAP management, 802.11 control...) stays
        # accounted to the outer UDP flow, as ndpiReader does
        memcpy(&outer, p, sizeof(pkt_t))
        r = decode_udp_tunnel(c, p, dec, depth + 1)
        if r == NOT_A_TUNNEL or r == R_NON_IP:
            memcpy(p, &outer, sizeof(pkt_t))
            return R_OK
        return r
    return R_OK


cdef inline int frag_slot(const uint8_t* src, const uint8_t* dst, uint32_t ident,
                          uint8_t proto) noexcept nogil:
    return <int>(mix64(side_hash(src, <uint16_t>proto) ^ side_hash(dst, 0) ^ ident)
                 & (FRAG_SLOTS - 1))


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


cdef inline int fragment(cursor_t c, uint32_t l4len, bint first, uint32_t ident, pkt_t* p,
                         decoder_t* dec, int depth) noexcept nogil:
    """A fragment: the first one decodes its transport header and leaves the resulting flow key
    in the fragment cache; the later ones take their flow key from there."""
    cdef frag_t* f = &dec.frags[frag_slot(p.src, p.dst, ident, p.proto)]
    cdef int r
    dec.fragments += 1
    p.is_frag = 1
    if first:
        memcpy(f.src, p.src, 16)
        memcpy(f.dst, p.dst, 16)
        f.ident = ident
        f.proto = p.proto
        f.ip_version = p.ip_version
        r = decode_l4(c, l4len, p, dec, depth)
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
    p.l3 = NULL
    p.payload = c.p
    p.payload_cap = <uint32_t>c.n
    p.payload_len = l4len
    return R_OK


cdef inline int decode_ip(cursor_t c, pkt_t* p, decoder_t* dec, int depth) noexcept nogil:
    cdef const uint8_t* h = cur_peek(&c, 1)
    cdef const uint8_t* e
    cdef uint32_t hl, total, off
    cdef uint16_t fo
    cdef uint8_t nh
    if h == NULL:
        return R_TRUNCATED
    p.l3 = h
    if (h[0] >> 4) == 4:
        h = cur_peek(&c, 20)
        if h == NULL:
            return R_TRUNCATED
        hl = (h[0] & 0x0F) * 4
        total = load_be16(h + 2)
        if hl < 20 or total < hl:
            return R_BAD_IPV4
        if hl > c.n:
            return R_TRUNCATED
        if depth == 0:
            p.outer_ip_len = total
            p.l2_len = <uint32_t>(h - p.frame)
        p.ip_version = 4
        memset(p.src, 0, 16)
        memset(p.dst, 0, 16)
        memcpy(p.src, h + 12, 4)
        memcpy(p.dst, h + 16, 4)
        p.proto = h[9]
        p.tos = h[1]
        p.sport = p.dport = p.icmp_type = 0
        cur_limit(&c, total)
        cur_skip(&c, hl)
        fo = load_be16(h + 6)
        if fo & 0x3FFF:                            # MF set or offset non-zero
            return fragment(c, total - hl, (fo & 0x1FFF) == 0, load_be16(h + 4), p, dec, depth)
        return decode_l4(c, total - hl, p, dec, depth)
    if (h[0] >> 4) == 6:
        h = cur_read(&c, 40)
        if h == NULL:
            return R_TRUNCATED
        p.ip_version = 6
        memcpy(p.src, h + 8, 16)
        memcpy(p.dst, h + 24, 16)
        p.tos = <uint8_t>((load_be16(h) >> 4) & 0xFF)
        p.sport = p.dport = p.icmp_type = 0
        total = 40 + load_be16(h + 4)
        if total == 40:                             # jumbogram or no payload: trust the capture
            total = 40 + <uint32_t>c.n
        if depth == 0:
            p.outer_ip_len = total
            p.l2_len = <uint32_t>(h - p.frame)
        nh = h[6]
        off = 40                                    # bytes of the IP header walked so far
        while nh == 0 or nh == 43 or nh == 60 or nh == 51 or nh == 135 or nh == 44:
            e = cur_peek(&c, 8)
            if e == NULL:
                return R_TRUNCATED
            if nh == 44:                            # fragment header
                p.proto = e[0]
                fo = load_be16(e + 2)
                cur_skip(&c, 8)
                off += 8
                if off > total:
                    return R_BAD_IPV6
                cur_limit(&c, total - off)
                if (fo & 0xFFF9) == 0:              # offset 0 and no MF: an atomic fragment
                    return decode_l4(c, total - off, p, dec, depth)
                return fragment(c, total - off, (fo & 0xFFF8) == 0, load_be32(e + 4), p, dec,
                                depth)
            hl = (e[1] + 2) * 4 if nh == 51 else (e[1] + 1) * 8
            nh = e[0]
            if not cur_skip(&c, hl):
                return R_TRUNCATED
            off += hl
        if off > total:
            return R_BAD_IPV6
        p.proto = nh
        cur_limit(&c, total - off)
        return decode_l4(c, total - off, p, dec, depth)
    return R_BAD_IPV4 if depth == 0 else R_BAD_TUNNEL


cdef inline int decode_packet(const uint8_t* frame, uint32_t caplen, uint32_t linktype, pkt_t* p,
                              decoder_t* dec, int stripped_vlan=-1) noexcept nogil:
    """Decode one frame from its link-layer header down to the innermost flow key.
    ``stripped_vlan``: the VLAN id of an 802.1Q tag the capture took out of an Ethernet frame
    (Linux AF_PACKET rings), -1 for none."""
    cdef cursor_t c = cur_init(frame, caplen)
    cdef const uint8_t* h
    cdef uint32_t fam
    cdef uint16_t proto
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
    p.frame = frame
    p.caplen = caplen
    p.l3 = NULL
    if linktype == LT_ETHERNET:
        if stripped_vlan >= 0:                   # as if the tag were still before the EtherType
            p.vlan = <uint16_t>stripped_vlan
            p.vlans_seen = 1
        return decode_ether(c, p, dec, 0, True)
    if (linktype == LT_RAW or linktype == LT_IPV4 or linktype == LT_IPV6 or linktype == 12
            or linktype == 14):
        return decode_ip(c, p, dec, 0)
    if linktype == LT_NULL or linktype == LT_LOOP:
        h = cur_read(&c, 4)
        if h == NULL:
            return R_TRUNCATED
        fam = load_le32(h) if linktype == LT_NULL else load_be32(h)
        if fam > 0xFFFF:
            fam = load_be32(h) if linktype == LT_NULL else load_le32(h)
        if fam != 2 and fam != 24 and fam != 28 and fam != 30:
            return R_NON_IP
        return decode_ip(c, p, dec, 0)
    if linktype == LT_LINUX_SLL:
        h = cur_read(&c, 16)
        if h == NULL:
            return R_TRUNCATED
        return decode_by_ethertype(load_be16(h + 14), c, p, dec, 0)
    if linktype == LT_LINUX_SLL2:
        h = cur_read(&c, 20)
        if h == NULL:
            return R_TRUNCATED
        return decode_by_ethertype(load_be16(h), c, p, dec, 0)
    if linktype == LT_C_HDLC:
        h = cur_read(&c, 4)
        if h == NULL:
            return R_TRUNCATED
        return decode_by_ethertype(load_be16(h + 2), c, p, dec, 0)
    if linktype == LT_PPP or linktype == 50:
        # optional address/control bytes (FF 03), then a 2-byte protocol
        h = cur_peek(&c, 2)
        if h != NULL and h[0] == 0xFF and h[1] == 0x03:
            cur_skip(&c, 2)
        h = cur_read(&c, 2)
        if h == NULL:
            return R_TRUNCATED
        proto = load_be16(h)
        if proto == 0x0021 or proto == 0x0057:
            return decode_ip(c, p, dec, 0)
        if proto == 0x0281:
            return decode_by_ethertype(0x8847, c, p, dec, 0)
        return R_NON_IP
    return R_UNSUPPORTED_LINK
