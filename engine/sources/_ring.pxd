# The TPACKET_V3 receive ring (engine/sources/_ring.pyx).
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef class Ring:
    cdef int fd
    cdef int wake_fd                        # next_block's wait also ends when this is readable
    cdef uint8_t* map
    cdef size_t map_len
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]
    cdef readonly uint32_t block_size
    cdef readonly uint32_t block_count
    cdef uint32_t current                   # the block handed out next (or last, while held)
    cdef bint held                          # ... and it is still ours
    cdef readonly uint64_t packets          # frames handed out
    cdef uint64_t kernel[2]                 # received, dropped (PACKET_STATISTICS, accumulated)
    cdef readonly str name
    cdef readonly int ifindex
