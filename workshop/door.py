"""Knock on a uwsgi socket the way a stranger would: one packet, straight to uWSGI, no nginx.

    python -m workshop.door ADDRESS [--tls] [--cert DIR]

ADDRESS is 127.0.0.1:PORT, an address on lesson 08's private network of
namespaces (10.231.8.0/24), or a unix socket's path: this is a
demonstration, not a scanner. Two packets ask uWSGI 2.0 to load a
"dynamic app", as the uwsgi protocol allows whoever speaks it:

  UWSGI_FILE=exec://id -un > MARKER     uWSGI runs a shell command (to read an app's source)
  UWSGI_SCRIPT=MODULE, UWSGI_CHDIR=DIR  uWSGI imports a Python file from any folder

It prints, for each, whether the marker file appeared (the command ran, and
as which user) and whether the app answered. Harmless: the command and the
module only write a file in a fresh temp folder, removed afterwards.
--tls speaks TLS without a client certificate (a stranger who knows the port
wants TLS); --cert DIR presents DIR/nginx.crt and DIR/nginx.key (nginx's own).
Exit status 1 if anything ran.

Standard library only: a check runs it as another user with the system's python3.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import secrets
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Lesson 08's network of namespaces (lessons/08_cluster/hosts.sh makes and removes it).
LAB_NET = ipaddress.ip_network("10.231.8.0/24")

# What nginx's uwsgi_params would send for `GET /readyz`: the app answers it at once.
REQUEST = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/readyz", "PATH_INFO": "/readyz",
           "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "localhost",
           "SERVER_PORT": "80", "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "localhost"}


def packet(variables: dict[str, str], modifier1: int = 0) -> bytes:
    """A uwsgi packet: a 4-byte header (modifier1, size as little-endian u16, modifier2),
    then each variable as a u16 length and bytes, name then value."""
    body = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
                    for k, v in ((k.encode(), v.encode()) for k, v in variables.items()))
    return struct.pack("<BHB", modifier1, len(body), 0) + body


def parse_address(address: str) -> tuple[str, int] | str:
    """(host, port) for a loopback or LAB_NET TCP address, or a unix socket path; anything else is refused."""
    if "/" in address:
        return address
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    ip = "127.0.0.1" if host == "localhost" else host
    try:
        ours = ipaddress.ip_address(ip).is_loopback or ipaddress.ip_address(ip) in LAB_NET
    except ValueError:
        ours = False
    if not ours or not port.isdigit():
        raise ValueError(f"{address!r}: give 127.0.0.1:PORT, an address in {LAB_NET}, "
                         "or a socket path (this knocks on this machine's own doors only)")
    return ip, int(port)


def send(address: str, data: bytes, tls: bool = False, cert_dir: Path | None = None,
         timeout: float = 30.0) -> bytes | str:
    """Send data to a uwsgi socket; the answer's bytes, or the error's name if there was none."""
    where = parse_address(address)
    try:
        if isinstance(where, str):
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(timeout)
            sock.connect(where)
        else:
            sock = socket.create_connection(where, timeout=timeout)
        with sock:
            if tls or cert_dir:
                # A stranger does not check who answers; nginx's certificate is presented only with --cert.
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                if cert_dir:
                    ctx.load_cert_chain(Path(cert_dir) / "nginx.crt", Path(cert_dir) / "nginx.key")
                sock = ctx.wrap_socket(sock)
            sock.sendall(data)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer or "EOF"  # closed without a word
    except ssl.SSLError:
        # A refused handshake: an alert or a closed connection, whichever the server sent first.
        return "SSLError"
    except OSError as exc:
        return type(exc).__name__


@dataclass
class Knock:
    magic: str               # which magic variable asked for a dynamic app
    answer: bytes | str      # the reply, or the error's name
    ran_as: str | None       # the user the marker file names; None: nothing ran

    @property
    def answered(self) -> bool:
        """The app answered (an HTTP status line came back), to a stranger."""
        return isinstance(self.answer, bytes) and self.answer.startswith(b"HTTP/")

    def describe(self) -> str:
        ran = f"it RAN, as {self.ran_as}" if self.ran_as else "nothing ran"
        said = (self.answer.split(b"\r\n", 1)[0].decode(errors="replace") if self.answered
                else f"no answer ({self.answer if isinstance(self.answer, str) else 'not HTTP'})")
        return f"{self.magic:12} -> {ran}; {said}"


def knock(address: str, tls: bool = False, cert_dir: Path | None = None,
          timeout: float = 30.0, settle: float = 0.3) -> list[Knock]:
    """Send both packets to address; what came back and what ran. Leaves nothing behind."""
    folder = Path(tempfile.mkdtemp(prefix="knock-"))
    try:
        # Whoever uWSGI runs as must be able to write the marker and read the module.
        folder.chmod(0o1777)
        token = secrets.token_hex(4)   # fresh names: a worker caches apps and modules it loaded
        exec_marker, script_marker = folder / "ran-exec", folder / "ran-script"
        module = f"knock_{token}"
        (folder / f"{module}.py").write_text(
            "import os, pwd\n"
            f"open({str(script_marker)!r}, 'w').write(pwd.getpwuid(os.getuid()).pw_name)\n")
        (folder / f"{module}.py").chmod(0o644)
        asks = [
            # SCRIPT_NAME names a mountpoint with no app yet: uWSGI loads one for it.
            ("UWSGI_FILE", exec_marker, {"SCRIPT_NAME": f"/knock-{token}-file",
                                         "UWSGI_FILE": f"exec://id -un > {exec_marker}"}),
            ("UWSGI_SCRIPT", script_marker, {"SCRIPT_NAME": f"/knock-{token}-script",
                                             "UWSGI_CHDIR": str(folder), "UWSGI_SCRIPT": module}),
        ]
        knocks = []
        for magic, marker, extra in asks:
            answer = send(address, packet({**REQUEST, **extra}), tls=tls, cert_dir=cert_dir,
                          timeout=timeout)
            # uWSGI runs the loader before it answers, and a door that said no
            # ran nothing; a moment more all the same, for a slow machine.
            deadline = time.monotonic() + settle
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            ran_as = (marker.read_text().strip() or "?") if marker.exists() else None
            knocks.append(Knock(magic, answer, ran_as))
        return knocks
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def listening_ports(pids) -> set[int]:
    """The TCP ports (IPv4 and IPv6) these processes listen on: their doors to the network."""
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()   # sl local_address rem_address st ... inode
            if fields[3] == "0A" and fields[9] in inodes:   # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    tls = "--tls" in argv
    cert_dir = None
    if "--cert" in argv:
        i = argv.index("--cert")
        if i + 1 >= len(argv):
            print(__doc__, file=sys.stderr)
            return 2
        cert_dir = Path(argv[i + 1])
        args.remove(argv[i + 1])
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        parse_address(args[0])
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    how = "TLS with nginx's certificate" if cert_dir else "TLS, no certificate" if tls else "plain uwsgi"
    print(f"knocking on {args[0]} ({how}), as {pwd.getpwuid(os.getuid()).pw_name}")
    knocks = knock(args[0], tls=tls, cert_dir=cert_dir)
    for k in knocks:
        print("  " + k.describe())
    if any(k.ran_as for k in knocks):
        print("an open door: whoever reaches this socket runs code as the app's user")
        return 1
    print("nothing ran" + (" (the app answered: this client holds a certificate uWSGI trusts)"
                           if any(k.answered for k in knocks) else ", and the app said nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
