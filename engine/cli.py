"""The `flowprobe` command: the options (engine.arguments) turned into sources, a run loop and
exporters, run until the input ends or a signal stops it."""
from __future__ import annotations

import os
import signal
import sys

from engine.arguments import build_parser, flag_of, parse  # noqa: F401  (build_parser: tests)
from engine.errors import FlowprobeError
from engine.options import Options


def probe_config(opts: Options):
    from engine.probe import ProbeConfig
    t = opts.table
    return ProbeConfig(max_flows=t.max_flows, idle_timeout=t.idle_timeout, lifetime=t.lifetime,
                       features=t.features, l7=t.l7, l7_tcp_packets=t.l7_tcp_packets,
                       l7_other_packets=t.l7_other_packets,
                       stats_interval=1.0 if opts.output.verbose >= 1 else 0.0,
                       interface_name=",".join(opts.capture.inputs), mode=opts.mode.value)


def collector_source(opts: Options):
    from engine.collect import CollectorSource
    from engine.collect.badpackets import BadPacketWriter
    c, t = opts.collector, opts.table
    bad = BadPacketWriter(c.bad_packets) if c.bad_packets else None
    try:
        return CollectorSource(c.binds, mode=c.mode, upscale=c.upscale,
                               idle_timeout=t.idle_timeout, lifetime=t.lifetime,
                               max_flows=t.max_flows, bad_dump=bad, idle_exit=c.idle_exit,
                               relays=c.relays, relay_key=c.relay_key)
    except FlowprobeError:
        if bad:
            bad.close()
        raise


def exporters(opts: Options) -> list:
    """The exporters the options ask for, in delivery order; the stdout dump when nothing else
    exports flows (and -n none was not given)."""
    from engine.export.templates import COLLECTOR_FIELDS, parse_template
    from engine.options import RunMode
    out: list = []
    collecting = opts.mode is RunMode.COLLECTOR
    if opts.zmq is not None:
        from engine.export.zmq import ZMQExporter
        z = opts.zmq
        template = parse_template(opts.template)
        if collecting and not opts.template:             # where each collected flow came from
            template = template.with_fields(*COLLECTOR_FIELDS)
        out.append(ZMQExporter(
            list(z.endpoints), fmt=z.fmt, template=template, compress=z.compress,
            probe_mode=z.probe_mode, curve_server_key=z.curve_server_key, source_id=opts.source_id,
            observation_point=opts.engine.engine_id if opts.engine else None, labels=z.labels,
            wait_subscriber=z.wait_subscriber, stats_interval=z.stats_interval, sndhwm=z.sndhwm,
            sndbuf=z.sndbuf, max_flows_per_message=z.max_flows_per_message,
            offline=z.offline,
            defaults={"interface": ",".join(opts.capture.inputs),
                      "idle_timeout": opts.table.idle_timeout, "lifetime": opts.table.lifetime,
                      "mode": opts.mode.value}))
    if opts.kafka is not None:
        from engine.export.kafka import KafkaExporter
        from engine.fields import DEFAULT_TEMPLATE
        k = opts.kafka
        template = parse_template(opts.template, DEFAULT_TEMPLATE)
        if collecting and not opts.template:
            template = template.with_fields(*COLLECTOR_FIELDS)
        out.append(KafkaExporter(k.spec, fmt=k.fmt, template=template, conf=list(k.conf),
                                 batch_len=k.batch_len, stats_interval=k.stats_interval,
                                 flush_timeout=k.flush_timeout, offline=k.offline,
                                 source_id=opts.source_id))
    if opts.netflow is not None:
        from engine.export.netflow import DEFAULT_FIELDS, NetFlowExporter
        n = opts.netflow
        engine = opts.engine
        out.append(NetFlowExporter(
            list(n.destinations), version=n.version,
            template=(parse_template(opts.template or DEFAULT_FIELDS) if n.version != 5
                      else None),
            template_id=n.template_id, engine_type=engine.engine_type if engine else 0,
            engine_id=engine.engine_id if engine else 0, mtu=n.mtu,
            all_destinations=n.all_destinations, template_refresh=n.template_refresh))
    h = opts.health
    if h.dump_stats or h.metrics:
        from engine.health import HealthExporter
        out.append(HealthExporter(h.dump_stats, h.dump_stats_interval, h.metrics))
    flows_exported = any(not e.passive for e in out)
    if opts.output.dump_format or (not flows_exported and not opts.output.export_none):
        from engine.export.dump import DumpExporter
        from engine.fields import DEFAULT_TEMPLATE
        names = DEFAULT_TEMPLATE + (COLLECTOR_FIELDS if collecting else ())
        out.append(DumpExporter(sys.stdout, opts.output.dump_format or "text", names))
    return out


def run(argv: list[str]) -> int:
    from engine import service
    opts = parse(argv)
    reopen_logs = service.setup_logging(opts.service)
    for line in opts.warnings:
        service.probe_log(line)
    # a stop asked for while the captures open (a service manager's SIGTERM, a test's SIGINT
    # once the ring exists) is kept and honoured when the run starts, not a KeyboardInterrupt
    stop = {"asked": False, "probe": None}

    def on_stop(*_):
        stop["asked"] = True
        if stop["probe"] is not None:
            stop["probe"].stop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_stop)
    config = probe_config(opts)
    if opts.cores:                        # workers open their own captures
        from engine.workers import plan_workers
        plan = plan_workers(opts.capture)
        sources = []
    else:
        from engine.sources.base import open_sources, plan_sources
        sources = open_sources(plan_sources(opts.capture))
        if opts.collector is not None:
            sources.append(collector_source(opts))
        if not sources:
            raise FlowprobeError("nothing to read: every -i is 'none' and no collector port is "
                                 "set", status=2)
    try:
        outputs = exporters(opts)
    except BaseException:
        for s in sources:
            s.close()
        raise
    if opts.cores:                        # a supervisor with Probe's interface
        from engine.workers import Supervisor
        probe = Supervisor(config, outputs, plan, list(opts.cores), log=service.probe_log,
                           user=opts.service.user, verbose=opts.output.verbose)
    else:
        from engine.probe import Probe
        probe = Probe(config, outputs, log=service.probe_log)
    stop["probe"] = probe
    if stop["asked"]:
        probe.stop()
    # SIGHUP reopens logs; pid file; privileges dropped once the captures are open
    service.install_sighup(reopen_logs)
    pid_file = opts.service.pid_file
    if pid_file:
        service.write_pid_file(pid_file)
    try:
        if opts.service.user:
            try:
                service.drop_privileges(opts.service.user)
            except BaseException:           # the run never starts: release what it holds
                for s in sources:
                    s.close()
                for e in outputs:
                    e.close()
                raise
        probe.run(sources)
        probe.log(probe.summary_line())
        probe.warnings.extend(probe.undelivered())
        for w in probe.warnings:
            print(f"flowprobe: error: {w}", file=sys.stderr)
    finally:
        if pid_file:
            service.remove_pid_file(pid_file)
    return 1 if probe.warnings else 0


def error_text(e: FlowprobeError) -> str:
    """The error line: a library error about a setting gets the flag's name in front."""
    if not e.setting:
        return str(e)
    flag = flag_of(e.setting)
    return f"{flag} {e.value}: {e}" if e.value is not None else f"{flag}: {e}"


def main(argv: list[str] | None = None) -> int:
    try:
        status = run(sys.argv[1:] if argv is None else argv)
    except FlowprobeError as e:
        print(f"flowprobe: error: {error_text(e)}", file=sys.stderr)
        status = e.status
    except BrokenPipeError:                # stdout closed early (| head): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 0
    except KeyboardInterrupt:
        status = 130
    except ImportError as e:
        from engine import service
        if not service.DROPPED_TO:
            return _internal_error(e)
        # after --user: a module that user cannot read
        print(f"flowprobe: error: cannot load {e.name or e} as user {service.DROPPED_TO}: "
              "install flowprobe (and its Python) where that user can read it, e.g. python3 -m "
              "venv /opt/flowprobe && /opt/flowprobe/bin/pip install .", file=sys.stderr)
        status = 1
    except MemoryError as e:
        print(f"flowprobe: error: out of memory ({e}); lower -w", file=sys.stderr)
        status = 1
    except Exception as e:                 # a bug: one line, the traceback on request
        status = _internal_error(e)
    return status


def _internal_error(e: Exception) -> int:
    if os.environ.get("FLOWPROBE_DEBUG"):
        raise e
    print(f"flowprobe: internal error: {type(e).__name__}: {e} "
          "(set FLOWPROBE_DEBUG=1 for a traceback)", file=sys.stderr)
    return 70


if __name__ == "__main__":
    sys.exit(main())
