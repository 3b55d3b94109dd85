#!/usr/bin/env bash
# Load forkwarden while workers are killed, pushed over their limits and the master is
# signalled; check that every failed request is explained by a kill. See scripts/chaos.py
# for the options (--duration, --workers, --kill-every, ... --write-docs).
set -euo pipefail
cd "$(dirname "$0")"
./ensure-package.sh wrk
exec python3 chaos.py "$@"
