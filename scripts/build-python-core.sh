#!/usr/bin/env bash
# Builds the Python runner's core (python/: a PyO3 extension module) and lays the package
# out beside it, importable with PYTHONPATH set to the directory this prints, without
# installing anything: what the tests and the comparison scripts use. A user installs it
# with `pip install forkwarden` or `pip install .` (maturin). `--release` for benchmarks.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
profile=debug
flags=()
if [[ "${1:-}" == "--release" ]]; then
    profile=release
    flags=(--release)
fi
cargo build --quiet --manifest-path "$root/Cargo.toml" -p forkwarden-wsgi "${flags[@]}"
# Wherever cargo puts its output (CARGO_TARGET_DIR, a config's build.target-dir), not target/.
target="$(cargo metadata --quiet --manifest-path "$root/Cargo.toml" --no-deps --format-version 1 \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
package="$target/$profile/python/forkwarden_wsgi"
mkdir -p "$package"
# Each link replaced in one rename: a test importing the package meanwhile sees a whole one.
link() {
    ln -sfn "$1" "$2.new.$$"
    mv -fT "$2.new.$$" "$2"
}
for module in "$root"/python/forkwarden_wsgi/*.py; do
    link "$module" "$package/$(basename "$module")"
done
link "$target/$profile/lib_core.so" "$package/_core.abi3.so"
echo "$target/$profile/python"
