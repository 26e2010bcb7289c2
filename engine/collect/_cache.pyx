"""The collector's flow cache in C (the default collector mode).

Collected records are merged by flow key, exporter and observation domain, both directions of a
flow into one biflow (the first record's orientation is kept; a record of the other direction adds
its bytes, packets and flags to the opposite side), and exported on the idle (-d) and lifetime (-t)
timeouts by arrival time (routers' clocks are not trusted). Records are rows of RECORD_DTYPE
(``flow_record_t``); the key is found through an open-addressing table with linear probing.
Storage grows by doubling up to ``max_flows``; a record that finds no room is handed back,
counted (``cache_full``). engine/collect/cache.py is the numpy reference this is held to.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

import numpy as np

from engine._fastpath cimport flow_record_t
from engine.fields import RECORD_DTYPE as _RECORD_DTYPE

cdef enum:
    FIRST_CAP = 1024
cdef uint32_t EMPTY = 0xFFFFFFFF        # index entries: no slot, a removed slot
cdef uint32_t TOMB = 0xFFFFFFFE
cdef enum:
    REASON_IDLE = 0
    REASON_ACTIVE = 1
    REASON_END = 4


cdef inline uint64_t key_hash(const key_t* k) noexcept nogil:
    cdef const uint64_t* w = <const uint64_t*>k
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL
    cdef int i
    for i in range(<int>(sizeof(key_t) / 8)):
        h = (h ^ w[i]) * 0xFF51AFD7ED558CCDULL
        h ^= h >> 29
    return h


cdef inline bint after(const flow_record_t* r) noexcept nogil:
    """src > dst, on address bytes then port: which end is the key's a side."""
    cdef int c = memcmp(r.src_addr, r.dst_addr, 16)
    return c > 0 or (c == 0 and r.src_port > r.dst_port)


cdef class FlowCache:

    def __cinit__(self, uint32_t max_flows=262144, double idle=30.0, double lifetime=120.0):
        self.max_flows = max(max_flows, 1)
        self.idle = idle
        self.lifetime = lifetime
        self.cap = 0
        if not self.grow():
            raise MemoryError("flow cache")

    def __dealloc__(self):
        free(self.slots)
        free(self.free_list)
        free(self.index)

    def __len__(self):
        return self.active

    @property
    def stats(self):
        return {"cache_merged": self.merged, "cache_created": self.created_n,
                "cache_full": self.full, "cache_exported": self.exported}

    # ---- storage ------------------------------------------------------------------------------
    cdef bint grow(self) noexcept nogil:
        """Double the slots (up to max_flows) and rebuild the index; False when at the limit."""
        cdef uint32_t new = FIRST_CAP if self.cap == 0 else self.cap * 2
        cdef uint32_t i, size = 1
        if self.cap >= self.max_flows:
            return False
        new = min(new, self.max_flows)
        while size < 2 * new:
            size *= 2
        cdef slot_t* slots = <slot_t*>realloc(self.slots, new * sizeof(slot_t))
        if slots == NULL:
            return False
        self.slots = slots
        cdef uint32_t* fl = <uint32_t*>realloc(self.free_list, new * sizeof(uint32_t))
        if fl == NULL:
            return False
        self.free_list = fl
        cdef uint32_t* index = <uint32_t*>malloc(size * sizeof(uint32_t))
        if index == NULL:
            return False
        memset(&self.slots[self.cap], 0, (new - self.cap) * sizeof(slot_t))
        cdef Py_ssize_t j
        for j in range(<Py_ssize_t>new - 1, <Py_ssize_t>self.cap - 1, -1):   # lowest slot first
            self.free_list[self.nfree] = <uint32_t>j
            self.nfree += 1
        free(self.index)
        self.index = index
        self.size = size
        self.cap = new
        self.rebuild()
        return True

    cdef void rebuild(self) noexcept nogil:
        cdef uint32_t i
        memset(self.index, 0xFF, self.size * sizeof(uint32_t))
        self.tombs = 0
        for i in range(self.cap):
            if self.slots[i].used:
                self.insert(i)

    cdef inline void insert(self, uint32_t s) noexcept nogil:
        cdef uint32_t mask = self.size - 1
        cdef uint32_t j = <uint32_t>self.slots[s].hash & mask
        while self.index[j] != EMPTY and self.index[j] != TOMB:
            j = (j + 1) & mask
        if self.index[j] == TOMB:
            self.tombs -= 1
        self.index[j] = s

    cdef inline uint32_t find(self, const key_t* k, uint64_t h) noexcept nogil:
        cdef uint32_t mask = self.size - 1
        cdef uint32_t j = <uint32_t>h & mask
        cdef uint32_t s
        while True:
            s = self.index[j]
            if s == EMPTY:
                return EMPTY
            if s != TOMB and self.slots[s].hash == h and \
                    memcmp(&self.slots[s].key, k, sizeof(key_t)) == 0:
                return s
            j = (j + 1) & mask

    cdef inline void remove(self, uint32_t s) noexcept nogil:
        cdef uint32_t mask = self.size - 1
        cdef uint32_t j = <uint32_t>self.slots[s].hash & mask
        while self.index[j] != s:
            j = (j + 1) & mask
        self.index[j] = TOMB
        self.tombs += 1
        self.slots[s].used = 0
        self.free_list[self.nfree] = s
        self.nfree += 1
        self.active -= 1

    # ---- merging ------------------------------------------------------------------------------
    def add(self, recs, double now):
        """Merge ``recs`` (RECORD_DTYPE); returns the records that found no room."""
        cdef Py_ssize_t n = len(recs)
        if n == 0:
            return recs[:0]
        recs = np.ascontiguousarray(recs)
        cdef const uint8_t[::1] raw = recs.view(np.uint8).reshape(-1)
        cdef uint32_t[::1] over = np.empty(n, np.uint32)
        cdef uint32_t nover
        with nogil:
            nover = self.add_records(<const flow_record_t*>&raw[0], n, now, &over[0])
        if nover:
            return recs[np.asarray(over[:nover])]
        return recs[:0]

    cdef uint32_t add_records(self, const flow_record_t* recs, Py_ssize_t n, double now,
                              uint32_t* over) noexcept nogil:
        cdef Py_ssize_t i
        cdef uint32_t s, nover = 0
        cdef const flow_record_t* r
        cdef flow_record_t* st
        cdef key_t k
        cdef uint64_t h
        cdef bint swap, rev
        for i in range(n):
            r = &recs[i]
            swap = after(r)
            memset(&k, 0, sizeof(key_t))
            if swap:
                memcpy(k.a, r.dst_addr, 16)
                memcpy(k.b, r.src_addr, 16)
                k.ap, k.bp = r.dst_port, r.src_port
            else:
                memcpy(k.a, r.src_addr, 16)
                memcpy(k.b, r.dst_addr, 16)
                k.ap, k.bp = r.src_port, r.dst_port
            memcpy(k.exporter, r.exporter_addr, 16)
            k.domain = r.observation_point
            k.vlan = r.vlan
            k.proto = r.protocol
            k.ipv = r.ip_version
            h = key_hash(&k)
            s = self.find(&k, h)
            if s == EMPTY:
                if self.nfree == 0 and not self.grow():
                    over[nover] = <uint32_t>i
                    nover += 1
                    self.full += 1
                    continue
                self.nfree -= 1
                s = self.free_list[self.nfree]
                self.slots[s].key = k
                self.slots[s].hash = h
                self.slots[s].rec = r[0]
                self.slots[s].orient = swap
                self.slots[s].used = 1
                self.slots[s].created = now
                self.slots[s].updated = now
                self.active += 1
                self.created_n += 1
                if self.tombs > self.size // 4:
                    self.rebuild()
                self.insert(s)
                continue
            st = &self.slots[s].rec
            rev = swap != self.slots[s].orient
            if rev:
                st.out_bytes += r.in_bytes
                st.out_pkts += r.in_pkts
                st.in_bytes += r.out_bytes
                st.in_pkts += r.out_pkts
                st.client_tcp_flags |= r.server_tcp_flags
                st.server_tcp_flags |= r.client_tcp_flags
                st.retr_pkts_c2s += r.retr_pkts_s2c
                st.retr_pkts_s2c += r.retr_pkts_c2s
                st.retr_bytes_c2s += r.retr_bytes_s2c
                st.retr_bytes_s2c += r.retr_bytes_c2s
                st.ooo_pkts_c2s += r.ooo_pkts_s2c
                st.ooo_pkts_s2c += r.ooo_pkts_c2s
                st.zero_win_c2s += r.zero_win_s2c
                st.zero_win_s2c += r.zero_win_c2s
                st.win_max_c2s = max(st.win_max_c2s, r.win_max_s2c)
                st.win_max_s2c = max(st.win_max_s2c, r.win_max_c2s)
                st.client_nw_latency_ms = max(st.client_nw_latency_ms, r.server_nw_latency_ms)
                st.server_nw_latency_ms = max(st.server_nw_latency_ms, r.client_nw_latency_ms)
            else:
                st.in_bytes += r.in_bytes
                st.in_pkts += r.in_pkts
                st.out_bytes += r.out_bytes
                st.out_pkts += r.out_pkts
                st.client_tcp_flags |= r.client_tcp_flags
                st.server_tcp_flags |= r.server_tcp_flags
                st.retr_pkts_c2s += r.retr_pkts_c2s
                st.retr_pkts_s2c += r.retr_pkts_s2c
                st.retr_bytes_c2s += r.retr_bytes_c2s
                st.retr_bytes_s2c += r.retr_bytes_s2c
                st.ooo_pkts_c2s += r.ooo_pkts_c2s
                st.ooo_pkts_s2c += r.ooo_pkts_s2c
                st.zero_win_c2s += r.zero_win_c2s
                st.zero_win_s2c += r.zero_win_s2c
                st.win_max_c2s = max(st.win_max_c2s, r.win_max_c2s)
                st.win_max_s2c = max(st.win_max_s2c, r.win_max_s2c)
                st.client_nw_latency_ms = max(st.client_nw_latency_ms, r.client_nw_latency_ms)
                st.server_nw_latency_ms = max(st.server_nw_latency_ms, r.server_nw_latency_ms)
            # TCP health: counters add up, windows and latencies (one connection's, the same in
            # every slice) take the largest
            st.appl_latency_ms = max(st.appl_latency_ms, r.appl_latency_ms)
            st.first_ms = min(st.first_ms, r.first_ms)
            st.last_ms = max(st.last_ms, r.last_ms)
            self.slots[s].updated = now
            self.merged += 1
        return nover

    # ---- expiry -------------------------------------------------------------------------------
    def expire(self, double now):
        """Flows idle for ``idle`` seconds, then those older than ``lifetime`` (slot order)."""
        return self.take(now, False)

    def flush(self):
        """Every flow, end_reason 4."""
        return self.take(0.0, True)

    cdef object take(self, double now, bint everything):
        cdef uint32_t i, n = 0
        cdef uint8_t* reason = <uint8_t*>malloc(self.cap)
        if reason == NULL:
            raise MemoryError("flow cache")
        try:
            with nogil:
                for i in range(self.cap):
                    reason[i] = 0xFF
                    if not self.slots[i].used:
                        continue
                    if everything:
                        reason[i] = REASON_END
                    elif now - self.slots[i].updated >= self.idle:
                        reason[i] = REASON_IDLE
                    elif now - self.slots[i].created >= self.lifetime:
                        reason[i] = REASON_ACTIVE
                    else:
                        continue
                    n += 1
            out = np.zeros(n, _RECORD_DTYPE)
            if n:
                self.write(reason, out.view(np.uint8).reshape(-1), everything)
            return out
        finally:
            free(reason)

    cdef void write(self, uint8_t* reason, uint8_t[::1] out, bint everything):
        cdef flow_record_t* dst = <flow_record_t*>&out[0]
        cdef uint32_t i, j = 0
        cdef uint8_t want
        cdef int pass_
        with nogil:
            for pass_ in range(1 if everything else 2):   # idle ones first, as the reference
                want = REASON_END if everything else (REASON_IDLE if pass_ == 0 else REASON_ACTIVE)
                for i in range(self.cap):
                    if reason[i] == want:
                        dst[j] = self.slots[i].rec
                        dst[j].end_reason = want
                        j += 1
                        self.remove(i)
        self.exported += j
