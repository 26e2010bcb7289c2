"""What a run is configured to do, as frozen dataclasses: one per part (capture, flow table, each
exporter, the collector, the service), built once from the command line by engine.arguments and
handed to the parts that need them. Nothing here parses text or names a flag."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple, Optional


class CollectorMode(enum.Enum):
    CACHE = "cache"                  # merge collected records in the flow cache (the default)
    NOCACHE = "nocache"              # --disable-cache: convert each record, export it at once
    PASSTHROUGH = "passthrough"      # --collector-passthrough: 1:1, no flow state


class MessageFormat(enum.Enum):
    """The flow formats of the message exporters (ZeroMQ, Kafka)."""
    TLV = "tlv"
    JSON = "json"
    MSGPACK = "msgpack"


class DumpFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"
    CSV = "csv"


class RunMode(enum.Enum):
    """ntopng's name for what the probe does (its `mode` statistic)."""
    PACKETS = "packet_collection"
    COLLECTOR = "flow_collection"


@dataclass(frozen=True)
class CaptureOptions:
    inputs: tuple[str, ...] = ()           # -i values in order (files, list files, interfaces)
    bpf: Optional[str] = None
    snaplen: int = 65535
    promisc: bool = True
    pfring: bool = False                   # interfaces through PF_RING
    buffer_kib: int = 64 * 1024            # each interface's capture buffer (the ring's)
    block_kib: int = 1024                  # the ring's block, handed over as one batch


@dataclass(frozen=True)
class TableOptions:
    max_flows: int = 262144
    idle_timeout: float = 30.0
    lifetime: float = 120.0
    features: bool = True
    l7: bool = True                        # nDPI detection (where the build has nDPI)
    l7_tcp_packets: int = 80               # packets nDPI may see of a TCP flow
    l7_other_packets: int = 24             # ... of any other flow


@dataclass(frozen=True)
class EngineId:
    """-E: NetFlow v5 engine type and id; the id is also the v9 source id, the IPFIX observation
    domain and the OBSERVATION_POINT_ID sent to ntopng."""
    engine_type: int = 0
    engine_id: int = 0


@dataclass(frozen=True)
class ZmqOptions:
    endpoints: tuple[str, ...]
    probe_mode: bool = False
    fmt: MessageFormat = MessageFormat.TLV
    labels: bool = False                   # JSON keys are names instead of ids
    compress: bool = True
    curve_server_key: Optional[bytes] = None
    wait_subscriber: Optional[float] = None   # None: 10 s when reading files, else 0
    stats_interval: float = 1.0
    sndhwm: int = 1000
    sndbuf: int = 0
    max_flows_per_message: int = 0         # 0: the most ntopng counts right (255 for TLV/JSON)
    offline: bool = False                  # reading files: a slow subscriber may be waited for


@dataclass(frozen=True)
class KafkaSpec:
    """nProbe's --kafka "BROKERS;TOPIC[;STATS_TOPIC[;ACKS[;COMPRESSION]]]"."""
    brokers: str
    topic: str
    stats_topic: Optional[str] = None
    acks: Optional[str] = None           # librdkafka's value ("0", "1", "all"); None: its default
    compression: Optional[str] = None


@dataclass(frozen=True)
class KafkaOptions:
    spec: KafkaSpec
    conf: tuple[str, ...] = ()           # librdkafka PROPERTY=VALUE settings
    fmt: MessageFormat = MessageFormat.JSON
    batch_len: int = 1                   # flows a message
    stats_interval: float = 1.0
    flush_timeout: float = 10.0
    offline: bool = False


class Destination(NamedTuple):
    text: str                              # as given, for messages
    addr: tuple                            # socket address
    family: int


@dataclass(frozen=True)
class NetflowOptions:
    destinations: tuple[Destination, ...]
    version: int = 10
    template_id: int = 257
    mtu: int = 1500
    all_destinations: bool = False
    template_refresh: float = 60.0


@dataclass(frozen=True)
class CollectorOptions:
    binds: tuple[tuple[str, int], ...] = ()     # UDP (address, port)
    relays: tuple[str, ...] = ()                # flowrelay tcp:// URLs to connect to
    relay_key: Optional[bytes] = None           # the relays' CURVE public key (Z85)
    mode: CollectorMode = CollectorMode.CACHE
    upscale: bool = True
    bad_packets: Optional[str] = None           # pcap file for malformed datagrams
    idle_exit: float = 0.0


@dataclass(frozen=True)
class OutputOptions:
    dump_format: Optional[DumpFormat] = None
    verbose: int = 0                            # -b: statistics every second on stderr
    export_none: bool = False                   # -n none


@dataclass(frozen=True)
class ServiceOptions:
    syslog: bool = False
    log_file: Optional[str] = None
    verbose_log: int = 0
    pid_file: Optional[str] = None
    user: Optional[str] = None


@dataclass(frozen=True)
class HealthOptions:
    dump_stats: Optional[str] = None
    dump_stats_interval: float = 5.0
    metrics: Optional[tuple[str, int]] = None


@dataclass(frozen=True)
class Options:
    capture: CaptureOptions = field(default_factory=CaptureOptions)
    table: TableOptions = field(default_factory=TableOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    template: Optional[str] = None              # -T text (None: each exporter's default)
    engine: Optional[EngineId] = None           # -E
    zmq: Optional[ZmqOptions] = None
    kafka: Optional[KafkaOptions] = None
    source_id: int = 0                          # --source-id: tells probes apart downstream
    netflow: Optional[NetflowOptions] = None
    collector: Optional[CollectorOptions] = None
    service: ServiceOptions = field(default_factory=ServiceOptions)
    health: HealthOptions = field(default_factory=HealthOptions)
    cores: tuple[int, ...] = ()                 # -g: one worker per core (empty: one process)
    warnings: tuple[str, ...] = ()              # about the options themselves (ignored ones)

    @property
    def mode(self) -> RunMode:
        return RunMode.COLLECTOR if self.collector is not None else RunMode.PACKETS
