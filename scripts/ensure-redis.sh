#!/usr/bin/env bash
# Make sure a Redis server answers on 127.0.0.1:6379 ($MG_REDIS_PORT): start one if none does,
# installing Debian's redis-server package first if the binary is missing. A server started
# here is recorded in .mg-test/redis-PORT/ (scripts/_servers.sh), so that `make clean` stops it
# and nothing else.
set -euo pipefail
. "$(dirname "$0")/_servers.sh"
port=${MG_REDIS_PORT:-6379}

answers "$port" && exit 0
need_redis
dir=$state/redis-$port
if ! start_recorded "$dir" "$port" --save "" --appendonly no; then
  echo "redis-server did not answer on port $port; see $dir/redis.log" >&2
  exit 1
fi
echo "redis: started on port $port (pid $(cat "$dir/redis.pid"), recorded in $dir)"
