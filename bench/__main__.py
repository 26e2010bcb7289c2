"""``python -m bench SUBCOMMAND [options]``.

Each sub-command is a module of this package with ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; register it in ``SUBCOMMANDS`` below (modules are imported only when
their sub-command runs, so one with missing optional dependencies does not break the others).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> module. A module either has HELP, add_arguments(parser) and run(args), or just
# main(argv) -> int, which then gets the arguments after the sub-command name.
SUBCOMMANDS: dict[str, str] = {
    "all": "bench.all",                      # collector + probe + export, charts, --save
    "collector": "bench.zmqcollector",       # nProbe 9.0's table: collector -> ZeroMQ subscriber
    "probe": "bench.probe",                  # packets/s, flows/s beside softflowd/nfstream/pmacctd
    "export": "bench.export",                # ZeroMQ export per format, with/without zlib
    "kafka": "bench.kafka",                  # Kafka export per format/compression, beside ZeroMQ
    "engine": "bench.engine",                # fast path, end to end, bytes per flow
    "collector-parse": "bench.collector",    # collector parse rates in process (no ZeroMQ)
    "workers": "bench.workers",              # -g with 1 and 2 workers, file and live
    "relay": "bench.relay",                  # flowrelay datagrams/s, UDP -> ZeroMQ (plain, CURVE)
    "live": "bench.live",                    # live capture on veth beside tcpdump, softflowd
    "soak": "bench.soak",                    # a long live run: RSS and descriptors, loss
    "vs-nfcapd": "bench.vs_nfcapd",          # collector records per CPU-second beside nfcapd
    "realistic": "bench.realistic",          # real-traffic capture: vs softflowd, CPU per format
}


def _engine_missing() -> str:
    """Why the package cannot be used from here, or ''. Run from a checkout, ``engine`` is the
    source tree, which has the compiled extensions only after the project's set-up."""
    try:
        import engine._fastpath  # noqa: F401
        import engine.export._encode  # noqa: F401
        import msgpack  # noqa: F401   the package's dependencies, which the venv has
        import zmq  # noqa: F401
    except ImportError as e:
        return (f"the flowprobe engine cannot be imported ({e}): set it up with "
                "tools/setup-debian.sh (or pip install -e .), then run .venv/bin/python -m bench")
    return ""


def main(argv: list[str] | None = None) -> int:
    missing = _engine_missing()
    if missing:
        print(f"bench: error: {missing}", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(prog="python -m bench", description="flowprobe benchmarks; "
                                 "each sub-command has its own --help")
    sub = ap.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    modules = {}
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        mod = importlib.import_module(SUBCOMMANDS[argv[0]])
        if not hasattr(mod, "run") and hasattr(mod, "main"):
            return mod.main(argv[1:])
    for name, modname in SUBCOMMANDS.items():
        # import only the chosen one eagerly; others get a placeholder parser for --help
        if argv and argv[0] == name:
            mod = importlib.import_module(modname)
            modules[name] = mod
            p = sub.add_parser(name, help=getattr(mod, "HELP", None),
                               description=getattr(mod, "HELP", None))
            mod.add_arguments(p)
        else:
            sub.add_parser(name, help=f"see python -m bench {name} --help")
    args = ap.parse_args(argv)
    try:
        return modules[args.command].run(args)
    except (RuntimeError, OSError) as e:      # a measured command failed: say which, once
        print(f"bench: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
