"""The C encoders (engine/export/_encode.pyx) against their pure-Python references: nDPI TLV
(engine/export/tlv.py, itself checked against nDPI's deserializer) and json.dumps."""
import json

import numpy as np
import pytest

from conftest import corpus_files
from corpus import run_fastpath
from engine.export import _encode, tlv
from engine.export.templates import parse_template
from engine.fields import FIELDS, RECORD_DTYPE, field_values


@pytest.fixture(scope="module")
def records(generated, many_flows):
    """Flows of every generated capture (and of the development set, where it is there)."""
    paths = [p for p, _ in generated.values()] + [many_flows[0]] + corpus_files()
    recs = np.concatenate([run_fastpath(p)[0] for p in paths])
    # collected-flow columns too: exporter addresses of both families
    recs["exporter_ip_version"][::7] = 4
    recs["exporter_addr"][::7, :4] = (192, 0, 2, 9)
    recs["exporter_ip_version"][3::7] = 6
    recs["exporter_addr"][3::7] = np.arange(16, dtype=np.uint8)
    recs["in_bytes"][::5] = 2 ** 40                 # every integer width
    return recs


@pytest.mark.parametrize("labels", [False, True])
def test_c_encoders_match_the_python_references(records, labels):
    fields = list(FIELDS)
    enc = _encode.Encoder(fields, RECORD_DTYPE, [tlv.field_key(f) for f in fields],
                          [str(tlv.field_key(f, labels)) for f in fields])
    constants = parse_template("@NTOPNG@").constants({"UNIQUE_SOURCE_ID": 7,
                                                      "NPROBE_IPV4_ADDRESS": "192.0.2.1"})
    py = tlv.RecordEncoder(fields, constants)
    assert enc.tlv(records, py.suffix) == py.encode(records)
    keys = [str(tlv.field_key(f, labels)) for f in fields]
    cols = [field_values(f, records) for f in fields]
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    want = [dumps({k: v for k, v in zip(keys, row) if v is not None}).encode()
            for row in zip(*cols)]
    assert enc.json(records) == want
    assert [json.loads(x) for x in enc.json(records[:50], b',"extra":1')] == [
        {**json.loads(x), "extra": 1} for x in want[:50]]


def _decode_both(buf):
    out = []
    for decode in (tlv.decode, _encode.decode_tlv):
        try:
            out.append(("ok", decode(buf)))
        except tlv.TLVError:        # both reject: which problem is named first may differ
            out.append(("error", None))
    return out


def test_c_tlv_decoder_matches_the_python_reference(records):
    fields = list(FIELDS)
    enc = tlv.RecordEncoder(fields)
    buf = tlv.payload(enc.encode(records))
    (a_kind, a), (b_kind, b) = _decode_both(buf)
    assert a_kind == b_kind == "ok" and a == b and len(a) == len(records)
    worked = tlv.encode_dicts([{"s": "text", 7: -2, 8: -300, 9: -70000, 10: -(2 ** 40), 11: 1.5,
                                12: 2 ** 63}])
    assert _decode_both(worked)[0] == _decode_both(worked)[1]


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=64))
def test_c_tlv_decoder_agrees_on_any_bytes(tail):
    for buf in (b"\x01\x01" + tail, tail):
        assert _decode_both(buf)[0] == _decode_both(buf)[1]
