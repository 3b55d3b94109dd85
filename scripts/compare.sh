#!/usr/bin/env bash
# forkwarden, gunicorn and uWSGI side by side (see scripts/compare.py for what is measured),
# then WSGI servers' throughput and CPU per request (scripts/compare_wsgi.py), then preloaded
# workers side by side (scripts/compare_preload.py; a local PostgreSQL for the stand-in app's
# connection when scripts/ensure-postgres.sh can start one). Each part alone:
#   scripts/compare.sh [--kills 20] [--seconds 5] [--write-docs] [--preload-only | --wsgi-only]
set -euo pipefail
cd "$(dirname "$0")"
./ensure-package.sh wrk
args=() only=all
for arg in "$@"; do
  case "$arg" in
    --preload-only) only=preload ;;
    --wsgi-only) only=wsgi ;;
    *) args+=("$arg") ;;
  esac
done
# Each script takes the options it knows: --kills for compare.py and compare_preload.py,
# --seconds for compare_wsgi.py, --write-docs for all.
pick() { local known="$1" out=()
  for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
      --write-docs) out+=(--write-docs) ;;
      --kills|--seconds)
        if [[ " $known " == *" ${args[i]} "* ]]; then out+=("${args[i]}" "${args[i+1]}"); fi
        i=$((i + 1)) ;;
    esac
  done
  echo "${out[@]}"; }
if [ "$only" = all ]; then
  python3 compare.py $(pick --kills)
fi
if [ "$only" = all ] || [ "$only" = wsgi ]; then
  python3 compare_wsgi.py $(pick --seconds)
fi
[ "$only" = wsgi ] && exit 0
./ensure-postgres.sh || echo "no local PostgreSQL: the stand-in runs without a database" >&2
exec python3 compare_preload.py $(pick --kills)
