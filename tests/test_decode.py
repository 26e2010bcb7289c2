"""The Cython packet decoders (engine/_decode.pxd, through engine._decode) one frame at a time
against the pure-Python reference decoder: the same reason for every frame, and for a decoded
frame the same flow key, payload and lengths. The flow-level comparisons in test_reference.py
check the same code inside the fast path; this one names the first field that differs."""
import pytest
from hypothesis import given, strategies as st

import engine.reference as ref
from engine import _decode
from test_reference import (FRAME_POOL, MS, SEC, SETTINGS, eth, ipv4, mutated_capture_frames,
                            scenarios, single_packets, tcp, udp)

FIELDS = ("ip_version", "proto", "src", "dst", "sport", "dport", "icmp_type", "tos", "tcp_flags",
          "vlan", "outer_vlan", "tunnel", "is_frag", "smac", "dmac", "payload", "payload_len",
          "l2_len", "outer_ip_len")


def reference_decode(decoder: ref.Decoder, frame: bytes, linktype: int, ts_us: int) -> dict:
    try:
        p = decoder.decode(frame, linktype, ts_us)
    except ref.Drop as d:
        return {"reason": d.reason}
    return {"reason": "ok", **{k: getattr(p, k) for k in FIELDS}}


def assert_same_decode(frames):
    """frames: (frame, linktype, ts_us), through one decoder of each kind (fragment caches)."""
    ours, theirs = _decode.Decoder(), ref.Decoder()
    for frame, lt, ts_us in frames:
        got = ours.decode(frame, lt, ts_us)
        want = reference_decode(theirs, frame, lt, ts_us)
        assert got == want, (frame.hex(), lt, {k: (got.get(k), want.get(k)) for k in want
                                               if got.get(k) != want.get(k)})


@SETTINGS
@given(st.lists(single_packets(), min_size=1, max_size=6))
def test_mutated_packets_decode_as_the_reference(frames):
    assert_same_decode([(f, lt, k * 1000) for k, (f, lt) in enumerate(frames)])


@SETTINGS
@given(scenarios())
def test_generated_traffic_decodes_as_the_reference(packets):
    # fragments included: the second fragment takes its key from the first one's cache entry
    assert_same_decode([(f, lt, ts // 1000) for ts, f, _, lt in packets])


@pytest.mark.skipif(not FRAME_POOL, reason="no development captures to take frames from")
@SETTINGS
@given(st.lists(mutated_capture_frames(), min_size=1, max_size=8) if FRAME_POOL else st.just([]))
def test_mutated_capture_frames_decode_as_the_reference(frames):
    assert_same_decode([(f, lt, k * 3000) for k, (f, _, lt) in enumerate(frames)])


def test_decoded_fields():
    frame = eth(ipv4(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 6,
                     tcp(40000, 443, 0x18, b"hello")), vlans=(7,))
    d = _decode.decode(frame)
    assert d["reason"] == "ok" and d["vlan"] == 7 and d["l2_len"] == 18
    assert (d["src"][:4], d["dst"][:4], d["sport"], d["dport"]) == (
        bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 40000, 443)
    assert d["payload"] == b"hello" and d["payload_len"] == 5 and d["tcp_flags"] == 0x18
    for cut in range(len(frame) - 5):      # every cut inside the headers is a counted reason
        assert _decode.decode(frame[:cut])["reason"] == "truncated", cut
    assert _decode.decode(frame, 999)["reason"] == "unsupported_link_type"
    assert _decode.decode(b"")["reason"] == "truncated"


def test_fragments_take_the_first_fragments_key():
    body = udp(5353, 53, b"q" * 40)
    first = eth(ipv4(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 17, body[:24], ident=9, mf=True))
    second = eth(ipv4(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 17, body[24:], ident=9,
                      frag_off=24))
    dec = _decode.Decoder()
    assert _decode.Decoder().decode(second)["reason"] == "fragment_without_first"
    assert dec.decode(first, 1, SEC // 1000)["sport"] == 5353
    d = dec.decode(second, 1, (SEC + MS) // 1000)
    assert (d["reason"], d["sport"], d["dport"], d["is_frag"]) == ("ok", 5353, 53, True)
    assert dec.fragments == 2
