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
def records(pcaps_dir):
    recs = np.concatenate([run_fastpath(p)[0] for p in corpus_files()])
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
