"""The C encoders of every format against their Python reference twins, byte for byte: msgpack
(msgpack-python), whole messages (the batching rule: size and flow limits), the JSON/CSV/text dumps
(json, csv and the reference text formatter), NetFlow v9/IPFIX data records (numpy, field by
field) and NetFlow v5 records. Records come from a capture the project generates, plus the
development captures when they are present, with every column pushed to the edges of its range."""
import io
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, corpus_files
from engine.export._encode import v5_rows
from engine.export.dump import DumpExporter, reference_lines
from engine.export.encoders import FlowEncoder, reference_msgpack
from engine.export.netflow import WireTemplate, reference_rows, reference_v5_rows, wire_fields
from engine.export.templates import COLLECTOR_FIELDS, parse_template
from engine.fields import DEFAULT_TEMPLATE, FIELDS, RECORD_DTYPE
from engine.probe import capture_records

ALL = " ".join("%" + f.name for f in FIELDS) + " %UNIQUE_SOURCE_ID %NPROBE_IPV4_ADDRESS"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "gen.pcap"
    subprocess.run([sys.executable, "tools/gen_pcap.py", "--seed", "3", "--packets", "20000",
                    "--flows", "2000", "-q", "-o", str(path)], cwd=ROOT, check=True)
    parts = [capture_records(str(path))[0], capture_records(str(ROOT / "data" / "demo.pcap"))[0]]
    parts += [capture_records(str(p))[0] for p in corpus_files()[:40]]
    recs = np.concatenate(parts)
    # collected-flow columns, every integer width, values too large for their wire fields,
    # flows whose end is before their start (passthrough of a router's data)
    recs["exporter_ip_version"][::7] = 4
    recs["exporter_addr"][::7, :4] = (192, 0, 2, 9)
    recs["exporter_ip_version"][3::7] = 6
    recs["exporter_addr"][3::7] = np.arange(16, dtype=np.uint8)
    recs["in_bytes"][::5] = 2 ** 40
    recs["out_pkts"][1::5] = 2 ** 33
    recs["input_snmp"][::3] = 70000
    recs["first_ms"][::11] += 5000
    recs["tunnel"][::13] = 2
    # TCP health on every flow: only TCP flows carry it
    recs["retr_pkts_s2c"][::2] = 3
    recs["appl_latency_ms"][1::3] = 2 ** 32 - 1
    recs["win_max_c2s"][::4] = 65535
    return recs


@pytest.fixture(scope="module")
def template():
    t = parse_template(ALL)
    return t, t.constants({"UNIQUE_SOURCE_ID": 7, "NPROBE_IPV4_ADDRESS": "192.0.2.1"})


def test_msgpack_matches_msgpack_python(records, template):
    t, consts = template
    assert FlowEncoder("msgpack", t, consts).encode(records) == reference_msgpack(t, consts,
                                                                                  records)


def reference_messages(enc, records, max_bytes, max_flows):
    """The batching rule in Python: a message is closed before a flow would take it past
    max_bytes with its framing, or past max_flows flows."""
    out, pending, size = [], [], 0
    for b in enc.encode(records):
        if pending and (size + len(b) + enc.overhead(len(pending) + 1) > max_bytes
                        or (max_flows and len(pending) >= max_flows)):
            out.append((enc.payload(pending), len(pending)))
            pending, size = [], 0
        pending.append(b)
        size += len(b)
    if pending:
        out.append((enc.payload(pending), len(pending)))
    return out


@pytest.mark.parametrize("fmt", ["tlv", "json", "msgpack"])
@pytest.mark.parametrize("max_bytes,max_flows", [(131072, 255), (131072, 0), (3000, 0),
                                                 (1, 0), (131072, 1)])
def test_messages_match_the_batching_rule(records, template, fmt, max_bytes, max_flows):
    t, consts = template
    enc = FlowEncoder(fmt, t, consts)
    got = enc.messages(records, max_bytes, max_flows)
    assert got == reference_messages(enc, records, max_bytes, max_flows)
    assert sum(n for _, n in got) == len(records)


@pytest.mark.parametrize("fmt", ["json", "csv", "text"])
@pytest.mark.parametrize("names", [DEFAULT_TEMPLATE, DEFAULT_TEMPLATE + COLLECTOR_FIELDS],
                         ids=["default", "collector"])
def test_dumps_match_the_python_writers(records, fmt, names):
    buf = io.StringIO()
    d = DumpExporter(buf, fmt, names)
    d.export(records[:100])                 # the CSV header once, then rows
    d.export(records[100:])
    assert buf.getvalue() == reference_lines(fmt, records, names)


@pytest.mark.parametrize("version", [9, 10])
@pytest.mark.parametrize("text", [None, ALL], ids=["ntopng", "every-field"])
def test_netflow_rows_match_numpy(records, version, text):
    from engine.fields import RECORD_DTYPE, Kind
    t = WireTemplate(257, 0, wire_fields(parse_template(text), version))
    base = int(records["first_ms"].min()) - 60_000 + 7000       # some times before the base
    blob, n, clipped = t.encoder.rows(records, base)
    assert blob == reference_rows(t, records, base) and n == len(records)
    # a flow is counted once as clipped when a counter exceeds its (narrower) wire field
    narrow = [(w.field.column, (1 << (8 * w.length)) - 1) for w in t.fields
              if w.field.kind is Kind.UINT and RECORD_DTYPE[w.field.column].itemsize > w.length]
    over = np.zeros(len(records), bool)
    for col, top in narrow:
        over |= records[col] > top
    assert clipped == int(over.sum())
    for family in (4, 6):                    # the flows of one IP version only
        sel = records[records["ip_version"] == family]
        blob, n, _ = t.encoder.rows(records, base, family)
        assert n == len(sel) and blob == reference_rows(t, sel, base)


def test_v5_rows_match_numpy(records):
    v4 = np.ascontiguousarray(records[records["ip_version"] == 4])
    base = int(v4["first_ms"].min()) - 60_000 + 7000
    blob, n = v5_rows(v4, RECORD_DTYPE, base)
    assert blob == reference_v5_rows(v4, base)
    assert n == len(v4) + int((v4["out_pkts"] > 0).sum())
