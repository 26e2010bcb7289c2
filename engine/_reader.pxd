# The capture file reader: its state and its class.
from libc.stdint cimport uint8_t, uint32_t, uint64_t


# How one interface's packets read: their link type and how their timestamps count.
ctypedef struct iface_t:
    uint64_t units               # timestamp units per second (pcapng if_tsresol)
    uint64_t offset_ns           # added to every timestamp (if_tsoffset; two's complement)
    uint32_t linktype
    uint32_t snaplen

# Where the walk through the mapped file is, and the interfaces of the current pcapng section.
ctypedef struct reader_t:
    const uint8_t* base          # the mapping; NULL once closed
    size_t size
    size_t pos                   # the next record or block
    int end                      # GO_ON, AT_END, or the fault that ended the file
    size_t end_at                # where that fault is
    uint64_t end_a               # the numbers its text names
    uint64_t end_b
    bint swapped                 # the file (pcap) or section (pcapng) is of the other byte order
    iface_t pcap_iface           # pcap: the file's one interface
    int lengths_swapped          # pcap: 0 no, 1 where the captured one is the larger, 2 always
    iface_t* ifaces              # pcapng: the section's interfaces
    uint32_t if_count
    uint32_t if_cap


cdef class PcapReader:
    cdef object _mmap
    cdef object _file
    cdef const uint8_t[::1] view         # holds the mapping's buffer while r.base points into it
    cdef reader_t r
    cdef readonly str format
    cdef readonly int linktype           # of the first interface
    cdef readonly uint64_t packets
    cdef readonly bint stopped

    cdef _header(self)
