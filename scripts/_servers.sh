# Sourced by the scripts that start and stop the test suite's Redis servers.
#
# Every server a script starts is recorded in a directory under the state dir (.mg-test/ at the
# repository root, or $MG_TEST_STATE): `port`, and the `redis.pid` redis-server writes. A server
# is stopped only through such a record, and only while that pid is still a redis-server serving
# that port: never by port alone, so a server someone else started is never touched.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=${MG_TEST_STATE:-$root/.mg-test}

# answers PORT: something answers PING on 127.0.0.1:PORT
answers() {
  (exec 3<>/dev/tcp/127.0.0.1/"$1" && printf 'PING\r\n' >&3 && timeout 2 head -c 7 <&3 | grep -q PONG) 2>/dev/null
}

# listening PORT: something accepts connections on 127.0.0.1:PORT
listening() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

need_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "redis-server/redis-cli not found: installing Debian's package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null
  fi
}

# recorded_pid DIR: prints the recorded pid when it is still a redis-server serving the recorded port
recorded_pid() {
  local dir=$1 port pid
  port=$(cat "$dir/port" 2>/dev/null) && pid=$(cat "$dir/redis.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ] || return 1
  # redis-server titles itself "redis-server 127.0.0.1:PORT [cluster]"
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE ":$port( |\$)" || return 1
  echo "$pid"
}

# start_recorded DIR PORT ARGS...: redis-server on PORT, recorded in DIR; succeeds once the server
# that answers on PORT is the one just started (it may have lost the port to another process)
start_recorded() {
  local dir=$1 port=$2 pid
  shift 2
  mkdir -p "$dir"
  echo "$port" >"$dir/port"
  rm -f "$dir/redis.pid"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$dir" --logfile "$dir/redis.log" \
    --pidfile "$dir/redis.pid" "$@"
  for _ in $(seq 50); do
    if pid=$(recorded_pid "$dir") && [ "$(redis-cli -p "$port" info server 2>/dev/null | tr -d '\r' |
      sed -n 's/^process_id://p')" = "$pid" ]; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# stop_recorded DIR: stop (SIGTERM) the server recorded in DIR if it is still that server; forget it
stop_recorded() {
  local dir=$1 pid
  if pid=$(recorded_pid "$dir"); then
    kill -CONT "$pid" 2>/dev/null || true # a paused server cannot act on SIGTERM
    kill -TERM "$pid"
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "redis-server $pid ($dir) did not stop within 10 s" >&2
      return 1
    fi
    echo "stopped redis-server $pid on port $(cat "$dir/port")"
  fi
  rm -f "$dir/redis.pid" "$dir/port"
}
