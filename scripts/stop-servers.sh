#!/usr/bin/env bash
# Stop every Redis server the test scripts recorded under .mg-test/ (and only those: a record is
# acted on only while its pid is still a redis-server serving its port), then forget them.
set -euo pipefail
. "$(dirname "$0")/_servers.sh"
[ -d "$state" ] || exit 0
status=0
while IFS= read -r record; do
  stop_recorded "$(dirname "$record")" || status=1
done < <(find "$state" -name port -type f)
[ "$status" -ne 0 ] || rm -rf "$state"
exit "$status"
