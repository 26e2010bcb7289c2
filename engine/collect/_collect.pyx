# cython: language_level=3
"""The collector's C decode: NetFlow v5, v9 and IPFIX data sets straight into RECORD_DTYPE rows.

Each template is compiled once (template.py, ``Template.compiled``) into a flat int64 program:

    header  HDR words: field count, record length (0: variable-length fields), the shortest
            record, the step count, the time fields (index and element id, -1/0 none), the
            systemInitTime field, flags (an ICMP value is assembled; the template carries the ICMP
            type) and the ip_version written when the template has none (0: none written);
    lengths one word per field (65535: variable length);
    steps   4 words each: (operation, field index, column offset in the row, width).

``Scanner.scan`` takes a batch of datagrams in order, with the GIL released: for each one that
holds only data sets of known templates, the v5/v9/IPFIX header, the set walk, the template lookup
by (exporter, domain, template id) in a hash table, the sequence accounting and the decode of its
sets (``decode_set``); it stops at the first datagram that needs the Python parsers (netflow.py,
ipfix.py: templates, options data, an unknown template, anything malformed), which keep the
Scanner's exporters, domains and templates current. ``decode_sets`` decodes the data sets those
parsers queue, every set of a batch in one call. The Python parsers with template.convert() are the
reference twin (``Collector(c_decode=False)``): tests hold the two to the same rows and counters.

``Receiver`` reads a UDP socket with recvmmsg(2): up to SLOTS datagrams a system call into one
buffer.
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

import numpy as np

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from engine.fields import RECORD_DTYPE
from engine.includes.hton cimport load_be, load_be16, load_be32, load_be64
from engine.includes.inet cimport inet_ntop
from engine.includes.mmsg cimport AF_INET, AF_INET6, MSG_DONTWAIT, iovec, mmsghdr, recvmmsg, \
    sockaddr_storage

cdef int64_t NTP_EPOCH_OFFSET = 2208988800     # seconds from 1900 to 1970
cdef uint64_t MASK32 = 0xFFFFFFFFu
cdef uint64_t SEQ_HALF = 0x80000000u      # a sequence gap this large or more is a reset

# the row's columns this module writes itself, checked against RECORD_DTYPE at import
cdef Py_ssize_t C_FIRST, C_LAST, C_IN_BYTES, C_IN_PKTS, C_OUT_BYTES, C_OUT_PKTS, C_EXPORTER, \
    C_EXPORTER_IPV, C_DOMAIN, C_FLOW_SOURCE, C_END_REASON, C_IP_VERSION, C_ICMP, C_PROTOCOL, \
    C_SRC_PORT, C_DST_PORT, ROW


def _column(name, kind, size):
    dt, off = RECORD_DTYPE.fields[name][:2]
    if dt.kind != kind or dt.itemsize != size:
        raise ImportError(f"RECORD_DTYPE.{name} is {dt}, the collector's C decode expects "
                          f"{kind}{size}")
    return off


C_FIRST = _column("first_ms", "u", 8)
C_LAST = _column("last_ms", "u", 8)
C_IN_BYTES = _column("in_bytes", "u", 8)
C_IN_PKTS = _column("in_pkts", "u", 8)
C_OUT_BYTES = _column("out_bytes", "u", 8)
C_OUT_PKTS = _column("out_pkts", "u", 8)
C_EXPORTER = _column("exporter_addr", "V", 16)
C_EXPORTER_IPV = _column("exporter_ip_version", "u", 1)
C_DOMAIN = _column("observation_point", "u", 4)
C_FLOW_SOURCE = _column("flow_source", "u", 1)
C_END_REASON = _column("end_reason", "u", 1)
C_IP_VERSION = _column("ip_version", "u", 1)
C_ICMP = _column("icmp_type", "u", 2)
C_PROTOCOL = _column("protocol", "u", 1)
C_SRC_PORT = _column("src_port", "u", 2)
C_DST_PORT = _column("dst_port", "u", 2)
ROW = RECORD_DTYPE.itemsize


cdef inline void store(uint8_t* p, int width, uint64_t v) noexcept nogil:
    # native order, truncated like numpy's assignment of a uint64 into a narrower column
    cdef uint8_t b1
    cdef uint16_t b2
    cdef unsigned int b4
    if width == 8:
        memcpy(p, &v, 8)
    elif width == 4:
        b4 = <unsigned int>v
        memcpy(p, &b4, 4)
    elif width == 2:
        b2 = <uint16_t>v
        memcpy(p, &b2, 2)
    else:
        b1 = <uint8_t>v
        p[0] = b1


cdef inline uint64_t u64(const uint8_t* p, Py_ssize_t length) noexcept nogil:
    # a field as an integer: its last 8 bytes at most, big-endian (template._as_u64)
    if length == 4:
        return load_be32(p)
    if length == 2:
        return load_be16(p)
    if length == 1:
        return p[0]
    if length >= 8:
        return load_be64(p + length - 8)
    return load_be(p, <int>length)


cdef inline uint64_t get64(const uint8_t* row, Py_ssize_t off) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, row + off, 8)
    return v


cdef inline void put64(uint8_t* row, Py_ssize_t off, uint64_t v) noexcept nogil:
    memcpy(row + off, &v, 8)


cdef inline Py_ssize_t walk(const int64_t* lengths, Py_ssize_t nfields, const uint8_t* p,
                            Py_ssize_t off, Py_ssize_t end, Py_ssize_t* starts) noexcept nogil:
    """One record's field starts from ``off``; the offset after it, or -1 when it is cut short
    (template.split_variable)."""
    cdef Py_ssize_t i, ln
    for i in range(nfields):
        ln = lengths[i]
        if ln == VARLEN:
            if off >= end:
                return -1
            ln = p[off]
            off += 1
            if ln == 255:
                if off + 2 > end:
                    return -1
                ln = (p[off] << 8) | p[off + 1]
                off += 2
            starts[i] = off
            off += ln
            if off > end:
                return -1
        else:
            if off + ln > end:
                return -1
            starts[i] = off
            off += ln
    return off


cdef Py_ssize_t count_c(const int64_t* prog, const uint8_t* p, Py_ssize_t end,
                        Py_ssize_t* starts) noexcept nogil:
    cdef Py_ssize_t reclen = prog[H_RECLEN], minlen = prog[H_MINLEN], off = 0, n = 0
    if reclen:
        return end // reclen
    while end - off >= minlen:
        off = walk(prog + HDR, prog[H_NFIELDS], p, off, end, starts)
        if off < 0:
            break
        n += 1
    return n


cdef inline int64_t time_ms(uint64_t v, int64_t kind, int64_t export_ms, int64_t uptime,
                            int64_t init) noexcept nogil:
    """A first/last time element as milliseconds since 1970 (template._times)."""
    cdef int64_t r, secs
    if kind == 21 or kind == 22:                 # sysUptime milliseconds
        if uptime >= 0:
            r = export_ms - <int64_t>((<uint64_t>uptime - v) & MASK32)
        elif init >= 0:
            r = <int64_t>(<uint64_t>init + v)
        else:
            r = export_ms
        return r if r > 0 else 0
    if kind == 150 or kind == 151:
        return <int64_t>(v * 1000)
    if kind == 152 or kind == 153:
        return <int64_t>v
    if kind >= 154 and kind <= 157:              # NTP timestamps
        secs = <int64_t>(v >> 32) - NTP_EPOCH_OFFSET
        r = secs * 1000 + <int64_t>(((v & MASK32) * 1000) >> 32)
        return r if r > 0 else 0
    if kind == 158 or kind == 159:               # delta microseconds before the export
        r = export_ms - <int64_t>(v // 1000)
        return r if r > 0 else 0
    return export_ms


cdef Py_ssize_t decode_set(const uint8_t* p, Py_ssize_t end, Py_ssize_t nrec,
                           const int64_t* prog, const int64_t* sp, const uint8_t* exporter,
                           uint8_t* out, bint upscale, bint normalize,
                           Py_ssize_t* starts) noexcept nogil:
    """Up to ``nrec`` records of one data set (``end`` bytes at ``p``) into ``out``; ``sp`` is
    its row of the set table (the header values convert() takes as meta). Returns the rows."""
    cdef Py_ssize_t k, off = 0, n = 0, r, fi, col, reclen = prog[H_RECLEN]
    cdef Py_ssize_t nfields = prog[H_NFIELDS], nsteps = prog[H_NSTEPS]
    cdef const int64_t* lengths = prog + HDR
    cdef const int64_t* st
    cdef const uint8_t* q = p               # the record's fields are at q + starts[i]
    cdef int64_t flags = prog[H_FLAGS]
    cdef uint8_t* row
    cdef uint64_t v, icmp, samp, rate, first_v, last_v
    cdef int64_t init, first, last
    cdef uint8_t proto
    if reclen:                              # fixed fields: the same starts in every record
        if walk(lengths, nfields, p, 0, reclen, starts) < 0:
            return 0
        nrec = min(nrec, end // reclen)
    for r in range(nrec):
        if reclen:
            q = p + r * reclen
        else:
            off = walk(lengths, nfields, p, off, end, starts)
            if off < 0:
                break
        row = out + n * ROW
        n += 1
        memset(row, 0, ROW)
        memcpy(row + C_EXPORTER, exporter, 16)
        row[C_EXPORTER_IPV] = <uint8_t>sp[S_IPV]
        store(row + C_DOMAIN, 4, <uint64_t>sp[S_DOMAIN])
        row[C_FLOW_SOURCE] = 1
        row[C_END_REASON] = 5
        icmp = 0
        samp = 0
        init = sp[S_INIT_MS]
        for k in range(nsteps):
            st = prog + HDR + nfields + STEP_WORDS * k
            fi = st[1]
            col = st[2]
            if st[0] == OP_INT:
                store(row + col, <int>st[3], u64(q + starts[fi], lengths[fi]))
            elif st[0] == OP_COPY:
                memcpy(row + col, q + starts[fi], st[3])
            elif st[0] == OP_EXP4:
                memcpy(row + col, q + starts[fi], 4)
                memset(row + col + 4, 0, 12)
                row[C_EXPORTER_IPV] = 4
            elif st[0] == OP_EXP6:
                memcpy(row + col, q + starts[fi], 16)
                row[C_EXPORTER_IPV] = 6
            elif st[0] == OP_ICMP_SET:
                icmp = u64(q + starts[fi], lengths[fi])
            elif st[0] == OP_ICMP_HI:
                icmp = icmp + (u64(q + starts[fi], lengths[fi]) << 8)
            elif st[0] == OP_ICMP_LO:
                icmp = icmp + u64(q + starts[fi], lengths[fi])
            elif st[0] == OP_SAMPLING:
                v = u64(q + starts[fi], lengths[fi])
                if v > samp:
                    samp = v
        if prog[H_IPVERSION]:
            row[C_IP_VERSION] = <uint8_t>prog[H_IPVERSION]
        if flags & FLAG_ICMP:
            store(row + C_ICMP, 2, icmp)
        if prog[H_INIT] >= 0:
            init = <int64_t>u64(q + starts[prog[H_INIT]], lengths[prog[H_INIT]])
        first = last = sp[S_EXPORT_MS]
        if prog[H_FIRST] >= 0:
            first_v = u64(q + starts[prog[H_FIRST]], lengths[prog[H_FIRST]])
            first = time_ms(first_v, prog[H_FIRST_KIND], sp[S_EXPORT_MS], sp[S_UPTIME_MS], init)
        if prog[H_LAST] >= 0:
            last_v = u64(q + starts[prog[H_LAST]], lengths[prog[H_LAST]])
            last = time_ms(last_v, prog[H_LAST_KIND], sp[S_EXPORT_MS], sp[S_UPTIME_MS], init)
            if prog[H_FIRST] < 0:
                first = last
        elif prog[H_FIRST] >= 0:
            last = first
        put64(row, C_FIRST, <uint64_t>first)
        put64(row, C_LAST, <uint64_t>last)
        # sampling: per record when the template carries it, else the set's (options data)
        rate = <uint64_t>sp[S_SAMPLING]
        if samp > 1:
            rate = samp
        if upscale and rate > 1:
            put64(row, C_IN_BYTES, get64(row, C_IN_BYTES) * rate)
            put64(row, C_IN_PKTS, get64(row, C_IN_PKTS) * rate)
            put64(row, C_OUT_BYTES, get64(row, C_OUT_BYTES) * rate)
            put64(row, C_OUT_PKTS, get64(row, C_OUT_PKTS) * rate)
        if normalize:                            # template.normalize_records
            proto = row[C_PROTOCOL]
            if proto == 1 or proto == 58:
                if not (flags & FLAG_HAD_ICMP):
                    memcpy(row + C_ICMP, row + C_DST_PORT, 2)
                memset(row + C_SRC_PORT, 0, 2)
                memset(row + C_DST_PORT, 0, 2)
            if get64(row, C_FIRST) > get64(row, C_LAST):
                put64(row, C_FIRST, get64(row, C_LAST))
    return n


cdef Py_ssize_t decode_c(const uint8_t* buf, const int64_t* progs, const int64_t* sets,
                         const uint8_t* exporters, Py_ssize_t nsets, uint8_t* out,
                         Py_ssize_t cap, bint upscale, bint normalize,
                         Py_ssize_t* starts) noexcept nogil:
    cdef Py_ssize_t s, n = 0
    cdef const int64_t* sp
    for s in range(nsets):
        sp = sets + s * SET_WORDS
        n += decode_set(buf + sp[S_OFF], sp[S_LEN], min(sp[S_COUNT], cap - n),
                        progs + sp[S_PROG], sp, exporters + s * 16, out + n * ROW, upscale,
                        normalize, starts)
    return n


cdef Py_ssize_t* field_starts(Py_ssize_t nfields) except NULL:
    cdef Py_ssize_t* starts = <Py_ssize_t*>malloc(max(nfields, 1) * sizeof(Py_ssize_t))
    if starts == NULL:
        raise MemoryError()
    return starts


def count_records(const int64_t[::1] prog, const uint8_t[::1] data) -> int:
    """The whole records of one data set of the template compiled into ``prog``."""
    if data.shape[0] == 0:
        return 0
    cdef Py_ssize_t* starts = field_starts(prog[H_NFIELDS])
    cdef Py_ssize_t n = count_c(&prog[0], &data[0], data.shape[0], starts)
    free(starts)
    return n


def decode_sets(const uint8_t[::1] buf, const int64_t[::1] progs, const int64_t[:, ::1] sets,
                const uint8_t[:, ::1] exporters, out, bint upscale, bint normalize) -> int:
    """Decode every data set of ``sets`` (rows of SET_WORDS, see _collect.pxd) into ``out``
    (RECORD_DTYPE), in order, with the GIL released; returns the rows written. The sets' offsets
    and counts come from the caller (collector.py), which walked them with count_records."""
    cdef Py_ssize_t nsets = sets.shape[0], cap = len(out), s, most = 1, n
    if nsets == 0 or cap == 0:
        return 0
    if exporters.shape[0] < nsets or exporters.shape[1] != 16 or sets.shape[1] != SET_WORDS:
        raise ValueError("one SET_WORDS row and one 16-byte exporter address per set")
    if out.dtype != RECORD_DTYPE:
        raise ValueError("out must be RECORD_DTYPE rows")
    for s in range(nsets):
        if sets[s, S_OFF] < 0 or sets[s, S_LEN] < 0 or sets[s, S_OFF] + sets[s, S_LEN] > buf.shape[0]:
            raise ValueError("a set lies outside the buffer")
        most = max(most, progs[sets[s, S_PROG] + H_NFIELDS])
    cdef uint8_t[::1] rows = out.view(np.uint8).reshape(-1)
    cdef const uint8_t* b = &buf[0] if buf.shape[0] else NULL
    cdef Py_ssize_t* starts = field_starts(most)
    with nogil:
        n = decode_c(b, &progs[0], &sets[0, 0], &exporters[0, 0], nsets, &rows[0], cap,
                     upscale, normalize, starts)
    free(starts)
    return n


# --- the per-datagram walk -------------------------------------------------------------------

cdef enum:
    TAKEN = 0               # Scanner.take: the datagram is counted and decoded
    BAIL = 1                # it needs the Python parsers (templates, options, unknown, malformed)
    FULL = 2                # its records do not fit in ``out``
    CHUNK = 64              # datagrams gathered (with the GIL) before a walk without it: each
                            # one past a datagram left to Python is gathered again
    MAX_SETS = 16384        # data sets in one datagram (65535 bytes of 4-byte sets at most)
    V_V5 = 0                # the version part of a domain key
    V_V9 = 1
    V_IPFIX = 2


cdef inline uint64_t mix(uint64_t k) noexcept nogil:
    # splitmix64's finaliser
    k = (k ^ (k >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    k = (k ^ (k >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return k ^ (k >> 31)


cdef Entry* lookup(const Table* t, uint64_t key) noexcept nogil:
    cdef Py_ssize_t mask = t.cap - 1, i
    cdef Entry* e
    if t.cap == 0:
        return NULL
    i = <Py_ssize_t>(mix(key) & <uint64_t>mask)
    while True:
        e = &t.slots[i]
        if e.key == key + 1:
            return e
        if e.key == 0:
            return NULL
        i = (i + 1) & mask


cdef Entry* insert(Table* t, uint64_t key) except NULL:
    """The entry of ``key``, added (value 0, no program) when it is not there; the table is
    rebuilt without its tombstones (value -1) when it would be more than half full."""
    cdef Entry* e = lookup(t, key)
    cdef Entry* old
    cdef Py_ssize_t oldcap, i, live = 0, cap = 16
    if e != NULL:
        return e
    if 2 * (t.used + 1) > t.cap:
        for i in range(t.cap):
            if t.slots[i].key and t.slots[i].value >= 0:
                live += 1
        while cap < 4 * (live + 1):
            cap *= 2
        old, oldcap = t.slots, t.cap
        t.slots = <Entry*>calloc(cap, sizeof(Entry))
        if t.slots == NULL:
            t.slots = old
            raise MemoryError()
        t.cap, t.used = cap, 0
        for i in range(oldcap):
            if old[i].key and old[i].value >= 0:
                e = insert(t, old[i].key - 1)
                e.value, e.prog = old[i].value, old[i].prog
        free(old)
    i = <Py_ssize_t>(mix(key) & <uint64_t>(t.cap - 1))
    while t.slots[i].key:
        i = (i + 1) & (t.cap - 1)
    e = &t.slots[i]
    e.key, e.value, e.prog = key + 1, 0, NULL
    t.used += 1
    return e


cdef inline void sequence(DomState* d, ExpState* e, uint64_t seq, uint64_t advance) noexcept nogil:
    """Collector.sequence with ``advance`` known."""
    cdef uint64_t gap
    if d.next_seq >= 0:
        gap = (seq - <uint64_t>d.next_seq) & MASK32
        if gap and d.last_seq >= 0 and ((seq - <uint64_t>d.last_seq) & MASK32) == advance:
            gap = 0
        if gap:
            if gap < SEQ_HALF:
                e.lost += gap
            else:
                e.resets += 1
    d.next_seq = <int64_t>((seq + advance) & MASK32)
    d.last_seq = <int64_t>seq


cdef void* grow(void* p, Py_ssize_t n, size_t size) except NULL:
    """``p`` (malloc'ed) grown to 2n items of ``size`` when the item count about to be reached,
    ``n``, is a power of two: it then always has room for n."""
    cdef void* q
    if n & (n - 1):
        return p
    q = realloc(p, 2 * n * size)
    if q == NULL:
        raise MemoryError()
    return q


cdef class Scanner:
    """The collector's per-datagram work in C: the NetFlow v5/v9 and IPFIX headers, the set walk,
    the template lookup by (exporter, domain, template id), the sequence accounting and the decode
    of the data sets, for every datagram that holds only data sets of known templates, with the
    GIL released. Every other datagram (templates, options data, an unknown template, anything
    malformed) is left to the Python parsers, which keep this state current through
    add_exporter, add_domain, set_template and set_domain (collector.py); fold() hands back what
    the walk counted."""

    def __cinit__(self):
        self.sets = <SetRef*>malloc(MAX_SETS * sizeof(SetRef))
        self.starts = <Py_ssize_t*>malloc(sizeof(Py_ssize_t))
        self.exps = <ExpState*>malloc(sizeof(ExpState))
        self.touched = <Py_ssize_t*>malloc(sizeof(Py_ssize_t))
        self.doms = <DomState*>malloc(sizeof(DomState))
        self.dirty = <Py_ssize_t*>malloc(sizeof(Py_ssize_t))
        if self.sets == NULL or self.starts == NULL or self.exps == NULL or \
                self.touched == NULL or self.doms == NULL or self.dirty == NULL:
            raise MemoryError()
        self.maxfields = 1

    def __init__(self, v5prog):
        cdef const int64_t[::1] prog = v5prog
        self.slots = {}
        self.refs = {}
        self.v5ref = v5prog
        self.v5prog = &prog[0]
        self.fit(prog[H_NFIELDS])

    def __dealloc__(self):
        free(self.sets)
        free(self.starts)
        free(self.exps)
        free(self.touched)
        free(self.doms)
        free(self.dirty)
        free(self.domains.slots)
        free(self.templates.slots)

    cdef fit(self, Py_ssize_t nfields):
        cdef Py_ssize_t* p
        if nfields > self.maxfields:
            p = <Py_ssize_t*>realloc(self.starts, nfields * sizeof(Py_ssize_t))
            if p == NULL:
                raise MemoryError()
            self.starts, self.maxfields = p, nfields

    # --- the state, kept by the Python parsers ---------------------------------------------
    def add_exporter(self, str name, bytes addr16, int ipv) -> int:
        """A new exporter (datagrams from address text ``name``); its slot."""
        cdef Py_ssize_t slot = self.nexp
        cdef ExpState* e
        if len(addr16) != 16:
            raise ValueError("a 16-byte exporter address")
        self.exps = <ExpState*>grow(self.exps, slot + 1, sizeof(ExpState))
        self.touched = <Py_ssize_t*>grow(self.touched, slot + 1, sizeof(Py_ssize_t))
        self.nexp += 1
        e = &self.exps[slot]
        memset(e, 0, sizeof(ExpState))
        memcpy(e.addr, <const char*>addr16, 16)
        e.ipv = ipv
        self.slots[name] = slot
        return slot

    def add_domain(self, Py_ssize_t eslot, int version, uint64_t did) -> int:
        """A new domain of exporter ``eslot`` (version 5, 9 or 10); its slot, -1 for one the walk
        leaves to Python (sFlow)."""
        cdef uint64_t v = V_V5 if version == 5 else V_V9 if version == 9 else \
            V_IPFIX if version == 10 else 3
        cdef Py_ssize_t slot = self.ndom
        cdef Entry* en
        if v == 3 or eslot >= self.nexp or did > MASK32:
            return -1
        en = insert(&self.domains, (<uint64_t>eslot << 34) | (v << 32) | did)
        self.doms = <DomState*>grow(self.doms, slot + 1, sizeof(DomState))
        self.dirty = <Py_ssize_t*>grow(self.dirty, slot + 1, sizeof(Py_ssize_t))
        self.ndom += 1
        en.value = slot
        self.doms[slot] = DomState(-1, -1, 1, -1, False)
        return slot

    def set_domain(self, Py_ssize_t dslot, next_seq, last_seq, uint64_t sampling,
                   int64_t init_ms) -> None:
        """Domain ``dslot`` as the Python parsers left it (sequence numbers None: unknown)."""
        cdef DomState* d
        if dslot < 0 or dslot >= self.ndom:
            return
        d = &self.doms[dslot]
        d.next_seq = -1 if next_seq is None else <int64_t>next_seq
        d.last_seq = -1 if last_seq is None else <int64_t>last_seq
        d.sampling = sampling
        d.init_ms = init_ms

    def set_template(self, Py_ssize_t dslot, int tid, prog) -> None:
        """Template ``tid`` of domain ``dslot``: its compiled program, or None (gone, or an
        options template: its data sets are parsed in Python)."""
        cdef uint64_t key = (<uint64_t>dslot << 16) | <uint16_t>tid
        cdef const int64_t[::1] words
        cdef Entry* en
        if dslot < 0 or dslot >= self.ndom:
            return
        if prog is None:
            en = lookup(&self.templates, key)
            if en != NULL:
                en.value, en.prog = -1, NULL
            self.refs.pop(key, None)
            return
        words = prog
        self.fit(words[H_NFIELDS])
        en = insert(&self.templates, key)
        en.value, en.prog = 0, &words[0]
        self.refs[key] = prog

    def fold(self) -> tuple:
        """What the walk counted since the last fold: (exporters, domains, datagrams, flows), the
        exporters as (slot, datagrams, bytes, netflow_v5, netflow_v9, ipfix, records, lost,
        sequence_resets, time of the last datagram with records or None), the domains as
        (slot, next_seq, last_seq, None for unknown)."""
        cdef Py_ssize_t i
        cdef ExpState* e
        cdef DomState* d
        exps = []
        for i in range(self.ntouched):
            e = &self.exps[self.touched[i]]
            exps.append((self.touched[i], e.datagrams, e.nbytes, e.v5, e.v9, e.ipfix, e.records,
                         e.lost, e.resets, e.last_t if e.has_t else None))
            e.datagrams = e.nbytes = e.v5 = e.v9 = e.ipfix = e.records = e.lost = e.resets = 0
            e.touched = e.has_t = False
        doms = []
        for i in range(self.ndirty):
            d = &self.doms[self.dirty[i]]
            doms.append((self.dirty[i], None if d.next_seq < 0 else d.next_seq,
                         None if d.last_seq < 0 else d.last_seq))
            d.dirty = False
        out = (exps, doms, self.datagrams, self.flows)
        self.ntouched = self.ndirty = 0
        self.datagrams = self.flows = 0
        return out

    # --- the walk ------------------------------------------------------------------------------
    def scan(self, list datagrams, Py_ssize_t start, out, Py_ssize_t n, bint upscale,
             bint normalize) -> tuple:
        """Datagrams from ``start`` on, (payload bytes, exporter address text, arrival time), in
        order, their records written to ``out`` (RECORD_DTYPE) from row ``n``, until one is left
        to Python or does not fit. Returns (index of the first datagram not taken, rows in
        ``out``, rows that datagram needs: 0 when it is Python's)."""
        cdef const uint8_t* ptrs[CHUNK]
        cdef Py_ssize_t lens[CHUNK]
        cdef Py_ssize_t eslots[CHUNK]
        cdef double times[CHUNK]
        cdef Py_ssize_t total = len(datagrams), i = start, m, k, need = 0, cap = len(out)
        cdef uint8_t* rows
        cdef int status = TAKEN
        cdef uint8_t[::1] view
        if out.dtype != RECORD_DTYPE:
            raise ValueError("out must be RECORD_DTYPE rows")
        if n < 0 or n > cap:
            raise ValueError("n lies outside out")
        view = out.view(np.uint8).reshape(-1) if cap else None
        rows = &view[0] if cap else NULL
        while i < total:
            m = 0
            while m < CHUNK and i + m < total:      # gathered with the GIL, walked without it
                item = datagrams[i + m]
                if type(item) is not tuple or len(<tuple>item) != 3:
                    break
                data, addr, t = <tuple>item
                if type(data) is not bytes or type(t) is not float:
                    break
                slot = self.slots.get(addr)
                if slot is None:
                    break
                ptrs[m] = <const uint8_t*>PyBytes_AS_STRING(data)
                lens[m] = PyBytes_GET_SIZE(data)
                if lens[m] < 4 or ptrs[m][0] != 0 or not (ptrs[m][1] == 5 or ptrs[m][1] == 9
                                                         or ptrs[m][1] == 10):
                    break                           # sFlow, or no NetFlow/IPFIX: Python's
                eslots[m] = slot
                times[m] = t
                m += 1
            if m == 0:
                break
            with nogil:
                for k in range(m):
                    status = self.take(ptrs[k], lens[k], eslots[k], times[k], rows, cap, &n,
                                       &need, upscale, normalize)
                    if status != TAKEN:
                        break
            if status != TAKEN:
                i += k
                break
            i += m
            if m < CHUNK:
                break
        return i, n, need if status == FULL else 0

    cdef DomState* domain(self, Py_ssize_t eslot, uint64_t version, uint64_t did,
                          Py_ssize_t* dslot) noexcept nogil:
        cdef Entry* en = lookup(&self.domains, (<uint64_t>eslot << 34) | (version << 32) | did)
        if en == NULL:
            return NULL
        dslot[0] = en.value
        return &self.doms[en.value]

    cdef Py_ssize_t check_sets(self, const uint8_t* p, Py_ssize_t off, Py_ssize_t end,
                               Py_ssize_t dslot) noexcept nogil:
        """The data sets of ``p[off:end]`` into ``sets`` with their records; -1 when one is not a
        data set of a known template (the parsers count and hold what needs it), or malformed."""
        cdef Py_ssize_t nsets = 0, slen
        cdef uint64_t sid
        cdef Entry* en
        cdef SetRef* sr
        while end - off >= 4:
            sid = load_be16(p + off)
            slen = load_be16(p + off + 2)
            if slen < 4 or off + slen > end or sid < 256 or nsets == MAX_SETS:
                return -1
            en = lookup(&self.templates, (<uint64_t>dslot << 16) | sid)
            if en == NULL or en.prog == NULL:
                return -1
            sr = &self.sets[nsets]
            nsets += 1
            sr.off, sr.length, sr.prog = off + 4, slen - 4, en.prog
            sr.count = count_c(en.prog, p + off + 4, slen - 4, self.starts) if slen > 4 else 0
            off += slen
        return nsets

    cdef int take(self, const uint8_t* p, Py_ssize_t length, Py_ssize_t eslot, double t,
                  uint8_t* out, Py_ssize_t cap, Py_ssize_t* n, Py_ssize_t* need, bint upscale,
                  bint normalize) noexcept nogil:
        """One datagram (netflow.parse_v5, parse_v9, ipfix.parse_ipfix when nothing in it needs
        Python): BAIL before anything is counted, FULL, or TAKEN, counted and decoded."""
        cdef ExpState* e = &self.exps[eslot]
        cdef DomState* d
        cdef Py_ssize_t dslot = 0, nsets = 0, s, count = 0, end = length
        cdef uint64_t seq, advance, did, rate
        cdef int64_t sp[SET_WORDS]
        if length < 4 or p[0] != 0:
            return BAIL
        if p[1] == 9:
            if length < 20:
                return BAIL
            did = load_be32(p + 16)
            d = self.domain(eslot, V_V9, did, &dslot)
            if d == NULL:
                return BAIL
            nsets = self.check_sets(p, 20, length, dslot)
            if nsets < 0:
                return BAIL
            seq = load_be32(p + 12)
            advance = 1
            sp[S_UPTIME_MS] = load_be32(p + 4)
            sp[S_EXPORT_MS] = <int64_t>load_be32(p + 8) * 1000
            sp[S_INIT_MS] = -1
            sp[S_SAMPLING] = <int64_t>d.sampling
        elif p[1] == 10:
            if length < 16:
                return BAIL
            end = load_be16(p + 2)
            if end < 16 or end > length:
                return BAIL
            did = load_be32(p + 12)
            d = self.domain(eslot, V_IPFIX, did, &dslot)
            if d == NULL:
                return BAIL
            nsets = self.check_sets(p, 16, end, dslot)
            if nsets < 0:
                return BAIL
            seq = load_be32(p + 8)
            advance = 0
            for s in range(nsets):
                advance += <uint64_t>self.sets[s].count
            sp[S_UPTIME_MS] = -1
            sp[S_EXPORT_MS] = <int64_t>load_be32(p + 4) * 1000
            sp[S_INIT_MS] = d.init_ms
            sp[S_SAMPLING] = <int64_t>d.sampling
        elif p[1] == 5:
            if length < 24:
                return BAIL
            count = load_be16(p + 2)
            if count == 0 or count > 30 or length < 24 + 48 * count:
                return BAIL
            did = (<uint64_t>p[20] << 8) | p[21]
            d = self.domain(eslot, V_V5, did, &dslot)
            if d == NULL:
                return BAIL
            nsets = 1
            self.sets[0] = SetRef(24, 48 * count, count, self.v5prog)
            seq = load_be32(p + 16)
            advance = count
            rate = load_be16(p + 22) & 0x3FFF
            sp[S_UPTIME_MS] = load_be32(p + 4)
            sp[S_EXPORT_MS] = <int64_t>load_be32(p + 8) * 1000 + load_be32(p + 12) // 1000000
            sp[S_INIT_MS] = -1
            sp[S_SAMPLING] = <int64_t>(rate if rate > 1 else 1)
        else:
            return BAIL
        count = 0
        for s in range(nsets):
            count += self.sets[s].count
        if count > cap - n[0]:
            need[0] = count
            return FULL
        # taken: counted as the parsers count it
        self.datagrams += 1
        if not e.touched:
            e.touched = True
            self.touched[self.ntouched] = eslot
            self.ntouched += 1
        e.datagrams += 1
        e.nbytes += <uint64_t>length
        if p[1] == 9:
            e.v9 += 1
        elif p[1] == 10:
            e.ipfix += 1
        else:
            e.v5 += 1
        sequence(d, e, seq, advance)
        if not d.dirty:
            d.dirty = True
            self.dirty[self.ndirty] = dslot
            self.ndirty += 1
        sp[S_IPV] = e.ipv
        sp[S_DOMAIN] = <int64_t>did
        for s in range(nsets):
            if self.sets[s].count:
                n[0] += decode_set(p + self.sets[s].off, self.sets[s].length, self.sets[s].count,
                                   self.sets[s].prog, sp, e.addr, out + n[0] * ROW, upscale,
                                   normalize, self.starts)
        if count:
            e.records += <uint64_t>count
            self.flows += <uint64_t>count
            e.has_t = True
            e.last_t = t
        return TAKEN


cdef enum:
    SLOT_BYTES = 65536       # more than any UDP payload: nothing is cut


cdef class Receiver:
    """recvmmsg(2) on UDP sockets: up to SLOTS datagrams a system call into one buffer (the GIL
    released), each handed on as (payload bytes, sender address text, arrival time)."""
    def __cinit__(self):
        self.buf = <uint8_t*>malloc(SLOTS * SLOT_BYTES)
        if self.buf == NULL:
            raise MemoryError()

    def __init__(self):
        self.names = {}
        self.calls = 0

    def __dealloc__(self):
        free(self.buf)

    cdef object name(self, const sockaddr_storage* sa):
        # the sender as text, cached by its address bytes (sockaddr_in: the address at offset
        # 4; sockaddr_in6: at 8)
        cdef const uint8_t* raw = <const uint8_t*>sa
        cdef char text[64]
        cdef int af = sa.ss_family
        cdef bytes key
        if af == AF_INET:
            key = PyBytes_FromStringAndSize(<const char*>raw + 4, 4)
        elif af == AF_INET6:
            key = PyBytes_FromStringAndSize(<const char*>raw + 8, 16)
        else:
            return "0.0.0.0"
        got = self.names.get(key)
        if got is None:
            if inet_ntop(af, raw + (4 if af == AF_INET else 8), text, 64) == NULL:
                return "0.0.0.0"
            got = text.decode()
            if len(self.names) < 65536:
                self.names[key] = got
        return got

    def receive(self, int fd, double now, list out, int limit) -> int:
        """Up to ``limit`` datagrams queued on ``fd`` appended to ``out``; the number read
        (stops when the socket is drained or fails: EAGAIN, EINTR, an error queued on it)."""
        cdef int total = 0, want, n, i
        while total < limit:
            want = min(<int>SLOTS, limit - total)
            for i in range(want):
                self.iov[i].iov_base = self.buf + <Py_ssize_t>i * SLOT_BYTES
                self.iov[i].iov_len = SLOT_BYTES
                self.msgs[i].msg_hdr.msg_name = &self.addrs[i]
                self.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
                self.msgs[i].msg_hdr.msg_iovlen = 1
                self.msgs[i].msg_hdr.msg_control = NULL
                self.msgs[i].msg_hdr.msg_controllen = 0
                self.msgs[i].msg_hdr.msg_flags = 0
            with nogil:
                n = recvmmsg(fd, self.msgs, want, MSG_DONTWAIT, NULL)
            self.calls += 1
            if n <= 0:
                break
            for i in range(n):
                out.append((PyBytes_FromStringAndSize(
                    <const char*>self.buf + <Py_ssize_t>i * SLOT_BYTES, self.msgs[i].msg_len),
                    self.name(&self.addrs[i]), now))
            total += n
            if n < want:
                break
        return total
