# Sourced by every lesson's run.sh. It does the chores so run.sh can show
# only the commands that matter:
#   - work in the lesson's folder, with the workshop's virtualenv on PATH;
#   - RUN_DIR: where sockets, logs and rendered configs go (not the repo);
#   - start_bg / wait_ready / watch_all: start servers, wait until the stack
#     answers (stop everything if one dies on the way), then keep watching
#     until Ctrl-C, which stops *all* of them gracefully (requests in flight
#     finish, for at most STOP_MERCY seconds) and removes their sockets.
set -euo pipefail

LESSON_DIR=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
cd "$LESSON_DIR"
WORKSHOP_ROOT=$(cd "$LESSON_DIR/../.." && pwd)   # lessons/NN_x or workspace/NN_x
export WORKSHOP_ROOT

if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$WORKSHOP_ROOT/.venv/bin/python" ]; then
    export VIRTUAL_ENV="$WORKSHOP_ROOT/.venv" PATH="$WORKSHOP_ROOT/.venv/bin:$PATH"
fi
command -v python >/dev/null || { echo "No python: run './workshop.sh setup' in $WORKSHOP_ROOT first." >&2; exit 1; }
export PYTHONPATH="$WORKSHOP_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1   # logs appear as they happen, not when a buffer fills

: "${RUN_DIR:=$WORKSHOP_ROOT/run/$(basename "$LESSON_DIR")}"
mkdir -p "$RUN_DIR"
chmod 755 "$RUN_DIR"       # nginx's workers must be able to reach the socket in it
export RUN_DIR

# How long a stop may take before what is left is killed: the mercy that
# lessons/03_uwsgi/workers.ini explains (harakiri's 20 s plus time to exit).
export STOP_MERCY=${STOP_MERCY:-30}

_pids=() _names=()
start_bg() {  # start_bg NAME CMD...: run CMD in the background, remember it
    local name=$1; shift
    echo "[run] $name: $*"
    # setsid: the server gets its own session, so Ctrl-C reaches only this
    # script, which then stops each server once, in order. (A uWSGI worker
    # that gets a stop signal itself ends at once, cutting its request; one
    # hit by the terminal's SIGINT *and* by its master can even deadlock in
    # torch's exit handlers.)
    setsid "$@" &
    _pids+=($!) _names+=("$name")
    trap stop_all INT TERM EXIT   # from now on, any exit stops what we started
}

stop_all() {
    trap - EXIT
    trap _kill_all INT TERM       # Ctrl-C again: stop waiting, kill at once
    if [ ${#_pids[@]} -gt 0 ]; then
        echo "[run] stopping ${#_pids[@]} process(es): requests in flight finish first" \
             "(at most ${STOP_MERCY} s; Ctrl-C again stops at once)"
        local i
        for i in "${!_pids[@]}"; do
            # Graceful for both: nginx stops on QUIT (its TERM would drop the
            # requests in flight), uWSGI on TERM (workers.ini).
            case ${_names[$i]} in
                nginx*) kill -QUIT "${_pids[$i]}" 2>/dev/null || true ;;
                *)      kill -TERM "${_pids[$i]}" 2>/dev/null || true ;;
            esac
        done
        local deadline=$((SECONDS + STOP_MERCY))
        while _any_alive && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
        _kill_all
        wait 2>/dev/null || true
    fi
    rm -f "$RUN_DIR"/*.sock
    echo "[run] stopped"
}

_any_alive() {  # is any process left in the servers' process groups (setsid made one each)?
    local pid
    for pid in "${_pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done
    return 1
}

_kill_all() {  # SIGKILL whatever is left of each server, its workers too
    local pid
    for pid in "${_pids[@]}"; do
        if kill -0 -- "-$pid" 2>/dev/null; then
            echo "[run] process group $pid still running: killing it" >&2
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
    done
}

wait_ready() {  # wait_ready URL [FILE...]: until URL answers and the FILEs exist
    # (uWSGI's stats socket appears once its master has set up its signal
    # handlers: a stop signal sent before that moment would be lost).
    # If a server dies on the way, stop everything.
    local url=$1; shift
    for _ in $(seq 1200); do
        local missing=0
        for f in "$@"; do [ -e "$f" ] || missing=1; done
        if [ $missing = 0 ] && curl -fsS -o /dev/null "$url" 2>/dev/null; then
            echo "[run] ready: ${url%/readyz}/infer  (Ctrl-C stops everything)"
            return 0
        fi
        for pid in "${_pids[@]}"; do
            kill -0 "$pid" 2>/dev/null || { echo "[run] process $pid exited during start-up" >&2; exit 1; }
        done
        sleep 0.1
    done
    echo "[run] $url did not answer within 120 s" >&2
    exit 1
}

watch_all() {  # after start-up: report servers that exit, keep the others, until Ctrl-C
    local alive=("${_pids[@]}")
    while [ ${#alive[@]} -gt 0 ]; do
        sleep 0.5 & wait $!
        local still=()
        for pid in "${alive[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then still+=("$pid")
            else echo "[run] process $pid exited; the others keep running (Ctrl-C stops them)"; fi
        done
        alive=("${still[@]}")
    done
}

# Defaults every lesson agrees on; export PORT=8080 (etc.) before run.sh to move them.
export PORT=${PORT:-5000}          # where the client talks: Flask, uWSGI or nginx
export TCP_HOST=${TCP_HOST:-127.0.0.1}  # lesson 05's second upstream (TCP) ...
export TCP_PORT=${TCP_PORT:-8001}       # ... listens here (0.0.0.0 in a container)
# Started as root, nginx's workers run as www-data: uWSGI then hands its socket
# to that group (mode 660), never to everyone (666). See lesson 04.
if [ "$(id -u)" = 0 ]; then export SOCKET_OWNER=${SOCKET_OWNER:-root:www-data}; fi

render_nginx() {  # render_nginx TEMPLATE... NAME=VALUE...: print the main config's path
    python -m workshop.nginx local "$RUN_DIR/nginx" "$@"
}
