# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The capture file reader: pcap and pcapng, zero-copy through mmap, one batch per call.

Every record and block is walked through the bounds-checked cursor, and its lengths are checked
before anything in it is read: a length that cannot be right ends the file with a named reason
(``end_reason``, ``end_detail``), the packets before it kept. The walk runs without the GIL; a
pcapng walk looks at signals every BUDGET blocks, so a long run of blocks that carry no packet
delays a signal handler by a few milliseconds at most.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, UINT64_MAX
from libc.stdlib cimport realloc, free
from cpython.exc cimport PyErr_CheckSignals

cimport numpy as cnp

from engine._cursor cimport cursor_t, cur_init, cur_read, cur_peek, cur_skip
from engine._fastpath cimport pkt_meta_t
from engine.includes.hton cimport (load_be16, load_be32, load_be64, load_le16, load_le32,
                                   load_le64)

from engine._fastpath import META_DTYPE as _META_DTYPE

cnp.import_array()

cdef enum:
    MAX_CAPLEN = 262144          # libpcap's and Wireshark's largest packet for these link types
    BUDGET = 65536               # records or blocks walked between two looks at signals
    # pcapng block types and the least total length of each
    SHB = 0x0A0D0D0A
    IDB = 1
    OPB = 2                      # the obsolete packet block
    SPB = 3
    EPB = 6
    MIN_BLOCK = 12
    MIN_SHB = 28
    MIN_IDB = 20
    MIN_EPB = 32
    MIN_SPB = 16

# Why the walk stopped. Each code has a reason name (END_REASONS) and a text (end_detail).
cdef enum:
    GO_ON = 0                    # not at the end
    AT_END                       # the last byte was read: a clean end
    E_TRUNCATED
    E_RECORD_CAPLEN
    E_BLOCK_SHORT
    E_BLOCK_ALIGN
    E_BLOCK_TRAILER
    E_PACKET_DATA
    E_PACKET_CAPLEN
    E_OPTION
    E_BYTE_ORDER
    E_INTERFACE
    E_NO_MEMORY

# the reason names of the codes, for counting (the first two are no reason)
END_REASONS = ("", "", "truncated", "bad_record_length", "bad_block_length", "bad_block_length",
               "bad_block_length", "bad_block_length", "bad_block_length", "bad_block_length",
               "bad_section_header", "unknown_interface", "")
_DETAILS = (
    "", "",
    "the file ends inside a packet record (truncated capture)",
    "a packet record of {a} captured bytes, more than the %d a capture may hold" % MAX_CAPLEN,
    "a pcapng block of type {a:#x} whose total length of {b} bytes is less than its minimum",
    "a pcapng block of type {a:#x} whose total length of {b} bytes is not a multiple of 4",
    "a pcapng block whose two total lengths differ ({a} and {b} bytes)",
    "a pcapng packet block of {b} bytes, too short for its {a} captured bytes",
    "a pcapng packet of {a} captured bytes, more than the %d a capture may hold" % MAX_CAPLEN,
    "a pcapng option of {a} bytes that runs past its block",
    "a pcapng section header with an unknown byte-order magic {a:#010x}",
    "a pcapng packet block naming interface {a} of a section with {b} interfaces",
    "")


cdef inline uint64_t pad4(uint64_t n) noexcept nogil:
    return (n + 3) & ~(<uint64_t>3)


cdef inline uint32_t rd32(const uint8_t* p, bint swapped) noexcept nogil:
    return load_be32(p) if swapped else load_le32(p)


cdef inline uint32_t u32(const reader_t* r, const uint8_t* p) noexcept nogil:
    return load_be32(p) if r.swapped else load_le32(p)


cdef inline uint16_t u16(const reader_t* r, const uint8_t* p) noexcept nogil:
    return load_be16(p) if r.swapped else load_le16(p)


cdef inline uint64_t scale_ts(uint64_t ts, const iface_t* f) noexcept nogil:
    """A timestamp in units of 1/f.units seconds to nanoseconds, as Wireshark converts it."""
    cdef uint64_t u = f.units, secs, frac
    if u == 1000000000:
        return ts + f.offset_ns
    if u < 1000000000 and 1000000000 % u == 0:
        return ts * (1000000000 // u) + f.offset_ns
    secs = ts // u
    frac = ts % u
    if u <= UINT64_MAX // 1000000000:         # frac * 1e9 fits in 64 bits
        frac = frac * 1000000000 // u
    else:
        frac = <uint64_t>(<double>frac * 1e9 / <double>u)
    return secs * 1000000000 + frac + f.offset_ns


cdef inline int fail(reader_t* r, const uint8_t* at, int code, uint64_t a, uint64_t b) noexcept nogil:
    """The file ends at ``at`` for ``code`` (a and b: the numbers its text names)."""
    r.end_at = <size_t>(at - r.base)
    r.end_a = a
    r.end_b = b
    return code


# ---- pcap ------------------------------------------------------------------------------------
cdef Py_ssize_t walk_pcap(reader_t* r, pkt_meta_t* m, Py_ssize_t want) noexcept nogil:
    """Up to ``want`` packet records into m (every record is a packet, so the walk is as long
    as the batch); sets r.end at the end."""
    cdef cursor_t c = cur_init(r.base + r.pos, r.size - r.pos)
    cdef const uint8_t* h
    cdef const uint8_t* base = r.base       # locals: the stores into m could alias *r
    cdef bint sw = r.swapped
    cdef bint maybe_swapped = r.lengths_swapped == 1
    cdef size_t incl_at = 12 if r.lengths_swapped == 2 else 8
    cdef uint64_t frac_ns = 1000000000 // r.pcap_iface.units
    cdef uint32_t linktype = r.pcap_iface.linktype
    cdef uint32_t incl, orig
    cdef Py_ssize_t n = 0
    while n < want:
        h = cur_peek(&c, 16)
        if h == NULL:
            r.end = AT_END if c.n == 0 else fail(r, c.p, E_TRUNCATED, 0, 0)
            break
        incl = rd32(h + incl_at, sw)
        orig = rd32(h + (20 - incl_at), sw)
        if maybe_swapped and incl > orig:
            incl, orig = orig, incl
        if incl > MAX_CAPLEN:
            r.end = fail(r, h, E_RECORD_CAPLEN, incl, 0)
            break
        if not cur_skip(&c, 16 + <size_t>incl):
            r.end = fail(r, h, E_TRUNCATED, 0, 0)
            break
        m[n].ts_ns = <uint64_t>rd32(h, sw) * 1000000000 + <uint64_t>rd32(h + 4, sw) * frac_ns
        m[n].offset = <uint64_t>(h + 16 - base)
        m[n].caplen = incl
        m[n].wirelen = orig if orig >= incl else incl
        m[n].linktype = linktype
        m[n].reserved = 0
        n += 1
    r.pos = <size_t>(c.p - base)
    return n


# ---- pcapng ----------------------------------------------------------------------------------
cdef int byte_order(reader_t* r, const uint8_t* shb) noexcept nogil:
    """A section header's byte-order magic sets the order of its section (12 bytes at shb)."""
    cdef uint32_t bom = load_le32(shb + 8)
    if bom == 0x1A2B3C4D:
        r.swapped = False
    elif bom == 0x4D3C2B1A:
        r.swapped = True
    else:
        return fail(r, shb, E_BYTE_ORDER, bom, 0)
    return GO_ON


cdef int next_block(reader_t* r, cursor_t* c, const uint8_t** blk, uint32_t* btype,
                    uint32_t* blen) noexcept nogil:
    """The next block, whole and checked (the least total length of its type, a multiple of 4,
    within the file, the trailing copy of its length), consumed: GO_ON, AT_END at the end of
    the file, or the code that ends it there. A section header's length is read in the byte
    order it sets."""
    cdef const uint8_t* h = c.p
    cdef uint32_t least = MIN_BLOCK
    if c.n == 0:
        return AT_END
    if c.n < MIN_BLOCK:
        return fail(r, h, E_TRUNCATED, 0, 0)
    btype[0] = u32(r, h)                     # the section header's type reads alike both ways
    if btype[0] == SHB:
        if byte_order(r, h) != GO_ON:
            return E_BYTE_ORDER
        least = MIN_SHB
    elif btype[0] == IDB:
        least = MIN_IDB
    elif btype[0] == EPB or btype[0] == OPB:
        least = MIN_EPB
    elif btype[0] == SPB:
        least = MIN_SPB
    blen[0] = u32(r, h + 4)
    if blen[0] < least:
        return fail(r, h, E_BLOCK_SHORT, btype[0], blen[0])
    if blen[0] % 4:
        return fail(r, h, E_BLOCK_ALIGN, btype[0], blen[0])
    if blen[0] > c.n:
        return fail(r, h, E_TRUNCATED, 0, 0)
    if u32(r, h + blen[0] - 4) != blen[0]:
        return fail(r, h, E_BLOCK_TRAILER, blen[0], u32(r, h + blen[0] - 4))
    blk[0] = cur_read(c, blen[0])
    return GO_ON


cdef int interface(reader_t* r, const uint8_t* b, uint32_t blen) noexcept nogil:
    """An interface description block: link type, snap length and the options that say how its
    timestamps read (if_tsresol, if_tsoffset)."""
    cdef iface_t* f
    cdef cursor_t opts = cur_init(b + 16, blen - MIN_IDB)
    cdef const uint8_t* h
    cdef const uint8_t* v
    cdef uint16_t code, olen
    cdef uint8_t res
    cdef uint32_t k
    if r.if_count == r.if_cap:
        f = <iface_t*>realloc(r.ifaces, (r.if_cap * 2 + 4) * sizeof(iface_t))
        if f == NULL:
            return fail(r, b, E_NO_MEMORY, 0, 0)
        r.ifaces = f
        r.if_cap = r.if_cap * 2 + 4
    f = &r.ifaces[r.if_count]
    f.linktype = u16(r, b + 8)
    f.snaplen = u32(r, b + 12)
    f.units = 1000000
    f.offset_ns = 0
    while True:
        h = cur_read(&opts, 4)
        if h == NULL:
            break
        code = u16(r, h)
        olen = u16(r, h + 2)
        if code == 0:                            # opt_endofopt
            break
        v = cur_read(&opts, pad4(olen))
        if v == NULL:
            return fail(r, h, E_OPTION, olen, 0)
        if code == 9 and olen >= 1:              # if_tsresol: 10^-n, or 2^-n with bit 7 set
            res = v[0]
            if res & 0x80:
                f.units = (<uint64_t>1) << (res & 0x7F) if (res & 0x7F) < 63 else 1
            else:
                f.units = 1
                for k in range(res if res < 19 else 19):
                    f.units *= 10
        elif code == 14 and olen >= 8:           # if_tsoffset: seconds added to every stamp
            f.offset_ns = (load_be64(v) if r.swapped else load_le64(v)) * 1000000000
    r.if_count += 1
    return GO_ON


cdef Py_ssize_t walk_pcapng(reader_t* r, pkt_meta_t* m, Py_ssize_t want) noexcept nogil:
    """Up to ``want`` packets into m, at most BUDGET blocks; sets r.end at the end."""
    cdef cursor_t c = cur_init(r.base + r.pos, r.size - r.pos)
    cdef const uint8_t* b
    cdef uint32_t btype, blen, ifid, incl, orig, data_at
    cdef uint64_t ts
    cdef uint32_t budget = BUDGET
    cdef Py_ssize_t n = 0
    cdef const iface_t* f
    while n < want and budget > 0:
        budget -= 1
        r.end = next_block(r, &c, &b, &btype, &blen)
        if r.end != GO_ON:
            break
        if btype == EPB or btype == OPB:
            ifid = u32(r, b + 8) if btype == EPB else u16(r, b + 8)
            if ifid >= r.if_count:
                r.end = fail(r, b, E_INTERFACE, ifid, r.if_count)
                break
            f = &r.ifaces[ifid]
            incl = u32(r, b + 20)
            orig = u32(r, b + 24)
            data_at = 28
            ts = scale_ts(((<uint64_t>u32(r, b + 12)) << 32) | u32(r, b + 16), f)
        elif btype == SPB:                       # no timestamp; interface 0, its snap length
            if r.if_count == 0:
                r.end = fail(r, b, E_INTERFACE, 0, 0)
                break
            f = &r.ifaces[0]
            orig = u32(r, b + 8)
            incl = orig if f.snaplen == 0 or orig <= f.snaplen else f.snaplen
            data_at = 12
            ts = 0
        else:
            if btype == SHB:
                r.if_count = 0                   # a section describes its own interfaces
            elif btype == IDB:
                r.end = interface(r, b, blen)
                if r.end != GO_ON:
                    break
            continue                             # other blocks carry no packet
        if incl > MAX_CAPLEN:
            r.end = fail(r, b, E_PACKET_CAPLEN, incl, 0)
            break
        if data_at + pad4(incl) + 4 > blen:      # the data, padded, then the trailing length
            r.end = fail(r, b, E_PACKET_DATA, incl, blen)
            break
        m[n].ts_ns = ts
        m[n].offset = <uint64_t>(b + data_at - r.base)
        m[n].caplen = incl
        m[n].wirelen = orig if orig >= incl else incl
        m[n].linktype = f.linktype
        m[n].reserved = 0
        n += 1
    r.pos = <size_t>(c.p - r.base)
    return n


cdef int first_linktype(reader_t r) noexcept nogil:
    """The link type of the first interface of a pcapng file, -1 when there is none before the
    first packet (a copy of the reader walks there; packets carry their own link type)."""
    cdef cursor_t c = cur_init(r.base, r.size)
    cdef const uint8_t* b
    cdef uint32_t btype, blen
    cdef uint32_t budget = BUDGET
    while budget > 0 and next_block(&r, &c, &b, &btype, &blen) == GO_ON:
        budget -= 1
        if btype == IDB:
            return u16(&r, b + 8)
        if (btype == SHB and b != r.base) or btype == EPB or btype == OPB or btype == SPB:
            break
    return -1


cdef class PcapReader:
    """Zero-copy reader of a pcap or pcapng file through mmap: ``next_batch`` fills a META_DTYPE
    array with offsets into ``buffer``. Raises ValueError for a file that is neither format."""

    def __cinit__(self, path):
        import mmap, os
        self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        if size < 24:
            self._file.close()
            raise ValueError("not a pcap or pcapng file (only %d bytes)" % size)
        self._mmap = mmap.mmap(self._file.fileno(), 0, flags=mmap.MAP_SHARED,
                               prot=mmap.PROT_READ)
        if hasattr(self._mmap, "madvise"):
            self._mmap.madvise(mmap.MADV_SEQUENTIAL)
        self.view = self._mmap
        self.r.base = &self.view[0]
        self.r.size = size
        self.r.pos = 0
        self.r.end = GO_ON
        self.r.ifaces = NULL
        self.r.if_count = self.r.if_cap = 0
        self.packets = 0
        self.stopped = False
        self._header()

    def __dealloc__(self):
        free(self.r.ifaces)

    cdef _header(self):
        cdef uint32_t magic = load_le32(self.r.base)
        if magic in (0xA1B2C3D4, 0xA1B23C4D, 0xD4C3B2A1, 0x4D3CB2A1):
            self.format = "pcap"
            self.r.swapped = magic in (0xD4C3B2A1, 0x4D3CB2A1)
            self.r.pcap_iface.units = 1000000000 if magic in (0xA1B23C4D, 0x4D3CB2A1) else 1000000
            self.r.pcap_iface.offset_ns = 0
            self.r.pcap_iface.snaplen = u32(&self.r, self.r.base + 16)
            self.r.pcap_iface.linktype = u32(&self.r, self.r.base + 20) & 0x0FFFFFFF
            # before version 2.3 the two lengths of a record were written the other way round;
            # in 2.3 either way (libpcap and Wireshark read them so)
            major, minor = u16(&self.r, self.r.base + 4), u16(&self.r, self.r.base + 6)
            self.r.lengths_swapped = (2 if major == 2 and minor < 3 else
                                      1 if major == 2 and minor == 3 else 0)
            self.linktype = self.r.pcap_iface.linktype
            self.r.pos = 24
        elif magic == SHB:
            self.format = "pcapng"
            if byte_order(&self.r, self.r.base) != GO_ON:
                raise ValueError("not a pcapng file (byte-order magic 0x%08x)"
                                 % load_le32(self.r.base + 8))
            self.linktype = first_linktype(self.r)
        else:
            raise ValueError("not a pcap or pcapng file (magic 0x%08x)" % magic)

    def next_batch(self, cnp.ndarray meta) -> int:
        """Fill ``meta`` (META_DTYPE) with up to len(meta) packets; 0 at the end of the file,
        after a fault that ends it (``end_reason``), or once ``stop`` was called."""
        cdef pkt_meta_t* m
        cdef Py_ssize_t want = meta.shape[0], n = 0
        cdef bint pcap = self.format == "pcap"
        if meta.dtype != _META_DTYPE or not meta.flags.c_contiguous or not meta.flags.writeable:
            raise TypeError("meta must be a writable contiguous array of META_DTYPE")
        if self.r.base == NULL:
            raise ValueError("the capture is closed")
        m = <pkt_meta_t*>cnp.PyArray_DATA(meta)
        try:
            while n < want and self.r.end == GO_ON and not self.stopped:
                with nogil:
                    if pcap:
                        n += walk_pcap(&self.r, m + n, want - n)
                    else:
                        n += walk_pcapng(&self.r, m + n, want - n)
                if self.r.end == E_NO_MEMORY:
                    raise MemoryError("cannot describe %d pcapng interfaces" % self.r.if_count)
                if n < want and self.r.end == GO_ON:
                    PyErr_CheckSignals()         # a handler may stop() the reader here
        finally:
            self.packets += n
        return n

    def stop(self) -> None:
        """End the file here: this and every later next_batch return at once (for signal
        handlers; a running next_batch returns within BUDGET records)."""
        self.stopped = True

    @property
    def end_reason(self) -> str:
        """Why the file ended before its last byte: "" when it did not, else "truncated",
        "bad_record_length", "bad_block_length", "bad_section_header" or "unknown_interface"."""
        return END_REASONS[self.r.end]

    @property
    def end_detail(self) -> str:
        """What ended the file early, in one line ("" when nothing did)."""
        return _DETAILS[self.r.end].format(a=self.r.end_a, b=self.r.end_b)

    @property
    def end_offset(self) -> int:
        """Where the record or block that ended the file early starts (the file size when
        nothing did)."""
        return self.r.end_at if END_REASONS[self.r.end] else self.r.size

    @property
    def truncated(self) -> bool:
        """The file ends inside a record."""
        return self.r.end == E_TRUNCATED

    @property
    def buffer(self):
        """The whole file, for FlowTable.process (offsets in meta point into it)."""
        return self._mmap

    def close(self) -> None:
        """Release the mapping; safe to call twice."""
        self.r.base = NULL
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
