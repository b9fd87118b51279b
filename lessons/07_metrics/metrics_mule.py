"""Lesson 07: one upstream's /metrics, served by a uWSGI mule (metrics.ini starts it).

Every worker of the upstream writes its numbers to files in
PROMETHEUS_MULTIPROC_DIR; this process adds them all up at each scrape.
It answers on a loopback-only port of its own, so Prometheus asks each
upstream directly (through nginx's round-robin it would get a different
upstream each time), and a scrape never waits behind an inference: the
workers may all be busy, the mule still answers at once.
"""

import os

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client import multiprocess

# EXERCISE 07.1: one registry that adds up every process of this upstream
# STUB: from prometheus_client import REGISTRY as registry  # this process's numbers only
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
# END EXERCISE

host, port = os.environ["METRICS_ADDRESS"].rsplit(":", 1)
server, thread = start_http_server(int(port), addr=host, registry=registry)
print(f"metrics mule (pid {os.getpid()}): http://{host}:{port}/metrics", flush=True)
thread.join()   # serve until uWSGI stops the mule
