# cython: language_level=3
"""The collector's C decode: NetFlow v5, v9 and IPFIX data sets straight into RECORD_DTYPE rows.

Each template is compiled once (template.py, ``Template.compiled``) into a flat int64 program:

    header  HDR words: field count, record length (0: variable-length fields), the shortest
            record, the step count, the time fields (index and element id, -1/0 none), the
            systemInitTime field, flags (an ICMP value is assembled; the template carries the ICMP
            type) and the ip_version written when the template has none (0: none written);
    lengths one word per field (65535: variable length);
    steps   4 words each: (operation, field index, column offset in the row, width).

``decode_sets`` runs every data set of a batch (all templates together) in one call with the GIL
released; per set it takes the exporter and the header values that convert() takes as ``meta``.
template.convert() is the reference twin: tests hold the two to the same rows.

``Receiver`` reads a UDP socket with recvmmsg(2): up to SLOTS datagrams a system call into one
buffer.
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import numpy as np

from cpython.bytes cimport PyBytes_FromStringAndSize

from engine.fields import RECORD_DTYPE
from engine.includes.hton cimport load_be, load_be16, load_be32, load_be64
from engine.includes.inet cimport inet_ntop
from engine.includes.mmsg cimport AF_INET, AF_INET6, MSG_DONTWAIT, iovec, mmsghdr, recvmmsg, \
    sockaddr_storage

cdef int64_t NTP_EPOCH_OFFSET = 2208988800     # seconds from 1900 to 1970
cdef uint64_t MASK32 = 0xFFFFFFFFu

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


cdef Py_ssize_t decode_c(const uint8_t* buf, const int64_t* progs, const int64_t* sets,
                         const uint8_t* exporters, Py_ssize_t nsets, uint8_t* out,
                         Py_ssize_t cap, bint upscale, bint normalize,
                         Py_ssize_t* starts) noexcept nogil:
    cdef Py_ssize_t s, k, off, end, n = 0, nrec, r, nfields, nsteps, fi, col
    cdef const int64_t* sp
    cdef const int64_t* prog
    cdef const int64_t* lengths
    cdef const int64_t* st
    cdef const uint8_t* p
    cdef uint8_t* row
    cdef uint64_t v, icmp, samp, rate, first_v, last_v
    cdef int64_t init, first, last, flags
    cdef uint8_t proto
    for s in range(nsets):
        sp = sets + s * SET_WORDS
        prog = progs + sp[S_PROG]
        nfields = prog[H_NFIELDS]
        nsteps = prog[H_NSTEPS]
        lengths = prog + HDR
        flags = prog[H_FLAGS]
        p = buf + sp[S_OFF]
        end = sp[S_LEN]
        off = 0
        nrec = sp[S_COUNT]
        for r in range(nrec):
            if n >= cap:
                return n
            off = walk(lengths, nfields, p, off, end, starts)
            if off < 0:
                break
            row = out + n * ROW
            n += 1
            memset(row, 0, ROW)
            memcpy(row + C_EXPORTER, exporters + s * 16, 16)
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
                    store(row + col, <int>st[3], u64(p + starts[fi], lengths[fi]))
                elif st[0] == OP_COPY:
                    memcpy(row + col, p + starts[fi], st[3])
                elif st[0] == OP_EXP4:
                    memcpy(row + col, p + starts[fi], 4)
                    memset(row + col + 4, 0, 12)
                    row[C_EXPORTER_IPV] = 4
                elif st[0] == OP_EXP6:
                    memcpy(row + col, p + starts[fi], 16)
                    row[C_EXPORTER_IPV] = 6
                elif st[0] == OP_ICMP_SET:
                    icmp = u64(p + starts[fi], lengths[fi])
                elif st[0] == OP_ICMP_HI:
                    icmp = icmp + (u64(p + starts[fi], lengths[fi]) << 8)
                elif st[0] == OP_ICMP_LO:
                    icmp = icmp + u64(p + starts[fi], lengths[fi])
                elif st[0] == OP_SAMPLING:
                    v = u64(p + starts[fi], lengths[fi])
                    if v > samp:
                        samp = v
            if prog[H_IPVERSION]:
                row[C_IP_VERSION] = <uint8_t>prog[H_IPVERSION]
            if flags & FLAG_ICMP:
                store(row + C_ICMP, 2, icmp)
            if prog[H_INIT] >= 0:
                init = <int64_t>u64(p + starts[prog[H_INIT]], lengths[prog[H_INIT]])
            first = last = sp[S_EXPORT_MS]
            if prog[H_FIRST] >= 0:
                first_v = u64(p + starts[prog[H_FIRST]], lengths[prog[H_FIRST]])
                first = time_ms(first_v, prog[H_FIRST_KIND], sp[S_EXPORT_MS], sp[S_UPTIME_MS],
                                init)
            if prog[H_LAST] >= 0:
                last_v = u64(p + starts[prog[H_LAST]], lengths[prog[H_LAST]])
                last = time_ms(last_v, prog[H_LAST_KIND], sp[S_EXPORT_MS], sp[S_UPTIME_MS],
                               init)
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
            if normalize:                        # template.normalize_records
                proto = row[C_PROTOCOL]
                if proto == 1 or proto == 58:
                    if not (flags & FLAG_HAD_ICMP):
                        memcpy(row + C_ICMP, row + C_DST_PORT, 2)
                    memset(row + C_SRC_PORT, 0, 2)
                    memset(row + C_DST_PORT, 0, 2)
                if get64(row, C_FIRST) > get64(row, C_LAST):
                    put64(row, C_FIRST, get64(row, C_LAST))
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
