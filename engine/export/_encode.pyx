# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Per-flow encoders in C: nDPI TLV records and JSON objects, straight from the record array.

Each field of a template becomes one item per record, with the same value rules as
``engine.fields.field_values`` (a field that does not apply to a record, such as an IPv6 address
on an IPv4 flow, is left out). Output is one bytes object per record, byte-identical to the
pure-Python encoders in ``engine/export/tlv.py`` and ``json`` (the tests compare them).
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, INT64_MAX, INT64_MIN
from libc.string cimport memcpy, memset
from libc.stdio cimport snprintf
from libc.stdlib cimport malloc, realloc, free
from cpython.bytes cimport PyBytes_FromStringAndSize

cimport cython
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

# the value kinds of engine.fields.Kind: the C codec of each (checked against it at import)
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
    K_OUTER_VLAN
    K_TCP
    K_L7_PROTO
    K_L7_NAME


def _check_kinds():
    from engine.fields import Kind
    ours = {"UINT": K_UINT, "SEC": K_SEC, "MS": K_MS, "FLAGS_OR": K_FLAGS_OR, "IPV4": K_IPV4,
            "IPV6": K_IPV6, "EXPORTER_V4": K_EXP_V4, "EXPORTER_V6": K_EXP_V6, "MAC": K_MAC,
            "BINS": K_BINS, "ICMP": K_ICMP, "END_REASON": K_END_REASON, "TUNNEL": K_TUNNEL,
            "OUTER_VLAN": K_OUTER_VLAN, "TCP": K_TCP, "L7_PROTO": K_L7_PROTO,
            "L7_NAME": K_L7_NAME}
    if ours != {k.name: k.value for k in Kind}:
        raise ImportError("engine.export._encode: value kinds out of step with engine.fields.Kind "
                          "(rebuild the extension)")


_check_kinds()

ctypedef struct spec_t:
    int kind
    int off              # column offset in the record
    int size             # bytes per element of the column (1, 2, 4, 8)
    int key_type         # TLV key type tag (T_U8, T_U16, T_U32 or T_STRING)
    int key_len          # TLV key bytes (number BE, or u16 length + text)
    uint8_t key[64]
    int json_len         # '"key":'
    char json_key[72]
    int mp_len           # the msgpack key (a str)
    uint8_t mp_key[72]
    int csv_len          # the field's name, for the CSV header
    char csv_name[64]

ctypedef struct buf_t:
    char* p
    Py_ssize_t n
    Py_ssize_t cap


# message formats of Encoder.messages (engine.options.MessageFormat)
cdef enum:
    F_TLV = 0
    F_JSON = 1
    F_MSGPACK = 2

MESSAGE_FORMATS = {"tlv": F_TLV, "json": F_JSON, "msgpack": F_MSGPACK}


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


cdef inline void put_be(buf_t* b, uint64_t v, int width) noexcept:
    """v big-endian in 2, 4 or 8 bytes (the shared byte-order header)."""
    if width == 2:
        store_be16(b.p + b.n, <uint16_t>v)
    elif width == 4:
        store_be32(b.p + b.n, <uint32_t>v)
    else:
        store_be64(b.p + b.n, v)
    b.n += width


cdef const char* HEX = "0123456789abcdef"


cdef const char* DIGITS2 = ("00010203040506070809101112131415161718192021222324252627282930313233343536"
                            "37383940414243444546474849505152535455565758596061626364656667686970717273"
                            "7475767778798081828384858687888990919293949596979899")


cdef inline int utoa(uint64_t v, char* out) noexcept nogil:
    """Decimal text of v at out (no terminator); returns its length, two digits a step.
    snprintf is several times slower, and a flow has dozens of numbers."""
    cdef char tmp[24]
    cdef int n = 24, k, d
    if v < 10:
        out[0] = <char>(48 + v)
        return 1
    while v >= 100:
        d = <int>(v % 100) * 2
        v //= 100
        n -= 2
        tmp[n] = DIGITS2[d]
        tmp[n + 1] = DIGITS2[d + 1]
    if v >= 10:
        d = <int>v * 2
        n -= 2
        tmp[n] = DIGITS2[d]
        tmp[n + 1] = DIGITS2[d + 1]
    else:
        n -= 1
        tmp[n] = <char>(48 + v)
    k = 24 - n
    memcpy(out, tmp + n, k)
    return k


cdef inline void put_uint_text(buf_t* b, uint64_t v) noexcept:
    b.n += utoa(v, b.p + b.n)


@cython.final
cdef class L7Names:
    """nDPI's protocol names (engine.fields.l7_names) as C strings, and the two L7 texts of a
    record: "M.A" / "A" ids and "Master.App" / "App" names (master 0: one protocol)."""
    cdef object names            # bytes objects, which own the texts
    cdef const char** text
    cdef int* length
    cdef int count
    cdef int off_master, off_app

    def __cinit__(self, dtype, bint names):
        """``names``: load nDPI's names (a detection module is built once per process for
        them), for a template with L7_PROTO_NAME."""
        from engine.fields import l7_names
        cdef int i
        self.names = [n.encode() for n in l7_names()] if names else []
        self.count = len(self.names)
        self.text = <const char**>malloc(max(self.count, 1) * sizeof(char*))
        self.length = <int*>malloc(max(self.count, 1) * sizeof(int))
        if self.text == NULL or self.length == NULL:
            raise MemoryError()
        for i in range(self.count):
            self.text[i] = <const char*>(<bytes>self.names[i])
            self.length[i] = len(self.names[i])
        self.off_master = dtype.fields["l7_master"][1]
        self.off_app = dtype.fields["l7_app"][1]

    def __dealloc__(self):
        free(self.text)
        free(self.length)

    cdef inline int name(self, uint16_t id, char* out) noexcept nogil:
        if id < self.count:
            memcpy(out, self.text[id], self.length[id])
            return self.length[id]
        return utoa(id, out)

    cdef inline int ids(self, const uint8_t* rec, char* out) noexcept nogil:
        """At most 11 bytes."""
        cdef uint16_t m = (<const uint16_t*>(rec + self.off_master))[0]
        cdef uint16_t a = (<const uint16_t*>(rec + self.off_app))[0]
        cdef int n = 0
        if m:
            n = utoa(m, out)
            out[n] = 46                            # '.'
            n += 1
        return n + utoa(a, out + n)

    cdef inline int names_of(self, const uint8_t* rec, char* out) noexcept nogil:
        """At most 63 bytes (names are cut to 31 bytes)."""
        cdef uint16_t m = (<const uint16_t*>(rec + self.off_master))[0]
        cdef uint16_t a = (<const uint16_t*>(rec + self.off_app))[0]
        cdef int n = 0
        if m:
            n = self.name(m, out)
            out[n] = 46
            n += 1
        return n + self.name(a, out + n)


cdef inline uint64_t read_uint(const uint8_t* rec, int off, int size) noexcept nogil:
    cdef const uint8_t* q = rec + off
    if size == 1:
        return q[0]
    if size == 2:
        return (<const uint16_t*>q)[0]
    if size == 4:
        return (<const uint32_t*>q)[0]
    return (<const uint64_t*>q)[0]


# --- msgpack (what msgpack-python's Packer(use_bin_type=True) writes for the same values) -----
cdef inline void mp_uint(buf_t* b, uint64_t v) noexcept:
    if v < 128:
        put_byte(b, <uint8_t>v)
    elif v <= 0xFF:
        put_byte(b, 0xcc)
        put_byte(b, <uint8_t>v)
    elif v <= 0xFFFF:
        put_byte(b, 0xcd)
        put_be(b, v, 2)
    elif v <= 0xFFFFFFFF:
        put_byte(b, 0xce)
        put_be(b, v, 4)
    else:
        put_byte(b, 0xcf)
        put_be(b, v, 8)


cdef inline void mp_str(buf_t* b, const char* t, Py_ssize_t n) noexcept:
    if n < 32:
        put_byte(b, <uint8_t>(0xa0 | n))
    elif n < 256:
        put_byte(b, 0xd9)
        put_byte(b, <uint8_t>n)
    else:
        put_byte(b, 0xda)
        put_be(b, n, 2)
    put(b, t, n)


cdef inline void mp_map_header(buf_t* b, Py_ssize_t n) noexcept:
    if n < 16:
        put_byte(b, <uint8_t>(0x80 | n))
    else:
        put_byte(b, 0xde)
        put_be(b, n, 2)


cdef inline void mp_array_header(buf_t* b, Py_ssize_t n) noexcept:
    if n < 16:
        put_byte(b, <uint8_t>(0x90 | n))
    elif n < 65536:
        put_byte(b, 0xdc)
        put_be(b, n, 2)
    else:
        put_byte(b, 0xdd)
        put_be(b, n, 4)


cdef inline const uint8_t* records_data(cnp.ndarray records) except NULL:
    if not records.flags.c_contiguous:
        raise ValueError("records must be a contiguous RECORD_DTYPE array")
    return <const uint8_t*>cnp.PyArray_DATA(records) if records.shape[0] else <const uint8_t*>""


@cython.final
cdef class Encoder:
    """Flow records in the message and dump formats, for one template (a list of
    engine.fields.Field): nDPI TLV records, JSON objects, msgpack maps, CSV rows; whole messages
    below a size and flow limit; JSON lines and CSV for the dumps."""
    cdef spec_t* specs
    cdef int nspecs
    cdef int off_ipver, off_expver, off_proto, off_cflags, off_sflags
    cdef object tunnels
    cdef L7Names l7
    cdef uint8_t end_reason_code[16]
    cdef Py_ssize_t stride

    def __cinit__(self, fields, dtype, keys, json_keys):
        """``keys``: the TLV key of each field (int id or str label); ``json_keys``: its JSON
        key text. msgpack and CSV use the field names."""
        from engine.fields import END_REASON_IPFIX, TUNNELS
        cdef int i
        cdef spec_t* s
        self.nspecs = len(fields)
        self.stride = dtype.itemsize
        self.specs = <spec_t*>malloc(max(self.nspecs, 1) * sizeof(spec_t))
        if self.specs == NULL:
            raise MemoryError()
        for i, (f, key, jkey) in enumerate(zip(fields, keys, json_keys)):
            s = &self.specs[i]
            s.kind = int(f.kind)
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
            name = f.name.encode()
            if len(jk) > 72 or len(name) > 60:
                raise ValueError(f"field key {jkey!r} too long")
            s.json_len = len(jk)
            memcpy(s.json_key, <const char*>jk, len(jk))
            mk = (bytes((0xa0 | len(name),)) if len(name) < 32 else bytes((0xd9, len(name)))) + name
            s.mp_len = len(mk)
            memcpy(s.mp_key, <const char*>mk, len(mk))
            s.csv_len = len(name)
            memcpy(s.csv_name, <const char*>name, len(name))
        self.off_ipver = dtype.fields["ip_version"][1]
        self.off_expver = dtype.fields["exporter_ip_version"][1]
        self.off_proto = dtype.fields["protocol"][1]
        self.off_cflags = dtype.fields["client_tcp_flags"][1]
        self.off_sflags = dtype.fields["server_tcp_flags"][1]
        self.tunnels = [t.encode() for t in TUNNELS]
        self.l7 = L7Names(dtype, any(int(f.kind) == K_L7_NAME for f in fields))
        for i, code in enumerate(END_REASON_IPFIX):
            self.end_reason_code[i] = code

    def __dealloc__(self):
        free(self.specs)

    # ---- one value --------------------------------------------------------------------
    cdef inline int text(self, spec_t* s, const uint8_t* rec, char* out) noexcept:
        """Writes the field's text form into out (>= 64 bytes); returns its length, or -1 when
        the field is not a text field or does not apply to this record. BINS: a,b,c,d,e,f."""
        cdef const uint8_t* q = rec + s.off
        cdef int k = s.kind
        cdef int n, i
        cdef bytes t
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
        if k == K_TUNNEL:
            t = <bytes>self.tunnels[q[0]]
            memcpy(out, <const char*>t, len(t))
            return len(t)
        if k == K_L7_PROTO:
            return self.l7.ids(rec, out)
        if k == K_L7_NAME:
            return self.l7.names_of(rec, out)
        return -1

    cdef inline int number(self, spec_t* s, const uint8_t* rec, uint64_t* v) noexcept:
        """The field's integer value; 0 when it has one, -1 when it does not apply."""
        cdef int k = s.kind
        if k == K_UINT or k == K_MS or k == K_OUTER_VLAN:
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
        elif k == K_TCP:
            if rec[self.off_proto] != 6:
                return -1
            v[0] = read_uint(rec, s.off, s.size)
        else:
            return -1
        return 0

    # ---- one record in each format (the buffer has room: see room()) -----------------
    cdef Py_ssize_t room(self, Py_ssize_t suffix_len) noexcept:
        return self.nspecs * (1 + 72 + 3 + 80) + suffix_len + 8

    cdef inline void tlv_prefix(self, buf_t* b, spec_t* s, int value_type) noexcept:
        put_byte(b, <uint8_t>((s.key_type << 4) | value_type))
        put(b, s.key, s.key_len)

    cdef inline void put_tlv(self, buf_t* b, const uint8_t* rec, const char* sfx,
                      Py_ssize_t sfx_len) noexcept:
        cdef int j, n
        cdef uint64_t v
        cdef char txt[80]
        cdef spec_t* s
        for j in range(self.nspecs):
            s = &self.specs[j]
            if self.number(s, rec, &v) == 0:
                if v < 256:
                    self.tlv_prefix(b, s, T_U8)
                    put_byte(b, <uint8_t>v)
                elif v < 65536:
                    self.tlv_prefix(b, s, T_U16)
                    put_be(b, v, 2)
                elif v < 4294967296:
                    self.tlv_prefix(b, s, T_U32)
                    put_be(b, v, 4)
                else:
                    self.tlv_prefix(b, s, T_U64)
                    put_be(b, v, 8)
            else:
                n = self.text(s, rec, txt)
                if n >= 0:
                    self.tlv_prefix(b, s, T_STRING)
                    put_be(b, n, 2)
                    put(b, txt, n)
        put(b, sfx, sfx_len)

    cdef inline void put_json(self, buf_t* b, const uint8_t* rec, const char* sfx,
                       Py_ssize_t sfx_len) noexcept:
        cdef int j, n
        cdef uint64_t v
        cdef char txt[80]
        cdef spec_t* s
        cdef bint first = True, quote
        put_byte(b, 123)                           # '{'
        for j in range(self.nspecs):
            s = &self.specs[j]
            if self.number(s, rec, &v) == 0:
                n = utoa(v, txt)
                quote = False
            elif s.kind == K_BINS:
                txt[0] = 91                        # '['
                n = 1 + self.text(s, rec, txt + 1)
                txt[n] = 93                        # ']'
                n += 1
                quote = False
            else:
                n = self.text(s, rec, txt)
                if n < 0:
                    continue
                quote = True
            if not first:
                put_byte(b, 44)
            first = False
            put(b, s.json_key, s.json_len)
            if quote:
                put_byte(b, 34)
            put(b, txt, n)
            if quote:
                put_byte(b, 34)
        if sfx_len:
            if first:
                put(b, sfx + 1, sfx_len - 1)       # no leading comma in an empty object
            else:
                put(b, sfx, sfx_len)
        put_byte(b, 125)                           # '}'

    cdef inline void put_msgpack(self, buf_t* b, const uint8_t* rec, const char* sfx,
                          Py_ssize_t sfx_len, int nsfx) noexcept:
        cdef int j, n, k, count = nsfx
        cdef uint64_t v
        cdef char txt[80]
        cdef spec_t* s
        for j in range(self.nspecs):               # the map's size first
            s = &self.specs[j]
            if s.kind == K_ICMP:
                count += rec[self.off_proto] == 1 or rec[self.off_proto] == 58
            elif s.kind == K_TCP:
                count += rec[self.off_proto] == 6
            elif s.kind == K_IPV4 or s.kind == K_IPV6:
                count += rec[self.off_ipver] == (4 if s.kind == K_IPV4 else 6)
            elif s.kind == K_EXP_V4 or s.kind == K_EXP_V6:
                count += rec[self.off_expver] == (4 if s.kind == K_EXP_V4 else 6)
            else:
                count += 1
        mp_map_header(b, count)
        for j in range(self.nspecs):
            s = &self.specs[j]
            if self.number(s, rec, &v) == 0:
                put(b, s.mp_key, s.mp_len)
                mp_uint(b, v)
            elif s.kind == K_BINS:
                put(b, s.mp_key, s.mp_len)
                put_byte(b, 0x96)                  # an array of six
                for k in range(6):
                    mp_uint(b, (<const uint16_t*>(rec + s.off))[k])
            else:
                n = self.text(s, rec, txt)
                if n >= 0:
                    put(b, s.mp_key, s.mp_len)
                    mp_str(b, txt, n)
        put(b, sfx, sfx_len)

    cdef inline void put_csv(self, buf_t* b, const uint8_t* rec) noexcept:
        cdef int j, n, k
        cdef uint64_t v
        cdef char txt[80]
        cdef spec_t* s
        for j in range(self.nspecs):
            s = &self.specs[j]
            if j:
                put_byte(b, 44)
            if self.number(s, rec, &v) == 0:
                put_uint_text(b, v)
            elif s.kind == K_BINS:
                for k in range(6):
                    if k:
                        put_byte(b, 32)
                    put_uint_text(b, (<const uint16_t*>(rec + s.off))[k])
            else:
                n = self.text(s, rec, txt)
                if n > 0:
                    put(b, txt, n)
        put_byte(b, 13)
        put_byte(b, 10)

    # ---- per record ---------------------------------------------------------------------
    def tlv(self, cnp.ndarray records, bytes suffix=b"\x01"):
        """One TLV record (items then ``suffix``, which ends with the end-of-record byte) per
        flow record."""
        return self._each(records, F_TLV, suffix, 0)

    def json(self, cnp.ndarray records, bytes suffix=b""):
        """One JSON object per flow record; ``suffix`` (',"k":v...' or empty) is added before
        the closing brace."""
        return self._each(records, F_JSON, suffix, 0)

    def msgpack(self, cnp.ndarray records, bytes suffix=b"", int nsuffix=0):
        """One msgpack map per flow record (names as keys); ``suffix`` holds ``nsuffix`` more
        key/value pairs, already packed."""
        return self._each(records, F_MSGPACK, suffix, nsuffix)

    cdef inline void put_record(self, buf_t* b, int fmt, const uint8_t* rec, const char* sfx,
                         Py_ssize_t sfx_len, int nsfx) noexcept:
        if fmt == F_TLV:
            self.put_tlv(b, rec, sfx, sfx_len)
        elif fmt == F_JSON:
            self.put_json(b, rec, sfx, sfx_len)
        else:
            self.put_msgpack(b, rec, sfx, sfx_len, nsfx)

    def _each(self, cnp.ndarray records, int fmt, bytes suffix, int nsuffix):
        cdef Py_ssize_t i, nrec = records.shape[0]
        cdef const uint8_t* base = records_data(records)
        cdef buf_t b
        cdef const char* sfx = suffix
        cdef Py_ssize_t sfx_len = len(suffix)
        b.p = NULL
        b.n = b.cap = 0
        out = []
        try:
            for i in range(nrec):
                b.n = 0
                grow(&b, self.room(sfx_len))
                self.put_record(&b, fmt, base + i * self.stride, sfx, sfx_len, nsuffix)
                out.append(PyBytes_FromStringAndSize(b.p, b.n))
        finally:
            free(b.p)
        return out

    # ---- whole messages -----------------------------------------------------------------
    def messages(self, cnp.ndarray records, int fmt, bytes suffix, int nsuffix,
                 Py_ssize_t max_bytes, Py_ssize_t max_flows, bytes msgpack_head=b""):
        """The records as message payloads: [(payload, flows)], each payload at most
        ``max_bytes`` with its framing and ``max_flows`` flows (0: no limit), as
        engine.export.encoders.FlowEncoder frames them (TLV: preamble 01 01 and the records;
        JSON: an array; msgpack: ``msgpack_head``, the flows array and the maps)."""
        cdef Py_ssize_t i, nrec = records.shape[0], start, flows = 0, over
        cdef const uint8_t* base = records_data(records)
        cdef buf_t b, m
        cdef const char* sfx = suffix
        cdef Py_ssize_t sfx_len = len(suffix)
        cdef const char* mph = msgpack_head
        cdef Py_ssize_t mph_len = len(msgpack_head)
        b.p = m.p = NULL
        b.n = b.cap = m.n = m.cap = 0
        out = []
        try:
            i = 0
            while i < nrec:
                # records of one message go to b (one after the other), then framed into m
                b.n = 0
                flows = 0
                while i < nrec:
                    start = b.n
                    grow(&b, self.room(sfx_len) + 1)
                    if fmt == F_JSON and flows:
                        put_byte(&b, 44)             # the comma between two objects
                    self.put_record(&b, fmt, base + i * self.stride, sfx, sfx_len, nsuffix)
                    over = 64 if fmt == F_MSGPACK else 2
                    if flows and (b.n + over > max_bytes or (max_flows and flows >= max_flows)):
                        b.n = start                  # it opens the next message
                        break
                    flows += 1
                    i += 1
                m.n = 0
                grow(&m, b.n + mph_len + 16)
                if fmt == F_TLV:
                    put_byte(&m, 1)
                    put_byte(&m, 1)
                    put(&m, b.p, b.n)
                elif fmt == F_JSON:
                    put_byte(&m, 91)
                    put(&m, b.p, b.n)
                    put_byte(&m, 93)
                else:
                    put(&m, mph, mph_len)
                    mp_array_header(&m, flows)
                    put(&m, b.p, b.n)
                out.append((PyBytes_FromStringAndSize(m.p, m.n), flows))
        finally:
            free(b.p)
            free(m.p)
        return out

    # ---- dumps --------------------------------------------------------------------------
    def json_lines(self, cnp.ndarray records):
        """One JSON object a line (the dump's format), as one bytes object."""
        return self._lines(records, True)

    def csv_header(self):
        cdef int j
        parts = [(<bytes>self.specs[j].csv_name[:self.specs[j].csv_len])
                 for j in range(self.nspecs)]
        return b",".join(parts) + b"\r\n"

    def csv_lines(self, cnp.ndarray records):
        """CSV rows as Python's csv module writes them for the same values (six-bin vectors
        joined by spaces, a field that does not apply empty, \r\n line ends)."""
        return self._lines(records, False)

    cdef bytes _lines(self, cnp.ndarray records, bint as_json):
        cdef Py_ssize_t i, nrec = records.shape[0]
        cdef const uint8_t* base = records_data(records)
        cdef buf_t b
        b.p = NULL
        b.n = b.cap = 0
        try:
            for i in range(nrec):
                grow(&b, self.room(0) + 2)
                if as_json:
                    self.put_json(&b, base + i * self.stride, "", 0)
                    put_byte(&b, 10)
                else:
                    self.put_csv(&b, base + i * self.stride)
            return PyBytes_FromStringAndSize(b.p, b.n)
        finally:
            free(b.p)


# --- the text dump ----------------------------------------------------------------------------
cdef struct text_cols_t:
    int proto, ipver, src, dst, sport, dport, vlan, inp, inb, outp, outb, first, last
    int plen, tdiff, ent_c, ent_s, tunnel, source, icmp


cdef inline void put_address(buf_t* b, const uint8_t* rec, int ipver_off, int addr_off) noexcept:
    cdef char txt[64]
    cdef int n, i
    cdef const uint8_t* a = rec + addr_off
    if rec[ipver_off] == 6:
        put_byte(b, 91)
        inet_ntop(AF_INET6_, a, txt, 64)
        n = 0
        while txt[n]:
            n += 1
        put(b, txt, n)
        put_byte(b, 93)
    else:
        for i in range(4):
            put_uint_text(b, a[i])
            if i < 3:
                put_byte(b, 46)


cdef inline void put_bins(buf_t* b, const uint8_t* q) noexcept:
    cdef int k
    for k in range(6):
        if k:
            put_byte(b, 44)
        put_uint_text(b, (<const uint16_t*>q)[k])


cdef inline void put_entropy(buf_t* b, uint16_t v) noexcept:
    """v / 1000 to two decimals, rounded as Python's '%.2f' rounds the double v / 1000."""
    b.n += snprintf(b.p + b.n, 16, "%.2f", v / 1000.0)


def text_lines(cnp.ndarray records, dtype, bint features, bint tunnel, bint l7=False):
    """The readable dump (engine.export.dump's reference twin): one line a flow,
    'PROTO  client -> server [vlan N] [A pkts/B bytes <-> C pkts/D bytes] D.DDDs' and, when the
    template has them, the features, the tunnel and nDPI's name of the application."""
    from engine.export.dump import PROTO_NAMES
    from engine.fields import TUNNELS
    cdef text_cols_t c
    cdef Py_ssize_t i, nrec = records.shape[0], stride = dtype.itemsize
    cdef const uint8_t* base = records_data(records)
    cdef const uint8_t* rec
    cdef buf_t b
    cdef int64_t dur
    cdef int k, n
    cdef bint icmp
    f = dtype.fields
    c.proto, c.ipver = f["protocol"][1], f["ip_version"][1]
    c.src, c.dst = f["src_addr"][1], f["dst_addr"][1]
    c.sport, c.dport, c.vlan = f["src_port"][1], f["dst_port"][1], f["vlan"][1]
    c.inp, c.inb = f["in_pkts"][1], f["in_bytes"][1]
    c.outp, c.outb = f["out_pkts"][1], f["out_bytes"][1]
    c.first, c.last = f["first_ms"][1], f["last_ms"][1]
    c.plen, c.tdiff = f["seq_plen"][1], f["seq_tdiff"][1]
    c.ent_c, c.ent_s, c.tunnel = f["entropy_c2s"][1], f["entropy_s2c"][1], f["tunnel"][1]
    c.source, c.icmp = f["flow_source"][1], f["icmp_type"][1]
    cdef L7Names l7names = L7Names(dtype, l7)
    cdef int off_app = f["l7_app"][1]
    names = [f"{PROTO_NAMES.get(p, str(p)):<6} ".encode() for p in range(256)]
    tunnels = [f" tunnel={t}".encode() for t in TUNNELS]
    cdef bytes name
    b.p = NULL
    b.n = b.cap = 0
    try:
        for i in range(nrec):
            rec = base + i * stride
            grow(&b, 480)
            name = <bytes>names[rec[c.proto]]
            put(&b, <const char*>name, len(name))
            icmp = rec[c.proto] == 1 or rec[c.proto] == 58
            put_address(&b, rec, c.ipver, c.src)
            if not icmp:
                put_byte(&b, 58)
                put_uint_text(&b, (<const uint16_t*>(rec + c.sport))[0])
            put(&b, " -> ", 4)
            put_address(&b, rec, c.ipver, c.dst)
            if icmp:                               # no ports: the ICMP type and code
                put(&b, " type ", 6)
                put_uint_text(&b, (<const uint16_t*>(rec + c.icmp))[0] >> 8)
                put(&b, " code ", 6)
                put_uint_text(&b, (<const uint16_t*>(rec + c.icmp))[0] & 255)
            else:
                put_byte(&b, 58)
                put_uint_text(&b, (<const uint16_t*>(rec + c.dport))[0])
            if (<const uint16_t*>(rec + c.vlan))[0]:
                put(&b, " vlan ", 6)
                put_uint_text(&b, (<const uint16_t*>(rec + c.vlan))[0])
            put(&b, " [", 2)
            put_uint_text(&b, (<const uint64_t*>(rec + c.inp))[0])
            put(&b, " pkts/", 6)
            put_uint_text(&b, (<const uint64_t*>(rec + c.inb))[0])
            put(&b, " bytes <-> ", 11)
            put_uint_text(&b, (<const uint64_t*>(rec + c.outp))[0])
            put(&b, " pkts/", 6)
            put_uint_text(&b, (<const uint64_t*>(rec + c.outb))[0])
            put(&b, " bytes] ", 8)
            dur = <int64_t>(<const uint64_t*>(rec + c.last))[0] - \
                <int64_t>(<const uint64_t*>(rec + c.first))[0]
            if dur < 0:
                put_byte(&b, 45)
                dur = -dur
            put_uint_text(&b, <uint64_t>(dur // 1000))
            put_byte(&b, 46)
            put_byte(&b, <uint8_t>(48 + dur // 100 % 10))
            put_byte(&b, <uint8_t>(48 + dur // 10 % 10))
            put_byte(&b, <uint8_t>(48 + dur % 10))
            put_byte(&b, 115)                      # 's'
            if features and rec[c.source] == 0:    # measured from packets, not collected
                put(&b, " plen=", 6)
                put_bins(&b, rec + c.plen)
                put(&b, " tdiff=", 7)
                put_bins(&b, rec + c.tdiff)
                put(&b, " entropy=", 9)
                put_entropy(&b, (<const uint16_t*>(rec + c.ent_c))[0])
                put_byte(&b, 47)
                put_entropy(&b, (<const uint16_t*>(rec + c.ent_s))[0])
            if tunnel and rec[c.tunnel]:
                name = <bytes>tunnels[rec[c.tunnel]]
                put(&b, <const char*>name, len(name))
            if l7 and (<const uint16_t*>(rec + off_app))[0]:
                put(&b, " l7=", 4)
                b.n += l7names.names_of(rec, b.p + b.n)
            put_byte(&b, 10)
        return PyBytes_FromStringAndSize(b.p, b.n)
    finally:
        free(b.p)


cdef inline uint64_t clamp32(int64_t t) noexcept nogil:
    """Milliseconds since the uptime base as a 32-bit field: 0 before it, the largest value
    past it."""
    if t < 0:
        return 0
    if t > <int64_t>0xFFFFFFFF:
        return <uint64_t>0xFFFFFFFF
    return <uint64_t>t


# --- NetFlow v9 / IPFIX data records -----------------------------------------------------------
ctypedef struct wire_t:
    int kind
    int off              # column offset in the record
    int size             # bytes per element of the column
    int length           # bytes on the wire
    int time             # v9 FIRST/LAST_SWITCHED: uptime milliseconds from the base


@cython.final
cdef class WireEncoder:
    """Flow records as NetFlow v9 / IPFIX data records of one template (big-endian, packed):
    engine/export/netflow.py's numpy encoding (its reference twin) in one pass."""
    cdef wire_t* specs
    cdef int nspecs
    cdef int off_ipver, off_expver, off_proto, off_cflags, off_sflags, off_vlan
    cdef L7Names l7
    cdef uint8_t end_reason_code[16]
    cdef Py_ssize_t stride
    cdef public Py_ssize_t rowsize

    def __cinit__(self, fields, dtype):
        """``fields``: (Field, wire length, uptime time?) of the template, in order."""
        from engine.fields import END_REASON_IPFIX
        cdef int i
        cdef wire_t* s
        self.nspecs = len(fields)
        self.stride = dtype.itemsize
        self.specs = <wire_t*>malloc(max(self.nspecs, 1) * sizeof(wire_t))
        if self.specs == NULL:
            raise MemoryError()
        self.rowsize = 0
        for i, (f, length, is_time) in enumerate(fields):
            s = &self.specs[i]
            s.kind = int(f.kind)
            base = dtype.fields[f.column][0]
            s.off = dtype.fields[f.column][1]
            s.size = base.base.itemsize if base.shape else base.itemsize
            s.length = length
            s.time = bool(is_time)
            self.rowsize += length
        self.off_vlan = dtype.fields["vlan"][1]
        self.off_ipver = dtype.fields["ip_version"][1]
        self.off_expver = dtype.fields["exporter_ip_version"][1]
        self.off_proto = dtype.fields["protocol"][1]
        self.off_cflags = dtype.fields["client_tcp_flags"][1]
        self.off_sflags = dtype.fields["server_tcp_flags"][1]
        self.l7 = L7Names(dtype, any(int(f.kind) == K_L7_NAME for f, _, _ in fields))
        for i, code in enumerate(END_REASON_IPFIX):
            self.end_reason_code[i] = code

    def __dealloc__(self):
        free(self.specs)

    def rows(self, cnp.ndarray records, int64_t base_ms, int family=0):
        """The data records of every flow (``family`` 4 or 6: of the flows of that IP version
        only), back to back (rowsize bytes each). Returns (bytes, records, flows with a
        counter too large for its wire field, sent as the field's largest value)."""
        cdef Py_ssize_t i, n = 0, nrec = records.shape[0]
        cdef const uint8_t* base = records_data(records)
        cdef const uint8_t* rec
        cdef int clipped = 0
        if family:
            with nogil:
                for i in range(nrec):
                    n += base[i * self.stride + self.off_ipver] == family
        else:
            n = nrec
        out = PyBytes_FromStringAndSize(NULL, n * self.rowsize)
        cdef char* p = <char*>out
        with nogil:
            for i in range(nrec):
                rec = base + i * self.stride
                if not family or rec[self.off_ipver] == family:
                    p = self.put_row(p, rec, base_ms, &clipped)
        return out, n, clipped

    cdef inline char* put_row(self, char* p, const uint8_t* rec, int64_t base_ms,
                              int* clipped) noexcept nogil:
        cdef int j, k, n, width
        cdef bint clip_any = False
        cdef int64_t t
        cdef uint64_t v, top
        cdef wire_t* s
        cdef const uint8_t* q
        cdef bint applies, numeric
        cdef char name[64]
        for j in range(self.nspecs):
            s = &self.specs[j]
            q = rec + s.off
            n = s.length
            numeric = True
            applies = True
            if s.time:
                v = clamp32(<int64_t>read_uint(rec, s.off, s.size) - base_ms)
            elif s.kind == K_UINT or s.kind == K_MS or s.kind == K_L7_PROTO:
                v = read_uint(rec, s.off, s.size)
            elif s.kind == K_OUTER_VLAN:          # dot1qVlanId: the outer tag, or the only one
                v = read_uint(rec, s.off, s.size)
                if v == 0:
                    v = (<const uint16_t*>(rec + self.off_vlan))[0]
            elif s.kind == K_SEC:
                v = <uint32_t>(read_uint(rec, s.off, s.size) // 1000)
            elif s.kind == K_FLAGS_OR:
                v = rec[self.off_cflags] | rec[self.off_sflags]
            elif s.kind == K_ICMP:
                applies = rec[self.off_proto] == 1 or rec[self.off_proto] == 58
                v = read_uint(rec, s.off, s.size) if applies else 0
            elif s.kind == K_END_REASON:
                v = self.end_reason_code[rec[s.off] & 15]
            elif s.kind == K_TCP:
                v = read_uint(rec, s.off, s.size) if rec[self.off_proto] == 6 else 0
            elif s.kind == K_L7_NAME:                # NUL-padded text, cut to the length
                k = self.l7.names_of(rec, name)
                if k > n:
                    k = n
                memcpy(p, name, k)
                memset(p + k, 0, n - k)
                p += n
                continue
            else:
                numeric = False
                if s.kind == K_IPV4 or s.kind == K_IPV6:
                    applies = rec[self.off_ipver] == (4 if s.kind == K_IPV4 else 6)
                elif s.kind == K_EXP_V4 or s.kind == K_EXP_V6:
                    applies = rec[self.off_expver] == (4 if s.kind == K_EXP_V4 else 6)
            if numeric:
                if n < 8:
                    top = (<uint64_t>1 << (8 * n)) - 1
                    if v > top:
                        v = top                  # clipped; counted for the counters (UINT)
                        clip_any |= s.kind == K_UINT and not s.time
                for k in range(n - 1, -1, -1):
                    p[0] = <char>(v >> (8 * k))
                    p += 1
            elif applies:
                memcpy(p, q, n)
                p += n
            else:
                memset(p, 0, n)
                p += n
        clipped[0] += clip_any
        return p


def time_range(cnp.ndarray records):
    """(earliest, latest, longest) of the flows' first_ms/last_ms (either may be the later
    one in collected records), in one pass: whether a batch fits one uptime clock."""
    cdef Py_ssize_t i, nrec = records.shape[0], stride = records.dtype.itemsize
    cdef const uint8_t* base = records_data(records)
    f = records.dtype.fields
    cdef Py_ssize_t o_first = f["first_ms"][1], o_last = f["last_ms"][1]
    cdef int64_t a, b, lo = INT64_MAX, hi = INT64_MIN, longest = 0
    if not nrec:
        raise ValueError("time_range of no records")
    with nogil:
        for i in range(nrec):
            a = <int64_t>(<const uint64_t*>(base + i * stride + o_first))[0]
            b = <int64_t>(<const uint64_t*>(base + i * stride + o_last))[0]
            if a > b:
                a, b = b, a
            lo = min(lo, a)
            hi = max(hi, b)
            longest = max(longest, b - a)
    return lo, hi, longest


def v5_rows(cnp.ndarray records, dtype, int64_t base_ms):
    """NetFlow v5 records (48 bytes each) of IPv4 biflows: one per direction that has packets
    (the forward record always), every forward record first, then the reverse ones, as
    engine/export/netflow.py's reference builds them. Returns (bytes, number of records)."""
    cdef Py_ssize_t i, nrec = records.shape[0], stride = dtype.itemsize, count = 0, nrev = 0
    cdef const uint8_t* base = records_data(records)
    cdef const uint8_t* rec
    f = dtype.fields
    cdef int o_src = f["src_addr"][1], o_dst = f["dst_addr"][1], o_in = f["input_snmp"][1]
    cdef int o_out = f["output_snmp"][1], o_ip = f["in_pkts"][1], o_ib = f["in_bytes"][1]
    cdef int o_op = f["out_pkts"][1], o_ob = f["out_bytes"][1], o_first = f["first_ms"][1]
    cdef int o_last = f["last_ms"][1], o_sp = f["src_port"][1], o_dp = f["dst_port"][1]
    cdef int o_cf = f["client_tcp_flags"][1], o_sf = f["server_tcp_flags"][1]
    cdef int o_proto = f["protocol"][1], o_stos = f["src_tos"][1], o_dtos = f["dst_tos"][1]
    cdef int o_icmp = f["icmp_type"][1]
    for i in range(nrec):
        if (<const uint64_t*>(base + i * stride + o_op))[0] > 0:
            nrev += 1
    out = PyBytes_FromStringAndSize(NULL, (nrec + nrev) * 48)
    cdef char* p = <char*>out
    cdef int direction
    with nogil:
        for direction in range(2):
            for i in range(nrec):
                rec = base + i * stride
                if direction == 1 and (<const uint64_t*>(rec + o_op))[0] == 0:
                    continue
                p = put_v5(p, rec, direction == 0, base_ms, o_src, o_dst, o_in, o_out, o_ip,
                           o_ib, o_op, o_ob, o_first, o_last, o_sp, o_dp, o_cf, o_sf, o_proto,
                           o_stos, o_dtos, o_icmp)
    return out, nrec + nrev


# --- datagrams ----------------------------------------------------------------------------
cdef enum:
    SEND_BATCH = 64              # datagrams a sendmmsg(2) call
    MAX_DATAGRAM = 65536


def send_datagrams(int version, const uint8_t[::1] rows, Py_ssize_t row_size,
                   Py_ssize_t per_datagram, int set_id, uint32_t secs, uint32_t uptime,
                   uint32_t engine_type, uint32_t engine_id, int fd, const uint8_t[::1] sockaddr,
                   uint32_t sequence):
    """The data records ``rows`` (len(rows) // row_size of them, already encoded) sent to one
    destination in datagrams of ``per_datagram`` records each (the last one shorter): a NetFlow
    v5, v9 or IPFIX header (v9/IPFIX: one data set ``set_id``, padded to 4 bytes), built in C and
    sent with sendmmsg(2), 64 a call, with the GIL released. ``sequence`` is the destination's
    next sequence number (v5 and IPFIX count records, v9 datagrams). A datagram the kernel
    refuses is counted and the next one tried, as one sendto(2) each would.
    Returns (datagrams sent, datagrams refused, the next sequence number)."""
    cdef Py_ssize_t nrec = rows.shape[0] // row_size, done = 0, k, size, body, pad
    cdef Py_ssize_t head = 24 if version == 5 else (20 if version == 9 else 16)
    cdef Py_ssize_t set_head = 0 if version == 5 else 4
    if per_datagram < 1 or head + set_head + per_datagram * row_size + 3 > MAX_DATAGRAM:
        raise ValueError("send_datagrams: per_datagram out of range")
    cdef Py_ssize_t slot = head + set_head + per_datagram * row_size + 3
    cdef char* buf = <char*>malloc(SEND_BATCH * slot)
    cdef mmsghdr msgs[SEND_BATCH]
    cdef iovec iov[SEND_BATCH]
    cdef int n, m, i, sent = 0, refused = 0
    cdef char* p
    if buf == NULL:
        raise MemoryError()
    memset(msgs, 0, sizeof(msgs))
    with nogil:
        while done < nrec:
            n = 0
            while n < SEND_BATCH and done < nrec:
                k = min(per_datagram, nrec - done)
                body = k * row_size
                pad = (4 - (set_head + body) % 4) % 4 if set_head else 0    # C: % of >= 0 only
                size = head + set_head + body + pad
                p = buf + n * slot
                store_be16(p, <uint16_t>version)
                if version == 5:
                    store_be16(p + 2, <uint16_t>k)
                    store_be32(p + 4, uptime)
                    store_be32(p + 8, secs)
                    store_be32(p + 12, 0)                          # residual nanoseconds
                    store_be32(p + 16, sequence)
                    p[20] = <char>engine_type
                    p[21] = <char>engine_id
                    store_be16(p + 22, 0)                          # sampling
                    sequence += <uint32_t>k
                elif version == 9:
                    store_be16(p + 2, <uint16_t>k)
                    store_be32(p + 4, uptime)
                    store_be32(p + 8, secs)
                    store_be32(p + 12, sequence)
                    store_be32(p + 16, engine_id)
                    sequence += 1
                else:
                    store_be16(p + 2, <uint16_t>size)
                    store_be32(p + 4, secs)
                    store_be32(p + 8, sequence)
                    store_be32(p + 12, engine_id)
                    sequence += <uint32_t>k
                if set_head:
                    store_be16(p + head, <uint16_t>set_id)
                    store_be16(p + head + 2, <uint16_t>(set_head + body + pad))
                memcpy(p + head + set_head, &rows[done * row_size], body)
                memset(p + head + set_head + body, 0, pad)
                iov[n].iov_base = p
                iov[n].iov_len = size
                msgs[n].msg_hdr.msg_iov = &iov[n]
                msgs[n].msg_hdr.msg_iovlen = 1
                msgs[n].msg_hdr.msg_name = <void*>&sockaddr[0]
                msgs[n].msg_hdr.msg_namelen = <unsigned int>sockaddr.shape[0]
                done += k
                n += 1
            i = 0
            while i < n:                  # a refused datagram is counted; the rest go on
                m = sendmmsg(fd, &msgs[i], n - i, 0)
                if m < 0:
                    refused += 1
                    i += 1
                else:
                    sent += m
                    i += m
    free(buf)
    return sent, refused, sequence


cdef inline char* put_num(char* p, uint64_t v, int n) noexcept nogil:
    """v big-endian in n = 2 or 4 bytes."""
    if n == 2:
        store_be16(p, <uint16_t>v)
    else:
        store_be32(p, <uint32_t>v)
    return p + n


cdef inline uint64_t clip(uint64_t v, uint64_t top) noexcept nogil:
    return top if v > top else v


cdef inline uint64_t uptime(const uint8_t* rec, int off, int64_t base_ms) noexcept nogil:
    return clamp32(<int64_t>(<const uint64_t*>(rec + off))[0] - base_ms)


cdef char* put_v5(char* p, const uint8_t* rec, bint fwd, int64_t base_ms, int o_src, int o_dst,
                  int o_in, int o_out, int o_ip, int o_ib, int o_op, int o_ob, int o_first,
                  int o_last, int o_sp, int o_dp, int o_cf, int o_sf, int o_proto, int o_stos,
                  int o_dtos, int o_icmp) noexcept nogil:
    cdef bint icmp = rec[o_proto] == 1 or rec[o_proto] == 58
    memcpy(p, rec + (o_src if fwd else o_dst), 4)
    memcpy(p + 4, rec + (o_dst if fwd else o_src), 4)
    memset(p + 8, 0, 4)                                          # next hop
    p += 12
    p = put_num(p, clip((<const uint32_t*>(rec + (o_in if fwd else o_out)))[0], 0xFFFF), 2)
    p = put_num(p, clip((<const uint32_t*>(rec + (o_out if fwd else o_in)))[0], 0xFFFF), 2)
    p = put_num(p, clip((<const uint64_t*>(rec + (o_ip if fwd else o_op)))[0], 0xFFFFFFFF), 4)
    p = put_num(p, clip((<const uint64_t*>(rec + (o_ib if fwd else o_ob)))[0], 0xFFFFFFFF), 4)
    p = put_num(p, uptime(rec, o_first, base_ms), 4)
    p = put_num(p, uptime(rec, o_last, base_ms), 4)
    if icmp:                          # v5 puts the ICMP type * 256 + code in the destination port
        p = put_num(p, 0, 2)
        p = put_num(p, (<const uint16_t*>(rec + o_icmp))[0], 2)
    else:
        p = put_num(p, (<const uint16_t*>(rec + (o_sp if fwd else o_dp)))[0], 2)
        p = put_num(p, (<const uint16_t*>(rec + (o_dp if fwd else o_sp)))[0], 2)
    p[0] = 0                                                     # pad1
    p[1] = <char>rec[o_cf if fwd else o_sf]
    p[2] = <char>rec[o_proto]
    p[3] = <char>rec[o_stos if fwd else o_dtos]
    memset(p + 4, 0, 8)                                          # AS, masks, pad2
    return p + 12


# --- decoding ------------------------------------------------------------------------------
cdef int WIDTH[16]
WIDTH[:] = [0, 0, 1, 2, 4, 8, 1, 2, 4, 8, 4, -1, 0, 0, 0, 0]    # value bytes per type tag


def decode_tlv(const uint8_t[::1] buf, dict names=None):
    """TLV payload -> list of records ({key: value}), exactly as engine.export.tlv.decode (its
    pure-Python reference, compared in the tests) but at C speed: for subscribers and tools.
    ``names`` ({id: name}) replaces the numeric keys it knows."""
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
            if names is not None:
                key = names.get(key, key)
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
