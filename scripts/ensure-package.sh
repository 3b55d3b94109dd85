#!/usr/bin/env bash
# Makes sure a tool the scripts need is installed, from the system's packages when missing.
#   scripts/ensure-package.sh COMMAND [PACKAGE]     (PACKAGE defaults to COMMAND)
set -euo pipefail
command="$1" package="${2:-$1}"
command -v "$command" >/dev/null && exit 0
echo "$command is not installed: installing the Debian package '$package' with apt-get" >&2
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
if command -v apt-get >/dev/null; then
  $sudo apt-get install -y "$package" >/dev/null 2>&1 \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y "$package" >/dev/null; }
else
  echo "no apt-get here: install $command with your package manager ('$package')" >&2
  exit 1
fi
command -v "$command" >/dev/null
