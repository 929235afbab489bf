#!/usr/bin/env bash
# Make sure a Redis server answers on 127.0.0.1:6379: start one if none does, installing
# Debian's redis-server package first if the binary is missing.
set -euo pipefail
port=${MG_REDIS_PORT:-6379}

answers() { (exec 3<>/dev/tcp/127.0.0.1/"$port" && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null; }

answers && exit 0
if ! command -v redis-server >/dev/null; then
  echo "redis-server not found: installing Debian's package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
dir=${TMPDIR:-/tmp}/meterguard-redis-$port
mkdir -p "$dir"
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir "$dir" --logfile "$dir/redis.log"
for _ in $(seq 50); do answers && exit 0; sleep 0.1; done
echo "redis-server did not answer on port $port; see $dir/redis.log" >&2
exit 1
