#!/usr/bin/env python3
"""Measure how precisely forkwarden enforces each limit, and how fast a replacement serves.

For each limit, over --runs runs, on a server with one HTTP worker:
  * crossing -> gone: from the moment the worker crossed the limit to the moment its
    process was gone (for memory, the crossing is seen by polling its RSS every 1 ms; for
    time limits it is the request's start plus the limit);
  * gone -> serving: from then to the first answer from its replacement (the request waits
    in the listen backlog meanwhile; a soft recycle starts the replacement before the old
    worker has even left, so this can be 0).
A worker the master ends for a limit is replaced at once (never a failed start), so each
run can follow the last without a pause.

Usage: scripts/bench_limits.py [--runs 10] [--write-docs]
Targets (issue "limits"): hung requests gone within limit_time_real + 100 ms, RSS overruns
within one poll interval + 50 ms, replacement serving within 20 ms of the kill.
"""

import argparse
import threading
import time

from fwbench import (Server, build, http_get, is_gone, machine, publish, rss_bytes, summary,
                     wait_for)

MIB = 1 << 20


def current_pid(server):
    return int(http_get(server.port, "/pid")[1])


def replacement_answers(server, old):
    """Time at which a worker other than `old` answers /pid."""
    while True:
        status, body = http_get(server.port, "/pid")
        if status == 200 and int(body) != old:
            return time.monotonic()


def bench_time_limit(path, settings, limit_s, expected_status, runs):
    crossing_to_gone, gone_to_serving = [], []
    with Server("workers = 1\nlimit_memory_soft = 0\nlimit_memory_hard = 0\n" + settings) as s:
        s.wait_for_workers(1)
        for _ in range(runs):
            pid = current_pid(s)
            sent = time.monotonic()
            status, _ = http_get(s.port, path)
            assert status in (expected_status, 0), f"{path}: status {status}"
            gone = wait_for(lambda: is_gone(pid), 10)
            crossing_to_gone.append((gone - sent - limit_s) * 1000)
            gone_to_serving.append((replacement_answers(s, pid) - gone) * 1000)
    return crossing_to_gone, gone_to_serving


def bench_memory_limit(settings, limit_bytes, runs):
    crossing_to_gone, gone_to_serving = [], []
    with Server("workers = 1\nlimit_time_real = 0\n" + settings) as s:
        s.wait_for_workers(1)
        for _ in range(runs):
            pid = current_pid(s)
            leak = threading.Thread(target=http_get, args=(s.port, "/alloc?mb=160"))
            leak.start()
            # The master may kill the worker between two of our 1 ms polls: then the
            # crossing is seen as the disappearance itself (within the poll's granularity).
            crossed = wait_for(lambda: is_gone(pid) or (rss_bytes(pid) or 0) > limit_bytes, 10)
            gone = wait_for(lambda: is_gone(pid), 10)
            leak.join()
            crossing_to_gone.append((gone - crossed) * 1000)
            gone_to_serving.append(max(0.0, replacement_answers(s, pid) - gone) * 1000)
    return crossing_to_gone, gone_to_serving


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the table into docs/benchmarks.md")
    args = parser.parse_args()
    build()
    rows = [
        ("limit_time_real = 1 (`/sleep?ms=5000`, answered 504)",
         bench_time_limit("/sleep?ms=5000", "limit_time_real = 1", 1.0, 504, args.runs)),
        ("limit_time_cpu = 1 (`/burn?ms=5000`, answered 503)",
         bench_time_limit("/burn?ms=5000", "limit_time_cpu = 1\nlimit_time_real = 0", 1.0, 503,
                          args.runs)),
        ("limit_memory_hard = 64MiB, RSS poll 100 ms (`/alloc?mb=160`)",
         bench_memory_limit('limit_memory_soft = 0\nlimit_memory_hard = "64MiB"\n'
                            "limit_memory_hard_rlimit = false", 64 * MIB, args.runs)),
        ("limit_memory_soft = 64MiB, RSS poll 100 ms (`/alloc?mb=160`, graceful recycle)",
         bench_memory_limit('limit_memory_soft = "64MiB"\nlimit_memory_hard = 0', 64 * MIB,
                            args.runs)),
    ]
    lines = [
        f"Machine: {machine()}.",
        f"Command: `scripts/bench_limits.py --runs {args.runs}`; median / max over {args.runs} runs.",
        "",
        "| limit | crossing -> worker gone | worker gone -> replacement answering |",
        "|---|---|---|",
    ]
    for name, (to_gone, to_serving) in rows:
        lines.append(f"| {name} | {summary(to_gone)} | {summary(to_serving)} |")
    publish("bench_limits", "Limit enforcement", lines, args.write_docs)


if __name__ == "__main__":
    main()
