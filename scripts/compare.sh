#!/usr/bin/env bash
# forkwarden, gunicorn and uWSGI side by side (see scripts/compare.py for what is measured).
#   scripts/compare.sh [--kills 20] [--write-docs]
set -euo pipefail
cd "$(dirname "$0")"
./ensure-package.sh wrk
exec python3 compare.py "$@"
