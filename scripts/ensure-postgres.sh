#!/usr/bin/env bash
# Makes sure a local PostgreSQL answers for the tests and scripts that use one (the preload
# stand-in's database connection): starts the machine's cluster when it is down, creates a
# superuser role named after the current user and the database forkwarden_test, and
# installs the pure-Python driver pg8000 when python3 lacks it.
#   scripts/ensure-postgres.sh        (Debian's postgresql; CI runs it as root)
set -euo pipefail
user="$(id -un)"
if ! command -v pg_lsclusters >/dev/null; then
  "$(dirname "$0")/ensure-package.sh" pg_lsclusters postgresql
fi
cluster="$(pg_lsclusters --no-header | awk 'NR == 1 { print $1, $2 }')"
if [ -z "$cluster" ]; then
  echo "no PostgreSQL cluster on this machine (pg_lsclusters lists none)" >&2
  exit 1
fi
if ! pg_lsclusters --no-header | awk 'NR == 1 { exit $4 == "online" ? 0 : 1 }'; then
  # shellcheck disable=SC2086
  pg_ctlcluster $cluster start
fi
as_postgres() {
  if [ "$(id -u)" = 0 ]; then su postgres -c "$1"; else sudo -u postgres sh -c "$1"; fi
}
if ! as_postgres "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname = '$user'\"" | grep -q 1; then
  as_postgres "createuser -s '$user'"
fi
if ! psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'forkwarden_test'" | grep -q 1; then
  createdb forkwarden_test
fi
if ! python3 -c "import pg8000" 2>/dev/null; then
  echo "installing pg8000 (PyPI) for python3" >&2
  python3 -m pip install -q pg8000
fi
