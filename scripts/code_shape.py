#!/usr/bin/env python3
"""Prints the shape of the Rust code: lines per module (a directory counts as one module),
and the functions longer than a limit (100 lines by default), longest first.

    scripts/code_shape.py [--limit N] [--rev GIT_REVISION]

With --rev, measures that revision's tree instead of the working tree (read with git, so
nothing is checked out). Functions are found the way rustfmt lays them out: a line whose
code starts with `fn` (after `pub`, `async`, `unsafe`... qualifiers), ended by the first
line holding only `}` at the same indentation. Tests (`mod tests`) are counted in their
module's lines but their functions are not listed.
"""

import argparse
import collections
import re
import subprocess
import sys
from pathlib import Path

ROOTS = ("src", "forkwarden-worker/src", "python/src")
FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?((const|async|unsafe|extern\s+\"C\")\s+)*fn\s+(\w+)")


def files(rev):
    if rev is None:
        for root in ROOTS:
            for path in sorted(Path(root).rglob("*.rs")):
                yield str(path), path.read_text()
        return
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, "--", *ROOTS],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    for name in listing:
        if name.endswith(".rs"):
            text = subprocess.run(
                ["git", "show", f"{rev}:{name}"], check=True, capture_output=True, text=True
            ).stdout
            yield name, text


def module_of(path):
    """`src/master/pool.rs` -> `src/master/`; `src/limits.rs` -> `src/limits.rs`."""
    for root in sorted(ROOTS, key=len, reverse=True):
        if path.startswith(root + "/"):
            rest = path[len(root) + 1:]
            head = rest.split("/", 1)
            return f"{root}/{head[0]}/" if len(head) == 2 else path
    return path


def long_functions(path, text, limit):
    lines = text.splitlines()
    in_tests_from = None
    for number, line in enumerate(lines):
        if re.match(r"^\s*mod tests\s*\{", line):
            in_tests_from = number
            break
    found = []
    for number, line in enumerate(lines):
        if in_tests_from is not None and number > in_tests_from:
            break
        match = FN.match(line)
        if not match or line.rstrip().endswith(";"):
            continue
        indent = match.group(1)
        for end in range(number + 1, len(lines)):
            if lines[end] == indent + "}":
                length = end - number + 1
                if length > limit:
                    found.append((length, f"{path}:{number + 1}", match.group(6)))
                break
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--rev")
    args = parser.parse_args()
    modules = collections.Counter()
    longest = []
    for path, text in files(args.rev):
        modules[module_of(path)] += len(text.splitlines())
        longest.extend(long_functions(path, text, args.limit))
    print(f"{'lines':>6}  module")
    for module, count in sorted(modules.items()):
        print(f"{count:>6}  {module}")
    print(f"{sum(modules.values()):>6}  total")
    print(f"\nfunctions over {args.limit} lines: {len(longest)}")
    for length, where, name in sorted(longest, reverse=True):
        print(f"{length:>6}  {name}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
