"""Flow records to per-flow byte strings in the message formats (TLV, JSON, msgpack), and a list
of those to one payload: what the ZeroMQ and Kafka exporters send.

TLV and JSON go through the C encoder (engine/export/_encode.pyx), whose references are
engine/export/tlv.py and json.dumps (the tests hold them byte for byte); msgpack follows the schema
in docs/zmq-msgpack.md.
"""
from __future__ import annotations

import json
import struct

import numpy as np

from engine.export import tlv
from engine.fields import RECORD_DTYPE, field_values
from engine.options import MessageFormat

MSGPACK_SCHEMA = "flowprobe.flows"
MSGPACK_SCHEMA_VERSION = 1


class FlowEncoder:
    """Records -> list of per-flow byte strings, and a list of those -> one payload."""

    def __init__(self, fmt, template, constants=(), labels: bool = False):
        self.fmt = MessageFormat(fmt)
        self.template = template
        self.constants = list(constants)
        self.labels = labels
        if self.fmt is MessageFormat.MSGPACK:
            import msgpack
            self._packer = msgpack.Packer(use_bin_type=True)
            return
        from engine.export._encode import Encoder
        fields = template.fields
        self._c = Encoder(fields, RECORD_DTYPE, [tlv.field_key(f) for f in fields],
                          [str(tlv.field_key(f, labels)) for f in fields])
        if self.fmt is MessageFormat.TLV:
            self._suffix = tlv.RecordEncoder((), self.constants).suffix
        else:
            self._suffix = "".join(
                f",{json.dumps(str(tlv.field_key(p, labels)))}:{json.dumps(v)}"
                for p, v in self.constants).encode()

    def encode(self, records: np.ndarray) -> list[bytes]:
        if self.fmt is MessageFormat.TLV:
            return self._c.tlv(records, self._suffix)
        if self.fmt is MessageFormat.JSON:
            return self._c.json(records, self._suffix)
        fields = self.template.fields
        keys = [tlv.field_key(f, True) for f in fields]
        consts = [(tlv.field_key(p, True), v) for p, v in self.constants]
        cols = [field_values(f, records) for f in fields]
        pack = self._packer.pack
        out = []
        for row in zip(*cols):
            d = {k: v for k, v in zip(keys, row) if v is not None}
            for k, v in consts:
                d[k] = v
            out.append(pack(d))
        return out

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
        import msgpack
        n = len(recs)
        if n < 16:
            arr = bytes((0x90 | n,))
        elif n < 65536:
            arr = b"\xdc" + struct.pack(">H", n)
        else:
            arr = b"\xdd" + struct.pack(">I", n)
        head = msgpack.packb({"schema": MSGPACK_SCHEMA, "version": MSGPACK_SCHEMA_VERSION})
        # a 3-entry map: schema, version, flows
        return b"\x83" + head[1:] + msgpack.packb("flows") + arr + b"".join(recs)
