#!/usr/bin/env bash
# Runs the official supabase-py test suites, unmodified, against an oxibase binary.
#
#   bash run.sh [PACKAGE...]   PACKAGE: storage postgrest auth realtime functions supabase
#                              (default: all six)
#
# Needs `bash setup.sh` first. The suites hard-code their services' ports (GoTrue on
# 9996-9999, PostgREST on 3000, Storage on 55321), so the whole run happens in its own network
# namespace (`unshare --net`, root only; lo brought up) and collides with nothing on this
# machine. Per package it starts the oxibase configs the suite's docker-compose / supabase
# config describes, each with a fresh data dir, loads the suite's own SQL, puts proxy.py in
# front where the suite expects a standalone service at the root path, runs pytest with a
# JUnit report, stops what it started, and prints per-package counts split by the sync and
# async variants:  == storage sync 20 passed, 0 failed, 0 skipped
#
# Env knobs: OXIBASE_BIN (default ./target/debug/oxibase), PY_OFFICIAL_WORK,
# PY_OFFICIAL_RESULTS, PY_OFFICIAL_PYTEST_ARGS (extra words for every pytest).
# Exit 0 when every package ran, 2 when the harness broke.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${PY_OFFICIAL_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/oxibase-py-official}"
TREE="$WORK/supabase-py"
PY="$WORK/venv/bin/python"
BIN="${OXIBASE_BIN:-$PWD/target/debug/oxibase}"
RESULTS="${PY_OFFICIAL_RESULTS:-$WORK/results/$(date +%Y%m%d-%H%M%S)}"

if [ -z "${PY_OFFICIAL_IN_NETNS:-}" ]; then
  [ "$(id -u)" = 0 ] || { echo "# harness: needs root for unshare --net" >&2; exit 2; }
  [ -x "$BIN" ] || { echo "# harness: no oxibase binary at $BIN (set OXIBASE_BIN)" >&2; exit 2; }
  [ -f "$TREE/.official-commit" ] && [ -x "$PY" ] || { echo "# harness: run setup.sh first" >&2; exit 2; }
  mkdir -p "$RESULTS"
  BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
  exec env PY_OFFICIAL_IN_NETNS=1 OXIBASE_BIN="$BIN" PY_OFFICIAL_RESULTS="$RESULTS" \
    unshare --net bash "$HERE/run.sh" "$@"
fi
ip link set lo up

# the keys the suites use
CLI_SECRET="super-secret-jwt-token-with-at-least-32-characters-long"  # Supabase CLI's default
AUTH_SECRET="37c304f8-51aa-419a-a1af-06154e63707a"                    # auth/infra/docker-compose.yml
ASYM_SECRET="Z7-AyPyChGNcQsX16cPBV-pPBo4q-zckDxkq1VZjATo"

PIDS=()
DATA_DIRS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  local d pf pg
  for d in "${DATA_DIRS[@]}"; do
    for pf in "$d"/pg/postmaster.pid "$d"/*/postmaster.pid; do
      [ -f "$pf" ] || continue
      pg="$(head -1 "$pf")"; [[ "$pg" =~ ^[0-9]+$ ]] && kill -TERM "$pg" 2>/dev/null
    done
    sleep 0.5; rm -rf "$d"
  done
  PIDS=(); DATA_DIRS=()
}
trap cleanup EXIT

# start_oxibase NAME CONFIG-BODY : port and db_port come from the body; waits for /health
start_oxibase() {
  local name="$1" body="$2" cfg="$RESULTS/$1.oxibase.toml" port dir
  printf '# oxibase config for the supabase-py %s suite (written by run.sh)\n%s\n' "$name" "$body" >"$cfg"
  port="$(sed -n 's/^port = //p' "$cfg" | head -1)"
  dir="$(mktemp -d "${TMPDIR:-/tmp}/oxibase-py-$name.XXXXXX")"; chmod 755 "$dir"
  DATA_DIRS+=("$dir")
  setsid env $(compgen -e | grep '^OXIBASE_' | sed 's/^/-u /') OXIBASE_DATA_DIR="$dir" \
    "$OXIBASE_BIN" serve --config "$cfg" >"$RESULTS/$name.server.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 480); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")" = 200 ] && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.25
  done
  echo "# harness: oxibase $name did not become healthy (see $RESULTS/$name.server.log)"
  tail -5 "$RESULTS/$name.server.log" | sed 's/^/#   /'
  return 1
}
proxy() { # proxy LISTEN UPSTREAM PREFIX [HEADER:VALUE...]
  "$PY" "$HERE/proxy.py" "$@" >>"$RESULTS/proxy.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "# harness: proxy on :$1 did not start (see proxy.log)"
  return 1
}
psql_file() { # psql_file DB_PORT FILE
  echo "--- $2" >>"$RESULTS/fixtures.log"
  PGPASSWORD=postgres psql -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -v ON_ERROR_STOP=0 \
    -f "$2" >>"$RESULTS/fixtures.log" 2>&1
  PGPASSWORD=postgres psql -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres \
    -c "NOTIFY pgrst, 'reload schema'" >>"$RESULTS/fixtures.log" 2>&1
}
anon_key() { # anon_key SECRET: an anon JWT signed with it (HS256)
  "$PY" -c 'import sys, jwt; print(jwt.encode({"role": "anon", "iss": "supabase-demo", "exp": 1983812996}, sys.argv[1], algorithm="HS256"))' "$1"
}
base() { # base PORT DB_PORT SECRET
  printf 'port = %s\ndb_port = %s\nbind = ["127.0.0.1", "::1"]\napp_schema = false\ndb_fsync = false\njwt_secret = "%s"\nlog = "info"\n' "$1" "$2" "$3"
}

# ------------------------------------------------------------------ infra per package
infra() {
  local pkg="$1" src="$TREE/src/$1"
  case "$pkg" in
    storage) # supabase --workdir infra start: API on 55321 (tests/tests.env), the CLI's keys
      start_oxibase storage "$(base 55321 55322 "$CLI_SECRET")
[storage]
file_size_limit = 52428800" || return 1
      local f; for f in "$src"/infra/supabase/migrations/*.sql; do psql_file 55322 "$f"; done ;;
    realtime) # supabase start --workdir infra; tests read SUPABASE_URL
      start_oxibase realtime "$(base 55421 55422 "$CLI_SECRET")" || return 1
      local f; for f in "$src"/infra/supabase/migrations/*.sql; do psql_file 55422 "$f"; done ;;
    postgrest) # docker-compose: PostgREST 11 on :3000, schemas public,personal, plans on,
               # tx end commit-allow-override, anon role = postgres
      start_oxibase postgrest "$(base 55521 55522 "$CLI_SECRET")
[rest]
schemas = [\"public\", \"personal\"]
extra_search_path = [\"extensions\"]
db_plan_enabled = true
db_tx_allow_override = true" || return 1
      psql_file 55522 "$src/infra/init.sql"
      proxy 3000 55521 /rest/v1 || return 1 ;;
    auth) # docker-compose: four GoTrue instances on 9999/9998/9997/9996
      local keys="$RESULTS/auth-asymmetric.jwks.json"
      "$PY" - "$src/infra/docker-compose.yml" >"$keys" <<'PYEOF' || return 1
import json, re, sys
text = open(sys.argv[1]).read()
block = text.split("autoconfirm_with_asymmetric_keys:")[1]
keys = json.loads(re.search(r"GOTRUE_JWT_KEYS: '(.*)'", block).group(1))
print(json.dumps([k for k in keys if k["kty"] == "RSA"]))
PYEOF
      local common="[auth]
minimum_password_length = 6
anonymous_sign_ins = true
rate_limit_per_hour = 0
email_rate_limit_per_hour = 100000
email_max_frequency = 0"
      local limits="[auth.rate_limit]
sign_in_sign_ups = 100000
token_verifications = 100000
token_refresh = 100000
anonymous_users = 100000
email_sent = 100000
sms_sent = 100000"
      # GoTrue's four containers share one database (a test signs up on :9999 and confirms
      # through the admin API of :9998): the first oxibase owns it, the others use database_url.
      local shared="database_url = \"postgres://postgres:postgres@127.0.0.1:57998/postgres\""
      start_oxibase auth-9998 "$(base 56998 57998 "$AUTH_SECRET")
$common
site_url = \"http://localhost:9998\"
autoconfirm = true
disable_signup = false
$limits" || return 1
      start_oxibase auth-9999 "$(base 56999 57999 "$AUTH_SECRET")
$shared
$common
site_url = \"http://localhost:9999\"
additional_redirect_urls = [\"https://supabase.io/docs\"]
autoconfirm = false
disable_signup = false
$limits" || return 1
      start_oxibase auth-9997 "$(base 56997 57997 "$AUTH_SECRET")
$shared
$common
site_url = \"http://localhost:9997\"
autoconfirm = false
disable_signup = true
$limits" || return 1
      start_oxibase auth-9996 "$(base 56996 57996 "$ASYM_SECRET")
$shared
jwt_keys_file = \"$keys\"
$common
site_url = \"http://localhost:9996\"
autoconfirm = true
disable_signup = false
$limits" || return 1
      # A standalone GoTrue has no API gateway in front, so nothing asks for an apikey; oxibase
      # (like Supabase's gateway) does: the proxy adds the instance's anon key when absent.
      local p secret; for p in 9999 9998 9997 9996; do
        secret="$AUTH_SECRET"; [ "$p" = 9996 ] && secret="$ASYM_SECRET"
        proxy "$p" "$((p + 47000))" /auth/v1 "apikey:$(anon_key "$secret")" || return 1
      done ;;
    functions|supabase) : ;; # unit tests with mocked HTTP: no service
  esac
}

run_pkg() {
  local pkg="$1" xml="$RESULTS/$1.junit.xml" t0 extra=()
  t0=$(date +%s)
  # shellcheck disable=SC2206
  [ -n "${PY_OFFICIAL_PYTEST_ARGS:-}" ] && extra=(${PY_OFFICIAL_PYTEST_ARGS})
  if ! infra "$pkg"; then
    SUMMARY+=("== $pkg harness broke (see $RESULTS)"); BROKE=1; cleanup; return
  fi
  (cd "$TREE/src/$pkg" && env SUPABASE_URL=http://127.0.0.1:55421 \
      "$PY" -m pytest -p no:cacheprovider -q -o addopts= --junitxml="$xml" "${extra[@]}" \
      >"$RESULTS/$pkg.pytest.log" 2>&1)
  cleanup
  if [ ! -s "$xml" ]; then
    SUMMARY+=("== $pkg harness broke: no junit report (see $pkg.pytest.log)"); BROKE=1; return
  fi
  "$PY" "$HERE/summarize.py" "$pkg" "$xml" >"$RESULTS/$pkg.summary.txt"
  grep -v '^==' "$RESULTS/$pkg.summary.txt"
  echo "# $pkg: $(( $(date +%s) - t0 )) s"
  while IFS= read -r l; do SUMMARY+=("$l"); done < <(grep '^==' "$RESULTS/$pkg.summary.txt")
}

SUMMARY=()
BROKE=0
PKGS=("${@:-storage postgrest auth realtime functions supabase}")
echo "# supabase-py $(cat "$TREE/.official-commit"); oxibase $OXIBASE_BIN; results in $RESULTS"
for a in "${PKGS[@]}"; do for p in $a; do
  case "$p" in storage|postgrest|auth|realtime|functions|supabase) run_pkg "$p" ;;
    *) echo "unknown package: $p" >&2; exit 2 ;; esac
done; done
for l in "${SUMMARY[@]}"; do echo "$l"; done
[ "$BROKE" = 0 ] || exit 2
