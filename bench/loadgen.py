"""Load with wrk: POST the same body over and over from C connections for D seconds.

wrk is a closed-loop generator: each connection sends its next request as
soon as the previous answer arrived, so C is the number of requests in
flight. The Lua script below posts a file's bytes and, at the end, prints
one JSON line with wrk's own latency percentiles and error counters.

uWSGI's `http-socket` answers HTTP/1.1 but closes the connection after each
response without saying so; wrk would count every such close as a read
error. For that server the script sends HTTP/1.0 requests instead (`http10`),
so the close is expected and wrk reconnects cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

MARK = "BENCHJSON "

LUA = r"""
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local body = f:read("*a")
f:close()
local ctype = os.getenv("BENCH_CTYPE") or "application/octet-stream"
local http10 = os.getenv("BENCH_HTTP10") == "1"
local req
local threads = {}

-- One wrk thread per connection, so the per-thread answer count is a
-- per-connection count: a connection that got no answer at all (a server
-- that serves some clients and leaves others waiting) shows up as a 0.
setup = function(thread)
  table.insert(threads, thread)
end

response = function(status, headers, body)
  answered = answered + 1
end

init = function(args)
  answered = 0
  if http10 then
    req = "POST " .. wrk.path .. " HTTP/1.0\r\nHost: " .. wrk.host .. ":" .. wrk.port ..
          "\r\nContent-Type: " .. ctype .. "\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body
  else
    req = wrk.format("POST", nil, {["Content-Type"] = ctype}, body)
  end
end

request = function()
  return req
end

done = function(summary, latency, requests)
  local e = summary.errors
  local p = {}
  for _, q in ipairs({50, 75, 90, 95, 99, 99.9}) do
    p[#p + 1] = string.format('"%s":%d', tostring(q), latency:percentile(q))
  end
  local per = {}
  for i, t in ipairs(threads) do
    per[#per + 1] = tostring(t:get("answered"))
  end
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,%s},"per_connection":[%s]}\n',
    os.getenv("BENCH_MARK"), summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev, table.concat(p, ","),
    table.concat(per, ",")))
end
"""


class LoadError(RuntimeError):
    pass


def available() -> bool:
    return shutil.which("wrk") is not None


def run(url: str, body: bytes, seconds: float, connections: int, content_type: str,
        http10: bool = False, timeout_s: float = 30.0, workdir: Path | None = None) -> dict:
    """Run wrk against url; return requests/s, latency percentiles (ms) and failures."""
    if not available():
        raise LoadError("wrk is not installed: apt-get install wrk")
    workdir = Path(workdir or tempfile.gettempdir())
    script = workdir / "bench-post.lua"
    script.write_text(LUA)
    body_file = workdir / "bench-body.bin"
    body_file.write_bytes(body)
    connections = max(1, connections)
    threads = connections  # one connection per wrk thread: answers counted per connection
    seconds = max(1, round(seconds))  # wrk takes whole seconds
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
           f"--timeout={int(timeout_s)}s", "--latency", "-s", str(script), url]
    env = dict(os.environ, BENCH_BODY=str(body_file), BENCH_CTYPE=content_type,
               BENCH_HTTP10="1" if http10 else "0", BENCH_MARK=MARK)
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                             timeout=seconds + timeout_s + 30)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish: {' '.join(cmd)}") from exc
    line = next((l for l in out.stdout.splitlines() if l.startswith(MARK)), None)
    if line is None:
        raise LoadError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    raw = json.loads(line[len(MARK):])
    duration = raw["duration_us"] / 1e6
    errors = raw["errors"]
    lat = raw["latency_us"]
    failed = errors["status"] + errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    return {
        "tool": f"wrk -t{threads} -c{connections} -d{seconds}s --timeout {int(timeout_s)}s"
                + (" (HTTP/1.0 requests)" if http10 else ""),
        "connections": connections,
        "duration_s": round(duration, 2),
        "requests": raw["requests"],
        "rps": round(raw["requests"] / duration, 2) if duration else 0.0,
        "latency_ms": {
            "p50": _ms(lat["50"]), "p75": _ms(lat["75"]), "p90": _ms(lat["90"]),
            "p95": _ms(lat["95"]), "p99": _ms(lat["99"]), "p99.9": _ms(lat["99.9"]),
            "mean": _ms(lat["mean"]), "max": _ms(lat["max"]), "min": _ms(lat["min"]),
        },
        # status: answers >= 400; the rest are socket errors (refused, reset, timed out).
        "failed": {"total": failed, "non_2xx": errors["status"], "connect": errors["connect"],
                   "read": errors["read"], "write": errors["write"], "timeout": errors["timeout"]},
        "bytes_per_response": round(raw["bytes"] / raw["requests"]) if raw["requests"] else 0,
        # Answers per connection; a 0 means that client waited the whole run.
        "answers_per_connection": raw["per_connection"],
        "idle_connections": sum(1 for n in raw["per_connection"] if n == 0),
    }


def _ms(us: float) -> float:
    return round(us / 1000.0, 2 if us < 100_000 else 1)
