"""The flowprobe command: outputs, statistics, and one clear line for every kind of bad input."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import PCAPS, ROOT
from corpus import run_fastpath

CURL = PCAPS / "443-curl.pcap"


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


def test_json_dump_keys_are_registry_names_and_match_the_fast_path(pcaps_dir):
    r = flowprobe("-i", PCAPS / "1kxun.pcap", "-d", 10 ** 9, "-t", 10 ** 9, "--dump-format", "json")
    assert r.returncode == 0, r.stderr
    flows = [json.loads(line) for line in r.stdout.splitlines()]
    records, _ = run_fastpath(PCAPS / "1kxun.pcap")
    assert len(flows) == len(records) == 197
    assert sum(f["IN_PKTS"] + f["OUT_PKTS"] for f in flows) == int(
        records["in_pkts"].sum() + records["out_pkts"].sum())
    for key in ("L4_SRC_PORT", "PROTOCOL", "IN_PKTS", "IN_BYTES", "OUT_PKTS", "OUT_BYTES",
                "FIRST_SWITCHED", "LAST_SWITCHED", "SRC_VLAN", "SEQ_PLEN", "SEQ_TDIFF",
                "ENTROPY_CLIENT_BYTES", "ENTROPY_SERVER_BYTES"):
        assert all(key in f for f in flows), key
    assert any("IPV6_SRC_ADDR" in f for f in flows) and any("IPV4_SRC_ADDR" in f for f in flows)
    assert all(len(f["SEQ_PLEN"]) == 6 and len(f["SEQ_TDIFF"]) == 6 for f in flows)


def test_csv_and_text_dumps(pcaps_dir):
    r = flowprobe("-i", CURL, "--dump-format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 1 and rows[0]["IN_PKTS"] == "51" and rows[0]["OUT_PKTS"] == "58"
    assert rows[0]["IPV4_SRC_ADDR"] == "192.168.1.13"
    r = flowprobe("-i", CURL)
    assert r.returncode == 0
    assert "192.168.1.13:55523 -> 178.62.197.130:443" in r.stdout
    assert "[51 pkts/3546 bytes <-> 58 pkts/68910 bytes]" in r.stdout
    assert r.stderr.startswith("flowprobe: 109 packets")


def test_several_inputs_and_a_list_file_are_processed_in_order(tmp_path, pcaps_dir):
    listfile = tmp_path / "list.txt"
    listfile.write_text(f"# captures\n{CURL}\n{PCAPS / 'sctp.cap'}\n")
    r1 = flowprobe("-i", listfile, "--dump-format", "json")
    r2 = flowprobe("-i", CURL, "-i", PCAPS / "sctp.cap", "--dump-format", "json")
    assert r1.returncode == r2.returncode == 0
    assert r1.stdout == r2.stdout
    assert len(r1.stdout.splitlines()) == 3


def test_statistics_every_second_and_summary(tmp_path, pcaps_dir):
    r = flowprobe("-i", PCAPS / "synscan.pcap", "-n", "none", "-b", "1")
    assert r.returncode == 0 and r.stdout == ""
    assert "2011 packets" in r.stderr and "1994 flows" in r.stderr


def test_drops_are_reported_by_reason(pcaps_dir):
    r = flowprobe("-i", PCAPS / "ip_fragmented_garbage.pcap", "-n", "none")
    assert "fragment_without_first=1248" in r.stderr and "truncated=4" in r.stderr


def test_table_full_is_a_counted_drop_not_a_crash(pcaps_dir):
    r = flowprobe("-i", PCAPS / "synscan.pcap", "-w", "100", "-n", "none")
    assert r.returncode == 0
    assert "flow_table_full=" in r.stderr


@pytest.mark.parametrize("args, text", [
    (["-i", "/nonexistent/x.pcap"], "no such capture file or network interface"),
    (["-i", "setup.py"], "is not a pcap/pcapng file"),
    (["-i", "tests"], "Is a directory"),
    (["-i", "nosuchif0"], "no such capture file or network interface"),
    (["-i", "lo", "-f", "this is not bpf"], "bad filter"),
    (["-i", str(CURL), "-f", "tcp and and"], "bad filter"),
    (["-w", "0", "-i", str(CURL)], "hash size must be between"),
    (["-t", "x", "-i", str(CURL)], "lifetime timeout must be an integer"),
    (["-d", "0", "-i", str(CURL)], "idle timeout must be between"),
    (["--dump-format", "xml", "-i", str(CURL)], "invalid choice"),
    (["--no-such-flag", "-i", str(CURL)], "unrecognized arguments"),
    (["-n", "collector.example:2055", "-i", str(CURL)], "-n collector.example:2055"),
    ([], "no input"),
])
def test_bad_input_gets_one_clear_line(args, text):
    r = flowprobe(*args)
    assert_one_clear_line(r)
    assert text in r.stderr


def test_truncated_and_non_pcap_files(tmp_path, pcaps_dir):
    data = CURL.read_bytes()
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


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root (and "
                    "setpriv) to drop the capabilities that bypass permissions")
def test_no_permission(tmp_path, pcaps_dir):
    secret = tmp_path / "secret.pcap"
    secret.write_bytes(CURL.read_bytes())
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


def test_bpf_filter_on_a_file(pcaps_dir):
    r = flowprobe("-i", PCAPS / "1kxun.pcap", "-f", "udp port 53", "--dump-format", "json")
    assert r.returncode == 0, r.stderr
    flows = [json.loads(x) for x in r.stdout.splitlines()]
    assert flows and all(f["PROTOCOL"] == 17 and 53 in (f["L4_SRC_PORT"], f["L4_DST_PORT"])
                         for f in flows)
