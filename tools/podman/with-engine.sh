#!/usr/bin/env bash
# Run a command with a container engine: what `./workshop.sh check-docker` uses.
#
#   tools/podman/with-engine.sh CMD...
#
# - A Docker engine answers (`docker info`): CMD runs with it, unchanged, and
#   the images are built from the real base images with the Dockerfiles'
#   default build arguments.
# - Otherwise (these workshop machines): setup.sh prepares podman, its Docker
#   API service and the stand-in base images; CMD runs with env.sh's
#   DOCKER_HOST etc.; the service is stopped again afterwards (teardown.sh),
#   whatever CMD's outcome. Needs root, like setup.sh.
#
# Sets WORKSHOP_ENGINE=1 for CMD (checks/test_06_engine.py's engine check
# runs only then). With podman, also WORKSHOP_IMAGE_ARGS (build arguments)
# unless already set: FETCH_WEIGHTS=0 TORCH_INDEX_URL=, because builds here
# reach PyPI and Debian only (no pretrained weights, no CPU wheel index).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${WORKSHOP_PODMAN_STATE:-/var/tmp/workshop-podman}
[ $# -gt 0 ] || { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
export WORKSHOP_ENGINE=1

# A Docker engine, not podman answering on DOCKER_HOST.
if command -v docker >/dev/null && docker info >/dev/null 2>&1 \
   && ! docker version --format '{{range .Server.Components}}{{.Name}} {{end}}' 2>/dev/null | grep -qi podman; then
    echo "[engine] Docker $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
    exec "$@"
fi

if [ "$(id -u)" != 0 ]; then
    echo "[engine] No Docker engine answers. Install Docker (with the Compose plugin)," >&2
    echo "[engine] or run this as root to use podman instead (tools/podman/README.md)." >&2
    exit 1
fi
echo "[engine] no Docker engine: podman with stand-in base images (tools/podman/README.md)"
"$HERE/setup.sh" >/dev/null
trap '"$HERE/teardown.sh" >/dev/null' EXIT
# shellcheck source=/dev/null
. "$STATE/env.sh"
export WORKSHOP_IMAGE_ARGS=${WORKSHOP_IMAGE_ARGS-FETCH_WEIGHTS=0 TORCH_INDEX_URL=}
"$@"
