#!/usr/bin/env bash
# Prepares the official supabase-py monorepo's test suites to run unmodified against oxibase:
# exports the tree from a git directory and installs its locked dependencies (uv, from PyPI)
# into a venv. Idempotent; PY_OFFICIAL_FORCE=1 redoes everything.
#
#   SUPABASE_PY_GIT=/path/to/supabase-py.git bash setup.sh
#
# Env knobs:
#   SUPABASE_PY_GIT      a git directory of supabase/supabase-py (required on first run)
#   SUPABASE_PY_COMMIT   commit to export (default HEAD of that git directory)
#   PY_OFFICIAL_WORK     where the tree and venvs go (default ~/.cache/oxibase-py-official)
#   PY_OFFICIAL_FORCE=1  re-export and reinstall
set -euo pipefail

WORK="${PY_OFFICIAL_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/oxibase-py-official}"
TREE="$WORK/supabase-py"
FORCE="${PY_OFFICIAL_FORCE:-0}"
say() { echo "[py-setup] $*"; }
die() { echo "[py-setup] ERROR: $*" >&2; exit 1; }

mkdir -p "$WORK"
command -v python3 >/dev/null || die "python3 (>= 3.9) is needed"

if [ "$FORCE" = 1 ] || [ ! -f "$TREE/.official-commit" ]; then
  [ -n "${SUPABASE_PY_GIT:-}" ] || die "set SUPABASE_PY_GIT to a git directory of supabase/supabase-py"
  commit="$(git --git-dir="$SUPABASE_PY_GIT" rev-parse "${SUPABASE_PY_COMMIT:-HEAD}")"
  rm -rf "$TREE"; mkdir -p "$TREE"
  say "exporting supabase-py $commit"
  git --git-dir="$SUPABASE_PY_GIT" archive "$commit" | tar -x -C "$TREE"
  echo "$commit" >"$TREE/.official-commit"
  rm -rf "$WORK/venv"
fi

if [ ! -x "$WORK/uv/bin/uv" ]; then
  say "installing uv into $WORK/uv"
  python3 -m venv "$WORK/uv"
  "$WORK/uv/bin/pip" install -q uv
fi
if [ ! -x "$WORK/venv/bin/pytest" ]; then
  say "uv sync (frozen, all packages, tests group) into $WORK/venv"
  (cd "$TREE" && UV_PROJECT_ENVIRONMENT="$WORK/venv" "$WORK/uv/bin/uv" sync -q --frozen \
    --all-packages --group tests)
fi
say "ready: $(cat "$TREE/.official-commit") in $TREE"
