"""Many connections at once, from one process: bursts of requests and slow clients.

The checks and the benchmark (bench/overload.py) need hundreds or a
thousand connections open at the same time, which threads do badly. These
helpers use asyncio and raw HTTP/1.1, so every outcome is seen as it is: a
status, or how the connection ended without one ("reset", "closed",
"timeout"). Loopback only; every wait is bounded.

    answers = burst("http://127.0.0.1:5000/infer?format=png", photo, 128)
    with SlowClients(port, 1000, kind="header", sources=loopback_sources(50)) as slow:
        ...                                   # a normal client meanwhile
    slow.outcomes                             # how and when each one ended
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def raise_open_files(wanted: int) -> int:
    """Raise this process's limit of open files (RLIMIT_NOFILE) towards `wanted`; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def loopback_sources(n: int, first: int = 2) -> list[str]:
    """n loopback addresses other than 127.0.0.1 (127.0.0.2, ...): to nginx, n different clients."""
    return [f"127.0.{(first + i) // 256}.{(first + i) % 256}" for i in range(n)]


@dataclass
class Answer:
    """What one request got: an HTTP status, or how the connection ended without one."""

    status: int | str          # 200, 503, ...; or "reset", "closed", "timeout", "refused"
    seconds: float             # from the connect to the end of the answer
    headers: dict = field(default_factory=dict)   # lower-case names
    body: bytes = b""


def _parse(data: bytes, seconds: float) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return Answer("garbled", seconds, {}, data[:200])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Answer(status, seconds, headers, body)


def _ended(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    return type(exc).__name__


async def request(host: str, port: int, raw: bytes, timeout: float, source: str | None = None) -> Answer:
    """Send raw bytes, read until the server closes; bounded by timeout."""
    started = time.monotonic()
    streams = []

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0) if source else None)
        streams.append(writer)
        writer.write(raw)
        await writer.drain()
        return await reader.read(-1)

    try:
        data = await asyncio.wait_for(exchange(), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return Answer(_ended(exc), time.monotonic() - started)
    finally:
        for writer in streams:
            writer.close()
    seconds = time.monotonic() - started
    return _parse(data, seconds) if data else Answer("closed", seconds)


def post(url: str, body: bytes, content_type: str = "image/jpeg") -> tuple[str, int, bytes]:
    """(host, port, raw request) for one POST that asks the server to close afterwards."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    raw = (f"POST {target} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: {content_type}\r\n"
           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    return parts.hostname, parts.port, raw


def get(url: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port, f"GET {target} HTTP/1.1\r\nHost: {parts.hostname}\r\nConnection: close\r\n\r\n".encode()


def one(url: str, body: bytes | None = None, timeout: float = 60.0, source: str | None = None) -> Answer:
    """One request (POST body, or GET if None), from a chosen source address."""
    host, port, raw = post(url, body) if body is not None else get(url)
    return asyncio.run(request(host, port, raw, timeout, source))


def burst(url: str, body: bytes | None, n: int, timeout: float = 60.0, source: str | None = None) -> list[Answer]:
    """n requests at the same moment, each on its own connection (POST body, or GET if None)."""
    host, port, raw = post(url, body) if body is not None else get(url)
    raise_open_files(n + 256)

    async def all_at_once():
        return await asyncio.gather(*(request(host, port, raw, timeout, source) for _ in range(n)))

    return asyncio.run(all_at_once())


@dataclass
class Ending:
    """How one slow client ended: who closed it and when (seconds after it connected)."""

    how: str            # "reset", "closed", "answered", "refused", ..., or "still open" at the end
    seconds: float
    answer: Answer | None = None   # what the server said, if it answered


class SlowClients:
    """n connections that send a request too slowly, open in a background thread.

    kind "header": the request line, then one header line every `every`
    seconds, never the blank line that ends the headers.
    kind "body": the whole header (Content-Length: 60000), then one byte of
    the body every `every` seconds; `every=None` sends no body at all (a
    client that stalls).
    Connections come from `sources` in turn (to nginx, different clients).
    They run until the server ends them or `hold` seconds have passed; then
    `outcomes` says how each one ended. Leaving the block closes them all.
    """

    def __init__(self, port: int, n: int, kind: str, every: float | None = 2.0,
                 hold: float = 30.0, sources: list[str] | None = None, host: str = "127.0.0.1"):
        self.port, self.n, self.kind, self.every, self.hold = port, n, kind, every, hold
        self.host, self.sources = host, sources or ["127.0.0.1"]
        self.outcomes: list[Ending] = []
        self.opened = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "SlowClients":
        raise_open_files(self.n + 256)
        self._thread.start()
        self._ready.wait(timeout=60)
        return self

    def __exit__(self, *exc):
        self._thread.join(timeout=self.hold + 30)

    def wait(self, timeout: float) -> None:
        """Until every slow client has ended (or timeout)."""
        self._thread.join(timeout=timeout)

    def ended(self) -> int:
        return len(self.outcomes)

    def _run(self):
        asyncio.run(self._main())

    async def _main(self):
        self._deadline = time.monotonic() + self.hold
        tasks = [asyncio.create_task(self._one(self.sources[i % len(self.sources)])) for i in range(self.n)]
        # Connected (or failed to) before the caller goes on.
        while self.opened + self.ended() < self.n and time.monotonic() < self._deadline:
            await asyncio.sleep(0.05)
        self._ready.set()
        await asyncio.gather(*tasks)

    async def _one(self, source: str):
        started = time.monotonic()
        writer = None
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, local_addr=(source, 0))
            self.opened += 1
            if self.kind == "header":
                writer.write(b"POST /infer HTTP/1.1\r\nHost: localhost\r\n")
                step = b"X-Slow: 1\r\n"
            else:
                writer.write(b"POST /infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                             b"Content-Length: 60000\r\n\r\n")
                step = b"\xff"
            await writer.drain()
            while (left := self._deadline - time.monotonic()) > 0:
                wait = left if self.every is None else min(self.every, left)
                try:
                    data = await asyncio.wait_for(reader.read(4096), wait)
                except asyncio.TimeoutError:
                    if self.every is not None:
                        writer.write(step)
                        await writer.drain()
                    continue
                seconds = time.monotonic() - started
                if data:  # an answer (a limit's 429): read the rest of it
                    with contextlib.suppress(OSError, asyncio.TimeoutError):
                        data += await asyncio.wait_for(reader.read(-1), 5)
                    self.outcomes.append(Ending("answered", seconds, _parse(data, seconds)))
                else:
                    self.outcomes.append(Ending("closed", seconds))
                return
            self.outcomes.append(Ending("still open", time.monotonic() - started))
        except OSError as exc:
            self.outcomes.append(Ending(_ended(exc), time.monotonic() - started))
        finally:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
