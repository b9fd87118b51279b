#!/usr/bin/env bash
# Lesson 07: lesson 05's stack, measured. Two uWSGI upstreams behind nginx on
# 127.0.0.1:$PORT, each serving its metrics on a port of its own; exporters
# for uWSGI and nginx; Prometheus on 127.0.0.1:$PROMETHEUS_PORT scraping them
# all every second. Ctrl-C stops everything. Extra arguments go to both uwsgi.
source "$(dirname "$0")/../common.sh"

# Where the watchers listen, all on 127.0.0.1 (export another value to move one).
export PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
export METRICS_PORT1=${METRICS_PORT1:-9101}             # upstream 1's /metrics (its mule)
export METRICS_PORT2=${METRICS_PORT2:-9102}             # upstream 2's /metrics
export STATS_EXPORTER_PORT=${STATS_EXPORTER_PORT:-9117}   # uWSGI stats (never UWSGI_...: uWSGI reads those as options)
export NGINX_STATUS_PORT=${NGINX_STATUS_PORT:-8080}     # nginx's stub_status
export NGINX_EXPORTER_PORT=${NGINX_EXPORTER_PORT:-9113}

# ---- lesson 05's stack, as its run.sh starts it; the upstreams measured ----
python -m workshop.certs "$RUN_DIR/tls" >/dev/null   # lesson 05's private CA (TLS to uWSGI)
start_bg uwsgi1 uwsgi --ini inference1.ini "$@"
start_bg uwsgi2 uwsgi --ini inference2.ini "$@"
# Lessons 04/05's templates as they are, plus status.conf.template: stub_status.
conf=$(render_nginx ../04_nginx/inference.conf.template ../05_multi_upstream/upstream.conf.template \
    status.conf.template \
    LISTEN="127.0.0.1:$PORT" SERVER_NAME=localhost UPSTREAM=suwsgi://uwsgi_cluster \
    UDS_UPSTREAM="unix:$RUN_DIR/inference1.sock" TCP_UPSTREAM="$TCP_HOST:$TCP_PORT" \
    STATUS_PORT="$NGINX_STATUS_PORT" STATIC_ROOT="$(dirname "$LESSON_DIR")/04_nginx/static")
ln -sfn ../tls "$RUN_DIR/nginx/tls"   # as lesson 05: nginx's certificate next to its nginx.conf
nginx -t -q -p "$RUN_DIR/nginx" -c "$conf"
start_bg nginx nginx -p "$RUN_DIR/nginx" -c "$conf"

# ---- the exporters: uWSGI's stats sockets and nginx's stub_status as metrics ----
start_bg uwsgi-exporter python -m workshop.uwsgi_exporter --listen "127.0.0.1:$STATS_EXPORTER_PORT" \
    uwsgi1="$RUN_DIR/stats1.sock" uwsgi2="$RUN_DIR/stats2.sock"
exporter=$(command -v prometheus-nginx-exporter || echo nginx-prometheus-exporter)  # Debian's name, or Homebrew's
start_bg nginx-exporter "$exporter" -nginx.retries 20 -nginx.retry-interval 500ms \
    -nginx.scrape-uri "http://127.0.0.1:$NGINX_STATUS_PORT/stub_status" \
    -web.listen-address "127.0.0.1:$NGINX_EXPORTER_PORT"

# ---- Prometheus: its config, rules and data in $RUN_DIR/prometheus ----
prom="$RUN_DIR/prometheus"
mkdir -p "$prom/targets"
cp prometheus.yml rules.yml "$prom/"
# The targets of this run (prometheus.yml reads them with file_sd_configs).
cat > "$prom/targets/app.yml" <<TARGETS
- {targets: ["127.0.0.1:$METRICS_PORT1"], labels: {upstream: uwsgi1}}
- {targets: ["127.0.0.1:$METRICS_PORT2"], labels: {upstream: uwsgi2}}
TARGETS
echo "- {targets: [\"127.0.0.1:$STATS_EXPORTER_PORT\"]}" > "$prom/targets/uwsgi.yml"
echo "- {targets: [\"127.0.0.1:$NGINX_EXPORTER_PORT\"]}" > "$prom/targets/nginx.yml"
echo "- {targets: [\"127.0.0.1:$PROMETHEUS_PORT\"]}" > "$prom/targets/prometheus.yml"
promtool check config "$prom/prometheus.yml" >/dev/null   # also checks rules.yml
start_bg prometheus prometheus --config.file="$prom/prometheus.yml" \
    --storage.tsdb.path="$prom/data" --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
    --log.level=warn

wait_ready "http://127.0.0.1:$PORT/readyz" "$RUN_DIR/stats1.sock" "$RUN_DIR/stats2.sock"
echo "[run] Prometheus: http://127.0.0.1:$PROMETHEUS_PORT/classic/targets (every target should be UP)"
watch_all
