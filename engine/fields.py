"""The one field registry: every flow field is declared here once.

Two tables live in this module:

* ``COLUMNS``: the flow record, the memory layout the fast path writes (``flow_record_t`` in
  ``_fastpath.pxd``, natural alignment, same order). ``RECORD_DTYPE`` is built from it and checked
  against the C struct when the extension is imported.
* ``FIELDS``: the exported fields, with nProbe's name, the NetFlow v9 id and the IPFIX
  (enterprise, element) id. A field reads one column (``column``) through a ``Kind`` that says how
  to turn it into a value (address text, seconds from milliseconds, a six-bin vector...). Each kind
  has one codec (``CODECS``): its Python values, where it applies, how TLV/JSON/msgpack carry it,
  its NetFlow/IPFIX wire form. The C encoders implement the same codecs (engine/export/_encode.pyx)
  and the collector decodes a router's elements into columns by the same ids (and ``aliases``).

Adding a field is one line in ``FIELDS`` (plus, for a new column, the fast path that fills it):
every format, the ``-T`` templates and the collector find it by name and id.

ntop's own elements use PEN 35632; in NetFlow v9 numbering (and on ntopng's ZeroMQ wire) element
``n`` is ``57472 + n``. Fields with neither id (the per-direction vectors) are exported by name
only, in JSON, msgpack and TLV string keys; NetFlow/IPFIX templates cannot carry them.
"""
from __future__ import annotations

import difflib
import enum
import re
import socket
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

NTOP_PEN = 35632
NTOP_BASE_ID = 57472

# --- the flow record -------------------------------------------------------------------------
# (column, numpy type, count). The order matches flow_record_t in _fastpath.pxd.
COLUMNS: list[tuple[str, str, int]] = [
    ("first_ms", "u8", 1),          # epoch milliseconds of the first packet of this slice
    ("last_ms", "u8", 1),
    ("in_bytes", "u8", 1),          # client -> server, IP-layer bytes
    ("in_pkts", "u8", 1),
    ("out_bytes", "u8", 1),         # server -> client
    ("out_pkts", "u8", 1),
    ("src_addr", "u1", 16),         # client address; IPv4 in the first 4 bytes
    ("dst_addr", "u1", 16),         # server address
    ("exporter_addr", "u1", 16),    # collector: the router that exported the flow
    ("src_frags", "u4", 1),
    ("dst_frags", "u4", 1),
    ("input_snmp", "u4", 1),
    ("output_snmp", "u4", 1),
    ("observation_point", "u4", 1),
    ("src_port", "u2", 1),
    ("dst_port", "u2", 1),
    ("vlan", "u2", 1),              # 802.1Q tag in the flow key: the last (customer) tag
    ("outer_vlan", "u2", 1),        # QinQ: the first (service) tag
    ("icmp_type", "u2", 1),         # type * 256 + code, ICMP and ICMPv6
    ("l7_master", "u2", 1),         # nDPI master protocol id of a two-layer verdict (TLS of
                                    # TLS.Google), else 0
    ("l7_app", "u2", 1),            # nDPI application protocol id (0 unknown)
    ("l7_packets", "u2", 1),        # packets given to nDPI for the verdict
    ("seq_plen", "u2", 6),          # behaviour features, see DESIGN.md
    ("seq_tdiff", "u2", 6),
    ("seq_plen_c2s", "u2", 6),
    ("seq_plen_s2c", "u2", 6),
    ("seq_tdiff_c2s", "u2", 6),
    ("seq_tdiff_s2c", "u2", 6),
    ("entropy_c2s", "u2", 1),       # bits per byte x 1000
    ("entropy_s2c", "u2", 1),
    ("src_mac", "u1", 6),
    ("dst_mac", "u1", 6),
    ("ip_version", "u1", 1),
    ("protocol", "u1", 1),
    ("client_tcp_flags", "u1", 1),
    ("server_tcp_flags", "u1", 1),
    ("src_tos", "u1", 1),
    ("dst_tos", "u1", 1),
    ("end_reason", "u1", 1),        # END_REASONS
    ("flow_source", "u1", 1),       # 0 packets, 1 NetFlow/IPFIX, 2 sFlow (ntopng's FLOW_SOURCE)
    ("tunnel", "u1", 1),            # TUNNELS: outermost tunnel the flow was carried in
    ("exporter_ip_version", "u1", 1),
    ("l7_confidence", "u1", 1),     # nDPI's ndpi_confidence_t of the verdict
    ("l7_category", "u1", 1),       # nDPI's ndpi_protocol_category_t of the verdict
    # no padding anywhere (checked at import): numpy leaves padding bytes of structured copies
    # uninitialised, so a padded record would not compare byte for byte across copies
    # TCP health (fast path, TCP flows; DESIGN.md): per slice, except the latencies, which are
    # the connection's
    ("retr_pkts_c2s", "u4", 1),     # retransmitted segments, client -> server
    ("retr_pkts_s2c", "u4", 1),
    ("retr_bytes_c2s", "u4", 1),    # their IP-layer bytes
    ("retr_bytes_s2c", "u4", 1),
    ("ooo_pkts_c2s", "u4", 1),      # out-of-order segments
    ("ooo_pkts_s2c", "u4", 1),
    ("zero_win_c2s", "u4", 1),      # zero-window segments (the sender's receive window is full)
    ("zero_win_s2c", "u4", 1),
    ("client_nw_latency_ms", "u4", 1),  # (ACK - SYN-ACK) / 2
    ("server_nw_latency_ms", "u4", 1),  # (SYN-ACK - SYN) / 2
    ("appl_latency_ms", "u4", 1),   # client's first payload -> server's first payload after it
    ("win_max_c2s", "u2", 1),       # largest TCP window advertised, unscaled
    ("win_max_s2c", "u2", 1),
]


def _dtype() -> np.dtype:
    parts = []
    for name, typ, count in COLUMNS:
        parts.append((name, typ, (count,)) if count > 1 else (name, typ))
    return np.dtype(parts, align=True)


RECORD_DTYPE = _dtype()
if RECORD_DTYPE.itemsize != sum(RECORD_DTYPE[n].itemsize for n in RECORD_DTYPE.names or ()):
    raise ImportError("RECORD_DTYPE has padding: reorder or complete COLUMNS")


def join_records(parts: list) -> np.ndarray:
    """Record arrays end to end, joined as bytes: numpy copies a structured array field by
    field (measured: 0.36 us a record to concatenate, 0.14 to copy; as bytes, 0.01)."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return np.zeros(0, RECORD_DTYPE)
    dtype = parts[0].dtype
    return np.concatenate([np.ascontiguousarray(p).view(np.uint8) for p in parts]).view(dtype)

# end_reason values, in the order of the C enum, and the IPFIX flowEndReason (136) each maps to:
# 1 idle timeout, 2 active timeout, 3 end of flow detected, 4 forced end
END_REASONS = ("idle", "active", "fin", "rst", "end", "collected")
END_REASON_IPFIX = (1, 2, 3, 3, 4, 0)
# tunnel values, in the order of the C enum
TUNNELS = ("none", "gre", "ipip", "gtpu", "vxlan", "tzsp", "capwap", "erspan")


# --- value kinds ----------------------------------------------------------------------------
class Kind(enum.IntEnum):
    """How a record column becomes a field's value. Each kind has one codec (``CODECS`` below,
    the Python reference) and its C twin in engine/export/_encode.pyx, which checks at import
    that its numbering is this one."""
    UINT = 0            # the column as an unsigned integer
    SEC = 1             # epoch seconds, from a milliseconds column
    MS = 2              # epoch milliseconds
    FLAGS_OR = 3        # client | server TCP flags
    IPV4 = 4            # dotted text; only for IPv4 flows
    IPV6 = 5            # text; only for IPv6 flows
    EXPORTER_V4 = 6     # the exporter's address (collected flows), by its own IP version
    EXPORTER_V6 = 7
    MAC = 8             # aa:bb:cc:dd:ee:ff
    BINS = 9            # six integers (a list; comma-separated text in TLV)
    ICMP = 10           # type * 256 + code; only for ICMP and ICMPv6 flows
    END_REASON = 11     # IPFIX flowEndReason code of our end reason
    TUNNEL = 12         # the tunnel's name
    OUTER_VLAN = 13     # the outer (service) tag of QinQ; on NetFlow/IPFIX (dot1qVlanId) the
                        # only tag of a single-tagged flow too, where 0 would say "untagged"
    TCP = 14            # the column as an unsigned integer; only for TCP flows
    L7_PROTO = 15       # nDPI ids as ntopng reads them: "master.app" ("91.126"), or "app" for
                        # one protocol; NetFlow/IPFIX: the app id
    L7_NAME = 16        # nDPI names the same way ("TLS.Google"); NetFlow/IPFIX: NUL-padded


class Form(enum.Enum):
    """How TLV, JSON and msgpack carry a kind's value."""
    NUMBER = "number"
    TEXT = "text"
    VECTOR = "vector"


def _ipv4_texts(raw: np.ndarray) -> list:
    return [socket.inet_ntop(socket.AF_INET, b) for b in map(bytes, raw[:, :4])]


def _ipv6_texts(raw: np.ndarray) -> list:
    return [socket.inet_ntop(socket.AF_INET6, b) for b in map(bytes, raw)]


def _mac_texts(raw: np.ndarray) -> list:
    return [b.hex(":") for b in map(bytes, raw)]


def _version_is(column: str, want: int):
    return lambda records: records[column] == want


@dataclass(frozen=True)
class Codec:
    """One kind's rules. ``values(records, column)`` gives the Python values (a list);
    ``applies(records)`` (None: always) says which records have the field at all (an IPv6
    address is absent from an IPv4 flow); ``netflow(records, column)`` gives the NetFlow/IPFIX
    wire column (None: NetFlow cannot carry the kind), an integer column when
    ``netflow_int``, else bytes."""
    form: Form
    values: Callable[[np.ndarray, np.ndarray], list]
    applies: Optional[Callable[[np.ndarray], np.ndarray]] = None
    netflow: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None
    netflow_int: bool = True


def _flags_or(records: np.ndarray) -> np.ndarray:
    return records["client_tcp_flags"] | records["server_tcp_flags"]


def _is_icmp(records: np.ndarray) -> np.ndarray:
    return np.isin(records["protocol"], (1, 58))


def _is_tcp(records: np.ndarray) -> np.ndarray:
    return records["protocol"] == 6
# --- nDPI protocol ids and names ----------------------------------------------------------------
L7_NAME_LENGTH = 32           # NetFlow/IPFIX bytes of L7_PROTO_NAME (NUL-padded text)
_L7_NAMES: Optional[list] = None


def l7_names() -> list:
    """nDPI's protocol names by id (this build's libndpi; ["Unknown"] without it), each cut to
    31 bytes so that a "master.app" name fits every encoder's buffer, in printable ASCII without
    the characters JSON or CSV would have to escape (none of nDPI's names has any)."""
    global _L7_NAMES
    if _L7_NAMES is None:
        from engine._fastpath import l7_protocol_names
        _L7_NAMES = [re.sub(r'[^ -~]|["\\,]', "_", n[:31]) for n in l7_protocol_names()] \
            or ["Unknown"]
    return _L7_NAMES


def _l7_ids(records: np.ndarray) -> list:
    return [f"{m}.{a}" if m else str(a)
            for m, a in zip(records["l7_master"].tolist(), records["l7_app"].tolist())]


def _l7_name_texts(records: np.ndarray) -> list:
    names = l7_names()

    def name(i: int) -> str:
        return names[i] if i < len(names) else str(i)
    return [f"{name(m)}.{name(a)}" if m else name(a)
            for m, a in zip(records["l7_master"].tolist(), records["l7_app"].tolist())]


def _l7_name_bytes(records: np.ndarray) -> np.ndarray:
    texts = [t.encode()[:L7_NAME_LENGTH] for t in _l7_name_texts(records)]
    return np.frombuffer(b"".join(t.ljust(L7_NAME_LENGTH, b"\0") for t in texts),
                         np.uint8).reshape(len(texts), L7_NAME_LENGTH)


CODECS: dict[Kind, Codec] = {
    Kind.UINT: Codec(Form.NUMBER, lambda r, c: c.tolist(), netflow=lambda r, c: c),
    Kind.SEC: Codec(Form.NUMBER, lambda r, c: (c // 1000).tolist(),
                    netflow=lambda r, c: (c // 1000).astype(np.uint32)),
    Kind.MS: Codec(Form.NUMBER, lambda r, c: c.tolist(), netflow=lambda r, c: c),
    Kind.FLAGS_OR: Codec(Form.NUMBER, lambda r, c: _flags_or(r).tolist(),
                         netflow=lambda r, c: _flags_or(r)),
    Kind.IPV4: Codec(Form.TEXT, lambda r, c: _ipv4_texts(c), _version_is("ip_version", 4),
                     lambda r, c: c[:, :4], netflow_int=False),
    Kind.IPV6: Codec(Form.TEXT, lambda r, c: _ipv6_texts(c), _version_is("ip_version", 6),
                     lambda r, c: c, netflow_int=False),
    Kind.EXPORTER_V4: Codec(Form.TEXT, lambda r, c: _ipv4_texts(c),
                            _version_is("exporter_ip_version", 4), lambda r, c: c[:, :4],
                            netflow_int=False),
    Kind.EXPORTER_V6: Codec(Form.TEXT, lambda r, c: _ipv6_texts(c),
                            _version_is("exporter_ip_version", 6), lambda r, c: c,
                            netflow_int=False),
    Kind.MAC: Codec(Form.TEXT, lambda r, c: _mac_texts(c), netflow=lambda r, c: c,
                    netflow_int=False),
    Kind.BINS: Codec(Form.VECTOR, lambda r, c: c.tolist()),
    Kind.ICMP: Codec(Form.NUMBER, lambda r, c: c.tolist(), _is_icmp, lambda r, c: c),
    Kind.END_REASON: Codec(Form.NUMBER, lambda r, c: np.asarray(END_REASON_IPFIX)[c].tolist(),
                           netflow=lambda r, c: np.asarray(END_REASON_IPFIX, np.uint8)[c]),
    Kind.TUNNEL: Codec(Form.TEXT, lambda r, c: [TUNNELS[v] for v in c.tolist()]),
    Kind.OUTER_VLAN: Codec(Form.NUMBER, lambda r, c: c.tolist(),
                           netflow=lambda r, c: np.where(c != 0, c, r["vlan"])),
    Kind.TCP: Codec(Form.NUMBER, lambda r, c: c.tolist(), _is_tcp, lambda r, c: c),
    Kind.L7_PROTO: Codec(Form.TEXT, lambda r, c: _l7_ids(r), netflow=lambda r, c: c),
    Kind.L7_NAME: Codec(Form.TEXT, lambda r, c: _l7_name_texts(r),
                        netflow=lambda r, c: _l7_name_bytes(r), netflow_int=False),
}


# --- the exported fields ---------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    name: str                  # nProbe's name
    v9: Optional[int]          # NetFlow v9 id (ntop elements: 57472 + n)
    pen: Optional[int]         # IPFIX enterprise number (0 = IANA)
    element: Optional[int]     # IPFIX element id within pen
    column: str                # record column read
    kind: Kind                 # how the column becomes a value (CODECS)
    length: int                # NetFlow/IPFIX length in bytes (0 = not exportable there)
    description: str
    # other (pen, element) ids that mean this field when a router sends them (the collector
    # decodes them into the same column, after the field's own id)
    aliases: tuple[tuple[int, int], ...] = ()

    @property
    def codec(self) -> Codec:
        return CODECS[self.kind]


def _f(name: str, v9: Optional[int], column: str, kind: Kind, length: int, description: str,
       aliases: tuple = ()) -> Field:
    if v9 is None:
        pen = element = None
    elif v9 >= NTOP_BASE_ID:
        pen, element = NTOP_PEN, v9 - NTOP_BASE_ID
    else:
        pen, element = 0, v9
    return Field(name, v9, pen, element, column, kind, length, description, aliases)


K = Kind
REVERSE_PEN = 29305           # RFC 5103 biflows: the reverse direction of an IANA element
FIELDS: list[Field] = [
    _f("IN_BYTES", 1, "in_bytes", K.UINT, 8, "bytes client to server", ((0, 85),)),
    _f("IN_PKTS", 2, "in_pkts", K.UINT, 8, "packets client to server", ((0, 86),)),
    _f("PROTOCOL", 4, "protocol", K.UINT, 1, "IP protocol number"),
    _f("SRC_TOS", 5, "src_tos", K.UINT, 1, "TOS/DSCP client to server"),
    _f("TCP_FLAGS", 6, "client_tcp_flags", K.FLAGS_OR, 1, "OR of the TCP flags of both directions"),
    _f("L4_SRC_PORT", 7, "src_port", K.UINT, 2, "client port"),
    _f("IPV4_SRC_ADDR", 8, "src_addr", K.IPV4, 4, "client IPv4 address"),
    _f("INPUT_SNMP", 10, "input_snmp", K.UINT, 4, "ingress interface index"),
    _f("L4_DST_PORT", 11, "dst_port", K.UINT, 2, "server port"),
    _f("IPV4_DST_ADDR", 12, "dst_addr", K.IPV4, 4, "server IPv4 address"),
    _f("OUTPUT_SNMP", 14, "output_snmp", K.UINT, 4, "egress interface index"),
    _f("LAST_SWITCHED", 21, "last_ms", K.SEC, 4, "last packet, epoch seconds"),
    _f("FIRST_SWITCHED", 22, "first_ms", K.SEC, 4, "first packet, epoch seconds"),
    _f("OUT_BYTES", 23, "out_bytes", K.UINT, 8, "bytes server to client",
       ((REVERSE_PEN, 1), (REVERSE_PEN, 85))),
    _f("OUT_PKTS", 24, "out_pkts", K.UINT, 8, "packets server to client",
       ((REVERSE_PEN, 2), (REVERSE_PEN, 86))),
    _f("IPV6_SRC_ADDR", 27, "src_addr", K.IPV6, 16, "client IPv6 address"),
    _f("IPV6_DST_ADDR", 28, "dst_addr", K.IPV6, 16, "server IPv6 address"),
    _f("ICMP_TYPE", 32, "icmp_type", K.ICMP, 2, "ICMP type * 256 + code", ((0, 139),)),
    _f("DST_TOS", 55, "dst_tos", K.UINT, 1, "TOS/DSCP server to client", ((REVERSE_PEN, 5),)),
    _f("IN_SRC_MAC", 56, "src_mac", K.MAC, 6, "client MAC address"),
    # ntopng reads 56/81 as the source (client) MAC and 80/57 as the destination (server) MAC
    _f("OUT_DST_MAC", 57, "dst_mac", K.MAC, 6, "server MAC address (IPFIX postDestinationMacAddress)"),
    _f("SRC_VLAN", 58, "vlan", K.UINT, 2, "VLAN id (the last, customer tag of QinQ)"),
    _f("DST_VLAN", 59, "vlan", K.UINT, 2, "VLAN id (the last, customer tag of QinQ)"),
    _f("IP_PROTOCOL_VERSION", 60, "ip_version", K.UINT, 1, "4 or 6"),
    _f("IN_DST_MAC", 80, "dst_mac", K.MAC, 6, "server MAC address"),
    _f("OUT_SRC_MAC", 81, "src_mac", K.MAC, 6, "client MAC address (IPFIX postSourceMacAddress)"),
    _f("EXPORTER_IPV4_ADDRESS", 130, "exporter_addr", K.EXPORTER_V4, 4, "router that exported the flow"),
    _f("EXPORTER_IPV6_ADDRESS", 131, "exporter_addr", K.EXPORTER_V6, 16, "router that exported the flow"),
    _f("FLOW_END_REASON", 136, "end_reason", K.END_REASON, 1, "IPFIX flowEndReason: 1 idle, 2 active, 3 FIN/RST, 4 end"),
    _f("FLOW_START_MILLISECONDS", 152, "first_ms", K.MS, 8, "first packet, epoch ms"),
    _f("FLOW_END_MILLISECONDS", 153, "last_ms", K.MS, 8, "last packet, epoch ms"),
    _f("DOT1Q_SRC_VLAN", 243, "outer_vlan", K.OUTER_VLAN, 2, "outer (service) VLAN tag of QinQ"),
    _f("OBSERVATION_POINT_ID", 300, "observation_point", K.UINT, 4, "observation point / domain",
       ((0, 138),)),
    _f("CLIENT_TCP_FLAGS", NTOP_BASE_ID + 78, "client_tcp_flags", K.UINT, 1, "TCP flags sent by the client"),
    _f("SERVER_TCP_FLAGS", NTOP_BASE_ID + 79, "server_tcp_flags", K.UINT, 1, "TCP flags sent by the server",
       ((REVERSE_PEN, 6),)),
    _f("SRC_FRAGMENTS", NTOP_BASE_ID + 80, "src_frags", K.UINT, 4, "IP fragments client to server"),
    _f("DST_FRAGMENTS", NTOP_BASE_ID + 81, "dst_frags", K.UINT, 4, "IP fragments server to client"),
    _f("SEQ_PLEN", NTOP_BASE_ID + 502, "seq_plen", K.BINS, 0, "payload-length bins, first 256 packets"),
    _f("ENTROPY_CLIENT_BYTES", NTOP_BASE_ID + 503, "entropy_c2s", K.UINT, 2, "client payload byte entropy x1000"),
    _f("ENTROPY_SERVER_BYTES", NTOP_BASE_ID + 504, "entropy_s2c", K.UINT, 2, "server payload byte entropy x1000"),
    _f("SEQ_TDIFF", NTOP_BASE_ID + 505, "seq_tdiff", K.BINS, 0, "inter-arrival bins, first 256 packets"),
    _f("FLOW_SOURCE", NTOP_BASE_ID + 579, "flow_source", K.UINT, 1, "0 packets, 1 NetFlow/IPFIX, 2 sFlow"),
    # nDPI's verdict (0 / "Unknown" when there is none: L7 off, undetected, collected)
    _f("L7_PROTO", NTOP_BASE_ID + 118, "l7_app", K.L7_PROTO, 2, "nDPI protocol ids, master.app"),
    _f("L7_PROTO_NAME", NTOP_BASE_ID + 119, "l7_app", K.L7_NAME, L7_NAME_LENGTH,
       "nDPI protocol names, master.app"),
    _f("L7_CONFIDENCE", NTOP_BASE_ID + 560, "l7_confidence", K.UINT, 1,
       "nDPI confidence: 0 unknown, 1 by port, 2 by IP, 3 DPI cache, 4 DPI"),
    # per-direction vectors: no id anywhere, exported by name only
    _f("SEQ_PLEN_CLIENT", None, "seq_plen_c2s", K.BINS, 0, "payload-length bins, client packets"),
    _f("SEQ_PLEN_SERVER", None, "seq_plen_s2c", K.BINS, 0, "payload-length bins, server packets"),
    _f("SEQ_TDIFF_CLIENT", None, "seq_tdiff_c2s", K.BINS, 0, "inter-arrival bins, client packets"),
    _f("SEQ_TDIFF_SERVER", None, "seq_tdiff_s2c", K.BINS, 0, "inter-arrival bins, server packets"),
    _f("TUNNEL_TYPE", None, "tunnel", K.TUNNEL, 0, "outermost tunnel the flow was carried in"),
    # TCP health (ids: nProbe's element list; the zero-window counts have none, name only)
    _f("RETRANSMITTED_IN_PKTS", NTOP_BASE_ID + 109, "retr_pkts_c2s", K.TCP, 4,
       "retransmitted TCP segments client to server"),
    _f("RETRANSMITTED_OUT_PKTS", NTOP_BASE_ID + 110, "retr_pkts_s2c", K.TCP, 4,
       "retransmitted TCP segments server to client"),
    _f("OOORDER_IN_PKTS", NTOP_BASE_ID + 111, "ooo_pkts_c2s", K.TCP, 4,
       "out-of-order TCP segments client to server"),
    _f("OOORDER_OUT_PKTS", NTOP_BASE_ID + 112, "ooo_pkts_s2c", K.TCP, 4,
       "out-of-order TCP segments server to client"),
    _f("CLIENT_NW_LATENCY_MS", NTOP_BASE_ID + 123, "client_nw_latency_ms", K.TCP, 4,
       "network latency client <-> probe: handshake (ACK - SYN-ACK) / 2, ms"),
    _f("SERVER_NW_LATENCY_MS", NTOP_BASE_ID + 124, "server_nw_latency_ms", K.TCP, 4,
       "network latency probe <-> server: handshake (SYN-ACK - SYN) / 2, ms"),
    _f("APPL_LATENCY_MS", NTOP_BASE_ID + 125, "appl_latency_ms", K.TCP, 4,
       "application latency: client's first payload to the server's first payload after it, ms"),
    _f("RETRANSMITTED_IN_BYTES", NTOP_BASE_ID + 127, "retr_bytes_c2s", K.TCP, 4,
       "IP bytes of the retransmitted TCP segments client to server"),
    _f("RETRANSMITTED_OUT_BYTES", NTOP_BASE_ID + 128, "retr_bytes_s2c", K.TCP, 4,
       "IP bytes of the retransmitted TCP segments server to client"),
    _f("TCP_WIN_MAX_IN", NTOP_BASE_ID + 416, "win_max_c2s", K.TCP, 2,
       "largest TCP window client to server (unscaled)"),
    _f("TCP_WIN_MAX_OUT", NTOP_BASE_ID + 420, "win_max_s2c", K.TCP, 2,
       "largest TCP window server to client (unscaled)"),
    _f("ZERO_WINDOW_IN_PKTS", None, "zero_win_c2s", K.TCP, 0,
       "TCP segments client to server advertising a zero window"),
    _f("ZERO_WINDOW_OUT_PKTS", None, "zero_win_s2c", K.TCP, 0,
       "TCP segments server to client advertising a zero window"),
]
del K

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
BY_V9: dict[int, Field] = {f.v9: f for f in FIELDS if f.v9 is not None}


def register(field: Field) -> Field:
    """Add a field to the registry (every format finds it by name from then on)."""
    if field.name in BY_NAME or (field.v9 is not None and field.v9 in BY_V9):
        raise ValueError(f"field {field.name} (id {field.v9}) is already registered")
    if field.column not in (RECORD_DTYPE.names or ()):
        raise ValueError(f"field {field.name}: no record column {field.column!r}")
    FIELDS.append(field)
    BY_NAME[field.name] = field
    if field.v9 is not None:
        BY_V9[field.v9] = field
    return field


def unregister(name: str) -> None:
    field = BY_NAME.pop(name)
    FIELDS.remove(field)
    if field.v9 is not None:
        del BY_V9[field.v9]

# The fields a plain dump shows (and the -T default): the flow key, counters, times, features,
# TCP health.
DEFAULT_TEMPLATE: tuple[str, ...] = (
    "IPV4_SRC_ADDR", "IPV4_DST_ADDR", "IPV6_SRC_ADDR", "IPV6_DST_ADDR", "L4_SRC_PORT", "L4_DST_PORT",
    "PROTOCOL", "IP_PROTOCOL_VERSION", "SRC_VLAN", "DOT1Q_SRC_VLAN", "ICMP_TYPE",
    "IN_PKTS", "IN_BYTES", "OUT_PKTS", "OUT_BYTES", "FIRST_SWITCHED", "LAST_SWITCHED",
    "FLOW_START_MILLISECONDS", "FLOW_END_MILLISECONDS", "CLIENT_TCP_FLAGS", "SERVER_TCP_FLAGS",
    "SRC_TOS", "DST_TOS", "IN_SRC_MAC", "IN_DST_MAC", "SRC_FRAGMENTS", "DST_FRAGMENTS",
    "FLOW_END_REASON", "TUNNEL_TYPE",
    "SEQ_PLEN", "SEQ_TDIFF", "SEQ_PLEN_CLIENT", "SEQ_PLEN_SERVER", "SEQ_TDIFF_CLIENT",
    "SEQ_TDIFF_SERVER", "ENTROPY_CLIENT_BYTES", "ENTROPY_SERVER_BYTES",
    "RETRANSMITTED_IN_PKTS", "RETRANSMITTED_OUT_PKTS", "RETRANSMITTED_IN_BYTES",
    "RETRANSMITTED_OUT_BYTES", "OOORDER_IN_PKTS", "OOORDER_OUT_PKTS", "ZERO_WINDOW_IN_PKTS",
    "ZERO_WINDOW_OUT_PKTS", "TCP_WIN_MAX_IN", "TCP_WIN_MAX_OUT", "CLIENT_NW_LATENCY_MS",
    "SERVER_NW_LATENCY_MS", "APPL_LATENCY_MS",
    "L7_PROTO", "L7_PROTO_NAME", "L7_CONFIDENCE",
)


class UnknownField(ValueError):
    pass


def lookup(name: str) -> Field:
    """The field called ``name``; an unknown name raises with the closest matches."""
    try:
        return BY_NAME[name.upper()]
    except KeyError:
        close = difflib.get_close_matches(name.upper(), BY_NAME, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownField(f"unknown field {name!r}{hint}") from None


# --- values ----------------------------------------------------------------------------------
def field_values(field: Field, records: np.ndarray) -> list:
    """The values of ``field`` for every record, as a list of Python values, None where the
    field does not apply to a record (an IPv6 address on an IPv4 flow, ICMP type on TCP...).
    Works column-wise: one numpy operation per field, not one per record."""
    codec = field.codec
    values = codec.values(records, records[field.column])
    if codec.applies is None:
        return values
    return [v if ok else None for v, ok in zip(values, codec.applies(records).tolist())]


def records_to_dicts(records: np.ndarray, names=DEFAULT_TEMPLATE) -> list[dict]:
    """Records as [{NAME: value}], leaving out fields that do not apply to a record."""
    fields = [BY_NAME[n] for n in names]
    columns = [field_values(f, records) for f in fields]
    out = []
    for row in zip(*columns):
        out.append({f.name: v for f, v in zip(fields, row) if v is not None})
    return out


def record_to_dict(rec, names=DEFAULT_TEMPLATE) -> dict:
    """One record (a numpy row) as {NAME: value}."""
    return records_to_dicts(np.asarray(rec).reshape(1), names)[0]
