#!/usr/bin/env bash
# forkwarden, gunicorn and uWSGI side by side (see scripts/compare.py for what is measured),
# then preloaded workers side by side (scripts/compare_preload.py; a local PostgreSQL for the
# stand-in app's connection when scripts/ensure-postgres.sh can start one).
#   scripts/compare.sh [--kills 20] [--write-docs] [--preload-only]
set -euo pipefail
cd "$(dirname "$0")"
./ensure-package.sh wrk
args=() preload_only=false
for arg in "$@"; do
  if [ "$arg" = --preload-only ]; then preload_only=true; else args+=("$arg"); fi
done
if ! $preload_only; then
  python3 compare.py "${args[@]}"
fi
./ensure-postgres.sh || echo "no local PostgreSQL: the stand-in runs without a database" >&2
exec python3 compare_preload.py "${args[@]}"
