# Byte order (hton.h): unaligned big- and little-endian loads and stores.
from libc.stdint cimport uint16_t, uint32_t, uint64_t


cdef extern from "hton.h" nogil:
    uint16_t load_be16(const void* p) noexcept
    uint32_t load_be32(const void* p) noexcept
    uint64_t load_be64(const void* p) noexcept
    uint16_t load_le16(const void* p) noexcept
    uint32_t load_le32(const void* p) noexcept
    uint64_t load_le64(const void* p) noexcept
    uint64_t load_be(const void* p, int n) noexcept
    void store_be16(void* p, uint16_t v) noexcept
    void store_be32(void* p, uint32_t v) noexcept
    void store_be64(void* p, uint64_t v) noexcept
