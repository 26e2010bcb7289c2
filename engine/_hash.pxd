# Hashes of addresses and ports, shared by the fragment cache, the flow table and the shards.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    x ^= x >> 33
    x *= <uint64_t>0xff51afd7ed558ccd
    x ^= x >> 33
    x *= <uint64_t>0xc4ceb9fe1a85ec53
    x ^= x >> 33
    return x


cdef inline uint64_t side_hash(const uint8_t* addr, uint16_t port) noexcept nogil:
    cdef uint64_t lo, hi
    memcpy(&lo, addr, 8)
    memcpy(&hi, addr + 8, 8)
    return mix64(lo ^ mix64(hi ^ port))


cdef inline uint32_t key_hash(const uint8_t* a, uint16_t ap, const uint8_t* b, uint16_t bp,
                              uint8_t proto, uint16_t vlan) noexcept nogil:
    # symmetric: both directions of a flow hash alike
    return <uint32_t>mix64(side_hash(a, ap) + side_hash(b, bp) + ((<uint64_t>proto << 16) | vlan))
