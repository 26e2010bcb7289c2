"""What every exporter is, and the message batcher the message-based exporters share.

The run loop (engine.probe.Probe, or the -g supervisor) calls ``export(records)`` with every
batch of finished flows (a RECORD_DTYPE array it owns: copy what must outlive the call),
``tick(snapshot)`` about once a second with the run's statistics (engine.stats.Snapshot),
``close()`` once at the end (deliver what is queued, bounded in time) and ``stats()`` for the
counters that reach `-b`, the summary line, the event message and Prometheus; every flow an
exporter could not deliver is counted there under a name with "drop" in it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


class Exporter:
    passive = False       # True: exports no flows (statistics only); the stdout dump still applies

    def export(self, records: np.ndarray) -> None:
        pass

    def tick(self, snap) -> None:
        pass

    def close(self) -> None:
        pass

    def stats(self) -> dict:
        return {}


class MessageBatcher:
    """Encoded flows gathered into messages: a message is sent (``send(flows)``, a list of the
    flows' encodings) before it would pass ``max_bytes`` with its framing (``overhead(n)``
    bytes for n flows) or hold more than ``max_flows`` flows (0: no limit), and on flush()."""

    def __init__(self, send: Callable[[list], None], max_bytes: int,
                 overhead: Callable[[int], int], max_flows: int = 0):
        self.send = send
        self.max_bytes = max_bytes
        self.overhead = overhead
        self.max_flows = max_flows
        self.pending: list[bytes] = []
        self.size = 0

    def add(self, encoded: list) -> None:
        for b in encoded:
            if self.pending and (self.size + len(b) + self.overhead(len(self.pending) + 1)
                                 > self.max_bytes or
                                 (self.max_flows and len(self.pending) >= self.max_flows)):
                self.flush()
            self.pending.append(b)
            self.size += len(b)

    def flush(self) -> None:
        if self.pending:
            flows, self.pending, self.size = self.pending, [], 0
            self.send(flows)
