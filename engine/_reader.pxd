# The capture file reader: its class, for any Cython module that reads files in batches.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef class PcapReader:
    cdef object _mmap
    cdef object _file
    cdef const uint8_t[::1] view
    cdef Py_ssize_t size
    cdef Py_ssize_t pos
    cdef readonly str format
    cdef readonly int linktype          # of the first interface
    cdef readonly bint truncated        # the file ended inside a record
    cdef readonly uint64_t packets
    cdef bint swapped
    cdef uint64_t ts_mul                # pcap: ns per timestamp fraction unit
    # pcapng interfaces of the current section
    cdef uint32_t if_count
    cdef uint32_t if_linktype[64]
    cdef uint64_t if_num[64]            # timestamp unit = if_num / if_den seconds
    cdef uint64_t if_den[64]

    cdef uint32_t u32(self, Py_ssize_t at)
    cdef uint16_t u16(self, Py_ssize_t at)
    cdef _header(self)
    cdef _pcapng_section(self, Py_ssize_t at)
    cdef _pcapng_scan_interfaces(self)
    cdef void _pcapng_interface(self, Py_ssize_t at, uint32_t blen)
