"""The `flowprobe` command line: every flag defined once (nProbe's names wherever nProbe has the
feature), parsed into engine.options. Values are checked here and a bad one is reported with its
flag, in one line; the library below never names a flag."""
from __future__ import annotations

import argparse
import os
import re
import socket
from typing import Optional

from engine import __version__
from engine.errors import FlowprobeError
from engine.options import (CaptureOptions, CollectorMode, CollectorOptions, Destination,
                            DumpFormat, EngineId, HealthOptions, KafkaOptions, NetflowOptions,
                            Options,
                            OutputOptions, ServiceOptions, TableOptions, MessageFormat, ZmqOptions)

ZMQ_MAX_ENDPOINTS = 8
NETFLOW_VERSIONS = (5, 9, 10)
MESSAGE_FORMATS = {"t": MessageFormat.TLV, "j": MessageFormat.JSON, "m": MessageFormat.MSGPACK}
KAFKA_BATCH_LEN = 100

EXAMPLES = """examples:
  flowprobe -i capture.pcap                              flows as a table on stdout
  flowprobe -i capture.pcap --dump-format json           one JSON object per flow
  flowprobe -i eth0 --zmq "tcp://*:5556"                 feed ntopng -i tcp://PROBE:5556
  flowprobe -i eth0 --zmq tcp://NTOPNG:5556 --zmq-probe-mode     ntopng -i "tcp://*:5556c"
  flowprobe -i eth0 -n 192.0.2.10:2055 -V 9              NetFlow v9 to a collector
  flowprobe -i none --collector-port 2055 --zmq "tcp://*:5556"   collector feeding ntopng
  flowprobe -i eth0 -g 0,1 --zmq "tcp://*:5556"          two pinned capture workers
  flowprobe /etc/flowprobe/flowprobe.conf                options from a file
"""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:          # one line, not usage + error
        raise FlowprobeError(f"{message} (see {self.prog} --help)", status=2)


# --- value parsers (argparse types) ------------------------------------------------------------
def int_range(lo: int, hi: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, not {text!r}")
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be between {lo} and {hi}, not {v}")
        return v
    return parse


def l7_packets(text: str) -> tuple[int, int]:
    """--l7-max-packets: `N` (every flow) or `TCP,OTHER` -> (TCP bound, other bound)."""
    parts = text.replace(" ", "").split(",")
    check = int_range(1, 65534, "the number of packets given to nDPI")
    if len(parts) == 1:
        n = check(parts[0])
        return n, n
    if len(parts) == 2:
        return check(parts[0]), check(parts[1])
    raise argparse.ArgumentTypeError(f"expected N or TCP,OTHER, not {text!r}")


def parse_cores(text: str) -> list[int]:
    """`0,1`, `0-3`, `1,3-5` -> a list of core numbers, in order."""
    cores: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                cores.extend(range(lo, hi + 1))
            else:
                cores.append(int(part))
        except ValueError:
            raise FlowprobeError(f"-g {text!r}: give cores as a list of numbers and ranges, "
                                 "e.g. 0,1 or 0-3 or 1,3-5", status=2) from None
    if not cores:
        raise FlowprobeError(f"-g {text!r}: no core given", status=2)
    allowed = os.sched_getaffinity(0)
    bad = [c for c in cores if c not in allowed]
    if bad:
        raise FlowprobeError(f"-g {text!r}: core {bad[0]} is not available to this process "
                             f"(it may use {_ranges(sorted(allowed))})", status=2)
    return cores


def _ranges(cores: list[int]) -> str:
    out, i = [], 0
    while i < len(cores):
        j = i
        while j + 1 < len(cores) and cores[j + 1] == cores[j] + 1:
            j += 1
        out.append(str(cores[i]) if i == j else f"{cores[i]}-{cores[j]}")
        i = j + 1
    return ",".join(out)


def parse_port(text: str) -> tuple[str, int]:
    """--collector-port '[udp://][ADDR:]PORT' -> (address, port)."""
    s = text.strip()
    if s.startswith("udp://"):
        s = s[6:]
    elif "://" in s:
        raise FlowprobeError(f"--collector-port {text}: only udp:// is supported", status=2)
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]:|([^:\[\]]+):)?(\d+)", s)
    if not m:
        raise FlowprobeError(f"--collector-port {text!r}: expected [udp://][ADDR:]PORT",
                             status=2)
    addr = m.group(1) or m.group(2) or "0.0.0.0"
    port = int(m.group(3))
    if not 0 < port < 65536:
        raise FlowprobeError(f"--collector-port {text!r}: port must be 1..65535", status=2)
    return addr, port


def parse_relay(text: str) -> Optional[str]:
    """--collector-port 'tcp://HOST:PORT' -> the ZeroMQ URL to connect to; None for UDP."""
    s = text.strip()
    if not s.startswith("tcp://"):
        return None
    m = re.fullmatch(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^:\[\]/*]+):(\d+)", s)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise FlowprobeError(f"--collector-port {text!r}: expected tcp://RELAY:PORT (a flowrelay "
                             "to connect to)", status=2)
    return s


def parse_destination(text: str) -> Destination:
    """-n HOST:PORT ([v6addr]:PORT for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise FlowprobeError(f"-n {text}: expected HOST:PORT (or none)", status=2)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        p = int(port)
    except ValueError:
        p = -1
    if not 1 <= p <= 65535:
        raise FlowprobeError(f"-n {text}: port must be 1..65535", status=2)
    try:
        info = socket.getaddrinfo(host, p, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise FlowprobeError(f"-n {text}: cannot resolve {host!r} ({e.strerror})",
                             status=2) from None
    fam, _, _, _, addr = info[0]
    return Destination(text, addr, fam)


def parse_engine(text: str) -> EngineId:
    """-E [TYPE:]ID."""
    parts = text.split(":")
    try:
        if len(parts) == 1:
            etype, eid = 0, int(parts[0], 0)
        elif len(parts) == 2:
            etype, eid = int(parts[0], 0), int(parts[1], 0)
        else:
            raise ValueError
    except ValueError:
        raise FlowprobeError(f"-E {text!r}: expected TYPE:ID", status=2) from None
    if not (0 <= etype <= 255 and 0 <= eid <= 0xFFFFFFFF):
        raise FlowprobeError(f"-E {text!r}: TYPE must be 0..255 and ID 0..4294967295", status=2)
    return EngineId(etype, eid)


def parse_metrics_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "0.0.0.0"
    try:
        p = int(port)
    except ValueError:
        raise FlowprobeError(f"--metrics {text}: expected ADDR:PORT, e.g. 127.0.0.1:9100",
                             status=2) from None
    if not 0 <= p <= 65535:
        raise FlowprobeError(f"--metrics {text}: port must be between 0 and 65535", status=2)
    return host, p


def curve_key(flag: str, text: str) -> bytes:
    from engine.ntopng import parse_curve_key
    try:
        import zmq
    except ImportError:
        raise FlowprobeError(f"{flag}: pyzmq is not installed", status=2) from None
    try:
        key = parse_curve_key(text)
    except ValueError as e:
        raise FlowprobeError(f"{flag}: {e}", status=2) from None
    if not zmq.has("curve"):
        raise FlowprobeError(f"{flag}: this libzmq has no CURVE support", status=2)
    return key


# --- the parser --------------------------------------------------------------------------------
def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="flowprobe", description="A network flow probe and collector that "
                       "feeds ntopng (ZeroMQ), NetFlow/IPFIX collectors and Python consumers.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"flowprobe {__version__}")

    g = p.add_argument_group("capture")
    g.add_argument("-i", "--interface", action="append", default=[], metavar="SRC",
                   help="capture file (pcap/pcapng), list file of captures, interface name, or "
                        "'none' (collector only); repeatable, processed in order")
    g.add_argument("-f", "--bpf-filter", metavar="EXPR", help="BPF filter, e.g. 'tcp port 443'")
    g.add_argument("-s", "--snaplen", type=int_range(64, 262144, "snaplen"), default=65535,
                   help="live capture snapshot length (default 65535)")
    g.add_argument("--no-promisc", action="store_true",
                   help="do not put interfaces in promiscuous mode")
    g.add_argument("--pfring", action="store_true",
                   help="capture on interfaces through PF_RING (same as -i pfring:IFACE)")
    # tcpdump's name and unit (nProbe has no such flag; its -B is something else)
    g.add_argument("--buffer-size", type=int_range(256, 1 << 30, "buffer size"),
                   default=64 * 1024, metavar="KIB", help="capture buffer of each interface "
                   "(each -g worker) in KiB: the kernel ring, or libpcap's buffer (default 65536)")
    g.add_argument("--ring-block-size", type=int_range(4, 1 << 20, "ring block size"),
                   default=1024, metavar="KIB", help="block of the capture ring in KiB, handed "
                   "over as one batch; the ring has buffer-size / this blocks (default 1024)")

    g = p.add_argument_group("flow table")
    g.add_argument("-w", "--hash-size", type=int_range(1, 1 << 30, "hash size"), default=262144,
                   metavar="FLOWS", help="flow table size in flows (default 262144)")
    g.add_argument("-t", "--lifetime-timeout", type=int_range(1, 1 << 31, "lifetime timeout"),
                   default=120, metavar="SEC",
                   help="export long flows every SEC seconds (default 120)")
    g.add_argument("-d", "--idle-timeout", type=int_range(1, 1 << 31, "idle timeout"),
                   default=30, metavar="SEC", help="export flows idle for SEC seconds (default 30)")

    g = p.add_argument_group("features")
    g.add_argument("--no-features", action="store_true",
                   help="do not compute behaviour features (SEQ_PLEN, SEQ_TDIFF, entropy)")
    g.add_argument("--disable-l7", action="store_true",
                   help="no application protocol detection (nDPI; L7_PROTO and the other L7 "
                        "fields are then 0 / Unknown)")
    g.add_argument("--l7-max-packets", type=l7_packets, metavar="N|TCP,OTHER",
                   help="packets of a flow nDPI may see before it gives up, for every flow or "
                        "for TCP and the others (default 80,24, as ndpiReader)")

    g = p.add_argument_group("output")
    g.add_argument("--dump-format", choices=[f.value for f in DumpFormat],
                   help="print finished flows to stdout in this format (the default, as text, "
                        "when no exporter is configured)")
    g.add_argument("-T", "--flow-templ", metavar="TEMPLATE",
                   help="exported fields, for ZeroMQ and NetFlow v9/IPFIX: %%NAME items and "
                        "@NTOPNG@ (default @NTOPNG@)")
    g.add_argument("-E", "--netflow-engine", "--observation-point", dest="engine",
                   metavar="[TYPE:]ID",
                   help="NetFlow v5 engine type and id; ID is also the v9 source id, the IPFIX "
                        "observation domain and the OBSERVATION_POINT_ID sent to ntopng")
    g.add_argument("-b", "--verbose", type=int_range(0, 2, "verbosity"), default=0,
                   metavar="LEVEL", help="statistics on stderr: 1 a line every second (packets/s, "
                        "flows, drops by reason), 2 also the -g workers' hand-off at the end "
                        "(default 0: the summary line only; -v is the log's detail)")

    g = p.add_argument_group("ZeroMQ export to ntopng")
    g.add_argument("--zmq", action="append", default=[], metavar="ENDPOINT",
                   help="export flows to ntopng: tcp://*:5556 binds (ntopng -i tcp://PROBE:5556), "
                        "with --zmq-probe-mode tcp://NTOPNG:5556 connects (ntopng -i "
                        "\"tcp://*:5556c\"); ipc:// works too; up to 8, flows spread by flow hash")
    g.add_argument("--zmq-probe-mode", action="store_true",
                   help="connect to an ntopng that binds (collector mode), e.g. behind NAT")
    g.add_argument("--zmq-format", default="t", choices=tuple(MESSAGE_FORMATS),
                   help="t: nDPI TLV (default, what community ntopng reads), j: JSON, m: msgpack")
    g.add_argument("--json-labels", action="store_true",
                   help="JSON keys are field names instead of numeric ids")
    g.add_argument("--zmq-disable-compression", action="store_true",
                   help="do not zlib-compress messages")
    g.add_argument("--zmq-encryption-key", metavar="KEY",
                   help="ntopng's CURVE public key (40 Z85 characters, or the 80 hex digits "
                        "ntopng's interface page shows)")
    g.add_argument("--source-id", type=str, default="0", metavar="N",
                   help="source id in the ZMQ header (0..4294967295), tells probes apart in ntopng")
    g.add_argument("--zmq-wait-subscriber", type=float, default=None, metavar="SEC",
                   help="when reading files: wait up to SEC for a subscriber before the first "
                        "message and at exit until queued messages are sent (default 10)")
    g.add_argument("--zmq-stats-interval", type=float, default=1.0, metavar="SEC",
                   help="send probe statistics (event messages) every SEC seconds; 0: never")
    g.add_argument("--zmq-sndhwm", type=int, default=1000, metavar="MSGS",
                   help="messages queued per endpoint before sends fail and count as drops")
    g.add_argument("--zmq-max-flows-per-message", type=int, default=0, metavar="N",
                   help="at most N flows per message (default and most for TLV and JSON: 255, "
                        "ntopng counts a message's flows in 8 bits; msgpack: as many as fit in "
                        "128 KiB)")

    g = p.add_argument_group("Kafka export")
    g.add_argument("--kafka", metavar="BROKERS;TOPIC[;STATS_TOPIC[;ACKS[;COMPRESSION]]]",
                   help="export flows to Apache Kafka, e.g. \"127.0.0.1:9092;flows\" or "
                        "\"k1:9092,k2:9092;flows;probe-stats;1;lz4\": brokers, flow topic, topic "
                        "for probe statistics (none), acks 0|1|-1, compression "
                        "none|gzip|snappy|lz4|zstd")
    g.add_argument("--kafka-conf", action="append", default=[], metavar="PROP=VALUE",
                   help="set a librdkafka property (repeatable), e.g. batch.num.messages=1000, "
                        "queue.buffering.max.messages=100000 (the bounded queue), "
                        "message.timeout.ms=300000, security.protocol=ssl")
    g.add_argument("--kafka-format", default="j", choices=tuple(MESSAGE_FORMATS),
                   help="j: JSON with nProbe's field names (default), t: nDPI TLV, m: msgpack")
    g.add_argument("--kafka-enable-batch", action="store_true",
                   help="several flows a message (a JSON array; one TLV payload; one msgpack "
                        "map) instead of one flow a message")
    g.add_argument("--kafka-batch-len", type=int, default=KAFKA_BATCH_LEN, metavar="N",
                   help=f"flows a message with --kafka-enable-batch (default {KAFKA_BATCH_LEN})")
    g.add_argument("--kafka-stats-interval", type=float, default=1.0, metavar="SEC",
                   help="send probe statistics to STATS_TOPIC every SEC seconds (default 1)")
    g.add_argument("--kafka-flush-timeout", type=float, default=10.0, metavar="SEC",
                   help="at exit, wait up to SEC for queued messages to be delivered (default 10); "
                        "what is left is counted as not delivered")

    g = p.add_argument_group("NetFlow/IPFIX export")
    g.add_argument("-n", "--collector", action="append", default=[], metavar="HOST:PORT",
                   help="NetFlow/IPFIX collector (repeatable, see -V); 'none': export no flows "
                        "(nProbe's spelling; used for benchmarks)")
    g.add_argument("-V", "--flow-version", type=int, default=10, metavar="5|9|10",
                   help="NetFlow v5, v9 or IPFIX (10, the default) for -n HOST:PORT")
    g.add_argument("-a", "--all-collectors", action="store_true",
                   help="send every datagram to every -n collector (default: round robin)")
    g.add_argument("-U", "--flow-templ-id", type=int, default=257, metavar="ID",
                   help="first template id (default 257; IPv6 flows use ID+1)")
    g.add_argument("--mtu", type=int, default=1500, metavar="BYTES",
                   help="largest export datagram, IP and UDP headers included (default 1500)")
    g.add_argument("--template-refresh", type=float, default=60.0, metavar="SEC",
                   help="resend v9/IPFIX templates every SEC seconds (default 60)")

    g = p.add_argument_group("flow collection (NetFlow v5/v9, IPFIX, sFlow)")
    g.add_argument("--collector-port", "-3", action="append", default=[],
                   metavar="[udp://][ADDR:]PORT",
                   help="collect NetFlow v5/v9, IPFIX and sFlow on this UDP port (repeatable); "
                        "tcp://RELAY:PORT connects to a flowrelay and collects what it forwards")
    g.add_argument("--collector-encryption-key", metavar="KEY",
                   help="the flowrelay's CURVE public key (40 Z85 characters or hex) for "
                        "tcp:// collector ports")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--disable-cache", action="store_true",
                      help="convert every collected record and export it at once (no cache)")
    mode.add_argument("--collector-passthrough", action="store_true",
                      help="convert collected records 1:1 with no flow state (fastest)")
    mode.add_argument("--enable-collection-cache", action="store_true",
                      help="merge collected records in the flow cache (the default)")
    g.add_argument("--disable-upscale", action="store_true",
                   help="do not multiply sampled counters by the sampling rate")
    g.add_argument("--dump-bad-packets", metavar="FILE.pcap",
                   help="write malformed collected datagrams to this pcap file")
    g.add_argument("--collector-idle-exit", type=float, default=0.0, metavar="SEC",
                   help="stop collecting after SEC seconds without datagrams (tests, replays)")

    g = p.add_argument_group("workers")
    g.add_argument("-g", "--cpu-affinity", metavar="CORES",
                   help="one capture worker process per core, pinned (e.g. 0,1 or 0-3 or 1,3-5)")

    g = p.add_argument_group("running as a service")
    g.add_argument("--syslog", action="store_true",
                   help="log to syslog/journald (/dev/log) instead of stderr")
    g.add_argument("--log-file", metavar="FILE",
                   help="log to FILE instead of stderr (SIGHUP reopens it, for logrotate)")
    g.add_argument("-v", "--verbose-log", action="count", default=0,
                   help="more log detail (-v: debug); warnings and the summary are always logged")
    g.add_argument("--pid-file", metavar="FILE", help="write the process id to FILE")
    g.add_argument("--user", metavar="USER",
                   help="drop privileges to USER once the captures are open (started as root)")
    g.add_argument("--dump-stats", metavar="FILE",
                   help="rewrite FILE with the statistics as JSON every few seconds (atomically)")
    g.add_argument("--dump-stats-interval", type=float, default=5.0, metavar="SEC",
                   help="seconds between --dump-stats rewrites (default 5)")
    g.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics over HTTP, e.g. 127.0.0.1:9100 or :9100 "
                        "(all addresses)")
    # "-3" is an option (nProbe's collector port): without this, argparse would also take any
    # negative number ("-d -1") for an option and say "expected one argument"
    p._has_negative_number_optionals.clear()
    return p


# the flag behind each setting a library error can name (engine.errors.FlowprobeError.setting)
SETTING_FLAGS = {"zmq.endpoints": "--zmq", "netflow.mtu": "--mtu", "template": "-T",
                 "kafka.conf": "--kafka-conf",
                 "collector.binds": "--collector-port", "collector.relays": "--collector-port"}


def flag_of(setting: str) -> str:
    return SETTING_FLAGS.get(setting, setting)


# --- namespace -> options ----------------------------------------------------------------------
def _is_offline(inputs: tuple[str, ...]) -> bool:
    """Every input is a file: no real-time constraint (the ZeroMQ exporter may wait)."""
    items = [i for i in inputs if i != "none"]
    return bool(items) and all(os.path.isfile(i) for i in items)


def _source_id(a) -> int:
    try:
        source_id = int(a.source_id, 0)
    except ValueError:
        source_id = -1
    if not 0 <= source_id <= 0xFFFFFFFF:
        raise FlowprobeError(f"--source-id {a.source_id!r}: expected 0..4294967295", status=2)
    return source_id


def _kafka(a) -> Optional[KafkaOptions]:
    if not a.kafka:
        return None
    from engine.export.kafka import parse_spec, producer_config
    try:
        spec = parse_spec(a.kafka)
    except ValueError as e:
        raise FlowprobeError(f"--kafka {a.kafka!r}: {e}", status=2) from None
    try:
        producer_config(spec, a.kafka_conf)
    except ValueError as e:
        raise FlowprobeError(f"--kafka-conf {e}", status=2) from None
    if not 1 <= a.kafka_batch_len <= 1_000_000:
        raise FlowprobeError("--kafka-batch-len must be between 1 and 1000000", status=2)
    for flag, v in (("--kafka-stats-interval", a.kafka_stats_interval),
                    ("--kafka-flush-timeout", a.kafka_flush_timeout)):
        if not v >= 0:
            raise FlowprobeError(f"{flag} must be >= 0", status=2)
    return KafkaOptions(spec=spec, conf=tuple(a.kafka_conf), fmt=MESSAGE_FORMATS[a.kafka_format],
                        batch_len=a.kafka_batch_len if a.kafka_enable_batch else 1,
                        stats_interval=a.kafka_stats_interval,
                        flush_timeout=a.kafka_flush_timeout,
                        offline=_is_offline(tuple(a.interface)))


def _zmq(a) -> Optional[ZmqOptions]:
    from engine.ntopng import MAX_FLOWS_PER_MESSAGE
    if not a.zmq:
        return None
    if len(a.zmq) > ZMQ_MAX_ENDPOINTS:
        raise FlowprobeError(f"--zmq given {len(a.zmq)} times; at most {ZMQ_MAX_ENDPOINTS} "
                             "endpoints", status=2)
    for url in a.zmq:
        if "://" not in url:
            raise FlowprobeError(f"--zmq {url!r}: expected tcp://HOST:PORT or ipc://PATH",
                                 status=2)
        if a.zmq_probe_mode and url.startswith("tcp://*"):
            raise FlowprobeError(f"--zmq {url}: --zmq-probe-mode connects to ntopng; give its "
                                 "address, e.g. tcp://192.168.1.10:5556", status=2)
    key = None
    if a.zmq_encryption_key is not None:
        key = curve_key("--zmq-encryption-key", a.zmq_encryption_key)
    if a.zmq_sndhwm < 1:
        raise FlowprobeError("--zmq-sndhwm must be at least 1", status=2)
    if a.zmq_wait_subscriber is not None and a.zmq_wait_subscriber < 0:
        raise FlowprobeError("--zmq-wait-subscriber must be >= 0", status=2)
    if a.zmq_stats_interval < 0:
        raise FlowprobeError("--zmq-stats-interval must be >= 0", status=2)
    fmt = MESSAGE_FORMATS[a.zmq_format]
    n = a.zmq_max_flows_per_message
    if n < 0 or (fmt is not MessageFormat.MSGPACK and n > MAX_FLOWS_PER_MESSAGE):
        raise FlowprobeError(f"--zmq-max-flows-per-message {n}: expected 1.."
                             f"{MAX_FLOWS_PER_MESSAGE} (ntopng counts the flows of a message in 8 "
                             "bits, so more would be miscounted)" if n > 0 else
                             f"--zmq-max-flows-per-message {n}: expected a positive number",
                             status=2)
    if fmt is MessageFormat.MSGPACK:
        try:
            import msgpack  # noqa: F401
        except ImportError:
            raise FlowprobeError("--zmq-format m needs msgpack: pip install msgpack",
                                 status=2) from None
    wait = a.zmq_wait_subscriber
    if wait is None:
        wait = 10.0 if _is_offline(tuple(a.interface)) else 0.0
    return ZmqOptions(endpoints=tuple(a.zmq), probe_mode=a.zmq_probe_mode, fmt=fmt,
                      labels=a.json_labels, compress=not a.zmq_disable_compression,
                      curve_server_key=key, wait_subscriber=wait,
                      stats_interval=a.zmq_stats_interval, sndhwm=a.zmq_sndhwm,
                      sndbuf=int(os.environ.get("FLOWPROBE_ZMQ_SNDBUF", "0") or 0),
                      max_flows_per_message=n, offline=_is_offline(tuple(a.interface)))


def _netflow(a, engine: Optional[EngineId]) -> Optional[NetflowOptions]:
    targets = [n for n in a.collector if n != "none"]
    if not targets:
        return None
    if a.flow_version not in NETFLOW_VERSIONS:
        raise FlowprobeError(f"-V {a.flow_version}: expected 5, 9 or 10 (IPFIX)", status=2)
    if not 1 <= a.flow_templ_id <= 65534 or (a.flow_version != 5 and a.flow_templ_id < 256):
        raise FlowprobeError(f"-U {a.flow_templ_id}: template ids are 256..65534", status=2)
    if not 576 <= a.mtu <= 65535:
        raise FlowprobeError(f"--mtu {a.mtu}: expected 576..65535", status=2)
    if a.template_refresh <= 0:
        raise FlowprobeError("--template-refresh must be > 0", status=2)
    dests = tuple(parse_destination(t) for t in targets)
    if a.flow_version == 5 and engine is not None and engine.engine_id > 255:
        raise FlowprobeError(f"-E: NetFlow v5 engine id must be 0..255, not {engine.engine_id}",
                             status=2)
    return NetflowOptions(destinations=dests, version=a.flow_version,
                          template_id=a.flow_templ_id, mtu=a.mtu,
                          all_destinations=a.all_collectors, template_refresh=a.template_refresh)


def _collector(a) -> Optional[CollectorOptions]:
    if not a.collector_port:
        return None
    if a.collector_idle_exit < 0:
        raise FlowprobeError("--collector-idle-exit must be >= 0", status=2)
    relays = tuple(u for u in (parse_relay(p) for p in a.collector_port) if u)
    binds = tuple(parse_port(p) for p in a.collector_port if not parse_relay(p))
    key = None
    if a.collector_encryption_key is not None:
        if not relays:
            raise FlowprobeError("--collector-encryption-key is for a tcp://RELAY:PORT collector "
                                 "port (flowrelay)", status=2)
        key = curve_key("--collector-encryption-key", a.collector_encryption_key)
    mode = (CollectorMode.NOCACHE if a.disable_cache else
            CollectorMode.PASSTHROUGH if a.collector_passthrough else CollectorMode.CACHE)
    return CollectorOptions(binds=binds, relays=relays, relay_key=key, mode=mode,
                            upscale=not a.disable_upscale, bad_packets=a.dump_bad_packets,
                            idle_exit=a.collector_idle_exit)


# options that only mean something with another one: (what it needs, test on the arguments,
# the options that need it, by dest)
NEEDS = (
    ("--zmq", lambda a: bool(a.zmq),
     ("zmq_probe_mode", "zmq_format", "json_labels", "zmq_disable_compression",
      "zmq_encryption_key", "zmq_wait_subscriber", "zmq_stats_interval", "zmq_sndhwm",
      "zmq_max_flows_per_message")),
    ("-n HOST:PORT", lambda a: any(n != "none" for n in a.collector),
     ("flow_version", "all_collectors", "flow_templ_id", "mtu", "template_refresh")),
    ("--kafka", lambda a: bool(a.kafka),
     ("kafka_conf", "kafka_format", "kafka_enable_batch", "kafka_batch_len",
      "kafka_stats_interval", "kafka_flush_timeout")),
    ("--collector-port", lambda a: bool(a.collector_port),
     ("collector_encryption_key", "disable_cache", "collector_passthrough",
      "enable_collection_cache", "disable_upscale", "dump_bad_packets", "collector_idle_exit")),
    ("--zmq, -n or --kafka", lambda a: bool(a.zmq or a.kafka) or any(n != "none" for n in
                                                                      a.collector),
     ("flow_templ", "engine")),
    ("--zmq or --kafka", lambda a: bool(a.zmq or a.kafka), ("source_id",)),
    ("--dump-stats", lambda a: bool(a.dump_stats), ("dump_stats_interval",)),
)


def ignored_options(a, parser: ArgumentParser) -> list[str]:
    """Options given whose exporter or feature is not asked for, which the run ignores: one
    warning line each (not an error: a configuration file may keep them for later)."""
    out = []
    flags = {act.dest: "/".join(act.option_strings) for act in parser._actions
             if act.option_strings}
    for needed, present, dests in NEEDS:
        if present(a):
            continue
        for dest in dests:
            if getattr(a, dest) != parser.get_default(dest):
                out.append(f"flowprobe: warning: {flags[dest]} has no effect without {needed}")
    return out


def options_from(a, parser: Optional[ArgumentParser] = None) -> Options:
    """Options from parsed arguments, every value checked (one FlowprobeError naming the flag)."""
    warnings = ignored_options(a, parser or build_parser())
    if not a.interface:
        raise FlowprobeError("no input: give -i FILE.pcap, -i IFACE, or -i none with a "
                             "collector port", status=2)
    engine = parse_engine(a.engine) if a.engine else None
    zmq = _zmq(a)
    if zmq is not None and engine is not None and engine.engine_id > 0xFFFF:
        raise FlowprobeError(f"-E {a.engine!r}: ntopng takes an observation point id of "
                             "0..65535", status=2)
    cores = tuple(parse_cores(a.cpu_affinity)) if a.cpu_affinity else ()
    collector = _collector(a)
    if cores and collector is not None:
        raise FlowprobeError("-g is for packet capture: run the collector without -g", status=2)
    if a.flow_templ is not None:
        _check_template(a.flow_templ)
    warnings += _l7_warnings(a)
    tcp_packets, other_packets = a.l7_max_packets or (80, 24)
    return Options(
        capture=CaptureOptions(inputs=tuple(a.interface), bpf=a.bpf_filter, snaplen=a.snaplen,
                               promisc=not a.no_promisc, pfring=a.pfring,
                               buffer_kib=a.buffer_size, block_kib=a.ring_block_size),
        table=TableOptions(max_flows=a.hash_size, idle_timeout=a.idle_timeout,
                           lifetime=a.lifetime_timeout, features=not a.no_features,
                           l7=not a.disable_l7 and _l7_available(), l7_tcp_packets=tcp_packets,
                           l7_other_packets=other_packets),
        output=OutputOptions(dump_format=DumpFormat(a.dump_format) if a.dump_format else None,
                             verbose=a.verbose, export_none="none" in a.collector),
        template=a.flow_templ, engine=engine, zmq=zmq, kafka=_kafka(a),
        source_id=_source_id(a), netflow=_netflow(a, engine),
        collector=collector,
        service=ServiceOptions(syslog=a.syslog, log_file=a.log_file, verbose_log=a.verbose_log,
                               pid_file=a.pid_file, user=a.user),
        health=HealthOptions(dump_stats=a.dump_stats, dump_stats_interval=a.dump_stats_interval,
                             metrics=parse_metrics_addr(a.metrics) if a.metrics else None),
        cores=cores, warnings=tuple(warnings))


def _l7_available() -> bool:
    from engine._fastpath import l7_info
    return l7_info()["available"]


def _l7_warnings(a) -> list[str]:
    """One line when L7 detection is asked for (--l7-max-packets, or L7 fields in -T) in a build
    without nDPI."""
    if a.disable_l7 or _l7_available():
        return []
    if a.l7_max_packets is None and "L7_" not in (a.flow_templ or "").upper():
        return []
    from engine._fastpath import L7_UNAVAILABLE
    return [f"flowprobe: warning: {L7_UNAVAILABLE}; the L7 fields are sent as unknown"]


def _check_template(text: str) -> None:
    from engine.export.templates import TemplateError, parse_template
    try:
        parse_template(text)
    except (TemplateError, ValueError) as e:
        raise FlowprobeError(f"-T: {e}", status=2) from None


_NEGATIVE = re.compile(r"-\d+(\.\d*)?$")


def _join_negative_values(argv: list[str], parser: ArgumentParser) -> list[str]:
    """'--zmq-wait-subscriber -3' as '--zmq-wait-subscriber=-3': a negative number after an
    option that takes a value is that value (else '-3', nProbe's collector port flag, would be
    taken for an option), so that the value's own check reports it."""
    out: list[str] = []
    actions = parser._option_string_actions
    for tok in argv:
        prev = out[-1] if out else ""
        action = actions.get(prev)
        if _NEGATIVE.match(tok) and action is not None and action.nargs is None \
                and not isinstance(action, argparse._StoreConstAction):
            out[-1] = f"{prev}={tok}" if prev.startswith("--") else prev + tok
        else:
            out.append(tok)
    return out


def parse(argv: list[str]) -> Options:
    """The command line (a leading configuration file expanded) as Options."""
    from engine import config as config_file
    parser = build_parser()
    if argv and not argv[0].startswith("-") and not os.path.exists(argv[0]):
        raise FlowprobeError(f"{argv[0]}: no such configuration file (options come as flags, "
                             "or from a file given as the first argument)", status=2)
    argv = config_file.expand_argv(argv, parser)
    return options_from(parser.parse_args(_join_negative_values(argv, parser)), parser)
