"""Smoke test of the benchmark harness (issue 7): ``python -m bench all --quick`` produces the
collector, probe and export tables, and they are internally consistent (every figure a number
within its min-max, every record accounted: sent = received + counted drops). It asserts no
speed.

The peers (softflowd, nfstream, pmacctd) are left out here to keep the test short; ``--quick``
without ``--no-peers`` runs them.
"""
import json
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT, live, unavailable



def measured(stat: dict) -> bool:
    """A figure of the table: a median within its min-max, all finite. How large it is depends
    on the machine and its load, so it is not asserted (speed is measured in bench/)."""
    vals = [stat.get(k) for k in ("min", "median", "max") if k in stat]
    return bool(vals) and all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
                              for v in vals) and (len(vals) < 3 or vals[0] <= vals[1] <= vals[2])


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    stem = tmp_path_factory.mktemp("bench") / "bench"
    p = subprocess.run([sys.executable, "-m", "bench", "all", "--quick", "--no-peers",
                        "--out", str(stem)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(stem.with_suffix(".json").read_text())
    return p.stdout, res, stem


def test_tables_on_stdout(quick):
    out, res, stem = quick
    for title in ("### Collector", "### Probe", "### Export"):
        assert title in out
    assert "| `--zmq-format j --disable-cache` |" in out
    assert "published figures, other hardware" in out
    assert stem.with_suffix(".md").read_text().strip() == out.strip()


def test_machine_description(quick):
    m = quick[1]["machine"]
    for k in ("cpu_model", "logical_cpus", "kernel", "python", "versions"):
        assert m[k]
    assert quick[1]["problems"] == []


def test_collector_rows_accounted(quick):
    rows = quick[1]["tables"]["collector"]["rows"]
    assert [(r["format"], r["mode"]) for r in rows] == [
        ("j", "nocache"), ("t", "nocache"), ("j", "passthrough"), ("t", "passthrough"),
        ("j", "cache"), ("t", "cache")]
    assert rows[0]["improvement"] == pytest.approx(1.0)
    assert [r["published"] for r in rows[:4]] == [33000, 73000, 58000, 220000]
    for r in rows:
        assert measured(r["egress_flows_per_s"]) and measured(r["flows_per_cpu_s"])
        for run in r["runs"] + r["paced"]:
            assert run["sent"] > 0
            assert run["sent"] == run["received"] + run["kernel_drops"] + run["export_drops"] \
                + run["unaccounted"]
            assert run["unaccounted"] == 0, run
            assert run["kernel_drops"] % 30 == 0
        assert r["sent"] == r["received"] + r["kernel_drops"] + r["export_drops"]


def test_probe_rows(quick):
    t = quick[1]["tables"]["probe"]
    labels = [r["label"] for r in t["rows"]]
    assert "flowprobe -n none" in labels and "flowprobe -n none --no-features" in labels
    for r in t["rows"]:
        assert measured(r["pkts_per_s"]) and measured(r["cpu_s"]) and measured(r["maxrss_bytes"])
        if r["kind"] == "flowprobe":            # checked against the capture's sidecar
            assert r["packets"] == t["capture"]["packets"]
            assert r["flows"] == t["capture"]["flows"]


def test_export_rows_accounted(quick):
    rows = quick[1]["tables"]["export"]["rows"]
    assert {(r["format"], r["compress"]) for r in rows} == {
        (f, c) for f in "tjm" for c in (False, True)}
    for r in rows:
        assert measured(r["flows_per_s"])
        assert r["sent"] == r["received"] + r["dropped_counted"] + r["unaccounted"]
        assert r["unaccounted"] == 0


def test_charts(quick):
    import matplotlib  # noqa: F401  (a test extra)
    charts = quick[1]["charts"]
    assert len(charts) == 3
    for c in charts:
        assert (ROOT / c).stat().st_size > 1000


# --- python -m bench relay --quick: flowrelay's forwarding table ------------------------------
@pytest.fixture(scope="module")
def relay_quick(tmp_path_factory):
    import zmq
    if not zmq.has("curve"):
        unavailable("libzmq without CURVE")
    stem = tmp_path_factory.mktemp("bench-relay") / "relay"
    p = subprocess.run([sys.executable, "-m", "bench", "relay", "--quick", "--out", str(stem)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout, json.loads(stem.with_suffix(".json").read_text()), stem


def test_relay_table_accounted(relay_quick):
    out, res, stem = relay_quick
    assert "### flowrelay" in out and "| ZeroMQ, CURVE |" in out
    assert stem.with_suffix(".md").read_text().strip() == out.strip()
    assert res["problems"] == []
    assert [r["key"] for r in res["rows"]] == ["plain", "curve", "probe"]
    for r in res["rows"]:
        assert r["sent"] > 0 and r["received"] > 0
        assert measured(r["datagrams_per_s"])
        assert r["sent"] == r["received"] + r["relay_drops"] + (r["kernel_drops"] or 0) \
            + r["unaccounted"]
        for run in r["runs"]:
            assert run["sent"] == run["received"] + run["relay_drops"] \
                + (run["kernel_drops"] or 0) + run["unaccounted"]
            assert math.isfinite(run["datagrams_per_s"]) and run["datagrams_per_s"] >= 0



@live
def test_live_bench_quick_runs_end_to_end(tmp_path):
    """`python -m bench live --quick` (two rows): a veth pair, the generator, every packet sent
    accounted as received or dropped by the kernel."""
    stem = tmp_path / "live"
    p = subprocess.run([sys.executable, "-m", "bench", "live", "--quick", "--only",
                        "ring,tcpdump", "--out", str(stem)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(stem.with_suffix(".json").read_text())
    assert "ring" in res["rows"] and "| `flowprobe -i IFACE` (ring) |" in p.stdout
    for row in res["rows"].values():
        assert len(row["runs"]) == 2
        for r in row["runs"]:
            assert r["sent"] == res["packets"] > 0
            assert 0 < r["received"] and r["received"] + r["kernel_drops"] <= r["sent"]
