import os
import pathlib
import shutil
import re
import subprocess
import sys
import tempfile
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # the tests use bench's helpers (bench.kafka_broker)
    sys.path.insert(0, str(ROOT))
SHARED = pathlib.Path(os.environ.get("FLOWPROBE_SHARED", ROOT.parent / "shared"))
PCAPS = SHARED / "pcaps"
# .ci/run sets FLOWPROBE_CI: there every tool and privilege a test needs is installed by
# tools/setup-debian.sh --test, so a missing one is a failure, not a reason to test less
CI = bool(os.environ.get("FLOWPROBE_CI"))
NO_SHARED = f"development captures not found at {PCAPS}"


def corpus_files():
    if not PCAPS.is_dir():
        return []
    return sorted(p for p in PCAPS.iterdir()
                  if p.suffix in (".pcap", ".pcapng", ".cap") and p.is_file())


def corpus_params():
    """The development captures as parameters, or one parameter that skips with the reason."""
    return corpus_files() or [pytest.param(None, marks=pytest.mark.skip(reason=NO_SHARED),
                                           id="no-development-set")]


@pytest.fixture(scope="session")
def pcaps_dir():
    if not PCAPS.is_dir():
        pytest.skip(NO_SHARED)
    return PCAPS


# --- what a test needs: a tool, a library, root -----------------------------------------------
TOOL_PATHS = {"softflowd": "/usr/sbin/softflowd", "pmacctd": "/usr/sbin/pmacctd"}


def tool(name: str) -> str:
    """The path of a program the test runs (``unavailable`` when it is not installed)."""
    path = shutil.which(name) or TOOL_PATHS.get(name)
    if not path or not os.access(path, os.X_OK):
        unavailable(f"{name} not installed (tools/setup-debian.sh --test installs it)")
    return path


def unavailable(reason: str):
    """Something the test needs is missing here: skip with the reason, or fail in CI."""
    if CI:
        pytest.fail(f"{reason}; FLOWPROBE_CI is set, so this is a failure", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config):
    config.addinivalue_line("markers", "tools(*names): programs the test runs")
    config.addinivalue_line("markers", "root: the test needs root (network namespaces, capture)")
    config.addinivalue_line("markers", "curve: the test needs libzmq with CURVE")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("tools"):
        for name in mark.args:
            tool(name)
    if item.get_closest_marker("root") and os.geteuid() != 0:
        unavailable("needs root (network namespaces, live capture)")
    if item.get_closest_marker("curve"):
        import zmq
        if not zmq.has("curve"):
            unavailable("libzmq without CURVE")


def wait_until(condition, timeout: float = 15.0, what: str = "the condition", step: float = 0.02):
    """Poll ``condition`` until it returns something true, and return that; fail the test with
    ``what`` when ``timeout`` seconds pass first. Readiness is observed, never slept for."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def udp_queue(port: int):
    """(bytes queued, datagrams the kernel dropped) of the UDP socket bound to ``port``, from
    /proc/net/udp{,6}; None when nothing is bound to it."""
    from engine.collect.receive import udp_socket_rows
    for row in udp_socket_rows():
        if int(row[1].rsplit(":", 1)[1], 16) == port:
            return int(row[4].split(":")[1], 16), int(row[12])
    return None


def tcp_peers(port: int, state: str = "01") -> int:
    """TCP sockets on local ``port`` in ``state`` (/proc/net/tcp{,6}; 01 established: whether a
    peer is connected, a probe to a relay's ZeroMQ socket; 0A: listening)."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            next(f)
            for row in f:
                c = row.split()
                n += int(c[1].rsplit(":", 1)[1], 16) == port and c[3] == state
    return n


# --- a process under test --------------------------------------------------------------------
class Running:
    """A flowprobe process whose stderr is read line by line in a thread."""

    def __init__(self, cmd, stdout=subprocess.DEVNULL, env=None):
        self.out = None
        if stdout == subprocess.PIPE:      # a file: a full pipe would stall the probe
            self.out = tempfile.TemporaryFile("w+")
            stdout = self.out
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE,
                                     text=True,
                                     env=env or {**os.environ, "PYTHONPATH": str(ROOT)})
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern, timeout=30.0):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = rx.search(line)
                if m:
                    return m
            if self.proc.poll() is not None and not self.thread.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def stdout(self) -> str:
        """What the process has written to its stdout so far (stdout=subprocess.PIPE)."""
        self.out.seek(0)
        return self.out.read()

    def finish(self, timeout=60):
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.proc.kill()
        self.thread.join(5)
        out = ""
        if self.out is not None:
            self.out.seek(0)
            out = self.out.read()
            self.out.close()
        return out, "\n".join(self.lines)



# --- live capture on a veth pair between two network namespaces the test creates -------------
HOST_IP, NS_IP = "192.0.2.1", "192.0.2.2"        # TEST-NET-1, only on the test's own veth pair
live = pytest.mark.root


def _veth_pair(quiet: bool):
    tool("ip")
    sys.path.insert(0, str(ROOT / "tools"))
    import loadgen
    try:
        pair = loadgen.veth_pair("fp", quiet=quiet, addresses=None if quiet else
                                 (f"{HOST_IP}/24", f"{NS_IP}/24"))
        ends = pair.__enter__()
    except subprocess.CalledProcessError as e:
        unavailable(f"cannot create a veth pair in namespaces here: {e.stderr.decode().strip()}")
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


# --- inputs the project makes (no file from outside the repository) ----------------------------
@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    """tools/gen_cases.py's captures: case name -> (path, sidecar)."""
    import cases
    return cases.write(tmp_path_factory.mktemp("cases"))


def gen_pcap(directory: pathlib.Path, name: str, seed: int, packets: int, flows: int):
    """A tools/gen_pcap.py capture over 20 s: (path, its sidecar of expected totals)."""
    import json
    path = directory / name
    subprocess.run([sys.executable, str(ROOT / "tools" / "gen_pcap.py"), "--seed", str(seed),
                    "--packets", str(packets), "--flows", str(flows), "--duration", "20", "-q",
                    "-o", str(path)], check=True, timeout=120)
    return path, json.loads(pathlib.Path(str(path) + ".json").read_text())


@pytest.fixture(scope="session")
def traffic(tmp_path_factory):
    """3,000 packets, 300 flows: IPv4 and IPv6, TCP and UDP."""
    return gen_pcap(tmp_path_factory.mktemp("traffic"), "traffic.pcap", 3, 3000, 300)


@pytest.fixture(scope="session")
def session_pcap(generated):
    """tools/gen_cases.py's one TCP connection: (path, its flow as the sidecar has it)."""
    path, exp = generated["session"]
    (flow,) = exp["flows"]
    return path, flow


@pytest.fixture(scope="session")
def many_flows(tmp_path_factory):
    """9,000 packets, 1,500 flows."""
    return gen_pcap(tmp_path_factory.mktemp("many"), "many-flows-1500.pcap", 7, 9000, 1500)


@pytest.fixture(scope="session")
def exports(tmp_path_factory, traffic):
    """softflowd's and pmacctd's exports of ``traffic``, recorded here (tests/recorded.py)."""
    import recorded
    return recorded.record(tmp_path_factory.mktemp("exports"), traffic[0])
