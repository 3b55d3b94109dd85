#!/usr/bin/env bash
# Keep-alive, churn and slow requests side by side (see scripts/keepalive.py).
#   scripts/keepalive.sh [--seconds 5] [--rounds 1] [--baseline DIR] [--write-docs]
set -euo pipefail
cd "$(dirname "$0")"
./ensure-package.sh wrk
PATH="$PATH:/usr/sbin" ./ensure-package.sh nginx nginx-light
exec env PATH="$PATH:/usr/sbin" python3 keepalive.py "$@"
