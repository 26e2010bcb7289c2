"""nDPI application protocol detection in the fast path, against Debian's ndpiReader (libndpi-bin:
the same libndpi 4.2, run on the same capture in this test) on every development capture: per
flow (matched on VLAN, protocol and both endpoints) the same "master.app" protocol ids,
confidence and category, for at least 95% of the flows both have (all of them today), every other
flow in a class below with its reason. Also: the
protocol names against ndpiReader's own table, the packet bound and the state pool, the L7
fields through nDPI's TLV deserializer and in the JSON dump, and --disable-l7."""
from __future__ import annotations

import collections
import functools
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import PCAPS, ROOT, corpus_files, corpus_params, tool, unavailable
from corpus import FLOW, L4, _endpoint, our_flows, run_fastpath
from engine._fastpath import l7_info, l7_protocol_names



@pytest.fixture(autouse=True)
def ndpi_built():
    if not l7_info()["available"]:
        unavailable("built without nDPI (libndpi-dev): no L7 detection")

PROTO = re.compile(r"\[proto: (?:[A-Za-z]+:)?([\d.]+)/([^\]]+)\]")
CONFIDENCE = re.compile(r"\[Confidence: ([^\]]+)\]")
CATEGORY = re.compile(r"\[cat: [^\]/]+/(\d+)\]")
# ndpi_confidence_get_name()'s texts -> ndpi_confidence_t
CONFIDENCES = {"Unknown": 0, "Match by port": 1, "Match by IP": 2, "DPI (cache)": 3, "DPI": 4}


def ndpireader_flows(path) -> dict:
    """ndpiReader's flow table of one capture: key (as corpus.Flow.key) -> ("M.A" ids, name,
    confidence, category). -t: GTP, TZSP and CAPWAP tunnels stripped, as ours are."""
    out = subprocess.run([tool("ndpiReader"), "-i", str(path), "-t", "-v", "2"],
                         capture_output=True, text=True, errors="replace", timeout=120).stdout
    flows: dict = {}
    for line in out.splitlines():
        m = FLOW.match(line)
        if not m:
            continue
        l4, left, right, rest = m.group(2), m.group(3), m.group(5), m.group(6)
        vlan = re.search(r"\[VLAN: (\d+)\]", rest)
        p, conf, cat = PROTO.search(rest), CONFIDENCE.search(rest), CATEGORY.search(rest)
        proto = L4.get(l4, int(l4) if l4.isdigit() else -1)
        key = (int(vlan.group(1)) if vlan else 0, proto,
               frozenset((_endpoint(left), _endpoint(right))))
        flows[key] = (p.group(1), p.group(2), CONFIDENCES[conf.group(1)] if conf else 0,
                      int(cat.group(1)) if cat else 0) if p else None
    return flows


def ids_of(rec) -> str:
    m, a = int(rec["l7_master"]), int(rec["l7_app"])
    return f"{m}.{a}" if m else str(a)


def verdict(rec) -> tuple:
    return ids_of(rec), int(rec["l7_confidence"]), int(rec["l7_category"])


@functools.lru_cache(maxsize=None)
def comparison(path):
    """(flows both have with the same ids, [(key, ours, ndpiReader's)] that differ,
    ndpiReader's flows we do not have one flow for, ours ndpiReader does not have)."""
    records, _ = run_fastpath(path, l7=True)
    ours = collections.defaultdict(list)
    for rec, f in zip(records, our_flows(records)):
        ours[f.key()].append(rec)
    theirs = ndpireader_flows(path)
    same, differ, unmatched = 0, [], 0
    for key, want in theirs.items():
        got = ours.get(key, [])
        if len(got) != 1 or want is None:
            unmatched += 1
            continue
        if verdict(got[0]) == (want[0], want[2], want[3]):
            same += 1
        else:
            differ.append((key, verdict(got[0]), (want[0], want[2], want[3])))
    extra = sum(len(v) for k, v in ours.items() if k not in theirs)
    return same, differ, unmatched, extra


# file -> (flows whose protocol differs from ndpiReader's, why). Every other file has none: on
# every development capture each flow both have gets ndpiReader's protocol.
DIFFER: dict = {}
# file -> (ndpiReader's flows we do not have as one flow, ours it does not have, why): flows keyed
# otherwise, so there is nothing to compare (tests/test_corpus.py has the same classes against
# the newer ndpiReader of the expected tables, which strips VXLAN and GRE and checks EtherTypes)
UNMATCHED = {
    "fuzz-2006-06-26-2594.pcap": (7, 0, "five flows of frames whose EtherType is fuzzed: "
                                  "ndpiReader 4.2 reads the IPv4 header behind any EtherType, we "
                                  "count the frames as non_ip; two packets whose IP or transport "
                                  "header is cut short: ndpiReader keys them with port 0, we count "
                                  "them as truncated / bad_ipv4_header"),
    "capwap.pcap": (0, 1, "CAPWAP data packets that carry no IP packet (802.11 management, LLC "
                    "non-IP): ndpiReader 4.2 makes no flow of them, we leave them on the outer "
                    "CAPWAP flow (as the newer ndpiReader does)"),
    "fuzz-2021-06-07-c6c72a0a56.pcap": (0, 1, "its one record claims a wire length of 4 GB: "
                                        "ndpiReader makes no flow of it, we account it"),
    "fuzz-2021-10-13.pcap": (1, 0, "the file ends inside its only record: our reader stops and "
                             "reports it truncated, ndpiReader decodes the partial record"),
    "gre.pcapng": (1, 1, "ndpiReader 4.2 does not strip GRE: it has the outer GRE flow, we the "
                   "inner SIP flow"),
    "ip_fragmented_garbage.pcap": (1, 0, "a TCP first fragment whose header is cut short: "
                                   "ndpiReader keeps it as a flow with ports 0, we count it as "
                                   "truncated"),
    "sctp.cap": (2, 2, "ndpiReader keys SCTP with ports 0; we read SCTP's ports"),
    "vxlan.pcap": (9, 4, "ndpiReader 4.2 does not strip VXLAN: it has the outer UDP flows to port "
                   "4789 (one per source port), we the four inner flows"),
}


@pytest.mark.tools("ndpiReader")
@pytest.mark.parametrize("path", corpus_params(), ids=lambda p: getattr(p, "name", p))
def test_protocol_per_flow_matches_ndpireader(path):
    same, differ, unmatched, extra = comparison(path)
    want, _ = DIFFER.get(path.name, (0, ""))
    assert len(differ) == want, differ[:5]
    want_unmatched, want_extra, _ = UNMATCHED.get(path.name, (0, 0, ""))
    assert (unmatched, extra) == (want_unmatched, want_extra)


@pytest.mark.tools("ndpiReader")
def test_corpus_match_rate(pcaps_dir):
    same = compared = 0
    for path in corpus_files():
        s, d, _, _ = comparison(path)
        same += s
        compared += s + len(d)
    assert compared == 2765
    assert same / compared >= 0.95, (same, compared)
    assert compared - same == sum(n for n, _ in DIFFER.values())


@pytest.mark.tools("ndpiReader")
def test_protocol_names_are_ndpireaders():
    """Our id -> name table is the one ndpiReader prints (-h lists every protocol)."""
    out = subprocess.run([tool("ndpiReader"), "-h"], capture_output=True, text=True,
                         errors="replace", timeout=60).stdout
    table = dict(re.findall(r"^\s*(\d+)\s+(\S+)\s+(?:TCP|UDP|TCP/UDP|\s)", out, re.M))
    names = l7_protocol_names()
    assert len(table) > 200
    for i, name in table.items():
        assert names[int(i)] == name


# --- the fast path's side: bound, pool, no L7 -------------------------------------------------
def corpus_path(name):
    path = PCAPS / name
    if not path.is_file():
        pytest.skip(f"{name} not in the development captures")
    return path


@pytest.mark.parametrize("tcp,other", [(80, 24), (2, 1)])
def test_packets_given_to_ndpi_stay_within_the_bound(pcaps_dir, tcp, other):
    """Per flow, nDPI sees at most one packet past the bound (ndpiReader counts the packet that
    passes it, then gives up), and never more than the flow has."""
    for path in corpus_files():
        records, st = run_fastpath(path, l7=True, l7_tcp_packets=tcp, l7_other_packets=other)
        n = records["in_pkts"] + records["out_pkts"]
        bound = np.where(records["protocol"] == 6, tcp + 1, other + 1)
        assert (records["l7_packets"] <= np.minimum(n, bound)).all(), path.name
        assert st["l7_packets"] == int(records["l7_packets"].sum()), path.name


def test_an_empty_pool_is_counted_and_leaves_flows_undetected():
    path = corpus_path("1kxun.pcap")
    full, st_full = run_fastpath(path, l7=True)
    one, st_one = run_fastpath(path, l7=True, l7_pool=1)
    assert st_full["l7_pool_empty"] == 0
    assert 0 < st_one["l7_pool_empty"] < st_one["flows_created"]
    unknown = (one["l7_app"] == 0) & (one["l7_master"] == 0) & (one["l7_confidence"] == 0)
    assert int(unknown.sum()) >= st_one["l7_pool_empty"]
    assert (full["l7_app"] != 0).sum() > (one["l7_app"] != 0).sum()


def test_without_l7_the_fields_are_zero_and_no_packet_goes_to_ndpi(pcaps_dir):
    records, st = run_fastpath(corpus_files()[0])
    assert st["l7_packets"] == 0 and st["l7_pool_empty"] == 0
    assert not records["l7_app"].any() and not records["l7_master"].any()
    assert not records["l7_confidence"].any()


# --- the L7 fields in the formats ----------------------------------------------------------------
L7_FIELDS = ("L7_PROTO", "L7_PROTO_NAME", "L7_CONFIDENCE")
KEY_FIELDS = ("IPV4_SRC_ADDR", "IPV4_DST_ADDR", "IPV6_SRC_ADDR", "IPV6_DST_ADDR", "L4_SRC_PORT",
              "L4_DST_PORT", "PROTOCOL", "SRC_VLAN")
DETECTED = ("1kxun.pcap", "android.pcap", "KakaoTalk_chat.pcap", "http_ipv6.pcap", "wa_voice.pcap")


@pytest.mark.tools("ndpiReader")
@pytest.mark.parametrize("name", DETECTED)
def test_l7_fields_through_ndpis_tlv_deserializer(name):
    """The L7 fields as flowprobe sends them to ntopng, read back by nDPI's deserializer: the
    registry's values keyed by the document's ids, and L7_PROTO ndpiReader's ids."""
    from engine.export.encoders import FlowEncoder
    from engine.export.templates import parse_template
    from test_zmq_tlv import _load_ndpi, expected_wire, ndpi_decode
    ffi, lib = _load_ndpi()
    path = corpus_path(name)
    records, _ = run_fastpath(path, l7=True)
    names = KEY_FIELDS + L7_FIELDS
    enc = FlowEncoder("tlv", parse_template(" ".join("%" + n for n in names)))
    got = ndpi_decode(ffi, lib, enc.payload(enc.encode(records)))
    assert got == expected_wire(records, names)
    theirs = ndpireader_flows(path)
    checked = 0
    for g, f in zip(got, our_flows(records)):
        want = theirs.get(f.key())
        if want is not None and want[0] == g[57590]:
            checked += 1
            assert g[57591] == want[1]                 # the name, as ndpiReader prints it
    assert checked >= 0.9 * len(got)
    assert any("." in g[57590] for g in got)            # two-layer verdicts: "M.A"


@pytest.mark.tools("ndpiReader")
def test_hand_derived_tiny_verdicts_are_ndpireaders(tmp_path):
    """The L7 values test_zmq_tlv derives by hand for its tiny capture are ndpiReader's."""
    from test_zmq_tlv import TINY_FLOWS, tiny_capture
    path = tmp_path / "tiny.pcap"
    tiny_capture(path)
    got = sorted(v[:3] for v in ndpireader_flows(path).values())
    assert got == sorted((f[57590], f[57591], f[58032]) for f in TINY_FLOWS)


def flowprobe(*args):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.tools("ndpiReader")
def test_json_dump_carries_the_l7_fields_by_name():
    path = corpus_path("443-chrome.pcap")
    on = flowprobe("-i", path, "--dump-format", "json")
    off = flowprobe("-i", path, "--dump-format", "json", "--disable-l7")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    flows_on = [json.loads(line) for line in on.stdout.splitlines()]
    flows_off = [json.loads(line) for line in off.stdout.splitlines()]
    assert len(flows_on) == len(flows_off) > 0
    assert {f["L7_PROTO"] for f in flows_off} == {"0"}
    assert {f["L7_PROTO_NAME"] for f in flows_off} == {"Unknown"}
    want = {v[0] for v in ndpireader_flows(path).values() if v}
    assert {f["L7_PROTO"] for f in flows_on} <= want | {"0"}
    assert "TLS" in {f["L7_PROTO_NAME"].split(".")[0] for f in flows_on}


def test_unavailable_l7_is_one_line(monkeypatch, pcaps_dir):
    """A build without nDPI: asked for L7 (L7 fields in -T, --l7-max-packets), flowprobe says so
    in one line and runs without it."""
    from engine import arguments
    monkeypatch.setattr(arguments, "_l7_available", lambda: False)
    path = str(corpus_files()[0])
    opts = arguments.parse(["-i", path, "-T", "@NTOPNG@ %L7_PROTO", "--dump-format", "json"])
    assert not opts.table.l7
    lines = [w for w in opts.warnings if "L7" in w]
    assert len(lines) == 1 and "without nDPI" in lines[0]
    assert not [w for w in arguments.parse(["-i", path]).warnings if "L7" in w]
    assert not [w for w in arguments.parse(["-i", path, "--disable-l7", "-T", "%L7_PROTO"])
                .warnings if "L7" in w]


def test_l7_options():
    from engine import arguments
    path = str(PCAPS / "x.pcap")
    assert arguments.parse(["-i", path]).table.l7 is True
    assert arguments.parse(["-i", path, "--disable-l7"]).table.l7 is False
    t = arguments.parse(["-i", path, "--l7-max-packets", "10"]).table
    assert (t.l7_tcp_packets, t.l7_other_packets) == (10, 10)
    t = arguments.parse(["-i", path, "--l7-max-packets", "40,8"]).table
    assert (t.l7_tcp_packets, t.l7_other_packets) == (40, 8)
    from engine.errors import FlowprobeError
    for bad in ("0", "a", "1,2,3"):
        with pytest.raises((FlowprobeError, SystemExit)):
            arguments.parse(["-i", path, "--l7-max-packets", bad])


@pytest.mark.parametrize("version", [9, 10])
def test_l7_proto_over_netflow_and_back_through_the_collector(traffic, version):
    """L7_PROTO goes out over NetFlow v9/IPFIX as nProbe sends it (the 2-byte app id) and a
    collector keeps it (the C decode and its numpy twin alike), so that passthrough gives ntopng
    the application a probe named."""
    import socket
    from engine.collect.collector import Collector
    from engine.export.netflow import NetFlowExporter
    from engine.probe import capture_records
    recs, _ = capture_records(str(traffic[0]), l7=True)
    assert (recs["l7_app"] != 0).sum() > len(recs) // 2       # nDPI named most of them
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(1)
    port = rx.getsockname()[1]
    exp = NetFlowExporter([(f"127.0.0.1:{port}", ("127.0.0.1", port), socket.AF_INET)],
                          version=version)
    exp.export(recs)
    exp.close()
    grams = []
    try:
        while True:
            grams.append((rx.recv(65535), "127.0.0.1", 0.0))
    except socket.timeout:
        rx.close()
    key = ["src_port", "dst_port", "protocol", "l7_app"]
    for c_decode in (True, False):
        got = Collector(mode="passthrough", c_decode=c_decode).feed(grams)
        assert sorted(got[key].tolist()) == sorted(recs[key].tolist())
