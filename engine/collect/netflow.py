"""NetFlow v5 and v9 datagrams (RFC 3954): headers, (options) templates per exporter and source
id, data sets queued for vectorised conversion (see template.py)."""
from __future__ import annotations

import struct

import numpy as np

from engine.collect.template import SAMPLING_ELEMENTS, V5_TEMPLATE, Template, VARLEN

MAX_TEMPLATES_TOTAL = 65536          # all exporters and domains together

_V5_HDR = struct.Struct(">HHIIIIBBH")
_V9_HDR = struct.Struct(">HHIIII")
_SET = struct.Struct(">HH")


def parse_v5(col, exp, data: bytes, t: float) -> None:
    if len(data) < 24:
        col.bad_datagram(exp, "truncated_header", data)
        return
    _v, count, uptime, secs, nsecs, seq, etype, eid, samp = _V5_HDR.unpack_from(data)
    if count == 0 or count > 30 or len(data) < 24 + 48 * count:
        col.bad_datagram(exp, "truncated" if len(data) < 24 + 48 * count else "bad_count", data)
        return
    exp.stats["netflow_v5"] += 1
    dom = col.domain(exp, (5, (etype << 8) | eid))
    if dom is None:
        col.bad_datagram(exp, "domain_limit", data)
        return
    col.sequence(exp, dom, seq, count)
    rate = samp & 0x3FFF
    meta = (exp.addr16, exp.ipv, (etype << 8) | eid, secs * 1000 + nsecs // 1000000, uptime, -1,
            rate if rate > 1 else 1)
    n = col.add_data(V5_TEMPLATE, memoryview(data)[24:24 + 48 * count], meta, exp)
    _count(col, exp, n, t)


def _count(col, exp, n: int, t: float) -> None:
    if n:
        exp.stats["records"] += n
        exp.stats["netflow_ipfix_flows"] += n
        col.totals["nf_ipfix_flows"] += n
        exp.time_last_flow = int(t)


def parse_v9(col, exp, data: bytes, t: float) -> None:
    if len(data) < 20:
        col.bad_datagram(exp, "truncated_header", data)
        return
    _v, count, uptime, secs, seq, source_id = _V9_HDR.unpack_from(data)
    exp.stats["netflow_v9"] += 1
    dom = col.domain(exp, (9, source_id))
    if dom is None:
        col.bad_datagram(exp, "domain_limit", data)
        return
    col.sequence(exp, dom, seq, 1)
    off, end = 20, len(data)
    export_ms = secs * 1000
    meta = (exp.addr16, exp.ipv, source_id, export_ms, uptime, -1, dom.sampling)
    total = 0
    mv = memoryview(data)
    while end - off >= 4:
        sid, slen = _SET.unpack_from(data, off)
        if slen < 4 or off + slen > end:
            col.bad_datagram(exp, "bad_flowset_length", data)
            break
        body = mv[off + 4:off + slen]
        off += slen
        if sid == 0:
            _v9_templates(col, exp, dom, body, t)
            meta = (exp.addr16, exp.ipv, source_id, export_ms, uptime, -1, dom.sampling)
        elif sid == 1:
            _v9_options(col, exp, dom, body, t)
        elif sid >= 256:
            tmpl = dom.templates.get(sid)
            if tmpl is None:
                col.hold(exp, dom, sid, body, meta, t)
            elif tmpl.is_options:
                options_data(col, exp, dom, tmpl, body)
                meta = (exp.addr16, exp.ipv, source_id, export_ms, uptime, -1, dom.sampling)
            else:
                total += col.add_data(tmpl, body, meta, exp)
        else:
            col.bad_set(exp, "reserved_flowset_id")
    _count(col, exp, total, t)


def install(col, exp, dom, tid: int, fields: list, scope: int, options: bool, t: float) -> None:
    old = dom.templates.get(tid)
    if old is not None and old.same_as(fields, scope) and old.is_options == options:
        return                                            # a refresh
    if old is None and (len(dom.templates) >= col.max_templates
                        or col.templates_total >= MAX_TEMPLATES_TOTAL):
        col.bad_set(exp, "template_limit")
        return
    tmpl = Template(tid, fields, scope, options)
    if tmpl.reclen == 0 and tmpl.fixed:
        col.bad_set(exp, "empty_template")
        return
    col.set_template(dom, tid, tmpl)
    if old is None:
        col.templates_total += 1
    exp.stats["templates"] += 1
    if tid in dom.pending:
        if options:
            held = dom.pending.pop(tid)
            dom.npending -= len(held)
            col.pending_total -= len(held)
            for data, _meta, _t in held:
                options_data(col, exp, dom, tmpl, data)
                exp.stats["no_template_decoded"] += 1
        else:
            _count(col, exp, col.release(exp, dom, tid, tmpl), t)


def _v9_templates(col, exp, dom, body, t: float) -> None:
    off, end = 0, len(body)
    while end - off >= 4:
        tid, cnt = _SET.unpack_from(body, off)
        off += 4
        if tid < 256 or off + 4 * cnt > end or cnt == 0:
            col.bad_set(exp, "bad_template")
            return
        fields = [(0, ft, fl) for ft, fl in struct.iter_unpack(">HH", body[off:off + 4 * cnt])]
        off += 4 * cnt
        if any(fl == 0 or fl == VARLEN for _, _, fl in fields):
            col.bad_set(exp, "bad_template")
            return
        install(col, exp, dom, tid, fields, 0, False, t)


def _v9_options(col, exp, dom, body, t: float) -> None:
    off, end = 0, len(body)
    while end - off >= 6:
        tid, slen, olen = struct.unpack_from(">HHH", body, off)
        off += 6
        if tid < 256 or slen % 4 or olen % 4 or off + slen + olen > end or slen + olen == 0:
            col.bad_set(exp, "bad_options_template")
            return
        fields = [(0, ft, fl) for ft, fl in struct.iter_unpack(">HH", body[off:off + slen + olen])]
        off += slen + olen
        if any(fl == 0 for _, _, fl in fields):
            col.bad_set(exp, "bad_options_template")
            return
        install(col, exp, dom, tid, fields, slen // 4, True, t)
        if end - off < 6:
            break


def options_data(col, exp, dom, tmpl: Template, body) -> None:
    """Options data: the sampling rate and system init time of the domain."""
    if tmpl.fixed:
        n = len(body) // tmpl.reclen
        raw = bytes(body[:n * tmpl.reclen])
    else:
        raw, n = tmpl.split_variable(memoryview(body))
    if n == 0:
        return
    exp.stats["option_records"] += n
    arr = np.frombuffer(raw, tmpl.dtype, count=n)
    interval = space = None
    for i, (pen, elem, length) in enumerate(tmpl.fields):
        if pen != 0 or length == VARLEN or length > 8:
            continue
        col_ = arr[f"f{i}"]
        if col_.ndim > 1:
            continue
        v = int(col_[-1])
        if elem == 160:                 # systemInitTimeMilliseconds: ms since 1970
            if v >= 1 << 63:
                col.bad_set(exp, "bad_init_time")
            else:
                dom.init_ms = v
        elif elem in (34, 50, 305):
            interval = v
        elif elem == 306:
            space = v
    if interval:
        dom.sampling = (interval + space) // interval if space is not None else interval
        dom.sampling = min(max(1, dom.sampling), (1 << 64) - 1)


__all__ = ["parse_v5", "parse_v9", "install", "options_data", "SAMPLING_ELEMENTS"]
