#!/usr/bin/env bash
# REST benchmark: wrk against oxibase's /rest/v1 next to pgbench running the same SQL
# (BEGIN, the one set_config statement, the generated statement, COMMIT) on the same
# database, for GET-by-id, a filtered list, an embed and an insert. Each scenario runs
# ROUNDS rounds of (wrk, pgbench, pgbench pipelined), alternating so that drift on the
# shared machine hits all three alike; the medians are compared. Not run in CI.
#
#   bench/rest/run.sh                  # builds --release, 3 rounds of 8 s per scenario
#   ROUNDS=5 DURATION=10 CONNS=16 OXIBASE_BIN=target/release/oxibase bench/rest/run.sh
#   SCENARIOS="embed insert" bench/rest/run.sh   # a subset
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DURATION="${DURATION:-8}"
ROUNDS="${ROUNDS:-3}"
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
kill -0 "$pid" 2>/dev/null || { echo "oxibase did not start (ports $PORT/$DB_PORT in use?)"; cat "$data/log"; exit 1; }
export PGPASSWORD=postgres
PSQL=(psql -h 127.0.0.1 -p "$DB_PORT" -U postgres -d postgres -q -v ON_ERROR_STOP=1)
"${PSQL[@]}" -f "$here/fixture.sql" >/dev/null || { cat "$data/log"; exit 1; }
sleep 0.5
base="http://127.0.0.1:$PORT"
export BENCH_DIR="$here"
rps_wrk() { # scenario
  wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" -s "$here/$1.lua" "$base/rest/v1/bench_books" \
    | awk '/Requests\/sec/ {print $2}'
}
ANON_KEY=$(sed -n 's/^local anon = "\(.*\)"$/\1/p' "$here/keys.lua")
rps_pgbench() { # script scenario
  # The parameters oxibase binds to the role-and-claims statement for wrk's requests (the
  # anon key's claims; wrk's headers as request.headers).
  local method=GET path=/bench_books
  local keys="\"apikey\":\"$ANON_KEY\",\"authorization\":\"Bearer $ANON_KEY\""
  local headers="{\"host\":\"127.0.0.1:$PORT\",$keys}"
  case $2 in
    embed) path=/bench_authors ;;
    insert) method=POST
      headers="{\"host\":\"127.0.0.1:$PORT\",$keys,\"content-type\":\"application/json\",\"content-length\":\"49\"}" ;;
  esac
  pgbench -h 127.0.0.1 -p "$DB_PORT" -U postgres -n -M extended -c "$CONNS" -j "$THREADS" \
    -T "$DURATION" -f "$1" -D role=anon -D claims='{"iss":"supabase-demo","role":"anon","exp":1983812996}' \
    -D method="$method" -D path="$path" -D headers="$headers" \
    -D search_path='"public", "public", "extensions"' -D timeout=8000 postgres 2>/dev/null \
    | awk '/^tps/ {print $3; exit}'
}
# The same statements as one pipeline with a single Sync, as oxibase sends them.
pipelined() { # scenario -> path of the pipelined script
  local out="$data/$1.pipelined.sql"
  { grep '^\\set' "$here/$1.sql"; echo '\startpipeline'; grep -v '^\\set' "$here/$1.sql"; echo '\endpipeline'; } >"$out"
  echo "$out"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "n/a" }'; }
# Check each scenario answers 2xx before measuring.
for u in "bench_books?id=eq.1" "bench_books?select=id,title,pages&pages=gt.300&order=id&limit=20" \
  "bench_authors?select=id,name,bench_books(id,title)&id=gte.5&order=id&limit=10"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$base/rest/v1/$u")
  [ "$code" = 200 ] || { echo "$u answered $code"; cat "$data/log"; exit 1; }
done
hz=$(getconf CLK_TCK)
echo "median of $ROUNDS rounds of ${DURATION}s, $CONNS connections; oxibase µs = its own CPU per request"
printf '%-10s %9s %9s %7s %11s %7s %10s\n' scenario oxibase pgbench 'of max' 'pipelined' 'of it' 'oxibase µs'
for s in ${SCENARIOS:-get_by_id filtered embed insert}; do
  pipe=$(pipelined "$s")
  ws=(); ps=(); qs=(); us=()
  for _ in $(seq 1 "$ROUNDS"); do
    t0=$(cpu_ticks)
    w=$(rps_wrk "$s")
    t1=$(cpu_ticks)
    ws+=("$w")
    us+=("$(awk -v t="$((t1 - t0))" -v hz="$hz" -v r="$w" -v d="$DURATION" 'BEGIN { printf "%.0f", t / hz * 1e6 / (r * d) }')")
    ps+=("$(rps_pgbench "$here/$s.sql" "$s")")
    qs+=("$(rps_pgbench "$pipe" "$s")")
  done
  a=$(median "${ws[@]}"); b=$(median "${ps[@]}"); c=$(median "${qs[@]}"); u=$(median "${us[@]}")
  printf '%-10s %9.0f %9.0f %7s %11.0f %7s %10s\n' "$s" "$a" "$b" "$(pct "$a" "$b")" "$c" "$(pct "$a" "$c")" "$u"
done
