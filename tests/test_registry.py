"""The registry drives every format: a field declared in one line (here, added by a fixture)
appears in TLV (C encoder and reference), JSON, msgpack, NetFlow v9/IPFIX (template and data,
and back through the collector) and the dumps, with no other change."""
import io
import json
import socket
import struct

import msgpack
import numpy as np
import pytest

from engine import fields
from engine.export import tlv
from engine.export.dump import DumpExporter
from engine.export.netflow import NetFlowExporter
from engine.export.templates import parse_template
from engine.export.encoders import FlowEncoder
from engine.fields import NTOP_BASE_ID, NTOP_PEN, RECORD_DTYPE, Field, Kind

NEW_ID = 900          # an ntop element number no real field uses


@pytest.fixture
def new_field():
    f = Field("TEST_OUTER_VLAN_COPY", NTOP_BASE_ID + NEW_ID, NTOP_PEN, NEW_ID, "outer_vlan",
              Kind.UINT, 2, "a field added by a test")
    fields.register(f)
    yield f
    fields.unregister(f.name)


def records():
    r = np.zeros(3, RECORD_DTYPE)
    r["ip_version"] = 4
    r["protocol"] = 17
    r["src_addr"][:, :4] = [10, 0, 0, 1]
    r["dst_addr"][:, :4] = [10, 0, 0, 2]
    r["src_port"] = [1000, 1001, 1002]
    r["dst_port"] = 53
    r["in_pkts"] = 1
    r["in_bytes"] = 60
    r["first_ms"] = 1_767_225_600_000
    r["last_ms"] = 1_767_225_600_500
    r["outer_vlan"] = [7, 300, 4094]
    return r


def test_register_refuses_duplicates_and_unknown_columns(new_field):
    with pytest.raises(ValueError):
        fields.register(new_field)
    with pytest.raises(ValueError):
        fields.register(Field("X_NO_COLUMN", None, None, None, "no_such_column", Kind.UINT, 2, ""))


@pytest.mark.parametrize("fmt", ["tlv", "json", "msgpack"])
def test_new_field_in_zmq_formats(new_field, fmt):
    tmpl = parse_template("%IPV4_SRC_ADDR %TEST_OUTER_VLAN_COPY")
    recs = records()
    enc = FlowEncoder(fmt, tmpl)
    out = enc.encode(recs)
    if fmt == "tlv":
        got = tlv.decode(enc.payload(out))
        assert [g[new_field.v9] for g in got] == [7, 300, 4094]
        # the Python reference encodes the same bytes
        assert tlv.RecordEncoder(tmpl.fields).encode(recs) == out
    elif fmt == "json":
        assert [json.loads(o)[str(new_field.v9)] for o in out] == [7, 300, 4094]
    else:
        assert [msgpack.unpackb(o)["TEST_OUTER_VLAN_COPY"] for o in out] == [7, 300, 4094]


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_new_field_in_dumps(new_field, fmt):
    buf = io.StringIO()
    d = DumpExporter(buf, fmt, ("L4_SRC_PORT", "TEST_OUTER_VLAN_COPY"))
    d.export(records())
    lines = buf.getvalue().splitlines()
    if fmt == "json":
        assert [json.loads(x)["TEST_OUTER_VLAN_COPY"] for x in lines] == [7, 300, 4094]
    else:
        assert lines[0] == "L4_SRC_PORT,TEST_OUTER_VLAN_COPY"
        assert lines[1:] == ["1000,7", "1001,300", "1002,4094"]


@pytest.mark.parametrize("version", [9, 10])
def test_new_field_over_netflow_and_back(new_field, version):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    tmpl = parse_template("%IPV4_SRC_ADDR %IPV4_DST_ADDR %L4_SRC_PORT %TEST_OUTER_VLAN_COPY")
    exp = NetFlowExporter([(f"127.0.0.1:{port}", ("127.0.0.1", port), socket.AF_INET)],
                          version=version, template=tmpl)
    exp.export(records())
    exp.close()
    data = rx.recv(65535)
    rx.close()
    if version == 10:       # the template names the field by its enterprise element
        assert struct.pack(">HHI", 0x8000 | NEW_ID, 2, NTOP_PEN) in data
    else:
        assert struct.pack(">HH", new_field.v9, 2) in data
    from engine.collect.collector import Collector
    got = Collector(mode="passthrough").feed([(data, "127.0.0.1", 0.0)])
    assert got["outer_vlan"].tolist() == [7, 300, 4094]
    assert got["src_port"].tolist() == [1000, 1001, 1002]
