"""IPFIX messages (RFC 7011): enterprise and variable-length elements, template withdrawal,
options (systemInitTimeMilliseconds, sampling), reverse elements of PEN 29305 (RFC 5103)."""
from __future__ import annotations

import struct

from engine.collect.netflow import _count, install, options_data
from engine.collect.template import VARLEN

_HDR = struct.Struct(">HHIII")
_SET = struct.Struct(">HH")
_U32 = struct.Struct(">I")


def _fields(body, off: int, end: int, cnt: int):
    fields = []
    for _ in range(cnt):
        if off + 4 > end:
            return None, off
        fid, fl = _SET.unpack_from(body, off)
        off += 4
        pen = 0
        if fid & 0x8000:
            if off + 4 > end:
                return None, off
            pen = _U32.unpack_from(body, off)[0]
            off += 4
            fid &= 0x7FFF
        if fl == 0:
            return None, off
        fields.append((pen, fid, fl))
    return fields, off


def parse_ipfix(col, exp, data: bytes, t: float) -> None:
    if len(data) < 16:
        col.bad_datagram(exp, "truncated_header", data)
        return
    _v, length, secs, seq, domain_id = _HDR.unpack_from(data)
    if length < 16 or length > len(data):
        col.bad_datagram(exp, "bad_message_length", data)
        return
    exp.stats["ipfix"] += 1
    dom = col.domain(exp, (10, domain_id))
    if dom is None:
        col.bad_datagram(exp, "domain_limit", data)
        return
    export_ms = secs * 1000
    mv = memoryview(data)
    off, end = 16, length
    total = 0
    data_records = 0
    unknown = False

    def meta():
        return (exp.addr16, exp.ipv, domain_id, export_ms, -1, dom.init_ms, dom.sampling)

    m = None
    while end - off >= 4:
        sid, slen = _SET.unpack_from(data, off)
        if slen < 4 or off + slen > end:
            col.bad_datagram(exp, "bad_set_length", data)
            break
        body = mv[off + 4:off + slen]
        off += slen
        if sid == 2 or sid == 3:
            _templates(col, exp, dom, body, sid == 3, t)
            m = None
        elif sid >= 256:
            tmpl = dom.templates.get(sid)
            if m is None:
                m = meta()
            if tmpl is None:
                col.hold(exp, dom, sid, body, m, t)
                unknown = True
            elif tmpl.is_options:
                options_data(col, exp, dom, tmpl, body)
                if tmpl.fixed and tmpl.reclen:
                    data_records += len(body) // tmpl.reclen
                else:
                    unknown = True
                m = None
            else:
                n = col.add_data(tmpl, body, m, exp)
                total += n
                data_records += n
        else:
            col.bad_set(exp, "reserved_set_id")
    col.sequence(exp, dom, seq, None if unknown else data_records)
    _count(col, exp, total, t)


def _templates(col, exp, dom, body, options: bool, t: float) -> None:
    off, end = 0, len(body)
    while end - off >= 4:
        tid, cnt = _SET.unpack_from(body, off)
        off += 4
        if cnt == 0:                               # withdrawal (tid 2/3: all templates)
            n = col.drop_templates(dom, None if tid in (2, 3) else tid)
            col.templates_total -= n
            exp.stats["template_withdrawals"] += n
            continue
        if tid < 256:
            col.bad_set(exp, "bad_template")
            return
        scope = 0
        if options:
            if off + 2 > end:
                col.bad_set(exp, "bad_options_template")
                return
            scope = struct.unpack_from(">H", body, off)[0]
            off += 2
            if scope == 0 or scope > cnt:
                col.bad_set(exp, "bad_options_template")
                return
        fields, off = _fields(body, off, end, cnt)
        if fields is None:
            col.bad_set(exp, "bad_template")
            return
        install(col, exp, dom, tid, fields, scope, options, t)


__all__ = ["parse_ipfix", "VARLEN"]
