#!/usr/bin/env python3
"""Run container health checks on schedule for a podman without systemd.

Podman runs a container's HEALTHCHECK from a systemd timer.  Where systemd is
not running (containers, CI sandboxes) no check ever runs, every container
stays "starting" and Compose's `depends_on: condition: service_healthy` waits
forever.  This loop stands in for the timers: through the podman API socket it
asks podman to run each running container's health check once per interval
(first check one interval after the container started, as Docker does), and it
exits as soon as the podman service (PID given) is gone.

usage: healthcheck-ticker.py SOCKET SERVICE_PID [TICK_SECONDS]
Started and stopped by setup.sh / teardown.sh; standard library only.
"""
import http.client
import json
import os
import socket
import sys
import time
import urllib.parse
from datetime import datetime

API = "/v4.0.0/libpod"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def call(sock_path, path, timeout=60):
    conn = UnixHTTPConnection(sock_path, timeout=timeout)
    try:
        conn.request("GET", API + path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, (json.loads(body) if body else None)
    finally:
        conn.close()


def parse_time(value):
    """Seconds since the epoch of an RFC 3339 time with nanoseconds."""
    try:
        value = value.replace("Z", "+00:00")
        head, sep, tail = value.partition(".")
        if sep:  # trim the fraction to microseconds, keep the zone
            digits = "".join(ch for ch in tail if ch.isdigit())
            zone = tail[len(digits):]
            value = head + "." + digits[:6] + zone
        return datetime.fromisoformat(value).timestamp()
    except (ValueError, AttributeError):
        return time.time()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main():
    sock_path, service_pid = sys.argv[1], int(sys.argv[2])
    tick = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    due = {}  # container id -> (interval seconds, next run time)
    while alive(service_pid) and os.path.exists(sock_path):
        try:
            status, listing = call(sock_path, "/containers/json")
            running = [c["Id"] for c in (listing or []) if c.get("State") == "running"]
            for cid in list(due):
                if cid not in running:
                    del due[cid]
            now = time.time()
            for cid in running:
                if cid not in due:
                    status, info = call(sock_path, "/containers/%s/json" % cid)
                    if status != 200:
                        continue
                    hc = (info.get("Config") or {}).get("Healthcheck") or {}
                    test = hc.get("Test") or []
                    if not test or test[0] == "NONE":
                        due[cid] = (None, None)
                        continue
                    interval = (hc.get("Interval") or 30_000_000_000) / 1e9
                    started = parse_time((info.get("State") or {}).get("StartedAt", ""))
                    due[cid] = (interval, started + interval)
                interval, next_run = due[cid]
                if interval is None or now < next_run:
                    continue
                # Runs the check inside the container; podman records the
                # result, applies retries/start period and updates the status.
                call(sock_path, "/containers/%s/healthcheck" % urllib.parse.quote(cid),
                     timeout=max(60, interval + 60))
                due[cid] = (interval, time.time() + interval)
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(tick)


if __name__ == "__main__":
    main()
