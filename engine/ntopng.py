"""ntopng's ZeroMQ wire format, the one place it is written (spec: docs ntopng-zmq-protocol.md):
message headers both ways, the payload and per-message flow limits, topics, ntopng's endpoint
syntax and CURVE keys. The exporter, the subscriber and flowrelay import it."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

MAX_PAYLOAD = 131072            # ntopng's receive buffer: a larger payload is cut (§2)
# ntopng's TLV (and JSON) parser returns a message's flow count in 8 bits: a message of more
# flows is counted modulo 256 in its statistics (§5.3)
MAX_FLOWS_PER_MESSAGE = 255
MSG_VERSION = 4                 # the v3 header's version byte (§3.4)
FLAG_TLV = 0x02
FLAG_ZLIB = 0x04
TOPICS = (b"flow", b"event", b"counter", b"template", b"option", b"hello", b"listening-ports",
          b"snmp-ifaces", b"message")

_V3 = struct.Struct("<16sBBxx")     # topic, version, flags, padding: 20 bytes, then 4 u32


def header(topic: bytes, flags: int, uncompressed_len: int, msg_id: int, source_id: int) -> bytes:
    """The 36-byte v3 header, version byte 4 (§3.4/§3.6): the uncompressed length BE at 20 and
    LE at 24, msg_id BE at 28, source_id LE at 32."""
    return (_V3.pack(topic, MSG_VERSION, flags) + struct.pack(">I", uncompressed_len)
            + struct.pack("<I", uncompressed_len) + struct.pack(">I", msg_id & 0xFFFFFFFF)
            + struct.pack("<I", source_id & 0xFFFFFFFF))


class DecodeError(ValueError):
    pass


@dataclass
class Header:
    topic: str
    length: int            # header frame length: 24, 28, 36 or 40
    version: int
    flags: int
    uncompressed_size: int  # offset 20 (BE) of a 36-byte header
    size24: int            # offset 24 (LE) of a 36-byte header
    msg_id: int
    source_id: int

    @property
    def tlv(self) -> bool:
        return self.length == 36 and self.version == MSG_VERSION and bool(self.flags & FLAG_TLV)

    @property
    def compressed(self) -> bool:
        return self.length == 36 and self.version == MSG_VERSION and bool(self.flags & FLAG_ZLIB)


def parse_header(frame: bytes) -> Header:
    """Any header ntopng accepts (§3.5): v0 (40 bytes), v1 (24), v2 (28), v3 (36)."""
    n = len(frame)
    if n == 36:
        topic = frame[:16].split(b"\0", 1)[0].decode(errors="replace")
        version, flags = frame[16], frame[17]
        usize = struct.unpack_from(">I", frame, 20)[0]
        size24 = struct.unpack_from("<I", frame, 24)[0]
        msg_id = struct.unpack_from(">I", frame, 28)[0]
        source_id = struct.unpack_from("<I", frame, 32)[0]
        if version != MSG_VERSION:
            msg_id = source_id = 0
            flags = 0
        return Header(topic, n, version, flags, usize, size24, msg_id, source_id)
    if n == 24:
        topic = frame[:16].split(b"\0", 1)[0].decode(errors="replace")
        version = frame[16]
        msg_id = struct.unpack_from("<I" if version == 1 else ">I", frame, 20)[0]
        return Header(topic, n, version, 0, 0, 0, msg_id, 0 if version == 1 else frame[17])
    if n == 28:
        topic = frame[:16].split(b"\0", 1)[0].decode(errors="replace")
        version = frame[16]
        msg_id = struct.unpack_from("<I" if version == 1 else ">I", frame, 20)[0]
        sid = 0 if version == 1 else struct.unpack_from("<I", frame, 24)[0]
        return Header(topic, n, version, 0, 0, 0, msg_id, sid)
    if n == 40:
        topic = frame[:32].split(b"\0", 1)[0].decode(errors="replace")
        version = struct.unpack_from("<I", frame, 32)[0]
        return Header(topic, n, version, 0, 0, 0, 0, 0)
    raise DecodeError(f"unsupported header length {n}")


def split_endpoint(url: str) -> tuple[str, bool]:
    """ntopng's endpoint syntax: a 'c' after the port ("tcp://*:5556c", ntopng's collector mode)
    means bind. Returns (the ZeroMQ URL, bind?)."""
    if url.endswith("c") and url.rsplit(":", 1)[-1][:-1].isdigit():
        return url[:-1], True
    return url, False


# --- CURVE keys ---------------------------------------------------------------------------------
_HEX = set("0123456789abcdefABCDEF")


def _z85(text: str) -> bytes:
    """Z85 text of a 32-byte key, checked; ValueError otherwise."""
    from zmq.utils import z85
    try:
        raw = z85.decode(text.encode("ascii"))
    except Exception:
        raw = b""
    if len(raw) != 32 or z85.encode(raw) != text.encode("ascii"):
        raise ValueError("not valid Z85 text")
    return text.encode("ascii")


def parse_curve_key(text: str) -> bytes:
    """A CURVE public key as the 40-character Z85 text zmq wants. Accepts Z85 (40 characters),
    the 80 hex digits ntopng's interface page shows (hex of the Z85 text) and 64 hex digits (the
    raw 32 bytes). Raises ValueError with a readable message otherwise."""
    from zmq.utils import z85
    t = text.strip()
    if len(t) == 80 and set(t) <= _HEX:
        t = bytes.fromhex(t).decode("ascii", errors="replace")
    elif len(t) == 64 and set(t) <= _HEX:
        return z85.encode(bytes.fromhex(t))
    elif len(t) in (64, 80):
        raise ValueError(f"CURVE key of {len(t)} characters must be hex digits (or 40 Z85 "
                         "characters)")
    if len(t) != 40:
        raise ValueError(f"CURVE key must be 40 Z85 characters or 80 hex digits, got "
                         f"{len(text.strip())} characters")
    try:
        return _z85(t)
    except ValueError:
        raise ValueError("CURVE key is not valid Z85 text") from None


def parse_curve_secret(text: str) -> bytes:
    """A CURVE secret key as Z85 bytes, from Z85 text, 64 hex digits, or a file holding either."""
    from zmq.utils import z85
    t = text.strip()
    if os.path.isfile(t):
        with open(t) as f:
            t = f.read().strip()
    if len(t) == 64 and set(t) <= _HEX:
        return z85.encode(bytes.fromhex(t))
    if len(t) != 40:
        raise ValueError("a CURVE secret key is 40 Z85 characters or 64 hex digits")
    return _z85(t)


def generate_keypair() -> tuple[str, str]:
    """(public, secret) Z85 CURVE keys."""
    import zmq
    pub, sec = zmq.curve_keypair()
    return pub.decode(), sec.decode()
