"""--dump-bad-packets: malformed collected datagrams kept in a pcap file for inspection."""
from __future__ import annotations

import struct
import sys
import time

from engine.errors import FlowprobeError, os_error_message


class BadPacketWriter:
    """Malformed datagrams as raw-IP/UDP packets (link type 101) in a pcap file, the exporter as
    source address and the collector's (first) port as destination port, so that tshark decodes
    them as NetFlow/IPFIX/sFlow on that port. (The exporter's own port is not kept: exporters are
    told apart by address.)"""

    def __init__(self, path: str, port: int = 0):
        try:
            self.f = open(path, "wb")
        except OSError as e:
            raise FlowprobeError(os_error_message(f"write {path!r}", e), status=2) from None
        self.path = path
        self.port = port
        self.written = 0
        self.write_errors = 0           # a full disk costs the dump, never the collection
        self._put(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))

    def _put(self, data: bytes) -> bool:
        try:
            self.f.write(data)
            return True
        except OSError as e:
            self._failed(e)
            return False

    def _failed(self, e: OSError) -> None:
        self.write_errors += 1
        if self.write_errors == 1:
            print("flowprobe: warning: " + os_error_message(f"write {self.path}", e) +
                  "; collection goes on, the datagrams not written are counted "
                  "(bad_packets_not_dumped)", file=sys.stderr)

    def write(self, exp, data: bytes) -> None:
        t = time.time()
        data = bytes(data[:65000])
        udp_len = 8 + len(data)
        if exp.ipv == 4:
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0,
                             exp.addr16[:4], b"\x7f\0\0\x01")
        else:
            ip = struct.pack(">IHBB16s16s", 0x60000000, udp_len, 17, 64, exp.addr16,
                             b"\0" * 15 + b"\x01")
        pkt = ip + struct.pack(">HHHH", 0, self.port, udp_len, 0) + data
        if self._put(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(pkt), len(pkt)) + pkt):
            self.written += 1

    def close(self) -> None:
        try:
            self.f.close()
        except OSError as e:        # the buffered tail could not be written
            self._failed(e)
