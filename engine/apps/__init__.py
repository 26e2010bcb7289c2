"""Applications built on the library, apart from the `flowprobe` command: `flowrelay` (UDP flow
exports to ZeroMQ, through firewalls) and `flowprobe-listen` (what a probe sends, as JSON lines)."""
