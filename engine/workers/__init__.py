"""Multi-core capture (`-g CORES`): one pinned worker process per core, one probe towards ntopng.

Each worker is a fresh interpreter (multiprocessing "spawn": nothing of the parent's ZeroMQ
context, exporter sockets or threads is inherited) pinned to its core with sched_setaffinity. It
runs the ordinary single-process loop (`engine.probe.Probe`) on its own capture handle and its own
fast-path table, with one exporter, the hand-off, which pushes what the table finishes to the
parent. The parent runs the exporters, so ntopng sees one probe.

* plan.py: what every worker opens (files, sharded by flow hash; or one interface, fanned out);
* handoff.py: the worker -> parent messages;
* worker.py: the worker process;
* supervisor.py: the parent, which starts, supervises and restarts workers and sums their
  statistics.
"""
from engine.workers.plan import plan_workers
from engine.workers.supervisor import Supervisor

__all__ = ["Supervisor", "plan_workers"]
