"""Finished flows to a text stream: a readable table, JSON lines, or CSV."""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Optional, TextIO

import numpy as np

from engine.export.base import Exporter
from engine.fields import BY_NAME, DEFAULT_TEMPLATE, RECORD_DTYPE, records_to_dicts
from engine.options import DumpFormat

# the first line of the text dump: what its columns are
TEXT_LEGEND = (b"# PROTO client -> server [packets/bytes client to server <-> server to client] "
               b"duration; plen=payload-length bins <=64,65-128,129-256,257-512,513-1024,"
               b">1024 bytes; tdiff=inter-arrival bins <=1,1-5,5-10,10-50,50-100,>100 ms; "
               b"entropy=client/server payload bits per byte\n")
PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPV6", 132: "SCTP", 47: "GRE", 50: "ESP",
               2: "IGMP", 89: "OSPF", 103: "PIM"}


def _address(d: dict, side: str) -> str:
    addr = d.get(f"IPV4_{side}_ADDR") or d.get(f"IPV6_{side}_ADDR")
    return f"[{addr}]" if ":" in addr else addr


def _endpoint(d: dict, side: str) -> str:
    return f"{_address(d, side)}:{d.get(f'L4_{side}_PORT', 0)}"


class DumpExporter(Exporter):
    """Writes every finished flow to ``stream``: one line each (json: keys are the registry's
    field names; csv: a header row first; text: a readable one-line summary). The C encoder
    writes them; ``reference_lines`` is its Python twin."""

    def __init__(self, stream: TextIO, fmt=DumpFormat.TEXT, names=DEFAULT_TEMPLATE):
        from engine.export._encode import Encoder
        self.stream = stream
        self.fmt = DumpFormat(fmt)
        self.names = tuple(names)
        self.flows = 0
        self._header = self.fmt is not DumpFormat.JSON
        fields = [BY_NAME[n] for n in self.names]
        self._c = Encoder(fields, RECORD_DTYPE, [f.name for f in fields], [f.name for f in fields])
        try:
            stream.flush()
            self._fd: Optional[int] = stream.fileno()
        except (AttributeError, OSError, ValueError):        # io.StringIO and the like
            self._fd = None
        self._features = "SEQ_PLEN" in self.names
        self._tunnel = "TUNNEL_TYPE" in self.names
        self._l7 = "L7_PROTO_NAME" in self.names

    def lines(self, records: np.ndarray) -> bytes:
        if self.fmt is DumpFormat.JSON:
            return self._c.json_lines(records)
        if self.fmt is DumpFormat.CSV:
            return self._c.csv_lines(records)
        from engine.export._encode import text_lines
        return text_lines(records, RECORD_DTYPE, self._features, self._tunnel, self._l7)

    def export(self, records: np.ndarray) -> None:
        if len(records) == 0:
            return
        self.flows += len(records)
        out = self.lines(np.ascontiguousarray(records))
        if self._header:
            out = (self._c.csv_header() if self.fmt is DumpFormat.CSV else
                   TEXT_LEGEND if self._features else TEXT_LEGEND.split(b";")[0] + b"\n") + out
            self._header = False
        if self._fd is None:
            self.stream.write(out.decode())
            return
        # the file descriptor directly: a signal that interrupts a large write to a full pipe
        # makes Python's buffered writer lose the part not yet written (CPython's io), while
        # os.write reports what it wrote and is retried for the rest
        view = memoryview(out)
        while view:
            view = view[os.write(self._fd, view):]

    def tick(self, stats) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()

    def stats(self) -> dict:
        return {"dumped_flows": self.flows}


# --- the Python twin ---------------------------------------------------------------------------
def reference_lines(fmt, records: np.ndarray, names=DEFAULT_TEMPLATE, header: bool = True) -> str:
    """The dump of ``records`` as the pure-Python code writes it (the C encoder's reference)."""
    fmt = DumpFormat(fmt)
    names = tuple(names)
    rows = records_to_dicts(records, names)
    if fmt is DumpFormat.JSON:
        return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
    if fmt is DumpFormat.CSV:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore")
        if header:
            w.writeheader()
        for r in rows:
            w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v)
                        for k, v in r.items()})
        return buf.getvalue()
    sources = records["flow_source"].tolist()
    apps = records["l7_app"].tolist()
    legend = TEXT_LEGEND.decode() if "SEQ_PLEN" in names else TEXT_LEGEND.decode().split(";")[0] + "\n"
    return (legend if header else "") + "".join(_text(r, src, app) + "\n"
                                                for r, src, app in zip(rows, sources, apps))


def _text(d: dict, flow_source: int = 0, l7_app: int = 0) -> str:
    proto = PROTO_NAMES.get(d["PROTOCOL"], str(d["PROTOCOL"]))
    vlan = f" vlan {d['SRC_VLAN']}" if d.get("SRC_VLAN") else ""
    dur = (d["FLOW_END_MILLISECONDS"] - d["FLOW_START_MILLISECONDS"]) / 1000
    if d["PROTOCOL"] in (1, 58):                    # ICMP: no ports, its type and code
        icmp = d.get("ICMP_TYPE", 0)
        ends = (f"{_address(d, 'SRC')} -> {_address(d, 'DST')} type {icmp >> 8} "
                f"code {icmp & 255}")
    else:
        ends = f"{_endpoint(d, 'SRC')} -> {_endpoint(d, 'DST')}"
    line = (f"{proto:<6} {ends}{vlan} "
            f"[{d['IN_PKTS']} pkts/{d['IN_BYTES']} bytes <-> {d['OUT_PKTS']} pkts/"
            f"{d['OUT_BYTES']} bytes] {dur:.3f}s")
    if "SEQ_PLEN" in d and flow_source == 0:        # measured from packets only, not collected
        line += (f" plen={','.join(map(str, d['SEQ_PLEN']))}"
                 f" tdiff={','.join(map(str, d['SEQ_TDIFF']))}"
                 f" entropy={d['ENTROPY_CLIENT_BYTES'] / 1000:.2f}/"
                 f"{d['ENTROPY_SERVER_BYTES'] / 1000:.2f}")
    if d.get("TUNNEL_TYPE", "none") != "none":
        line += f" tunnel={d['TUNNEL_TYPE']}"
    if "L7_PROTO_NAME" in d and l7_app:              # nDPI named the application
        line += f" l7={d['L7_PROTO_NAME']}"
    return line
