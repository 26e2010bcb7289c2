"""The worker -> parent hand-off: a ZeroMQ PUSH socket per worker, connected to one PULL socket
the parent binds on an ipc:// path in a private temporary directory.

Messages are multipart `[kind, b"index:generation", payload]`:
  H hello (pickled {"pid", "core"}) once the capture is open;
  R finished flows, the raw bytes of a RECORD_DTYPE array (what the worker's run loop gathers:
    up to engine.probe.DELIVERY_FLOWS a message, at least one a second);
  S the worker's statistics (its pickled engine.stats.Snapshot) about once a second;
  D done: (last Snapshot, warnings) pickled, after the worker flushed its table and delivered
    every flow;
  E a one-line error (cannot open the capture...).
PUSH blocks at its high-water mark, so a slow parent slows the workers down instead of losing
flows. The parent views each R payload as a record array without copying it.
"""
from __future__ import annotations

import os
import pickle

import numpy as np

from engine.export.base import Exporter

HELLO, RECORDS, STATS, DONE, ERROR = b"H", b"R", b"S", b"D", b"E"
SNDHWM = 64                  # messages queued per worker before send blocks (backpressure)


def ident(index: int, generation: int) -> bytes:
    return f"{index}:{generation}".encode()


def parse_ident(frame: bytes) -> tuple[int, int]:
    index, generation = (int(x) for x in frame.split(b":"))
    return index, generation


class HandOff(Exporter):
    """The worker's only exporter: flows and statistics to the parent's PULL socket."""

    def __init__(self, sock, ident: bytes):
        self.sock = sock
        self.ident = ident
        self.probe = None
        self.parent = os.getppid()
        self.last = None                 # the last Snapshot sent

    def send(self, kind: bytes, payload) -> None:
        import zmq
        while True:
            try:
                self.sock.send_multipart([kind, self.ident, payload])
                return
            except zmq.Again:           # the parent is slow (backpressure) or gone
                if os.getppid() != self.parent:
                    raise SystemExit(3)

    def export(self, records: np.ndarray) -> None:
        # one message per delivery of the run loop (thousands of flows): a message per finished
        # batch (~50 flows) cost the parent CPU that the workers need when no core is spare
        if len(records):
            self.send(RECORDS, np.ascontiguousarray(records).data)

    def tick(self, snap) -> None:
        self.last = snap.replace(exporters={})
        self.send(STATS, pickle.dumps(self.last))
        if os.getppid() != self.parent and self.probe is not None:
            self.probe.stop()            # the parent is gone: stop, nobody reads our flows

    def close(self) -> None:
        warnings = list(self.probe.warnings) if self.probe is not None else []
        self.send(DONE, pickle.dumps((self.last, warnings)))
