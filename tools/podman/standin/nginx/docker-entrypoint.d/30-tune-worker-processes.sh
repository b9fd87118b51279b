#!/bin/sh
# Like the official image: with NGINX_ENTRYPOINT_WORKER_PROCESSES_AUTOTUNE set,
# replace `worker_processes auto;` by the number of CPUs this container may
# use (cgroup v1 or v2 CPU quota, else the CPU count).
set -e
ME=$(basename "$0")
[ -n "${NGINX_ENTRYPOINT_WORKER_PROCESSES_AUTOTUNE:-}" ] || exit 0
log() { [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$@"; }
conf=/etc/nginx/nginx.conf
touch "$conf" 2>/dev/null || { log "$ME: info: can not modify $conf (read-only file system?)"; exit 0; }
ncpu=$(nproc)
quota="" period=""
if [ -r /sys/fs/cgroup/cpu.max ]; then
    read -r quota period < /sys/fs/cgroup/cpu.max
    [ "$quota" = "max" ] && quota=""
elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
    period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
    [ "$quota" -gt 0 ] 2>/dev/null || quota=""
fi
if [ -n "$quota" ] && [ -n "$period" ]; then
    q=$(( (quota + period - 1) / period ))
    [ "$q" -lt "$ncpu" ] && ncpu=$q
fi
log "$ME: info: setting worker_processes to $ncpu"
sed -i -r "s/^(\s*worker_processes\s+)auto;/\1$ncpu;/" "$conf"
exit 0
