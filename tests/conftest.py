import os
import pathlib
import shutil
import subprocess
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
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


def _veth_pair(quiet: bool):
    tag = uuid.uuid4().hex[:6]
    probe_ns, peer_ns, probe_if, peer_if = f"fpp{tag}", f"fpq{tag}", f"fpa{tag}", f"fpb{tag}"
    try:
        _sh("ip", "netns", "add", probe_ns)
        _sh("ip", "netns", "add", peer_ns)
        if quiet:       # no address, no IPv6: neither kernel sends a packet of its own
            for ns in (probe_ns, peer_ns):
                _sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1")
        _sh("ip", "link", "add", probe_if, "netns", probe_ns, "mtu", "9000", "type", "veth", "peer",
            "name", peer_if, "netns", peer_ns, "mtu", "9000")
        if not quiet:
            _sh("ip", "-n", probe_ns, "addr", "add", f"{HOST_IP}/24", "dev", probe_if)
            _sh("ip", "-n", peer_ns, "addr", "add", f"{NS_IP}/24", "dev", peer_if)
        _sh("ip", "-n", probe_ns, "link", "set", probe_if, "up")
        _sh("ip", "-n", peer_ns, "link", "set", peer_if, "up")
    except subprocess.CalledProcessError as e:
        for ns in (probe_ns, peer_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot create a veth pair in namespaces here: {e.stderr.decode().strip()}")
    yield probe_ns, peer_ns, probe_if, peer_if
    for ns in (probe_ns, peer_ns):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


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
