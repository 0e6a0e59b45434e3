#!/usr/bin/env bash
# REST benchmark: wrk against oxibase's /rest/v1 next to pgbench running the same SQL
# (begin, the one set_config round trip, the generated statement, commit) on the same
# database, for GET-by-id, a filtered list, an embed and an insert. Prints requests/s of
# both and oxibase as a percentage of the pgbench ceiling. Not run in CI.
#
#   bench/rest/run.sh                  # builds --release, 10 s per scenario
#   DURATION=30 CONNS=32 THREADS=2 OXIBASE_BIN=target/release/oxibase bench/rest/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-16}"
THREADS="${THREADS:-2}"
PORT="${PORT:-55531}"
DB_PORT="${DB_PORT:-55532}"
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)"; exit 1; }
command -v pgbench >/dev/null || { echo "pgbench is needed (postgresql-client)"; exit 1; }
if [ -z "${OXIBASE_BIN:-}" ]; then
  (cd "$root" && cargo build --release --quiet)
  OXIBASE_BIN="$root/target/release/oxibase"
fi
data="$(mktemp -d)"; chmod 755 "$data"
OXIBASE_PORT=$PORT OXIBASE_DB_PORT=$DB_PORT OXIBASE_DATA_DIR="$data" OXIBASE_BIND=127.0.0.1 \
  OXIBASE_LOG=warn "$OXIBASE_BIN" >"$data/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.3
done
export PGPASSWORD=postgres
PSQL=(psql -h 127.0.0.1 -p "$DB_PORT" -U postgres -d postgres -q -v ON_ERROR_STOP=1)
"${PSQL[@]}" -f "$here/fixture.sql" >/dev/null || { cat "$data/log"; exit 1; }
sleep 0.5
base="http://127.0.0.1:$PORT"
rps_wrk() { # scenario
  wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" -s "$here/$1.lua" "$base/rest/v1/bench_books" \
    | awk '/Requests\/sec/ {print $2}'
}
rps_pgbench() { # scenario
  pgbench -h 127.0.0.1 -p "$DB_PORT" -U postgres -n -M extended -c "$CONNS" -j "$THREADS" \
    -T "$DURATION" -f "$here/$1.sql" postgres 2>/dev/null \
    | awk '/^tps/ {print $3; exit}'
}
# Check each scenario answers 2xx before measuring.
for u in "bench_books?id=eq.1" "bench_books?select=id,title,pages&pages=gt.300&order=id&limit=20" \
  "bench_authors?select=id,name,bench_books(id,title)&id=gte.5&order=id&limit=10"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$base/rest/v1/$u")
  [ "$code" = 200 ] || { echo "$u answered $code"; cat "$data/log"; exit 1; }
done
printf '%-12s %12s %12s %8s\n' scenario oxibase pgbench 'of max'
for s in get_by_id filtered embed insert; do
  a=$(rps_wrk "$s")
  b=$(rps_pgbench "$s")
  pct=$(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "n/a" }')
  printf '%-12s %12.0f %12.0f %8s\n' "$s" "$a" "$b" "$pct"
done
