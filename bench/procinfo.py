"""What the benchmark reads from /proc: memory per process, CPU per process, the machine.

Memory: Rss counts every page a process maps; Pss divides each shared page by
the number of processes sharing it, so the Pss of all workers adds up to the
memory they really cost together (a prefork model shared copy-on-write is
counted once, not once per worker).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from workshop.procs import descendants

CLK_TCK = os.sysconf("SC_CLK_TCK")


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def memory(pid: int) -> dict | None:
    """{'rss_mb', 'pss_mb'} from /proc/PID/smaps_rollup (None if the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("Rss:", "Pss:", "Private_Dirty:", "Shared_Clean:"):
            values[parts[0][:-1].lower()] = int(parts[1]) / 1024  # kB -> MiB
    if "rss" not in values:
        return None
    return {"rss_mb": round(values["rss"], 1), "pss_mb": round(values.get("pss", 0.0), 1),
            "private_dirty_mb": round(values.get("private_dirty", 0.0), 1)}


def tree(pid: int) -> list[int]:
    return [pid, *descendants(pid)]


def cpu_ticks() -> dict[int, tuple[str, int, int]]:
    """pid -> (comm, utime + stime in clock ticks, ppid) for every process on the machine."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.find("(") + 1:raw.rfind(")")]
        fields = raw[raw.rfind(")") + 2:].split()
        out[int(entry.name)] = (name, int(fields[11]) + int(fields[12]), int(fields[1]))
    return out


def machine_busy_ticks() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return user + nice + system + irq + softirq + steal


class CpuWindow:
    """CPU used during a measurement: by our processes (grouped by name) and by everyone else.

    "Everyone else" is the noise: another test run, a build, a browser. The
    benchmark reports it per run so a noisy number can be recognised.
    """

    def __init__(self, exited_children: str | None = "wrk", ours_root: int | None = None):
        self.root = ours_root or os.getpid()
        # Children that exit inside the window vanish from /proc; their CPU time
        # is only visible in our own rusage (RUSAGE_CHILDREN), under this name.
        self.exited_name = exited_children

    def __enter__(self):
        self.children0 = _children_cpu_s()
        self.before = cpu_ticks()
        self.busy0 = machine_busy_ticks()
        self.t0 = os.times().elapsed
        return self

    def __exit__(self, *exc):
        after = cpu_ticks()
        busy = machine_busy_ticks() - self.busy0
        seconds = max(os.times().elapsed - self.t0, 1e-6)
        ours = set(tree(self.root))
        by_name: dict[str, int] = {}
        foreign = kernel = 0
        for pid, (name, ticks, ppid) in after.items():
            old = self.before.get(pid)
            delta = ticks - (old[1] if old else 0)
            if delta <= 0:
                continue
            if pid in ours:
                key = _group(name)
                by_name[key] = by_name.get(key, 0) + delta
            elif pid == 2 or ppid == 2:
                kernel += delta  # kernel threads (softirq work for loopback traffic, ...)
            else:
                foreign += delta
        scale = 100.0 / (CLK_TCK * seconds)  # ticks -> % of one core
        exited = (_children_cpu_s() - self.children0) * CLK_TCK
        if exited > 0 and self.exited_name:
            by_name[self.exited_name] = by_name.get(self.exited_name, 0) + exited
        ours_total = sum(by_name.values())
        # Everything the machine did that was neither ours nor kernel threads:
        # other processes, also short-lived ones that are gone from /proc by
        # now (so computed as the rest of the machine's busy time), and time
        # stolen by the hypervisor.
        residual = max(0.0, busy - ours_total - kernel)
        self.result = {
            "seconds": round(seconds, 2),
            "machine_busy_pct": round(busy * scale, 1),
            "ours_pct_by_process": {k: round(v * scale, 1) for k, v in sorted(by_name.items())},
            "kernel_threads_pct": round(kernel * scale, 1),
            "other_pct": round(max(residual, foreign) * scale, 1),
            "other_live_processes_pct": round(foreign * scale, 1),
            "load1": loadavg()[0],
        }
        return False


def _children_cpu_s() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _group(name: str) -> str:
    if name.startswith("uwsgi"):
        return "uwsgi"
    if name.startswith("python") or name == "pt_main_thread":
        return "python"
    if name.startswith("nginx"):
        return "nginx"
    return name


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "not found"


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    try:
        os_name = next(line.split("=", 1)[1].strip('"') for line in
                       Path("/etc/os-release").read_text().splitlines() if line.startswith("PRETTY_NAME"))
    except (OSError, StopIteration):
        os_name = platform.platform()
    from importlib.metadata import version
    py = {}
    for pkg in ("torch", "torchvision", "flask", "pillow", "numpy", "uWSGI", "pyuwsgi"):
        try:
            py[pkg] = version(pkg)
        except Exception:
            py[pkg] = "not installed"
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": py,
        "uwsgi": "uWSGI " + _version([str(Path(sys.executable).parent / "uwsgi"), "--version"]),
        "nginx": _version(["nginx", "-v"]) if shutil.which("nginx") else "not found",
        "wrk": _version(["wrk", "-v"]) if shutil.which("wrk") else "not found",
    }
