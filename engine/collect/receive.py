"""UDP receive for the collector: the sockets' kernel drop counters from /proc/net/udp (the
datagrams themselves are read by _collect.Receiver, recvmmsg)."""
from __future__ import annotations

import os
import socket
from typing import Iterator, Optional

RCVBUF = 64 << 20                # the kernel socket buffer asked for (bursts from many routers)
BATCH_DATAGRAMS = 1024           # datagrams read from one socket before the others get a turn


def udp_socket_rows() -> Iterator[list[str]]:
    """The rows of /proc/net/udp and /proc/net/udp6 (Linux), split into columns: [1] the local
    address as HEXADDR:HEXPORT, [9] the inode, [12] the socket's drop counter."""
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                next(f)
                rows = [line.split() for line in f]
        except (OSError, StopIteration):
            continue
        yield from (r for r in rows if len(r) >= 13)


def udp_drops(sock: socket.socket) -> Optional[int]:
    """The kernel's drop counter for ``sock``, matched by its inode."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return None
    return next((int(r[12]) for r in udp_socket_rows() if r[9] == inode), None)
