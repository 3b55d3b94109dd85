#!/usr/bin/env bash
# Sets up what scripts/bench_jobs.py compares forkwarden's job workers with: PostgreSQL
# (scripts/ensure-postgres.sh), Debian's redis-server (Celery's broker), and a venv
# target/bench-jobs-venv with procrastinate, Celery (with its Redis client) and psycopg 3.
#   scripts/ensure-bench-jobs.sh && target/bench-jobs-venv/bin/python scripts/bench_jobs.py
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
"$here/ensure-postgres.sh"
if ! command -v redis-server >/dev/null; then
  "$here/ensure-package.sh" redis-server redis-server
fi
venv="$root/target/bench-jobs-venv"
if ! "$venv/bin/python" -c "import procrastinate, celery, redis, psycopg" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet procrastinate "celery[redis]" "psycopg[binary]"
fi
