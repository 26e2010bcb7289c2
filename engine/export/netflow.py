"""Flows to NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) collectors over UDP (``-n``).

* Destinations: (text, socket address, family) tuples (``-n HOST:PORT``, repeatable); datagrams
  go round robin across them, or every datagram to every one (``all_destinations``, ``-a``). Each destination has its own
  sequence numbers and template state, so each collector sees one consistent stream.
* ``-V 5|9|10`` (default 10 = IPFIX). ``-T`` picks the fields (v9/IPFIX; default @NTOPNG@ and
  ICMP_TYPE); ntop's elements go as 57472+n in v9 and under PEN 35632 in IPFIX. Fields with no
  NetFlow id or length 0 in the registry (SEQ_PLEN and the other vectors, TUNNEL_TYPE) and probe
  fields are skipped, said once on stderr. v5 has a fixed record: IPv4 only (IPv6 flows are
  counted and skipped), one record per direction of our biflows, 32-bit counters; -T does not
  apply.
* Two templates: ``-U`` (default 257) for IPv4 flows and ``-U``+1 for IPv6 flows (the address
  fields of the other version left out); one template when the field list has no addresses.
  Templates go in the first datagram to every destination and again every --template-refresh s.
* Times: flows carry their own clock (pcap replays are years old), so a datagram's export time is
  the latest flow end seen, rounded up to a second, and the system uptime counts from a base just
  before the first flow. v5/v9 FIRST/LAST_SWITCHED are uptime milliseconds, as the RFCs want: 32
  bits, about 49 days, so flows whose times span more (a capture that jumps years) go in separate
  datagrams, each with its own base; a flow that alone spans more is counted
  (``netflow_times_not_representable``), not sent. In IPFIX, which has no uptime in its header,
  they are sent as flowStartMilliseconds / flowEndMilliseconds (152/153, epoch ms; once, when -T
  names both forms).
* Sequence numbers: v5 flows sent before this datagram, v9 datagrams sent, IPFIX data records
  sent (per destination). ``-E TYPE:ID``: v5 engine type and id, v9 source id / IPFIX observation
  domain = ID.
* Datagrams at most ``--mtu`` (default 1500) minus the IP and UDP headers. Full datagrams of one
  template are built and sent in C (``_encode.send_datagrams``: sendmmsg(2), 64 a call); Python
  builds only those with templates and the last, mixed one of a flush.
* What the version cannot carry is counted, not guessed (proxy mode converts collected flows):
  ``netflow_conversion_drops`` flows not sent at all (IPv6 flows to v5, also counted as
  ``netflow_v5_ipv6_skipped``; v5/v9 flows longer than the uptime clock);
  ``netflow_values_clipped`` flows with a value too large for its wire field (v5: 32-bit
  counters, 16-bit interface indexes; v9/IPFIX: -T fields narrower than our column), sent as the
  field's largest value; ``netflow_fields_not_carried`` -T fields the
  version has no element for (not sent, said once on stderr).
"""
from __future__ import annotations

import math
import socket
import struct
import sys
import time
from dataclasses import dataclass, field as dc_field
from typing import Optional

import numpy as np

from engine.errors import FlowprobeError
from engine.export.base import Exporter
from engine.export.templates import parse_template
from engine.fields import BY_NAME, Field, Kind

VERSIONS = (5, 9, 10)
V5_MAX_RECORDS = 30
V5_HEADER = struct.Struct(">HHIIIIBBH")         # 24 bytes
V9_HEADER = struct.Struct(">HHIIII")            # 20 bytes
IPFIX_HEADER = struct.Struct(">HHIII")          # 16 bytes
SET_HEADER = struct.Struct(">HH")
UPTIME_SLACK_MS = 60_000
# without -T: ntopng's fields and the ICMP type, which v9/IPFIX carry in their own element
# (ports are 0 for ICMP) and which a collector would otherwise never see
DEFAULT_FIELDS = "@NTOPNG@ %ICMP_TYPE"
# the widest span of flow times one v5/v9 datagram can carry: every time, and the header's
# export second, within 32 bits of uptime milliseconds from the datagram's base
MAX_SPAN_MS = 0xFFFFFFFF - UPTIME_SLACK_MS - 2000
V5_DTYPE = np.dtype([("src", ">u4"), ("dst", ">u4"), ("nexthop", ">u4"), ("input", ">u2"),
                     ("output", ">u2"), ("pkts", ">u4"), ("octets", ">u4"), ("first", ">u4"),
                     ("last", ">u4"), ("sport", ">u2"), ("dport", ">u2"), ("pad1", "u1"),
                     ("flags", "u1"), ("proto", "u1"), ("tos", "u1"), ("src_as", ">u2"),
                     ("dst_as", ">u2"), ("src_mask", "u1"), ("dst_mask", "u1"), ("pad2", ">u2")])
assert V5_DTYPE.itemsize == 48

# IPFIX has no uptime in its header: the registry's FIRST/LAST_SWITCHED go as
# flowStartMilliseconds / flowEndMilliseconds (epoch ms, what collectors such as nfdump decode).
IPFIX_TIME_IDS = {"FIRST_SWITCHED": ("FLOW_START_MILLISECONDS", 152),
                  "LAST_SWITCHED": ("FLOW_END_MILLISECONDS", 153)}
_UINT = {1: "u1", 2: ">u2", 4: ">u4", 8: ">u8"}


@dataclass
class WireField:
    field: Field
    v9: int
    pen: int            # 0: IANA
    element: int
    length: int
    time: bool = False  # uptime milliseconds (v9 FIRST/LAST_SWITCHED)


@dataclass
class WireTemplate:
    tid: int
    family: int                 # 4 or 6: the flows it carries
    fields: list[WireField]
    dtype: np.dtype = dc_field(init=False)

    def __post_init__(self):
        from engine.export._encode import WireEncoder
        from engine.fields import RECORD_DTYPE
        parts = []
        for i, w in enumerate(self.fields):
            if w.field.codec.netflow_int and w.length in _UINT:
                parts.append((f"f{i}", _UINT[w.length]))
            else:
                parts.append((f"f{i}", "u1", (w.length,)))
        self.dtype = np.dtype(parts)     # packed, no alignment: the wire layout
        self.encoder = WireEncoder([(w.field, w.length, w.time) for w in self.fields],
                                   RECORD_DTYPE)
        assert self.encoder.rowsize == self.dtype.itemsize

    def template_record(self, version: int) -> bytes:
        out = [struct.pack(">HH", self.tid, len(self.fields))]
        for w in self.fields:
            if version == 10 and w.pen:
                out.append(struct.pack(">HHI", 0x8000 | w.element, w.length, w.pen))
            elif version == 10:
                out.append(struct.pack(">HH", w.element, w.length))
            else:
                out.append(struct.pack(">HH", w.v9, w.length))
        return b"".join(out)


def wire_fields(template, version: int, warn=None, skipped_out=None) -> list[WireField]:
    """The template's fields that NetFlow v9 / IPFIX can carry; the rest reported once (and
    appended to ``skipped_out``)."""
    out, skipped = [], []
    names = {f.name for f in template.fields}
    for f in template.fields:
        if f.v9 is None or not f.length or f.codec.netflow is None:
            skipped.append(f.name)
            continue
        if version == 10 and f.name in IPFIX_TIME_IDS:
            ms_name, element = IPFIX_TIME_IDS[f.name]
            if ms_name not in names:          # else the same time is already there, in ms
                out.append(WireField(BY_NAME[ms_name], element, 0, element, 8))
        elif version == 9 and f.kind is Kind.SEC:
            out.append(WireField(f, f.v9, 0, f.v9, 4, time=True))
        else:
            out.append(WireField(f, f.v9, f.pen or 0, f.element, f.length))
    skipped += [p.name for p in template.probe_fields]
    if skipped_out is not None:
        skipped_out.extend(skipped)
    if skipped and warn:
        warn(f"flowprobe: not exportable over NetFlow/IPFIX, not sent: {', '.join(skipped)}")
    return out


def _column(w: WireField, records: np.ndarray, base_ms: int) -> np.ndarray:
    """One wire field's values for every record, ready to assign into the template dtype: the
    kind's NetFlow codec, zero where the field does not apply, clipped to the wire length."""
    f = w.field
    col = records[f.column]
    if w.time:                               # v9 FIRST/LAST_SWITCHED: uptime milliseconds
        return (col.astype(np.int64) - base_ms).clip(0, 0xFFFFFFFF).astype(np.uint32)
    codec = f.codec
    out = codec.netflow(records, col)
    if codec.applies is not None:
        mask = codec.applies(records)
        out = np.where(mask[:, None] if out.ndim > 1 else mask, out, 0)
    if codec.netflow_int and out.dtype.itemsize > w.length:
        out = np.minimum(out, np.uint64((1 << (8 * w.length)) - 1))
    return out


def reference_rows(t: WireTemplate, records: np.ndarray, base_ms: int) -> bytes:
    """The data records of ``t`` for every flow through numpy, field by field: the reference
    twin of the C encoder (WireEncoder.rows)."""
    arr = np.zeros(len(records), dtype=t.dtype)
    for i, w in enumerate(t.fields):
        arr[f"f{i}"] = _column(w, records, base_ms)
    return arr.tobytes()


def reference_v5_rows(v4: np.ndarray, base_ms: int) -> bytes:
    """NetFlow v5 records of IPv4 biflows through numpy (the reference of _encode.v5_rows): the
    forward record of every flow, then the reverse record of those with reply packets."""
    back = v4[v4["out_pkts"] > 0]
    n = len(v4) + len(back)
    arr = np.zeros(n, dtype=V5_DTYPE)
    k = len(v4)

    def addr(col):
        return col[:, :4].copy().view(">u4").reshape(-1)

    for part, recs, fwd in ((slice(0, k), v4, True), (slice(k, n), back, False)):
        a = arr[part]
        a["src"] = addr(recs["src_addr" if fwd else "dst_addr"])
        a["dst"] = addr(recs["dst_addr" if fwd else "src_addr"])
        a["input"] = np.minimum(recs["input_snmp" if fwd else "output_snmp"], 0xFFFF)
        a["output"] = np.minimum(recs["output_snmp" if fwd else "input_snmp"], 0xFFFF)
        a["pkts"] = np.minimum(recs["in_pkts" if fwd else "out_pkts"], 0xFFFFFFFF)
        a["octets"] = np.minimum(recs["in_bytes" if fwd else "out_bytes"], 0xFFFFFFFF)
        a["first"] = (recs["first_ms"].astype(np.int64) - base_ms).clip(0, 0xFFFFFFFF)
        a["last"] = (recs["last_ms"].astype(np.int64) - base_ms).clip(0, 0xFFFFFFFF)
        icmp = np.isin(recs["protocol"], (1, 58))
        sport = recs["src_port" if fwd else "dst_port"]
        dport = recs["dst_port" if fwd else "src_port"]
        a["sport"] = np.where(icmp, 0, sport)
        a["dport"] = np.where(icmp, recs["icmp_type"], dport)   # v5 puts ICMP type*256+code here
        a["flags"] = recs["client_tcp_flags" if fwd else "server_tcp_flags"]
        a["proto"] = recs["protocol"]
        a["tos"] = recs["src_tos" if fwd else "dst_tos"]
        arr[part] = a
    return arr.tobytes()


class _Rows:
    """Encoded data records waiting for datagrams: whole encoded batches, taken k rows at a time
    (no copy per record)."""

    def __init__(self, size: int):
        self.size = size
        self.chunks: list = []          # [memoryview, offset in bytes]
        self.count = 0

    def add(self, blob: bytes) -> None:
        if blob:
            self.chunks.append([memoryview(blob), 0])
            self.count += len(blob) // self.size

    def take(self, k: int) -> bytes:
        out = []
        self.count -= k
        need = k * self.size
        while need:
            chunk = self.chunks[0]
            mv, off = chunk
            n = min(need, len(mv) - off)
            out.append(mv[off:off + n])
            need -= n
            if off + n == len(mv):
                del self.chunks[0]
            else:
                chunk[1] = off + n
        return b"".join(out)


@dataclass
class Destination:
    text: str
    addr: tuple
    family: int
    sequence: int = 0            # v5 flows / v9 packets / IPFIX data records
    templates_sent: float = -1.0
    datagrams: int = 0
    sock: Optional[socket.socket] = None
    sockaddr: bytes = b""        # addr as struct sockaddr_in/_in6, for sendmmsg(2)

    def __post_init__(self):
        host, port = self.addr[0], self.addr[1]
        packed = socket.inet_pton(self.family, host)
        if self.family == socket.AF_INET6:
            flowinfo, scope = (self.addr[2], self.addr[3]) if len(self.addr) == 4 else (0, 0)
            self.sockaddr = struct.pack("=H", self.family) + struct.pack(
                ">HI", port, flowinfo) + packed + struct.pack("=I", scope)
        else:
            self.sockaddr = struct.pack("=H", self.family) + struct.pack(">H", port) + packed \
                + bytes(8)


class NetFlowExporter(Exporter):
    def __init__(self, destinations: list[tuple[str, tuple, int]], *, version: int = 10,
                 template=None, template_id: int = 257, engine_type: int = 0, engine_id: int = 0,
                 mtu: int = 1500, all_destinations: bool = False, template_refresh: float = 60.0,
                 warn=None, c_send: bool = True):
        self.version = version
        # False: every datagram built in Python, the reference twin tests hold the C path to
        self.c_send = c_send and (all_destinations or len(destinations) == 1)
        self.mtu = mtu
        self.all = all_destinations
        self.refresh = template_refresh
        self.engine_type = engine_type
        self.engine_id = engine_id
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self.dests: list[Destination] = []
        socks: dict[int, socket.socket] = {}
        for text, addr, fam in destinations:
            if fam not in socks:
                socks[fam] = socket.socket(fam, socket.SOCK_DGRAM)
            self.dests.append(Destination(text, addr, fam, sock=socks[fam]))
        self._socks = list(socks.values())
        self._rr = 0
        self.base_ms: Optional[int] = None
        self.clock_ms = 0
        self.counters = {"netflow_datagrams": 0, "netflow_flows": 0, "netflow_records": 0,
                         "netflow_send_drops": 0, "netflow_v5_ipv6_skipped": 0,
                         "netflow_conversion_drops": 0, "netflow_values_clipped": 0,
                         "netflow_fields_not_carried": 0, "netflow_times_not_representable": 0}
        self.templates: list[WireTemplate] = []
        self._pending: dict[int, _Rows] = {}
        if version != 5:
            tmpl = template if template is not None else parse_template(DEFAULT_FIELDS)
            skipped: list[str] = []
            wf = wire_fields(tmpl, version, self.warn, skipped)
            self.counters["netflow_fields_not_carried"] = len(skipped)
            if not wf:
                raise FlowprobeError("none of the fields can be exported over NetFlow/IPFIX",
                                     status=2, setting="template")
            v4 = [w for w in wf if w.field.kind is not Kind.IPV6]
            v6 = [w for w in wf if w.field.kind is not Kind.IPV4]
            if [w.field.name for w in v4] == [w.field.name for w in v6]:
                self.templates = [WireTemplate(template_id, 0, v4)]
            else:
                self.templates = [WireTemplate(template_id, 4, v4),
                                  WireTemplate(template_id + 1, 6, v6)]
            self._pending = {t.tid: _Rows(t.dtype.itemsize) for t in self.templates}
            head = V9_HEADER.size if version == 9 else IPFIX_HEADER.size
            limit = min(self._limit(d.family) for d in self.dests)
            for t in self.templates:
                if head + 2 * SET_HEADER.size + len(self._template_set()) > limit \
                        or head + SET_HEADER.size + t.dtype.itemsize + 3 > limit:
                    raise FlowprobeError(f"too small for the template ({t.dtype.itemsize} "
                                         "bytes a flow)", status=2, setting="netflow.mtu",
                                         value=mtu)

    # --- clock ----------------------------------------------------------------------------
    def _time_groups(self, records: np.ndarray):
        """The records in groups whose times fit one v5/v9 datagram's uptime clock (IPFIX: all
        at once). A flow that alone spans more than the clock can express is counted, not sent."""
        if self.version == 10:
            yield records
            return
        from engine.export._encode import time_range
        first, last, longest = time_range(records)      # the common case in one C pass
        base = self.base_ms
        if longest <= MAX_SPAN_MS and (base is None and last - first <= MAX_SPAN_MS
                                       or base is not None and first >= base
                                       and last - base <= MAX_SPAN_MS + UPTIME_SLACK_MS):
            yield records
            return
        lo = np.minimum(records["first_ms"], records["last_ms"]).astype(np.int64)
        hi = np.maximum(records["first_ms"], records["last_ms"]).astype(np.int64)
        ok = hi - lo <= MAX_SPAN_MS
        if not ok.all():
            self.counters["netflow_times_not_representable"] += int((~ok).sum())
            self.counters["netflow_conversion_drops"] += int((~ok).sum())
            records, lo, hi = records[ok], lo[ok], hi[ok]
        if not len(records):
            return
        base = self.base_ms
        if base is not None and lo.min() >= base and \
                hi.max() - base <= MAX_SPAN_MS + UPTIME_SLACK_MS:
            yield records
            return
        # windows of half the span by first time: a window's flows shorter than half the span
        # fit one base; a longer flow gets a group of its own
        half = MAX_SPAN_MS // 2
        window = np.where(hi - lo > half, -1 - np.arange(len(records)), (lo - lo.min()) // half)
        order = np.argsort(window, kind="stable")
        for part in np.split(order, np.flatnonzero(np.diff(window[order])) + 1):
            yield records[part]

    def _advance_clock(self, records: np.ndarray) -> None:
        from engine.export._encode import time_range
        first, last, _ = time_range(records)
        if self.base_ms is not None and (first < self.base_ms
                                         or last - self.base_ms > MAX_SPAN_MS + UPTIME_SLACK_MS):
            self.flush()              # pending records were encoded against the old base
            self.base_ms = None
        if self.base_ms is None:
            self.base_ms = first - UPTIME_SLACK_MS
            self.clock_ms = last      # the export time of a new base's datagrams
        self.clock_ms = max(self.clock_ms, last)

    def _header_time(self) -> tuple[int, int]:
        """(export epoch seconds, system uptime ms at that second)."""
        secs = math.ceil(self.clock_ms / 1000) if self.clock_ms else int(time.time())
        base = self.base_ms if self.base_ms is not None else secs * 1000 - UPTIME_SLACK_MS
        return secs, max(secs * 1000 - base, 0) & 0xFFFFFFFF

    # --- encoding -------------------------------------------------------------------------
    def export(self, records: np.ndarray) -> None:
        if not len(records):
            return
        self.counters["netflow_flows"] += len(records)
        for group in self._time_groups(records):
            self._advance_clock(group)
            if self.version == 5:
                self._export_v5(group)
            else:
                self._export_v9_ipfix(group)

    def _export_v9_ipfix(self, records: np.ndarray) -> None:
        records = np.ascontiguousarray(records)
        for t in self.templates:
            blob, _, clipped = t.encoder.rows(records, self.base_ms or 0, t.family)
            self._pending[t.tid].add(blob)
            self.counters["netflow_values_clipped"] += clipped
        self.flush()         # the run loop delivers thousands of flows a call (or once a second)

    def _export_v5(self, records: np.ndarray) -> None:
        v4 = records[records["ip_version"] == 4]
        if len(v4) < len(records) and not self.counters["netflow_v5_ipv6_skipped"]:
            self.warn("flowprobe: warning: NetFlow v5 carries no IPv6: IPv6 flows are not "
                      "exported, only counted (netflow_v5_ipv6_skipped); NetFlow v9 and IPFIX "
                      "carry them")
        self.counters["netflow_v5_ipv6_skipped"] += len(records) - len(v4)
        self.counters["netflow_conversion_drops"] += len(records) - len(v4)
        if not len(v4):
            return
        big = np.uint64(0xFFFFFFFF)
        self.counters["netflow_values_clipped"] += int(
            ((v4["in_pkts"] > big) | (v4["in_bytes"] > big) | (v4["out_pkts"] > big)
             | (v4["out_bytes"] > big) | (v4["input_snmp"] > 0xFFFF)
             | (v4["output_snmp"] > 0xFFFF)).sum())
        from engine.export._encode import v5_rows
        from engine.fields import RECORD_DTYPE
        blob, _ = v5_rows(np.ascontiguousarray(v4), RECORD_DTYPE, self.base_ms)
        self._pending.setdefault(0, _Rows(48)).add(blob)
        self.flush()

    # --- datagrams ------------------------------------------------------------------------
    def _next_dests(self) -> list[Destination]:
        if self.all or len(self.dests) == 1:
            return self.dests
        d = self.dests[self._rr % len(self.dests)]
        self._rr += 1
        return [d]

    def _limit(self, fam: int) -> int:
        return self.mtu - (48 if fam == socket.AF_INET6 else 28)

    def _send(self, d: Destination, data: bytes) -> None:
        try:
            assert d.sock is not None
            d.sock.sendto(data, d.addr)
            self.counters["netflow_datagrams"] += 1
            d.datagrams += 1
        except OSError:
            self.counters["netflow_send_drops"] += 1

    def flush(self) -> None:
        if self.version == 5:
            self._flush_v5()
            return
        if self.c_send:                          # the same datagrams to every destination
            if any(d.templates_sent < 0 or time.monotonic() - d.templates_sent >= self.refresh
                   for d in self.dests):
                self._flush_one(self.dests)      # the templates go first, with what fits
            header_len = V9_HEADER.size if self.version == 9 else IPFIX_HEADER.size
            room = min(self._limit(d.family) for d in self.dests) - header_len
            for i, t in enumerate(self.templates):
                # the previous kind's last records share a datagram with this kind's first ones,
                # as the Python path packs them
                while any(self._pending[u.tid].count for u in self.templates[:i]):
                    self._flush_one(self.dests)
                rows = self._pending[t.tid]
                per = (room - SET_HEADER.size - 3) // t.dtype.itemsize
                if rows.count >= per:            # the full datagrams of this kind, in C
                    self._send_rows(rows, rows.count - rows.count % per, per, t.tid)
        while any(r.count for r in self._pending.values()):
            self._flush_one(self._next_dests())

    def _send_rows(self, rows: _Rows, k: int, per: int, set_id: int) -> None:
        """k pending records of one kind, ``per`` a datagram, to every destination, in C."""
        from engine.export._encode import send_datagrams
        blob = rows.take(k)
        secs, uptime = self._header_time()
        for d in self.dests:
            assert d.sock is not None
            sent, refused, d.sequence = send_datagrams(
                self.version, blob, rows.size, per, set_id, secs, uptime, self.engine_type,
                self.engine_id, d.sock.fileno(), d.sockaddr, d.sequence & 0xFFFFFFFF)
            d.datagrams += sent
            self.counters["netflow_datagrams"] += sent
            self.counters["netflow_send_drops"] += refused
        self.counters["netflow_records"] += k

    def _flush_one(self, dests: list[Destination]) -> None:
        """One datagram's worth of pending records to ``dests`` (templates added where due)."""
        now = time.monotonic()
        limit = min(self._limit(d.family) for d in dests)
        header_len = V9_HEADER.size if self.version == 9 else IPFIX_HEADER.size
        need_t = [d for d in dests if d.templates_sent < 0 or now - d.templates_sent >= self.refresh]
        tset = self._template_set() if need_t else b""
        room = limit - header_len - len(tset)
        sets, nrec = [], 0
        for t in self.templates:
            rows = self._pending[t.tid]
            size = t.dtype.itemsize
            if not rows.count or room < SET_HEADER.size + size + 3:
                continue
            k = min(rows.count, (room - SET_HEADER.size - 3) // size)
            body = rows.take(k)
            pad = (-(SET_HEADER.size + len(body))) % 4
            sets.append(SET_HEADER.pack(t.tid, SET_HEADER.size + len(body) + pad) + body
                        + b"\0" * pad)
            room -= len(sets[-1])
            nrec += k
        payload = b"".join(sets)
        secs, uptime = self._header_time()
        for d in dests:
            tpart = tset if d in need_t else b""
            if not payload and not tpart:
                continue
            if d in need_t:
                d.templates_sent = now
            body = tpart + payload
            if self.version == 9:
                count = nrec + (len(self.templates) if tpart else 0)
                head = V9_HEADER.pack(9, count, uptime, secs, d.sequence & 0xFFFFFFFF,
                                      self.engine_id)
                d.sequence += 1
            else:
                head = IPFIX_HEADER.pack(10, IPFIX_HEADER.size + len(body), secs,
                                         d.sequence & 0xFFFFFFFF, self.engine_id)
                d.sequence += nrec
            self._send(d, head + body)
        self.counters["netflow_records"] += nrec

    def _template_set(self) -> bytes:
        body = b"".join(t.template_record(self.version) for t in self.templates)
        set_id = 0 if self.version == 9 else 2
        return SET_HEADER.pack(set_id, SET_HEADER.size + len(body)) + body

    def _flush_v5(self) -> None:
        rows = self._pending.get(0)
        per = min(V5_MAX_RECORDS, (min(self._limit(d.family) for d in self.dests)
                                   - V5_HEADER.size) // 48)
        if rows is not None and rows.count and self.c_send:
            self._send_rows(rows, rows.count, per, 0)
        while rows is not None and rows.count:
            k = min(per, rows.count)
            chunk = rows.take(k)
            secs, uptime = self._header_time()
            for d in self._next_dests():
                head = V5_HEADER.pack(5, k, uptime, secs, 0, d.sequence & 0xFFFFFFFF,
                                      self.engine_type, self.engine_id, 0)
                d.sequence += k
                self._send(d, head + chunk)
            self.counters["netflow_records"] += k

    # --- Exporter protocol -----------------------------------------------------------------
    def tick(self, stats) -> None:
        self.flush()
        if self.version != 5:      # periodic template refresh even without flows
            now = time.monotonic()
            for d in self.dests:
                if d.templates_sent < 0 or now - d.templates_sent >= self.refresh:
                    self._flush_one([d])

    def close(self) -> None:
        self.flush()
        for s in self._socks:
            s.close()
        self._socks = []

    def stats(self) -> dict:
        return dict(self.counters)
