# Sourced by every lesson's run.sh. It does the chores so run.sh can show
# only the commands that matter:
#   - work in the lesson's folder, with the workshop's virtualenv on PATH;
#   - RUN_DIR: where sockets, logs and rendered configs go (not the repo);
#   - start_bg/wait_any: start servers, and stop *all* of them on Ctrl-C or
#     as soon as one of them dies, then remove their sockets.
set -euo pipefail

LESSON_DIR=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
cd "$LESSON_DIR"
WORKSHOP_ROOT=$(cd "$LESSON_DIR/../.." && pwd)   # lessons/NN_x or workspace/NN_x
export WORKSHOP_ROOT

if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$WORKSHOP_ROOT/.venv/bin/python" ]; then
    export VIRTUAL_ENV="$WORKSHOP_ROOT/.venv" PATH="$WORKSHOP_ROOT/.venv/bin:$PATH"
fi
command -v python >/dev/null || { echo "No python: run 'make setup' in $WORKSHOP_ROOT first." >&2; exit 1; }
export PYTHONPATH="$WORKSHOP_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1   # logs appear as they happen, not when a buffer fills

: "${RUN_DIR:=$WORKSHOP_ROOT/run/$(basename "$LESSON_DIR")}"
mkdir -p "$RUN_DIR"
chmod 755 "$RUN_DIR"       # nginx's workers must be able to reach the socket in it
export RUN_DIR

_pids=()
start_bg() {  # start_bg NAME CMD...: run CMD in the background, remember it
    local name=$1; shift
    echo "[run] $name: $*"
    # setsid: the server gets its own session, so Ctrl-C reaches only this
    # script, which then stops each server once, in order. (A uWSGI worker
    # hit by the terminal's SIGINT *and* by its master's stop signal can
    # deadlock in torch's exit handlers.)
    setsid "$@" &
    _pids+=($!)
}

stop_all() {
    trap - INT TERM EXIT
    if [ ${#_pids[@]} -gt 0 ]; then
        echo "[run] stopping ${#_pids[@]} process(es)..."
        kill -TERM "${_pids[@]}" 2>/dev/null || true
        wait "${_pids[@]}" 2>/dev/null || true
    fi
    rm -f "$RUN_DIR"/*.sock
    echo "[run] stopped"
}

wait_any() {  # block until Ctrl-C or until any server exits, then stop them all
    trap stop_all INT TERM EXIT
    wait -n "${_pids[@]}" || true
}

# Defaults every lesson agrees on; export PORT=8080 (etc.) before run.sh to move them.
export PORT=${PORT:-5000}          # where the client talks: Flask, uWSGI or nginx
export TCP_PORT=${TCP_PORT:-8001}  # lesson 05's second upstream (TCP)
# Started as root, nginx's workers run as www-data: uWSGI then hands its socket
# to that group (mode 660), never to everyone (666). See lesson 04.
if [ "$(id -u)" = 0 ]; then export SOCKET_OWNER=${SOCKET_OWNER:-root:www-data}; fi

render_nginx() {  # render_nginx TEMPLATE... NAME=VALUE...: print the main config's path
    python -m workshop.nginx local "$RUN_DIR/nginx" "$@"
}
