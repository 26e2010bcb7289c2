# nDPI application protocol detection (l7.h): a detection module and a pool of flow states.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "l7.h" nogil:
    const uint32_t L7_NO_STATE

    ctypedef struct l7_verdict_t:
        uint16_t master
        uint16_t app
        uint8_t confidence
        uint8_t category

    ctypedef struct l7_t:
        pass

    int l7_available() noexcept
    const char* l7_version() noexcept
    l7_t* l7_new(uint32_t n) noexcept
    void l7_free(l7_t* l) noexcept
    uint32_t l7_take(l7_t* l) noexcept
    void l7_release(l7_t* l, uint32_t s) noexcept
    int l7_packet(l7_t* l, uint32_t s, const uint8_t* l3, uint32_t length, uint64_t ms,
                  int enough, l7_verdict_t* v) noexcept
    void l7_giveup(l7_t* l, uint32_t s, l7_verdict_t* v) noexcept
    uint32_t l7_name_count(l7_t* l) noexcept
    const char* l7_name(l7_t* l, uint16_t id) noexcept
