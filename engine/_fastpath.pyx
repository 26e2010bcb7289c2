# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The flow table: account decoded packets to flows, compute behaviour features, expire flows.

Everything per packet runs with the GIL released; Python is crossed once per batch. The decoders
(engine/_decode.pxd) read packet bytes through a bounds-checked cursor: a short or malformed
packet becomes a counted reason, never an exception. See docs/DESIGN.md for the semantics (keys,
expiry, features).
"""
from libc.stdint cimport (int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t,
                          UINT32_MAX as NONE32)
from libc.string cimport memcpy, memset, memcmp
from libc.stdlib cimport malloc, calloc, free
from libc.math cimport log2

import numpy as np
cimport numpy as cnp

from engine._decode cimport (R_OK, R_TRUNCATED, R_TABLE_FULL, R_IP_LENGTH, R_COUNT, FRAG_SLOTS,
                             frag_t, pkt_t, decode_packet)
from engine._hash cimport mix64, side_hash, key_hash
from engine.includes.compiler cimport prefetch
from engine.includes.l7 cimport (L7_NO_STATE, l7_available, l7_version, l7_new, l7_free, l7_take,
                                 l7_release, l7_packet, l7_giveup, l7_name_count, l7_name)

from engine._decode import REASONS

cnp.import_array()

cdef enum:
    END_IDLE = 0
    END_ACTIVE
    END_FIN
    END_RST
    END_END

cdef enum:
    WINDOW = 256                         # behaviour-feature window, packets
    POOL_CHUNK = 1024                    # entropy histograms allocated per chunk
    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_ACK = 0x10

cdef enum:                               # flow_t.tcp_state
    TS_HANDSHAKE = 0x03                  # 0 none, 1 SYN seen, 2 SYN-ACK seen, 3 over
    TS_REQUEST = 0x04                    # the client's first payload was seen (at mark_us)
    TS_RESPONSE = 0x08                   # ... and the server's first payload after it
    TS_NXT = 0x10                        # 0x10 << d: nxt[d] is known
    OOO_DEFAULT_US = 3000                # out-of-order threshold without a handshake RTT


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


# --- TCP health -------------------------------------------------------------------------------
cdef inline void tcp_health(flow_t* f, pkt_t* p, int d) noexcept nogil:
    """One TCP segment of direction d (0 client, 1 server): windows, handshake and application
    latency, retransmissions and out-of-order segments (docs/DESIGN.md, TCP health)."""
    cdef tcp_t* t = &f.tcp
    cdef uint8_t fl = p.tcp_flags
    cdef uint32_t now = <uint32_t>p.ts_us
    cdef uint32_t seq = p.tcp_seq, end, thres
    cdef uint32_t seglen = p.payload_len
    cdef uint8_t hs = f.tcp_state & TS_HANDSHAKE
    if p.tcp_win > f.tcp_win_max[d]:
        f.tcp_win_max[d] = p.tcp_win
    if p.tcp_win == 0 and (fl & (TH_SYN | TH_FIN | TH_RST)) == 0 and f.tcp_zero_win[d] != 0xFFFF:
        f.tcp_zero_win[d] += 1               # as tcp.analysis.zero_window
    # handshake: the latest SYN, the SYN-ACK, the client's ACK; anything else ends it
    if hs != 3:
        if (fl & (TH_SYN | TH_ACK)) == TH_SYN and d == 0 and hs <= 1:
            t.mark_us = now
            hs = 1
        elif (fl & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK) and d == 1 and hs >= 1:
            if hs == 1:
                t.rtt_us[0] = now - t.mark_us
            t.mark_us = now                  # a repeated SYN-ACK: the client answers the latest
            hs = 2
        elif (fl & (TH_SYN | TH_ACK)) == TH_ACK and d == 0 and hs == 2:
            t.rtt_us[1] = now - t.mark_us
            hs = 3
        else:
            hs = 3
        f.tcp_state = (f.tcp_state & ~TS_HANDSHAKE) | hs
    # application latency: the client's first payload, then the server's first payload
    if hs == 3 and seglen > 0 and not (f.tcp_state & TS_RESPONSE):
        if d == 0 and not (f.tcp_state & TS_REQUEST):
            t.mark_us = now
            f.tcp_state |= TS_REQUEST
        elif d == 1 and f.tcp_state & TS_REQUEST:
            t.rtt_us[2] = now - t.mark_us
            f.tcp_state |= TS_RESPONSE
    # sequence numbers, as Wireshark's tcp.analysis without its ACK tracking (DESIGN.md): a
    # segment that occupies sequence space below the next expected number is out of order when
    # it came within the handshake RTT (3 ms without one) of the latest advance and does not end
    # where that one did, else a retransmission; one that starts one below (a keep-alive, or
    # what follows a zero-window probe) is neither
    end = seq + seglen + (1 if fl & TH_SYN else 0) + (1 if fl & TH_FIN else 0)
    if f.tcp_state & (TS_NXT << d):
        if ((seglen > 0 or fl & (TH_SYN | TH_FIN)) and <int32_t>(seq - t.nxt[d]) < 0 and not
                (seq == t.nxt[d] - 1 and
                 (seglen > 1 or (seglen == 1 and not (fl & (TH_SYN | TH_FIN | TH_RST)))))):
            thres = t.rtt_us[0] + t.rtt_us[1] if t.rtt_us[1] else OOO_DEFAULT_US
            if now - t.nxt_us[d] < thres and end != t.nxt[d]:
                t.ooo_pkts[d] += 1
            else:
                t.retr_pkts[d] += 1
                t.retr_bytes[d] += p.ip_bytes
        if <int32_t>(end - t.nxt[d]) <= 0:
            return
    t.nxt[d] = end
    t.nxt_us[d] = now
    f.tcp_state |= TS_NXT << d


cdef inline uint32_t half_ms(uint32_t us) noexcept nogil:
    """Half a round trip in whole milliseconds, rounded."""
    return (us + 1000) // 2000


# --- the flow table ----------------------------------------------------------------------------
cdef class FlowTable:
    """Flows of one capture queue: decode, account, expire, export into an owned record buffer.

    ``process`` takes a batch (a buffer and a pkt_meta_t array of offsets into it) and stops early
    when the output holds ``output_size - 2`` records; ``take`` hands the finished flows over.
    Its C state is declared in _fastpath.pxd.
    """
    def __cinit__(self, uint32_t max_flows=262144, double idle_timeout=30.0,
                  double lifetime=120.0, bint features=True, uint32_t output_size=8192,
                  double linger=2.0, uint32_t shard_index=0, uint32_t shard_count=1,
                  bint l7=False, uint32_t l7_pool=65536, uint32_t l7_tcp_packets=80,
                  uint32_t l7_other_packets=24):
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
        # 64-byte aligned, so that a flow is three whole cache lines
        self.flows_mem = calloc(<size_t>max_flows * sizeof(flow_t) + 64, 1)
        self.flows = <flow_t*>((<size_t>self.flows_mem + 63) & ~(<size_t>63))
        self.slots = <uint32_t*>malloc(size * sizeof(uint32_t))
        self.dec.frags = <frag_t*>calloc(FRAG_SLOTS, sizeof(frag_t))
        self.dec.fragments = 0
        self.features = features
        self.feats = <feat_t*>calloc(max_flows, sizeof(feat_t)) if features else NULL
        self.pool_nchunks = (max_flows + POOL_CHUNK - 1) // POOL_CHUNK
        self.pool_chunks = <uint32_t**>calloc(self.pool_nchunks, sizeof(uint32_t*))
        if (self.flows_mem == NULL or self.slots == NULL or self.dec.frags == NULL or
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
        # nDPI: a detection module and min(l7_pool, max_flows) flow states, allocated once
        self.l7 = NULL
        self.l7f = NULL
        self.l7_tcp_packets = l7_tcp_packets
        self.l7_other_packets = l7_other_packets
        if l7:
            if not l7_available():
                raise RuntimeError(L7_UNAVAILABLE)
            self.l7 = l7_new(min(l7_pool, max_flows))
            self.l7f = <l7f_t*>calloc(max_flows, sizeof(l7f_t))
            if self.l7 == NULL or self.l7f == NULL:
                raise MemoryError("cannot allocate nDPI's detection module and %d flow states"
                                  % min(l7_pool, max_flows))

    def __dealloc__(self):
        cdef uint32_t i
        free(self.flows_mem)
        free(self.slots)
        free(self.dec.frags)
        free(self.feats)
        l7_free(self.l7)
        free(self.l7f)
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
        if f.proto == 6:
            r.retr_pkts_c2s = f.tcp.retr_pkts[0]
            r.retr_pkts_s2c = f.tcp.retr_pkts[1]
            r.retr_bytes_c2s = f.tcp.retr_bytes[0]
            r.retr_bytes_s2c = f.tcp.retr_bytes[1]
            r.ooo_pkts_c2s = f.tcp.ooo_pkts[0]
            r.ooo_pkts_s2c = f.tcp.ooo_pkts[1]
            r.zero_win_c2s = f.tcp_zero_win[0]
            r.zero_win_s2c = f.tcp_zero_win[1]
            r.server_nw_latency_ms = half_ms(f.tcp.rtt_us[0])
            r.client_nw_latency_ms = half_ms(f.tcp.rtt_us[1])
            r.appl_latency_ms = (f.tcp.rtt_us[2] + 500) // 1000
            r.win_max_c2s = f.tcp_win_max[0]
            r.win_max_s2c = f.tcp_win_max[1]
        if self.l7 != NULL:
            r.l7_master = self.l7f[i].verdict.master
            r.l7_app = self.l7f[i].verdict.app
            r.l7_confidence = self.l7f[i].verdict.confidence
            r.l7_category = self.l7f[i].verdict.category
            r.l7_packets = self.l7f[i].pkts
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
        if self.flows[i].l7_open:              # it ends before a verdict: nDPI's best guess
            self.l7_close(i, True)
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
        if f.proto == 6:                    # other flows never touch their TCP state
            memset(&f.tcp, 0, sizeof(tcp_t))
            f.tcp_state = 0
        f.l7_open = 0
        if self.l7 != NULL:
            memset(&self.l7f[i], 0, sizeof(l7f_t))
            self.l7f[i].state = l7_take(self.l7)
            if self.l7f[i].state == L7_NO_STATE:
                self.st.l7_pool_empty += 1
            else:
                f.l7_open = 1
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
        if f.proto != 6:
            return
        # the TCP counters are per slice; sequence state and latencies carry over
        f.tcp.retr_pkts[0] = f.tcp.retr_pkts[1] = 0
        f.tcp.retr_bytes[0] = f.tcp.retr_bytes[1] = 0
        f.tcp.ooo_pkts[0] = f.tcp.ooo_pkts[1] = 0
        f.tcp_zero_win[0] = f.tcp_zero_win[1] = 0
        f.tcp_win_max[0] = f.tcp_win_max[1] = 0

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

    cdef void l7_update(self, uint32_t i, flow_t* f, pkt_t* p) noexcept nogil:
        """One packet of a flow whose detection is open, from its innermost IP header to the end
        of the capture (what ndpiReader hands nDPI), at the latest packet time seen (nDPI's clock
        never goes back); fragments after the first are not given."""
        cdef l7f_t* s = &self.l7f[i]
        cdef uint32_t bound = self.l7_tcp_packets if f.proto == 6 else self.l7_other_packets
        if p.l3 == NULL:
            return
        if s.pkts < 0xFFFF:
            s.pkts += 1
        self.st.l7_packets += 1
        if l7_packet(self.l7, s.state, p.l3, p.caplen - <uint32_t>(p.l3 - p.frame),
                     self.now_us // 1000, s.pkts > bound, &s.verdict):
            self.l7_close(i, False)

    cdef void l7_close(self, uint32_t i, bint giveup) noexcept nogil:
        """Detection of flow i is over (``giveup``: nDPI's guess first); its state goes back."""
        cdef l7f_t* s = &self.l7f[i]
        if giveup:
            l7_giveup(self.l7, s.state, &s.verdict)
        l7_release(self.l7, s.state)
        s.state = L7_NO_STATE
        self.flows[i].l7_open = 0

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
        if p.proto == 6 and not p.is_frag:      # a fragment's segment length is not known
            tcp_health(f, p, d)
        if f.l7_open:
            self.l7_update(i, f, p)
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
            if m.offset > <uint64_t>buflen or cap > <uint64_t>buflen - m.offset:
                r = R_TRUNCATED
                p.ip_version = 0
            else:
                r = decode_packet(buf + m.offset, cap, m.linktype, &p, &self.dec,
                                  <int>(m.reserved & 0x0FFF) if m.reserved & META_VLAN_TAG
                                  else -1)
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

    def process_each(self, buffer, cnp.ndarray meta, Py_ssize_t start,
                     int64_t[::1] index) -> int:
        """Packets ``meta[start:]`` one at a time, each exported at once as its own flow (sFlow
        samples: one record per IP sample, samples of one flow kept apart): the record at output
        row j came from packet ``index[j]``. Returns the index of the first packet not processed:
        ``len(meta)`` unless the output filled up (``take`` it, with ``index[:pending]``, and call
        again)."""
        cdef const uint8_t[::1] view = buffer
        cdef Py_ssize_t n = meta.shape[0], k, j, row
        cdef pkt_meta_t* mp
        cdef const uint8_t* bp = &view[0] if view.shape[0] else NULL
        cdef Py_ssize_t blen = view.shape[0]
        if meta.dtype != META_DTYPE or not meta.flags.c_contiguous:
            raise TypeError("meta must be a contiguous array of META_DTYPE")
        if index.shape[0] < self.out_cap:
            raise ValueError("index must have a row for every output row")
        if start < 0:
            start = 0
        mp = <pkt_meta_t*>cnp.PyArray_DATA(meta)
        k = start
        with nogil:
            while k < n and self.out_n + 2 <= self.out_cap:
                row = self.out_n
                self.run(bp, blen, mp, k, k + 1)
                self.flush_all()
                for j in range(row, self.out_n):
                    index[j] = k
                k += 1
        return k

    cdef void flush_all(self) noexcept nogil:
        # flush() without the GIL: every flow out while the output has room
        cdef uint32_t i
        while self.out_n < self.out_cap:
            if self.cl_head != NONE32:
                i = self.cl_head
                self.expire_flow(i, self.flows[i].closed - 1)
            elif self.lru_head != NONE32:
                self.expire_flow(self.lru_head, END_END)
            else:
                break

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
        with nogil:
            self.flush_all()
        return self.lru_head == NONE32 and self.cl_head == NONE32

    def take(self):
        """The finished flows since the last call (a new array of RECORD_DTYPE)."""
        # as bytes: numpy copies a structured array field by field (~14x slower)
        out = self.out_array[:self.out_n].view(np.uint8).copy().view(self.out_array.dtype)
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

    @property
    def l7_enabled(self) -> bool:
        """Whether nDPI detects application protocols in this table."""
        return self.l7 != NULL

    def stats(self) -> dict:
        """Counters since creation: packets, bytes, flows, and every reason a packet was not
        (fully) accounted."""
        cdef int r
        d = {"packets": self.st.packets, "bytes": self.st.bytes,
             "flows_created": self.st.flows_created, "flows_exported": self.st.flows_exported,
             "active_flows": self.st.active_flows, "fragments": self.dec.fragments,
             "feature_pool_exhausted": self.st.pool_exhausted,
             "other_shard": self.st.other_shard,
             "l7_packets": self.st.l7_packets, "l7_pool_empty": self.st.l7_pool_empty}
        d["decoded"] = self.st.reasons[R_OK]
        d["drops"] = {REASONS[r]: self.st.reasons[r] for r in range(1, R_COUNT)}
        d["exported_by_reason"] = {name: self.st.exported_by_reason[k]
                                   for k, name in enumerate(("idle", "active", "fin", "rst", "end"))}
        return d



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
    """Offset and size of every member of flow_record_t, in order, as this compiler laid it out."""
    cdef flow_record_t r
    cdef size_t base = <size_t>&r
    return {
        "first_ms": (<size_t>&r.first_ms - base, sizeof(r.first_ms)),
        "last_ms": (<size_t>&r.last_ms - base, sizeof(r.last_ms)),
        "in_bytes": (<size_t>&r.in_bytes - base, sizeof(r.in_bytes)),
        "in_pkts": (<size_t>&r.in_pkts - base, sizeof(r.in_pkts)),
        "out_bytes": (<size_t>&r.out_bytes - base, sizeof(r.out_bytes)),
        "out_pkts": (<size_t>&r.out_pkts - base, sizeof(r.out_pkts)),
        "src_addr": (<size_t>&r.src_addr - base, sizeof(r.src_addr)),
        "dst_addr": (<size_t>&r.dst_addr - base, sizeof(r.dst_addr)),
        "exporter_addr": (<size_t>&r.exporter_addr - base, sizeof(r.exporter_addr)),
        "src_frags": (<size_t>&r.src_frags - base, sizeof(r.src_frags)),
        "dst_frags": (<size_t>&r.dst_frags - base, sizeof(r.dst_frags)),
        "input_snmp": (<size_t>&r.input_snmp - base, sizeof(r.input_snmp)),
        "output_snmp": (<size_t>&r.output_snmp - base, sizeof(r.output_snmp)),
        "observation_point": (<size_t>&r.observation_point - base, sizeof(r.observation_point)),
        "src_port": (<size_t>&r.src_port - base, sizeof(r.src_port)),
        "dst_port": (<size_t>&r.dst_port - base, sizeof(r.dst_port)),
        "vlan": (<size_t>&r.vlan - base, sizeof(r.vlan)),
        "outer_vlan": (<size_t>&r.outer_vlan - base, sizeof(r.outer_vlan)),
        "icmp_type": (<size_t>&r.icmp_type - base, sizeof(r.icmp_type)),
        "l7_master": (<size_t>&r.l7_master - base, sizeof(r.l7_master)),
        "l7_app": (<size_t>&r.l7_app - base, sizeof(r.l7_app)),
        "l7_packets": (<size_t>&r.l7_packets - base, sizeof(r.l7_packets)),
        "seq_plen": (<size_t>&r.seq_plen - base, sizeof(r.seq_plen)),
        "seq_tdiff": (<size_t>&r.seq_tdiff - base, sizeof(r.seq_tdiff)),
        "seq_plen_c2s": (<size_t>&r.seq_plen_c2s - base, sizeof(r.seq_plen_c2s)),
        "seq_plen_s2c": (<size_t>&r.seq_plen_s2c - base, sizeof(r.seq_plen_s2c)),
        "seq_tdiff_c2s": (<size_t>&r.seq_tdiff_c2s - base, sizeof(r.seq_tdiff_c2s)),
        "seq_tdiff_s2c": (<size_t>&r.seq_tdiff_s2c - base, sizeof(r.seq_tdiff_s2c)),
        "entropy_c2s": (<size_t>&r.entropy_c2s - base, sizeof(r.entropy_c2s)),
        "entropy_s2c": (<size_t>&r.entropy_s2c - base, sizeof(r.entropy_s2c)),
        "src_mac": (<size_t>&r.src_mac - base, sizeof(r.src_mac)),
        "dst_mac": (<size_t>&r.dst_mac - base, sizeof(r.dst_mac)),
        "ip_version": (<size_t>&r.ip_version - base, sizeof(r.ip_version)),
        "protocol": (<size_t>&r.protocol - base, sizeof(r.protocol)),
        "client_tcp_flags": (<size_t>&r.client_tcp_flags - base, sizeof(r.client_tcp_flags)),
        "server_tcp_flags": (<size_t>&r.server_tcp_flags - base, sizeof(r.server_tcp_flags)),
        "src_tos": (<size_t>&r.src_tos - base, sizeof(r.src_tos)),
        "dst_tos": (<size_t>&r.dst_tos - base, sizeof(r.dst_tos)),
        "end_reason": (<size_t>&r.end_reason - base, sizeof(r.end_reason)),
        "flow_source": (<size_t>&r.flow_source - base, sizeof(r.flow_source)),
        "tunnel": (<size_t>&r.tunnel - base, sizeof(r.tunnel)),
        "exporter_ip_version": (<size_t>&r.exporter_ip_version - base, sizeof(r.exporter_ip_version)),
        "l7_confidence": (<size_t>&r.l7_confidence - base, sizeof(r.l7_confidence)),
        "l7_category": (<size_t>&r.l7_category - base, sizeof(r.l7_category)),
        "retr_pkts_c2s": (<size_t>&r.retr_pkts_c2s - base, sizeof(r.retr_pkts_c2s)),
        "retr_pkts_s2c": (<size_t>&r.retr_pkts_s2c - base, sizeof(r.retr_pkts_s2c)),
        "retr_bytes_c2s": (<size_t>&r.retr_bytes_c2s - base, sizeof(r.retr_bytes_c2s)),
        "retr_bytes_s2c": (<size_t>&r.retr_bytes_s2c - base, sizeof(r.retr_bytes_s2c)),
        "ooo_pkts_c2s": (<size_t>&r.ooo_pkts_c2s - base, sizeof(r.ooo_pkts_c2s)),
        "ooo_pkts_s2c": (<size_t>&r.ooo_pkts_s2c - base, sizeof(r.ooo_pkts_s2c)),
        "zero_win_c2s": (<size_t>&r.zero_win_c2s - base, sizeof(r.zero_win_c2s)),
        "zero_win_s2c": (<size_t>&r.zero_win_s2c - base, sizeof(r.zero_win_s2c)),
        "client_nw_latency_ms": (<size_t>&r.client_nw_latency_ms - base,
                                 sizeof(r.client_nw_latency_ms)),
        "server_nw_latency_ms": (<size_t>&r.server_nw_latency_ms - base,
                                 sizeof(r.server_nw_latency_ms)),
        "appl_latency_ms": (<size_t>&r.appl_latency_ms - base, sizeof(r.appl_latency_ms)),
        "win_max_c2s": (<size_t>&r.win_max_c2s - base, sizeof(r.win_max_c2s)),
        "win_max_s2c": (<size_t>&r.win_max_s2c - base, sizeof(r.win_max_s2c)),
    }


def sizes() -> dict:
    """Bytes of C memory per flow slot, per feature slot, per entropy histogram and, with L7,
    per flow's detection record."""
    return {"flow": sizeof(flow_t), "features": sizeof(feat_t), "histogram": 512 * 4,
            "hash_slot": sizeof(uint32_t), "l7": sizeof(l7f_t)}


# --- nDPI ----------------------------------------------------------------------------------------
L7_UNAVAILABLE = "L7 detection unavailable: flowprobe was built without nDPI (libndpi-dev)"


def l7_info() -> dict:
    """Whether this build has nDPI, and its version."""
    return {"available": bool(l7_available()),
            "version": l7_version().decode() if l7_available() else ""}


def l7_protocol_names() -> list:
    """nDPI's protocol names, indexed by protocol id (empty without nDPI)."""
    cdef l7_t* l
    cdef uint32_t i
    if not l7_available():
        return []
    l = l7_new(1)
    if l == NULL:
        raise MemoryError("cannot allocate nDPI's detection module")
    try:
        return [l7_name(l, <uint16_t>i).decode("ascii", "replace")
                for i in range(l7_name_count(l))]
    finally:
        l7_free(l)


def _check_layout():
    """The record dtype the exporters read must be flow_record_t byte for byte: the same members
    in the same order, each at the same offset with the same size."""
    dt = _record_dtype()
    lay = record_layout()
    if list(dt.names) != list(lay):
        raise ImportError("RECORD_DTYPE columns %s differ from flow_record_t members %s"
                          % (list(dt.names), list(lay)))
    for name, (off, size) in lay.items():
        col, col_off = dt.fields[name][:2]
        if (col_off, col.itemsize) != (off, size):
            raise ImportError("RECORD_DTYPE.%s: %d bytes at %d, flow_record_t: %d bytes at %d"
                              % (name, col.itemsize, col_off, size, off))
    if dt.itemsize != sizeof(flow_record_t):
        raise ImportError("RECORD_DTYPE is %d bytes, flow_record_t %d"
                          % (dt.itemsize, sizeof(flow_record_t)))
    cdef pkt_meta_t m
    cdef size_t base = <size_t>&m
    meta = {"ts_ns": (<size_t>&m.ts_ns - base, sizeof(m.ts_ns)),
            "offset": (<size_t>&m.offset - base, sizeof(m.offset)),
            "caplen": (<size_t>&m.caplen - base, sizeof(m.caplen)),
            "wirelen": (<size_t>&m.wirelen - base, sizeof(m.wirelen)),
            "linktype": (<size_t>&m.linktype - base, sizeof(m.linktype)),
            "reserved": (<size_t>&m.reserved - base, sizeof(m.reserved))}
    if (META_DTYPE.itemsize != sizeof(pkt_meta_t) or list(META_DTYPE.names) != list(meta) or
            any((META_DTYPE.fields[k][1], META_DTYPE.fields[k][0].itemsize) != v
                for k, v in meta.items())):
        raise ImportError("META_DTYPE does not match pkt_meta_t")


_check_layout()
