"""The three collector modes, the collector's command-line flags and its statistics."""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest

from engine.arguments import parse_port
from engine.collect import CollectorSource
from engine.collect._cache import FlowCache
from engine.collect.collector import Collector
from engine.errors import FlowprobeError
from engine.fields import records_to_dicts

from conftest import ROOT
from test_collect_exports import tshark_fields, tshark_records, udp_payloads
from test_collect_live import wait_bound

MUST_CARRY = ("EXPORTER_IPV4_ADDRESS", "INPUT_SNMP", "OUTPUT_SNMP", "OBSERVATION_POINT_ID")


def source(mode, **kw) -> CollectorSource:
    return CollectorSource([("127.0.0.1", 0)], mode=mode, **kw)


@pytest.mark.parametrize("name", ["softflowd-netflow-v9.pcap", "softflowd-ipfix.pcap",
                                  "pmacctd-nfprobe-ipfix.pcap", "softflowd-netflow-v5.pcap",
                                  "pmacctd-sflow-v5.pcap"])
def test_three_modes(name, exports):
    dg = udp_payloads(exports / name)
    outs = {}
    for mode in ("passthrough", "nocache", "cache"):
        src = source(mode, idle_timeout=30, lifetime=120)
        try:
            recs = [src.process(dg, now=100.0), src.process([], now=100.5)]
            if mode == "cache":
                assert len(recs[0]) == 0                  # nothing expired yet
                recs.append(src.process([], now=131.0))   # idle timeout (-d 30)
                assert len(src.cache) == 0
            outs[mode] = np.concatenate(recs)
        finally:
            src.close()
    p, n, c = outs["passthrough"], outs["nocache"], outs["cache"]
    assert len(p) == len(n) > 0
    for col in ("in_pkts", "in_bytes", "src_addr", "dst_addr"):
        assert np.array_equal(p[col], n[col])
    # the cache conserves packets and bytes and merges the two directions of a flow
    for k in ("pkts", "bytes"):
        assert int(c[f"in_{k}"].sum() + c[f"out_{k}"].sum()) == int(
            p[f"in_{k}"].sum() + p[f"out_{k}"].sum())
    assert len(c) < len(p)
    assert (c["end_reason"] == 0).all()                    # idle
    for recs in (p, n, c):
        for d in records_to_dicts(recs, MUST_CARRY):
            assert set(d) == set(MUST_CARRY)
            assert d["EXPORTER_IPV4_ADDRESS"] == "127.0.0.1"


def v5_record(src, dst, sport, dport, pkts, first, last, proto=17):
    return socket.inet_aton(src) + socket.inet_aton(dst) + bytes(4) + struct.pack(
        ">HHIIIIHHBBBBHHBBH", 1, 2, pkts, 100 * pkts, first, last, sport, dport, 0, 0x18,
        proto, 0, 0, 0, 24, 24, 0)


def v5(records, uptime=100_000, secs=1_700_000_000, seq=0):
    return struct.pack(">HHIIIIBBH", 5, len(records), uptime, secs, 0, seq, 0, 0, 0) + \
        b"".join(records)


def test_cache_merges_the_two_directions_of_a_flow():
    """Two unidirectional records of one conversation (as NetFlow v5 sends them) become one
    biflow: the first record's sender is the client, counters per direction, first = the
    earliest, last = the latest; another port is another flow."""
    dg = v5([v5_record("10.0.0.1", "10.0.0.2", 1000, 53, 5, 50_000, 60_000),
             v5_record("10.0.0.2", "10.0.0.1", 53, 1000, 3, 55_000, 70_000),
             v5_record("10.0.0.1", "10.0.0.2", 1001, 53, 2, 40_000, 41_000)])
    src = source("cache", idle_timeout=30, lifetime=120)
    try:
        assert len(src.process([(dg, "10.9.0.1", 1.0)], now=100.0)) == 0
        out = src.drain()
    finally:
        src.close()
    got = sorted((int(r["src_port"]), int(r["dst_port"]), int(r["in_pkts"]), int(r["in_bytes"]),
                  int(r["out_pkts"]), int(r["out_bytes"]), int(r["first_ms"]), int(r["last_ms"]))
                 for r in out)
    base = 1_700_000_000_000 - 100_000                      # the exporter's boot, epoch ms
    assert got == [(1000, 53, 5, 500, 3, 300, base + 50_000, base + 70_000),
                   (1001, 53, 2, 200, 0, 0, base + 40_000, base + 41_000)]


def test_cache_lifetime_and_full(exports):
    dg = udp_payloads(exports / "softflowd-netflow-v5.pcap")
    recs = Collector("cache").feed(dg)
    cache = FlowCache(max_flows=1 << 20, idle=1000, lifetime=60)
    assert len(cache.add(recs, 0.0)) == 0
    cache.add(recs, 30.0)
    out = cache.expire(61.0)
    assert len(out) == cache.stats["cache_created"]
    assert (out["end_reason"] == 1).all()                  # active (lifetime)
    assert int(out["in_pkts"].sum() + out["out_pkts"].sum()) == 2 * int(recs["in_pkts"].sum())
    small = FlowCache(max_flows=8, idle=1000, lifetime=1000)
    over = small.add(recs, 0.0)
    assert len(small) == 8 and len(over) > 0 and small.stats["cache_full"] == len(over)


def test_disable_cache_normalizes_icmp():
    tmpl = struct.pack(">HH", 0, 24) + struct.pack(">HH", 256, 4) + struct.pack(
        ">HHHHHHHH", 4, 1, 7, 2, 11, 2, 2, 4)
    data = struct.pack(">HH", 256, 4 + 9 + 3) + struct.pack(">BHHI", 1, 0, 0x0800, 1) + b"\0" * 3
    dgram = struct.pack(">HHIIII", 9, 2, 1000, 1700000000, 0, 0) + tmpl + data
    p = Collector("passthrough").feed([(dgram, "10.0.0.9", 1.0)])
    n = Collector("nocache").feed([(dgram, "10.0.0.9", 1.0)])
    assert p["dst_port"][0] == 0x0800 and p["icmp_type"][0] == 0
    assert n["dst_port"][0] == 0 and n["icmp_type"][0] == 0x0800


def test_parse_port():
    assert parse_port("2055") == ("0.0.0.0", 2055)
    assert parse_port("udp://127.0.0.1:6343") == ("127.0.0.1", 6343)
    assert parse_port("[::1]:4739") == ("::1", 4739)
    for bad in ("tcp://1.2.3.4:5", "abc", "70000", "1.2.3.4:"):
        with pytest.raises(FlowprobeError) as e:
            parse_port(bad)
        assert e.value.status == 2


def run_cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_bad_values_one_line():
    for args in (["-i", "none", "--collector-port", "nope"],
                 ["-i", "none", "--collector-port", "1", "--collector-passthrough",
                  "--disable-cache"]):
        r = run_cli(*args)
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


@pytest.mark.tools("tshark")
def test_cli_collects_replayed_datagrams(tmp_path, exports):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([sys.executable, "-m", "engine", "-i", "none", "--collector-port",
                             f"udp://127.0.0.1:{port}", "--collector-passthrough",
                             "--dump-format", "json", "--collector-idle-exit", "1.5", "-b", "1",
                             "--dump-bad-packets", str(tmp_path / "bad.pcap")],
                            cwd=ROOT, stdout=open(tmp_path / "out.json", "w"),
                            stderr=subprocess.PIPE, text=True)
    wait_bound(port, proc)
    dg = udp_payloads(exports / "softflowd-netflow-v9.pcap")
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for d, _a, _t in dg:
        tx.sendto(d, ("127.0.0.1", port))
    tx.sendto(b"\x00\x63junk", ("127.0.0.1", port))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in open(tmp_path / "out.json")]
    assert len(lines) == len(tshark_records(exports / "softflowd-netflow-v9.pcap"))
    # the bad-packet dump holds the one datagram that was no export, as sent
    bad = udp_payloads(tmp_path / "bad.pcap")
    assert [d for d, _, _ in bad] == [b"\x00\x63junk"]


@pytest.mark.tools("tshark")
def test_stats_shape_for_ntopng(exports):
    v9, sflow = exports / "softflowd-netflow-v9.pcap", exports / "pmacctd-sflow-v5.pcap"
    records = len(tshark_records(v9))
    samples = len(tshark_fields(sflow, ["sflow_245.header.frame_length"])[
        "sflow_245.header.frame_length"])
    src = source("passthrough")
    try:
        src.process(udp_payloads(v9))
        src.process(udp_payloads(sflow))
        st = src.stats()
    finally:
        src.close()
    fc = st["flow_collection"]
    assert fc["nf_ipfix_flows"] == records and fc["sflow_samples"] == samples
    assert fc["collection_port"] > 0
    e = fc["exporters"]["127.0.0.1"]
    assert set(e) == {"time_last_flow", "num_sflow_flows", "num_netflow_ipfix_flows",
                      "num_drops", "unique_source_id"}
    assert e["num_netflow_ipfix_flows"] == records and e["num_sflow_flows"] == samples
    assert e["unique_source_id"] == 2
    assert "kernel_drops" in st and st["collector"]["totals"]["datagrams"] == len(
        udp_payloads(v9)) + len(udp_payloads(sflow))


def test_drain_returns_the_cache_once(exports):
    src = source("cache", idle_timeout=30, lifetime=120)
    try:
        dg = udp_payloads(exports / "softflowd-netflow-v5.pcap")
        assert len(src.process(dg, now=0.0)) == 0
        held = len(src.cache)
        out = src.drain()
        assert len(out) == held > 0 and (out["end_reason"] == 4).all()
        assert len(src.drain()) == 0
    finally:
        src.close()


def test_merge_and_status_text(exports):
    from engine.probe import merge_flow_collection
    from engine.sources.base import Source
    dg = udp_payloads(exports / "softflowd-netflow-v5.pcap")
    records = sum(struct.unpack_from(">H", d, 2)[0] for d, _, _ in dg)   # v5 header counts
    src = source("passthrough")
    try:
        src.process(dg)
        st = src.stats()
    finally:
        src.close()
    m = merge_flow_collection([{"packets": 1}, st])
    assert m["nf_ipfix_flows"] == records and "127.0.0.1" in m["exporters"]
    assert CollectorSource.describe(st).startswith(
        f"collector: {len(dg)} datagrams, {records} records from 1 exporters")
    assert Source("a.pcap").describe({"packets": 1}) == ""
    assert st["collector_drops"] == {"flow_collection_drops": 0,
                                     "flow_collection_udp_socket_drops": 0}


def collect_cli(tmp_path, listen, datagrams, *flags):
    """flowprobe -i none --collector-port LISTEN FLAGS, fed ``datagrams`` from the same family,
    ends by its idle exit: (JSON flows, stderr)."""
    host, port = parse_port(listen)
    out = tmp_path / "out.json"
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "engine", "-i", "none", "--collector-port",
                                 listen, "--dump-format", "json", "--collector-idle-exit", "1.5",
                                 *flags], cwd=ROOT, stdout=f, stderr=subprocess.PIPE, text=True)
        wait_bound(port, proc)
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_DGRAM) as tx:
            for d in datagrams:
                tx.sendto(d, (host, port))
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return [json.loads(x) for x in out.read_text().splitlines()], err


def v9_sampled(rate):
    """A NetFlow v9 datagram: options data with the sampling interval, one flow of 5 packets."""
    tmpl = struct.pack(">HH", 0, 16) + struct.pack(">HHHHHH", 256, 2, 8, 4, 2, 4)
    opt = struct.pack(">HHHHH", 1, 20, 257, 4, 4) + struct.pack(">HHHH", 2, 4, 34, 4) + b"\0\0"
    optdata = struct.pack(">HHII", 257, 12, 1, rate)
    data = struct.pack(">HH4sI", 256, 12, bytes([10, 0, 0, 1]), 5)
    return struct.pack(">HHIIII", 9, 4, 100_000, 1_700_000_000, 0, 0) + tmpl + opt + optdata + data


def test_ipv6_socket_cache_and_upscale_flags(tmp_path):
    # an IPv6 listening socket; the exporter is then an IPv6 address
    port = free_port6()
    flows, err = collect_cli(tmp_path, f"[::1]:{port}", [v9_sampled(10)], "--collector-passthrough")
    assert [(f["IN_PKTS"], f["EXPORTER_IPV6_ADDRESS"]) for f in flows] == [(50, "::1")]
    # --disable-upscale leaves sampled counters as they came
    flows, _ = collect_cli(tmp_path, f"127.0.0.1:{free_port()}", [v9_sampled(10)],
                           "--collector-passthrough", "--disable-upscale")
    assert [f["IN_PKTS"] for f in flows] == [5]
    # --enable-collection-cache (the default, said explicitly) merges both directions
    dg = v5([v5_record("10.0.0.1", "10.0.0.2", 1000, 53, 5, 50_000, 60_000),
             v5_record("10.0.0.2", "10.0.0.1", 53, 1000, 3, 55_000, 70_000)])
    flows, _ = collect_cli(tmp_path, f"127.0.0.1:{free_port()}", [dg],
                           "--enable-collection-cache")
    assert [(f["IN_PKTS"], f["OUT_PKTS"]) for f in flows] == [(5, 3)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]
