"""Is this uWSGI server ready? Ask it for /readyz in uWSGI's own protocol.

The image's HEALTHCHECK runs this inside each uWSGI container. There is no
HTTP port to curl there: uWSGI listens with `socket =`, which speaks the
binary uwsgi protocol that nginx's `uwsgi_pass` speaks. So we speak it too:
one packet of CGI-style variables (what nginx's `uwsgi_params` sends), then
read the HTTP answer the app writes back.

    python healthcheck.py [SOCKET]      SOCKET: /path/to/app.sock or HOST:PORT
                                        (default: $HEALTHCHECK_SOCKET)

The sockets speak that protocol inside TLS and let in only a client whose
certificate the private CA signed (lesson 05). HEALTHCHECK_TLS names the
folder with the CA's certificate and the probe's own pair (probe.crt,
probe.key): with it, the check shows its certificate and checks uWSGI's,
as nginx does. Without it, it speaks plain uwsgi (lesson 08's pods).

Exit 0 when /readyz answers 200 (the worker holds its model and has run it
once), 1 otherwise: Docker marks the container healthy after the first 0.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import sys


def uwsgi_request(variables: dict[str, str]) -> bytes:
    """A uwsgi packet: a 4-byte header, then each name and value with a 2-byte length.

    Header: modifier1 (0 = a WSGI request), the size of what follows (2 bytes,
    little-endian), modifier2 (0). Then name-length, name, value-length, value,
    for each variable.
    """
    body = b""
    for name, value in variables.items():
        for item in (name.encode(), value.encode()):
            body += struct.pack("<H", len(item)) + item
    return struct.pack("<BHB", 0, len(body), 0) + body


def connect(address: str, timeout: float, tls_dir: str = "") -> socket.socket:
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX)
        target = address
    else:
        host, _, port = address.rpartition(":")
        sock = socket.socket(socket.AF_INET)
        target = (host or "127.0.0.1", int(port))
    sock.settimeout(timeout)
    sock.connect(target)
    if not tls_dir:
        return sock
    # TLS as nginx speaks it to uWSGI: trust only the private CA, expect the
    # name "uwsgi" on uWSGI's certificate, and show our own (the probe's).
    context = ssl.create_default_context(cafile=os.path.join(tls_dir, "ca.crt"))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(os.path.join(tls_dir, "probe.crt"), os.path.join(tls_dir, "probe.key"))
    try:
        return context.wrap_socket(sock, server_hostname="uwsgi")
    except BaseException:
        sock.close()
        raise


def status_of(address: str, path: str = "/readyz", timeout: float = 4.0, tls_dir: str = "") -> int:
    """The HTTP status uWSGI's app answers `GET path` with."""
    request = uwsgi_request({
        "REQUEST_METHOD": "GET", "REQUEST_URI": path, "PATH_INFO": path,
        "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "healthcheck", "SERVER_PORT": "0", "HTTP_HOST": "healthcheck",
        "REMOTE_ADDR": "127.0.0.1",
    })
    with connect(address, timeout, tls_dir) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer:  # the status line is all we need
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")  # "HTTP/1.1 200 OK"
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {status_line!r}")
    return int(parts[1])


def main(argv: list[str]) -> int:
    address = argv[1] if len(argv) > 1 else os.environ.get("HEALTHCHECK_SOCKET", "")
    if not address:
        print("healthcheck: give a socket (path or HOST:PORT) or set HEALTHCHECK_SOCKET",
              file=sys.stderr)
        return 1
    try:
        status = status_of(address, tls_dir=os.environ.get("HEALTHCHECK_TLS", ""))
    except (OSError, ValueError) as exc:   # ssl.SSLError is an OSError
        print(f"healthcheck: {address}: {exc}", file=sys.stderr)
        return 1
    print(f"healthcheck: {address} /readyz -> {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
