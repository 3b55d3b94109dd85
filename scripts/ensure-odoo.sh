#!/usr/bin/env bash
# Makes real Odoo 17 (../shared/odoo17, see ../shared/odoo17.md) ready for the Odoo tests and
# benchmarks: a venv under target/odoo-venv with Odoo's requirements (Python 3.12; psycopg2
# as its binary wheel, without python-ldap and ebaysdk) and forkwarden's Python runner, and a
# database forkwarden_odoo with base, web and bus installed. Prints the venv's python.
#   scripts/ensure-odoo.sh          (needs scripts/ensure-postgres.sh first; CI runs both)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
odoo="${FORKWARDEN_ODOO:-$root/../shared/odoo17}"
odoo="$(cd "$odoo" && pwd)"
venv="$root/target/odoo-venv"
database=forkwarden_odoo
# A Python 3.12 that runs (a pyenv shim may exist without one behind it).
python312=""
for candidate in "$(command -v python3.12 || true)" "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c pass 2>/dev/null; then
    python312="$candidate"
    break
  fi
done
if [ -z "$python312" ]; then
  echo "no Python 3.12 on this machine (Odoo 17's pinned requirements need it)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.requirements-done" ]; then
  rm -rf "$venv"
  "$python312" -m venv "$venv"
  "$venv/bin/pip" install --quiet 'setuptools<70' wheel
  requirements="$venv/requirements.txt"
  grep -v -E '^(python-ldap|ebaysdk)' "$odoo/requirements.txt" \
    | sed -E 's/^psycopg2==/psycopg2-binary==/' > "$requirements"
  "$venv/bin/pip" install --quiet -r "$requirements" >&2
  touch "$venv/.requirements-done"
fi
if ! psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1; then
  "$venv/bin/python" "$odoo/odoo-bin" -d "$database" -i base,web,bus --stop-after-init \
    --without-demo=all --addons-path="$odoo/odoo/addons" --log-level=warn >&2
fi
echo "$venv/bin/python"
