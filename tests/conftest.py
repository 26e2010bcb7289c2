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


def _veth_pair(quiet: bool):
    sys.path.insert(0, str(ROOT / "tools"))
    import loadgen
    try:
        pair = loadgen.veth_pair("fp", quiet=quiet, addresses=None if quiet else
                                 (f"{HOST_IP}/24", f"{NS_IP}/24"))
        ends = pair.__enter__()
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot create a veth pair in namespaces here: {e.stderr.decode().strip()}")
    try:
        yield ends
    finally:
        pair.__exit__(None, None, None)


@pytest.fixture
def veth():
    """Two namespaces joined by a veth pair: the probe captures in one (HOST_IP), the test sends
    from the other (NS_IP). Yields (probe namespace, peer namespace, probe interface)."""
    for probe_ns, peer_ns, probe_if, _ in _veth_pair(quiet=False):
        yield probe_ns, peer_ns, probe_if


@pytest.fixture
def quiet_veth():
    """A veth pair (MTU 9000) whose ends have no address and no IPv6, so that what the probe
    captures is exactly what the test replays from the peer. Yields (probe namespace, peer
    namespace, probe interface, peer interface)."""
    yield from _veth_pair(quiet=True)
