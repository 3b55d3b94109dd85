#!/usr/bin/env bash
# Makes sure the wrk load generator is installed: from the system's packages when missing.
set -euo pipefail
command -v wrk >/dev/null && exit 0
echo "wrk is not installed: installing the Debian package 'wrk' with apt-get" >&2
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
if command -v apt-get >/dev/null; then
  $sudo apt-get install -y wrk >/dev/null 2>&1 \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y wrk >/dev/null; }
else
  echo "no apt-get here: install wrk with your package manager (it is packaged as 'wrk')" >&2
  exit 1
fi
command -v wrk >/dev/null
