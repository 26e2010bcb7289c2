"""Flows and probe statistics to Apache Kafka, as nProbe's ``--kafka`` (through confluent-kafka,
that is librdkafka).

* ``--kafka "BROKERS;FLOW_TOPIC[;STATS_TOPIC[;ACKS[;COMPRESSION]]]"``, nProbe's fields in nProbe's
  order: BROKERS ``host[:port],...`` (the bootstrap list; librdkafka learns the cluster from
  them), the flow topic, nProbe's "options topic" (flowprobe has no NetFlow option records to pass
  on, so its probe statistics go there, JSON, every --kafka-stats-interval s; empty or ``none``:
  none), ACKS ``0`` (do not wait), ``1`` (the leader), ``-1``/``all`` (every in-sync replica;
  librdkafka's default), COMPRESSION ``none``, ``gzip``, ``snappy`` (nProbe's) and ``lz4``,
  ``zstd`` (librdkafka's others). ``--kafka-conf PROP=VALUE`` sets any librdkafka property
  (``topic.`` prefixed ones as nProbe does).
* Messages: one flow a message, as nProbe; with ``--kafka-enable-batch`` up to
  ``--kafka-batch-len`` flows a message (and at most message.max.bytes) from each delivery of the
  run loop (thousands of flows, at least one a second). Values: JSON (nProbe's field names, an object, or an array when batched), TLV (nDPI's
  serialization, numeric keys, the preamble and one record per flow) or msgpack (the ZeroMQ
  export's ``flowprobe.flows`` map). Every flow message carries the Kafka header ``format`` =
  ``json``, ``tlv`` or ``msgpack``.
* Key: the flow hash (8 bytes, big-endian; the same for every slice of one flow), so librdkafka's
  partitioner keeps a flow's slices in one partition. A batched message holds flows of one
  partition: partition = flow hash % the topic's partitions (read at start), key = that number.
* Delivery: every message's delivery report is counted in flows: delivered, failed (the broker
  refused it, or message.timeout.ms passed), dropped because librdkafka's queue was full
  (queue.buffering.max.messages / .kbytes bound it; reading files waits for room first, as the
  ZeroMQ export does) and still unsent when ``close()`` gave up after --kafka-flush-timeout. A
  broker that goes away and comes back costs only what the bounded queue could not hold.
"""
from __future__ import annotations

import json
import logging
import re
import socket
import sys
import time
from typing import Callable, Optional

import numpy as np

from engine.errors import FlowprobeError
from engine.export.base import Exporter
from engine.export.encoders import FlowEncoder
from engine.export.templates import parse_template
from engine.export.zmq import flow_hash
from engine.fields import DEFAULT_TEMPLATE
from engine.options import KafkaSpec, MessageFormat
from engine.stats import Snapshot

ACKS = {"0": "0", "1": "1", "-1": "all", "all": "all"}
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
DEFAULT_BATCH_LEN = 100
METADATA_WAIT_S = 5.0            # at start: how long to wait for the cluster's metadata
BATCH_MARGIN = 4096              # message.max.bytes minus this: room for Kafka's own framing
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


# --- the --kafka value -------------------------------------------------------------------------
def _check_broker(item: str) -> None:
    host, port = item, ""
    if item.startswith("["):                          # [v6addr]:port
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif item.count(":") == 1:
        host, port = item.split(":")
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"broker {item!r}: expected HOST or HOST:PORT")


def parse_spec(text: str) -> KafkaSpec:
    """nProbe's ``BROKERS;TOPIC[;OPTIONS_TOPIC[;ACKS[;COMPRESSION]]]``; ValueError with one line."""
    parts = [p.strip() for p in text.split(";")]
    if len(parts) < 2 or len(parts) > 5:
        raise ValueError("expected BROKERS;TOPIC[;STATS_TOPIC[;ACKS[;COMPRESSION]]], e.g. "
                         "\"127.0.0.1:9092;flows\"")
    parts += [""] * (5 - len(parts))
    brokers, topic, stats_topic, acks, compression = parts
    items = [b.strip() for b in brokers.split(",")]
    if not brokers or not all(items):
        raise ValueError("no broker: expected HOST[:PORT][,HOST[:PORT]...] before the first ';'")
    for b in items:
        _check_broker(b)
    for what, name in (("topic", topic), ("statistics topic", stats_topic)):
        if what == "statistics topic" and name in ("", "none"):
            continue
        if not _TOPIC.fullmatch(name) or name in (".", ".."):
            raise ValueError(f"{what} {name!r}: a Kafka topic name is 1-249 characters of "
                             "letters, digits, '.', '_' and '-'")
    if acks and acks not in ACKS:
        raise ValueError(f"acks {acks!r}: expected 0 (do not wait), 1 (leader) or -1 (all "
                         "replicas)")
    if compression and compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")
    return KafkaSpec(",".join(items), topic,
                     stats_topic if stats_topic not in ("", "none") else None,
                     ACKS[acks] if acks else None, compression or None)


def producer_config(spec: KafkaSpec, conf: list[str]) -> dict:
    """librdkafka's configuration: the --kafka fields, then every --kafka-conf PROP=VALUE."""
    out = {"bootstrap.servers": spec.brokers, "client.id": f"flowprobe@{socket.gethostname()}"}
    if spec.acks is not None:
        out["acks"] = spec.acks
    if spec.compression is not None:
        out["compression.codec"] = spec.compression
    for item in conf:
        if item.strip() == "list":
            raise ValueError("list: flowprobe cannot print librdkafka's properties; they are in "
                             "librdkafka's CONFIGURATION.md")
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"{item!r}: expected PROPERTY=VALUE, e.g. queue.buffering.max.ms=100")
        # nProbe sets "topic."-prefixed properties on the topic; confluent-kafka takes topic
        # properties beside the others (librdkafka's own topic.metadata.* are global ones)
        if name.startswith("topic.") and not name.startswith("topic.metadata."):
            name = name[len("topic."):]
        out[name] = value.strip()
    return out


# --- the exporter -------------------------------------------------------------------------------
class _LibrdkafkaLog(logging.Handler):
    """librdkafka's own log lines (delivered by poll()) as flowprobe warnings, each text once.
    Connection failures (facility FAIL) are left out: the error callback reports outages."""

    def __init__(self, log: Callable[[str], None], everything: bool):
        super().__init__(logging.DEBUG)
        self.out = log
        self.everything = everything
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        args = tuple(record.args or ()) + ("", "", "")    # confluent-kafka: (facility, name, text)
        fac, text = str(args[0]), str(args[2])
        if self.everything:
            self.out(f"flowprobe: --kafka: librdkafka {fac}: {text}")
        elif record.levelno >= logging.WARNING and fac != "FAIL" and text not in self.seen:
            self.seen.add(text)
            self.out(f"flowprobe: warning: --kafka: librdkafka: {text}")


class KafkaExporter(Exporter):
    def __init__(self, spec: KafkaSpec, *, fmt=MessageFormat.JSON, template=None,
                 conf: Optional[list[str]] = None, batch_len: int = 1,
                 stats_interval: float = 1.0, flush_timeout: float = 10.0,
                 offline: bool = False, source_id: int = 0, log=None):
        try:
            import confluent_kafka
        except ImportError:
            raise FlowprobeError("--kafka needs confluent-kafka: pip install confluent-kafka",
                                 status=2) from None
        self._kafka = confluent_kafka
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.spec = spec
        self.fmt = fmt = MessageFormat(fmt)
        self.batch_len = batch_len
        self.stats_interval = stats_interval
        self.flush_timeout = flush_timeout
        self.offline = offline
        template = template or parse_template(None, DEFAULT_TEMPLATE)
        constants = template.constants({"UNIQUE_SOURCE_ID": source_id})
        self.encoder = FlowEncoder(fmt, template, constants, labels=True)
        self.headers: list[tuple[str, str | bytes | None]] = [("format", fmt.value.encode())]
        self.stats_headers: list[tuple[str, str | bytes | None]] = [("format", b"json")]
        self.stats_key = f"{socket.gethostname()}/{source_id}".encode()
        try:
            config = producer_config(spec, conf or [])
        except ValueError as e:
            raise FlowprobeError(str(e), status=2, setting="kafka.conf") from None
        self._log_handler = _LibrdkafkaLog(self.log, "debug" in config)
        logger = logging.getLogger(f"flowprobe.kafka.{id(self)}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self._log_handler)
        config.update({"error_cb": self._on_error, "logger": logger})
        try:
            self.producer = confluent_kafka.Producer(config)
        except (confluent_kafka.KafkaException, ValueError, TypeError) as e:
            raise FlowprobeError(_reason(e), status=2, setting="kafka.conf") from None
        max_bytes = int(config.get("message.max.bytes", 1000000))
        self.partitions = self._partitions() if batch_len > 1 else 0
        self.max_bytes = max(max_bytes - BATCH_MARGIN, 1024)
        self._callbacks: dict[int, Callable] = {}
        self.produced = 0                # flows handed to librdkafka
        self.delivered = 0
        self.messages_delivered = 0
        self.failed = 0
        self.queue_full = 0
        self.unsent_at_exit = 0
        self.stats_delivered = 0
        self.stats_lost = 0
        self._outage = False
        self._waits = offline            # reading files: wait for room in a full queue
        self._warned: set = set()
        self._last_stats = 0.0
        self._last_snapshot: Optional[Snapshot] = None
        self.final: Optional[dict] = None

    # --- start ------------------------------------------------------------------------------
    def _partitions(self) -> int:
        """The flow topic's partition count, or 0 when the cluster does not answer in time."""
        try:
            md = self.producer.list_topics(self.spec.topic, timeout=METADATA_WAIT_S)
            t = md.topics.get(self.spec.topic)
            if t is not None and t.error is None and t.partitions:
                return len(t.partitions)
            why = str(t.error) if t is not None and t.error is not None else "no partitions"
        except self._kafka.KafkaException as e:
            why = _reason(e)
        self.log(f"flowprobe: warning: --kafka {self.spec.brokers}: no metadata for topic "
                 f"{self.spec.topic!r} within {METADATA_WAIT_S:g} s ({why}); batched messages go "
                 "to one partition")
        return 0

    # --- delivery reports (served by poll/flush, in this thread) ----------------------------
    def _callback(self, n: int) -> Callable:
        """The delivery report callback of a message of n flows (one per n, made once)."""
        known = self._callbacks.get(n)
        if known is not None:
            return known

        def report(err, _msg) -> None:
            if err is None:
                self.delivered += n
                self.messages_delivered += 1
                if self._outage:
                    self._outage_over()
            else:
                self._failed(err, n)
        self._callbacks[n] = report
        return report

    def _failed(self, err, n: int) -> None:
        K = self._kafka.KafkaError
        if err.code() in (K._PURGE_QUEUE, K._PURGE_INFLIGHT):
            self.unsent_at_exit += n
            return
        self.failed += n
        self._warn_once(("failed", err.code()),
                        f"flowprobe: warning: --kafka: flows not delivered to "
                        f"{self.spec.topic!r}: {err.str()}; counted in "
                        "kafka_drops_delivery_failed")

    def _on_stats_delivery(self, err, _msg) -> None:
        if err is None:
            self.stats_delivered += 1
        else:
            self.stats_lost += 1

    def _on_error(self, err) -> None:
        K = self._kafka.KafkaError
        if err.code() == K._ALL_BROKERS_DOWN:
            if not self._outage:
                self._outage = True
                self.log(f"flowprobe: warning: --kafka {self.spec.brokers}: {err.str()}; flows "
                         "wait in librdkafka's queue until a broker answers (what a full queue "
                         "cannot hold is dropped and counted)")
        elif err.code() not in (K._TRANSPORT, K._RESOLVE):    # outages: _ALL_BROKERS_DOWN
            self._warn_once(("error", err.code()),
                            f"flowprobe: {'error' if err.fatal() else 'warning'}: --kafka "
                            f"{self.spec.brokers}: {err.str()}")

    def _outage_over(self) -> None:
        self._outage = False
        self._waits = self.offline
        self.log(f"flowprobe: --kafka {self.spec.brokers}: delivering again")

    def _warn_once(self, what, line: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            self.log(line)

    # --- producing --------------------------------------------------------------------------
    def _produce(self, topic: str, value: bytes, key: bytes, n: int,
                 partition: int = -1) -> None:
        """Hands one message of n flows to librdkafka; a full queue waits (files) or drops,
        counted."""
        deadline = None
        while True:
            try:
                self.producer.produce(topic, value, key, partition, on_delivery=self._callback(n),
                                      headers=self.headers)
                self.produced += n
                return
            except BufferError:
                if self._waits:
                    deadline = deadline or time.monotonic() + self.flush_timeout
                    if self._wait_for_room(deadline):
                        continue
                self._warn_once("queue_full", "flowprobe: warning: --kafka: librdkafka's queue is "
                                "full (queue.buffering.max.messages/.kbytes); flows dropped are "
                                "counted in kafka_drops_queue_full")
                self.queue_full += n
            except self._kafka.KafkaException as e:          # e.g. a message too large
                self._failed(e.args[0], n)
            return

    def _wait_for_room(self, deadline: float) -> bool:
        """Reading files: serve delivery reports until the queue has room, up to the deadline."""
        if time.monotonic() < deadline:
            self.producer.poll(0.05)
            return True
        self._waits = False
        self.log(f"flowprobe: warning: --kafka {self.spec.brokers}: the queue stayed full for "
                 f"{self.flush_timeout:g} s; dropping (and counting) what it cannot hold")
        return False

    def export(self, records: np.ndarray) -> None:
        if len(records) == 0:
            return
        hashes = flow_hash(records)
        topic = self.spec.topic
        if self.batch_len == 1:
            keys = hashes.astype(">u8").view("V8").tolist()
            if self.fmt is MessageFormat.JSON:           # one object, as nProbe sends it
                values = self.encoder.encode(records)
            else:                                       # TLV preamble, msgpack envelope
                values = [p for p, _ in self.encoder.messages(records, self.max_bytes, 1)]
            for value, key in zip(values, keys):
                self._produce(topic, value, key, 1)
        else:
            # a message holds flows of one partition (a flow's slices stay in one)
            parts = hashes % np.uint64(max(self.partitions, 1))
            for part in np.unique(parts).tolist():
                group = records[parts == part]
                for payload, n in self.encoder.messages(group, self.max_bytes, self.batch_len):
                    self._produce(topic, payload, part.to_bytes(8, "big"), n,
                                  part if self.partitions else -1)
        self.producer.poll(0)

    def send_stats(self, snap: Snapshot) -> None:
        if self.spec.stats_topic is None:
            return
        body = json.dumps(snap.as_dict(), separators=(",", ":"), default=str).encode()
        try:
            self.producer.produce(self.spec.stats_topic, body, self.stats_key,
                                  on_delivery=self._on_stats_delivery, headers=self.stats_headers)
        except (BufferError, self._kafka.KafkaException):
            self.stats_lost += 1

    def tick(self, stats: Snapshot) -> None:
        self._last_snapshot = stats
        now = time.monotonic()
        if self.stats_interval > 0 and now - self._last_stats >= self.stats_interval:
            self._last_stats = now
            self.send_stats(stats)
        self.producer.poll(0)

    def close(self) -> None:
        if self.final is not None:
            return
        if self._last_snapshot is not None:
            snap = self._last_snapshot
            self.send_stats(snap.replace(exporters={**snap.exporters, **self.stats()}))
        left = self.producer.flush(self.flush_timeout)
        if left:
            self.producer.purge(in_queue=True, in_flight=True, blocking=False)
            self.producer.flush(0)                     # serves the purged messages' reports
            self.log(f"flowprobe: warning: --kafka {self.spec.brokers}: {self.unsent_at_exit} "
                     f"flows still queued after --kafka-flush-timeout {self.flush_timeout:g} s "
                     "were not delivered (counted in kafka_drops_unsent_at_exit)")
        self.final = self.stats()

    # --- statistics -------------------------------------------------------------------------
    def undelivered(self) -> str:
        st = self.stats()
        lost = (st["kafka_drops_queue_full"] + st["kafka_drops_delivery_failed"]
                + st["kafka_drops_unsent_at_exit"])
        if st["kafka_flows_delivered"] or not lost:
            return ""
        return (f"--kafka: none of the {lost} flows reached the brokers {self.spec.brokers} "
                "(see kafka_drops_* in the summary)")

    def stats(self) -> dict:
        if self.final is not None:
            return self.final
        queued = self.produced - self.delivered - self.failed - self.unsent_at_exit
        return {
            "kafka_flows_delivered": self.delivered,
            "kafka_messages_delivered": self.messages_delivered,
            "kafka_flows_queued": queued,
            "kafka_stats_delivered": self.stats_delivered,
            "kafka_drops_queue_full": self.queue_full,
            "kafka_drops_delivery_failed": self.failed,
            "kafka_drops_unsent_at_exit": self.unsent_at_exit,
            "kafka_drops_stats_messages": self.stats_lost,
            "kafka_status": f"kafka: {self.delivered} flows delivered, {queued} queued",
        }


def _reason(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.str() if hasattr(arg, "str") else str(arg)
