"""Collecting from a ``flowrelay`` (engine/relay.py): ``--collector-port tcp://RELAY:PORT``.

The relay binds a ZeroMQ PUSH socket; the probe, behind its firewall, connects a PULL socket out to
it. Each message is two frames: the exporter as ``IP:PORT`` text (``[IPv6]:PORT``), then the
NetFlow/IPFIX/sFlow datagram unchanged. The datagram goes into the same parsing path as one
received on a UDP port, with the exporter address from the first frame, so per-exporter templates,
sequence numbers and statistics work as they do for direct UDP.

CURVE: the relay is the CURVE server (``flowrelay -k SECRET`` prints its public key); the probe is
the client, with ``--collector-encryption-key`` = the relay's public key (40 Z85 characters, 64 hex
digits, or the 80 hex digits of the Z85 text, as for --zmq-encryption-key) and a fresh key pair of
its own.

Messages that are not two frames, or whose first frame is not an address, are counted
(``bad_frames``) and dropped, never raised.
"""
from __future__ import annotations

import socket
from typing import Optional

BATCH_MESSAGES = 1024


def parse_sender(frame: bytes) -> Optional[str]:
    """'IP:PORT' / '[IPv6]:PORT' -> the IP text the collector keys exporters by, or None."""
    try:
        text = bytes(frame).decode("ascii")
    except (UnicodeDecodeError, ValueError):
        return None
    if len(text) > 80:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        ip = host[1:-1].split("%", 1)[0]          # a scope id means nothing to the collector
        fam = socket.AF_INET6
    else:
        ip = host
        fam = socket.AF_INET
    try:
        packed = socket.inet_pton(fam, ip)
    except (OSError, ValueError):
        return None
    return socket.inet_ntop(fam, packed)


class RelayReceiver:
    """A ZeroMQ PULL socket connected to one flowrelay; messages -> (datagram, exporter, time)."""

    def __init__(self, ctx, url: str, server_key: Optional[bytes] = None, rcvhwm: int = 1000):
        import zmq
        self.zmq = zmq
        self.url = url
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.IPV6, 1)            # tcp://[v6addr]:PORT and v6 names
        if server_key is not None:
            pub, sec = zmq.curve_keypair()
            self.sock.curve_serverkey = server_key
            self.sock.curve_publickey = pub
            self.sock.curve_secretkey = sec
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.sock.connect(url)
        self.counters = {"messages": 0, "datagrams": 0, "bytes": 0, "bad_frames": 0,
                         "connects": 0, "disconnects": 0, "handshakes": 0,
                         "handshake_failures": 0}

    def fileno(self) -> int:          # not used with select(): ZeroMQ's fd is edge-triggered
        return self.sock.getsockopt(self.zmq.FD)

    def _events(self) -> None:
        zmq = self.zmq
        from zmq.utils.monitor import recv_monitor_message
        while True:
            try:
                ev = recv_monitor_message(self.monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            e = ev.get("event")
            if e == zmq.EVENT_CONNECTED:
                self.counters["connects"] += 1
            elif e == zmq.EVENT_DISCONNECTED:
                self.counters["disconnects"] += 1
            elif e == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.counters["handshakes"] += 1
            elif e is not None:
                self.counters["handshake_failures"] += 1

    def receive(self, now: float, out: list, limit: int = BATCH_MESSAGES) -> int:
        """Append up to ``limit`` (datagram, exporter IP text, now) to ``out``; never blocks."""
        zmq = self.zmq
        recv = self.sock.recv_multipart
        c = self.counters
        n = 0
        for _ in range(limit):
            try:
                frames = recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                break
            c["messages"] += 1
            if len(frames) != 2:
                c["bad_frames"] += 1
                continue
            who = parse_sender(frames[0])
            if who is None:
                c["bad_frames"] += 1
                continue
            data = frames[1]
            c["datagrams"] += 1
            c["bytes"] += len(data)
            out.append((data, who, now))
            n += 1
        self._events()
        return n

    def stats(self) -> dict:
        self._events()
        return dict(self.counters, url=self.url)

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except Exception:
            pass
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
