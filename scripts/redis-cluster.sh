#!/usr/bin/env bash
# The test suite's Redis Cluster: 3 masters ($MG_CLUSTER_MASTERS) on free ports.
#   scripts/redis-cluster.sh start   reuse the recorded cluster while it is up and ours, else start
#                                    a new one; its URL goes to .mg-test/cluster/url
#   scripts/redis-cluster.sh stop    stop the recorded nodes (only them: scripts/_servers.sh)
#   scripts/redis-cluster.sh url     print the recorded cluster's URL
# Nothing is persisted (no AOF, no RDB).
set -euo pipefail
. "$(dirname "$0")/_servers.sh"
dir=$state/cluster
masters=${MG_CLUSTER_MASTERS:-3}

# Below the kernel's ephemeral range (32768-60999), bus ports (port + 10000) included, so that no
# outgoing connection takes one between this check and the bind. tests/servers.py uses the same.
pick_port() {
  local port
  for _ in $(seq 200); do
    port=$((11000 + RANDOM % 11000))
    if ! listening "$port" && ! listening $((port + 10000)) && [[ " ${ports[*]} " != *" $port "* ]]; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

reusable() {
  local node count=0
  [ -s "$dir/url" ] || return 1
  for node in "$dir"/node*; do
    recorded_pid "$node" >/dev/null || return 1
    count=$((count + 1))
  done
  [ "$count" -eq "$masters" ] &&
    redis-cli -p "$(cat "$dir/node1/port")" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

stop() {
  local node
  for node in "$dir"/node*; do
    [ -d "$node" ] && stop_recorded "$node"
  done
  rm -rf "$dir"
}

start() {
  if reusable; then
    echo "redis cluster: $(cat "$dir/url") (running, recorded in $dir)"
    return 0
  fi
  need_redis
  stop
  mkdir -p "$dir"
  ports=()
  for i in $(seq "$masters"); do
    for attempt in $(seq 10); do
      port=$(pick_port)
      if start_recorded "$dir/node$i" "$port" --cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-node-timeout 5000 --appendonly no --save ""; then
        ports+=("$port")
        break
      fi
      stop_recorded "$dir/node$i"
      rm -rf "$dir/node$i"
      [ "$attempt" -lt 10 ] || { echo "no node could start; see $dir" >&2; exit 1; }
    done
  done
  redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 ||
    { echo "redis-cli --cluster create failed; see $dir/create.log" >&2; exit 1; }
  for port in "${ports[@]}"; do
    for _ in $(seq 100); do
      redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' && break
      sleep 0.1
    done
    redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' ||
      { echo "node $port did not reach cluster_state:ok; see $dir" >&2; exit 1; }
  done
  url="redis+cluster://$(IFS=,; echo "${ports[*]/#/127.0.0.1:}")"
  echo "$url" >"$dir/url"
  echo "redis cluster: $url (started, recorded in $dir)"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  url) cat "$dir/url" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
