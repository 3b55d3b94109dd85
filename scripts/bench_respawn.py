#!/usr/bin/env python3
"""Measure how fast forkwarden replaces a killed worker, and what its master costs.

Starts the release binary on 127.0.0.1 (a free port) and reports:
  * respawn latency: SIGKILL of the only HTTP worker -> the first response from its
    replacement (the connection waits in the listen backlog meanwhile), over --kills runs.
    Each worker is killed only once it is older than 1 s: a worker dying younger counts as
    a failed start, and the master would (rightly) back off as from a crash loop;
  * the master's resident memory and open descriptors with --workers workers;
  * the master's CPU time while idle for --idle seconds.

Usage: scripts/bench_respawn.py [--kills 20] [--workers 8] [--idle 10] [--write-docs]
Only loopback traffic; every process started is stopped by pid at the end.
"""

import argparse
import os
import signal
import statistics
import time

from fwbench import Server, build, http_get, machine, publish, summary

TICKS = os.sysconf("SC_CLK_TCK")
# A worker younger than this that dies is a failed start to the master (crash-loop backoff).
FAST_FAILURE_S = 1.1


def master_stats(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu_ticks = int(fields[11]) + int(fields[12])
    return rss, fds, cpu_ticks


def respawn_latency(kills):
    samples = []
    with Server("workers = 1") as server:
        server.wait_for_workers(1)
        for _ in range(kills):
            time.sleep(FAST_FAILURE_S)  # let the worker outlive the fast-failure window
            old = int(http_get(server.port, "/pid")[1])
            os.kill(old, signal.SIGKILL)
            killed_at = time.monotonic()
            new = int(http_get(server.port, "/pid")[1])
            samples.append((time.monotonic() - killed_at) * 1000)
            if new == old:
                raise RuntimeError("the killed worker answered")
    return samples


def master_cost(workers, idle):
    with Server(f"workers = {workers}") as server:
        server.wait_for_workers(workers)
        for _ in range(200):
            http_get(server.port, "/")
        rss, fds, cpu_before = master_stats(server.proc.pid)
        time.sleep(idle)  # the idle cost is what is measured: nothing to wait for but time
        _, _, cpu_after = master_stats(server.proc.pid)
        worker_rss = []
        for pid in server.workers():
            with open(f"/proc/{pid}/status") as f:
                worker_rss.append(next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")))
        return rss, fds, (cpu_after - cpu_before) / TICKS, worker_rss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the results into docs/benchmarks.md")
    args = parser.parse_args()
    build()
    samples = respawn_latency(args.kills)
    rss, fds, cpu, worker_rss = master_cost(args.workers, args.idle)
    lines = [
        f"Machine: {machine()}.",
        f"Command: `scripts/bench_respawn.py --kills {args.kills} --workers {args.workers} "
        f"--idle {args.idle:g}`.",
        "",
        "| measure | result |",
        "|---|---|",
        f"| SIGKILL of a worker -> its replacement answering (median / max over {args.kills}) "
        f"| {summary(samples)} |",
        f"| master RSS with {args.workers} http workers (default limits on) | {rss} KiB |",
        f"| master open descriptors | {fds} |",
        f"| master CPU over {args.idle:g} s idle (RSS and time limits polled every 100 ms) "
        f"| {cpu:.2f} s |",
        f"| worker RSS (median) | {statistics.median(worker_rss):.0f} KiB |",
    ]
    publish("bench_respawn", "Respawn and master cost", lines, args.write_docs)


if __name__ == "__main__":
    main()
