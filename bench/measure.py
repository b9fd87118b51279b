"""What every measurement uses: its Context, the command line, the statistics, wrk, unloaded
round trips, /proc, the processes of its own, the files of the runs of their own.

A stage (bench/run.py lists them) starts its servers through workshop.harness, measures them with
load(), unloaded() and memory_of(), and returns rows kept in results.json as they are. Percentiles
under load are wrk's own; every other percentile is percentile()'s, every median median()'s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from workshop import images
from workshop.harness import started, stop, uwsgi_stats
from workshop.lessons import REFERENCE, ROOT
from workshop.procs import Server, descendants, run_bounded

CLK_TCK = os.sysconf("SC_CLK_TCK")
RESULTS = Path(__file__).resolve().parent / "results"
PNG = "/infer?format=png"  # every stage asks for the mask as a PNG, the app's default answer


@dataclass
class Context:
    quick: bool
    cores: int
    lessons: Path
    work: Path                 # a temp folder: photos, weights file, wrk's script
    photos: list[dict]         # label, width, height, megapixels, path: the photo sizes
    out: Path | None = None    # where results.json goes (a stage may write files of its own there)
    seconds: float = 10        # one measured wrk run at a headline setting
    curve_seconds: float = 5   # one point of a curve (photo size, connections)
    warmup: float = 3          # wrk's warm-up before a measured run
    limit_seconds: float = 10
    hang_timeout: float = 20   # a worker silent this long after the fork is hung
    results: dict = field(default_factory=dict)

    @property
    def conc(self) -> int:     # connections for the headline runs: 2 per core
        return 2 * self.cores

    @property
    def body(self) -> bytes:   # the photo of every headline run
        return self.photo("256x256")

    def photo(self, label: str) -> bytes:
        return Path(next(p["path"] for p in self.photos if p["label"] == label)).read_bytes()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def options(doc: str, quick: str, out: str, argv=None, default_out: Path = RESULTS, prog: str | None = None,
            only: str = "", **flags) -> argparse.Namespace:
    """The command line of every run: --quick, --out, --lessons, --only if ONLY is its help, and any
    more on/off FLAGS (name=help)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", type=Path, default=default_out, help=out)
    parser.add_argument("--lessons", type=Path, default=REFERENCE, help="the lessons to run (default: lessons/)")
    if only:
        parser.add_argument("--only", help=only)
    for name, help in flags.items():
        parser.add_argument(f"--{name}", action="store_true", help=help)
    return parser.parse_args(argv)


# ---------------------------------------------------------------- statistics

def percentile(values: list[float], q: float) -> float | None:
    """The value at position round(q/100 * (n - 1)) of the n values sorted: every percentile here but wrk's."""
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else None


def summary(xs: list[float]) -> dict:
    """n, p50, p95, p99, mean and min of timings in ms."""
    return {"n": len(xs), **{f"p{q}": round(percentile(xs, q), 2) for q in (50, 95, 99)},
            "mean": round(statistics.fmean(xs), 2), "min": round(min(xs), 2)} if xs else {"n": 0}


def median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


# ---------------------------------------------------------------- load: wrk

# wrk keeps C connections busy (closed loop: C requests in flight), one wrk
# thread per connection so that the answers counted per thread are per
# connection: a 0 is a client that waited the whole run. A client told 503
# waits what Retry-After says before it asks again, as a polite client does
# (asking again at once, a full stack's instant 503s would be most of the
# run's requests, and their CPU the stack's). uWSGI's http-socket closes the
# connection after each answer without saying so; HTTP/1.0 requests (http10)
# make that close expected.
LUA = r"""
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb")); local body = f:read("*a"); f:close()
local threads, req = {}, nil
setup = function(thread) table.insert(threads, thread) end
init = function(args)
  answered, busy, pause = 0, 0, 0
  if os.getenv("BENCH_HTTP10") == "1" then
    req = "POST " .. wrk.path .. " HTTP/1.0\r\nHost: " .. wrk.host .. ":" .. wrk.port ..
          "\r\nContent-Type: image/jpeg\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body
  else
    req = wrk.format("POST", nil, {["Content-Type"] = "image/jpeg"}, body)
  end
end
request = function() return req end
delay = function() local ms = pause; pause = 0; return ms end
response = function(status, headers, body)
  answered = answered + 1
  if status == 503 then busy = busy + 1; pause = 1000 * (tonumber(headers["Retry-After"] or "") or 1) end
end
done = function(summary, latency, requests)
  local p, per, e, busy = {}, {}, summary.errors, 0
  for _, q in ipairs({50, 90, 95, 99}) do p[#p + 1] = string.format('"p%d":%.2f', q, latency:percentile(q) / 1000) end
  for _, t in ipairs(threads) do per[#per + 1] = tostring(t:get("answered")); busy = busy + t:get("busy") end
  io.write(string.format('BENCHJSON {"requests":%d,"duration_s":%.3f,"bytes":%d,"busy_503":%d,"failed":{"status":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"timeout":%d},"latency_ms":{%s,"mean":%.2f,"max":%.2f},"per_connection":[%s]}\n',
    summary.requests, summary.duration / 1e6, summary.bytes, busy, e.status - busy, e.connect, e.read, e.write,
    e.timeout, table.concat(p, ","), latency.mean / 1000, latency.max / 1000, table.concat(per, ",")))
end
"""


def wrk(ctx: Context, url: str, body: bytes, seconds: float, conc: int, http10: bool) -> dict:
    (ctx.work / "bench.lua").write_text(LUA)
    (ctx.work / "body.bin").write_bytes(body)
    cmd = ["wrk", f"-t{conc}", f"-c{conc}", f"-d{max(1, round(seconds))}s", "--timeout=30s", "-s",
           str(ctx.work / "bench.lua"), url]
    env = dict(os.environ, BENCH_BODY=str(ctx.work / "body.bin"), BENCH_HTTP10=str(int(http10)))
    out = run_bounded(cmd, timeout=seconds + 90, env=env)
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    r = json.loads(line[10:])
    # Failed: answers >= 400 other than a full stack's 503 (busy_503, counted apart), refused, reset, timed out.
    r["failed"]["total"] = sum(r["failed"].values())
    per = r.pop("per_connection")
    return {"tool": " ".join(cmd[:5]) + (" (HTTP/1.0)" if http10 else ""), "connections": conc,
            # rps counts the answers that carried a result: not the 503s, not the other failures
            "rps": round((r["requests"] - r["busy_503"] - r["failed"]["status"]) / r["duration_s"], 2), **r,
            "idle_connections": sum(1 for n in per if n == 0)}


def settle(srv: Server) -> str:
    """Until the stack answers /readyz again: after a load that overflowed it, nginx holds an
    upstream that failed as down for a while (fail_timeout), and answers 503 meanwhile."""
    srv.wait_http("/readyz", timeout=60)
    return srv.url + PNG


def load(ctx: Context, srv: Server, body: bytes, *, seconds: float | None = None, conc: int | None = None,
         http10: bool = False, warmup: float | None = None) -> dict:
    """A wrk warm-up, then one measured wrk run, with the CPU each process group used meanwhile."""
    conc, warmup, url = conc or ctx.conc, ctx.warmup if warmup is None else warmup, settle(srv)
    if warmup:
        wrk(ctx, url, body, warmup, conc, http10)
    with CpuWindow() as cpu:
        result = wrk(ctx, url, body, seconds or ctx.seconds, conc, http10)
    return {**result, "cpu": cpu.result}


def unloaded(srv: Server, body: bytes, n: int) -> dict:
    """n requests one after the other, nothing else running: round trip vs the app's X-Inference-Ms."""
    rtt, app, url = [], [], settle(srv)
    for _ in range(n):  # a fresh connection each time, as most clients do
        t0 = time.perf_counter()
        r = requests.post(url, data=body, timeout=120)
        rtt.append((time.perf_counter() - t0) * 1000)
        if not r.ok:
            return {"requests": len(rtt), "status": r.status_code, "error": r.text[:300]}
        app.append(float(r.headers.get("X-Inference-Ms", "nan")))
    rt, inside = summary(rtt), summary(app)
    return {"requests": n, "status": r.status_code, "bytes_out": len(r.content), "round_trip_ms": rt,
            "in_app_ms": inside, "outside_app_ms_p50": round(rt["p50"] - inside["p50"], 2)}


def small_photo() -> bytes:
    """The photo of the runs of their own: the cat at 256x256, JPEG at PIL's default quality."""
    return images.encode(images.photo().resize((256, 256)), "JPEG")


def post(url: str, body: bytes) -> tuple[int, float]:
    """One photo to URL/infer?format=png: (status, seconds)."""
    t0 = time.perf_counter()
    return requests.post(url + PNG, data=body, timeout=60).status_code, time.perf_counter() - t0


# ---------------------------------------------------------------- /proc: memory and CPU

def uwsgi_instances(run_dir: Path | None) -> dict[str, dict]:
    """The stats of every uWSGI whose stats socket is in run_dir, by its name (stats1.sock: ...)."""
    stats = {}
    for sock in sorted(Path(run_dir).rglob("stats*.sock")) if run_dir else []:
        with contextlib.suppress(OSError, ValueError):  # not up yet, or gone
            stats[sock.name] = uwsgi_stats(sock)
    return stats


def uwsgi_workers(run_dir: Path | None) -> list[dict]:
    """The workers of every uWSGI whose stats socket is in run_dir."""
    return [w for s in uwsgi_instances(run_dir).values() for w in s["workers"]]


def _read(path: str) -> str:
    with contextlib.suppress(OSError):  # a process gone meanwhile
        return Path(path).read_text()
    return ""


def memory_of(root_pid: int, run_dir: Path | None = None) -> dict:
    """RSS, PSS and peak RSS (VmHWM) of a server's processes by role, per worker and in total.

    Rss counts every page a process maps; Pss splits each shared page between
    the processes sharing it, so Pss adds up (a prefork model counts once).
    """
    stats = uwsgi_instances(run_dir).values()   # one read: masters and workers of the same moment
    masters, workers = {s["pid"] for s in stats}, {w["pid"] for s in stats for w in s["workers"]}
    rows = []
    for pid in [root_pid, *descendants(root_pid)]:
        name = _read(f"/proc/{pid}/comm").strip()
        role = ("worker" if pid in workers else "master" if pid in masters else "nginx" if name.startswith("nginx")
                else "server" if name.startswith("python") or name == "pt_main_thread" else None)
        values = {}
        for line in (_read(f"/proc/{pid}/smaps_rollup") + _read(f"/proc/{pid}/status")).splitlines() if role else []:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "VmHWM"):
                values[key] = round(int(rest.split()[0]) / 1024, 1)  # kB -> MiB
        if "Rss" in values:
            rows.append({"pid": pid, "role": role, "rss_mb": values["Rss"], "pss_mb": values.get("Pss", 0),
                         "peak_rss_mb": values.get("VmHWM", 0)})
    serving = [r for r in rows if r["role"] in ("worker", "server")]
    per = {f"{k}_per_worker": round(sum(r[k] for r in serving) / len(serving), 1) if serving else None
           for k in ("rss_mb", "pss_mb", "peak_rss_mb")}
    return {"processes": rows, **per,
            "app_pss_mb_total": round(sum(r["pss_mb"] for r in rows if r["role"] != "nginx"), 1)}


def _cpu_ticks() -> dict[int, tuple[str, int]]:
    """pid -> (name, utime + stime in clock ticks) of every process on the machine."""
    out = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        if raw := _read(f"/proc/{entry}/stat"):
            fields = raw[raw.rfind(")") + 2:].split()
            out[int(entry)] = (raw[raw.find("(") + 1:raw.rfind(")")], int(fields[11]) + int(fields[12]))
    return out


def cpu_seconds(pids) -> float:
    """The CPU time the processes pids have used so far."""
    ticks = _cpu_ticks()
    return sum(ticks[pid][1] for pid in pids if pid in ticks) / CLK_TCK


def _busy_ticks() -> int:
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, _read("/proc/stat").split()[1:9])
    return user + nice + system + irq + softirq + steal


class CpuWindow:
    """The CPU used during a measurement, in % of one core: by our processes grouped by name, and by
    everything else on the machine ("other": someone's tests, a build), so that a noisy row shows."""

    def __init__(self, exited_children: str | None = "wrk"):
        self.exited_name = exited_children  # our children that exit inside the window: gone from /proc

    def __enter__(self):
        self.t0, self.before, self.busy0 = time.monotonic(), _cpu_ticks(), _busy_ticks()
        self.children0 = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
        return self

    def __exit__(self, *exc):
        after, busy, seconds = _cpu_ticks(), _busy_ticks() - self.busy0, max(time.monotonic() - self.t0, 1e-6)
        ours, by_name = {os.getpid(), *descendants(os.getpid())}, {}
        for pid in ours & after.keys():
            name, delta = after[pid][0], after[pid][1] - self.before.get(pid, ("", 0))[1]
            group = next((g for g in ("uwsgi", "nginx", "python") if name.startswith(g)), name)
            by_name[group] = by_name.get(group, 0) + max(0, delta)
        exited = (sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - self.children0) * CLK_TCK
        if exited > 0 and self.exited_name:
            by_name[self.exited_name] = by_name.get(self.exited_name, 0) + exited
        pct = 100.0 / (CLK_TCK * seconds)
        self.result = {"seconds": round(seconds, 2), "machine_busy_pct": round(busy * pct, 1),
                       "ours_pct_by_process": {k: round(v * pct, 1) for k, v in sorted(by_name.items()) if v},
                       "other_pct": round(max(0.0, busy - sum(by_name.values())) * pct, 1)}
        return False


def loadavg() -> list[float]:
    return [float(x) for x in _read("/proc/loadavg").split()[:3]]


def machine() -> dict:
    from importlib.metadata import version

    def first_line(cmd):  # nginx -v and wrk -v: the version, on stderr or stdout
        out = run_bounded(cmd, timeout=20) if shutil.which(cmd[0]) else None
        return (out.stderr or out.stdout).strip().splitlines()[0].split(" Copyright")[0] if out else "not found"
    info = dict(line.split(":", 1) for line in _read("/proc/cpuinfo").split("\n\n")[0].splitlines() if ":" in line)
    return {"cores": os.cpu_count(), "cpu_model": info.get("model name\t", "?").strip(),
            "bf16_instructions": "avx512_bf16" in info.get("flags\t\t", "").split(),
            "memory_gib": round(int(_read("/proc/meminfo").split()[1]) / 1024 ** 2, 1), "os": platform.platform(),
            "python": platform.python_version(), "nginx": first_line(["nginx", "-v"]), "wrk": first_line(["wrk", "-v"]),
            "packages": {p: version(p) for p in ("torch", "torchvision", "pillow", "numpy", "uWSGI")}}


# ---------------------------------------------------------------- processes and files of its own

def child(work: Path, name: str, args: list[str], env: dict | None = None) -> Server:
    """`python ARGS`, started through the harness (which stops it), logging to WORK/NAME.log."""
    return started(name, [sys.executable, *args], work, env=env, cwd=ROOT)


def result_of(server: Server, prefix: str = "RESULT ") -> dict:
    """The JSON a child printed after PREFIX."""
    line = next((line for line in server.log(100).splitlines() if line.startswith(prefix)), None)
    if line is None:
        raise RuntimeError(f"{server.name} printed no result:\n{server.log(30)}")
    return json.loads(line[len(prefix):])


def child_result(work: Path, name: str, args: list[str], timeout: float, env: dict | None = None) -> dict:
    """A child run to its end: what it printed after RESULT."""
    server = child(work, name, args, env)
    try:
        server.proc.wait(timeout=timeout)
        return result_of(server)
    finally:
        stop(server)


def run_meta(quick: bool, t0: float, **more) -> dict:
    """The "meta" of a run of its own that started at monotonic T0."""
    return {"quick": quick, "cores": os.cpu_count(), **more, "loadavg_after": list(os.getloadavg()),
            "duration_s": round(time.monotonic() - t0, 1), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def written(out_dir: Path, name: str, result: dict) -> dict:
    """RESULT written to OUT_DIR/NAME as JSON; returned."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / name).write_text(json.dumps(result, indent=1) + "\n")
    return result
