#!/usr/bin/env bash
# Set up everything the workshop needs on Debian/Ubuntu, idempotently:
#   system packages (nginx, python3-venv, ...) with apt-get, a virtualenv in
#   .venv, and the pinned requirements.txt. A second run only checks.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

say() { echo "[setup] $*"; }

# macOS with Homebrew: the same tools under Homebrew's names. Not tested on
# the workshop's own machines (they run Debian); the dev container is the
# tested way on a Mac or Windows laptop.
install_with_brew() {
    local formulae=()
    for pkg in "${need[@]}"; do
        case "$pkg" in
            nginx|curl|wrk|prometheus) formulae+=("$pkg") ;;
            prometheus-nginx-exporter) formulae+=(nginx-prometheus-exporter) ;;
            npm) formulae+=(node) ;;
            util-linux) formulae+=(util-linux) ;;   # setsid (keg-only: see below)
            build-essential|python3-dev) say "needs a C compiler: xcode-select --install" ;;
            python3-venv) say "needs a python3 with venv: brew install python@3.11" ;;
            iproute2) ;;   # ss only names a port's owner in the checks' messages
        esac
    done
    command -v brew >/dev/null || { echo "[setup] Please install Homebrew (brew.sh), then run this again;" \
        "or open the repository in its dev container." >&2; exit 1; }
    [ ${#formulae[@]} -eq 0 ] || { say "installing ${formulae[*]} with brew"; brew install "${formulae[@]}"; }
    # Homebrew keeps util-linux's setsid off PATH; lessons/common.sh needs it.
    [ -d "$(brew --prefix)/opt/util-linux/bin" ] && export PATH="$PATH:$(brew --prefix)/opt/util-linux/bin"
    return 0
}

# ---- system packages ----
need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v curl  >/dev/null || need+=(curl)
command -v wrk   >/dev/null || need+=(wrk)        # the benchmark's load generator
command -v ss    >/dev/null || need+=(iproute2)      # "who uses this port?" in the checks' hints
command -v setsid >/dev/null || need+=(util-linux)
# Lesson 07: a real Prometheus, and the exporter of nginx's stub_status.
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-nginx-exporter >/dev/null || command -v nginx-prometheus-exporter >/dev/null ||
    need+=(prometheus-nginx-exporter)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
# The pinned requirements (numpy, pymdown-extensions) need Python 3.11.5 or newer.
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11, 5))' || {
    echo "[setup] Python $(python3 -c 'import platform; print(platform.python_version())') is too old:" \
         "the pinned requirements need 3.11.5 or newer (Debian 12 ships 3.11.2)." \
         "Open the repository in its dev container (.devcontainer/), or put a newer python3 first on PATH." >&2
    exit 1
}
# pip compiles uWSGI: it needs a C compiler and the headers of this Python.
command -v gcc >/dev/null || need+=(build-essential)
# ... and OpenSSL's headers: uWSGI links OpenSSL only when it finds them, and
# lessons 05-08 speak TLS to it (ssl-socket).
[ -e /usr/include/openssl/ssl.h ] || [ "$(uname -s)" = Darwin ] || need+=(libssl-dev)
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
    elif ! command -v apt-get >/dev/null && [ "$(uname -s)" = Darwin ]; then
        install_with_brew   # macOS: not tested on the workshop's own machines
        need=() optional=()
    elif ! command -v apt-get >/dev/null; then
        echo "[setup] Please install: ${need[*]} (Debian/Ubuntu package names; this script" \
             "knows apt-get, and Homebrew on macOS). Or open the repository in its dev container." >&2
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
        # Debian starts Prometheus and its exporters as services on install, on
        # the ports lesson 07 uses (9090, 9113): the workshop runs its own copies.
        if [[ " ${need[*]} " == *" prometheus"* ]] && [ -d /run/systemd/system ]; then
            $SUDO systemctl disable --now prometheus prometheus-nginx-exporter \
                prometheus-node-exporter 2>/dev/null || true
        fi
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
# Which torch build: the CPU-only one (a few hundred MB) unless this machine
# has an NVIDIA GPU, where PyPI's CUDA build (several GB) is the one that
# uses it. SEG_TORCH_BUILD=cpu|cuda|pypi overrides the choice.
CPU_INDEX=https://download.pytorch.org/whl/cpu
torch_build() {
    case "${SEG_TORCH_BUILD:-auto}" in
        cpu)  echo "cpu:SEG_TORCH_BUILD=cpu" ;;
        cuda|pypi) echo "pypi:SEG_TORCH_BUILD=${SEG_TORCH_BUILD}" ;;
        auto)
            if command -v nvidia-smi >/dev/null || [ -e /proc/driver/nvidia/version ]; then
                echo "pypi:an NVIDIA GPU is here, and PyPI's build of torch is the CUDA one"
            elif curl -fsS -o /dev/null --max-time 10 "$CPU_INDEX/torch/" 2>/dev/null; then
                echo "cpu:no NVIDIA GPU here, so the CPU-only build (much smaller)"
            else
                echo "pypi:no NVIDIA GPU here, but PyTorch's CPU wheel index cannot be reached: PyPI's (CUDA) build instead, which is larger"
            fi ;;
        *) echo "[setup] SEG_TORCH_BUILD must be cpu, cuda or pypi, not '$SEG_TORCH_BUILD'" >&2; exit 2 ;;
    esac
}

if [ ! -x .venv/bin/python ]; then
    say "creating the virtualenv .venv"
    python3 -m venv .venv
fi
want=$(cat requirements.txt requirements-service.txt | sha256sum | cut -d' ' -f1)
have=$(cat .venv/.requirements.sha256 2>/dev/null || true)
if [ "$want" != "$have" ]; then
    started=$(date +%s)
    choice=$(torch_build)
    build=${choice%%:*}
    say "torch: the ${build/pypi/PyPI} build (${choice#*:})"
    say "installing requirements.txt into .venv: the first time downloads hundreds of MB (several GB for CUDA)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    pins=$(grep -E '^(torch|torchvision)==' requirements-service.txt | cut -d' ' -f1)
    if [ "$build" = cpu ]; then
        # torch==2.14.1 is satisfied by the CPU index's 2.14.1+cpu.
        # shellcheck disable=SC2086  # the pins are two words on purpose
        .venv/bin/python -m pip install --progress-bar on --index-url "$CPU_INDEX" $pins
    fi
    # pip's own progress bars; what is already there is not worth a line each.
    .venv/bin/python -m pip install --progress-bar on -r requirements.txt |
        { grep -v '^Requirement already satisfied' || true; }
    echo "$want" > .venv/.requirements.sha256
    say "installed in $(( $(date +%s) - started )) s"
fi
# A uWSGI compiled before OpenSSL's headers were there has no ssl-socket:
# compile it again (pip would keep the old build from its cache).
case "$(.venv/bin/uwsgi --help 2>/dev/null || true)" in
    *--ssl-socket*) ;;
    *) say "uwsgi was built without OpenSSL (no ssl-socket): building it again"
       .venv/bin/python -m pip install --quiet --force-reinstall --no-cache-dir --no-deps \
           "$(grep -iE '^uwsgi==' requirements-service.txt | cut -d' ' -f1)" ;;
esac
torch_version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("torch"))')
say "ready: $(.venv/bin/python --version), torch $torch_version, uwsgi $(.venv/bin/uwsgi --version), $(nginx -v 2>&1)"
