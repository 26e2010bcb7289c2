"""What `-g` workers open: capture files (every worker reads them and keeps its shard of the flow
hash) or one live interface (every worker joins one PACKET_FANOUT group / PF_RING cluster)."""
from __future__ import annotations

import os
from dataclasses import replace

from engine.errors import FlowprobeError
from engine.sources.base import InputKind, SourcePlan, plan_sources


def plan_workers(capture) -> SourcePlan:
    """Classify the -i values for workers without keeping anything open (the workers open their
    own handles). Files are opened once here so that a bad file is one error, not one per worker.
    ``capture`` is engine.options.CaptureOptions."""
    plan = plan_sources(capture)
    kinds = plan.kinds()
    if InputKind.FILE in kinds and len(kinds) > 1:
        raise FlowprobeError("-g: give either capture files or interfaces, not both", status=2)
    if not plan.inputs:
        raise FlowprobeError("-g: no capture file or interface to read (the collector runs "
                             "without -g)", status=2)
    if InputKind.FILE not in kinds:
        if len(plan.inputs) > 1:
            raise FlowprobeError("-g: workers capture on one interface (give one -i IFACE)",
                                 status=2)
        return replace(plan, fanout_group=os.getpid() & 0xFFFF)
    if not plan.bpf:
        from engine.sources.pcapfile import FileSource
        for item in plan.inputs:
            FileSource(item.name).close()          # raises the one-line error for a bad file
    return plan


def sharded(plan: SourcePlan) -> bool:
    """Files: each worker keeps its shard of the flows (live workers get theirs from the kernel)."""
    return InputKind.FILE in plan.kinds()
