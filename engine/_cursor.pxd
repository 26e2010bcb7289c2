# A bounds-checked read cursor over bytes in memory (a packet, a mapped capture file), after
# asyncpg's pgproto frb.pxd: every read states how many bytes it needs and gets NULL, consuming
# nothing, when fewer are left. Bytes at a pointer returned for k bytes may be read up to k.
# Everything is inline: it compiles into the loop that uses it.
from libc.stdint cimport uint8_t


ctypedef struct cursor_t:
    const uint8_t* p             # the next unread byte
    size_t n                     # bytes left from p


cdef inline cursor_t cur_init(const uint8_t* p, size_t n) noexcept nogil:
    cdef cursor_t c
    c.p = p
    c.n = n
    return c


cdef inline const uint8_t* cur_read(cursor_t* c, size_t k) noexcept nogil:
    """The next k bytes, consumed; NULL when fewer are left."""
    cdef const uint8_t* q = c.p
    if k > c.n:
        return NULL
    c.p += k
    c.n -= k
    return q


cdef inline const uint8_t* cur_peek(const cursor_t* c, size_t k) noexcept nogil:
    """The next k bytes, left unread; NULL when fewer are left."""
    if k > c.n:
        return NULL
    return c.p


cdef inline bint cur_skip(cursor_t* c, size_t k) noexcept nogil:
    """Consume k bytes; False (and nothing consumed) when fewer are left."""
    if k > c.n:
        return False
    c.p += k
    c.n -= k
    return True


cdef inline void cur_skip_at_most(cursor_t* c, size_t k) noexcept nogil:
    """Consume k bytes, or what is left when that is fewer."""
    if k > c.n:
        k = c.n
    c.p += k
    c.n -= k


cdef inline void cur_limit(cursor_t* c, size_t k) noexcept nogil:
    """End the cursor k bytes from here, unless it ends sooner (a length field bounds what
    follows it)."""
    if k < c.n:
        c.n = k
