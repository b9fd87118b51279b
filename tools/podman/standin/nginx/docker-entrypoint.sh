#!/bin/sh
# Entry point of the workshop's nginx stand-in image.  Behaves like the
# official nginx image's /docker-entrypoint.sh: when the command is `nginx` or
# `nginx-debug`, run the executable *.sh files and source the executable
# *.envsh files in /docker-entrypoint.d/ (in version-sort order), then exec the
# command.  NGINX_ENTRYPOINT_QUIET_LOGS=1 silences its messages.
set -e

entrypoint_log() {
    if [ -z "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ]; then
        echo "$@"
    fi
}

if [ "$1" = "nginx" ] || [ "$1" = "nginx-debug" ]; then
    if find /docker-entrypoint.d/ -mindepth 1 -maxdepth 1 -type f -print -quit 2>/dev/null | read -r _; then
        entrypoint_log "$0: /docker-entrypoint.d/ is not empty, will attempt to perform configuration"
        entrypoint_log "$0: Looking for shell scripts in /docker-entrypoint.d/"
        # A here-document instead of a pipe, so that *.envsh files can export
        # variables into this shell.
        scripts=$(find /docker-entrypoint.d/ -follow -type f -print | sort -V)
        while read -r f; do
            [ -n "$f" ] || continue
            case "$f" in
                *.envsh)
                    if [ -x "$f" ]; then
                        entrypoint_log "$0: Sourcing $f"
                        # shellcheck source=/dev/null
                        . "$f"
                    else
                        entrypoint_log "$0: Ignoring $f, not executable"
                    fi
                    ;;
                *.sh)
                    if [ -x "$f" ]; then
                        entrypoint_log "$0: Launching $f"
                        "$f"
                    else
                        entrypoint_log "$0: Ignoring $f, not executable"
                    fi
                    ;;
                *) entrypoint_log "$0: Ignoring $f" ;;
            esac
        done <<SCRIPTS
$scripts
SCRIPTS
        entrypoint_log "$0: Configuration complete; ready for start up"
    else
        entrypoint_log "$0: No files found in /docker-entrypoint.d/, skipping configuration"
    fi
fi

exec "$@"
