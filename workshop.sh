#!/usr/bin/env bash
# The workshop's one entry point. Every command sets up what it needs first
# (apt packages, the .venv virtualenv, pinned requirements); a second run is quick.
#
#   ./workshop.sh demo          the full stack segments a sample photo (writes out/demo-overlay.png)
#   ./workshop.sh check         the guide's strict build + every check of the lessons, the guide, exercise mode
#   ./workshop.sh check LESSON  one lesson's checks, e.g. ./workshop.sh check 03 (or 3, uwsgi)
#   ./workshop.sh check-dev     the workshop's own checks: every exercise fails unsolved, the benchmark runs
#   ./workshop.sh docs          the guide at http://127.0.0.1:8000 (mkdocs serve)
#   ./workshop.sh setup         only the setup
#   ./workshop.sh bench [--quick]  what each stage costs (about 11 minutes; --quick about 2 minutes) -> bench/results/
#   ./workshop.sh check-docker  lesson 06 with real containers (Docker, else podman; slow the first time)
#
# Exercise mode (the checks then test your workspace/; lessons/ holds the solutions):
#   ./workshop.sh workspace     copy the lessons to workspace/, the parts to write as TODOs
#   ./workshop.sh hint [NN|NN.K] the next hint for the exercise at hand (--all: every hint)
#   ./workshop.sh reset LESSON  start one lesson of workspace/ again (the old one is kept)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")" && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
export NO_MKDOCS_2_WARNING=1   # mkdocs-material prints an advert for its successor otherwise

cmd=${1:-help}; shift || true
case "$cmd" in
  setup) bash scripts/setup.sh ;;
  demo)  bash scripts/setup.sh && "$PY" -m workshop.demo "$@" ;;
  check)
    bash scripts/setup.sh
    if [ $# -gt 0 ] && [ "${1:0:1}" != - ]; then   # one lesson: 3, 03, 03_uwsgi, uwsgi
      lesson=$("$PY" -m workshop.lessons name "$1") || exit 2
      exec "$PY" -m pytest checks/test_"${lesson:0:2}"_*.py "${@:2}"
    fi
    # The guide first: its checks (checks/test_guide.py) open the built site.
    "$PY" -m mkdocs build --strict --quiet --site-dir site
    "$PY" -m pytest checks/ "$@"   # pytest.ini leaves out the dev checks
    ;;
  check-dev)   # for whoever changes the workshop (CI runs it): slow, one lesson run per exercise
    bash scripts/setup.sh
    exec "$PY" -m pytest checks/ -m dev "$@"
    ;;
  docs)  bash scripts/setup.sh && exec "$PY" -m mkdocs serve "$@" ;;
  bench) bash scripts/setup.sh && exec "$PY" -m bench "$@" ;;
  check-docker)
    bash scripts/setup.sh
    exec tools/podman/with-engine.sh "$PY" -m pytest checks/test_06_*.py "$@"
    ;;
  # Standard library only: they work before the setup, with any python3.
  workspace|hint|reset)
    [ -x "$PY" ] || PY=python3
    exec "$PY" -m workshop.exercises "$cmd" "$@" ;;
  *) sed -n '2,17p' "$0"; [ "$cmd" = help ] || exit 2 ;;
esac
