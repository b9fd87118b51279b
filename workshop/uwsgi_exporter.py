"""uWSGI's stats server as Prometheus metrics: lesson 07's uWSGI exporter.

    python -m workshop.uwsgi_exporter --listen 127.0.0.1:9117 uwsgi1=run/stats1.sock uwsgi2=run/stats2.sock

Each NAME=SOCKET is one uWSGI server's stats socket (the `stats = ...` of
its .ini). At every scrape the exporter reads each socket's JSON document
once and answers, labelled upstream=NAME:

    uwsgi_up                            1 if the stats socket answered, else 0
    uwsgi_listen_queue                  connections waiting for a free worker
    uwsgi_listen_queue_errors_total     connections refused: the queue was full
    uwsgi_workers{status}               workers idle, busy, cheap (not spawned) ...
    uwsgi_worker_requests_total{worker}     requests the worker answered
    uwsgi_worker_respawns_total{worker}     times the master (re)started it
    uwsgi_worker_harakiri_total{worker}     requests killed by harakiri
    uwsgi_worker_exceptions_total{worker}   exceptions raised by the app
    uwsgi_worker_rss_bytes{worker}          its memory (with memory-report = true)
    uwsgi_worker_avg_response_seconds{worker}  uWSGI's running average

`worker` is uWSGI's worker id (1, 2, ...): it stays when a worker is replaced,
while its pid changes. Nothing is kept between scrapes: the numbers are
uWSGI's own counters, read when asked.

Why one of our own: Debian packages no uWSGI exporter, PyPI's
`uwsgi-exporter` was last released in 2019, and the maintained one
(timonwong/uwsgi_exporter) is a Go program that would need a Go toolchain
or a binary download. This one is small: prometheus_client's collector API
over the JSON that `uwsgi --connect-and-read STATS_SOCKET` prints too.
"""

from __future__ import annotations

import argparse
import signal
import sys

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .harness import uwsgi_stats

STATUSES = ("idle", "busy", "cheap", "pause", "sig")

# (metric suffix, JSON field, help, kind, scale)
PER_WORKER = [
    ("requests", "requests", "Requests the worker answered.", "counter", 1),
    ("respawns", "respawn_count", "Times the master started this worker.", "counter", 1),
    ("harakiri", "harakiri_count", "Requests killed by harakiri in this worker.", "counter", 1),
    ("exceptions", "exceptions", "Exceptions the app raised in this worker.", "counter", 1),
    ("rss_bytes", "rss", "Resident memory of the worker (needs memory-report = true).", "gauge", 1),
    ("avg_response_seconds", "avg_rt", "uWSGI's running average response time.", "gauge", 1e-6),
]


class UwsgiCollector(Collector):
    def __init__(self, sockets: dict[str, str]):
        self.sockets = sockets

    def collect(self):
        up = GaugeMetricFamily("uwsgi_up", "1 if the stats socket answered.", labels=["upstream"])
        queue = GaugeMetricFamily("uwsgi_listen_queue", "Connections waiting for a worker.",
                                  labels=["upstream"])
        queue_errors = CounterMetricFamily("uwsgi_listen_queue_errors", "Connections refused "
                                           "because the listen queue was full.", labels=["upstream"])
        workers = GaugeMetricFamily("uwsgi_workers", "Workers by status.", labels=["upstream", "status"])
        per_worker = {
            suffix: (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                f"uwsgi_worker_{suffix}", text, labels=["upstream", "worker"])
            for suffix, _, text, kind, _ in PER_WORKER}
        for name, path in self.sockets.items():
            try:
                stats = uwsgi_stats(path)
            except (OSError, ValueError):   # not running (yet), or stopped mid-answer
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            queue.add_metric([name], stats.get("listen_queue", 0))
            queue_errors.add_metric([name], stats.get("listen_queue_errors", 0))
            by_status = dict.fromkeys(STATUSES, 0)
            for w in stats.get("workers", []):
                by_status[w["status"]] = by_status.get(w["status"], 0) + 1
                for suffix, field, _, _, scale in PER_WORKER:
                    per_worker[suffix].add_metric([name, str(w["id"])], w.get(field, 0) * scale)
            for status, count in by_status.items():
                workers.add_metric([name, status], count)
        yield from [up, queue, queue_errors, workers, *per_worker.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9117", help="HOST:PORT to serve /metrics on")
    parser.add_argument("sockets", nargs="+", metavar="NAME=SOCKET", help="a uWSGI stats socket and its name")
    args = parser.parse_args(argv)
    sockets = dict(s.split("=", 1) for s in args.sockets)
    REGISTRY.register(UwsgiCollector(sockets))
    host, port = args.listen.rsplit(":", 1)
    _, thread = start_http_server(int(port), addr=host)
    print(f"uwsgi exporter: http://{host}:{port}/metrics for {', '.join(sockets)}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
