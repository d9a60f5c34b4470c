#!/usr/bin/env bash
# A local Redis Cluster of primaries only, from Debian's redis-server, for tests and CI
# (docs/cluster.md). No persistence (no RDB, no AOF): a restarted node comes back with its slots
# (nodes.conf) and no data, which is what the data-loss tests want.
#
#   scripts/redis-cluster.sh start DIR [PORT[:BUSPORT] ...]   default ports 7101 7102 7103
#   scripts/redis-cluster.sh stop DIR
#   scripts/redis-cluster.sh restart DIR PORT                   the node loses all its data
#
# start prints REDIS_CLUSTER_NODES=127.0.0.1:P1,… when the cluster answers cluster_state:ok.
# The bus port defaults to PORT+10000. Everything lives in DIR (one directory per node).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
shift 2

wait_for() { # seconds, description, command...
  local seconds=$1 what=$2
  shift 2
  for ((i = 0; i < seconds * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "redis-cluster: $what did not happen within ${seconds}s" >&2
  return 1
}

cluster_ok() { redis-cli -p "$1" cluster info | grep -q '^cluster_state:ok'; }

start_node() { # port busport
  local port=$1 bus=$2
  mkdir -p "$dir/$port"
  echo "$bus" >"$dir/$port/bus"
  redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 --protected-mode no \
    --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf" \
    --cluster-node-timeout 2000 --dir "$dir/$port" --save "" --appendonly no \
    --daemonize yes --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log"
  wait_for 10 "redis-server on port $port answering" redis-cli -p "$port" ping
}

stop_node() { # port
  local port=$1
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  if [[ -f "$dir/$port/redis.pid" ]]; then
    local pid
    pid=$(cat "$dir/$port/redis.pid")
    wait_for 10 "redis-server $pid exiting" bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/$port/redis.pid"
  fi
}

case "$cmd" in
start)
  mkdir -p "$dir"
  specs=("$@")
  if [[ ${#specs[@]} -eq 0 ]]; then specs=(7101 7102 7103); fi
  nodes=()
  for spec in "${specs[@]}"; do
    port=${spec%%:*}
    bus=$([[ "$spec" == *:* ]] && echo "${spec#*:}" || echo $((port + 10000)))
    start_node "$port" "$bus"
    echo "$port" >>"$dir/ports"
    nodes+=("127.0.0.1:$port")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 ||
    { cat "$dir/create.log" >&2; exit 1; }
  for node in "${nodes[@]}"; do
    wait_for 30 "cluster_state:ok on $node" cluster_ok "${node#*:}"
  done
  (IFS=,; echo "REDIS_CLUSTER_NODES=${nodes[*]}")
  ;;
stop)
  if [[ -f "$dir/ports" ]]; then
    while read -r port; do stop_node "$port"; done <"$dir/ports"
  fi
  rm -rf "$dir"
  ;;
restart)
  port=${1:?port}
  stop_node "$port"
  start_node "$port" "$(cat "$dir/$port/bus")"
  wait_for 30 "cluster_state:ok on port $port" cluster_ok "$port"
  ;;
*)
  echo "redis-cluster: unknown command $cmd (start, stop, restart)" >&2
  exit 2
  ;;
esac
