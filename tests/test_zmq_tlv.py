"""TLV encoding checked against nDPI's own deserializer and serializer (libndpi, through cffi),
plus header, key and template unit tests."""
import ctypes.util
import os
import struct

import numpy as np
import pytest

from engine.export import tlv
from engine.export.templates import NTOPNG_FIELDS, TemplateError, parse_template
from engine.export.zmq import FlowEncoder
from engine.ntopng import header, parse_curve_key
from engine.fields import DEFAULT_TEMPLATE, records_to_dicts

from conftest import PCAPS, corpus_files

NDPI_CDEF = """
typedef struct { char c[512]; } ndpi_serializer;
typedef struct { char *str; uint16_t str_len; } ndpi_string;
int ndpi_init_deserializer_buf(ndpi_serializer *d, uint8_t *buf, uint32_t len);
int ndpi_deserialize_get_item_type(ndpi_serializer *d, int *key_type);
int ndpi_deserialize_next(ndpi_serializer *d);
int ndpi_deserialize_key_uint32(ndpi_serializer *d, uint32_t *key);
int ndpi_deserialize_key_string(ndpi_serializer *d, ndpi_string *key);
int ndpi_deserialize_value_uint32(ndpi_serializer *d, uint32_t *v);
int ndpi_deserialize_value_uint64(ndpi_serializer *d, uint64_t *v);
int ndpi_deserialize_value_string(ndpi_serializer *d, ndpi_string *v);
int ndpi_deserialize_value_float(ndpi_serializer *d, float *v);
int ndpi_init_serializer(ndpi_serializer *s, int fmt);
void ndpi_term_serializer(ndpi_serializer *s);
int ndpi_serialize_uint32_uint64(ndpi_serializer *s, uint32_t key, uint64_t value);
int ndpi_serialize_uint32_string(ndpi_serializer *s, uint32_t key, const char *value);
int ndpi_serialize_string_string(ndpi_serializer *s, const char *key, const char *value);
int ndpi_serialize_end_of_record(ndpi_serializer *s);
char *ndpi_serializer_get_buffer(ndpi_serializer *s, uint32_t *len);
"""


def _load_ndpi():
    try:
        import cffi
    except ImportError:
        pytest.skip("cffi not installed")
    path = None
    for cand in ("/usr/lib/x86_64-linux-gnu/libndpi.so", ctypes.util.find_library("ndpi")):
        if cand and (os.path.exists(cand) or not cand.startswith("/")):
            path = cand
            break
    if path is None:
        pytest.skip("libndpi not found (apt-get install libndpi-dev)")
    ffi = cffi.FFI()
    ffi.cdef(NDPI_CDEF)
    try:
        lib = ffi.dlopen(path)
    except OSError as e:
        pytest.skip(f"libndpi cannot be loaded: {e}")
    return ffi, lib


@pytest.fixture(scope="module")
def ndpi():
    return _load_ndpi()


def ndpi_decode(ffi, lib, payload: bytes) -> list[dict]:
    buf = ffi.new("uint8_t[]", payload)
    d = ffi.new("ndpi_serializer *")
    assert lib.ndpi_init_deserializer_buf(d, buf, len(payload)) == 0
    kt = ffi.new("int *")
    key_u = ffi.new("uint32_t *")
    s = ffi.new("ndpi_string *")
    u32 = ffi.new("uint32_t *")
    u64 = ffi.new("uint64_t *")
    f32 = ffi.new("float *")
    out, rec = [], {}
    while True:
        vt = lib.ndpi_deserialize_get_item_type(d, kt)
        if vt == 0:
            break
        if vt == 1:
            if rec:
                out.append(rec)
            rec = {}
            lib.ndpi_deserialize_next(d)
            continue
        if kt[0] == 11:
            assert lib.ndpi_deserialize_key_string(d, s) == 0
            key = ffi.unpack(s.str, s.str_len).decode()
        else:
            assert kt[0] in (2, 3, 4), kt[0]
            assert lib.ndpi_deserialize_key_uint32(d, key_u) == 0
            key = key_u[0]
        if vt in (2, 3, 4):
            assert lib.ndpi_deserialize_value_uint32(d, u32) == 0
            val = u32[0]
        elif vt == 5:
            assert lib.ndpi_deserialize_value_uint64(d, u64) == 0
            val = u64[0]
        elif vt == 10:
            assert lib.ndpi_deserialize_value_float(d, f32) == 0
            val = f32[0]
        elif vt == 11:
            assert lib.ndpi_deserialize_value_string(d, s) == 0
            val = ffi.unpack(s.str, s.str_len).decode()
        else:
            raise AssertionError(f"unexpected value type {vt}")
        rec[key] = val
        if lib.ndpi_deserialize_next(d) != 0:
            break
    if rec:
        out.append(rec)
    return out


def ndpi_encode(ffi, lib, rows: list[dict]) -> bytes:
    s = ffi.new("ndpi_serializer *")
    assert lib.ndpi_init_serializer(s, 1) == 0
    try:
        for row in rows:
            for k, v in row.items():
                if isinstance(k, str):
                    lib.ndpi_serialize_string_string(s, k.encode(), str(v).encode())
                elif isinstance(v, int):
                    lib.ndpi_serialize_uint32_uint64(s, k, v)
                else:
                    lib.ndpi_serialize_uint32_string(s, k, v.encode())
            lib.ndpi_serialize_end_of_record(s)
        n = ffi.new("uint32_t *")
        p = lib.ndpi_serializer_get_buffer(s, n)
        return ffi.unpack(p, n[0])
    finally:
        lib.ndpi_term_serializer(s)


def run_engine(path):
    """Flow records of a capture, through the fast path (as flowprobe produces them)."""
    from engine._fastpath import FlowTable
    from engine.sources.pcapfile import FileSource
    table = FlowTable(max_flows=65536, idle_timeout=30, lifetime=120, features=True)
    out = []
    src = FileSource(str(path))
    for buf, meta in src.batches():
        i = 0
        while i < len(meta):
            i = table.process(buf, meta, i)
            if table.pending:
                out.append(table.take())
    while True:
        done = table.flush()
        if table.pending:
            out.append(table.take())
        if done:
            break
    src.close()
    return np.concatenate(out) if out else np.zeros(0, dtype=out and out[0].dtype)


ALL_FIELDS = tuple(dict.fromkeys(NTOPNG_FIELDS + DEFAULT_TEMPLATE + ("EXPORTER_IPV4_ADDRESS",
                                                                      "OBSERVATION_POINT_ID")))


def expected_wire(records, names):
    """What each flow must decode to: the registry's values keyed as on the wire."""
    tmpl = parse_template(" ".join("%" + n for n in names))
    key = {f.name: tlv.field_key(f) for f in tmpl.fields}
    out = []
    for d in records_to_dicts(records, names):
        out.append({key[k]: (",".join(map(str, v)) if isinstance(v, list) else v)
                    for k, v in d.items()})
    return out


def dev_pcaps():
    if not PCAPS.is_dir():
        return []
    files = [p for p in corpus_files() if p.suffix in (".pcap", ".pcapng")]
    return files[:12]


@pytest.mark.parametrize("pcap", dev_pcaps(), ids=lambda p: p.name)
def test_tlv_matches_ndpi_deserializer(ndpi, pcap):
    ffi, lib = ndpi
    records = run_engine(pcap)
    if len(records) == 0:
        pytest.skip("no flows")
    tmpl = parse_template(" ".join("%" + n for n in ALL_FIELDS))
    enc = FlowEncoder("tlv", tmpl)
    payload = enc.payload(enc.encode(records))
    got = ndpi_decode(ffi, lib, payload)
    want = expected_wire(records, ALL_FIELDS)
    assert len(got) == len(want) == len(records)
    for g, w in zip(got, want):
        assert g == w
    # our own decoder agrees too
    assert tlv.decode(payload) == got
    # and nDPI's serializer produces the very same bytes (narrowest widths, key encoding)
    assert ndpi_encode(ffi, lib, want) == payload


def test_spec_worked_example(ndpi):
    ffi, lib = ndpi
    r1 = {8: "192.168.1.10", 12: "10.0.0.1", 7: 51234, 11: 443, 4: 6, 1: 1500, 2: 10,
          22: 1700000000, 21: 1700000005, 57590: "91.126"}
    p = tlv.encode_dicts([r1])
    assert p.hex() == ("01012b08000c3139322e3136382e312e31302b0c000831302e302e302e312307c822"
                       "230b01bb220406230105dc22020a24166553f10024156553f1053be0f6000639312e"
                       "31323601")
    assert ndpi_encode(ffi, lib, [r1]) == p
    r2 = {23: 5000000000, 57595: 12.5, "IN_PKTS": 300, 24: 70000}
    p2 = tlv.encode_dicts([r2])
    assert p2[2:] == bytes.fromhex("2517000000012a05f2003ae0fb00004841b30007494e5f504b5453012c"
                                   "24180001117001")
    assert ndpi_decode(ffi, lib, p2) == [r2]


def test_header_bytes():
    h = header(b"flow", 0x02, 72, 1, 7)
    assert h.hex() == ("666c6f77000000000000000000000000" "04020000" "00000048" "48000000"
                       "00000001" "07000000")
    assert len(header(b"event", 0, 5, 2**32 + 3, 1)) == 36


def test_curve_key_forms():
    import zmq
    pub, _ = zmq.curve_keypair()
    assert parse_curve_key(pub.decode()) == pub
    assert parse_curve_key(pub.hex().upper()) == pub
    for bad in ("abc", "," * 40, "zz" * 40, "00" * 40):
        with pytest.raises(ValueError):
            parse_curve_key(bad)


def test_template_parsing():
    t = parse_template("@NTOPNG@ %SEQ_PLEN %ENTROPY_CLIENT_BYTES %UNIQUE_SOURCE_ID")
    assert t.names[:len(NTOPNG_FIELDS)] == NTOPNG_FIELDS
    assert "SEQ_PLEN" in t.names and t.names[-1] == "UNIQUE_SOURCE_ID"
    assert parse_template(None).names == NTOPNG_FIELDS
    with pytest.raises(TemplateError, match="did you mean IN_BYTES"):
        parse_template("%IN_BYTS")
    with pytest.raises(TemplateError, match="macro"):
        parse_template("@NTOPGN@")
