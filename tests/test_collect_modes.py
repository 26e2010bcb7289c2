"""The three collector modes, the collector's command-line flags and its statistics."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from engine.arguments import parse_port
from engine.collect import CollectorSource
from engine.collect.cache import FlowCache
from engine.collect.collector import Collector
from engine.errors import FlowprobeError
from engine.fields import records_to_dicts

from conftest import ROOT
from test_collect_exports import EXPORTS, udp_payloads
from test_collect_live import wait_bound

MUST_CARRY = ("EXPORTER_IPV4_ADDRESS", "INPUT_SNMP", "OUTPUT_SNMP", "OBSERVATION_POINT_ID")


def source(mode, **kw) -> CollectorSource:
    return CollectorSource([("127.0.0.1", 0)], mode=mode, **kw)


@pytest.mark.parametrize("name", ["softflowd-netflow-v9.pcap", "softflowd-ipfix.pcap",
                                  "pmacctd-nfprobe-ipfix.pcap", "softflowd-netflow-v5.pcap",
                                  "pmacctd-sflow-v5.pcap"])
def test_three_modes(name, pcaps_dir):
    dg = udp_payloads(EXPORTS / name)
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
    assert int(c["in_pkts"].sum() + c["out_pkts"].sum()) == int(p["in_pkts"].sum())
    assert int(c["in_bytes"].sum() + c["out_bytes"].sum()) == int(p["in_bytes"].sum())
    assert len(c) < len(p)
    assert (c["end_reason"] == 0).all()                    # idle
    for recs in (p, n, c):
        for d in records_to_dicts(recs, MUST_CARRY):
            assert set(d) == set(MUST_CARRY)
            assert d["EXPORTER_IPV4_ADDRESS"] == "127.0.0.1"


def test_cache_lifetime_and_full():
    dg = udp_payloads(EXPORTS / "softflowd-netflow-v5.pcap")
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
    import struct
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


def test_cli_collects_replayed_datagrams(tmp_path):
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
    dg = udp_payloads(EXPORTS / "softflowd-netflow-v9.pcap")
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for d, _a, _t in dg:
        tx.sendto(d, ("127.0.0.1", port))
    tx.sendto(b"\x00\x63junk", ("127.0.0.1", port))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in open(tmp_path / "out.json")]
    assert len(lines) == 594
    assert (tmp_path / "bad.pcap").stat().st_size > 24


def test_stats_shape_for_ntopng():
    src = source("passthrough")
    try:
        src.process(udp_payloads(EXPORTS / "softflowd-netflow-v9.pcap"))
        src.process(udp_payloads(EXPORTS / "pmacctd-sflow-v5.pcap"))
        st = src.stats()
    finally:
        src.close()
    fc = st["flow_collection"]
    assert fc["nf_ipfix_flows"] == 594 and fc["sflow_samples"] == 130
    assert fc["collection_port"] > 0
    e = fc["exporters"]["127.0.0.1"]
    assert set(e) == {"time_last_flow", "num_sflow_flows", "num_netflow_ipfix_flows",
                      "num_drops", "unique_source_id"}
    assert e["num_netflow_ipfix_flows"] == 594 and e["num_sflow_flows"] == 130
    assert e["unique_source_id"] == 2
    assert "kernel_drops" in st and st["collector"]["totals"]["datagrams"] == 40


def test_drain_returns_the_cache_once():
    src = source("cache", idle_timeout=30, lifetime=120)
    try:
        dg = udp_payloads(EXPORTS / "softflowd-netflow-v5.pcap")
        assert len(src.process(dg, now=0.0)) == 0
        held = len(src.cache)
        out = src.drain()
        assert len(out) == held > 0 and (out["end_reason"] == 4).all()
        assert len(src.drain()) == 0
    finally:
        src.close()


def test_merge_and_status_text():
    from engine.probe import merge_flow_collection
    from engine.sources.base import Source
    src = source("passthrough")
    try:
        src.process(udp_payloads(EXPORTS / "softflowd-netflow-v5.pcap"))
        st = src.stats()
    finally:
        src.close()
    m = merge_flow_collection([{"packets": 1}, st])
    assert m["nf_ipfix_flows"] == 590 and "127.0.0.1" in m["exporters"]
    assert CollectorSource.describe(st).startswith("collector: 20 datagrams, 590 records from 1 "
                                                   "exporters")
    assert Source("a.pcap").describe({"packets": 1}) == ""
    assert st["collector_drops"] == {"flow_collection_drops": 0,
                                     "flow_collection_udp_socket_drops": 0}
