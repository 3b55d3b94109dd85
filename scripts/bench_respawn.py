#!/usr/bin/env python3
"""Measure how fast forkwarden replaces a killed worker, and what its master costs.

Starts the release binary on 127.0.0.1 (a free port) and reports:
  * respawn latency: SIGKILL of the only HTTP worker -> the first response from its
    replacement (the connection waits in the listen backlog meanwhile), over --kills runs.
    A worker that was ready and is killed from outside is replaced at once, however young;
  * the master's resident memory and open descriptors with --workers workers, and what
    answering `forkwarden status` and, with `metrics_listen` on, Prometheus scrapes and the
    status page's reads add to it;
  * the master's CPU time (from /proc/PID/schedstat, in nanoseconds) and wakeups (its
    voluntary context switches) while idle for --idle seconds: with built-in workers, with
    the same and --host-processes other processes on the host (the master's cost must not
    grow with the host), and with WSGI programs under the bundled runner.

Usage: scripts/bench_respawn.py [--kills 20] [--workers 8] [--idle 10]
                                [--host-processes 1000] [--write-docs]
Only loopback traffic; every process started is stopped by pid at the end.
"""

import argparse
import http.client
import os
import signal
import statistics
import subprocess
import time

from fwbench import ROOT, Server, build, http_get, machine, publish, runner_app, summary

TICKS = os.sysconf("SC_CLK_TCK")


def master_stats(pid):
    """(RSS KiB, open descriptors, CPU ns, voluntary context switches) of the master."""
    with open(f"/proc/{pid}/status") as f:
        status = f.read().splitlines()
    rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    switches = next(int(line.split()[1]) for line in status
                    if line.startswith("voluntary_ctxt_switches:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/schedstat") as f:
        cpu_ns = int(f.read().split()[0])
    return rss, fds, cpu_ns, switches


def respawn_latency(kills):
    samples = []
    with Server("workers = 1") as server:
        server.wait_for_workers(1)
        for _ in range(kills):
            old = int(http_get(server.port, "/pid")[1])
            os.kill(old, signal.SIGKILL)
            killed_at = time.monotonic()
            new = int(http_get(server.port, "/pid")[1])
            samples.append((time.monotonic() - killed_at) * 1000)
            if new == old:
                raise RuntimeError("the killed worker answered")
    return samples


def idle_cost(server, idle):
    """The master's CPU (ms) and wakeups over `idle` seconds of nothing to do."""
    _, _, cpu_before, woke_before = master_stats(server.proc.pid)
    started = time.monotonic()
    time.sleep(idle)  # the idle cost is what is measured: nothing to wait for but time
    elapsed = time.monotonic() - started
    _, _, cpu_after, woke_after = master_stats(server.proc.pid)
    return (cpu_after - cpu_before) / 1e6, (woke_after - woke_before) / elapsed


def master_cost(workers, idle):
    with Server(f"workers = {workers}") as server:
        server.wait_for_workers(workers)
        for _ in range(200):
            http_get(server.port, "/")
        rss, fds, _, _ = master_stats(server.proc.pid)
        # What answering `forkwarden status` costs the master's memory.
        for _ in range(100):
            server.status()
        status_rss = master_stats(server.proc.pid)[0]
        cpu_ms, wakeups = idle_cost(server, idle)
        worker_rss = []
        for pid in server.workers():
            with open(f"/proc/{pid}/status") as f:
                worker_rss.append(next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")))
        return rss, status_rss, fds, cpu_ms, wakeups, worker_rss


def metrics_cost(workers, scrapes):
    """Master RSS (KiB) with `metrics_listen` on: after the same 200 requests as
    master_cost, then after `scrapes` reads each of /metrics and /status.json and a tenth
    of that of /status."""
    with Server(f"workers = {workers}\nmetrics_listen = \"127.0.0.1:0\"") as server:
        server.wait_for_workers(workers)
        for _ in range(200):
            http_get(server.port, "/")
        rss = master_stats(server.proc.pid)[0]
        host, port = server.metrics_address().split(":")
        for path, count in [("/metrics", scrapes), ("/status.json", scrapes),
                            ("/status", scrapes // 10)]:
            for _ in range(count):
                connection = http.client.HTTPConnection(host, int(port), timeout=5)
                connection.request("GET", path)
                answer = connection.getresponse()
                if answer.status != 200:
                    raise RuntimeError(f"{path} answered {answer.status}")
                answer.read()
                connection.close()
        return rss, master_stats(server.proc.pid)[0]


def busy_host_cost(workers, idle, processes):
    """Idle cost with `processes` more processes on the host (sleepers of our own)."""
    crowd = subprocess.Popen(
        ["sh", "-c", f"for i in $(seq {processes}); do sleep 600 & done; wait"],
        start_new_session=True)
    try:
        time.sleep(2)  # let the crowd start: its size, not its birth, is what is measured
        with Server(f"workers = {workers}") as server:
            server.wait_for_workers(workers)
            http_get(server.port, "/")
            return idle_cost(server, idle)
    finally:
        os.killpg(crowd.pid, signal.SIGKILL)
        crowd.wait()


def program_cost(workers, idle):
    """Idle cost with WSGI programs under the bundled runner ([app])."""
    settings = f"workers = {workers}\n" + runner_app("compare_app:app",
                                                     os.path.join(ROOT, "scripts"))
    with Server(settings) as server:
        server.wait_for_workers(workers, timeout=30)
        deadline = time.monotonic() + 30
        while http_get(server.port, "/health")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        return idle_cost(server, idle)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--host-processes", type=int, default=1000)
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the results into docs/benchmarks.md")
    args = parser.parse_args()
    build()
    samples = respawn_latency(args.kills)
    rss, status_rss, fds, cpu_ms, wakeups, worker_rss = master_cost(args.workers, args.idle)
    metrics_rss, scraped_rss = metrics_cost(args.workers, 100)
    crowd_ms, crowd_wakeups = busy_host_cost(args.workers, args.idle, args.host_processes)
    program_ms, program_wakeups = program_cost(args.workers, args.idle)
    idle = f"{args.idle:g} s idle"
    lines = [
        f"Machine: {machine()}.",
        f"Command: `scripts/bench_respawn.py --kills {args.kills} --workers {args.workers} "
        f"--idle {args.idle:g} --host-processes {args.host_processes}`.",
        "",
        "| measure | result |",
        "|---|---|",
        f"| SIGKILL of a worker -> its replacement answering (median / max over {args.kills}) "
        f"| {summary(samples)} |",
        f"| master RSS with {args.workers} http workers (default limits on) | {rss} KiB |",
        f"| the same after answering `forkwarden status` 100 times | {status_rss} KiB |",
        f"| the same with `metrics_listen` on, before any scrape | {metrics_rss} KiB |",
        f"| ... after 100 scrapes of `/metrics`, 100 reads of `/status.json`, 10 of `/status` "
        f"| {scraped_rss} KiB ({scraped_rss - rss:+d} KiB against metrics off) |",
        f"| master open descriptors | {fds} |",
        f"| master CPU over {idle} / wakeups per second, {args.workers} built-in workers "
        f"| {cpu_ms:.2f} ms / {wakeups:.1f} |",
        f"| the same with {args.host_processes} more processes on the host "
        f"| {crowd_ms:.2f} ms / {crowd_wakeups:.1f} |",
        f"| the same with {args.workers} WSGI programs (bundled runner, `[app]`) "
        f"| {program_ms:.2f} ms / {program_wakeups:.1f} |",
        f"| worker RSS (median) | {statistics.median(worker_rss):.0f} KiB |",
    ]
    publish("bench_respawn", "Respawn and master cost", lines, args.write_docs)


if __name__ == "__main__":
    main()
