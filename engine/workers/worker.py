"""A `-g` worker process: pinned to its core, it opens its own capture handle(s) and runs the
single-process loop (engine.probe.Probe) with the hand-off as its only exporter."""
from __future__ import annotations

import os
import pickle
import signal
import sys
from dataclasses import dataclass
from typing import Optional

from engine.errors import FlowprobeError
from engine.workers.handoff import ERROR, HELLO, SNDHWM, HandOff, ident


@dataclass
class WorkerSpec:
    index: int
    count: int
    core: int
    generation: int
    endpoint: str
    plan: object                    # engine.sources.base.SourcePlan
    config: object                  # engine.probe.ProbeConfig (its shard set)
    user: Optional[str] = None


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a worker process."""
    state = {"probe": None, "stop": False}

    def on_signal(*_):
        state["stop"] = True
        if state["probe"] is not None:
            state["probe"].stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import zmq
    from engine.probe import Probe
    from engine.sources.base import open_sources
    me = ident(spec.index, spec.generation)
    ctx = zmq.Context(1)
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    sock.setsockopt(zmq.SNDTIMEO, 5000)
    sock.setsockopt(zmq.LINGER, 30000)
    sock.connect(spec.endpoint)
    parent = os.getppid()
    status = 0
    try:
        try:
            os.sched_setaffinity(0, {spec.core})
        except OSError as e:
            raise FlowprobeError(f"cannot pin to core {spec.core}: {e.strerror}") from None
        sources = open_sources(spec.plan)
        if spec.user:
            from engine import service
            service.drop_privileges(spec.user)
        hand = HandOff(sock, me)
        probe = Probe(spec.config, [hand], log=lambda line: None)
        hand.probe = probe
        state["probe"] = probe
        sock.send_multipart([HELLO, me, pickle.dumps({"pid": os.getpid(), "core": spec.core})])
        if state["stop"]:
            probe.stop()
        probe.run(sources)
    except FlowprobeError as e:
        sock.send_multipart([ERROR, me, str(e).encode()])
        status = 2
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    except Exception as e:  # a bug: one line to the parent, which reports it
        sock.send_multipart([ERROR, me, f"internal error in worker {spec.index}: "
                                        f"{type(e).__name__}: {e}".encode()])
        status = 70
    finally:
        orphan = os.getppid() != parent
        sock.close(linger=0 if orphan else None)   # LINGER: queued messages are delivered first
        ctx.term()
    sys.exit(status)
