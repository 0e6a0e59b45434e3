#!/usr/bin/env bash
# How long `oxibase backup` and `oxibase restore --to latest` take for a database of a few
# hundred MB (pgbench -i -s SCALE; 30 gives ~450 MB). Not part of CI: run by hand after
# `cargo build [--release]`, e.g. `SCALE=30 bench/backup.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${OXIBASE_BIN:-target/debug/oxibase}
SCALE=${SCALE:-30}
PORT=${PORT:-45301}
DB_PORT=${DB_PORT:-45302}
work=$(mktemp -d /tmp/oxibase-backup-bench.XXXXXX)
chmod 755 "$work"
mkdir "$work/src"
chmod 755 "$work/src"
cat > "$work/oxibase.toml" <<TOML
[backup]
target = "$work/target"
interval = ""
TOML
export PGPASSWORD=postgres
psql() { command psql -h 127.0.0.1 -p "$DB_PORT" -U postgres -qAt "$@"; }
OXIBASE_DATA_DIR="$work/src" OXIBASE_PORT=$PORT OXIBASE_DB_PORT=$DB_PORT \
  "$BIN" serve --config "$work/oxibase.toml" >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done

t=$(date +%s.%N)
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$DB_PORT" -U postgres postgres 2>&1 | tail -1
echo "pgbench -i -s $SCALE: $(echo "$(date +%s.%N) - $t" | bc) s"
echo "database size: $(psql -c "select pg_size_pretty(pg_database_size('postgres'))")"
# Let the archiver catch up with pgbench's WAL before timing the backup.
psql -c "select pg_switch_wal()" >/dev/null
want=$(psql -c "select pg_walfile_name(pg_current_wal_lsn() - 1)")
for _ in $(seq 1 600); do
  done_wal=$(psql -c "select coalesce(last_archived_wal, '') from pg_stat_archiver")
  [[ "$done_wal" > "$want" || "$done_wal" == "$want" ]] && break
  sleep 1
done
echo "WAL archived: $(du -sh "$work/target/wal" | cut -f1) in $(ls "$work/target/wal" | wc -l) files"

t=$(date +%s.%N)
OXIBASE_DATA_DIR="$work/src" OXIBASE_DB_PORT=$DB_PORT \
  "$BIN" backup --config "$work/oxibase.toml" 2>"$work/backup.err" >/dev/null
echo "backup: $(echo "$(date +%s.%N) - $t" | bc) s, $(du -sh "$work/target/base" | cut -f1) in the target"
grep -E "done in" "$work/backup.err" || true

psql -c "insert into pgbench_history values (1, 1, 1, 42, now(), 'after')"
kill $server; wait $server 2>/dev/null || true
trap - EXIT

t=$(date +%s.%N)
"$BIN" restore --from "$work/target" --to latest --data-dir "$work/restored" 2>"$work/restore.err"
echo "restore (latest): $(echo "$(date +%s.%N) - $t" | bc) s"
grep -E "recovery done|Restored" "$work/restore.err" || true
echo "(work dir: $work; remove it when done)"
