"""Applications built on the library, apart from the `flowprobe` command: `flowrelay` (UDP flow
exports to ZeroMQ, through firewalls) and `flowprobe-listen` (what a probe sends, as JSON lines)."""

import json
import shlex
import sys


def print_keypair(hints: list[str]) -> int:
    """A new CURVE key pair as JSON on stdout ({"public", "public_hex", "secret"}), and how to
    use it on stderr, each key quoted for a shell (Z85 has characters such as <>() in it)."""
    from engine.ntopng import generate_keypair
    pub, sec = generate_keypair()
    print(json.dumps({"public": pub, "public_hex": pub.encode().hex().upper(), "secret": sec}))
    for line in hints:
        print("# " + line.format(public=shlex.quote(pub), secret=shlex.quote(sec)),
              file=sys.stderr)
    return 0
