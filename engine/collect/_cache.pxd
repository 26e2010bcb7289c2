# C declarations of engine/collect/_cache.pyx, the collector's flow cache.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from engine._fastpath cimport flow_record_t

# The canonical key: the lower address:port end first; zeroed before it is filled, so that the
# padding compares equal. A multiple of 8 bytes (hashed a word at a time).
ctypedef struct key_t:
    uint8_t a[16]
    uint8_t b[16]
    uint8_t exporter[16]
    uint32_t domain
    uint16_t ap
    uint16_t bp
    uint16_t vlan
    uint8_t proto
    uint8_t ipv
    uint32_t pad

ctypedef struct slot_t:
    flow_record_t rec            # the merged record, in its first record's orientation
    key_t key
    uint64_t hash
    double created               # arrival times (seconds), for the timeouts
    double updated
    uint8_t orient               # the first record's src was the key's b end
    uint8_t used


cdef class FlowCache:
    cdef readonly uint32_t max_flows
    cdef readonly double idle
    cdef readonly double lifetime
    cdef slot_t* slots
    cdef uint32_t cap            # slots allocated
    cdef uint32_t* free_list     # free slots, a stack
    cdef uint32_t nfree
    cdef uint32_t* index         # open addressing: slot numbers, EMPTY or TOMB
    cdef uint32_t size           # index entries, a power of two >= 2 * cap
    cdef uint32_t tombs
    cdef uint32_t active
    cdef uint64_t merged, created_n, full, exported

    cdef bint grow(self) noexcept nogil
    cdef void rebuild(self) noexcept nogil
    cdef void insert(self, uint32_t s) noexcept nogil
    cdef uint32_t find(self, const key_t* k, uint64_t h) noexcept nogil
    cdef void remove(self, uint32_t s) noexcept nogil
    cdef uint32_t add_records(self, const flow_record_t* recs, Py_ssize_t n, double now,
                              uint32_t* over) noexcept nogil
    cdef object take(self, double now, bint everything)
    cdef void write(self, uint8_t* reason, uint8_t[::1] out, bint everything)
