# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The capture file reader: pcap and pcapng, zero-copy through mmap, one batch per call."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cimport numpy as cnp

from engine._fastpath cimport pkt_meta_t
from engine.includes.hton cimport load_be16, load_be32, load_le16, load_le32

from engine._fastpath import META_DTYPE as _META_DTYPE

cnp.import_array()


cdef class PcapReader:
    """Zero-copy reader of a pcap or pcapng file through mmap: ``next_batch`` fills a META_DTYPE
    array with offsets into ``buffer``. Raises ValueError for a file that is neither format."""
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
        return load_be32(&self.view[at]) if self.swapped else load_le32(&self.view[at])

    cdef uint16_t u16(self, Py_ssize_t at):
        return load_be16(&self.view[at]) if self.swapped else load_le16(&self.view[at])

    cdef _header(self):
        cdef uint32_t magic = load_le32(&self.view[0])
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
        bom = load_le32(&self.view[at + 8])
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
        if meta.dtype != _META_DTYPE:
            raise TypeError("meta must be of META_DTYPE")
        if self.format == "pcap":
            with nogil:
                while n < cap:
                    if pos + 16 > size:
                        if pos < size:
                            self.truncated = True
                        break
                    incl = load_be32(v + pos + 8) if sw else load_le32(v + pos + 8)
                    orig = load_be32(v + pos + 12) if sw else load_le32(v + pos + 12)
                    if pos + 16 + incl > size:
                        self.truncated = True
                        pos = size
                        break
                    ts = (<uint64_t>(load_be32(v + pos) if sw else load_le32(v + pos))) * 1000000000 + \
                         (<uint64_t>(load_be32(v + pos + 4) if sw else load_le32(v + pos + 4))) * self.ts_mul
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
