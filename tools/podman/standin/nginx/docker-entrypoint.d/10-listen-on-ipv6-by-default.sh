#!/bin/sh
# Like the official image: add `listen [::]:80;` to the shipped
# /etc/nginx/conf.d/default.conf when the container has IPv6 and the file is
# still the unmodified one from the image.
set -e
ME=$(basename "$0")
CONF=/etc/nginx/conf.d/default.conf
SUM=/usr/share/nginx/default.conf.sha256

log() { [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$@"; }

[ -f /proc/net/if_inet6 ] || { log "$ME: info: ipv6 not available"; exit 0; }
[ -f "$CONF" ] || { log "$ME: info: $CONF is not a file or does not exist"; exit 0; }
touch "$CONF" 2>/dev/null || { log "$ME: info: can not modify $CONF (read-only file system?)"; exit 0; }
if ! sha256sum -c --status "$SUM" 2>/dev/null; then
    log "$ME: info: $CONF differs from the packaged version"
    exit 0
fi
sed -i -E 's,listen       80;,listen       80;\n    listen  [::]:80;,' "$CONF"
log "$ME: info: Enabled listen on IPv6 in $CONF"
exit 0
