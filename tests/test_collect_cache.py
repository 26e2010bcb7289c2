"""The collector's C flow cache (engine/collect/_cache.pyx) against its numpy reference
(engine/collect/cache.py): the same records out, with the same merged counters, flags, times and
end reasons, the same statistics, for random streams of records of both directions, several
exporters and domains. When the cache is full the two pick different keys to keep (the reference
in key order, the C cache in arrival order), so a full cache is checked for what it must do:
hand the rest back, counted, and lose nothing."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine.collect._cache import FlowCache
from engine.collect.cache import FlowCache as ReferenceCache
from engine.fields import RECORD_DTYPE


def records(rng: np.random.Generator, n: int, hosts: int, ports: int) -> np.ndarray:
    r = np.zeros(n, RECORD_DTYPE)
    pool = rng.integers(0, 256, (hosts, 16), dtype=np.uint8)
    r["src_addr"] = pool[rng.integers(0, hosts, n)]
    r["dst_addr"] = pool[rng.integers(0, hosts, n)]
    r["src_port"] = rng.integers(0, ports, n) + 1000
    r["dst_port"] = rng.integers(0, ports, n) + 1000
    r["protocol"] = rng.choice([6, 17], n)
    r["ip_version"] = rng.choice([4, 6], n)
    r["vlan"] = rng.choice([0, 7], n)
    r["exporter_addr"][:, 0] = rng.integers(1, 3, n)
    r["observation_point"] = rng.integers(0, 2, n)
    for c in ("in_bytes", "in_pkts", "out_bytes", "out_pkts"):
        r[c] = rng.integers(0, 1 << 40, n)
    r["client_tcp_flags"] = rng.integers(0, 256, n)
    r["server_tcp_flags"] = rng.integers(0, 256, n)
    r["first_ms"] = rng.integers(0, 1 << 41, n)
    r["last_ms"] = r["first_ms"] + rng.integers(0, 100000, n)
    r["input_snmp"] = rng.integers(0, 9, n)
    for c in ("retr_pkts_c2s", "retr_pkts_s2c", "retr_bytes_c2s", "retr_bytes_s2c",
              "ooo_pkts_c2s", "ooo_pkts_s2c", "zero_win_c2s", "zero_win_s2c",
              "client_nw_latency_ms", "server_nw_latency_ms", "appl_latency_ms"):
        r[c] = rng.integers(0, 1 << 32, n)
    r["win_max_c2s"] = rng.integers(0, 1 << 16, n)
    r["win_max_s2c"] = rng.integers(0, 1 << 16, n)
    return r


def canon(a: np.ndarray) -> list[bytes]:
    return sorted(x.tobytes() for x in a)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), max_flows=st.sampled_from([4000, 100000]),
       hosts=st.integers(1, 40), ports=st.integers(1, 20))
def test_c_cache_matches_reference(seed, max_flows, hosts, ports):
    rng = np.random.default_rng(seed)
    ours, ref = FlowCache(max_flows, 10.0, 25.0), ReferenceCache(max_flows, 10.0, 25.0)
    now = 0.0
    for _ in range(12):
        now += float(rng.choice([0.5, 3.0, 11.0]))
        recs = records(rng, int(rng.integers(0, 300)), hosts, ports)
        assert canon(ours.add(recs, now)) == canon(ref.add(recs, now))
        assert len(ours) == len(ref)
        if rng.random() < 0.5:
            assert canon(ours.expire(now)) == canon(ref.expire(now))
    assert canon(ours.flush()) == canon(ref.flush())
    assert ours.stats == ref.stats and ours.stats["cache_full"] == 0
    assert len(ours) == 0


def test_full_cache_hands_records_back_and_counts_them():
    rng = np.random.default_rng(1)
    cache = FlowCache(8, 30.0, 120.0)
    recs = records(rng, 200, 30, 10)
    over = cache.add(recs, 0.0)
    assert len(cache) == 8 and len(over) > 0 and cache.stats["cache_full"] == len(over)
    out = cache.flush()
    assert set(out["end_reason"]) == {4}
    # nothing lost: every packet is in the cache's output or handed back
    pk = int(recs["in_pkts"].sum() + recs["out_pkts"].sum())
    assert int(out["in_pkts"].sum() + out["out_pkts"].sum() + over["in_pkts"].sum()
               + over["out_pkts"].sum()) == pk


def test_reasons_idle_then_lifetime():
    rng = np.random.default_rng(2)
    cache = FlowCache(1000, 10.0, 25.0)
    a, b = records(rng, 1, 2, 1), records(rng, 1, 2, 1)
    b["src_addr"][:, 0] = a["src_addr"][0, 0] ^ 1        # another flow
    cache.add(a, 0.0)
    cache.add(b, 0.0)
    for t in (8.0, 16.0, 24.0):
        cache.add(a, t)                                   # a stays busy, b goes idle
    out = cache.expire(24.0)
    assert len(out) == 1 and out["end_reason"][0] == 0    # b: idle
    out = cache.expire(25.0)
    assert len(out) == 1 and out["end_reason"][0] == 1    # a: lifetime
    assert int(out["in_pkts"][0]) == 4 * int(a["in_pkts"][0])


@pytest.mark.parametrize("bad", [0, 1])
def test_tiny_limits(bad):
    cache = FlowCache(max(bad, 1), 1.0, 1.0)
    assert len(cache.add(np.zeros(3, RECORD_DTYPE), 0.0)) == 0     # one key: merged
    assert len(cache.flush()) == 1
