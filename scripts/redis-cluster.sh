#!/usr/bin/env bash
# A local 3-master Redis Cluster on 127.0.0.1:7001-7003 for the test suite.
#   scripts/redis-cluster.sh start   idempotent: exits at once when the cluster already answers
#   scripts/redis-cluster.sh stop
# Files (config, logs) live under ${TMPDIR:-/tmp}/meterguard-cluster; nothing is persisted.
set -euo pipefail
ports=(7001 7002 7003)
dir=${TMPDIR:-/tmp}/meterguard-cluster

cluster_ok() { redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }
node_answers() { redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG; }

start() {
  if command -v redis-cli >/dev/null && cluster_ok; then exit 0; fi
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "redis-server/redis-cli not found: installing Debian's package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null
  fi
  for port in "${ports[@]}"; do
    node_dir=$dir/$port
    mkdir -p "$node_dir"
    if ! node_answers "$port"; then
      redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
        --cluster-config-file "$node_dir/nodes.conf" --cluster-node-timeout 5000 \
        --appendonly no --save "" --dir "$node_dir" --logfile "$node_dir/redis.log" \
        --pidfile "$node_dir/redis.pid"
    fi
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 50); do node_answers "$port" && break; sleep 0.1; done
    node_answers "$port" || { echo "node $port did not start; see $dir/$port/redis.log" >&2; exit 1; }
  done
  # Form the cluster only when no slot is assigned yet (a fresh set of nodes).
  if redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info | grep -q '^cluster_slots_assigned:0'; then
    redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
  fi
  for _ in $(seq 100); do cluster_ok && exit 0; sleep 0.1; done
  echo "cluster did not reach cluster_state:ok; see $dir/*/redis.log" >&2
  exit 1
}

stop() {
  for port in "${ports[@]}"; do
    redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  rm -rf "$dir"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
