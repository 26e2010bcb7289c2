# The flow table: its C structs and its class, and the two structs shared with the other modules
# (flow_record_t is what the exporters read, pkt_meta_t what the sources fill).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from engine._decode cimport R_COUNT, decoder_t, pkt_t
from engine.includes.l7 cimport l7_t, l7_verdict_t

# One finished flow (or flow slice). Same order and types as engine.fields.COLUMNS; the import of
# engine._fastpath checks the numpy dtype against sizeof/offsetof of this struct.
ctypedef struct flow_record_t:
    uint64_t first_ms
    uint64_t last_ms
    uint64_t in_bytes
    uint64_t in_pkts
    uint64_t out_bytes
    uint64_t out_pkts
    uint8_t src_addr[16]
    uint8_t dst_addr[16]
    uint8_t exporter_addr[16]
    uint32_t src_frags
    uint32_t dst_frags
    uint32_t input_snmp
    uint32_t output_snmp
    uint32_t observation_point
    uint16_t src_port
    uint16_t dst_port
    uint16_t vlan
    uint16_t outer_vlan
    uint16_t icmp_type
    uint16_t l7_master
    uint16_t l7_app
    uint16_t l7_packets
    uint16_t seq_plen[6]
    uint16_t seq_tdiff[6]
    uint16_t seq_plen_c2s[6]
    uint16_t seq_plen_s2c[6]
    uint16_t seq_tdiff_c2s[6]
    uint16_t seq_tdiff_s2c[6]
    uint16_t entropy_c2s
    uint16_t entropy_s2c
    uint8_t src_mac[6]
    uint8_t dst_mac[6]
    uint8_t ip_version
    uint8_t protocol
    uint8_t client_tcp_flags
    uint8_t server_tcp_flags
    uint8_t src_tos
    uint8_t dst_tos
    uint8_t end_reason
    uint8_t flow_source
    uint8_t tunnel
    uint8_t exporter_ip_version
    uint8_t l7_confidence
    uint8_t l7_category
    # TCP health (tcp_t below), client -> server then server -> client
    uint32_t retr_pkts_c2s
    uint32_t retr_pkts_s2c
    uint32_t retr_bytes_c2s
    uint32_t retr_bytes_s2c
    uint32_t ooo_pkts_c2s
    uint32_t ooo_pkts_s2c
    uint32_t zero_win_c2s
    uint32_t zero_win_s2c
    uint32_t client_nw_latency_ms
    uint32_t server_nw_latency_ms
    uint32_t appl_latency_ms
    uint16_t win_max_c2s
    uint16_t win_max_s2c

# pkt_meta_t.reserved: a VLAN tag the capture took out of an Ethernet frame (Linux AF_PACKET
# rings hand the outer tag over beside the frame) is META_VLAN_TAG | TCI, and wirelen counts its
# 4 bytes; 0 otherwise
cpdef enum:
    META_VLAN_TAG = 0x10000

# One packet of a batch: where its bytes are in the batch buffer and what the capture said of it.
ctypedef struct pkt_meta_t:
    uint64_t ts_ns
    uint64_t offset
    uint32_t caplen
    uint32_t wirelen
    uint32_t linktype
    uint32_t reserved           # 0, or META_VLAN_TAG | TCI (above)

# TCP health of one flow (docs/DESIGN.md, fast-path semantics), [0] client, [1] server side;
# with flow_t's tcp_* members. Times are the low 32 bits of the packet time in microseconds:
# only differences of less than 71 minutes are taken.
ctypedef struct tcp_t:
    uint32_t nxt[2]              # next expected sequence number (highest seq + len + SYN/FIN)
    uint32_t nxt_us[2]           # when nxt last advanced
    uint32_t mark_us             # the latest SYN, then SYN-ACK, then the client's first payload
    uint32_t rtt_us[3]           # SYN -> SYN-ACK, SYN-ACK -> ACK, request -> response
    uint32_t retr_pkts[2]        # counters of the current slice
    uint32_t retr_bytes[2]
    uint32_t ooo_pkts[2]

ctypedef struct flow_t:
    uint8_t a_addr[16]           # client
    uint8_t b_addr[16]           # server
    uint64_t first_us
    uint64_t last_us
    uint64_t bytes[2]
    uint32_t pkts[2]
    uint32_t frags[2]
    uint32_t hash
    uint32_t prev
    uint32_t next
    uint16_t a_port
    uint16_t b_port
    uint16_t vlan
    uint16_t outer_vlan
    uint16_t icmp_type
    uint8_t flags[2]
    uint8_t tos[2]
    uint8_t smac[6]
    uint8_t dmac[6]
    uint8_t proto
    uint8_t ip_version
    uint8_t tunnel
    uint8_t fin                  # bit 0: client sent FIN, bit 1: server sent FIN
    uint8_t closed               # 0 open, END_FIN or END_RST + 1 when closed
    uint8_t hs                   # TCP handshake: 0 none, 1 SYN seen, 2 SYN-ACK seen, 3 done
    uint8_t window_open
    uint8_t l7_open              # nDPI detection in progress (its state in FlowTable.l7f)
    # TCP health, TCP flows only (never touched for others); these fill flow_t to 192 bytes,
    # three cache lines (the table is 64-byte aligned), the header and tcp_t's first part
    # being what every segment reads
    uint8_t tcp_state            # TS_* bits
    uint16_t tcp_win_max[2]      # largest advertised window, unscaled (current slice)
    uint16_t tcp_zero_win[2]     # zero-window segments (current slice, at most 65535)
    tcp_t tcp

# A flow's nDPI detection, beside flow_t (allocated only with L7 on, so that flow_t stays two
# cache lines and a table without L7 pays nothing for it).
ctypedef struct l7f_t:
    l7_verdict_t verdict
    uint16_t pkts                # packets given to nDPI
    uint32_t state               # its nDPI flow state in the pool, while detection is open

ctypedef struct feat_t:
    uint64_t last_us[3]          # last window packet: any direction, client, server
    uint16_t plen[18]            # 3 x 6 bins: both, client, server
    uint16_t tdiff[18]
    uint32_t hist                # entropy histogram slot, NONE32 when none
    uint16_t window              # packets counted in the window (0..256)
    uint16_t entropy[2]
    uint8_t seen[2]              # a window packet of this direction was seen

ctypedef struct stats_t:
    uint64_t packets
    uint64_t bytes
    uint64_t reasons[R_COUNT]
    uint64_t flows_created
    uint64_t flows_exported
    uint64_t exported_by_reason[5]
    uint64_t active_flows
    uint64_t pool_exhausted
    uint64_t other_shard         # packets left to the other workers of a sharded run
    uint64_t l7_packets          # packets given to nDPI
    uint64_t l7_pool_empty       # flows left undetected: no nDPI flow state was free


cdef class FlowTable:
    cdef flow_t* flows               # 64-byte aligned within flows_mem
    cdef void* flows_mem
    cdef feat_t* feats
    cdef uint32_t* slots             # hash table: flow index or NONE32
    cdef uint32_t mask
    cdef uint32_t capacity
    cdef uint32_t free_head          # free list through flow.next
    cdef uint32_t never_used         # slots from here on have never held a flow
    cdef uint32_t lru_head, lru_tail       # open flows, least recently seen first
    cdef uint32_t cl_head, cl_tail         # closed (FIN/RST) flows awaiting their linger
    cdef decoder_t dec
    cdef uint32_t** pool_chunks
    cdef uint32_t pool_nchunks
    cdef uint32_t pool_free
    cdef uint32_t pool_next
    cdef stats_t st
    cdef public uint64_t idle_us
    cdef public uint64_t lifetime_us
    cdef public uint64_t linger_us
    cdef readonly bint features
    cdef readonly uint32_t shard_index
    cdef readonly uint32_t shard_count
    cdef object out_array
    cdef flow_record_t* out
    cdef uint32_t out_n
    cdef uint32_t out_cap
    cdef uint64_t now_us
    cdef l7_t* l7                    # NULL: no L7 detection
    cdef l7f_t* l7f
    cdef readonly uint32_t l7_tcp_packets     # nDPI gets at most this many packets of a flow
    cdef readonly uint32_t l7_other_packets

    cdef void unlink(self, uint32_t i) noexcept nogil
    cdef void append(self, uint32_t i) noexcept nogil
    cdef uint32_t pool_get(self) noexcept nogil
    cdef uint32_t* hist(self, uint32_t s) noexcept nogil
    cdef void close_window(self, feat_t* ft) noexcept nogil
    cdef uint32_t find(self, pkt_t* p, uint32_t h, int* direction) noexcept nogil
    cdef void remove_slot(self, uint32_t i) noexcept nogil
    cdef void emit(self, uint32_t i, uint8_t reason) noexcept nogil
    cdef void release(self, uint32_t i) noexcept nogil
    cdef void expire_flow(self, uint32_t i, uint8_t reason) noexcept nogil
    cdef void prefetch_histograms(self, uint32_t i) noexcept nogil
    cdef void expire_due(self, uint64_t now) noexcept nogil
    cdef void flush_all(self) noexcept nogil
    cdef uint32_t create(self, pkt_t* p, uint32_t h, int* direction) noexcept nogil
    cdef void reset_counters(self, flow_t* f, uint64_t ts) noexcept nogil
    cdef void features_update(self, uint32_t i, flow_t* f, pkt_t* p, int d) noexcept nogil
    cdef void l7_update(self, uint32_t i, flow_t* f, pkt_t* p) noexcept nogil
    cdef void l7_close(self, uint32_t i, bint giveup) noexcept nogil
    cdef int account(self, pkt_t* p) noexcept nogil
    cdef Py_ssize_t run(self, const uint8_t* buf, Py_ssize_t buflen, pkt_meta_t* meta,
                        Py_ssize_t start, Py_ssize_t end) noexcept nogil
