"""``flowprobe-listen``: see what a probe sends. Connects (or binds) like ntopng, decrypts,
decompresses, decodes TLV / JSON / msgpack and prints one JSON line per flow and per statistics
message:

    flowprobe-listen tcp://127.0.0.1:5556                 # pull mode: flowprobe --zmq tcp://*:5556
    flowprobe-listen "tcp://*:5556c"                      # collector mode: flowprobe --zmq-probe-mode
    flowprobe-listen --secret-key SECRET tcp://127.0.0.1:5556    # CURVE server
    flowprobe-listen --gen-keypair                        # a CURVE key pair
"""
from __future__ import annotations

import argparse
import json
import signal
import sys

from engine import __version__


def _gen_keypair() -> int:
    from engine.apps import print_keypair
    return print_keypair(["flowprobe --zmq-encryption-key {public}   (or the hex form)",
                          "flowprobe-listen --secret-key {secret} ...   /   ntopng "
                          "--zmq-encryption-key-priv {secret}"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flowprobe-listen", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("endpoints", nargs="*", metavar="ENDPOINT",
                    help="tcp://HOST:PORT to connect, tcp://*:PORTc or --bind to bind, ipc://PATH")
    ap.add_argument("--bind", action="store_true", help="bind every endpoint (collector mode)")
    ap.add_argument("--secret-key", metavar="Z85", help="CURVE server secret key (40 Z85 chars)")
    ap.add_argument("--gen-keypair", action="store_true", help="print a new CURVE key pair and exit")
    ap.add_argument("--ids", action="store_true", help="keep numeric field ids (default: names)")
    ap.add_argument("--count", type=int, default=0, metavar="N", help="exit after N flows")
    ap.add_argument("--timeout", type=float, default=None, metavar="SEC", help="exit after SEC")
    ap.add_argument("--idle", type=float, default=None, metavar="SEC",
                    help="exit after SEC without a message")
    ap.add_argument("--no-stats", action="store_true", help="do not print event messages")
    ap.add_argument("--version", action="version", version=f"flowprobe-listen {__version__}")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.gen_keypair:
        return _gen_keypair()
    if not args.endpoints:
        ap.error("give at least one ENDPOINT")
    from engine.ntopng import DecodeError
    from engine.subscribe import Subscriber, flows_of, names
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    nflows = 0
    out = sys.stdout
    try:
        with Subscriber(args.endpoints, bind=args.bind, secret_key=args.secret_key,
                        names=not args.ids) as sub:
            while True:
                try:
                    it = sub.messages(timeout=args.timeout, idle=args.idle)
                    for m in it:
                        base = {"topic": m.topic, "source_id": m.header.source_id,
                                "msg_id": m.header.msg_id, "format": m.format}
                        if m.topic.startswith("flow"):
                            for f in flows_of(m):
                                row = dict(base, flow=f if args.ids or m.format == "tlv"
                                           else names(f))
                                out.write(json.dumps(row, default=str) + "\n")
                                nflows += 1
                                if args.count and nflows >= args.count:
                                    out.flush()
                                    return 0
                        elif not args.no_stats:
                            out.write(json.dumps(dict(base, payload=m.payload), default=str) + "\n")
                        out.flush()
                    return 0
                except DecodeError as e:
                    print(f"flowprobe-listen: undecodable message: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:
        print(f"flowprobe-listen: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
