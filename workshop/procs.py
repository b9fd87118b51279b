"""Start, watch and stop the workshop's servers as real subprocesses.

Every server (Flask, uWSGI, nginx, a lesson's run.sh) is started in a new
session. Stopping sends one SIGTERM to the process we started (it stops its
own children, in order, gracefully), then SIGKILLs whatever is left of its
process tree once the mercy has passed: nothing stays behind even if the
server forked workers, a master, or a helper of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .markers import TODO_ID


# How long a stop may take: uWSGI's workers finish their requests first
# (lessons/03_uwsgi/workers.ini), and run.sh kills what is left after this
# many seconds (STOP_MERCY in lessons/common.sh). Checks and tools wait longer
# than that before they SIGKILL anything themselves.
STOP_MERCY = 30


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_owner(port: int) -> str:
    """Who listens on a loopback port, for error messages ("port in use by ...")."""
    try:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip() or "nobody"


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class ServerDidNotStart(RuntimeError):
    pass


# The lines of a log that usually say what went wrong: a Python exception
# first, else nginx refusing its config or uWSGI refusing to start.
_ERROR_LINES = [re.compile(r"^[\w.]+(?:Error|Exception|Exit)\b(?::.*)?$"),
                re.compile(r"^(?:nginx: \[emerg\].*|.*no app loaded.*|The -s/--socket option is missing.*)$")]
# An exercise left as a TODO in a learner's workspace (workshop/markers.py):
# its stub raises NotImplementedError("TODO 02.1: ...") or answers "TODO 04.1: ...".
_UNFINISHED = re.compile(r"NotImplementedError: " + TODO_ID.pattern)


def last_error(log: str) -> str:
    """The last line of a log that names an error, or ''."""
    lines = [line.strip() for line in log.splitlines()]
    for pattern in _ERROR_LINES:
        found = [line for line in lines if pattern.match(line)]
        if found:
            return found[-1][:200]
    return ""


@dataclass
class Server:
    """One started command: its process group, its log and where it answers."""

    name: str
    cmd: list[str]
    log_path: Path
    cwd: Path | None = None
    env: dict | None = None
    url: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> "Server":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*_stop_with_us(), *self.cmd], cwd=self.cwd, env=self.env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def _not_started(self, what: str) -> ServerDidNotStart:
        lines = tail(self.log_path, 400).splitlines()
        error = last_error("\n".join(lines))
        if "Address already in use" in "\n".join(lines) and self.url:
            port = int(self.url.rsplit(":", 1)[1])
            what += f" (port {port} is in use by: {port_owner(port)})"
        # The log up to the error (a traceback ends with it), else its end.
        end = max((i for i, line in enumerate(lines) if error and line.strip() == error), default=len(lines) - 1)
        excerpt = "\n".join(lines[max(0, end - 11):end + 1])
        return ServerDidNotStart(f"{self.name} {what}{': ' + error if error else ''}"
                                 f"\n--- its log, up to the error ---\n{excerpt}")

    def _check_unfinished(self, answer: requests.Response | None = None) -> None:
        """Stop waiting at once when start-up hits a TODO of the workspace: it never gets ready."""
        if _UNFINISHED.search(tail(self.log_path, 400)):
            raise self._not_started("stopped at an unfinished exercise while starting")
        if answer is not None and not answer.ok and TODO_ID.search(answer.text):
            raise self._not_started(f"answered {answer.url} with HTTP {answer.status_code}: "
                                    f"{answer.text.strip()[:200]}")

    def wait_http(self, path: str = "/healthz", timeout: float = 60.0,
                  ok=(200,)) -> "Server":
        """Poll url+path until it answers with a status in `ok`."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.alive():
                raise self._not_started(f"exited with code {self.proc.returncode} before "
                                        f"answering {self.url}{path}")
            try:
                r = requests.get(self.url + path, timeout=2)
                if r.status_code in ok:
                    return self
                last = f"HTTP {r.status_code}"
                self._check_unfinished(r)
            except requests.RequestException as e:
                last = type(e).__name__
            self._check_unfinished()
            time.sleep(0.1)
        raise self._not_started(f"did not answer {self.url}{path} within {timeout:.0f} s (last: {last})")

    def wait_log(self, text: str, timeout: float = 90.0, probe: str = "") -> "Server":
        """Wait until the server's log contains text (e.g. run.sh's "[run] ready:").

        probe: a path asked now and then meanwhile, so that an answer naming a
        TODO of the workspace ends the wait at once instead of at the timeout.
        """
        deadline = time.monotonic() + timeout
        next_probe = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if text in tail(self.log_path, 400):
                return self
            if not self.alive():
                raise self._not_started(f"exited with code {self.proc.returncode} before saying {text!r}")
            self._check_unfinished()
            if probe and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + 1.0
                try:
                    self._check_unfinished(requests.get(self.url + probe, timeout=2))
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        raise self._not_started(f"did not say {text!r} within {timeout:.0f} s")

    def stop(self, timeout: float = STOP_MERCY + 10) -> None:
        """SIGTERM the process we started, then SIGKILL whatever is left of its tree.

        Only the top process gets SIGTERM: a run.sh, a uWSGI master or an nginx
        master stops its own children, once and in order. Signalling every
        process at once can deadlock a uWSGI worker that gets two stop signals.
        """
        if self.proc is None:
            return
        tree = set(descendants(self.proc.pid)) | {self.proc.pid}
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc.poll()  # reap our own child so it does not linger as a zombie
            tree |= set(descendants(self.proc.pid))
            if not any(running(pid) for pid in tree):
                break
            time.sleep(0.05)
        leftovers = [pid for pid in tree if running(pid)]
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if leftovers:
            with open(self.log_path, "a") as log:
                log.write(f"\n[harness] SIGKILLed {leftovers}: still running "
                          f"{timeout:.0f} s after SIGTERM\n")


def run_bounded(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True), stopped as Ctrl-C would stop it.

    subprocess.run's own timeout SIGKILLs the command, which then cleans up
    nothing (a pytest run leaves its servers' folders, a benchmark its
    servers). Here a command over its time gets SIGINT first: pytest and
    the benchmark stop their servers and remove their folders on it.
    Raises subprocess.TimeoutExpired, with what the command printed.
    """
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=STOP_MERCY + 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _stop_with_us() -> list[str]:
    """A prefix that has the kernel SIGTERM the server if this process dies first.

    A check killed from outside (a timeout, kill -9) runs no clean-up, and its
    servers, in sessions of their own, would live on. setpriv sets the
    parent-death signal and then execs the server, so its pid is the server's.
    The signal follows the thread that started the server, so only servers
    started from the main thread get it (a worker thread ends long before us).
    """
    if threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _stat(pid: int) -> list[str] | None:
    try:
        # fields after the command name: state ppid pgrp session ...
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Every process below pid (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll predicate() until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
