#!/usr/bin/env bash
# Lesson 08, part 1: lesson 05's TCP uWSGI on two more hosts of a private
# network, nginx on 127.0.0.1:$PORT in front of them and of a local unix socket.
# The hosts are Linux network namespaces (their own interfaces, addresses and
# routes; same files and CPU): `ip netns` needs root.
#   hosts.sh         start; Ctrl-C stops the servers and removes the network
#   hosts.sh down    remove what an earlier run left behind (a crash, a kill -9)
# BALANCE=least_conn hosts.sh: nginx picks the server with the fewest requests in flight.
source "$(dirname "$0")/../common.sh"

NET=10.231.8        # 10.231.8.0/24: private, and unused here (checked below)
BRIDGE=ws08br       # the network's switch, on this machine, which is 10.231.8.1
HOSTS=(h2 h3)       # namespaces ws08-h2 (10.231.8.2), ws08-h3 (10.231.8.3) ...
STRANGER=x          # ... and ws08-x (10.231.8.9): a machine that runs nothing of ours

[ "$(id -u)" = 0 ] || { echo "[hosts] ip netns and tc need root: run it with sudo" >&2; exit 1; }

network_down() {  # what a run leaves: its servers, then everything named ws08-*
    local ns pid file
    # This machine's servers of a run that crashed, by their pid files (their
    # process group: start_bg gave each its own), if the pid is still theirs.
    for file in "$RUN_DIR/uwsgi1.pid" "$RUN_DIR/nginx/nginx.pid"; do
        pid=$(cat "$file" 2>/dev/null) || continue
        case $(ps -o comm= -p "$pid") in uwsgi|nginx) kill -KILL -- "-$pid" "$pid" 2>/dev/null || true ;; esac
        rm -f "$file"
    done
    for ns in $(ip netns list | awk '$1 ~ /^ws08-/ {print $1}'); do
        for pid in $(ip netns pids "$ns"); do kill -KILL "$pid" 2>/dev/null || true; done
        ip link del "$ns" 2>/dev/null || true   # the cable, both ends (the namespace would
        ip netns del "$ns"                      # take it along too, but later, in the background)
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}

add_host() {  # add_host NAME NUMBER: namespace ws08-NAME with eth0 = $NET.NUMBER, cabled to the bridge
    local ns=ws08-$1
    ip netns add "$ns"
    ip link add "$ns" type veth peer name eth0 netns "$ns"   # the cable: one end here, one inside
    ip link set "$ns" master "$BRIDGE" up                    # plugged into the switch
    ip -n "$ns" addr add "$NET.$2/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
}

network_down
[ "${1:-}" = down ] && { echo "[hosts] removed"; exit 0; }
if ip -o addr | grep -q " inet $NET\." || ip route | grep -q "^$NET\."; then
    echo "[hosts] $NET.0/24 is in use on this machine: not touching it" >&2; exit 1
fi
trap network_down EXIT     # a step below fails: no half network left
ip link add "$BRIDGE" type bridge
ip addr add "$NET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
for i in "${!HOSTS[@]}"; do add_host "${HOSTS[$i]}" $((i + 2)); done
add_host "$STRANGER" 9
echo "[hosts] network $NET.0/24: this machine $NET.1, hosts ${HOSTS[*]/#/ws08-}, stranger ws08-$STRANGER ($NET.9)"

python -m workshop.certs "$RUN_DIR/tls" >/dev/null
upstreams=()
started() {  # from the first server on, stopping them comes before removing the network
    trap 'stop_all; network_down' INT TERM EXIT
}
start_bg uwsgi1 uwsgi --ini ../05_multi_upstream/inference1.ini "$@"; started
ready=("$RUN_DIR/stats1.sock")
for i in "${!HOSTS[@]}"; do
    host=${HOSTS[$i]} addr=$NET.$((i + 2))
    # Each host: lesson 05's upstream 2, bound to the host's own address, with
    # its own run folder (pid, stats) sharing the certificates.
    mkdir -p "$RUN_DIR/$host" && ln -sfn ../tls "$RUN_DIR/$host/tls"
    start_bg "uwsgi-$host" env RUN_DIR="$RUN_DIR/$host" TCP_HOST="$addr" TCP_PORT=8001 \
        ip netns exec "ws08-$host" uwsgi --ini ../05_multi_upstream/inference2.ini "$@"; started
    upstreams+=("$addr:8001") ready+=("$RUN_DIR/$host/stats2.sock")
done

conf=$(render_nginx ../04_nginx/inference.conf.template hosts.conf.template \
    LISTEN="127.0.0.1:$PORT" SERVER_NAME=localhost UPSTREAM=suwsgi://uwsgi_cluster \
    BALANCE="${BALANCE:+$BALANCE;}" UDS_UPSTREAM="unix:$RUN_DIR/inference1.sock" \
    H2_UPSTREAM="${upstreams[0]}" H3_UPSTREAM="${upstreams[1]}" \
    STATIC_ROOT="$(dirname "$LESSON_DIR")/04_nginx/static")
ln -sfn ../tls "$RUN_DIR/nginx/tls"
nginx -t -q -p "$RUN_DIR/nginx" -c "$conf"
start_bg nginx nginx -p "$RUN_DIR/nginx" -c "$conf"; started

wait_ready "http://127.0.0.1:$PORT/readyz" "${ready[@]}"
echo "[run] try: for i in 1 2 3 4 5 6; do curl -s -o /dev/null -D- localhost:$PORT/readyz | grep X-Upstream; done"
watch_all
