# C declarations of engine/collect/_collect.pyx: the layout of a compiled template program and of
# the per-set table (cpdef enums: template.py and collector.py build them from Python).
from libc.stdint cimport uint8_t, uint16_t, uint64_t, int64_t

from engine.includes.mmsg cimport iovec, mmsghdr, sockaddr_storage

cpdef enum:
    # program header words
    HDR = 12
    H_NFIELDS = 0
    H_RECLEN = 1            # 0: the template has variable-length fields
    H_MINLEN = 2            # the shortest record (at least 1)
    H_NSTEPS = 3
    H_FIRST = 4             # field index of the first-packet time (-1: none)
    H_FIRST_KIND = 5        # its element id
    H_LAST = 6
    H_LAST_KIND = 7
    H_INIT = 8              # field index of systemInitTimeMilliseconds (-1: none)
    H_FLAGS = 9
    H_IPVERSION = 10        # ip_version written when the template has none (0: none written)
    FLAG_ICMP = 1           # an ICMP type/code value is assembled (written to icmp_type)
    FLAG_HAD_ICMP = 2       # the template carries the ICMP type (--disable-cache keeps it)
    # step operations: (op, field index, column offset, width), 4 words each
    STEP_WORDS = 4
    OP_INT = 1              # big-endian integer of the field's last 8 bytes at most, at width
    OP_COPY = 2             # the field's first ``width`` bytes copied
    OP_EXP4 = 3             # a relayed flow's router (IPv4): 4 bytes, the rest zeroed, version 4
    OP_EXP6 = 4             # the same for IPv6
    OP_ICMP_SET = 5         # icmpTypeCodeIPv4/6
    OP_ICMP_HI = 6          # icmpTypeIPv4/6: added shifted by 8
    OP_ICMP_LO = 7          # icmpCodeIPv4/6: added
    OP_SAMPLING = 8         # a per-record sampling interval (the largest wins)
    # the per-set table: one row of SET_WORDS int64 per data set
    SET_WORDS = 10
    S_OFF = 0               # offset of the set's records in the batch buffer
    S_LEN = 1
    S_PROG = 2              # offset of its template's program in the programs array
    S_COUNT = 3             # records (count_records)
    S_IPV = 4               # exporter address family (4/6)
    S_DOMAIN = 5
    S_EXPORT_MS = 6
    S_UPTIME_MS = 7         # -1: none (IPFIX)
    S_INIT_MS = 8           # -1: unknown
    S_SAMPLING = 9          # 1: none
    VARLEN = 65535
    SLOTS = 64              # datagrams a recvmmsg call (Receiver)


cdef class Receiver:
    cdef uint8_t* buf
    cdef mmsghdr msgs[SLOTS]
    cdef iovec iov[SLOTS]
    cdef sockaddr_storage addrs[SLOTS]
    cdef dict names
    cdef readonly unsigned long long calls
    cdef object name(self, const sockaddr_storage* sa)
