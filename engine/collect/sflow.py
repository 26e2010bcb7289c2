"""sFlow v5 datagrams: flow samples (compact and expanded) whose raw packet headers go through the
fast path's decoder (a small FlowTable, every sample of a batch in one call, each exported as its
own flow, so one sample gives one record), extended switch data (VLANs), counter samples
(counted)."""
from __future__ import annotations

import struct

import numpy as np

from engine._fastpath import META_DTYPE, FlowTable
from engine.fields import RECORD_DTYPE, join_records

_U32 = struct.Struct(">I")
_2U32 = struct.Struct(">II")
_FLOW = struct.Struct(">IIIIIIII")          # compact flow sample header
_XFLOW = struct.Struct(">IIIIIIIIIII")      # expanded flow sample header
_RAW = struct.Struct(">IIII")
HEADER_LINKTYPE = {1: 1, 11: 101, 12: 101}   # sFlow header_protocol -> pcap link type

MAX_SAMPLES = 4096
OUTPUT_ROWS = 1024             # records the decoder's table holds before they are taken


class SflowDecoder:
    """Decodes sampled headers with the fast path (a private, tiny flow table)."""

    def __init__(self):
        self.table = FlowTable(max_flows=64, idle_timeout=3600.0, lifetime=3600.0,
                               features=False, output_size=OUTPUT_ROWS)

    def decode(self, headers: list) -> tuple[np.ndarray, np.ndarray]:
        """headers: [(bytes, linktype, frame_length)] -> (records, sample index of each record).
        Every sample through the table in one call, each exported at once (process_each), so
        samples of the same flow stay separate records; a sample that is not IP gives no
        record."""
        n = len(headers)
        meta = np.zeros(n, META_DTYPE)
        lens = np.fromiter((len(h[0]) for h in headers), np.uint32, n)
        meta["caplen"] = lens
        meta["offset"][1:] = np.cumsum(lens, dtype=np.uint64)[:-1]
        meta["wirelen"] = np.maximum(np.fromiter((h[2] for h in headers), np.uint64, n), lens)
        meta["linktype"] = np.fromiter((h[1] for h in headers), np.uint32, n)
        meta["ts_ns"] = 1_000_000_000 + np.arange(n, dtype=np.uint64) * 1000
        buf = b"".join(h[0] for h in headers)
        table = self.table
        rows = np.empty(OUTPUT_ROWS, np.int64)        # the sample of each output row
        parts, index = [], []
        done = 0
        while True:
            done = table.process_each(buf, meta, done, rows)
            if table.pending:
                index.append(rows[:table.pending].copy())
                parts.append(table.take())
            if done >= n:
                break
        if not parts:
            return np.zeros(0, RECORD_DTYPE), np.zeros(0, np.int64)
        if len(parts) == 1:
            return parts[0], index[0]
        return join_records(parts), np.concatenate(index)


def parse_sflow(col, exp, data: bytes, t: float) -> None:
    end = len(data)
    if end < 28:
        col.bad_datagram(exp, "truncated_header", data)
        return
    atype = _U32.unpack_from(data, 4)[0]
    if atype == 1:
        agent = bytes(data[8:12]) + b"\0" * 12
        ipv = 4
        off = 12
    elif atype == 2:
        agent = bytes(data[8:24])
        ipv = 6
        off = 24
    else:
        col.bad_datagram(exp, "bad_agent_address", data)
        return
    if end < off + 16:
        col.bad_datagram(exp, "truncated_header", data)
        return
    sub_agent, seq, _uptime, nsamples = struct.unpack_from(">IIII", data, off)
    off += 16
    exp.stats["sflow"] += 1
    dom = col.domain(exp, (5 << 8, sub_agent))
    if dom is None:
        col.bad_datagram(exp, "domain_limit", data)
        return
    col.sequence(exp, dom, seq, 1)
    if nsamples > MAX_SAMPLES:
        col.bad_datagram(exp, "bad_sample_count", data)
        return
    headers = []             # (bytes, linktype, frame_length)
    info = []                # (rate, input, output, vlan_in, vlan_out)
    counters = 0
    for _ in range(nsamples):
        if end - off < 8:
            col.bad_datagram(exp, "truncated_sample", data)
            break
        tag, slen = _2U32.unpack_from(data, off)
        off += 8
        if slen > end - off:
            col.bad_datagram(exp, "truncated_sample", data)
            break
        body_end = off + slen
        fmt = tag & 0xFFF
        if tag >> 12:
            off = body_end
            continue
        if fmt in (2, 4):
            counters += 1
        elif fmt in (1, 3):
            if fmt == 1:
                if slen < 32:
                    col.bad_set(exp, "truncated_sample")
                    off = body_end
                    continue
                _sq, _src, rate, _pool, _drops, inp, outp, nrec = _FLOW.unpack_from(data, off)
                p = off + 32
                inp &= 0x3FFFFFFF
                outp &= 0x3FFFFFFF
            else:
                if slen < 44:
                    col.bad_set(exp, "truncated_sample")
                    off = body_end
                    continue
                (_sq, _st, _si, rate, _pool, _drops, _if, inp, _of, outp,
                 nrec) = _XFLOW.unpack_from(data, off)
                p = off + 44
            hdr = None
            vlan = 0
            for _r in range(min(nrec, 64)):
                if body_end - p < 8:
                    col.bad_set(exp, "truncated_record")
                    break
                rtag, rlen = _2U32.unpack_from(data, p)
                p += 8
                if rlen > body_end - p:
                    col.bad_set(exp, "truncated_record")
                    break
                if rtag == 1 and rlen >= 16:
                    proto, flen, stripped, hlen = _RAW.unpack_from(data, p)
                    lt = HEADER_LINKTYPE.get(proto)
                    if lt is None:
                        col.bad_set(exp, "unsupported_header_protocol")
                    elif hlen > rlen - 16:
                        col.bad_set(exp, "truncated_record")
                    else:
                        # frame_length counts the FCS that ``stripped`` says was removed
                        flen = flen - stripped if stripped < flen else flen
                        hdr = (bytes(data[p + 16:p + 16 + hlen]), lt, flen)
                elif rtag == 1001 and rlen >= 16:
                    vlan = _U32.unpack_from(data, p)[0] & 0xFFF
                p += rlen
            if hdr is not None:
                headers.append(hdr)
                info.append((rate or 1, inp, outp, vlan))
            else:
                col.bad_set(exp, "flow_sample_without_header")
            col.totals["sflow_samples"] += 1
        off = body_end
    exp.stats["sflow_counter_samples"] += counters
    if headers:
        col.add_samples(exp, headers, [(agent, ipv, sub_agent, t) + i for i in info])


def samples_to_records(col, pending: list) -> np.ndarray:
    """Decode the headers of every queued sample (one feed() batch) in one pass; one record per
    sample whose header is IP."""
    headers = [h for _exp, h, _i in pending]
    if col._sflow is None:
        col._sflow = SflowDecoder()
    out, index = col._sflow.decode(headers)
    if len(out) != len(pending):
        got = set(index.tolist())
        for i, (exp, _h, _info) in enumerate(pending):
            if i not in got:
                col.bad_set(exp, "sample_not_ip")
    if len(out) == 0:
        return out
    keep = [(pending[i][0], pending[i][2]) for i in index.tolist()]
    infos = [k[1] for k in keep]
    agent, ipv, sub_agent, t, rate, inp, outp, vlan = map(list, zip(*infos))
    out["exporter_addr"] = np.frombuffer(b"".join(agent), np.uint8).reshape(-1, 16)
    out["exporter_ip_version"] = ipv
    out["observation_point"] = sub_agent
    out["flow_source"] = 2
    out["end_reason"] = 5
    ms = (np.asarray(t) * 1000).astype(np.uint64)
    out["first_ms"] = ms
    out["last_ms"] = ms
    out["input_snmp"] = inp
    out["output_snmp"] = outp
    vl = np.asarray(vlan, np.uint16)
    out["vlan"] = np.where(out["vlan"] == 0, vl, out["vlan"])
    if col.upscale:
        rates = np.asarray(rate, np.uint64)
        for c in ("in_bytes", "in_pkts", "out_bytes", "out_pkts"):
            out[c] *= rates
    for exp, info in keep:
        exp.stats["records"] += 1
        exp.stats["sflow_flows"] += 1
        exp.time_last_flow = int(info[3])
    return out
