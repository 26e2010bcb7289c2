"""What every exporter is.

The run loop (engine.probe.Probe, or the -g supervisor) calls ``export(records)`` with every
batch of finished flows (a RECORD_DTYPE array it owns: copy what must outlive the call),
``tick(snapshot)`` about once a second with the run's statistics (engine.stats.Snapshot),
``close()`` once at the end (deliver what is queued, bounded in time) and ``stats()`` for the
counters that reach `-b`, the summary line, the event message and Prometheus; every flow an
exporter could not deliver is counted there under a name with "drop" in it.
"""
from __future__ import annotations

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

    def undelivered(self) -> str:
        """'' or, when flows were given and none was delivered, one line saying so."""
        return ""
