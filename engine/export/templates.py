"""``-T`` templates: which fields an exporter sends, parsed against the field registry.

Format-neutral: the ZeroMQ exporter (TLV, JSON, msgpack) and the NetFlow/IPFIX exporter both take
a :class:`Template` from :func:`parse_template`.

Syntax, as nProbe: ``%NAME`` items separated by spaces (commas also accepted), and the macro
``@NTOPNG@`` which expands to the fields ntopng reads (see ``NTOPNG_FIELDS``). Items combine:
``-T "@NTOPNG@ %SEQ_PLEN %ENTROPY_CLIENT_BYTES"``. Duplicates are dropped, order is kept.

Besides the registry's per-flow fields a template may name *probe fields*, whose value is the
same for every flow of one exporter (``UNIQUE_SOURCE_ID``, ``NPROBE_IPV4_ADDRESS``); the exporter
supplies their values (:meth:`Template.constants`).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field as dc_field
from typing import Optional

from engine.fields import BY_NAME, NTOP_BASE_ID, NTOP_PEN, Field, Kind, UnknownField, lookup


@dataclass(frozen=True)
class ProbeField:
    """A field whose value comes from the probe's configuration, not from the flow record."""
    name: str
    v9: int
    pen: int
    element: int
    kind: Kind          # UINT or IPV4 (dotted text)
    length: int
    description: str


PROBE_FIELDS: dict[str, ProbeField] = {
    "UNIQUE_SOURCE_ID": ProbeField("UNIQUE_SOURCE_ID", NTOP_BASE_ID + 589, NTOP_PEN, 589, Kind.UINT, 4,
                                   "probe identity (--source-id)"),
    "NPROBE_IPV4_ADDRESS": ProbeField("NPROBE_IPV4_ADDRESS", NTOP_BASE_ID + 471, NTOP_PEN, 471,
                                      Kind.IPV4, 4, "IPv4 address of the probe host"),
}

# @NTOPNG@: the fields ntopng interprets (protocol spec §7.2/§7.3) that the registry provides.
# The core of ntopng's documented list (MACs, VLAN, addresses, ports, IP version, protocol,
# counters, first/last switched, L7_PROTO) plus what ntopng uses for TCP state, fragments, TOS,
# QinQ and the flow source, nDPI's name and confidence, and the TCP health fields ntopng reads
# (§7.3; the retransmitted bytes and the zero-window counts are extra info there: add them with
# %NAME). Without a verdict (L7 off, undetected) L7_PROTO is "0", which ntopng takes as
# absent: it guesses from the ports.
# Left out on purpose: ICMP_TYPE (id 32 is not a PEN-0 id ntopng handles, so it would be re-read as
# ntop element 32), the millisecond times (only 21/22 are used) and the behaviour features (extra
# info only; add them with %NAME).
NTOPNG_FIELDS: tuple[str, ...] = (
    "IN_SRC_MAC", "OUT_DST_MAC", "IN_DST_MAC", "OUT_SRC_MAC", "SRC_VLAN", "DOT1Q_SRC_VLAN",
    "IPV4_SRC_ADDR", "IPV4_DST_ADDR", "IPV6_SRC_ADDR", "IPV6_DST_ADDR",
    "L4_SRC_PORT", "L4_DST_PORT", "IP_PROTOCOL_VERSION", "PROTOCOL",
    "IN_BYTES", "IN_PKTS", "OUT_BYTES", "OUT_PKTS", "FIRST_SWITCHED", "LAST_SWITCHED",
    "TCP_FLAGS", "CLIENT_TCP_FLAGS", "SERVER_TCP_FLAGS", "SRC_TOS", "DST_TOS",
    "SRC_FRAGMENTS", "DST_FRAGMENTS", "INPUT_SNMP", "OUTPUT_SNMP", "FLOW_SOURCE",
    "L7_PROTO", "L7_PROTO_NAME", "L7_CONFIDENCE",
    # TCP health (ntopng reads these; TCP flows only)
    "RETRANSMITTED_IN_PKTS", "RETRANSMITTED_OUT_PKTS", "OOORDER_IN_PKTS", "OOORDER_OUT_PKTS",
    "CLIENT_NW_LATENCY_MS", "SERVER_NW_LATENCY_MS", "APPL_LATENCY_MS",
    "TCP_WIN_MAX_IN", "TCP_WIN_MAX_OUT",
)

MACROS: dict[str, tuple[str, ...]] = {"NTOPNG": NTOPNG_FIELDS}
# what a collected flow adds by default: where it came from
COLLECTOR_FIELDS: tuple[str, ...] = ("EXPORTER_IPV4_ADDRESS", "EXPORTER_IPV6_ADDRESS",
                                     "INPUT_SNMP", "OUTPUT_SNMP", "OBSERVATION_POINT_ID")


class TemplateError(ValueError):
    pass


@dataclass
class Template:
    fields: list[Field]                                      # per-flow fields, registry order kept
    probe_fields: list[ProbeField] = dc_field(default_factory=list)
    text: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields) + tuple(p.name for p in self.probe_fields)

    def with_fields(self, *names: str) -> "Template":
        """A copy with ``names`` appended (if not already present)."""
        have = set(self.names)
        fields = list(self.fields)
        probe = list(self.probe_fields)
        for n in names:
            if n in have:
                continue
            have.add(n)
            if n in PROBE_FIELDS:
                probe.append(PROBE_FIELDS[n])
            else:
                fields.append(BY_NAME[n])
        return Template(fields, probe, self.text)

    def constants(self, values: dict) -> list[tuple[ProbeField, object]]:
        """(probe field, value) for every probe field, values from ``values`` by name; a probe field
        without a value is left out."""
        return [(p, values[p.name]) for p in self.probe_fields if values.get(p.name) is not None]


def _lookup_any(name: str):
    up = name.upper()
    if up in PROBE_FIELDS:
        return PROBE_FIELDS[up]
    if up in BY_NAME:
        return BY_NAME[up]
    close = difflib.get_close_matches(up, list(BY_NAME) + list(PROBE_FIELDS), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UnknownField(f"unknown field {name!r} in -T{hint}")


_TOKEN = re.compile(r"[\s,]+")


def parse_template(text: Optional[str], default: tuple[str, ...] = NTOPNG_FIELDS) -> Template:
    """Parse a ``-T`` value. None or empty gives ``default``. Raises TemplateError (a ValueError)
    with one readable line for an unknown field or macro, listing close matches."""
    if not text or not text.strip():
        names = list(default)
    else:
        names = []
        for tok in _TOKEN.split(text.strip()):
            if not tok:
                continue
            if tok.startswith("@"):
                macro = tok.strip("@").upper()
                if macro not in MACROS or not tok.endswith("@") or len(tok) < 3:
                    close = difflib.get_close_matches(macro, MACROS, n=2, cutoff=0.4)
                    hint = f" (did you mean {', '.join('@' + c + '@' for c in close)}?)" if close else ""
                    raise TemplateError(f"unknown template macro {tok!r}{hint}")
                names.extend(MACROS[macro])
            else:
                if tok.startswith("%"):
                    tok = tok[1:]
                if not tok:
                    raise TemplateError("empty field name in -T (write %NAME)")
                try:
                    names.append(_lookup_any(tok).name)
                except UnknownField as e:
                    raise TemplateError(str(e)) from None
    seen: set[str] = set()
    fields: list[Field] = []
    probe: list[ProbeField] = []
    for n in names:
        if n in seen:
            continue
        seen.add(n)
        if n in PROBE_FIELDS:
            probe.append(PROBE_FIELDS[n])
        else:
            fields.append(lookup(n))
    return Template(fields, probe, text or "")
