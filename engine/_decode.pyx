# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The packet decoders of engine/_decode.pxd, one frame at a time from Python: for the tests that
hold them against engine.reference's decoder and against dpkt (the fast path compiles the same
inline code into its batch loop)."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

from engine._decode cimport R_OK, FRAG_SLOTS, decoder_t, frag_t, pkt_t, decode_packet

# the names of the reason codes (R_OK ...), as FlowTable.stats()["drops"] reports them
REASONS = ("ok", "truncated", "bad_ipv4_header", "bad_ipv6_header", "bad_l4_header",
           "bad_tunnel_header", "non_ip", "unsupported_link_type", "fragment_without_first",
           "tunnel_too_deep", "flow_table_full", "ip_length_exceeds_frame")


cdef class Decoder:
    """Frames to flow keys, with the fragment cache of one capture queue."""
    cdef decoder_t dec

    def __cinit__(self):
        self.dec.frags = <frag_t*>calloc(FRAG_SLOTS, sizeof(frag_t))
        self.dec.fragments = 0
        if self.dec.frags == NULL:
            raise MemoryError("cannot allocate the fragment cache")

    def __init__(self):
        pass                         # refuses arguments, which a bare __cinit__ would ignore

    def __dealloc__(self):
        free(self.dec.frags)

    def decode(self, const uint8_t[::1] frame, uint32_t linktype=1, uint64_t ts_us=0) -> dict:
        """``{"reason": name}``, and for a decoded packet (reason "ok") its flow key and what
        accounting reads: addresses (16 bytes), ports, protocol, VLANs, tunnel, payload..."""
        cdef pkt_t p
        cdef uint8_t empty = 0
        cdef const uint8_t* data = &frame[0] if frame.shape[0] else &empty
        cdef int r
        p.ts_us = ts_us
        with nogil:
            r = decode_packet(data, <uint32_t>frame.shape[0], linktype, &p, &self.dec)
        if r != R_OK:
            return {"reason": REASONS[r]}
        return {"reason": "ok", "ip_version": p.ip_version, "proto": p.proto,
                "src": (<char*>p.src)[:16], "dst": (<char*>p.dst)[:16], "sport": p.sport, "dport": p.dport,
                "icmp_type": p.icmp_type, "tos": p.tos, "tcp_flags": p.tcp_flags,
                "vlan": p.vlan, "outer_vlan": p.outer_vlan, "tunnel": p.tunnel,
                "is_frag": bool(p.is_frag),
                "smac": (<char*>p.smac)[:6] if p.have_mac else bytes(6),
                "dmac": (<char*>p.dmac)[:6] if p.have_mac else bytes(6),
                "payload": (<const char*>p.payload)[:p.payload_cap] if p.payload_cap else b"",
                "payload_len": p.payload_len, "l2_len": p.l2_len,
                "outer_ip_len": p.outer_ip_len}

    @property
    def fragments(self) -> int:
        """Fragments seen so far (the fast path's ``fragments`` counter)."""
        return self.dec.fragments


def decode(frame, uint32_t linktype=1, uint64_t ts_us=0) -> dict:
    """One frame through a fresh Decoder (no fragment history)."""
    return Decoder().decode(frame, linktype, ts_us)
