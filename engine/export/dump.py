"""Finished flows to a text stream: a readable table, JSON lines, or CSV."""
from __future__ import annotations

import csv
import io
from typing import TextIO

import numpy as np

from engine.export.base import Exporter
from engine.fields import BY_NAME, DEFAULT_TEMPLATE, RECORD_DTYPE, records_to_dicts
from engine.options import DumpFormat

PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPV6", 132: "SCTP", 47: "GRE", 50: "ESP",
               2: "IGMP", 89: "OSPF", 103: "PIM"}


def _endpoint(d: dict, side: str) -> str:
    addr = d.get(f"IPV4_{side}_ADDR") or d.get(f"IPV6_{side}_ADDR")
    port = d.get(f"L4_{side}_PORT", 0)
    if ":" in addr:
        return f"[{addr}]:{port}"
    return f"{addr}:{port}"


class DumpExporter(Exporter):
    """Writes every finished flow to ``stream``: one line each (json: keys are the registry's
    field names; csv: a header row first; text: a readable one-line summary)."""

    def __init__(self, stream: TextIO, fmt=DumpFormat.TEXT, names=DEFAULT_TEMPLATE):
        self.stream = stream
        self.fmt = fmt = DumpFormat(fmt)
        self.names = tuple(names)
        self.flows = 0
        self._csv_header = False
        if fmt is DumpFormat.JSON:               # the C encoder, keys are the field names
            from engine.export._encode import Encoder
            fields = [BY_NAME[n] for n in self.names]
            self._json = Encoder(fields, RECORD_DTYPE, [f.name for f in fields],
                                 [f.name for f in fields])

    def export(self, records: np.ndarray) -> None:
        if len(records) == 0:
            return
        self.flows += len(records)
        if self.fmt is DumpFormat.JSON:
            self.stream.write(b"\n".join(self._json.json(records)).decode() + "\n")
            return
        rows = records_to_dicts(records, self.names)
        if self.fmt is DumpFormat.CSV:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self.names, extrasaction="ignore")
            if not self._csv_header:
                w.writeheader()
                self._csv_header = True
            for r in rows:
                w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v)
                            for k, v in r.items()})
            self.stream.write(buf.getvalue())
        else:
            self.stream.write("".join(self._text(r) + "\n" for r in rows))

    @staticmethod
    def _text(d: dict) -> str:
        proto = PROTO_NAMES.get(d["PROTOCOL"], str(d["PROTOCOL"]))
        vlan = f" vlan {d['SRC_VLAN']}" if d.get("SRC_VLAN") else ""
        dur = (d["FLOW_END_MILLISECONDS"] - d["FLOW_START_MILLISECONDS"]) / 1000
        line = (f"{proto:<6} {_endpoint(d, 'SRC')} -> {_endpoint(d, 'DST')}{vlan} "
                f"[{d['IN_PKTS']} pkts/{d['IN_BYTES']} bytes <-> {d['OUT_PKTS']} pkts/"
                f"{d['OUT_BYTES']} bytes] {dur:.3f}s")
        if "SEQ_PLEN" in d:
            line += (f" plen={','.join(map(str, d['SEQ_PLEN']))}"
                     f" tdiff={','.join(map(str, d['SEQ_TDIFF']))}"
                     f" entropy={d['ENTROPY_CLIENT_BYTES'] / 1000:.2f}/"
                     f"{d['ENTROPY_SERVER_BYTES'] / 1000:.2f}")
        if d.get("TUNNEL_TYPE", "none") != "none":
            line += f" tunnel={d['TUNNEL_TYPE']}"
        return line

    def tick(self, stats) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()

    def stats(self) -> dict:
        return {"dumped_flows": self.flows}
