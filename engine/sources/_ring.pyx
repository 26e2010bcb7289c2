# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A Linux AF_PACKET TPACKET_V3 receive ring, read in place.

The kernel writes frames into blocks of one mmap'ed ring and hands a block over when it is full or
its retire timeout passes. ``Ring.next_block`` gives the previous block back to the kernel, waits
for the next one and fills META_DTYPE rows that point at its frames inside the ring, so the fast
path reads every packet where the kernel wrote it. The ring object exports the whole mapping
through the buffer protocol: it is the batch buffer of every block.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset, strerror
from libc.errno cimport errno, ENODEV, ENETDOWN, EPERM, EIO
from posix.mman cimport mmap, munmap, MAP_FAILED, MAP_SHARED, MAP_POPULATE, PROT_READ, PROT_WRITE
from posix.unistd cimport close
from cpython.buffer cimport PyBUF_WRITABLE
from cpython.exc cimport PyErr_CheckSignals
cimport numpy as cnp

from engine._fastpath cimport pkt_meta_t, META_VLAN_TAG

cnp.import_array()

cdef extern from *:
    """
    #include <errno.h>
    #include <poll.h>
    #include <unistd.h>
    #include <sys/ioctl.h>
    #include <sys/mman.h>
    #include <sys/socket.h>
    #include <arpa/inet.h>
    #include <net/if.h>
    #include <linux/if_packet.h>
    #include <linux/if_ether.h>
    #include <pcap/pcap.h>

    #ifndef PACKET_IGNORE_OUTGOING
    #define PACKET_IGNORE_OUTGOING 23
    #endif

    /* the kernel's struct sock_fprog, with libpcap's instruction type (the same layout) */
    struct fp_fprog { unsigned short len; struct bpf_insn *filter; };

    static int fp_socket(void) { return socket(AF_PACKET, SOCK_RAW, 0); }

    static int fp_setopt(int fd, int level, int name, const void *val, unsigned len) {
        return setsockopt(fd, level, name, val, len) == 0 ? 0 : errno;
    }

    static int fp_attach(int fd, struct bpf_insn *prog, unsigned n) {
        struct fp_fprog f = { (unsigned short)n, prog };
        return fp_setopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &f, sizeof f);
    }

    static int fp_if_flags(int fd, const char *name, int *flags) {
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
        if (ioctl(fd, SIOCGIFFLAGS, &ifr) != 0) return errno;
        *flags = ifr.ifr_flags;
        return 0;
    }

    static int fp_ring(int fd, unsigned block_size, unsigned block_nr, unsigned frame_size,
                       unsigned tov_ms) {
        struct tpacket_req3 req;
        memset(&req, 0, sizeof req);
        req.tp_block_size = block_size;
        req.tp_block_nr = block_nr;
        req.tp_frame_size = frame_size;
        req.tp_frame_nr = (block_size / frame_size) * block_nr;
        req.tp_retire_blk_tov = tov_ms;
        return fp_setopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req);
    }

    static int fp_promisc(int fd, int ifindex) {
        struct packet_mreq mr;
        memset(&mr, 0, sizeof mr);
        mr.mr_ifindex = ifindex;
        mr.mr_type = PACKET_MR_PROMISC;
        return fp_setopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr);
    }

    static int fp_bind(int fd, int ifindex) {
        struct sockaddr_ll sll;
        int err = 0;
        socklen_t len = sizeof err;
        memset(&sll, 0, sizeof sll);
        sll.sll_family = AF_PACKET;
        sll.sll_protocol = htons(ETH_P_ALL);
        sll.sll_ifindex = ifindex;
        if (bind(fd, (struct sockaddr *)&sll, sizeof sll) != 0) return errno;
        /* a bind to an interface that is down succeeds and leaves ENETDOWN pending */
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
        return err;
    }

    static int fp_fanout(int fd, unsigned group) {
        unsigned arg = (group & 0xFFFF) |
                       ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16);
        return fp_setopt(fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg);
    }

    static int fp_stats(int fd, uint64_t *out) {
        struct tpacket_stats_v3 st;
        socklen_t len = sizeof st;
        if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) != 0) return errno;
        /* the kernel resets them on every read; tp_packets includes the drops */
        out[0] += st.tp_packets;
        out[1] += st.tp_drops;
        return 0;
    }

    static int fp_socket_error(int fd) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
        return err;
    }

    static inline int fp_block_ready(const uint8_t *block) {
        const struct tpacket_block_desc *bd = (const struct tpacket_block_desc *)block;
        return (__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE)
                & TP_STATUS_USER) != 0;
    }

    static inline void fp_block_release(uint8_t *block) {
        struct tpacket_block_desc *bd = (struct tpacket_block_desc *)block;
        __atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
    }

    /* 1: readable (or an error is pending), 0: timeout, -1: a signal arrived (poll was
       interrupted, or Python's signal wake-up fd, wake >= 0, was written: that works whichever
       thread the kernel delivered the signal to) */
    static int fp_poll(int fd, int wake, int timeout_ms) {
        struct pollfd p[2] = { { fd, POLLIN, 0 }, { wake, POLLIN, 0 } };
        char drain[64];
        int r = poll(p, wake >= 0 ? 2 : 1, timeout_ms);
        if (r < 0) return errno == EINTR ? -1 : 1;
        if (wake >= 0 && p[1].revents) {
            while (read(wake, drain, sizeof drain) > 0) {}
            return -1;
        }
        return r > 0;
    }

    """
    int fp_socket() nogil
    int fp_setopt(int fd, int level, int name, const void* val, unsigned len) nogil
    int fp_attach(int fd, void* prog, unsigned n) nogil
    int fp_if_flags(int fd, const char* name, int* flags) nogil
    int fp_ring(int fd, unsigned block_size, unsigned block_nr, unsigned frame_size,
                unsigned tov_ms) nogil
    int fp_promisc(int fd, int ifindex) nogil
    int fp_bind(int fd, int ifindex) nogil
    int fp_fanout(int fd, unsigned group) nogil
    int fp_stats(int fd, uint64_t* out) nogil
    int fp_socket_error(int fd) nogil
    int fp_block_ready(const uint8_t* block) nogil
    void fp_block_release(uint8_t* block) nogil
    int fp_poll(int fd, int wake, int timeout_ms) nogil
    unsigned if_nametoindex(const char* name) nogil
    int SOL_PACKET, PACKET_VERSION, TPACKET_V3, PACKET_IGNORE_OUTGOING, TP_STATUS_VLAN_VALID
    int IFF_UP, IFF_LOOPBACK

    # <linux/if_packet.h>: only the fields read here
    struct tpacket_hdr_v1:
        uint32_t num_pkts
        uint32_t offset_to_first_pkt
    union tpacket_bd_header_u:
        tpacket_hdr_v1 bh1
    struct tpacket_block_desc:
        tpacket_bd_header_u hdr
    struct tpacket_hdr_variant1:
        uint16_t tp_vlan_tci
    struct tpacket3_hdr:
        uint32_t tp_next_offset
        uint32_t tp_sec
        uint32_t tp_nsec
        uint32_t tp_snaplen
        uint32_t tp_len
        uint32_t tp_status
        uint16_t tp_mac
        tpacket_hdr_variant1 hv1

    ctypedef struct pcap_t:
        pass
    struct bpf_insn:
        pass
    struct bpf_program:
        unsigned bf_len
        bpf_insn* bf_insns
    pcap_t* pcap_create(const char* source, char* errbuf)
    int pcap_set_snaplen(pcap_t* p, int snaplen)
    int pcap_set_promisc(pcap_t* p, int promisc)
    int pcap_set_timeout(pcap_t* p, int ms)
    int pcap_activate(pcap_t* p)
    int pcap_compile(pcap_t* p, bpf_program* prog, const char* text, int optimize,
                     unsigned netmask)
    void pcap_freecode(bpf_program* prog)
    char* pcap_geterr(pcap_t* p)
    const char* pcap_statustostr(int status)
    void pcap_close(pcap_t* p)
    unsigned PCAP_NETMASK_UNKNOWN

import struct

from engine._fastpath import META_DTYPE

cdef enum:
    LINKTYPE_ETHERNET = 1
    FRAME_SIZE = 2048    # TPACKET_V3 frames are variable; the kernel only checks that this divides
MIN_FRAME = 64           # no frame takes less room in a block (48-byte header + sockaddr_ll)
# pcap_activate() statuses as the errno of the same failure
PCAP_STATUS_ERRNO = {-8: EPERM, -5: ENODEV, -9: ENETDOWN}


cdef uint32_t walk(const uint8_t* ring, uint64_t block_off, pkt_meta_t* m,
                   uint32_t cap) noexcept nogil:
    """META rows for the frames of one block, pointing into the ring; returns how many."""
    cdef const uint8_t* block = ring + block_off
    cdef const tpacket_block_desc* bd = <const tpacket_block_desc*>block
    cdef uint32_t n = bd.hdr.bh1.num_pkts, k
    cdef uint64_t off = bd.hdr.bh1.offset_to_first_pkt
    cdef const tpacket3_hdr* h
    if n > cap:
        n = cap
    for k in range(n):
        h = <const tpacket3_hdr*>(block + off)
        m[k].ts_ns = <uint64_t>h.tp_sec * 1000000000 + h.tp_nsec
        m[k].offset = block_off + off + h.tp_mac
        m[k].caplen = h.tp_snaplen
        m[k].wirelen = h.tp_len
        m[k].linktype = LINKTYPE_ETHERNET
        m[k].reserved = 0
        if h.tp_status & TP_STATUS_VLAN_VALID:
            # the kernel took the outer tag out of the frame: the fast path puts it back
            m[k].reserved = META_VLAN_TAG | h.hv1.tp_vlan_tci
            m[k].wirelen += 4
        off += h.tp_next_offset
    return n


def _raise(int err, str what):
    raise OSError(err, f"{what}: {strerror(err).decode()}")


def compile_filter(str iface, str expression, int snaplen) -> bytes:
    """``expression`` compiled by libpcap for a capture on ``iface``: the kernel's BPF
    instructions (8 bytes each), returning ``snaplen`` for an accepted packet.

    The handle it compiles on is activated on the interface (and closed at once) rather than made
    by pcap_open_dead: only a live Linux handle makes libpcap test VLAN tags where this kernel
    keeps them (beside the frame, read by BPF's ancillary loads), so `vlan 10` still matches."""
    cdef char errbuf[256]
    cdef bpf_program prog
    cdef pcap_t* p = pcap_create(iface.encode(), errbuf)
    cdef int status
    if p == NULL:
        raise OSError(EIO, errbuf.decode(errors="replace"))
    try:
        pcap_set_snaplen(p, snaplen)
        pcap_set_promisc(p, 0)
        pcap_set_timeout(p, 1)
        status = pcap_activate(p)
        if status < 0:
            raise OSError(PCAP_STATUS_ERRNO.get(status, EIO),
                          f"libpcap: {pcap_statustostr(status).decode()}: "
                          f"{pcap_geterr(p).decode(errors='replace')}")
        if pcap_compile(p, &prog, expression.encode(), 1, PCAP_NETMASK_UNKNOWN) != 0:
            raise ValueError(pcap_geterr(p).decode(errors="replace"))
        try:
            return (<char*>prog.bf_insns)[:prog.bf_len * 8]
        finally:
            pcap_freecode(&prog)
    finally:
        pcap_close(p)


def accept_all(int snaplen) -> bytes:
    """The one-instruction program `ret #snaplen`: what cuts frames to the snapshot length."""
    return struct.pack("=HBBI", 0x06, 0, 0, snaplen)          # BPF_RET | BPF_K


cdef class Ring:
    """One TPACKET_V3 socket bound to an interface, its ring mapped. See the module docstring."""

    def __cinit__(self):
        self.fd = -1
        self.wake_fd = -1
        self.map = NULL

    def __init__(self, str name, *, uint32_t block_size, uint32_t block_count, bytes program,
                 bint promisc=True, int fanout_group=-1, int timeout_ms=100):
        """Open the socket and the ring. ``program``: BPF instructions (compile_filter or
        accept_all), attached before the socket is bound, so that no packet escapes it.
        ``fanout_group`` >= 0: join that PACKET_FANOUT group (hash, defrag) once bound.
        Raises OSError with the errno of the step that failed."""
        cdef int flags = 0, err, one = 1, version = TPACKET_V3
        cdef bytes bname = name.encode()
        cdef const char* cprog = program
        self.name = name
        self.block_size = block_size
        self.block_count = block_count
        memset(self.kernel, 0, sizeof(self.kernel))
        self.ifindex = if_nametoindex(bname)
        if self.ifindex == 0:
            _raise(ENODEV, "interface")
        self.fd = fp_socket()
        if self.fd < 0:
            _raise(errno, "socket")
        err = fp_if_flags(self.fd, bname, &flags)
        if err:
            _raise(err, "interface flags")
        if not flags & IFF_UP:
            _raise(ENETDOWN, "interface")
        err = fp_setopt(self.fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version))
        if err:
            _raise(err, "TPACKET_V3")
        err = fp_attach(self.fd, <void*>cprog, len(program) // 8)
        if err:
            _raise(err, "attach the filter")
        err = fp_ring(self.fd, block_size, block_count, FRAME_SIZE, timeout_ms)
        if err:
            _raise(err, "ring")
        self.map_len = <size_t>block_size * block_count
        self.map = <uint8_t*>mmap(NULL, self.map_len, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_POPULATE, self.fd, 0)
        if <void*>self.map == MAP_FAILED:
            self.map = NULL
            _raise(errno, "map the ring")
        self.shape[0] = <Py_ssize_t>self.map_len
        self.strides[0] = 1
        if flags & IFF_LOOPBACK:             # each packet would be seen going out and coming in
            fp_setopt(self.fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one))
        if promisc:
            err = fp_promisc(self.fd, self.ifindex)
            if err:
                _raise(err, "promiscuous mode")
        err = fp_bind(self.fd, self.ifindex)
        if err:
            _raise(err, "bind")
        if fanout_group >= 0:
            err = fp_fanout(self.fd, fanout_group)
            if err:
                _raise(err, f"join fanout group {fanout_group}")

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("the ring is read-only")
        if self.map == NULL:
            raise BufferError("the ring is closed")
        buffer.buf = self.map
        buffer.obj = self
        buffer.len = <Py_ssize_t>self.map_len
        buffer.readonly = 1
        buffer.itemsize = 1
        buffer.format = "B"
        buffer.ndim = 1
        buffer.shape = self.shape
        buffer.strides = self.strides
        buffer.suboffsets = NULL
        buffer.internal = NULL

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    def next_block(self, cnp.ndarray meta, int timeout_ms) -> int:
        """Give the block handed out last back to the kernel, wait up to ``timeout_ms`` for the
        next one and fill ``meta`` (META_DTYPE, room for block_size // MIN_FRAME rows) with its
        frames. Returns the number of frames; 0 when none came (or a signal arrived: its Python
        handler has run when this returns)."""
        cdef uint8_t* block
        cdef int r = 1, err = 0
        cdef uint32_t n = 0
        cdef uint32_t cap = <uint32_t>meta.shape[0]
        cdef pkt_meta_t* rows = <pkt_meta_t*>cnp.PyArray_DATA(meta)
        if meta.dtype != META_DTYPE or not meta.flags.c_contiguous:
            raise TypeError("meta must be a contiguous array of META_DTYPE")
        if self.fd < 0:
            raise ValueError("the ring is closed")
        with nogil:
            if self.held:
                fp_block_release(self.map + <size_t>self.current * self.block_size)
                self.held = False
                self.current = (self.current + 1) % self.block_count
            block = self.map + <size_t>self.current * self.block_size
            if not fp_block_ready(block):
                r = fp_poll(self.fd, self.wake_fd, timeout_ms)
                if r == 1 and not fp_block_ready(block):
                    err = fp_socket_error(self.fd)
                    r = 0
            if r == 1 or (r == 0 and fp_block_ready(block)):
                n = walk(self.map, <uint64_t>self.current * self.block_size, rows, cap)
                self.held = True
                self.packets += n
        if r < 0:
            PyErr_CheckSignals()
        if err:
            _raise(err, "capture")
        return n

    def wake_on(self, int fd) -> None:
        """Also end next_block's wait when ``fd`` (non-blocking: Python's signal wake-up fd,
        see signal.set_wakeup_fd) becomes readable; -1: no longer."""
        self.wake_fd = fd

    def stats(self) -> dict:
        """The kernel's counters since the socket opened: packets that passed the filter
        (dropped ones included) and packets dropped because the ring was full."""
        if self.fd >= 0:
            fp_stats(self.fd, self.kernel)
        return {"kernel_received": self.kernel[0], "kernel_drops": self.kernel[1]}

    def close(self) -> None:
        """Close the socket (the kernel stops writing); the mapping goes with the object, since
        batches may still point into it."""
        if self.fd >= 0:
            fp_stats(self.fd, self.kernel)
            close(self.fd)
            self.fd = -1

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
        if self.map != NULL:
            munmap(self.map, self.map_len)
