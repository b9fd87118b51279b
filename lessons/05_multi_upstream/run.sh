#!/usr/bin/env bash
# Lesson 05: two uWSGI servers (unix socket + TCP) behind one nginx on
# 127.0.0.1:$PORT. Ctrl-C stops all three. Extra arguments go to both uwsgi.
source "$(dirname "$0")/../common.sh"

# A private CA, uWSGI's certificate and nginx's, in $RUN_DIR/tls (kept while
# they are valid): uWSGI serves only the client holding nginx's.
python -m workshop.certs "$RUN_DIR/tls" >/dev/null

start_bg uwsgi1 uwsgi --ini inference1.ini "$@"
start_bg uwsgi2 uwsgi --ini inference2.ini "$@"

# Lesson 04's server block, pointed at the pool defined in upstream.conf.template,
# over TLS (suwsgi://).
conf=$(render_nginx ../04_nginx/inference.conf.template upstream.conf.template \
    LISTEN="127.0.0.1:$PORT" SERVER_NAME=localhost UPSTREAM=suwsgi://uwsgi_cluster \
    UDS_UPSTREAM="unix:$RUN_DIR/inference1.sock" TCP_UPSTREAM="$TCP_HOST:$TCP_PORT" \
    STATIC_ROOT="$(dirname "$LESSON_DIR")/04_nginx/static")
ln -sfn ../tls "$RUN_DIR/nginx/tls"   # nginx finds tls/nginx.crt next to its nginx.conf
nginx -t -q -p "$RUN_DIR/nginx" -c "$conf"
start_bg nginx nginx -p "$RUN_DIR/nginx" -c "$conf"

wait_ready "http://127.0.0.1:$PORT/readyz" "$RUN_DIR/stats1.sock" "$RUN_DIR/stats2.sock"
echo "[run] the page: http://127.0.0.1:$PORT/ (upload twice: two upstreams)"
echo "[run] try: for i in 1 2 3 4; do curl -s -o /dev/null -D- localhost:$PORT/readyz | grep X-Upstream; done"
echo "[run] and knock on upstream 2 as a stranger: python -m workshop.door $TCP_HOST:$TCP_PORT"
watch_all
