"""One nginx site template, rendered two ways: for production and for a local run.

A lesson's `inference.conf.template` uses `${NAME}` placeholders, the same
syntax the official nginx Docker image fills in from the environment
(lesson 06). Rendering it here:

  production  -> the file you copy to /etc/nginx/sites-available/
  local       -> a prefix folder with its own nginx.conf, so nginx runs
                 without root on 127.0.0.1 (`nginx -p PREFIX -c nginx.conf`)

Command line (from the repository root, with the virtualenv's python):
  python -m workshop.nginx local PREFIX TEMPLATE... NAME=VALUE ...   (the lessons' run.sh)
  python -m workshop.nginx production LESSON_DIR                     (re-render production/)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .markers import strip_markers
from .procs import STOP_MERCY

PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
UWSGI_PARAMS = Path("/etc/nginx/uwsgi_params")

LOCAL_MAIN = """\
# Written by workshop/nginx.py: a private nginx under {prefix}
# (run without root: nginx -p {prefix} -c nginx.conf). Do not edit; edit the template.
{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr notice;
daemon off;
# Stopped with QUIT (lessons/common.sh), nginx finishes the requests in flight;
# after this long it closes what is left (the workshop's stop mercy).
worker_shutdown_timeout {mercy}s;

# Connections, not requests: a request passed to uWSGI holds two (the client's
# and the upstream's), and a slow client holds one the whole time. With 256, a
# few hundred slow uploads take every slot, and nginx closes new connections
# as they come ("worker_connections are not enough"). Each connection is a
# file descriptor: the worker may open twice as many files.
worker_rlimit_nofile 8192;
events {{
    worker_connections 4096;
}}

http {{
    # Every path nginx would otherwise put under /var: kept in the prefix.
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    access_log {prefix}/access.log;

    include {site};
}}
"""


def render(template: str, values: dict[str, str]) -> str:
    """Fill ${NAME} placeholders; a missing value is an error, not an empty string.

    Exercise markers and TODO lines (workshop/markers.py) are dropped: they
    are for the learner's workspace, not for a running nginx or a production file.
    """
    template = strip_markers(template)
    missing = sorted({m for m in PLACEHOLDER.findall(template) if m not in values})
    if missing:
        raise KeyError(f"no value for {', '.join(missing)} in the nginx template")
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def read_values(path: Path) -> dict[str, str]:
    """NAME=VALUE lines (comments with #), e.g. a lesson's production.env."""
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


RERENDER = "python -m workshop.nginx production"


def production(template: Path, values_file: Path) -> str:
    """The file for /etc/nginx/sites-available, with a do-not-edit header."""
    header = (f"# GENERATED from {template.name} with {values_file.name} "
              f"({RERENDER} <lesson folder>).\n# Edit those, not this file.\n")
    return header + render(template.read_text(), read_values(values_file))


def production_files(lesson_dir: Path) -> dict[Path, str]:
    """What a lesson's production/ folder must hold: {path: text}.

    Every `NAME.conf.template` next to a `production.env` renders to
    `production/NAME.conf` with those values (lesson 04 has one).
    """
    lesson_dir = Path(lesson_dir)
    values = lesson_dir / "production.env"
    if not values.exists():
        return {}
    return {lesson_dir / "production" / t.name.removesuffix(".template"): production(t, values)
            for t in sorted(lesson_dir.glob("*.conf.template"))}


def write_local(prefix: Path, templates: list[Path], values: dict[str, str]) -> Path:
    """Render the templates and a main nginx.conf into prefix; return the main config."""
    prefix = Path(prefix).resolve()
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    sites = prefix / "conf.d"
    sites.mkdir(exist_ok=True)
    for old in sites.glob("*.conf"):
        old.unlink()
    for template in templates:
        site = sites / Path(template).name.removesuffix(".template")
        site.write_text(render(Path(template).read_text(), {"LOG_DIR": str(prefix), **values}))
    # `include uwsgi_params;` is looked up next to the main config.
    shutil.copy(UWSGI_PARAMS, prefix / "uwsgi_params")
    # Started as root, nginx's workers drop to an unprivileged user. Name it, so
    # the socket's group (www-data, lesson 04) is the one they run with.
    user = "user www-data www-data;\n" if os.geteuid() == 0 else ""
    main = prefix / "nginx.conf"
    mercy = os.environ.get("STOP_MERCY", STOP_MERCY)  # run.sh's, which a check may shorten
    main.write_text(LOCAL_MAIN.format(prefix=prefix, site=sites / "*.conf", user=user, mercy=mercy))
    return main


def test_config(main_conf: Path, prefix: Path | None = None) -> subprocess.CompletedProcess:
    """`nginx -t`: parse and check a config without starting anything."""
    prefix = prefix or Path(main_conf).parent
    return subprocess.run(["nginx", "-t", "-p", str(prefix), "-c", str(main_conf)],
                          capture_output=True, text=True)


def effective(main_conf: Path, env: dict | None = None) -> str:
    """`nginx -T`: the whole configuration as nginx reads it, every included file inlined."""
    prefix = Path(main_conf).parent
    out = subprocess.run(["nginx", "-T", "-p", str(prefix), "-c", str(main_conf)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"nginx -T failed: {out.stderr.strip()}")
    return out.stdout


def _main(argv: list[str]) -> int:
    if not shutil.which("nginx"):
        print("nginx is not installed: run ./workshop.sh setup (it installs nginx with apt-get).", file=sys.stderr)
        return 1
    if argv[:1] == ["local"] and len(argv) >= 3:
        templates = [Path(a) for a in argv[2:] if "=" not in a]
        values = dict(a.split("=", 1) for a in argv[2:] if "=" in a)
        print(write_local(Path(argv[1]), templates, values))
        return 0
    if argv[:1] == ["production"] and len(argv) == 2:
        files = production_files(Path(argv[1]))
        if not files:
            print(f"{argv[1]} has no production.env: nothing to render", file=sys.stderr)
            return 1
        for path, text in files.items():
            path.write_text(text)
            print(path)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
