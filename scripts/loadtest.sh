#!/usr/bin/env bash
# Drive HTTP load at forkwarden with wrk and print throughput, latency and errors.
#
#   scripts/loadtest.sh [--config PATH] [--duration S] [--connections C] [--threads T]
#                       [--path P] [--no-keepalive] [--url URL]
#
# Without --url, starts forkwarden (release build) with PATH (default: a temporary config
# with 4 workers on a free port; a given config should use http_port = 0 or a free port),
# and stops it by pid at the end, even on Ctrl-C. With --url, loads a running server.
# wrk is installed with the system's package manager when missing (the script says so).
# Traffic goes to loopback addresses only.
set -euo pipefail
cd "$(dirname "$0")/.."

config="" duration=10 connections=16 threads=2 path="/" url="" keepalive=1
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --path) path="$2"; shift 2 ;;
    --url) url="$2"; shift 2 ;;
    --no-keepalive) keepalive=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "loadtest: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

scripts/ensure-package.sh wrk

workdir=$(mktemp -d)
master=""
cleanup() {
  if [ -n "$master" ] && kill -0 "$master" 2>/dev/null; then
    kill -TERM "$master"; wait "$master" 2>/dev/null || true
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT INT TERM

if [ -z "$url" ]; then
  if [ -z "$config" ]; then
    config="$workdir/forkwarden.toml"
    printf 'http_port = 0\nworkers = 4\nmax_cron_threads = 0\n' > "$config"
  fi
  cargo build --release --quiet
  target/release/forkwarden --config "$config" 2> "$workdir/log" &
  master=$!
  for _ in $(seq 1 200); do
    grep -q "listening on" "$workdir/log" && break
    kill -0 "$master" 2>/dev/null || { cat "$workdir/log" >&2; exit 1; }
    sleep 0.05
  done
  address=$(grep -o 'listening on http://[^ ]*' "$workdir/log" | head -1 | sed 's/listening on //')
  [ -n "$address" ] || { echo "loadtest: the server did not start" >&2; cat "$workdir/log" >&2; exit 1; }
  url="$address"
fi
case "$url" in
  http://127.*|http://localhost*|http://\[::1\]*) ;;
  *) echo "loadtest: refusing $url: only loopback addresses are load-tested" >&2; exit 2 ;;
esac

headers=()
[ "$keepalive" = 1 ] || headers=(-H "Connection: close")
echo "wrk: $threads threads, $connections connections, ${duration}s, ${url%/}$path$([ "$keepalive" = 1 ] || echo ' (no keep-alive)')"
wrk -t "$threads" -c "$connections" -d "${duration}s" "${headers[@]}" \
  -s scripts/wrk_report.lua "${url%/}$path" > "$workdir/wrk" 2>&1 || { cat "$workdir/wrk" >&2; exit 1; }

value() { awk -v key="$1" '$1 == key { print $2 }' "$workdir/wrk"; }
ms() { awk -v us="$(value "$1")" 'BEGIN { printf "%.2f ms", us / 1000 }'; }
awk -v n="$(value requests)" -v us="$(value duration_us)" \
  'BEGIN { printf "requests/s: %.0f (%d requests)\n", n / (us / 1e6), n }'
echo "latency: p50 $(ms latency_p50_us), p90 $(ms latency_p90_us), p99 $(ms latency_p99_us), max $(ms latency_max_us)"
echo "non-2xx responses: $(value non_2xx)"
echo "socket errors: connect $(value errors_connect), read $(value errors_read), write $(value errors_write), timeout $(value errors_timeout)"
