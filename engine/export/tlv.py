"""nDPI's TLV serialization (the format ntopng decodes with ``ndpi_deserialize_*``), both ways.

Wire format (protocol spec §5): a payload is the preamble ``01 01`` followed by records; a record
is items back to back ending with the byte ``01``; an item is ``(key_type << 4) | value_type``,
the key, the value. Numeric keys and unsigned values use the narrowest width, as nDPI's
serializer does (uint8 / uint16 / uint32 / uint64, big-endian); strings are a u16 BE length and
the bytes; floats are 4 bytes IEEE-754 little-endian. Output is byte-identical to nDPI's
``ndpi_serialize_uint32_uint64`` / ``ndpi_serialize_uint32_string`` /
``ndpi_serialize_string_string`` / ``ndpi_serialize_end_of_record`` (checked in the tests).

Encoding works column by column (one pass per field over a batch of records), so the per-flow
cost is a few list operations per field, not a Python call per item.
"""
from __future__ import annotations

import struct
from typing import Iterable

import numpy as np

from engine.fields import Field, Form, field_values

PREAMBLE = b"\x01\x01"
END_OF_RECORD = b"\x01"

T_END, T_U8, T_U16, T_U32, T_U64 = 1, 2, 3, 4, 5
T_I8, T_I16, T_I32, T_I64, T_FLOAT, T_STRING = 6, 7, 8, 9, 10, 11

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F32 = struct.Struct("<f")


class TLVError(ValueError):
    pass


def _key(key) -> tuple[int, bytes]:
    """(key type, key bytes) for a numeric id or a string label; a numeric string becomes a number,
    as nDPI's serializer does."""
    if isinstance(key, str) and key.isdigit() and int(key) <= 0xFFFFFFFF:
        key = int(key)
    if isinstance(key, int):
        if key <= 0xFF:
            return T_U8, bytes((key,))
        if key <= 0xFFFF:
            return T_U16, _U16.pack(key)
        return T_U32, _U32.pack(key)
    b = key.encode()
    return T_STRING, _U16.pack(len(b)) + b


class ItemEncoder:
    """Encodes items of one key; prefixes (type byte + key) are computed once."""

    __slots__ = ("prefix", "small")

    def __init__(self, key):
        kt, kb = _key(key)
        self.prefix = {vt: bytes(((kt << 4) | vt,)) + kb for vt in range(2, 12)}
        p = self.prefix[T_U8]
        self.small = [p + bytes((v,)) for v in range(256)]

    def value(self, v) -> bytes:
        """One item for a Python value: int (>= 0: narrowest unsigned; < 0: narrowest signed),
        float, str, bytes, list/tuple of ints (as comma-separated text). None gives b''."""
        if v is None:
            return b""
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, int):
            if v >= 0:
                if v < 256:
                    return self.small[v]
                if v < 65536:
                    return self.prefix[T_U16] + _U16.pack(v)
                if v < 4294967296:
                    return self.prefix[T_U32] + _U32.pack(v)
                return self.prefix[T_U64] + _U64.pack(v)
            if v >= -128:
                return self.prefix[T_I8] + struct.pack(">b", v)
            if v >= -32768:
                return self.prefix[T_I16] + struct.pack(">h", v)
            if v >= -2147483648:
                return self.prefix[T_I32] + struct.pack(">i", v)
            return self.prefix[T_I64] + struct.pack(">q", v)
        if isinstance(v, float):
            return self.prefix[T_FLOAT] + _F32.pack(v)
        if isinstance(v, (list, tuple)):
            v = ",".join(map(str, v))
        b = v.encode() if isinstance(v, str) else bytes(v)
        if len(b) > 0xFFFF:
            raise TLVError("TLV string longer than 65535 bytes")
        return self.prefix[T_STRING] + _U16.pack(len(b)) + b

    def uint_column(self, values: list) -> list:
        small, p16, p32, p64 = self.small, self.prefix[T_U16], self.prefix[T_U32], self.prefix[T_U64]
        pack16, pack32, pack64 = _U16.pack, _U32.pack, _U64.pack
        return [small[v] if v < 256 else
                p16 + pack16(v) if v < 65536 else
                p32 + pack32(v) if v < 4294967296 else
                p64 + pack64(v) for v in values]

    def string_column(self, values: list) -> list:
        p = self.prefix[T_STRING]
        pack16 = _U16.pack
        out = []
        for v in values:
            if v is None:
                out.append(b"")
            else:
                b = v.encode()
                out.append(p + pack16(len(b)) + b)
        return out


def field_key(f, labels: bool = False):
    """The TLV/JSON key of a registry or probe field: its NetFlow v9 id (ntop fields 57472 + n),
    or its name when it has no id (or when ``labels``)."""
    if labels or f.v9 is None:
        return f.name
    return f.v9


class RecordEncoder:
    """TLV records (each ending with 01, no preamble) for a fixed list of fields."""

    def __init__(self, fields: Iterable[Field], constants: Iterable[tuple] = ()):
        self.fields = list(fields)
        self.items = [ItemEncoder(field_key(f)) for f in self.fields]
        # probe-level constants: one pre-encoded suffix shared by every record
        self.suffix = b"".join(ItemEncoder(field_key(p)).value(v) for p, v in constants) + END_OF_RECORD

    def column(self, f: Field, item: ItemEncoder, records: np.ndarray) -> list:
        vals = field_values(f, records)
        form = f.codec.form
        if form is Form.TEXT:
            return item.string_column(vals)
        if form is Form.NUMBER and f.codec.applies is None:
            return item.uint_column(vals)
        return [b"" if v is None else item.value(v) for v in vals]

    def encode(self, records: np.ndarray) -> list[bytes]:
        """One bytes object per record."""
        n = len(records)
        if n == 0:
            return []
        cols = [self.column(f, it, records) for f, it in zip(self.fields, self.items)]
        cols.append([self.suffix] * n)
        join = b"".join
        return [join(row) for row in zip(*cols)]


def payload(records: Iterable[bytes]) -> bytes:
    return PREAMBLE + b"".join(records)


# --- decoding ------------------------------------------------------------------------------------
def decode(buf: bytes) -> list[dict]:
    """TLV payload -> list of records ({key: value}, key int or str). Follows ntopng: parsing ends
    at the buffer end or a 00 type byte; a last record without 01 counts; empty records do not."""
    mv = memoryview(buf)
    if len(buf) < 2 or buf[0] != 1 or buf[1] != 1:
        raise TLVError("not a TLV payload (preamble is not 01 01)")
    out: list[dict] = []
    rec: dict = {}
    i, n = 2, len(buf)
    try:
        while i < n:
            t = buf[i]
            i += 1
            if t == 0:
                break
            if t == T_END:
                if rec:
                    out.append(rec)
                rec = {}
                continue
            kt, vt = t >> 4, t & 15
            if kt == T_U8:
                key = buf[i]; i += 1
            elif kt == T_U16:
                key = _U16.unpack_from(mv, i)[0]; i += 2
            elif kt == T_U32:
                key = _U32.unpack_from(mv, i)[0]; i += 4
            elif kt == T_STRING:
                ln = _U16.unpack_from(mv, i)[0]
                key = bytes(mv[i + 2:i + 2 + ln]).decode(errors="replace"); i += 2 + ln
            else:
                raise TLVError(f"unsupported TLV key type {kt} at offset {i - 1}")
            if vt == T_U8:
                val = buf[i]; i += 1
            elif vt == T_U16:
                val = _U16.unpack_from(mv, i)[0]; i += 2
            elif vt == T_U32:
                val = _U32.unpack_from(mv, i)[0]; i += 4
            elif vt == T_U64:
                val = _U64.unpack_from(mv, i)[0]; i += 8
            elif vt == T_I8:
                val = struct.unpack_from(">b", mv, i)[0]; i += 1
            elif vt == T_I16:
                val = struct.unpack_from(">h", mv, i)[0]; i += 2
            elif vt == T_I32:
                val = struct.unpack_from(">i", mv, i)[0]; i += 4
            elif vt == T_I64:
                val = struct.unpack_from(">q", mv, i)[0]; i += 8
            elif vt == T_FLOAT:
                val = _F32.unpack_from(mv, i)[0]; i += 4
            elif vt == T_STRING:
                ln = _U16.unpack_from(mv, i)[0]
                val = bytes(mv[i + 2:i + 2 + ln]).decode(errors="replace"); i += 2 + ln
            else:
                raise TLVError(f"unsupported TLV value type {vt} at offset {i - 1}")
            if i > n:
                raise TLVError("TLV item runs past the end of the payload")
            rec[key] = val
    except (struct.error, IndexError):
        raise TLVError("TLV item runs past the end of the payload") from None
    if rec:
        out.append(rec)
    return out


def encode_dicts(rows: Iterable[dict]) -> bytes:
    """A TLV payload for plain dicts ({key: value}); for tests and tools, not the hot path."""
    parts = [PREAMBLE]
    cache: dict = {}
    for row in rows:
        for k, v in row.items():
            enc = cache.get(k)
            if enc is None:
                enc = cache[k] = ItemEncoder(k)
            parts.append(enc.value(v))
        parts.append(END_OF_RECORD)
    return b"".join(parts)
