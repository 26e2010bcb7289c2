# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Per-flow encoders in C: nDPI TLV records and JSON objects, straight from the record array.

Each field of a template becomes one item per record, with the same value rules as
``engine.fields.field_values`` (a field that does not apply to a record, such as an IPv6 address
on an IPv4 flow, is left out). Output is one bytes object per record, byte-identical to the
pure-Python encoders in ``engine/export/tlv.py`` and ``json`` (the tests compare them).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libc.stdlib cimport malloc, realloc, free
from cpython.bytes cimport PyBytes_FromStringAndSize

import numpy as np
cimport numpy as cnp

cnp.import_array()


cdef enum:
    AF_INET6_ = 10
    T_U8 = 2
    T_U16 = 3
    T_U32 = 4
    T_U64 = 5
    T_STRING = 11

# field kinds, as in engine.fields
cdef enum:
    K_UINT = 0
    K_SEC
    K_MS
    K_FLAGS_OR
    K_IPV4
    K_IPV6
    K_EXP_V4
    K_EXP_V6
    K_MAC
    K_BINS
    K_ICMP
    K_END_REASON
    K_TUNNEL

KINDS = {"uint": K_UINT, "sec": K_SEC, "ms": K_MS, "flags_or": K_FLAGS_OR, "ipv4": K_IPV4,
         "ipv6": K_IPV6, "exporter_v4": K_EXP_V4, "exporter_v6": K_EXP_V6, "mac": K_MAC,
         "bins": K_BINS, "icmp": K_ICMP, "end_reason": K_END_REASON, "tunnel": K_TUNNEL}

ctypedef struct spec_t:
    int kind
    int off              # column offset in the record
    int size             # bytes per element of the column (1, 2, 4, 8)
    int key_type         # TLV key type tag (T_U8, T_U16, T_U32 or T_STRING)
    int key_len          # TLV key bytes (number BE, or u16 length + text)
    uint8_t key[64]
    int json_len         # '"key":'
    char json_key[72]

ctypedef struct buf_t:
    char* p
    Py_ssize_t n
    Py_ssize_t cap


cdef int grow(buf_t* b, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = b.cap
    cdef char* p
    if b.n + need <= b.cap:
        return 0
    while cap < b.n + need:
        cap = cap * 2 if cap else 4096
    p = <char*>realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline void put(buf_t* b, const void* src, Py_ssize_t n) noexcept:
    memcpy(b.p + b.n, src, n)
    b.n += n


cdef inline void put_byte(buf_t* b, uint8_t v) noexcept:
    b.p[b.n] = <char>v
    b.n += 1


cdef inline void put_be16(buf_t* b, uint16_t v) noexcept:
    store_be16(b.p + b.n, v)
    b.n += 2


cdef inline void put_be32(buf_t* b, uint32_t v) noexcept:
    store_be32(b.p + b.n, v)
    b.n += 4


cdef inline void put_be64(buf_t* b, uint64_t v) noexcept:
    store_be64(b.p + b.n, v)
    b.n += 8


cdef const char* HEX = "0123456789abcdef"


cdef inline int utoa(uint64_t v, char* out) noexcept:
    """Decimal text of v at out (no terminator); returns its length. snprintf is several times
    slower, and a flow has dozens of numbers."""
    cdef char tmp[24]
    cdef int n = 0, i
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


cdef inline uint64_t read_uint(const uint8_t* rec, int off, int size) noexcept:
    cdef const uint8_t* q = rec + off
    if size == 1:
        return q[0]
    if size == 2:
        return (<const uint16_t*>q)[0]
    if size == 4:
        return (<const uint32_t*>q)[0]
    return (<const uint64_t*>q)[0]


cdef class Encoder:
    """TLV records and JSON objects for one template (a list of engine.fields.Field)."""
    cdef spec_t* specs
    cdef int nspecs
    cdef int off_ipver, off_expver, off_proto, off_cflags, off_sflags
    cdef object tunnels
    cdef uint8_t end_reason_code[16]

    def __cinit__(self, fields, dtype, keys, json_keys):
        """``keys``: the TLV key of each field (int id or str label); ``json_keys``: its JSON
        key text."""
        from engine.fields import END_REASON_IPFIX, TUNNELS
        cdef int i
        cdef spec_t* s
        self.nspecs = len(fields)
        self.specs = <spec_t*>malloc(max(self.nspecs, 1) * sizeof(spec_t))
        if self.specs == NULL:
            raise MemoryError()
        for i, (f, key, jkey) in enumerate(zip(fields, keys, json_keys)):
            s = &self.specs[i]
            s.kind = KINDS[f.kind]
            base = dtype.fields[f.column][0]
            s.off = dtype.fields[f.column][1]
            s.size = base.base.itemsize if base.shape else base.itemsize
            if isinstance(key, int):
                if key <= 0xFF:
                    s.key_type, kb = T_U8, bytes((key,))
                elif key <= 0xFFFF:
                    s.key_type, kb = T_U16, key.to_bytes(2, "big")
                else:
                    s.key_type, kb = T_U32, key.to_bytes(4, "big")
            else:
                t = key.encode()
                s.key_type, kb = T_STRING, len(t).to_bytes(2, "big") + t
            if len(kb) > 64:
                raise ValueError(f"field key {key!r} too long")
            s.key_len = len(kb)
            memcpy(s.key, <const char*>kb, len(kb))
            jk = b'"' + jkey.encode() + b'":'
            if len(jk) > 72:
                raise ValueError(f"field key {jkey!r} too long")
            s.json_len = len(jk)
            memcpy(s.json_key, <const char*>jk, len(jk))
        self.off_ipver = dtype.fields["ip_version"][1]
        self.off_expver = dtype.fields["exporter_ip_version"][1]
        self.off_proto = dtype.fields["protocol"][1]
        self.off_cflags = dtype.fields["client_tcp_flags"][1]
        self.off_sflags = dtype.fields["server_tcp_flags"][1]
        self.tunnels = [t.encode() for t in TUNNELS]
        for i, code in enumerate(END_REASON_IPFIX):
            self.end_reason_code[i] = code

    def __dealloc__(self):
        free(self.specs)

    # ---- one value as text, for strings (TLV) and JSON ------------------------------------
    cdef int text(self, spec_t* s, const uint8_t* rec, char* out) noexcept:
        """Writes the field's text form into out (>= 64 bytes); returns its length, or -1 when
        the field is not a text field or does not apply to this record."""
        cdef const uint8_t* q = rec + s.off
        cdef int k = s.kind
        cdef int n, i
        if k == K_IPV4 or k == K_EXP_V4:
            if rec[self.off_ipver if k == K_IPV4 else self.off_expver] != 4:
                return -1
            n = 0
            for i in range(4):
                n += utoa(q[i], out + n)
                if i < 3:
                    out[n] = 46                # '.'
                    n += 1
            return n
        if k == K_IPV6 or k == K_EXP_V6:
            if rec[self.off_ipver if k == K_IPV6 else self.off_expver] != 6:
                return -1
            if inet_ntop(AF_INET6_, q, out, 64) == NULL:
                return -1
            n = 0
            while out[n]:
                n += 1
            return n
        if k == K_MAC:
            for i in range(6):
                out[3 * i] = HEX[q[i] >> 4]
                out[3 * i + 1] = HEX[q[i] & 15]
                if i < 5:
                    out[3 * i + 2] = 58            # ':'
            return 17
        if k == K_BINS:
            n = 0
            for i in range(6):
                n += utoa((<const uint16_t*>q)[i], out + n)
                if i < 5:
                    out[n] = 44                # ','
                    n += 1
            return n
        return -1

    cdef int number(self, spec_t* s, const uint8_t* rec, uint64_t* v) noexcept:
        """The field's integer value; 0 when it has one, -1 when it does not apply."""
        cdef int k = s.kind
        if k == K_UINT or k == K_MS:
            v[0] = read_uint(rec, s.off, s.size)
        elif k == K_SEC:
            v[0] = read_uint(rec, s.off, s.size) // 1000
        elif k == K_FLAGS_OR:
            v[0] = rec[self.off_cflags] | rec[self.off_sflags]
        elif k == K_ICMP:
            if rec[self.off_proto] != 1 and rec[self.off_proto] != 58:
                return -1
            v[0] = read_uint(rec, s.off, s.size)
        elif k == K_END_REASON:
            v[0] = self.end_reason_code[rec[s.off] & 15]
        else:
            return -1
        return 0

    # ---- TLV --------------------------------------------------------------------------
    cdef void tlv_prefix(self, buf_t* b, spec_t* s, int value_type) noexcept:
        put_byte(b, <uint8_t>((s.key_type << 4) | value_type))
        put(b, s.key, s.key_len)

    cdef void tlv_string(self, buf_t* b, spec_t* s, const char* t, int n) noexcept:
        self.tlv_prefix(b, s, T_STRING)
        put_be16(b, <uint16_t>n)
        put(b, t, n)

    def tlv(self, cnp.ndarray records, bytes suffix=b"\x01"):
        """One TLV record (items then ``suffix``, which ends with the end-of-record byte) per
        flow record."""
        cdef Py_ssize_t i, nrec = records.shape[0], stride = records.dtype.itemsize
        cdef const uint8_t* base = <const uint8_t*>cnp.PyArray_DATA(records)
        cdef const uint8_t* rec
        cdef buf_t b
        cdef int j, n
        cdef uint64_t v
        cdef char txt[64]
        cdef spec_t* s
        cdef const char* sfx = suffix
        cdef Py_ssize_t sfx_len = len(suffix)
        if not records.flags.c_contiguous:
            records = np.ascontiguousarray(records)
            base = <const uint8_t*>cnp.PyArray_DATA(records)
        b.p = NULL
        b.n = b.cap = 0
        out = []
        try:
            for i in range(nrec):
                rec = base + i * stride
                b.n = 0
                grow(&b, self.nspecs * (1 + 64 + 2 + 64) + sfx_len)
                for j in range(self.nspecs):
                    s = &self.specs[j]
                    if self.number(s, rec, &v) == 0:
                        if v < 256:
                            self.tlv_prefix(&b, s, T_U8)
                            put_byte(&b, <uint8_t>v)
                        elif v < 65536:
                            self.tlv_prefix(&b, s, T_U16)
                            put_be16(&b, <uint16_t>v)
                        elif v < 4294967296:
                            self.tlv_prefix(&b, s, T_U32)
                            put_be32(&b, <uint32_t>v)
                        else:
                            self.tlv_prefix(&b, s, T_U64)
                            put_be64(&b, v)
                    elif s.kind == K_TUNNEL:
                        t = self.tunnels[rec[s.off]]
                        self.tlv_string(&b, s, <const char*>t, len(t))
                    else:
                        n = self.text(s, rec, txt)
                        if n >= 0:
                            self.tlv_string(&b, s, txt, n)
                put(&b, sfx, sfx_len)
                out.append(PyBytes_FromStringAndSize(b.p, b.n))
        finally:
            free(b.p)
        return out

    # ---- JSON -------------------------------------------------------------------------
    def json(self, cnp.ndarray records, bytes suffix=b""):
        """One JSON object per flow record; ``suffix`` (',"k":v...' or empty) is added before
        the closing brace."""
        cdef Py_ssize_t i, nrec = records.shape[0], stride = records.dtype.itemsize
        cdef const uint8_t* base = <const uint8_t*>cnp.PyArray_DATA(records)
        cdef const uint8_t* rec
        cdef buf_t b
        cdef int j, n, k
        cdef uint64_t v
        cdef char txt[80]
        cdef spec_t* s
        cdef bint first, quote
        cdef const char* sfx = suffix
        cdef Py_ssize_t sfx_len = len(suffix)
        if not records.flags.c_contiguous:
            records = np.ascontiguousarray(records)
            base = <const uint8_t*>cnp.PyArray_DATA(records)
        b.p = NULL
        b.n = b.cap = 0
        out = []
        try:
            for i in range(nrec):
                rec = base + i * stride
                b.n = 0
                grow(&b, self.nspecs * (72 + 70) + sfx_len + 4)
                put_byte(&b, ord("{"))
                first = True
                for j in range(self.nspecs):
                    s = &self.specs[j]
                    if self.number(s, rec, &v) == 0:
                        n = utoa(v, txt)
                        quote = False
                    elif s.kind == K_TUNNEL:
                        t = self.tunnels[rec[s.off]]
                        n = len(t)
                        memcpy(txt, <const char*>t, n)
                        quote = True
                    elif s.kind == K_BINS:
                        txt[0] = ord("[")
                        n = 1 + self.text(s, rec, txt + 1)
                        txt[n] = ord("]")
                        n += 1
                        quote = False
                    else:
                        n = self.text(s, rec, txt)
                        if n < 0:
                            continue
                        quote = True
                    if not first:
                        put_byte(&b, ord(","))
                    first = False
                    put(&b, s.json_key, s.json_len)
                    if quote:
                        put_byte(&b, ord('"'))
                    put(&b, txt, n)
                    if quote:
                        put_byte(&b, ord('"'))
                if sfx_len:
                    if first:
                        put(&b, sfx + 1, sfx_len - 1)    # no leading comma in an empty object
                    else:
                        put(&b, sfx, sfx_len)
                put_byte(&b, ord("}"))
                out.append(PyBytes_FromStringAndSize(b.p, b.n))
        finally:
            free(b.p)
        return out


# --- decoding ------------------------------------------------------------------------------
cdef int WIDTH[16]
WIDTH[:] = [0, 0, 1, 2, 4, 8, 1, 2, 4, 8, 4, -1, 0, 0, 0, 0]    # value bytes per type tag


def decode_tlv(const uint8_t[::1] buf):
    """TLV payload -> list of records ({key: value}), exactly as engine.export.tlv.decode (its
    pure-Python reference, compared in the tests) but at C speed: for subscribers and tools."""
    from engine.export.tlv import TLVError
    cdef Py_ssize_t n = buf.shape[0], i = 2
    cdef const uint8_t* p = &buf[0] if n else NULL
    cdef int t, kt, vt, w
    cdef Py_ssize_t ln
    cdef uint64_t u
    cdef float f
    if n < 2 or p[0] != 1 or p[1] != 1:
        raise TLVError("not a TLV payload (preamble is not 01 01)")
    out = []
    rec = {}
    while i < n:
        t = p[i]
        i += 1
        if t == 0:
            break
        if t == 1:
            if rec:
                out.append(rec)
            rec = {}
            continue
        kt = t >> 4
        vt = t & 15
        if kt == T_U8 or kt == T_U16 or kt == T_U32:
            w = WIDTH[kt]
            if i + w > n:
                raise TLVError("TLV item runs past the end of the payload")
            key = load_be(p + i, w)
            i += w
        elif kt == T_STRING:
            if i + 2 > n:
                raise TLVError("TLV item runs past the end of the payload")
            ln = <Py_ssize_t>load_be(p + i, 2)
            if i + 2 + ln > n:
                raise TLVError("TLV item runs past the end of the payload")
            key = (<const char*>p)[i + 2:i + 2 + ln].decode("utf-8", "replace")
            i += 2 + ln
        else:
            raise TLVError(f"unsupported TLV key type {kt} at offset {i - 1}")
        if vt < 2 or vt > 11:
            raise TLVError(f"unsupported TLV value type {vt} at offset {i - 1}")
        if vt == T_STRING:
            if i + 2 > n:
                raise TLVError("TLV item runs past the end of the payload")
            ln = <Py_ssize_t>load_be(p + i, 2)
            if i + 2 + ln > n:
                raise TLVError("TLV item runs past the end of the payload")
            val = (<const char*>p)[i + 2:i + 2 + ln].decode("utf-8", "replace")
            i += 2 + ln
        else:
            w = WIDTH[vt]
            if i + w > n:
                raise TLVError("TLV item runs past the end of the payload")
            u = load_be(p + i, w)
            i += w
            if vt <= T_U64:
                val = u
            elif vt == 10:                         # float: host (little-endian) byte order
                memcpy(&f, p + i - 4, 4)
                val = <double>f
            elif w == 1:
                val = <signed char>u
            elif w == 2:
                val = <short>u
            elif w == 4:
                val = <int>u
            else:
                val = <long long>u
        rec[key] = val
    if rec:
        out.append(rec)
    return out
