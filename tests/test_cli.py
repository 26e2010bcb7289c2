"""The flowprobe command: outputs, statistics, and one clear line for every kind of bad input."""
import csv
import io
import json
import os
import subprocess
import sys

import pytest

from conftest import PCAPS, ROOT
from corpus import run_fastpath

CAPTURE = "<a capture>"          # in parameters: the session capture (a fixture) stands for it


# root without the capabilities that bypass file permissions and allow packet capture
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-net_raw,-net_admin",
                "--inh-caps=-all"]


def flowprobe(*args, unprivileged=False, timeout=120):
    cmd = [sys.executable, "-m", "engine", *map(str, args)]
    if unprivileged:
        cmd = UNPRIVILEGED + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def assert_one_clear_line(r, status=None):
    assert r.returncode != 0
    if status is not None:
        assert r.returncode == status
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("flowprobe: error: "), r.stderr
    assert "Traceback" not in r.stderr


def test_json_dump_keys_are_registry_names_and_match_the_fast_path(traffic):
    path, meta = traffic
    r = flowprobe("-i", path, "-d", 10 ** 9, "-t", 10 ** 9, "--dump-format", "json")
    assert r.returncode == 0, r.stderr
    flows = [json.loads(line) for line in r.stdout.splitlines()]
    records, _ = run_fastpath(path)
    assert len(flows) == len(records) == meta["flows"]
    assert sum(f["IN_PKTS"] + f["OUT_PKTS"] for f in flows) == int(
        records["in_pkts"].sum() + records["out_pkts"].sum())
    for key in ("L4_SRC_PORT", "PROTOCOL", "IN_PKTS", "IN_BYTES", "OUT_PKTS", "OUT_BYTES",
                "FIRST_SWITCHED", "LAST_SWITCHED", "SRC_VLAN", "SEQ_PLEN", "SEQ_TDIFF",
                "ENTROPY_CLIENT_BYTES", "ENTROPY_SERVER_BYTES"):
        assert all(key in f for f in flows), key
    assert any("IPV6_SRC_ADDR" in f for f in flows) and any("IPV4_SRC_ADDR" in f for f in flows)
    assert all(len(f["SEQ_PLEN"]) == 6 and len(f["SEQ_TDIFF"]) == 6 for f in flows)


def test_csv_and_text_dumps(session_pcap):
    path, f = session_pcap
    r = flowprobe("-i", path, "--dump-format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 1
    assert (rows[0]["IN_PKTS"], rows[0]["OUT_PKTS"]) == (str(f["in_pkts"]), str(f["out_pkts"]))
    assert rows[0]["IPV4_SRC_ADDR"] == f["src"]
    r = flowprobe("-i", path)
    assert r.returncode == 0
    assert f"{f['src']}:{f['src_port']} -> {f['dst']}:{f['dst_port']}" in r.stdout
    assert (f"[{f['in_pkts']} pkts/{f['in_bytes']} bytes <-> {f['out_pkts']} pkts/"
            f"{f['out_bytes']} bytes]") in r.stdout
    assert r.stderr.startswith(f"flowprobe: {f['in_pkts'] + f['out_pkts']} packets")


def test_several_inputs_and_a_list_file_are_processed_in_order(tmp_path, generated):
    (a, ea), (b, eb) = generated["session"], generated["fragments"]
    listfile = tmp_path / "list.txt"
    listfile.write_text(f"# captures\n{a}\n{b}\n")
    r1 = flowprobe("-i", listfile, "--dump-format", "json")
    r2 = flowprobe("-i", a, "-i", b, "--dump-format", "json")
    assert r1.returncode == r2.returncode == 0
    assert r1.stdout == r2.stdout
    assert len(r1.stdout.splitlines()) == len(ea["flows"]) + len(eb["flows"])
    assert f"{ea['packets'] + eb['packets']} packets" in r1.stderr


def test_summary_counts_what_the_generator_made(traffic):
    path, meta = traffic
    r = flowprobe("-i", path, "-n", "none", "-b", "1")
    assert r.returncode == 0 and r.stdout == ""
    assert f"{meta['packets']} packets ({meta['frame_bytes']} bytes on the wire)" in r.stderr
    assert (f"{meta['flows']} flows, {meta['flows']} flows finished (-n none: not exported), "
            "drops: none") in r.stderr


def test_drops_are_reported_by_reason(generated):
    path, exp = generated["malformed"]
    r = flowprobe("-i", path, "-n", "none")
    assert r.returncode == 0, r.stderr
    drops = r.stderr.strip().splitlines()[-1].split("drops: ")[1].split()
    assert sorted(drops) == sorted(f"{k}={v}" for k, v in exp["drops"].items())


def test_table_full_is_a_counted_drop_not_a_crash(traffic):
    path, meta = traffic
    r = flowprobe("-i", path, "-w", "10", "--dump-format", "json")
    assert r.returncode == 0, r.stderr
    full = int(r.stderr.split("flow_table_full=")[1].split()[0].rstrip(","))
    flows = [json.loads(x) for x in r.stdout.splitlines()]
    # every packet is in a flow or counted: a full table drops, it does not lose
    assert full > 0 and sum(f["IN_PKTS"] + f["OUT_PKTS"] for f in flows) + full == \
        meta["packets"]


@pytest.mark.parametrize("args, text", [
    (["-i", "/nonexistent/x.pcap"], "no such capture file or network interface"),
    (["-i", "setup.py"], "is not a pcap/pcapng file"),
    (["-i", "tests"], "Is a directory"),
    (["-i", "nosuchif0"], "no such capture file or network interface"),
    (["-i", "lo", "-f", "this is not bpf"], "bad filter"),
    (["-i", CAPTURE, "-f", "tcp and and"], "bad filter"),
    (["-w", "0", "-i", CAPTURE], "hash size must be between"),
    (["-t", "x", "-i", CAPTURE], "lifetime timeout must be an integer"),
    (["-d", "0", "-i", CAPTURE], "idle timeout must be between"),
    (["--dump-format", "xml", "-i", CAPTURE], "invalid choice"),
    (["--no-such-flag", "-i", CAPTURE], "unrecognized arguments"),
    (["-n", "collector.example:2055", "-i", CAPTURE], "-n collector.example:2055"),
    ([], "no input"),
])
def test_bad_input_gets_one_clear_line(args, text, session_pcap):
    r = flowprobe(*[str(session_pcap[0]) if a == CAPTURE else a for a in args])
    assert_one_clear_line(r)
    assert text in r.stderr


def test_truncated_and_non_pcap_files(tmp_path, session_pcap):
    data = session_pcap[0].read_bytes()
    short = tmp_path / "short.pcap"
    short.write_bytes(data[:10])
    assert_one_clear_line(flowprobe("-i", short))
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:len(data) // 2])
    r = flowprobe("-i", cut, "--dump-format", "json")
    assert r.returncode == 1
    assert "ends inside a packet record" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stdout.splitlines()) == 1       # the flow from the packets before the cut
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(os.urandom(4096))
    assert_one_clear_line(flowprobe("-i", garbage))
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    assert_one_clear_line(flowprobe("-i", empty))


@pytest.mark.root
@pytest.mark.tools("setpriv")             # to drop the capabilities that bypass permissions
def test_no_permission(tmp_path, session_pcap):
    secret = tmp_path / "secret.pcap"
    secret.write_bytes(session_pcap[0].read_bytes())
    secret.chmod(0o000)
    r = flowprobe("-i", secret, unprivileged=True)
    assert_one_clear_line(r)
    assert "Permission denied" in r.stderr
    r = flowprobe("-i", "lo", unprivileged=True)
    assert_one_clear_line(r)
    assert "permission" in r.stderr.lower()


def test_pcapng_and_other_link_types(pcaps_dir):
    for name, flows in (("ssh.pcap", 2), ("gre.pcapng", 1), ("KakaoTalk_chat.pcap", 38),
                        ("nats.pcap", 2), ("codm.pcap", 3), ("dlt_ppp.pcap", 1),
                        ("BGP_redist.pcap", 2)):
        r = flowprobe("-i", PCAPS / name, "-d", 10 ** 9, "-t", 10 ** 9, "--dump-format", "json")
        assert r.returncode == 0, (name, r.stderr)
        assert len(r.stdout.splitlines()) == flows, name


def test_bpf_filter_on_a_file(traffic):
    path, meta = traffic
    r = flowprobe("-i", path, "-f", "udp port 53", "--dump-format", "json")
    assert r.returncode == 0, r.stderr
    flows = [json.loads(x) for x in r.stdout.splitlines()]
    assert all(f["PROTOCOL"] == 17 and 53 in (f["L4_SRC_PORT"], f["L4_DST_PORT"]) for f in flows)
    assert len(flows) == meta["by_kind"]["udp_dns"]["flows"]      # every DNS flow, nothing else
