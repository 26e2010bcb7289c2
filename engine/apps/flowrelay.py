"""``flowrelay``: NetFlow/IPFIX/sFlow datagrams from UDP to ZeroMQ, so that a flowprobe behind a
firewall can collect them by connecting out (``flowprobe -i none --collector-port
tcp://RELAY:5556``).

    flowrelay -c [ADDR:]PORT -z ENDPOINT [-k SECRET] [--allow CIDR ...] [--queue N] [-v]

* Every UDP datagram is checked before it is forwarded: NetFlow v5 (header, count 1..30, length
  24 + 48 * count), NetFlow v9 (header, flowsets that tile the datagram, 4-byte padding allowed),
  IPFIX (header length = datagram length, sets that tile it exactly), sFlow v5 (version, agent
  address type, header fits). Anything else is counted (``invalid``) and dropped; so are datagrams
  from exporters outside ``--allow`` (``not_allowed``).
* ZeroMQ: a PUSH socket. ``-z "tcp://*:5556c"`` or ``tcp://*:5556`` binds (the probe connects out
  to the relay); any other endpoint is connected to. Each message has two frames: the exporter as
  ``IP:PORT`` text (``[IPv6]:PORT``), and the datagram, byte for byte.
* ``-k SECRET``: CURVE encryption, the relay is the CURVE server; SECRET is its secret key (40 Z85
  characters, 64 hex digits, or a file holding either). The public key the probe needs is printed
  at start. ``flowrelay --gen-keypair`` prints a new key pair.
* While no probe takes messages they wait in a queue of ``--queue`` datagrams (default 10000);
  beyond that the oldest are dropped and counted (``queue_drops``).
* ``-v``: statistics every ``--stats-interval`` seconds (and at exit) on stderr.
"""
from __future__ import annotations

import argparse
import collections
import ipaddress
import signal
import socket
import struct
import sys
import time
from typing import Optional

from engine.errors import FlowprobeError
from engine.ntopng import parse_curve_secret, split_endpoint


# --- validation ------------------------------------------------------------------------------
def _sets_tile(data: bytes, off: int, exact: bool) -> bool:
    n = len(data)
    if off == n:
        return not exact                 # v9 header with no flowset: harmless, IPFIX: not
    while off + 4 <= n:
        length = struct.unpack_from(">H", data, off + 2)[0]
        if length < 4 or off + length > n:
            return False
        off += length
    return off == n or (not exact and n - off < 4)


def classify(data: bytes) -> Optional[str]:
    """'netflow5', 'netflow9', 'ipfix', 'sflow5', or None for anything else."""
    n = len(data)
    if n < 4:
        return None
    version = struct.unpack_from(">H", data)[0]
    if version == 5 and n >= 24:
        count = struct.unpack_from(">H", data, 2)[0]
        return "netflow5" if 1 <= count <= 30 and n == 24 + 48 * count else None
    if version == 9 and n >= 20:
        return "netflow9" if _sets_tile(data, 20, exact=False) else None
    if version == 10 and n >= 16:
        length = struct.unpack_from(">H", data, 2)[0]
        return "ipfix" if length == n and _sets_tile(data, 16, exact=True) else None
    if version == 0 and n >= 28 and struct.unpack_from(">I", data)[0] == 5:
        atype = struct.unpack_from(">I", data, 4)[0]
        head = {1: 28, 2: 40}.get(atype)
        if head is None or n < head:
            return None
        samples = struct.unpack_from(">I", data, head - 4)[0]
        return "sflow5" if samples <= (n - head) // 8 else None
    return None


# --- the relay -------------------------------------------------------------------------------
class Relay:
    def __init__(self, listen: tuple[str, int], endpoint: str, secret: Optional[bytes] = None,
                 allow: tuple = (), queue: int = 10000, log=None):
        import zmq
        self.zmq = zmq
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        host, port = listen
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.udp = socket.socket(fam, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        try:
            self.udp.bind((host, port))
        except OSError as e:
            raise FlowprobeError(f"-c {host}:{port}: cannot listen ({e.strerror})") from None
        self.port = self.udp.getsockname()[1]
        self.udp.setblocking(False)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.SNDHWM, 1000)  # in flight to a probe; the rest waits in our queue
        self.public_key = None
        if secret is not None:
            self.sock.curve_server = True
            self.sock.curve_secretkey = secret
            self.public_key = zmq.curve_public(secret).decode()
        url, bind = split_endpoint(endpoint)                 # ntopng's "tcp://*:5556c"
        bind = bind or "://*" in url or "://0.0.0.0" in url or "://[::]" in url
        try:
            (self.sock.bind if bind else self.sock.connect)(url)
        except zmq.ZMQError as e:
            raise FlowprobeError(f"-z {endpoint}: {e}", status=2) from None
        self.allow = [ipaddress.ip_network(a, strict=False) for a in allow]
        self.queue: collections.deque = collections.deque()
        self.queue_max = queue
        self.stop_requested = False
        self.counters = collections.Counter(received=0, forwarded=0, invalid=0, not_allowed=0,
                                            queue_drops=0)

    def allowed(self, ip: str) -> bool:
        if not self.allow:
            return True
        a = ipaddress.ip_address(ip.split("%")[0])
        if a.version == 6 and a.ipv4_mapped:
            a = a.ipv4_mapped
        return any(a in net for net in self.allow)

    def handle(self, data: bytes, peer) -> None:
        self.counters["received"] += 1
        ip, port = peer[0], peer[1]
        if not self.allowed(ip):
            self.counters["not_allowed"] += 1
            return
        kind = classify(data)
        if kind is None:
            self.counters["invalid"] += 1
            return
        self.counters[kind] += 1
        who = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        if len(self.queue) >= self.queue_max:
            self.pump()                        # a probe may be taking them: no drop then
        if len(self.queue) >= self.queue_max:
            self.queue.popleft()
            self.counters["queue_drops"] += 1
        self.queue.append((who.encode(), data))

    def pump(self) -> None:
        """Send queued datagrams until ZeroMQ would block (no probe, or its queue is full)."""
        zmq = self.zmq
        while self.queue:
            who, data = self.queue[0]
            try:
                self.sock.send_multipart((who, data), flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.queue.popleft()
            self.counters["forwarded"] += 1

    def stats_line(self) -> str:
        c = self.counters
        return ("flowrelay: " + " ".join(f"{k}={c[k]}" for k in (
            "received", "forwarded", "netflow5", "netflow9", "ipfix", "sflow5", "invalid",
            "not_allowed", "queue_drops")) + f" queued={len(self.queue)}")

    def run(self, verbose: bool = False, stats_interval: float = 1.0) -> None:
        zmq = self.zmq
        poller = zmq.Poller()
        poller.register(self.udp, zmq.POLLIN)
        last = time.monotonic()
        while not self.stop_requested:
            # wake for datagrams, and, while some wait in the queue, as soon as the probe can
            # take more (a fixed retry delay capped forwarding at about 10k datagrams/s)
            poller.register(self.sock, zmq.POLLOUT if self.queue else 0)
            try:
                events = dict(poller.poll(200))
            except zmq.ZMQError:               # interrupted by a signal
                events = {}
            if self.udp.fileno() in events:      # plain sockets come back as their fd
                for _ in range(1024):
                    try:
                        data, peer = self.udp.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    self.handle(data, peer)
            self.pump()
            now = time.monotonic()
            if verbose and now - last >= stats_interval:
                last = now
                self.log(self.stats_line())

    def close(self) -> None:
        self.pump()
        self.sock.close(linger=500)
        self.ctx.term()
        self.udp.close()


# --- command line ------------------------------------------------------------------------------
def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "0.0.0.0"
    host = host.strip("[]") or "0.0.0.0"
    try:
        p = int(port)
    except ValueError:
        p = -1
    if not 1 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"expected [ADDR:]PORT with PORT 1..65535, not {text!r}")
    return host, p


def _cidr(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address or CIDR block")
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise FlowprobeError(f"{message} (see flowrelay --help)", status=2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flowrelay", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--collector-port", type=_listen, metavar="[ADDR:]PORT",
                   help="UDP port receiving NetFlow/IPFIX/sFlow")
    p.add_argument("-z", "--zmq", metavar="ENDPOINT",
                   help="ZeroMQ endpoint: tcp://*:5556c binds (probes connect), else connects")
    p.add_argument("-k", "--key", metavar="SECRET",
                   help="CURVE secret key of the relay (Z85, hex, or a file)")
    p.add_argument("--allow", action="append", default=[], type=_cidr, metavar="CIDR",
                   help="accept datagrams only from these exporters (repeatable)")
    p.add_argument("--queue", type=int, default=10000, metavar="N",
                   help="datagrams kept while no probe takes them (default 10000)")
    p.add_argument("-v", "--verbose", action="store_true", help="statistics on stderr")
    p.add_argument("--stats-interval", type=float, default=1.0, metavar="SEC")
    p.add_argument("--gen-keypair", "--genkey", dest="genkey", action="store_true",
                   help="print a new CURVE key pair (JSON) and exit")
    return p


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        import zmq
    except ImportError:
        raise FlowprobeError("pyzmq is not installed")
    if args.genkey:
        from engine.apps import print_keypair
        return print_keypair(["flowrelay ... -k {secret}",
                              "flowprobe ... --collector-encryption-key {public}"])
    if args.collector_port is None or not args.zmq:
        raise FlowprobeError("give -c PORT and -z ENDPOINT (see flowrelay --help)", status=2)
    if args.queue < 1:
        raise FlowprobeError("--queue must be at least 1", status=2)
    secret: Optional[bytes] = None
    if args.key:
        if not zmq.has("curve"):
            raise FlowprobeError("-k: this libzmq has no CURVE support", status=2)
        try:
            secret = parse_curve_secret(args.key)
        except ValueError as e:
            raise FlowprobeError(f"-k: {e}", status=2) from None
    relay = Relay(args.collector_port, args.zmq, secret, tuple(args.allow), args.queue)
    if relay.public_key:
        relay.log(f"flowrelay: CURVE public key {relay.public_key}")
    relay.log(f"flowrelay: listening on udp port {relay.port}, forwarding to {args.zmq}")

    def stop(*_):
        relay.stop_requested = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        relay.run(args.verbose, args.stats_interval)
    finally:
        relay.close()
        relay.log(relay.stats_line())
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except FlowprobeError as e:
        print(f"flowrelay: error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
