"""The `flowprobe` command: nProbe's flag names wherever nProbe has the feature."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from engine import __version__
from engine.errors import FlowprobeError

# Modules that add flags and exporters/sources: each has add_arguments(parser) and
# from_args(args, config) -> list of exporters (or sources, for record sources).
EXPORTER_MODULES: tuple[str, ...] = ("engine.export.zmq", "engine.export.netflow", "engine.health")
SOURCE_MODULES: tuple[str, ...] = ("engine.collect",)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:          # one line, not usage + error
        raise FlowprobeError(f"{message} (see flowprobe --help)", status=2)


def _int_range(lo: int, hi: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, not {text!r}")
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be between {lo} and {hi}, not {v}")
        return v
    return parse


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="flowprobe", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--interface", action="append", default=[], metavar="SRC",
                   help="capture file (pcap/pcapng), list file of captures, interface name, or "
                        "'none' (collector only); repeatable, processed in order")
    p.add_argument("-f", "--bpf-filter", metavar="EXPR", help="BPF filter, e.g. 'tcp port 443'")
    p.add_argument("-s", "--snaplen", type=_int_range(64, 262144, "snaplen"), default=65535,
                   help="live capture snapshot length (default 65535)")
    p.add_argument("--no-promisc", action="store_true", help="do not put interfaces in "
                                                              "promiscuous mode")
    # tcpdump's name and unit (nProbe has no such flag; its -B is something else)
    p.add_argument("--buffer-size", type=_int_range(256, 1 << 30, "buffer size"),
                   default=64 * 1024, metavar="KIB", help="capture buffer of each interface "
                   "(each -g worker) in KiB: the kernel ring, or libpcap's buffer (default 65536)")
    p.add_argument("--ring-block-size", type=_int_range(4, 1 << 20, "ring block size"),
                   default=1024, metavar="KIB", help="block of the capture ring in KiB, handed "
                   "over as one batch; the ring has buffer-size / this blocks (default 1024)")
    p.add_argument("-w", "--hash-size", type=_int_range(1, 1 << 30, "hash size"), default=262144,
                   metavar="FLOWS", help="flow table size in flows (default 262144)")
    p.add_argument("-t", "--lifetime-timeout", type=_int_range(1, 1 << 31, "lifetime timeout"),
                   default=120, metavar="SEC", help="export long flows every SEC seconds "
                                                    "(default 120)")
    p.add_argument("-d", "--idle-timeout", type=_int_range(1, 1 << 31, "idle timeout"),
                   default=30, metavar="SEC", help="export flows idle for SEC seconds (default 30)")
    p.add_argument("--no-features", action="store_true",
                   help="do not compute behaviour features (SEQ_PLEN, SEQ_TDIFF, entropy)")
    p.add_argument("-n", "--collector", action="append", default=[], metavar="HOST:PORT",
                   help="NetFlow/IPFIX collector (repeatable, see -V); 'none': export no flows "
                        "(nProbe's spelling; used for benchmarks)")
    p.add_argument("--dump-format", choices=("text", "json", "csv"),
                   help="print finished flows to stdout in this format (the default, as text, "
                        "when no exporter is configured)")
    p.add_argument("-b", "--verbose", type=_int_range(0, 2, "verbosity"), default=0,
                   metavar="LEVEL", help="1: print statistics every second to stderr")
    p.add_argument("--version", action="version", version=f"flowprobe {__version__}")
    # multi-core capture (engine/workers.py) and PF_RING (engine/sources/pfring.py)
    p.add_argument("-g", "--cpu-affinity", metavar="CORES",
                   help="one capture worker process per core, pinned (e.g. 0,1 or 0-3 or 1,3-5)")
    p.add_argument("--pfring", action="store_true",
                   help="capture on interfaces through PF_RING (same as -i pfring:IFACE)")
    importlib.import_module("engine.service").add_arguments(p)     # service flags
    for name in EXPORTER_MODULES + SOURCE_MODULES:
        importlib.import_module(name).add_arguments(p)
    return p


def _packet_sources(inputs: list[str], args) -> list:
    from engine.sources import live_options, open_live
    from engine.sources.live import PcapySource
    from engine.sources.pcapfile import FileSource, expand_inputs
    sources = []
    for item in expand_inputs(inputs):
        if item == "none":
            continue
        if os.path.exists(item):
            if args.bpf_filter:       # libpcap applies the filter; our reader has no BPF engine
                sources.append(PcapySource(item, live=False, bpf=args.bpf_filter))
            else:
                sources.append(FileSource(item))
        else:
            sources.append(open_live(item, **live_options(args)))
    return sources


def run(argv: list[str]) -> int:
    from engine.export.dump import DumpExporter
    from engine.export.templates import COLLECTOR_FIELDS
    from engine.fields import DEFAULT_TEMPLATE
    from engine.probe import Probe, ProbeConfig

    from engine import config as config_file, service
    parser = build_parser()
    args = parser.parse_args(config_file.expand_argv(argv, parser))
    reopen_logs = service.setup_logging(args)
    if not args.interface:
        raise FlowprobeError("no input: give -i FILE.pcap, -i IFACE, or -i none with a "
                             "collector port", status=2)
    config = ProbeConfig(max_flows=args.hash_size, idle_timeout=args.idle_timeout,
                         lifetime=args.lifetime_timeout, features=not args.no_features,
                         stats_interval=1.0 if args.verbose >= 1 else 0.0,
                         interface_name=",".join(args.interface))
    if args.cpu_affinity:                     # workers open their own captures
        from engine import workers
        cores = workers.parse_cores(args.cpu_affinity)
        sources = [workers.plan_inputs(args.interface, args)]
        if getattr(args, "collector_port", None):
            raise FlowprobeError("-g is for packet capture: run the collector without -g",
                                 status=2)
    else:
        sources = _packet_sources(args.interface, args)
    for name in SOURCE_MODULES if not args.cpu_affinity else ():
        sources += importlib.import_module(name).from_args(args, config)
    if not sources:
        raise FlowprobeError("nothing to read: every -i is 'none' and no collector port is set",
                             status=2)
    exporters = []
    for name in EXPORTER_MODULES:
        exporters += importlib.import_module(name).from_args(args, config)
    flow_exporters = [e for e in exporters if not getattr(e, "passive", False)]
    if args.dump_format or (not flow_exporters and not args.collector):
        names = DEFAULT_TEMPLATE
        if config.mode == "flow_collection":      # where each collected flow came from
            names += COLLECTOR_FIELDS
        exporters.append(DumpExporter(sys.stdout, args.dump_format or "text", names))

    if args.cpu_affinity:                     # a supervisor with Probe's interface
        probe = workers.Supervisor(config, exporters, sources[0], cores, log=service.probe_log,
                                   user=args.user, verbose=args.verbose)
    else:
        probe = Probe(config, exporters, log=service.probe_log)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: probe.stop())
    # SIGHUP reopens logs; pid file; privileges dropped once the captures are open
    service.install_sighup(reopen_logs)
    if args.pid_file:
        service.write_pid_file(args.pid_file)
    try:
        if args.user:
            service.drop_privileges(args.user)
        probe.run(sources)
        probe.log(probe.summary_line())
        for w in probe.warnings:
            print(f"flowprobe: error: {w}", file=sys.stderr)
    finally:
        if args.pid_file:
            service.remove_pid_file(args.pid_file)
    return 1 if probe.warnings else 0


def main(argv: list[str] | None = None) -> int:
    try:
        status = run(sys.argv[1:] if argv is None else argv)
    except FlowprobeError as e:
        print(f"flowprobe: error: {e}", file=sys.stderr)
        status = e.status
    except BrokenPipeError:                # stdout closed early (| head): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 0
    except KeyboardInterrupt:
        status = 130
    except MemoryError as e:
        print(f"flowprobe: error: out of memory ({e}); lower -w", file=sys.stderr)
        status = 1
    except Exception as e:                 # a bug: one line, the traceback on request
        if os.environ.get("FLOWPROBE_DEBUG"):
            raise
        print(f"flowprobe: internal error: {type(e).__name__}: {e} "
              "(set FLOWPROBE_DEBUG=1 for a traceback)", file=sys.stderr)
        status = 70
    return status


if __name__ == "__main__":
    sys.exit(main())
