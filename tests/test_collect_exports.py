"""Real exporters' datagrams (softflowd, pmacctd) decode to what tshark's dissector sees in them:
the exports this session records (tests/recorded.py), and those of ../shared/pcaps/exports and
of real devices where the development set is there."""
from __future__ import annotations

import collections
import socket
import struct
import subprocess

import numpy as np
import pytest

from engine.collect.collector import Collector

from conftest import PCAPS, tool

SHARED_EXPORTS = PCAPS / "exports"
NF_FILES = ["softflowd-netflow-v5.pcap", "softflowd-netflow-v9.pcap", "softflowd-ipfix.pcap",
            "pmacctd-nfprobe-ipfix.pcap"]


def udp_payloads(path) -> list:
    """(payload, source address text, time) of every UDP/IPv4 datagram of a classic pcap."""
    data = open(path, "rb").read()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    off = 24
    out = []
    while off + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack_from(endian + "IIII", data, off)
        off += 16
        pkt = data[off:off + incl]
        off += incl
        l2 = 14 if linktype == 1 else 0
        ip = pkt[l2:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 15) * 4
        src = socket.inet_ntoa(ip[12:16])
        out.append((ip[ihl + 8:], src, sec + usec / 1e6))
    return out


def collect_file(path, mode="passthrough", **kw):
    col = Collector(mode=mode, **kw)
    col.pending_age = 1e12                     # replayed capture times are old
    return col.feed(udp_payloads(path)), col


def tshark_fields(path, fields: list) -> dict:
    cmd = [tool("tshark"), "-r", str(path), "-d", "udp.port==9995,cflow", "-T", "fields",
           "-E", "occurrence=a", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    vals = {f: [] for f in fields}
    for line in out.splitlines():
        for f, cell in zip(fields, line.split("|")):
            if cell:
                vals[f] += cell.split(",")
    return vals


def tshark_records(path) -> list[dict]:
    """Every flow record tshark's dissector finds, in order: {field: shown value} per record
    (a v9/IPFIX "Flow N" or a v5 "pdu N/M" subtree)."""
    import xml.etree.ElementTree as ET
    out = subprocess.run([tool("tshark"), "-r", str(path), "-d", "udp.port==9995,cflow", "-T",
                          "pdml"], capture_output=True, check=True, timeout=120).stdout
    records = []
    for field in ET.fromstring(out).iter("field"):
        show = field.get("show") or ""
        if field.get("name") == "" and (show.startswith("Flow ") or show.startswith("pdu ")):
            rec = {f.get("name"): f.get("show") for f in field.iter("field")}
            if "cflow.octets" in rec:          # not options data (sampling, system init time)
                records.append(rec)
    return records


def record_tuples(recs) -> list[tuple]:
    """Our records as (src, dst, sport, dport, protocol, packets, bytes, duration ms, ToS)."""
    out = []
    for r in recs:
        fam, n = (socket.AF_INET, 4) if r["ip_version"] == 4 else (socket.AF_INET6, 16)
        out.append((socket.inet_ntop(fam, bytes(r["src_addr"][:n])),
                    socket.inet_ntop(fam, bytes(r["dst_addr"][:n])), int(r["src_port"]),
                    int(r["dst_port"]), int(r["protocol"]), int(r["in_pkts"]),
                    int(r["in_bytes"]), int(r["last_ms"]) - int(r["first_ms"]),
                    int(r["src_tos"])))
    return out


def tshark_tuples(records) -> list[tuple]:
    out = []
    for t in records:
        v6 = "cflow.srcaddrv6" in t
        norm = (lambda a: socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, a))
                ) if v6 else str
        out.append((norm(t["cflow.srcaddrv6" if v6 else "cflow.srcaddr"]),
                    norm(t["cflow.dstaddrv6" if v6 else "cflow.dstaddr"]),
                    int(t["cflow.srcport"]), int(t["cflow.dstport"]), int(t["cflow.protocol"]),
                    int(t["cflow.packets"]), int(t["cflow.octets"]),
                    round(float(t["cflow.timedelta"]) * 1000), int(t["cflow.tos"], 16)))
    return out


def addr_texts(recs, col, version):
    sel = recs[recs["ip_version"] == version][col]
    fam = socket.AF_INET if version == 4 else socket.AF_INET6
    width = 4 if version == 4 else 16
    return sorted(socket.inet_ntop(fam, bytes(a[:width])) for a in sel)


def export_sets(recorded):
    """The recorded exports, and the development set's when it is there."""
    return [recorded] + ([SHARED_EXPORTS] if SHARED_EXPORTS.is_dir() else [])


@pytest.mark.tools("tshark")
@pytest.mark.parametrize("name", NF_FILES)
def test_netflow_ipfix_exports_match_tshark(name, exports):
    for directory in export_sets(exports):
        check_netflow_export(directory / name)


def check_netflow_export(path):
    """Record for record: tshark's dissection of every flow record of a real exporter's stream
    against what the collector made of it, each record one tuple (a value on the wrong record
    changes two of them). The collector decodes a datagram template by template, so the order
    within a datagram differs."""
    recs, col = collect_file(path)
    theirs = collections.Counter(tshark_tuples(tshark_records(path)))
    ours = collections.Counter(record_tuples(recs))
    assert sum(ours.values()) == sum(theirs.values()) > 0
    assert ours == theirs, (list((ours - theirs).items())[:3], list((theirs - ours).items())[:3])
    st = col.stats()["exporters"]["127.0.0.1"]
    assert st["datagrams"] == len(udp_payloads(path)) and st["records"] == len(recs)
    assert st["bad"] == {} and st["lost"] == 0
    # every record carries the exporter, interfaces and observation domain columns
    assert (recs["exporter_ip_version"] == 4).all()
    assert (recs["exporter_addr"][:, :4] == [127, 0, 0, 1]).all()
    assert (recs["flow_source"] == 1).all() and (recs["end_reason"] == 5).all()
    assert (recs["first_ms"] > 1_600_000_000_000).all()


@pytest.mark.tools("tshark")
def test_sflow_export_matches_tshark(exports):
    for directory in export_sets(exports):
        check_sflow_export(directory / "pmacctd-sflow-v5.pcap")


def check_sflow_export(path):
    recs, col = collect_file(path)
    t = tshark_fields(path, ["sflow_245.header.frame_length", "sflow.flow_sample.sampling_rate",
                             "sflow_245.header.payload_stripped"])
    nsamples = len(t["sflow_245.header.frame_length"])
    st = col.stats()["exporters"]["127.0.0.1"]
    assert st["bad"] == {}
    assert len(recs) == nsamples > 0
    assert col.totals["sflow_samples"] == nsamples
    assert (recs["flow_source"] == 2).all()
    assert {int(v) for v in t["sflow.flow_sample.sampling_rate"]} == {1}
    # IP-layer bytes = frame length - stripped FCS - the 14-byte Ethernet header
    frame = sorted(int(f) - int(s) - 14 for f, s in zip(t["sflow_245.header.frame_length"],
                                                       t["sflow_245.header.payload_stripped"]))
    # a sampled SYN-ACK makes its receiver the client (DESIGN.md): its packet is an OUT one
    assert sorted((recs["in_bytes"] + recs["out_bytes"]).tolist()) == frame
    assert (recs["in_pkts"] + recs["out_pkts"] == 1).all()
    assert (recs["out_pkts"] == (recs["server_tcp_flags"] == 0x12)).all()


@pytest.mark.tools("tshark")
def test_sflow_samples_of_many_datagrams_in_one_batch(exports):
    """pmacctd's sFlow stream fed again and again as one batch, more samples than the decoder's
    table holds at once (sflow.OUTPUT_ROWS): still one record per sample, the sizes tshark
    gives, every copy alike."""
    from engine.collect.sflow import OUTPUT_ROWS
    path = exports / "pmacctd-sflow-v5.pcap"
    t = tshark_fields(path, ["sflow_245.header.frame_length",
                             "sflow_245.header.payload_stripped"])
    frame = sorted(int(f) - int(s) - 14 for f, s in zip(t["sflow_245.header.frame_length"],
                                                       t["sflow_245.header.payload_stripped"]))
    copies = OUTPUT_ROWS // len(frame) + 2
    col = Collector("passthrough")
    recs = col.feed(udp_payloads(path) * copies)
    assert len(recs) == copies * len(frame)
    assert sorted((recs["in_bytes"] + recs["out_bytes"]).tolist()) == sorted(frame * copies)
    assert (recs["in_pkts"] + recs["out_pkts"] == 1).all()
    # in arrival order, each sample's record with its own datagram's details (agent, interfaces,
    # rate, time): as the datagrams give them one batch each
    alone = [Collector("passthrough").feed([g]) for g in udp_payloads(path)]
    assert recs.tobytes() == b"".join(r.tobytes() for r in alone) * copies


@pytest.mark.tools("tshark")
def test_sflow_counter_and_upscale(pcaps_dir):
    recs, col = collect_file(PCAPS / "sflow.pcap")
    t = tshark_fields(PCAPS / "sflow.pcap", ["sflow.flow_sample.sampling_rate"])
    rate = int(t["sflow.flow_sample.sampling_rate"][0])
    assert len(recs) == 1 and recs["in_pkts"][0] == rate
    assert sum(e["sflow_counter_samples"] for e in col.stats()["exporters"].values()) == 8
    raw, _ = collect_file(PCAPS / "sflow.pcap", upscale=False)
    assert raw["in_pkts"][0] == 1 and raw["in_bytes"][0] * rate == recs["in_bytes"][0]


def sets_of(d: bytes, header: int) -> list[bytes]:
    """The flowsets / sets of one v9 (header 20) or IPFIX (header 16) datagram."""
    off, out = header, []
    while off + 4 <= len(d):
        sid, ln = struct.unpack_from(">HH", d, off)
        out.append(d[off:off + ln])
        off += ln
    return out


def test_v9_data_without_templates_is_counted(exports):
    """softflowd's stream with every template flowset taken out, as netflowv9.pcap (a real
    device's) has them: every data flowset is held for a template that never comes."""
    grams = []
    for d, a, t in udp_payloads(exports / "softflowd-netflow-v9.pcap"):
        data = [fs for fs in sets_of(d, 20) if struct.unpack_from(">H", fs)[0] >= 256]
        grams.append((d[:20] + b"".join(data), a, t))
    col = Collector("passthrough")
    assert len(col.feed(grams)) == 0
    st = col.stats()["exporters"]["127.0.0.1"]
    assert st["no_template"] == sum(len(sets_of(d, 20)) for d, _, _ in grams) > 0
    assert st["records"] == 0


def test_ipfix_templates_only(exports):
    d, a, t = udp_payloads(exports / "softflowd-ipfix.pcap")[0]
    only = [s for s in sets_of(d, 16) if struct.unpack_from(">H", s)[0] in (2, 3)]
    body = b"".join(only)
    col = Collector("passthrough")
    recs = col.feed([(d[:2] + struct.pack(">H", 16 + len(body)) + d[4:16] + body, a, t)])
    assert len(recs) == 0
    st = col.stats()["exporters"]["127.0.0.1"]
    assert st["templates"] == sum(struct.unpack_from(">H", s, 2)[0] > 4 for s in only) > 0
    assert st["bad"] == {}


def test_real_devices_templates_and_data_apart(pcaps_dir):
    """netflowv9.pcap: a device's v9 data with no template; netflow-fritz.pcap: a FRITZ!Box's
    IPFIX templates with no data."""
    recs, col = collect_file(PCAPS / "netflowv9.pcap")
    assert len(recs) == 0
    assert sum(e["no_template"] for e in col.stats()["exporters"].values()) > 0
    recs, col = collect_file(PCAPS / "netflow-fritz.pcap")
    assert len(recs) == 0
    assert sum(e["templates"] for e in col.stats()["exporters"].values()) > 0


def test_data_before_template_is_held_then_decoded(exports):
    dg = udp_payloads(exports / "softflowd-netflow-v9.pcap")
    col = Collector("passthrough")
    col.pending_age = 1e12
    first = dg[0][0]
    # split the first datagram: its data flowsets go first, the templates after
    off, data_sets, tmpl_sets = 20, [], []
    while off + 4 <= len(first):
        sid, ln = struct.unpack_from(">HH", first, off)
        (tmpl_sets if sid < 256 else data_sets).append(first[off:off + ln])
        off += ln
    hdr = bytearray(first[:20])
    a = bytes(hdr) + b"".join(data_sets)
    b = bytes(hdr[:12]) + struct.pack(">I", struct.unpack_from(">I", first, 12)[0] + 1) + \
        bytes(hdr[16:20]) + b"".join(tmpl_sets)
    r1 = col.feed([(a, "127.0.0.1", 1.0)])
    assert len(r1) == 0
    r2 = col.feed([(b, "127.0.0.1", 1.5)])
    direct = Collector("passthrough").feed([dg[0]])
    assert len(r2) == len(direct) > 0
    st = col.stats()["exporters"]["127.0.0.1"]
    assert st["no_template"] >= 1 and st["no_template_decoded"] == st["no_template"]
    assert np.array_equal(np.sort(r2["in_bytes"]), np.sort(direct["in_bytes"]))
