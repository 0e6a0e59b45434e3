#!/bin/sh
# The realtime benchmark (see run.mjs): raises the descriptor limit for 10k sockets, then runs.
# usage: bench/realtime/run.sh [path/to/oxibase]   (default target/release/oxibase)
set -e
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec node --experimental-websocket "$(dirname "$0")/run.mjs" "$@"
