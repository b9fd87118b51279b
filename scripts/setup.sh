#!/usr/bin/env bash
# Set up everything the workshop needs on Debian/Ubuntu, idempotently:
#   system packages (nginx, python3-venv, ...) with apt-get, a virtualenv in
#   .venv, and the pinned requirements.txt. A second run only checks.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

say() { echo "[setup] $*"; }

# ---- system packages ----
need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v curl  >/dev/null || need+=(curl)
command -v wrk   >/dev/null || need+=(wrk)        # the benchmark's load generator
command -v ss    >/dev/null || need+=(iproute2)      # "who uses this port?" in the checks' hints
command -v setsid >/dev/null || need+=(util-linux)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
# pip compiles uWSGI: it needs a C compiler and the headers of this Python.
command -v gcc >/dev/null || need+=(build-essential)
# The guide: npm fetches the diagram library at build time.
command -v npm >/dev/null || need+=(npm)
# Nice to have: the guide's checks open every page in headless Chromium
# (skipped without it, except in CI). Tried once; a failure is not fatal
# (on Ubuntu, chromium is a snap that containers often cannot install).
optional=()
if ! command -v chromium >/dev/null && { [ -n "${CI:-}" ] || [ ! -e .setup-stamp ]; }; then
    optional+=(chromium)
fi
python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || need+=(python3-dev)
if [ ${#need[@]} -gt 0 ] || [ ${#optional[@]} -gt 0 ]; then
    if [ ${#need[@]} -eq 0 ] && { ! command -v apt-get >/dev/null ||
            { [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; }; }; then
        optional=()   # nothing required is missing: skip the nice-to-haves
    elif ! command -v apt-get >/dev/null; then
        echo "[setup] Please install: ${need[*]} (this script knows apt-get only: Debian/Ubuntu)." >&2
        exit 1
    fi
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "[setup] Need root or sudo to install: ${need[*]}" >&2; exit 1; }
        SUDO=sudo
    fi
    if [ ${#need[@]} -gt 0 ] || [ ${#optional[@]} -gt 0 ]; then
        say "installing ${need[*]} ${optional[*]} with apt-get"
        $SUDO apt-get update -qq
    fi
    if [ ${#need[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if [ ${#optional[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${optional[@]}" >/dev/null \
            || say "could not install ${optional[*]}: the guide's browser checks will be skipped"
        touch .setup-stamp
    fi
fi
# Debian starts nginx as a service on install; the workshop runs its own copies.
export PATH="$PATH:/usr/sbin"

# ---- Python ----
if [ ! -x .venv/bin/python ]; then
    say "creating the virtualenv .venv"
    python3 -m venv .venv
fi
want=$(cat requirements.txt requirements-service.txt | sha256sum | cut -d' ' -f1)
have=$(cat .venv/.requirements.sha256 2>/dev/null || true)
if [ "$want" != "$have" ]; then
    say "installing requirements.txt into .venv (torch is large: a few minutes the first time)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r requirements.txt
    echo "$want" > .venv/.requirements.sha256
fi
say "ready: $(.venv/bin/python --version), uwsgi $(.venv/bin/uwsgi --version), $(nginx -v 2>&1)"
