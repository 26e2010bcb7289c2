"""TLV encoding checked against nDPI's own deserializer and serializer (libndpi, through cffi),
plus header, key and template unit tests."""
import ctypes.util
import os

import numpy as np
import pytest

from engine.export import tlv
from engine.export.templates import NTOPNG_FIELDS, TemplateError, parse_template
from engine.export.encoders import FlowEncoder
from engine.ntopng import header, parse_curve_key
from engine.fields import DEFAULT_TEMPLATE, records_to_dicts

import cases  # noqa: F401  (tools/ on the path: the packet builders)
from conftest import NO_SHARED, corpus_files

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
int ndpi_serialize_string_uint64(ndpi_serializer *s, const char *key, uint64_t value);
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
                if isinstance(k, str) and isinstance(v, int):    # a name-only number
                    lib.ndpi_serialize_string_uint64(s, k.encode(), v)
                elif isinstance(k, str):
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
    files = [p for p in corpus_files() if p.suffix in (".pcap", ".pcapng")][:12]
    return files or [pytest.param(None, marks=pytest.mark.skip(reason=NO_SHARED),
                                  id="no-development-set")]


def tlv_matches_ndpi(ndpi, pcap):
    ffi, lib = ndpi
    records = run_engine(pcap)
    assert len(records)
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


@pytest.mark.parametrize("pcap", dev_pcaps(), ids=lambda p: getattr(p, "name", p))
def test_tlv_matches_ndpi_deserializer(ndpi, pcap):
    tlv_matches_ndpi(ndpi, pcap)


@pytest.mark.parametrize("name", [n for n in cases.NAMES if n not in ("malformed", "link_unknown")])
def test_tlv_matches_ndpi_deserializer_generated(ndpi, generated, name):
    tlv_matches_ndpi(ndpi, generated[name][0])


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


# --- wire ids: the protocol document's tables, transcribed -----------------------------------------
# name -> the id on the wire (NetFlow v9 and TLV; ntop's elements as 57472 + n), from the ntopng
# ZeroMQ protocol document (../shared/docs/ntopng-zmq-protocol.md): §7.2 (PEN 0), §7.3 and §7.4
# (ntop PEN 35632); ICMP_TYPE from IANA's IPFIX registry (icmpTypeCodeIPv4, 32)
WIRE_IDS = {
    "IN_BYTES": 1, "IN_PKTS": 2, "PROTOCOL": 4, "SRC_TOS": 5, "TCP_FLAGS": 6, "L4_SRC_PORT": 7,
    "IPV4_SRC_ADDR": 8, "INPUT_SNMP": 10, "L4_DST_PORT": 11, "IPV4_DST_ADDR": 12,
    "OUTPUT_SNMP": 14, "LAST_SWITCHED": 21, "FIRST_SWITCHED": 22, "OUT_BYTES": 23, "OUT_PKTS": 24,
    "IPV6_SRC_ADDR": 27, "IPV6_DST_ADDR": 28, "ICMP_TYPE": 32, "DST_TOS": 55, "IN_SRC_MAC": 56,
    "OUT_DST_MAC": 57, "SRC_VLAN": 58, "DST_VLAN": 59, "IP_PROTOCOL_VERSION": 60,
    "IN_DST_MAC": 80, "OUT_SRC_MAC": 81, "EXPORTER_IPV4_ADDRESS": 130,
    "EXPORTER_IPV6_ADDRESS": 131, "FLOW_END_REASON": 136, "FLOW_START_MILLISECONDS": 152,
    "FLOW_END_MILLISECONDS": 153, "DOT1Q_SRC_VLAN": 243, "OBSERVATION_POINT_ID": 300,
    "CLIENT_TCP_FLAGS": 57550, "SERVER_TCP_FLAGS": 57551, "SRC_FRAGMENTS": 57552,
    "DST_FRAGMENTS": 57553, "NPROBE_IPV4_ADDRESS": 57943, "SEQ_PLEN": 57974,
    "ENTROPY_CLIENT_BYTES": 57975, "ENTROPY_SERVER_BYTES": 57976, "SEQ_TDIFF": 57977,
    "FLOW_SOURCE": 58051, "UNIQUE_SOURCE_ID": 58061,
    "RETRANSMITTED_IN_PKTS": 57581, "RETRANSMITTED_OUT_PKTS": 57582, "OOORDER_IN_PKTS": 57583,
    "OOORDER_OUT_PKTS": 57584, "CLIENT_NW_LATENCY_MS": 57595, "SERVER_NW_LATENCY_MS": 57596,
    "APPL_LATENCY_MS": 57597, "TCP_WIN_MAX_IN": 57888, "TCP_WIN_MAX_OUT": 57892,
    # not in the document's tables: nProbe's element list (ntop elements 127 and 128)
    "RETRANSMITTED_IN_BYTES": 57599, "RETRANSMITTED_OUT_BYTES": 57600,
    "L7_PROTO": 57590, "L7_PROTO_NAME": 57591, "L7_CONFIDENCE": 58032,
}
# exported by name (no id in any table): TLV string keys, no NetFlow/IPFIX element
BY_NAME_ONLY = {"SEQ_PLEN_CLIENT", "SEQ_PLEN_SERVER", "SEQ_TDIFF_CLIENT", "SEQ_TDIFF_SERVER",
                "TUNNEL_TYPE", "ZERO_WINDOW_IN_PKTS", "ZERO_WINDOW_OUT_PKTS"}


def test_every_field_has_the_documents_wire_id():
    from engine.export.templates import PROBE_FIELDS
    from engine.fields import FIELDS
    ours = {f.name: f for f in FIELDS} | dict(PROBE_FIELDS)
    assert set(ours) == set(WIRE_IDS) | BY_NAME_ONLY
    for name, wire in WIRE_IDS.items():
        f = ours[name]
        assert (f.v9, tlv.field_key(f)) == (wire, wire), name
        assert (f.pen, f.element) == ((35632, wire - 57472) if wire >= 57472 else (0, wire)), name
    for name in BY_NAME_ONLY:
        assert ours[name].v9 is None and tlv.field_key(ours[name]) == name


def test_wire_ids_in_the_bytes(ndpi):
    """One flow with every field, encoded by the C encoder as flowprobe sends it, read back by
    nDPI's deserializer: the keys on the wire are the document's ids."""
    from engine.fields import RECORD_DTYPE
    ffi, lib = ndpi
    names = [n for n in WIRE_IDS if n not in ("UNIQUE_SOURCE_ID", "NPROBE_IPV4_ADDRESS")] + \
        sorted(BY_NAME_ONLY)
    rec = np.zeros(2, dtype=RECORD_DTYPE)
    rec["ip_version"] = [4, 6]
    rec["exporter_ip_version"] = [4, 6]
    rec["protocol"] = 1                            # ICMP: ICMP_TYPE is present
    tmpl = parse_template(" ".join("%" + n for n in names) + " %UNIQUE_SOURCE_ID")
    enc = FlowEncoder("tlv", tmpl, tmpl.constants({"UNIQUE_SOURCE_ID": 9}))
    v4, v6 = ndpi_decode(ffi, lib, enc.payload(enc.encode(rec)))
    want = {WIRE_IDS[n] if n in WIRE_IDS else n for n in names} | {58061}
    # the TCP health fields are only on TCP flows
    from engine.fields import BY_NAME, Kind
    want -= {WIRE_IDS.get(n, n) for n in names if n in BY_NAME and BY_NAME[n].kind is Kind.TCP}
    assert set(v4) == want - {27, 28, 131}
    assert set(v6) == want - {8, 12, 130}


def _document_tables(text: str) -> dict:
    """label -> wire id from the document's tables of §7.2-7.4."""
    import re
    out = {}
    section = text[text.index("### 7.2"):text.index("### 7.5")]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.match(r"^[\d /–,]+$", cells[0]):
            continue
        if re.match(r"^\d+$", cells[1]) and int(cells[1]) >= 57472:       # §7.3: n, wire id
            ids, labels = [int(cells[1])], [cells[2]]
        elif re.match(r"^[\d /,]+$", cells[1] or "x"):                    # §7.4 / §7.3 pairs
            ids = [int(x) for x in re.findall(r"\d+", cells[1])]
            labels = re.findall(r"[A-Z][A-Z0-9_]+", cells[2])
        else:                                                             # §7.2: id, label
            ids = [int(x) for x in re.findall(r"\d+", cells[0])]
            labels = re.findall(r"[A-Z][A-Z0-9_]+", cells[1])
            if "/" in cells[1] and len(labels) == 2 * len(ids):           # IN_/OUT_ pairs
                labels = labels[::2] + labels[1::2]
        for i, label in zip(ids, labels):
            out.setdefault(label, i)
    return out


def test_transcription_agrees_with_the_document():
    from conftest import SHARED
    doc = SHARED / "docs" / "ntopng-zmq-protocol.md"
    if not doc.exists():
        pytest.skip(f"the protocol document is not at {doc}")
    table = _document_tables(doc.read_text())
    checked = [n for n in WIRE_IDS if n in table]
    assert len(checked) >= 35, sorted(set(WIRE_IDS) - set(table))
    assert {n: table[n] for n in checked} == {n: WIRE_IDS[n] for n in checked}


# --- TLV values of a small capture, derived by hand -------------------------------------------
SEC, MS = 1_000_000_000, 1_000_000
T0 = 1_767_225_600 * SEC                     # 2026-01-01T00:00:00Z


def tiny_capture(path):
    """A TCP connection on VLAN 10 (10.0.0.1:40000 -> 10.0.0.2:80) and an IPv6 DNS exchange."""
    from packets import C_MAC, S_MAC, eth, ipv4, ipv6, pcap_file, tcp, udp
    c, s = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    packets = []

    def seg(ms, d, flags, seq, payload=b""):
        a, b, sp, dp = (c, s, 40000, 80) if d == 0 else (s, c, 80, 40000)
        f = eth(ipv4(a, b, 6, tcp(sp, dp, flags, payload, seq=seq)), vlans=(10,),
                src=(C_MAC, S_MAC)[d], dst=(S_MAC, C_MAC)[d])
        packets.append((T0 + ms * MS, f, len(f)))
    seg(0, 0, 0x02, 100)
    seg(10, 1, 0x12, 500)
    seg(20, 0, 0x10, 101)
    seg(30, 0, 0x18, 101, b"a" * 100)
    seg(50, 1, 0x18, 501, b"b" * 300)
    seg(1000, 0, 0x11, 201)
    seg(1010, 1, 0x11, 801)
    seg(1020, 0, 0x10, 202)
    c6 = bytes.fromhex("20010db8000000000000000000000001")
    s6 = bytes.fromhex("20010db8000000000000000000000002")
    f = eth(ipv6(c6, s6, 17, udp(5353, 53, b"q" * 30), tclass=0x28), 0x86DD)
    packets.append((T0 + 2000 * MS, f, len(f)))
    f = eth(ipv6(s6, c6, 17, udp(53, 5353, b"r" * 100)), 0x86DD, src=S_MAC, dst=C_MAC)
    packets.append((T0 + 2004 * MS, f, len(f)))
    path.write_bytes(pcap_file(packets))


MAC_C, MAC_S = "02:00:00:00:00:01", "02:00:00:00:00:02"
TINY_FLOWS = [
    # client sent SYN, ACK, 100 bytes, FIN, ACK: 5 packets, 40 + 40 + 140 + 40 + 40 IP bytes;
    # the server SYN-ACK, 300 bytes, FIN: 3 packets, 40 + 340 + 40; both sides SYN|ACK|PSH|FIN
    {56: MAC_C, 57: MAC_S, 80: MAC_S, 81: MAC_C, 58: 10, 243: 0, 8: "10.0.0.1",
     12: "10.0.0.2", 7: 40000, 11: 80, 60: 4, 4: 6, 1: 300, 2: 5, 23: 420, 24: 3,
     22: 1767225600, 21: 1767225601, 6: 0x1B, 57550: 0x1B, 57551: 0x1B, 5: 0, 55: 0,
     57552: 0, 57553: 0, 10: 0, 14: 0, 58051: 0,
     # TCP health: nothing repeated or reordered; handshake (10 - 0) / 2 and (20 - 10) / 2 ms,
     # request at 30 ms, response at 50 ms; every window 65535
     57581: 0, 57582: 0, 57583: 0, 57584: 0, 57595: 5, 57596: 5, 57597: 20, 57888: 65535,
     57892: 65535,
     # "aaa..." is no HTTP request: nDPI gives up and guesses from port 80, HTTP (7) by port (1)
     57590: "7", 57591: "HTTP", 58032: 1},
    # 40 + 8 + 30 and 40 + 8 + 100 bytes; traffic class 0x28 from the client
    {56: MAC_C, 57: MAC_S, 80: MAC_S, 81: MAC_C, 58: 0, 243: 0, 27: "2001:db8::1",
     28: "2001:db8::2", 7: 5353, 11: 53, 60: 6, 4: 17, 1: 78, 2: 1, 23: 148, 24: 1,
     22: 1767225602, 21: 1767225602, 6: 0, 57550: 0, 57551: 0, 5: 0x28, 55: 0, 57552: 0,
     57553: 0, 10: 0, 14: 0, 58051: 0,
     # "qqq..." is no DNS message: guessed from port 53, DNS (5) by port (1)
     57590: "5", 57591: "DNS", 58032: 1},
]


def test_tlv_values_of_a_small_capture(ndpi, tmp_path):
    """flowprobe --zmq (TLV, the default template) on two flows whose every value is derived
    above from the packets, read by nDPI's deserializer off a real ZeroMQ subscriber."""
    from test_ntopng_view import run_stream
    ffi, lib = ndpi
    path = tmp_path / "tiny.pcap"
    tiny_capture(path)
    msgs, _ = run_stream(path)
    flows = [r for topic, _, data in msgs if topic == "flow" for r in ndpi_decode(ffi, lib, data)]
    want = TINY_FLOWS
    from engine._fastpath import l7_info
    if not l7_info()["available"]:                 # a build without nDPI: no verdict
        want = [{**f, 57590: "0", 57591: "Unknown", 58032: 0} for f in TINY_FLOWS]
    assert sorted(flows, key=lambda r: r[60]) == want
    # and in wire order: ntopng reads 56/81 as the client's MAC, 80/57 as the server's
    assert [list(r)[:4] for r in flows] == [[56, 57, 80, 81]] * 2
