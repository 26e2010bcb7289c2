"""Health and metrics: `--dump-stats FILE` (JSON, rewritten atomically every few seconds) and
`--metrics ADDR:PORT` (Prometheus text format through prometheus-client).

Both are an exporter-like object: the probe calls tick(snapshot) about once a second from its loop;
tick only stores a reference to the snapshot (and, every --dump-stats-interval, writes the file).
Scrapes are answered by prometheus-client's server thread from the latest stored snapshot, so a
scrape never touches the capture loop or the flow table.
"""
from __future__ import annotations

import errno
import json
import os
import time

from engine.errors import FlowprobeError, os_error_message
from engine.export.base import Exporter
from engine.service import log
from engine.stats import Snapshot


def _metrics(snap: Snapshot):
    """Prometheus metric families from one snapshot."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily   # loaded already

    def counter(name, doc, value):
        m = CounterMetricFamily(f"flowprobe_{name}", doc)
        m.add_metric([], value)
        return m

    def gauge(name, doc, value):
        m = GaugeMetricFamily(f"flowprobe_{name}", doc)
        m.add_metric([], value)
        return m

    yield counter("packets", "packets seen by the fast path", snap.packets)
    yield counter("bytes", "IP-layer bytes seen by the fast path", snap.bytes)
    yield counter("decoded_packets", "packets decoded and accounted to a flow", snap.decoded)
    yield counter("fragments", "IP fragments", snap.fragments)
    yield counter("flows", "flows created", snap.flows_created)
    yield gauge("active_flows", "flows in the flow table", snap.active_flows)
    yield counter("exported_flows", "flow records delivered to the exporters",
                  snap.exported_flows)
    yield counter("collected_records", "flow records collected (NetFlow/IPFIX/sFlow)",
                  snap.collected_records)
    m = CounterMetricFamily("flowprobe_exported_flows_by_reason",
                            "exported flows by expiry reason", labels=["reason"])
    for reason, v in sorted(snap.exported_by_reason.items()):
        m.add_metric([str(reason)], v)
    yield m
    m = CounterMetricFamily("flowprobe_drops", "packets or messages not accounted, by stage "
                            "and reason", labels=["stage", "reason"])
    for reason, v in sorted(snap.drops.items()):
        m.add_metric(["decode", reason], v)
    m.add_metric(["kernel", "kernel"], snap.kernel_drops)
    for k, v in sorted(snap.exporters.items()):
        if "drop" in k and isinstance(v, (int, float)):
            m.add_metric(["export", k], v)
    yield m
    m = GaugeMetricFamily("flowprobe_exporter", "exporter counters", labels=["name"])
    for k, v in sorted(snap.exporters.items()):
        if "drop" not in k and isinstance(v, (int, float)) and not isinstance(v, bool):
            m.add_metric([k], v)
    yield m
    yield counter("feature_pool_exhausted", "flows whose features lacked a histogram",
                  snap.feature_pool_exhausted)
    yield counter("l7_packets", "packets given to nDPI", snap.l7_packets)
    yield counter("l7_pool_empty", "flows left undetected: no nDPI flow state was free",
                  snap.l7_pool_empty)
    yield gauge("packets_per_second", "packets/s over the last second", snap.pps)
    yield gauge("bits_per_second", "bits/s over the last second", snap.bps)
    yield gauge("uptime_seconds", "seconds since start", snap.uptime)
    workers = snap.workers       # -g: one series per worker
    for name, key, doc, family in (
            ("worker_packets", "packets", "packets accounted by each worker", CounterMetricFamily),
            ("worker_drops", "drops", "packets each worker could not account", CounterMetricFamily),
            ("worker_kernel_drops", "kernel_drops", "capture drops of each worker's handle",
             CounterMetricFamily),
            ("worker_active_flows", "active_flows", "flows in each worker's table",
             GaugeMetricFamily),
            ("worker_restarts", "restarts", "times each worker was restarted", CounterMetricFamily)):
        if workers:
            m = family(f"flowprobe_{name}", doc, labels=["worker", "core"])
            for w in workers:
                m.add_metric([str(w["index"]), str(w["core"])], w[key])
            yield m
    m = GaugeMetricFamily("flowprobe_info", "probe information",
                          labels=["version", "interface", "mode", "hostname"])
    m.add_metric([snap.version, snap.interface, snap.mode, snap.hostname], 1)
    yield m


class _Collector:
    def __init__(self, health: "HealthExporter"):
        self.health = health

    def collect(self):
        snap = self.health.latest       # one reference read: the probe replaces it, never edits
        if snap is None:
            return
        yield from _metrics(snap)


class HealthExporter(Exporter):
    passive = True            # exports no flows: the default stdout dump still applies

    def __init__(self, dump_path: str | None = None, dump_interval: float = 5.0,
                 metrics_addr: tuple[str, int] | None = None):
        self.dump_path = dump_path
        self.dump_interval = max(0.1, dump_interval)
        self.latest: Snapshot | None = None
        self._last_dump = 0.0
        self.dump_errors = 0
        self.server = None
        if dump_path:
            self._write(self._empty())          # fail now, not at the first tick
        if metrics_addr is not None:
            # only with --metrics (a plain run does not pay for it), and before --user drops
            # privileges: scrapes then find it loaded even if the package directory is unreadable
            from prometheus_client import CollectorRegistry, start_http_server
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Collector(self))
            host, port = metrics_addr
            try:
                started = start_http_server(port, addr=host, registry=registry)
            except OSError as e:
                raise FlowprobeError(os_error_message(f"serve metrics on {host}:{port}", e))
            self.server = started[0] if isinstance(started, tuple) else None
            self.port = self.server.server_address[1] if self.server else port

    @staticmethod
    def _empty() -> dict:
        return {"time": int(time.time()), "starting": True}

    def _write(self, snap) -> None:
        tmp = f"{self.dump_path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(snap if isinstance(snap, dict) else snap.as_dict(), f, default=str)
                f.write("\n")
            os.replace(tmp, self.dump_path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            # a full disk must not stop the capture; a path that cannot work is an error at start
            if self.latest is None and e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                raise FlowprobeError(os_error_message(f"write statistics file {self.dump_path}", e))
            self.dump_errors += 1           # keep capturing; counted in the statistics
            if self.dump_errors == 1:
                log.warning("flowprobe: warning: " + os_error_message(
                    f"write statistics file {self.dump_path}", e) + "; capture goes on, the "
                    "failed writes are counted (stats_file_write_errors)")

    # --- exporter interface -------------------------------------------------------------
    def tick(self, stats: Snapshot) -> None:
        self.latest = stats
        if self.dump_path:
            now = time.monotonic()
            if now - self._last_dump >= self.dump_interval:
                self._last_dump = now
                self._write(stats)

    def close(self) -> None:
        if self.dump_path:                    # the final statistics (none: it never ran)
            self._write(self.latest if self.latest is not None else
                        {"time": int(time.time()), "stopped": True})
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def stats(self) -> dict:
        return {"stats_file_write_errors": self.dump_errors} if self.dump_errors else {}
