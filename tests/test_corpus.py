"""Every development capture against ndpiReader's expected flow table (../shared/pcaps/expected)
and tshark's reading of the same frames.

A flow matches when its key (VLAN, protocol, both endpoints) is found exactly once among ours, the
packets per direction are equal, and the bytes per direction are ndpiReader's (whole frames)
minus the link-layer header of each of the flow's packets, that header measured by tshark (the
offset of the frame's first IP header). Which packet belongs to which flow comes from the mirror
(engine/reference.py); the packet counts check that assignment against ndpiReader.

Every file's mismatches, and our flows that ndpiReader does not have, are counted and pinned
below with the reason; every other file has none. For the matched flows, ndpiReader's tunnel
prefix, duration and payload-length bins, and tshark's TCP flags and packet times per flow, are
oracles for what only the mirror checked before. ndpiReader's IAT columns are not used: they
follow the DPI state, not every gap (quic046.pcap: a 1 ms maximum beside 10-50 ms gaps).
"""
from __future__ import annotations

import collections
import functools

import pytest

from conftest import PCAPS, corpus_files, corpus_params
from corpus import (capture_packets, expected_flows, l2_sums, ndpi_columns, our_flows,
                    packet_owners, run_fastpath, tshark_packets)
from engine.fields import TUNNELS
from engine.reference import plen_bin

# file -> (ndpiReader flows we do not match, our flows ndpiReader does not have, why)
EXPLAINED = {
    "dns_fragmented.pcap": (7, 0, "ndpiReader drops every IPv4/IPv6 fragment with a non-zero "
                            "offset; we account every fragment to its flow, so those flows have "
                            "more packets here"),
    "fuzz-2006-06-26-2594.pcap": (2, 0, "two packets whose transport header is cut short: "
                                  "ndpiReader keys them with port 0, we count them as "
                                  "truncated (no ports to key on)"),
    "ip_fragmented_garbage.pcap": (1, 0, "a TCP first fragment whose header is cut short: "
                                   "ndpiReader keeps it as a flow with ports 0; we count it as "
                                   "truncated and its later fragments as fragment_without_first"),
    "sctp.cap": (2, 2, "ndpiReader keys SCTP with ports 0; we read SCTP's ports, so the two "
                 "flows have other keys"),
    "fuzz-2021-10-13.pcap": (1, 0, "the file ends inside its only record: our reader stops and "
                             "reports the file as truncated, ndpiReader decodes the partial "
                             "record"),
    "capwap.pcap": (1, 0, "three 802.11 frames that ndpiReader moves off the outer CAPWAP flow "
                    "carry no IP packet (non-data or LLC non-IP); we leave them on the outer "
                    "flow, so it has 3 more packets"),
    "fuzz-2021-06-07-c6c72a0a56.pcap": (0, 1, "its one record claims a wire length of 4 GB: "
                                        "ndpiReader makes no flow of it, we account it with "
                                        "4,093,509,154 bytes (the reader takes a record's wire "
                                        "length as it stands)"),
}
# file -> (matched flows whose ndpiReader duration differs, why)
DURATION_DIFFERS = {
    "ipsec_isakmp_esp.pcap": (17, "the capture's timestamps go backwards ten times: a flow's "
                              "first time is its first packet's, its last the latest (DESIGN.md), "
                              "which ndpiReader measures otherwise"),
}
# file -> (matched flows whose payload-length bins disagree with ndpiReader's, why)
BINS_DIFFER = {
    "fuzz-2006-06-26-2594.pcap": (1, "a fuzzed segment with SYN and no ACK carrying 39 bytes: "
                                  "ndpiReader bins its payload; a client SYN opens handshake "
                                  "tracking and is never in our window (DESIGN.md)"),
}
# ndpiReader's tunnel prefix -> our tunnel field (IP-in-IP has no prefix there)
PREFIX = {"GTP": {"gtpu"}, "VXLAN": {"vxlan"}, "CAPWAP": {"capwap"}, "GRE": {"gre", "erspan"},
          None: {"none", "ipip"}}


@functools.lru_cache(maxsize=None)
def analysis(path):
    """Everything the tests of one capture compare, computed once."""
    records, stats = run_fastpath(path)
    cut: list = []
    packets = capture_packets(path, cut)
    tshark = tshark_packets(path)
    if cut[0]:                                  # tshark decodes the partial last record
        assert len(tshark) - len(packets) in (0, 1)
        tshark = tshark[:len(packets)]
    assert len(tshark) == len(packets)
    owners = packet_owners(packets)
    l2, unseen = l2_sums(owners, tshark)
    ours: dict = {}
    for rec, f in zip(records, our_flows(records)):
        ours.setdefault(f.key(), []).append((rec, f))
    expected = expected_flows(PCAPS / "expected" / (path.name + ".out"))
    matched, mismatched = [], []
    for e in expected:
        found = ours.get(e.key(), [])
        if len(found) != 1:
            mismatched.append((e, f"{len(found)} flows with this key"))
            continue
        rec, o = found[0]
        if o.left == e.left:
            got = (o.l2r_pkts, o.l2r_bytes, o.r2l_pkts, o.r2l_bytes)
        else:
            got = (o.r2l_pkts, o.r2l_bytes, o.l2r_pkts, o.l2r_bytes)
        back = l2[(e.key(), e.right)] if e.right != e.left else 0
        want = (e.l2r_pkts, e.l2r_bytes - l2[(e.key(), e.left)], e.r2l_pkts, e.r2l_bytes - back)
        if got == want:
            matched.append((e, rec, o))
        else:
            mismatched.append((e, f"ours {got}, ndpiReader less tshark's link layer {want}"))
    keys = {e.key() for e in expected}
    extra = [o for k, found in ours.items() if k not in keys for _, o in found]
    return dict(matched=matched, mismatched=mismatched, extra=extra, stats=stats,
                unseen=unseen, tshark=tshark, ours=ours, owners=owners)


@pytest.mark.tools("tshark")
@pytest.mark.parametrize("path", corpus_params(), ids=lambda p: getattr(p, "name", p))
def test_capture_matches_expected(path):
    a = analysis(path)
    want_mismatched, want_extra, _ = EXPLAINED.get(path.name, (0, 0, ""))
    assert a["unseen"] == 0                     # tshark found an IP header in every packet we count
    assert len(a["mismatched"]) == want_mismatched, a["mismatched"][:3]
    assert len(a["extra"]) == want_extra, a["extra"][:3]


@pytest.mark.tools("tshark")
def test_corpus_totals(pcaps_dir):
    total = matched = 0
    for path in corpus_files():
        a = analysis(path)
        matched += len(a["matched"])
        total += len(a["matched"]) + len(a["mismatched"])
    assert total == 2777                        # the README's parser yields 2,777 flows
    assert total - matched == sum(m for m, _, _ in EXPLAINED.values()) == 14


@pytest.mark.tools("tshark")
@pytest.mark.parametrize("path", corpus_params(), ids=lambda p: getattr(p, "name", p))
def test_tunnel_duration_and_payload_bins_match_ndpireader(path):
    """Per matched flow: ndpiReader's tunnel prefix is our tunnel; its duration ours (it prints
    two decimals, or "< 1 sec"); its payload-length bins (32 bytes wide, TCP/UDP, percentages)
    fall in our six bins: every non-empty bin of theirs in one of ours that can hold it, and no
    bin of ours without one of theirs (flows of at most 100 packets, so that each counts)."""
    a = analysis(path)
    durations = bins_differ = 0
    for e, rec, o in a["matched"]:
        col = ndpi_columns(e.info)
        assert TUNNELS[int(rec["tunnel"])] in PREFIX[col["tunnel"]], (e.left, col["tunnel"])
        seconds = (int(rec["last_ms"]) - int(rec["first_ms"])) / 1000
        if col["duration"] is None:
            durations += seconds >= 1.0
        else:
            durations += abs(seconds - col["duration"]) > 0.006
        bins = col["plen_bins"]
        if bins and e.proto in (6, 17) and e.l2r_pkts + e.r2l_pkts <= 100:
            theirs = {i for i, v in enumerate(bins) if v}
            can_hold = {i: {5} if i == 47 else {plen_bin(max(32 * i, 1)), plen_bin(32 * i + 31)}
                        for i in theirs}
            ours = {i for i, v in enumerate(rec["seq_plen"]) if v}
            bins_differ += not (all(can_hold[i] & ours for i in theirs)
                                and ours <= set().union(set(), *can_hold.values()))
    assert durations == DURATION_DIFFERS.get(path.name, (0, ""))[0]
    assert bins_differ == BINS_DIFFER.get(path.name, (0, ""))[0]


@pytest.mark.tools("tshark")
@pytest.mark.parametrize("path", corpus_params(), ids=lambda p: getattr(p, "name", p))
def test_tcp_flags_and_times_match_tshark(path):
    """Per TCP/UDP flow, from tshark's own decoding of the innermost segment of each frame: the
    OR of the TCP flags each side sent, the first packet's time (capture order) and the latest
    one's, to the millisecond, over the packets flowprobe accounts (the others are counted by
    reason). Endpoint pairs that several of our flows share (other VLANs) are left out: tshark's
    key here has no VLAN."""
    a = analysis(path)
    flags: collections.Counter = collections.Counter()
    times: dict = {}
    for t, owner in zip(a["tshark"], a["owners"]):
        if owner is None:
            continue
        for proto, seg in ((6, t["tcp"]), (17, t["udp"])):
            if seg is None:
                continue
            k = (proto, frozenset(seg[:2]))
            if proto == 6:
                flags[(k, seg[0])] |= seg[2]
            first, last = times.get(k, (t["ts_ns"], t["ts_ns"]))
            times[k] = (first, max(last, t["ts_ns"]))
    shared = collections.Counter((o.proto, frozenset((o.left, o.right)))
                                 for found in a["ours"].values() for _, o in found)
    checked = 0
    for e, rec, o in a["matched"]:
        k = (e.proto, frozenset((e.left, e.right)))
        if k not in times or shared[k] > 1:
            continue
        first, last = times[k]
        assert (int(rec["first_ms"]), int(rec["last_ms"])) == (first // 10**6, last // 10**6), \
            e.left
        if e.proto == 6:
            assert (int(rec["client_tcp_flags"]), int(rec["server_tcp_flags"])) == (
                flags[(k, o.left)], flags[(k, o.right)]), e.left
        checked += 1
    assert checked or not a["matched"] or not any(e.proto in (6, 17) for e, _, _ in a["matched"])


def test_no_packet_raises_and_every_drop_is_named(pcaps_dir):
    for path in corpus_files():
        _, stats = run_fastpath(path)
        accounted = stats["decoded"] + sum(stats["drops"].values())
        assert accounted == stats["packets"], path.name


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_tables_see_every_flow_once(shards, pcaps_dir):
    """Workers split a file by a hash of the address pair: together they must produce exactly the
    flows and counters of one table, every capture (tunnels and fragments included)."""
    for path in corpus_files():
        whole, whole_stats = run_fastpath(path)
        parts = [run_fastpath(path, shard_index=i, shard_count=shards) for i in range(shards)]
        assert sorted(map(repr, our_flows(whole))) == sorted(
            map(repr, [f for records, _ in parts for f in our_flows(records)])), path.name
        assert sum(st["packets"] for _, st in parts) == whole_stats["packets"]
        for reason, count in whole_stats["drops"].items():
            assert sum(st["drops"][reason] for _, st in parts) == count, (path.name, reason)
