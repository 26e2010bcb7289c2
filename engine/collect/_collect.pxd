# C declarations of engine/collect/_collect.pyx: the layout of a compiled template program and of
# the per-set table (cpdef enums: template.py and collector.py build them from Python), and the
# state the per-datagram walk (Scanner) keeps in C.
from libc.stdint cimport uint8_t, uint16_t, uint64_t, int64_t

from engine.includes.mmsg cimport iovec, mmsghdr, sockaddr_storage

cpdef enum:
    # program header words
    HDR = 12
    H_NFIELDS = 0
    H_RECLEN = 1            # 0: the template has variable-length fields
    H_MINLEN = 2            # the shortest record (at least 1)
    H_NSTEPS = 3
    H_FIRST = 4             # field index of the first-packet time (-1: none)
    H_FIRST_KIND = 5        # its element id
    H_LAST = 6
    H_LAST_KIND = 7
    H_INIT = 8              # field index of systemInitTimeMilliseconds (-1: none)
    H_FLAGS = 9
    H_IPVERSION = 10        # ip_version written when the template has none (0: none written)
    FLAG_ICMP = 1           # an ICMP type/code value is assembled (written to icmp_type)
    FLAG_HAD_ICMP = 2       # the template carries the ICMP type (--disable-cache keeps it)
    # step operations: (op, field index, column offset, width), 4 words each
    STEP_WORDS = 4
    OP_INT = 1              # big-endian integer of the field's last 8 bytes at most, at width
    OP_COPY = 2             # the field's first ``width`` bytes copied
    OP_EXP4 = 3             # a relayed flow's router (IPv4): 4 bytes, the rest zeroed, version 4
    OP_EXP6 = 4             # the same for IPv6
    OP_ICMP_SET = 5         # icmpTypeCodeIPv4/6
    OP_ICMP_HI = 6          # icmpTypeIPv4/6: added shifted by 8
    OP_ICMP_LO = 7          # icmpCodeIPv4/6: added
    OP_SAMPLING = 8         # a per-record sampling interval (the largest wins)
    # the per-set table: one row of SET_WORDS int64 per data set
    SET_WORDS = 10
    S_OFF = 0               # offset of the set's records in the batch buffer
    S_LEN = 1
    S_PROG = 2              # offset of its template's program in the programs array
    S_COUNT = 3             # records (count_records)
    S_IPV = 4               # exporter address family (4/6)
    S_DOMAIN = 5
    S_EXPORT_MS = 6
    S_UPTIME_MS = 7         # -1: none (IPFIX)
    S_INIT_MS = 8           # -1: unknown
    S_SAMPLING = 9          # 1: none
    VARLEN = 65535
    SLOTS = 64              # datagrams a recvmmsg call (Receiver)


cdef class Receiver:
    cdef uint8_t* buf
    cdef mmsghdr msgs[SLOTS]
    cdef iovec iov[SLOTS]
    cdef sockaddr_storage addrs[SLOTS]
    cdef dict names
    cdef readonly unsigned long long calls
    cdef object name(self, const sockaddr_storage* sa)


cdef struct ExpState:
    # an exporter: its address for the rows, and the counters the walk adds (folded into
    # Exporter.stats by Scanner.fold)
    uint8_t addr[16]
    uint8_t ipv
    bint touched
    bint has_t
    double last_t           # arrival time of its last datagram with records
    uint64_t datagrams, nbytes, v5, v9, ipfix, records, lost, resets


cdef struct DomState:
    # an observation domain's sequence state (Domain.next_seq/last_seq, -1: None), sampling
    # interval and init time as the parsers left them
    int64_t next_seq
    int64_t last_seq
    uint64_t sampling
    int64_t init_ms
    bint dirty


cdef struct Entry:
    uint64_t key            # the key + 1 (0: empty)
    int64_t value           # a domain slot; for a template 0, -1: gone (a tombstone)
    const int64_t* prog     # the template's program (NULL: options or gone)


cdef struct Table:
    # open addressing, linear probing, at most half full
    Entry* slots
    Py_ssize_t cap
    Py_ssize_t used         # keys, tombstones included


cdef struct SetRef:
    Py_ssize_t off
    Py_ssize_t length
    Py_ssize_t count
    const int64_t* prog


cdef class Scanner:
    cdef ExpState* exps
    cdef Py_ssize_t nexp
    cdef DomState* doms
    cdef Py_ssize_t ndom
    cdef Py_ssize_t* touched        # exporter slots touched since the last fold
    cdef Py_ssize_t ntouched
    cdef Py_ssize_t* dirty          # domain slots changed since the last fold
    cdef Py_ssize_t ndirty
    cdef Table domains              # (exporter slot, version, domain id) -> domain slot
    cdef Table templates            # (domain slot, template id) -> program
    cdef SetRef* sets               # one datagram's data sets, between its check and decode
    cdef Py_ssize_t* starts
    cdef Py_ssize_t maxfields
    cdef const int64_t* v5prog
    cdef object v5ref
    cdef dict slots                 # exporter address text -> exporter slot
    cdef dict refs                  # template key -> its program array (keeps it alive)
    cdef uint64_t datagrams, flows  # Collector.totals datagrams, nf_ipfix_flows since the fold
    cdef fit(self, Py_ssize_t nfields)
    cdef int take(self, const uint8_t* p, Py_ssize_t length, Py_ssize_t eslot, double t,
                  uint8_t* out, Py_ssize_t cap, Py_ssize_t* n, Py_ssize_t* need, bint upscale,
                  bint normalize) noexcept nogil
    cdef DomState* domain(self, Py_ssize_t eslot, uint64_t version, uint64_t did,
                          Py_ssize_t* dslot) noexcept nogil
    cdef Py_ssize_t check_sets(self, const uint8_t* p, Py_ssize_t off, Py_ssize_t end,
                               Py_ssize_t dslot) noexcept nogil
