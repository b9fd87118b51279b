#!/bin/sh
# Like the official image's 20-envsubst-on-templates.sh: render every
# $NGINX_ENVSUBST_TEMPLATE_DIR/**/*$NGINX_ENVSUBST_TEMPLATE_SUFFIX
# (default /etc/nginx/templates/*.template) into $NGINX_ENVSUBST_OUTPUT_DIR
# (default /etc/nginx/conf.d) with envsubst, substituting only variables that
# are defined in the environment (optionally only names matching the regular
# expression NGINX_ENVSUBST_FILTER), so nginx's own $variables survive.
# *.stream-template files go to /etc/nginx/stream-conf.d, and a stream {}
# block including them is appended to nginx.conf if it has none.
set -e
ME=$(basename "$0")

log() { [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$@"; }

template_dir="${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}"
suffix="${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}"
output_dir="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
stream_suffix="${NGINX_ENVSUBST_STREAM_TEMPLATE_SUFFIX:-.stream-template}"
stream_output_dir="${NGINX_ENVSUBST_STREAM_OUTPUT_DIR:-/etc/nginx/stream-conf.d}"
filter="${NGINX_ENVSUBST_FILTER:-}"

[ -d "$template_dir" ] || exit 0

# '${NAME1} ${NAME2} ...' for every environment variable (matching the filter).
defined_envs=$(awk -v filter="$filter" 'END { for (name in ENVIRON) if (name ~ filter) printf "${%s} ", name }' </dev/null)

render() { # render SUFFIX OUTPUT_DIR
    find "$template_dir" -follow -type f -name "*$1" -print | while read -r template; do
        relative_path="${template#"$template_dir/"}"
        output_path="$2/${relative_path%"$1"}"
        mkdir -p "$(dirname "$output_path")"
        log "$ME: Running envsubst on $template to $output_path"
        envsubst "$defined_envs" < "$template" > "$output_path"
    done
}

if [ ! -w "$output_dir" ]; then
    log "$ME: ERROR: $template_dir exists, but $output_dir is not writable"
    exit 0
fi
render "$suffix" "$output_dir"

if [ -n "$(find "$template_dir" -name "*$stream_suffix" -print -quit)" ]; then
    mkdir -p "$stream_output_dir"
    if [ ! -w "$stream_output_dir" ]; then
        log "$ME: ERROR: $template_dir exists, but $stream_output_dir is not writable"
        exit 0
    fi
    conffile=/etc/nginx/nginx.conf
    if grep -q -E "^\s*stream\s*\{" "$conffile"; then
        log "$ME: $conffile contains a stream block; include $stream_output_dir/*.conf to enable stream templates"
    elif touch "$conffile" 2>/dev/null; then
        log "$ME: Appending stream block to $conffile to include $stream_output_dir/*.conf"
        printf '# added by "%s" on "%s"\nstream {\n  include %s/*.conf;\n}\n' "$ME" "$(date)" "$stream_output_dir" >> "$conffile"
    else
        log "$ME: info: can not modify $conffile (read-only file system?)"
    fi
    render "$stream_suffix" "$stream_output_dir"
fi
exit 0
