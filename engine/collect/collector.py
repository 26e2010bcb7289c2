"""Datagrams in, flow records out: per-exporter state, statistics and batching.

``Collector.feed(datagrams)`` takes a batch of (payload, exporter address, arrival time) and returns
one RECORD_DTYPE array. A datagram that holds only data sets of known templates is taken whole by
C (_collect.Scanner: header, set walk, template lookup, sequence accounting and decode through
each template's compiled program, the GIL released); the others (templates, options data, data
before its template, anything malformed: the rare ones) are parsed in Python (netflow.py,
ipfix.py, sflow.py), which keeps the Scanner's copy of the exporters, domains and templates
current, their data sets decoded by one C call (_collect.decode_sets) before the walk goes on;
records come out in arrival order.
``c_decode=False`` keeps the reference twin: every datagram parsed in Python, the data sets of
each template joined and converted by numpy (template.convert), grouped by template.
"""
from __future__ import annotations

import socket
import struct
import time
from typing import Optional

import numpy as np

from engine.fields import RECORD_DTYPE
from engine.options import CollectorMode
from engine.collect import _collect
from engine.collect.template import V5_TEMPLATE, Template, convert

_INT64 = 1 << 63


def _signed(v: int) -> int:
    """A uint64 header value as the int64 word of the C decode's set table."""
    return v - (1 << 64) if v >= _INT64 else v

MAX_EXPORTERS = 4096
MAX_DOMAINS_PER_EXPORTER = 256
MAX_TEMPLATES_PER_DOMAIN = 1024
MAX_PENDING_SETS = 64            # data sets held per domain while their template is unknown
PENDING_AGE = 10.0               # seconds a held data set waits for its template
MAX_TEMPLATES_TOTAL = 65536      # all exporters together
MAX_PENDING_TOTAL = 4096         # held data sets, all exporters together

_PARSERS = None


def _parsers():
    global _PARSERS
    if _PARSERS is None:
        from engine.collect import ipfix, netflow, sflow
        _PARSERS = (netflow, ipfix, sflow)
    return _PARSERS


class Exporter:
    """One exporting device (by source address): counters and its observation domains."""
    __slots__ = ("name", "addr16", "ipv", "stats", "bad", "domains", "time_last_flow", "slot")

    def __init__(self, name: str):
        self.name = name
        if ":" in name:
            self.addr16 = socket.inet_pton(socket.AF_INET6, name)
            self.ipv = 6
            if self.addr16.startswith(b"\0" * 10 + b"\xff\xff"):      # v4-mapped
                self.addr16 = self.addr16[12:] + b"\0" * 12
                self.ipv = 4
                self.name = socket.inet_ntop(socket.AF_INET, self.addr16[:4])
        else:
            self.addr16 = socket.inet_aton(name) + b"\0" * 12
            self.ipv = 4
        self.stats = {"datagrams": 0, "bytes": 0, "netflow_v5": 0, "netflow_v9": 0,
                      "ipfix": 0, "sflow": 0, "records": 0, "netflow_ipfix_flows": 0,
                      "sflow_flows": 0, "sflow_counter_samples": 0, "option_records": 0,
                      "templates": 0, "template_withdrawals": 0, "lost": 0,
                      "sequence_resets": 0, "no_template": 0, "no_template_decoded": 0,
                      "no_template_dropped": 0}
        self.bad: dict[str, int] = {}
        self.domains: dict = {}
        self.time_last_flow = 0
        self.slot = -1                  # in the Scanner (c_decode)


class Domain:
    """(exporter, protocol version, source id / observation domain): templates and sequence."""
    __slots__ = ("templates", "next_seq", "last_seq", "sampling", "init_ms", "pending",
                 "npending", "slot")

    def __init__(self) -> None:
        self.templates: dict[int, Template] = {}
        self.next_seq: Optional[int] = None
        self.last_seq: Optional[int] = None
        self.sampling = 1
        self.init_ms = -1
        self.pending: dict[int, list] = {}
        self.npending = 0
        self.slot = -1                  # in the Scanner (c_decode; -1: sFlow, or the twin)


class Collector:
    def __init__(self, mode=CollectorMode.PASSTHROUGH, upscale: bool = True, bad_dump=None,
                 max_exporters: int = MAX_EXPORTERS,
                 max_templates: int = MAX_TEMPLATES_PER_DOMAIN,
                 max_pending: int = MAX_PENDING_SETS, pending_age: float = PENDING_AGE,
                 c_decode: bool = True):
        self.mode = CollectorMode(mode)
        self.c_decode = c_decode
        self.upscale = upscale
        self.bad_dump = bad_dump            # BadPacketWriter or None
        self.max_exporters = max_exporters
        self.max_templates = max_templates
        self.max_pending = max_pending
        self.pending_age = pending_age
        self.exporters: dict[str, Exporter] = {}
        self.templates_total = 0
        self.pending_total = 0
        self.totals = {"datagrams": 0, "records": 0, "exporters_over_limit": 0,
                       "bad_datagrams": 0, "sflow_samples": 0, "nf_ipfix_flows": 0}
        self._sflow = None
        self._last_purge = 0.0
        # per feed() call
        self._groups: dict[int, tuple[Template, list, list, list]] = {}
        self._sets: list = []               # (template, data, meta, records) for the C decode
        self._extra: list = []
        self._samples: list = []
        self._parts: list = []              # records decoded so far, in arrival order
        # the C walk (c_decode) and what its slots name; the domains the Python parsers looked
        # up while parsing one datagram (their state is handed back to the walk after it)
        self._scan = _collect.Scanner(V5_TEMPLATE.compiled) if c_decode else None
        self._slot_exporters: list[Exporter] = []
        self._slot_domains: list[Domain] = []
        self._py_domains: list[Domain] = []

    # --- entry points -------------------------------------------------------------------
    def exporter(self, name: str) -> Optional[Exporter]:
        e = self.exporters.get(name)
        if e is None:
            if len(self.exporters) >= self.max_exporters:
                self.totals["exporters_over_limit"] += 1
                return None
            e = self.exporters[name] = Exporter(name)
            if self._scan is not None:
                e.slot = self._scan.add_exporter(name, e.addr16, e.ipv)
                self._slot_exporters.append(e)
        return e

    def domain(self, exp: Exporter, key) -> Optional[Domain]:
        d = exp.domains.get(key)
        if d is None:
            if len(exp.domains) >= MAX_DOMAINS_PER_EXPORTER:
                return None
            d = exp.domains[key] = Domain()
            if self._scan is not None and exp.slot >= 0:
                d.slot = self._scan.add_domain(exp.slot, key[0], key[1])
                if d.slot >= 0:
                    self._slot_domains.append(d)
        if self._scan is not None:
            self._py_domains.append(d)
        return d

    def set_template(self, dom: Domain, tid: int, tmpl: Template) -> None:
        dom.templates[tid] = tmpl
        if self._scan is not None:
            self._scan.set_template(dom.slot, tid, None if tmpl.is_options else tmpl.compiled)

    def drop_templates(self, dom: Domain, tid: Optional[int] = None) -> int:
        """Template ``tid`` of ``dom`` withdrawn (None: every one); how many were there."""
        tids = list(dom.templates) if tid is None else [tid] if tid in dom.templates else []
        for t in tids:
            del dom.templates[t]
            if self._scan is not None:
                self._scan.set_template(dom.slot, t, None)
        return len(tids)

    def feed(self, datagrams) -> np.ndarray:
        """Parse (payload, exporter address text, arrival time) tuples; the records they hold."""
        self._groups = {}
        self._sets = []
        self._extra = []
        self._samples = []
        self._parts = []
        now = time.time()
        if self._scan is None:
            for data, addr, t in datagrams:
                self._parse(data, addr, t)
        else:
            self._walk(datagrams if type(datagrams) is list else list(datagrams))
        if now - self._last_purge > 1.0:
            self._last_purge = now
            self.purge_pending(now)
        return self._finish()

    def _parse(self, data, addr: str, t: float) -> None:
        """One datagram by the Python parsers."""
        netflow, ipfix, sflow = _parsers()
        self.totals["datagrams"] += 1
        exp = self.exporters.get(addr) or self.exporter(addr)
        if exp is None:
            return
        st = exp.stats
        st["datagrams"] += 1
        st["bytes"] += len(data)
        try:
            if len(data) < 4:
                self.bad_datagram(exp, "too_short", data)
                return
            b0, b1 = data[0], data[1]
            if b0 == 0 and b1 == 9:
                netflow.parse_v9(self, exp, data, t)
            elif b0 == 0 and b1 == 10:
                ipfix.parse_ipfix(self, exp, data, t)
            elif b0 == 0 and b1 == 5:
                netflow.parse_v5(self, exp, data, t)
            elif data[:4] == b"\0\0\0\x05":
                sflow.parse_sflow(self, exp, data, t)
            else:
                self.bad_datagram(exp, "unknown_version", data)
        except (struct.error, IndexError, ValueError, OverflowError):
            self.bad_datagram(exp, "malformed", data)

    def _walk(self, datagrams: list) -> None:
        """The batch through the C walk, in order; each datagram it leaves goes to _parse, with
        the walk's counters and sequence state folded in before and the state the parser left
        handed back after."""
        normalize = self.mode is not CollectorMode.PASSTHROUGH
        scan = self._scan
        assert scan is not None
        i, total, n, need = 0, len(datagrams), 0, 0
        out = None
        while i < total:
            if out is None:
                out = np.empty(max(need, 32 * (total - i)), RECORD_DTYPE)
                n = 0
            i, n, need = scan.scan(datagrams, i, out, n, self.upscale, normalize)
            if need:                                # out is full
                self._parts.append(out[:n])
                out = None
                continue
            self._fold()
            if i == total:
                break
            if n:                                   # the rows so far, before the parser's
                self._parts.append(out[:n])
                out, n = out[n:], 0
            self._py_domains = []
            self._parse(*datagrams[i])
            for dom in self._py_domains:
                scan.set_domain(dom.slot, dom.next_seq, dom.last_seq, dom.sampling, dom.init_ms)
            if self._sets:
                self._parts.append(self._decode_sets(normalize))
                self._sets = []
            i += 1
        if out is not None and n:
            self._parts.append(out[:n])

    def _fold(self) -> None:
        """The walk's counters into the exporters' and totals, its sequence state into the
        domains."""
        assert self._scan is not None
        exps, doms, datagrams, flows = self._scan.fold()
        self.totals["datagrams"] += datagrams
        self.totals["nf_ipfix_flows"] += flows
        for slot, dg, nbytes, v5, v9, ipfix, recs, lost, resets, t in exps:
            e = self._slot_exporters[slot]
            st = e.stats
            st["datagrams"] += dg
            st["bytes"] += nbytes
            st["netflow_v5"] += v5
            st["netflow_v9"] += v9
            st["ipfix"] += ipfix
            st["records"] += recs
            st["netflow_ipfix_flows"] += recs
            st["lost"] += lost
            st["sequence_resets"] += resets
            if t is not None:
                e.time_last_flow = int(t)
        for slot, next_seq, last_seq in doms:
            d = self._slot_domains[slot]
            d.next_seq, d.last_seq = next_seq, last_seq

    # --- helpers the parsers call -----------------------------------------------------------
    def bad_datagram(self, exp: Exporter, reason: str, data: bytes) -> None:
        exp.bad[reason] = exp.bad.get(reason, 0) + 1
        self.totals["bad_datagrams"] += 1
        if self.bad_dump is not None:
            self.bad_dump.write(exp, data)

    def bad_set(self, exp: Exporter, reason: str) -> None:
        """A problem inside an otherwise usable datagram (counted, the rest is still parsed)."""
        exp.bad[reason] = exp.bad.get(reason, 0) + 1

    def sequence(self, exp: Exporter, dom: Domain, seq: int, advance: Optional[int]) -> None:
        """Check ``seq`` against the expected value; ``advance`` is what this datagram adds
        (None: unknown, skip the next check). Exporters that count the current message in its
        own sequence number (softflowd's IPFIX) are recognised and not counted as losses."""
        if dom.next_seq is not None:
            gap = (seq - dom.next_seq) & 0xFFFFFFFF
            if gap and advance is not None and dom.last_seq is not None and \
                    ((seq - dom.last_seq) & 0xFFFFFFFF) == advance:
                gap = 0
            if gap:
                if gap < 0x80000000:
                    exp.stats["lost"] += gap
                else:
                    exp.stats["sequence_resets"] += 1
        dom.next_seq = None if advance is None else (seq + advance) & 0xFFFFFFFF
        dom.last_seq = seq

    def add_data(self, tmpl: Template, data, meta: tuple, exp: Exporter) -> int:
        """Queue one data set of ``tmpl`` (bytes of whole records) for conversion; returns the
        number of records."""
        if self.c_decode:
            if tmpl.fixed:
                n = len(data) // tmpl.reclen if tmpl.reclen else 0
            else:
                n = _collect.count_records(tmpl.compiled, data)
            if n:
                self._sets.append((tmpl, data, meta, n))
            return n
        if tmpl.fixed:
            n = len(data) // tmpl.reclen if tmpl.reclen else 0
            if n == 0:
                return 0
            chunk = bytes(data[:n * tmpl.reclen])
        else:
            chunk, n = tmpl.split_variable(memoryview(data))
            if n == 0:
                return 0
        g = self._groups.get(id(tmpl))
        if g is None:
            g = self._groups[id(tmpl)] = (tmpl, [], [], [])   # template, chunks, metas, counts
        g[1].append(chunk)
        g[2].append(meta)
        g[3].append(n)
        return n

    def add_records(self, recs: np.ndarray) -> None:
        self._extra.append(recs)

    def add_samples(self, exp: Exporter, headers: list, infos: list) -> None:
        """sFlow samples (raw headers) to decode at the end of the batch."""
        self._samples.extend((exp, h, i) for h, i in zip(headers, infos))

    def hold(self, exp: Exporter, dom: Domain, tid: int, data, meta: tuple, t: float) -> None:
        exp.stats["no_template"] += 1
        if dom.npending >= self.max_pending or self.pending_total >= MAX_PENDING_TOTAL:
            exp.stats["no_template_dropped"] += 1
            return
        dom.pending.setdefault(tid, []).append((bytes(data), meta, t))
        dom.npending += 1
        self.pending_total += 1

    def release(self, exp: Exporter, dom: Domain, tid: int, tmpl: Template) -> int:
        held = dom.pending.pop(tid, None)
        if not held:
            return 0
        dom.npending -= len(held)
        self.pending_total -= len(held)
        n = 0
        for data, meta, _t in held:
            n += self.add_data(tmpl, data, meta, exp)
            exp.stats["no_template_decoded"] += 1
        return n

    def purge_pending(self, now: float) -> None:
        for exp in self.exporters.values():
            for dom in exp.domains.values():
                if not dom.npending:
                    continue
                for tid in list(dom.pending):
                    keep = [h for h in dom.pending[tid] if now - h[2] <= self.pending_age]
                    dropped = len(dom.pending[tid]) - len(keep)
                    exp.stats["no_template_dropped"] += dropped
                    dom.npending -= dropped
                    self.pending_total -= dropped
                    if keep:
                        dom.pending[tid] = keep
                    else:
                        del dom.pending[tid]

    # --- conversion -----------------------------------------------------------------------
    def _finish(self) -> np.ndarray:
        parts = list(self._extra)
        if self._samples:
            recs = _parsers()[2].samples_to_records(self, self._samples)
            self._samples = []
            if len(recs):
                parts.append(recs)
        normalize = self.mode is not CollectorMode.PASSTHROUGH
        parts += self._parts
        if self._sets:
            parts.append(self._decode_sets(normalize))
        for tmpl, chunks, metas, counts in self._groups.values():
            arr = np.frombuffer(b"".join(chunks), tmpl.dtype) if tmpl.dtype.itemsize else \
                np.zeros(sum(counts), tmpl.dtype)        # variable-length fields only
            if len(metas) == 1:
                exp16, ipv, dom, export_ms, uptime_ms, init_ms, sampling = metas[0]
                meta = {"exporter": np.frombuffer(exp16, np.uint8), "exporter_ipv": ipv,
                        "domain": dom, "export_ms": np.int64(export_ms),
                        "uptime_ms": uptime_ms, "init_ms": init_ms,
                        "sampling": sampling if sampling > 1 else None,
                        "upscale": self.upscale}
            else:
                cnt = np.asarray(counts)
                cols = list(zip(*metas))
                exp = np.frombuffer(b"".join(cols[0]), np.uint8).reshape(-1, 16)
                samp = np.repeat(np.asarray(cols[6], np.uint64), cnt)
                meta = {"exporter": np.repeat(exp, cnt, axis=0),
                        "exporter_ipv": np.repeat(np.asarray(cols[1], np.uint8), cnt),
                        "domain": np.repeat(np.asarray(cols[2], np.uint32), cnt),
                        "export_ms": np.repeat(np.asarray(cols[3], np.int64), cnt),
                        "uptime_ms": np.repeat(np.asarray(cols[4], np.int64), cnt),
                        "init_ms": np.repeat(np.asarray(cols[5], np.int64), cnt),
                        "sampling": samp if (samp > 1).any() else None,
                        "upscale": self.upscale}
            parts.append(convert(tmpl, arr, meta, normalize))
        self._groups = {}
        self._sets = []
        self._extra = []
        self._parts = []
        if not parts:
            return np.zeros(0, RECORD_DTYPE)
        # joining bytes is much cheaper than np.concatenate's per-array dtype promotion
        out = parts[0] if len(parts) == 1 else np.frombuffer(
            bytearray(b"".join(p.tobytes() for p in parts)), RECORD_DTYPE)
        self.totals["records"] += len(out)
        return out

    def _decode_sets(self, normalize: bool) -> np.ndarray:
        """Every queued data set of the batch decoded by one C call."""
        offsets: dict[int, int] = {}
        progs: list = []
        nprog = 0
        rows: list = []
        chunks: list = []
        exporters: list = []
        off = total = 0
        for tmpl, data, meta, n in self._sets:
            po = offsets.get(id(tmpl))
            if po is None:
                po = offsets[id(tmpl)] = nprog
                progs.append(tmpl.compiled)
                nprog += len(tmpl.compiled)
            exp16, ipv, dom, export_ms, uptime_ms, init_ms, sampling = meta
            rows.append((off, len(data), po, n, ipv, dom, export_ms, uptime_ms, _signed(init_ms),
                         _signed(sampling)))
            chunks.append(data)
            exporters.append(exp16)
            off += len(data)
            total += n
        out = np.empty(total, RECORD_DTYPE)
        n = _collect.decode_sets(
            b"".join(chunks), np.concatenate(progs) if len(progs) > 1 else progs[0],
            np.array(rows, np.int64), np.frombuffer(b"".join(exporters), np.uint8).reshape(-1, 16),
            out, self.upscale, normalize)
        return out[:n]

    # --- statistics ---------------------------------------------------------------------------
    def stats(self) -> dict:
        exporters: dict[str, dict] = {}
        for e in self.exporters.values():
            name = e.name
            d: dict = dict(e.stats)
            d["bad"] = dict(e.bad)
            d["domains"] = len(e.domains)
            exporters[name] = d
        return {"totals": dict(self.totals), "exporters": exporters}

    def flow_collection(self) -> dict:
        """ntopng's flow_collection statistics (docs/ntopng-zmq-protocol.md section 8)."""
        ex = {}
        for e in self.exporters.values():
            s = e.stats
            ex[e.name] = {"time_last_flow": e.time_last_flow,
                        "num_sflow_flows": s["sflow_flows"],
                        "num_netflow_ipfix_flows": s["netflow_ipfix_flows"],
                        "num_drops": s["lost"] + sum(e.bad.values()) + s["no_template_dropped"],
                        "unique_source_id": len(e.domains)}
        return {"nf_ipfix_flows": self.totals["nf_ipfix_flows"],
                "sflow_samples": self.totals["sflow_samples"], "exporters": ex}
