#!/usr/bin/env bash
# Stop what tools/podman/setup.sh started.
#
#   tools/podman/teardown.sh               stop the podman API service and the
#                                          health-check runner (images are kept)
#   tools/podman/teardown.sh --containers  also remove all containers and pods
#                                          (their conmon processes go with them)
#   tools/podman/teardown.sh --purge       all of the above, plus the stand-in
#                                          images, the Compose venv and the state dir
#
# Environment: WORKSHOP_PODMAN_STATE (default /var/tmp/workshop-podman).
set -euo pipefail

STATE=${WORKSHOP_PODMAN_STATE:-/var/tmp/workshop-podman}
SOCK="$STATE/podman.sock"
LABEL=org.workshop.standin.recipe
CONTAINERS=0 PURGE=0
for a in "$@"; do
    case "$a" in
        --containers) CONTAINERS=1 ;;
        --purge) CONTAINERS=1 PURGE=1 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "teardown.sh: unknown option $a" >&2; exit 2 ;;
    esac
done
[ -d "$STATE" ] || { echo "teardown.sh: nothing to do ($STATE does not exist)"; exit 0; }
exec 9>"$STATE/.lock"
flock 9
[ -f "$STATE/containers.conf" ] && export CONTAINERS_CONF="$STATE/containers.conf"

stop_pid() { # NAME PIDFILE PATTERN: stop the process only if it is ours
    local name=$1 file=$2 pattern=$3 pid
    pid=$(cat "$file" 2>/dev/null) || return 0
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] \
       && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$pattern"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
        if [ -e "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
        echo "stopped $name (pid $pid)"
    fi
    rm -f "$file"
}

if [ "$CONTAINERS" = 1 ] && command -v podman >/dev/null; then
    n=$(podman ps -aq | wc -l)
    if [ "$n" -gt 0 ]; then
        podman pod rm -af -t 5 >/dev/null 2>&1 || true
        podman rm -af -t 5 >/dev/null
        echo "removed $n container(s)"
    fi
fi

# A health check that races with `compose down` can leave the exec session's
# conmon sleeping for its 300 s --exit-delay after the container is gone; end
# those (only conmons of exec sessions whose container no longer exists).
if command -v podman >/dev/null; then
    ended=0
    for pid in $(pgrep -x conmon || true); do
        cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || continue
        case "$cmd" in *" --exec-attach "*) ;; *) continue ;; esac
        cid=$(sed -n 's/.* -c \([0-9a-f]\{64\}\) .*/\1/p' <<<"$cmd")
        if [ -n "$cid" ] && ! podman container exists "$cid" && kill "$pid" 2>/dev/null; then
            ended=$((ended + 1))
        fi
    done
    [ "$ended" = 0 ] || echo "ended $ended stale exec-session conmon process(es)"
fi

stop_pid "health-check runner" "$STATE/ticker.pid" "healthcheck-ticker.py $SOCK"
stop_pid "podman system service" "$STATE/service.pid" "system service .*unix://$SOCK"
rm -f "$SOCK"

if command -v podman >/dev/null && [ "$CONTAINERS" = 0 ]; then
    left=$(podman ps --format '{{.Names}}' 2>/dev/null | paste -sd' ' -)
    [ -z "$left" ] || echo "still running (not started by this script; 'teardown.sh --containers' removes them): $left"
fi

if [ "$PURGE" = 1 ]; then
    for img in $(podman images -q --filter "label=$LABEL" 2>/dev/null | sort -u); do
        podman rmi -f "$img" >/dev/null 2>&1 || true
    done
    podman rmi -f localhost/workshop-standin/debian-rootfs:bookworm >/dev/null 2>&1 || true
    echo "removed the stand-in images"
    exec 9>&-
    rm -rf "$STATE"
    echo "removed $STATE"
fi
