"""NetFlow v9 / IPFIX templates turned into numpy dtypes, and data sets into flow records.

A template with only fixed-length fields becomes one numpy structured dtype (big-endian
integers, byte arrays for addresses); a data set is then ``np.frombuffer`` and every column of
RECORD_DTYPE is filled by one vectorised operation. Templates with variable-length elements are
projected record by record (Python) onto the dtype of their fixed fields, then share that path.
NetFlow v5 is handled as one more fixed template.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from engine.fields import FIELDS, RECORD_DTYPE, Kind

NTP_EPOCH_OFFSET = 2208988800          # seconds from 1900-01-01 to 1970-01-01
VARLEN = 65535

_SAMPLING = {34, 50, 305}      # samplingInterval, samplerRandomInterval, samplingPacketInterval
SAMPLING_ELEMENTS = _SAMPLING | {306}

# How a registry field's wire value goes into its column, by kind, and the length it needs
# (None: any). Times, ICMP type/code pairs, sampling and the init time are not plain fields:
# convert() handles those elements itself.
_DECODES = {Kind.UINT: ("int", None), Kind.FLAGS_OR: ("int", None), Kind.ICMP: ("icmp", None),
            Kind.OUTER_VLAN: ("int", None), Kind.TCP: ("int", None),
            Kind.L7_PROTO: ("int", None),          # the app id (nProbe's L7_PROTO element)
            Kind.IPV4: ("ipv4", 4), Kind.IPV6: ("ipv6", 16), Kind.EXPORTER_V4: ("exp4", 4),
            Kind.EXPORTER_V6: ("exp6", 16), Kind.MAC: ("mac", 6)}


def element_map() -> dict:
    """(pen, element) -> (field, primary) for every registry field the collector can decode:
    its NetFlow v9 id, its IPFIX (pen, element) and its aliases (primary False: a field's own
    id wins over an alias when a record has both)."""
    out: dict = {}
    for f in FIELDS:
        if f.v9 is None or f.kind not in _DECODES:
            continue
        out.setdefault((0, f.v9), (f, True))
        if f.pen:
            out.setdefault((f.pen, f.element), (f, True))
    for f in FIELDS:
        if f.kind in _DECODES:
            for alias in f.aliases:
                out.setdefault(alias, (f, False))
    return out


class Template:
    """One template: fields as (pen, element, length); ``dtype`` covers the fixed fields."""

    __slots__ = ("tid", "fields", "fixed", "reclen", "dtype", "names", "scope_count",
                 "is_options", "minlen", "program", "_compiled")

    def __init__(self, tid: int, fields: list, scope_count: int = 0, is_options: bool = False):
        self.tid = tid
        self.fields = fields
        self.scope_count = scope_count
        self.is_options = is_options
        self.fixed = all(length != VARLEN for _, _, length in fields)
        parts: list = []
        self.names = []
        for i, (pen, elem, length) in enumerate(fields):
            name = f"f{i}"
            self.names.append(name)
            if length == VARLEN:
                continue
            if length in (1, 2, 4, 8):
                parts.append((name, f">u{length}"))
            else:
                parts.append((name, "u1", (length,)))
        self.dtype = np.dtype(parts) if parts else np.dtype([("_", "u1", (0,))])
        self.reclen = self.dtype.itemsize if self.fixed else 0
        # a variable-length field takes at least one length byte
        self.minlen = sum((1 if length == VARLEN else length) for _, _, length in fields)
        # registry fields in decoding order: (record field index, field, how), aliases first so
        # that a field's own id, decoded later, wins
        known = element_map()
        steps = []
        for i, (pen, elem, length) in enumerate(fields):
            hit = known.get((pen, elem))
            if hit is None or length == VARLEN:
                continue
            f, primary = hit
            how, need = _DECODES[f.kind]
            if need is None or need == length:
                steps.append((primary, i, f, how))
        self.program = [(i, f, how) for primary, i, f, how in sorted(steps, key=lambda s: s[0])]
        self._compiled: Optional[np.ndarray] = None

    @property
    def compiled(self) -> np.ndarray:
        """The C decode's program for this template (compiled once, see compile_program)."""
        if self._compiled is None:
            self._compiled = compile_program(self)
        return self._compiled

    def same_as(self, fields: list, scope_count: int) -> bool:
        return self.fields == fields and self.scope_count == scope_count

    def split_variable(self, data: memoryview) -> tuple[bytes, int]:
        """Records of a variable-length data set projected onto ``dtype`` (fixed fields only);
        returns (bytes, number of records). Stops at padding or a truncated record."""
        out = []
        off, n, end = 0, 0, len(data)
        minlen = max(self.minlen, 1)
        while end - off >= minlen:
            start = off
            rec = []
            ok = True
            for pen, elem, length in self.fields:
                if length == VARLEN:
                    if off >= end:
                        ok = False
                        break
                    ln = data[off]
                    off += 1
                    if ln == 255:
                        if off + 2 > end:
                            ok = False
                            break
                        ln = (data[off] << 8) | data[off + 1]
                        off += 2
                    off += ln
                    if off > end:
                        ok = False
                        break
                else:
                    if off + length > end:
                        ok = False
                        break
                    rec.append(bytes(data[off:off + length]))
                    off += length
            if not ok:
                off = start
                break
            out.append(b"".join(rec))
            n += 1
        return b"".join(out), n


def _as_u64(col: np.ndarray) -> np.ndarray:
    """A big-endian column (integer or byte array of any length) as uint64."""
    if col.ndim == 1:
        return col.astype(np.uint64)
    width = col.shape[1]
    v = np.zeros(len(col), np.uint64)
    for j in range(max(0, width - 8), width):
        v = (v << np.uint64(8)) | col[:, j].astype(np.uint64)
    return v


def _addr_bytes(col: np.ndarray, width: int) -> np.ndarray:
    if col.ndim == 1:                       # 4-byte address stored as >u4
        return col.astype(">u4").view(np.uint8).reshape(-1, 4)
    return col[:, :width]


def _ntp_ms(v: np.ndarray) -> np.ndarray:
    secs = (v >> np.uint64(32)).astype(np.int64) - NTP_EPOCH_OFFSET
    frac = (v & np.uint64(0xFFFFFFFF)).astype(np.uint64)
    ms = (frac * np.uint64(1000)) >> np.uint64(32)
    return np.maximum(secs * 1000 + ms.astype(np.int64), 0)


def convert(tmpl: Template, arr: np.ndarray, meta: dict, normalize: bool = False) -> np.ndarray:
    """Records of RECORD_DTYPE from ``arr`` (rows of ``tmpl.dtype``).

    ``meta`` holds per-record numpy arrays (or scalars): ``exporter`` (n,16) u1,
    ``exporter_ipv`` u1, ``domain`` u4, ``export_ms`` i8, ``uptime_ms`` i8 (v9/v5; -1 for IPFIX),
    ``init_ms`` i8 (-1 unknown), ``sampling`` u8 (1 = none), ``flow_source``."""
    n = len(arr)
    out = np.zeros(n, RECORD_DTYPE)
    out["exporter_addr"] = meta["exporter"]
    out["exporter_ip_version"] = meta["exporter_ipv"]
    out["observation_point"] = meta["domain"]
    out["flow_source"] = meta.get("flow_source", 1)
    out["end_reason"] = 5
    have = set()
    first = last = None
    first_kind = last_kind = None
    sampling = None
    icmp = None
    v6 = False
    for i, f, how in tmpl.program:
        col = arr[f"f{i}"]
        if how == "int":
            out[f.column] = _as_u64(col)
            have.add(f.column)
        elif how == "ipv4":
            out[f.column][:, :4] = _addr_bytes(col, 4)
        elif how == "ipv6":
            out[f.column] = col
            v6 = True
        elif how == "exp4":                          # relayed flows name their router
            out[f.column][:, :4] = _addr_bytes(col, 4)
            out[f.column][:, 4:] = 0
            out["exporter_ip_version"] = 4
        elif how == "exp6":
            out[f.column] = col
            out["exporter_ip_version"] = 6
        elif how == "mac":
            out[f.column] = col
        elif how == "icmp":
            icmp = _as_u64(col)
    for i, (pen, elem, length) in enumerate(tmpl.fields):
        if length == VARLEN or pen != 0:
            continue
        col = arr[f"f{i}"]
        if elem in (176, 178):
            icmp = (icmp if icmp is not None else 0) + (_as_u64(col) << np.uint64(8))
        elif elem in (177, 179):
            icmp = (icmp if icmp is not None else 0) + _as_u64(col)
        elif elem in (22, 150, 152, 154, 156, 158):
            first, first_kind = _as_u64(col), elem
        elif elem in (21, 151, 153, 155, 157, 159):
            last, last_kind = _as_u64(col), elem
        elif elem == 160:
            meta = dict(meta)
            meta["init_ms"] = _as_u64(col).astype(np.int64)
        elif elem in _SAMPLING:
            s = _as_u64(col)
            sampling = s if sampling is None else np.maximum(sampling, s)
    if "ip_version" not in have:
        out["ip_version"] = 6 if v6 else 4
    if icmp is not None:
        out["icmp_type"] = icmp
    # times
    export_ms = np.asarray(meta["export_ms"], np.int64)
    out["first_ms"] = _times(first, first_kind, meta, export_ms)
    out["last_ms"] = _times(last, last_kind, meta, export_ms)
    if first is None and last is not None:
        out["first_ms"] = out["last_ms"]
    elif last is None and first is not None:
        out["last_ms"] = out["first_ms"]
    # sampling: per record when the template carries it, else per exporter (options data)
    rate = meta.get("sampling")
    if sampling is not None:
        rate = np.where(sampling > 1, sampling, 1 if rate is None else rate)
    if rate is not None and meta.get("upscale", True):
        r = np.asarray(rate, np.uint64)
        if r.ndim or int(r) > 1:
            for c in ("in_bytes", "in_pkts", "out_bytes", "out_pkts"):
                out[c] *= r
    if normalize:
        normalize_records(out, "icmp_type" in have or icmp is not None)
    return out


def _times(v: Optional[np.ndarray], kind, meta: dict, export_ms: np.ndarray) -> np.ndarray:
    if v is None:
        return export_ms
    if kind in (21, 22):                 # sysUptime milliseconds
        uptime = np.asarray(meta.get("uptime_ms", -1), np.int64)
        init = np.asarray(meta.get("init_ms", -1), np.int64)
        vi = v.astype(np.int64)
        since = (uptime - vi) % (1 << 32)          # wraps of the 32-bit uptime
        from_uptime = export_ms - since
        from_init = init + vi
        res = np.where(uptime >= 0, from_uptime, np.where(init >= 0, from_init, export_ms))
        return np.maximum(res, 0)
    if kind in (150, 151):
        return v * np.uint64(1000)
    if kind in (152, 153):
        return v
    if kind in (154, 155, 156, 157):
        return _ntp_ms(v)
    if kind in (158, 159):               # delta microseconds before the export time
        return np.maximum(export_ms - (v // np.uint64(1000)).astype(np.int64), 0)
    return export_ms


def compile_program(tmpl: Template) -> np.ndarray:
    """``tmpl`` as the flat int64 program of engine/collect/_collect.pyx: the same steps, in the
    same order, as convert() takes."""
    from engine.collect import _collect as C
    lengths = [length for _, _, length in tmpl.fields]
    steps = []
    have = set()
    v6 = False
    flags = 0
    ops = {"ipv4": (C.OP_COPY, 4), "ipv6": (C.OP_COPY, 16), "mac": (C.OP_COPY, 6),
           "exp4": (C.OP_EXP4, 4), "exp6": (C.OP_EXP6, 16)}
    columns: dict = dict(RECORD_DTYPE.fields or {})
    for i, f, how in tmpl.program:
        ctype, off = columns[f.column][:2]
        if how == "int":
            steps.append((C.OP_INT, i, off, ctype.itemsize))
            have.add(f.column)
        elif how == "icmp":
            steps.append((C.OP_ICMP_SET, i, 0, 0))
            flags |= C.FLAG_ICMP
        else:
            op, width = ops[how]
            steps.append((op, i, off, width))
            v6 = v6 or how == "ipv6"
    head = {C.H_FIRST: -1, C.H_FIRST_KIND: 0, C.H_LAST: -1, C.H_LAST_KIND: 0, C.H_INIT: -1}
    for i, (pen, elem, length) in enumerate(tmpl.fields):
        if length == VARLEN or pen != 0:
            continue
        if elem in (176, 178):
            steps.append((C.OP_ICMP_HI, i, 0, 0))
            flags |= C.FLAG_ICMP
        elif elem in (177, 179):
            steps.append((C.OP_ICMP_LO, i, 0, 0))
            flags |= C.FLAG_ICMP
        elif elem in (22, 150, 152, 154, 156, 158):
            head[C.H_FIRST], head[C.H_FIRST_KIND] = i, elem
        elif elem in (21, 151, 153, 155, 157, 159):
            head[C.H_LAST], head[C.H_LAST_KIND] = i, elem
        elif elem == 160:
            head[C.H_INIT] = i
        elif elem in _SAMPLING:
            steps.append((C.OP_SAMPLING, i, 0, 0))
    if "icmp_type" in have or flags & C.FLAG_ICMP:
        flags |= C.FLAG_HAD_ICMP
    prog = np.zeros(C.HDR + len(lengths) + C.STEP_WORDS * len(steps), np.int64)
    prog[C.H_NFIELDS] = len(lengths)
    prog[C.H_RECLEN] = tmpl.reclen
    prog[C.H_MINLEN] = max(tmpl.minlen, 1)
    prog[C.H_NSTEPS] = len(steps)
    for k, v in head.items():
        prog[k] = v
    prog[C.H_FLAGS] = flags
    prog[C.H_IPVERSION] = 0 if "ip_version" in have else (6 if v6 else 4)
    prog[C.HDR:C.HDR + len(lengths)] = lengths
    if steps:
        prog[C.HDR + len(lengths):] = np.asarray(steps, np.int64).reshape(-1)
    return prog


def normalize_records(out: np.ndarray, had_icmp: bool) -> None:
    """--disable-cache: our record conventions (ICMP type in icmp_type and ports 0 for ICMP,
    first <= last)."""
    icmp = (out["protocol"] == 1) | (out["protocol"] == 58)
    if icmp.any():
        if not had_icmp:
            out["icmp_type"][icmp] = out["dst_port"][icmp]
        out["src_port"][icmp] = 0
        out["dst_port"][icmp] = 0
    bad = out["first_ms"] > out["last_ms"]
    if bad.any():
        out["first_ms"][bad] = out["last_ms"][bad]


# NetFlow v5 as a template (IANA numbering)
V5_TEMPLATE = Template(-5, [
    (0, 8, 4), (0, 12, 4), (0, 15, 4), (0, 10, 2), (0, 14, 2), (0, 2, 4), (0, 1, 4),
    (0, 22, 4), (0, 21, 4), (0, 7, 2), (0, 11, 2), (0, 210, 1), (0, 6, 1), (0, 4, 1),
    (0, 5, 1), (0, 16, 2), (0, 17, 2), (0, 9, 1), (0, 13, 1), (0, 210, 2)])
assert V5_TEMPLATE.reclen == 48
