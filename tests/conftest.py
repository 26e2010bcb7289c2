import os
import pathlib
import shutil
import subprocess
import sys
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # the tests use bench's helpers (bench.kafka_broker)
    sys.path.insert(0, str(ROOT))
SHARED = pathlib.Path(os.environ.get("FLOWPROBE_SHARED", ROOT.parent / "shared"))
PCAPS = SHARED / "pcaps"


def corpus_files():
    if not PCAPS.is_dir():
        return []
    return sorted(p for p in PCAPS.iterdir()
                  if p.suffix in (".pcap", ".pcapng", ".cap") and p.is_file())


@pytest.fixture(scope="session")
def pcaps_dir():
    if not PCAPS.is_dir():
        pytest.skip(f"development captures not found at {PCAPS}")
    return PCAPS


# --- live capture on a veth pair between two network namespaces the test creates -------------
HOST_IP, NS_IP = "192.0.2.1", "192.0.2.2"        # TEST-NET-1, only on the test's own veth pair
live = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                          reason="live capture on veth needs root and iproute2")


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def veth():
    """Two namespaces joined by a veth pair: the probe captures in one (HOST_IP), the test sends
    from the other (NS_IP). Yields (probe namespace, peer namespace, probe interface)."""
    tag = uuid.uuid4().hex[:6]
    probe_ns, peer_ns, probe_if, peer_if = f"fpp{tag}", f"fpq{tag}", f"fpa{tag}", f"fpb{tag}"
    try:
        _sh("ip", "netns", "add", probe_ns)
        _sh("ip", "netns", "add", peer_ns)
        _sh("ip", "link", "add", probe_if, "netns", probe_ns, "type", "veth", "peer", "name",
            peer_if, "netns", peer_ns)
        _sh("ip", "-n", probe_ns, "addr", "add", f"{HOST_IP}/24", "dev", probe_if)
        _sh("ip", "-n", probe_ns, "link", "set", probe_if, "up")
        _sh("ip", "-n", peer_ns, "addr", "add", f"{NS_IP}/24", "dev", peer_if)
        _sh("ip", "-n", peer_ns, "link", "set", peer_if, "up")
    except subprocess.CalledProcessError as e:
        for ns in (probe_ns, peer_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot create a veth pair in namespaces here: {e.stderr.decode().strip()}")
    yield probe_ns, peer_ns, probe_if
    for ns in (probe_ns, peer_ns):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
