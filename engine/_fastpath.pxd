# C structs shared by the fast path and any Cython module that reads its records or batches.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

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
