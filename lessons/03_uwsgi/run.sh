#!/usr/bin/env bash
# Lesson 03: the segmentation app under uWSGI on 127.0.0.1:$PORT.
# Ctrl-C stops uWSGI and its workers. Extra arguments go to uwsgi,
# e.g. ./run.sh --processes 4
source "$(dirname "$0")/../common.sh"
start_bg uwsgi uwsgi --ini inference.ini "$@"
wait_ready "http://127.0.0.1:$PORT/readyz" "$RUN_DIR/stats.sock"
watch_all
