"""Flow records in the message formats (TLV, JSON, msgpack), as one byte string a flow or as whole
message payloads: what the ZeroMQ and Kafka exporters send.

The C encoder (engine/export/_encode.pyx) does the work; its Python references, which the tests
hold it to byte for byte, are engine/export/tlv.py (TLV), json.dumps (JSON) and
``reference_msgpack`` below (msgpack, the schema of docs/zmq-msgpack.md).
"""
from __future__ import annotations

import json

import numpy as np

from engine.export import tlv
from engine.fields import RECORD_DTYPE, field_values
from engine.options import MessageFormat

MSGPACK_SCHEMA = "flowprobe.flows"
MSGPACK_SCHEMA_VERSION = 1


def msgpack_head() -> bytes:
    """The start of a msgpack payload: a 3-entry map of schema, version and (then) the flows."""
    import msgpack
    head = msgpack.packb({"schema": MSGPACK_SCHEMA, "version": MSGPACK_SCHEMA_VERSION})
    return b"\x83" + head[1:] + msgpack.packb("flows")


class FlowEncoder:
    """Records of one template -> per-flow byte strings (``encode``) or message payloads
    (``messages``); a list of per-flow strings -> one payload (``payload``)."""

    def __init__(self, fmt, template, constants=(), labels: bool = False):
        from engine.export._encode import MESSAGE_FORMATS, Encoder
        self.fmt = MessageFormat(fmt)
        self.template = template
        self.constants = list(constants)
        self.labels = labels
        fields = template.fields
        self._c = Encoder(fields, RECORD_DTYPE, [tlv.field_key(f) for f in fields],
                          [str(tlv.field_key(f, labels)) for f in fields])
        self._code = MESSAGE_FORMATS[self.fmt.value]
        self._head = b""
        self._nsuffix = 0
        if self.fmt is MessageFormat.TLV:
            self._suffix = tlv.RecordEncoder((), self.constants).suffix
        elif self.fmt is MessageFormat.JSON:
            self._suffix = "".join(
                f",{json.dumps(str(tlv.field_key(p, labels)))}:{json.dumps(v)}"
                for p, v in self.constants).encode()
        else:
            import msgpack
            self._suffix = b"".join(msgpack.packb(tlv.field_key(p, True)) + msgpack.packb(v)
                                    for p, v in self.constants)
            self._nsuffix = len(self.constants)
            self._head = msgpack_head()

    def encode(self, records: np.ndarray) -> list[bytes]:
        """One byte string a flow (TLV: items and the end of record; no preamble)."""
        if self.fmt is MessageFormat.TLV:
            return self._c.tlv(records, self._suffix)
        if self.fmt is MessageFormat.JSON:
            return self._c.json(records, self._suffix)
        return self._c.msgpack(records, self._suffix, self._nsuffix)

    def messages(self, records: np.ndarray, max_bytes: int, max_flows: int = 0) -> list:
        """The records as whole payloads, [(payload, flows)], each at most ``max_bytes`` and
        ``max_flows`` flows (0: no limit)."""
        return self._c.messages(records, self._code, self._suffix, self._nsuffix, max_bytes,
                                max_flows, self._head)

    def overhead(self, n: int) -> int:
        """Bytes a payload of n flows adds to the sum of their encodings."""
        if self.fmt is MessageFormat.TLV:
            return 2
        if self.fmt is MessageFormat.JSON:
            return 2 + max(n - 1, 0)
        return 64

    def payload(self, recs: list[bytes]) -> bytes:
        if self.fmt is MessageFormat.TLV:
            return tlv.PREAMBLE + b"".join(recs)
        if self.fmt is MessageFormat.JSON:
            return b"[" + b",".join(recs) + b"]"
        return self._head + _array_header(len(recs)) + b"".join(recs)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def reference_msgpack(template, constants, records: np.ndarray) -> list[bytes]:
    """msgpack-python's encoding of the same flows (names as keys, constants last): the
    reference the C encoder is held to."""
    import msgpack
    pack = msgpack.Packer(use_bin_type=True).pack
    fields = template.fields
    keys = [tlv.field_key(f, True) for f in fields]
    consts = [(tlv.field_key(p, True), v) for p, v in constants]
    out = []
    for row in zip(*[field_values(f, records) for f in fields]):
        d = {k: v for k, v in zip(keys, row) if v is not None}
        d.update(consts)
        out.append(pack(d))
    return out
