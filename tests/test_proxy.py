"""Proxy mode: flowprobe collects NetFlow/IPFIX (``-i none --collector-port``,
``--collector-passthrough``) and re-exports it in another version (``-n``, ``-V``).

softflowd exports a capture; a UDP tee sends the very datagrams both to a reference nfcapd and to
flowprobe, which re-exports to a second nfcapd. ``nfdump -R`` of both must show the same flows,
packets and bytes, except what the target version cannot carry (IPv6 flows to v5), which
flowprobe counts (``netflow_conversion_drops``, in the exit summary's drops) instead of sending.
"""
from __future__ import annotations

import socket
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tool
from test_collect_live import Tee, free_port, run_exporter, wait_bound
from test_netflow_export import NFDUMP_FIELDS, Receiver, nfcapd_collect


def proxy_run(tmp_path, capture, in_version, out_version):
    """(records nfdump read from softflowd, records nfdump read from flowprobe, flowprobe's
    stderr, datagrams softflowd sent); records as test_netflow_export.NFDUMP_FIELDS."""
    ref_port, fp_port, out_port = free_port(), free_port(), free_port()

    def run_all():
        fp = subprocess.Popen(
            [sys.executable, "-m", "engine", "-i", "none", "--collector-port",
             f"127.0.0.1:{fp_port}", "--collector-passthrough", "-n", f"127.0.0.1:{out_port}",
             "-V", out_version, "--collector-idle-exit", "2"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_bound(fp_port, fp)
        tee = Tee([ref_port, fp_port])
        try:
            run_exporter([tool("softflowd"), "-r", str(capture), "-n", f"127.0.0.1:{tee.port}",
                          "-v", in_version, "-c", "none"])
            tee.drain()
        finally:
            tee.close()
        _, err = fp.communicate(timeout=30)
        assert fp.returncode == 0, err
        return err, tee.count

    ours, (theirs, (err, count)) = nfcapd_collect(
        tmp_path, out_port, lambda: nfcapd_collect(tmp_path, ref_port, run_all))
    return theirs, ours, err, count


def ordered_times(rows, modulo=None):
    out = []
    for r in rows:
        ts, te = min(r[0], r[1]), max(r[0], r[1])
        if modulo:
            ts, te = ts % modulo, te % modulo
        out.append((ts, te, *r[2:]))
    return sorted(out)


def totals(rows):
    i = {k: NFDUMP_FIELDS.index(k) for k in ("ipkt", "ibyt", "opkt", "obyt")}
    return (len(rows), sum(r[i["ipkt"]] + r[i["opkt"]] for r in rows),
            sum(r[i["ibyt"]] + r[i["obyt"]] for r in rows))


@pytest.mark.tools("nfcapd", "nfdump", "softflowd")
@pytest.mark.parametrize("capture,in_version,out_version", [
    ("traffic", "5", "10"),             # v5 in, IPFIX out
    ("traffic", "10", "9"),             # and the reverse: IPFIX in, v9 out (IPv6 flows too)
    ("span", "10", "9"),                # flows in 2016 and 2022
    ("span", "9", "10"),
    ("traffic", "10", "5"),             # IPv6 to v5 cannot be converted: counted, not sent
])
def test_proxy_matches_nfdump(tmp_path, generated, traffic, capture, in_version, out_version):
    path = traffic[0] if capture == "traffic" else generated[capture][0]
    theirs, ours, err, count = proxy_run(tmp_path, path, in_version, out_version)
    assert count > 0 and theirs
    want = theirs
    dropped = 0
    if out_version == "5":
        want = [r for r in theirs if ":" not in r[NFDUMP_FIELDS.index("sa")]]
        dropped = len(theirs) - len(want)
        assert dropped > 0
        assert f"netflow_conversion_drops={dropped}" in err, err
    else:
        assert "netflow_conversion_drops" not in err, err
    # softflowd's IPFIX has flows whose start is after their end: nfdump swaps them when it
    # reads IPFIX, flowprobe passes them on as sent, and nfdump keeps v5/v9's order.
    # softflowd's v9 replaying a capture stamps FIRST/LAST_SWITCHED past the header's sysUptime:
    # flowprobe reads that as an uptime that wrapped (RFC 3954), nfdump's v9 reader (unlike its
    # v5 reader) as a flow in the future, so those times agree modulo 2^32 ms
    wrap = 1 << 32 if in_version == "9" else None
    assert ordered_times(ours, wrap) == ordered_times(want, wrap)
    f, p, b = totals(ours)
    print(f"\n{capture} v{in_version} -> v{out_version if out_version != '10' else '10 (IPFIX)'}: "
          f"softflowd sent {count} datagrams; nfdump of softflowd: {totals(theirs)} "
          f"(flows, packets, bytes); nfdump of flowprobe: flows {f}, packets {p}, bytes {b}"
          + (f"; {dropped} IPv6 flows counted, not sent" if dropped else ""))


# --- the counters, in process ----------------------------------------------------------------
def records(n):
    from engine.fields import RECORD_DTYPE
    r = np.zeros(n, dtype=RECORD_DTYPE)
    r["ip_version"] = 4
    r["first_ms"] = r["last_ms"] = 1_700_000_000_000
    r["in_pkts"] = 1
    r["in_bytes"] = 100
    r["protocol"] = 6
    return r


def test_v5_counts_what_it_cannot_carry():
    from engine.export.netflow import NetFlowExporter
    rx = Receiver()
    e = NetFlowExporter([(rx.target, ("127.0.0.1", rx.port), socket.AF_INET)], version=5)
    r = records(4)
    r["ip_version"][0] = 6                  # not sent: v5 has no IPv6
    r["in_bytes"][1] = 5_000_000_000        # over 32 bits: sent as 0xFFFFFFFF, counted
    r["input_snmp"][2] = 70000              # over 16 bits: sent as 0xFFFF, counted
    e.export(r)
    e.close()
    st = e.stats()
    assert st["netflow_conversion_drops"] == st["netflow_v5_ipv6_skipped"] == 1
    assert st["netflow_values_clipped"] == 2
    (g,) = rx.drain()
    assert struct.unpack_from(">H", g, 2)[0] == 3
    octets = [struct.unpack_from(">I", g, 24 + 48 * i + 20)[0] for i in range(3)]
    inputs = [struct.unpack_from(">H", g, 24 + 48 * i + 12)[0] for i in range(3)]
    assert octets == [0xFFFFFFFF, 100, 100] and inputs == [0, 0xFFFF, 0]


@pytest.mark.parametrize("version", [9, 10])
def test_v9_ipfix_count_fields_not_carried(version):
    from engine.export.netflow import NetFlowExporter
    from engine.export.templates import parse_template
    rx = Receiver()
    e = NetFlowExporter([(rx.target, ("127.0.0.1", rx.port), socket.AF_INET)], version=version,
                        template=parse_template("%IN_PKTS %IN_BYTES %SEQ_PLEN %TUNNEL_TYPE"),
                        warn=lambda line: None)
    e.export(records(3))
    e.close()
    st = e.stats()
    assert st["netflow_fields_not_carried"] == 2
    assert st["netflow_conversion_drops"] == st["netflow_values_clipped"] == 0
    assert st["netflow_records"] == 3
    rx.drain()
