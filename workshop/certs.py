"""A private certificate authority for the uwsgi sockets that a stranger could reach.

The uwsgi protocol has no login: whoever can open the socket can run code
in the app's user (lesson 05 shows it). A TCP upstream is therefore wrapped
in TLS with client certificates: uWSGI only talks to a peer whose
certificate this CA signed, and the only such peer is nginx.

    python -m workshop.certs DIR [NAME...] [--give PARTY=FOLDER ...]

makes, in DIR (created with mode 700; lessons use $RUN_DIR/tls, never the
repository):

    ca.crt ca.key        the private CA (it signs the three below, nothing else)
    uwsgi.crt uwsgi.key  uWSGI's server certificate, for the names NAME... (default: uwsgi)
    nginx.crt nginx.key  nginx's client certificate
    probe.crt probe.key  the health check's client certificate: how the uWSGI
                         side itself asks its own socket for /readyz

A second run keeps valid files (same names, a week or more to go) and
prints DIR; anything else is made again. Needs only `openssl`.

Where nginx and uWSGI do not share a folder (lesson 06's containers), each
gets only its own part: `--give nginx=FOLDER` copies ca.crt and nginx's pair
there, `--give uwsgi=FOLDER` ca.crt, uWSGI's pair and the probe's. The CA's
key stays in DIR.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DAYS = 90                 # the lessons' certificates live a season, not forever
RENEW_BEFORE = 7 * 86400  # seconds: make new ones when less than a week is left
DEFAULT_NAMES = ("uwsgi",)
FILES = ("ca.crt", "ca.key", "uwsgi.crt", "uwsgi.key", "nginx.crt", "nginx.key", "probe.crt", "probe.key")
# What each side needs of the set, when they live apart (see give()).
PARTS = {"nginx": ("ca.crt", "nginx.crt", "nginx.key"),
         "uwsgi": ("ca.crt", "uwsgi.crt", "uwsgi.key", "probe.crt", "probe.key")}


def _openssl(*args: str, cwd: Path) -> str:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def _key(name: str, cwd: Path) -> None:
    # P-256: small, fast handshakes, supported by every OpenSSL that nginx and uWSGI link.
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", name, cwd=cwd)
    (cwd / name).chmod(0o600)


def _signed(name: str, subject: str, extensions: str, cwd: Path) -> None:
    """name.key and name.crt, signed by the CA in cwd, with the given X.509v3 extensions."""
    _key(f"{name}.key", cwd)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", str(DAYS), "-sha256", "-extfile", f"{name}.ext",
             "-out", f"{name}.crt", cwd=cwd)
    (cwd / f"{name}.csr").unlink()
    (cwd / f"{name}.ext").unlink()


def _server_names(folder: Path) -> list[str]:
    # -text, not -ext: OpenSSL 1.1 (older Ubuntu) has no -ext.
    text = _openssl("x509", "-in", "uwsgi.crt", "-noout", "-text", cwd=folder)
    return sorted(re.findall(r"DNS:([^,\s]+)", text))


def still_good(folder: Path, names=DEFAULT_NAMES) -> bool:
    """Every file there, both certificates signed by that CA, for these names, not about to expire."""
    folder = Path(folder)
    if not all((folder / f).is_file() for f in FILES):
        return False
    try:
        _openssl("verify", "-CAfile", "ca.crt", "uwsgi.crt", "nginx.crt", "probe.crt", cwd=folder)
        for cert in ("ca.crt", "uwsgi.crt", "nginx.crt", "probe.crt"):
            _openssl("x509", "-in", cert, "-noout", "-checkend", str(RENEW_BEFORE), cwd=folder)
        return _server_names(folder) == sorted(names)
    except RuntimeError:
        return False


def make(folder: Path, names=DEFAULT_NAMES) -> Path:
    """The CA, uWSGI's server certificate for `names`, nginx's and the probe's client certificates, in folder."""
    if not shutil.which("openssl"):
        raise RuntimeError("openssl is not installed: run ./workshop.sh setup")
    folder = Path(folder)
    if still_good(folder, names):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)   # keys inside; nginx's and uWSGI's masters read them at start, as this user
    # Made in a fresh folder next to the old one, then moved in: a server
    # never sees half a set.
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        work = Path(scratch)
        _key("ca.key", work)
        _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=workshop private CA",
                 "-days", str(DAYS), "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.crt", cwd=work)
        sans = ",".join([f"DNS:{n}" for n in names] + ["IP:127.0.0.1"])
        _signed("uwsgi", f"/CN={names[0]}",
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n", work)
        for client in ("nginx", "probe"):
            _signed(client, f"/CN={client}",
                    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=clientAuth\n", work)
        for name in FILES:
            (work / name).replace(folder / name)
    return folder


def give(folder: Path, part: str, dest: Path) -> Path:
    """Copy one side's files (PARTS[part]) from a made set in folder to dest, keys mode 600."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o700)
    for name in PARTS[part]:
        data = (Path(folder) / name).read_bytes()
        if (dest / name).is_file() and (dest / name).read_bytes() == data:
            continue   # unchanged: leave the file a running server may hold open alone
        scratch = dest / f".{name}.new"
        scratch.write_bytes(data)
        scratch.chmod(0o600 if name.endswith(".key") else 0o644)
        scratch.replace(dest / name)
    return dest


def main(argv: list[str]) -> int:
    args = list(argv)
    parts = []
    while "--give" in args:
        at = args.index("--give")
        part, _, dest = (args[at + 1] if at + 1 < len(args) else "").partition("=")
        if part not in PARTS or not dest:
            print(f"--give takes {' or '.join(f'{p}=FOLDER' for p in PARTS)}", file=sys.stderr)
            return 2
        parts.append((part, Path(dest)))
        del args[at:at + 2]
    if not args or args[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        folder = make(Path(args[0]), tuple(args[1:]) or DEFAULT_NAMES)
        for part, dest in parts:
            give(folder, part, dest)
        print(folder)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
