#!/usr/bin/env bash
# Lesson 04: uWSGI on a unix socket, nginx in front on 127.0.0.1:$PORT.
# Ctrl-C stops both. Extra arguments go to uwsgi.
source "$(dirname "$0")/../common.sh"

start_bg uwsgi uwsgi --ini inference.ini "$@"

# Render the site for a private nginx (no root needed), check it, start it.
conf=$(render_nginx inference.conf.template \
    LISTEN="127.0.0.1:$PORT" SERVER_NAME=localhost UPSTREAM="unix:$RUN_DIR/inference.sock" \
    STATIC_ROOT="$LESSON_DIR/static")
nginx -t -q -p "$RUN_DIR/nginx" -c "$conf"
start_bg nginx nginx -p "$RUN_DIR/nginx" -c "$conf"

echo "[run] nginx on 127.0.0.1:$PORT -> uWSGI at $RUN_DIR/inference.sock; the page: http://127.0.0.1:$PORT/"
wait_ready "http://127.0.0.1:$PORT/readyz" "$RUN_DIR/stats.sock"
watch_all
