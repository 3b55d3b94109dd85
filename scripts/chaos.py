#!/usr/bin/env python3
"""Load forkwarden while things go wrong, and check that nothing is lost that need not be.

Runs wrk (keep-alive) against a server with --workers HTTP workers for --duration seconds,
while, concurrently:
  * a random HTTP worker is SIGKILLed every --kill-every milliseconds;
  * every --fault-every seconds a worker is pushed over a limit through the demo app's
    fault endpoints (in turn: limit_memory_hard, limit_time_cpu, limit_time_real,
    limit_memory_soft); random kills pause while a time-limit fault runs, or they would
    end it before its limit does;
  * every --signal-every seconds the master gets SIGHUP, then SIGTTIN, then SIGTTOU.
Then prints requests sent / succeeded / failed, workers killed, respawns and limit
enforcements seen in the log, the worst time the pool stayed below its wanted size, the
master's RSS and open descriptors before and after, and zombie processes left.

Verdict: wrk's failed requests must be explained by the random kills (a killed worker
loses at most the one request it was serving); anything else is reported as a bug and the
script exits 1. The fault requests are the script's own and are expected to fail.

Usage: scripts/chaos.sh [--duration 30] [--workers 4] [--connections 8] [--kill-every 500]
                        [--fault-every 3] [--signal-every 5] [--write-docs]
"""

import argparse
import os
import random
import re
import signal
import subprocess
import threading
import time

from fwbench import ROOT, Server, build, http_get, machine, publish, wait_for

WRK_REPORT = os.path.join(ROOT, "scripts", "wrk_report.lua")
FAULTS = [
    ("limit_memory_hard", "/alloc?mb=300"),
    ("limit_time_cpu", "/burn?ms=5000"),
    ("limit_time_real", "/sleep?ms=8000"),
    ("limit_memory_soft", "/alloc?mb=100"),
]


def master_stats(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def zombies_of(pid):
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                count += fields[0] == "Z" and int(fields[1]) == pid
            except (OSError, IndexError):
                pass
    return count


def http_workers(server):
    titled = []
    for pid in server.workers():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"http worker" in f.read():
                    titled.append(pid)
        except OSError:
            pass
    return titled


class Chaos:
    def __init__(self, server, args):
        self.server = server
        self.args = args
        self.stop = threading.Event()
        # Set while a time-limit fault runs: a random kill would end it before its limit.
        self.quiet = threading.Event()
        self.kills = 0
        self.faults = 0
        self.signals = 0
        self.wanted = args.workers
        self.worst_below_ms = 0.0

    def killer(self):
        while not self.stop.wait(self.args.kill_every / 1000):
            if self.quiet.is_set():
                continue
            workers = http_workers(self.server)
            if workers:
                try:
                    os.kill(random.choice(workers), signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass

    def faulter(self):
        turn = 0
        while not self.stop.wait(self.args.fault_every):
            _, path = FAULTS[turn % len(FAULTS)]
            turn += 1
            threading.Thread(target=self._fault, args=(path,), daemon=True).start()

    def _fault(self, path):
        slow = not path.startswith("/alloc")
        if slow:
            self.quiet.set()
        try:
            http_get(self.server.port, path, timeout=15)
        except OSError:
            pass
        finally:
            self.quiet.clear()
        self.faults += 1

    def signaller(self):
        pid = self.server.proc.pid
        while not self.stop.wait(self.args.signal_every):
            for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
                os.kill(pid, sig)
                self.signals += 1
                # TTIN raises the wanted count by one, TTOU lowers it again; HUP resets it.
                self.wanted = self.args.workers + (1 if sig == signal.SIGTTIN else 0)
                if self.stop.wait(0.2):
                    return

    def watcher(self):
        below_since = None
        while not self.stop.is_set():
            now = time.monotonic()
            if len(http_workers(self.server)) < self.wanted:
                below_since = below_since or now
                self.worst_below_ms = max(self.worst_below_ms, (now - below_since) * 1000)
            else:
                below_since = None
            time.sleep(0.005)  # sampling period of the pool-size watch


def run_wrk(port, args):
    command = ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", "-s", WRK_REPORT,
               f"http://127.0.0.1:{port}/"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    values = dict(re.findall(r"^(\w+) (\d+)$", output, re.M))
    return {key: int(value) for key, value in values.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--kill-every", type=int, default=500, help="milliseconds")
    parser.add_argument("--fault-every", type=float, default=3.0, help="seconds")
    parser.add_argument("--signal-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    build()
    settings = (f"workers = {args.workers}\nlimit_memory_soft = \"64MiB\"\n"
                f"limit_memory_hard = \"160MiB\"\nlimit_memory_hard_rlimit = false\n"
                f"limit_time_cpu = 1\nlimit_time_real = 3\ngraceful_timeout = 5\n")
    with Server(settings) as server:
        server.wait_for_workers(args.workers)
        http_get(server.port, "/health")
        rss_before, fds_before = master_stats(server.proc.pid)
        chaos = Chaos(server, args)
        threads = [threading.Thread(target=work, daemon=True)
                   for work in (chaos.killer, chaos.faulter, chaos.signaller, chaos.watcher)]
        for thread in threads:
            thread.start()
        results = run_wrk(server.port, args)
        chaos.stop.set()
        for thread in threads:
            thread.join()
        server.wait_for_workers(args.workers, timeout=30)
        # The last exits may still be on their way to being reaped: give them a bounded time.
        try:
            wait_for(lambda: zombies_of(server.proc.pid) == 0
                     and master_stats(server.proc.pid)[1] <= fds_before, 5, 0.01)
        except TimeoutError:
            pass  # what is left is reported below
        rss_after, fds_after = master_stats(server.proc.pid)
        zombies = zombies_of(server.proc.pid)
        log = server.log_text()
    failed = sum(results[key] for key in results if key.startswith("errors_")) + results["non_2xx"]
    succeeded = results["requests"] - results["non_2xx"]
    respawns = log.count("; respawned as pid")
    backoffs = log.count("failed starts in a row")
    enforced = {name: log.count(f"{name} exceeded") for name, _ in FAULTS}
    explained = failed <= chaos.kills
    lines = [
        f"Machine: {machine()}.",
        f"Command: `scripts/chaos.sh --duration {args.duration} --workers {args.workers} "
        f"--connections {args.connections} --kill-every {args.kill_every} "
        f"--fault-every {args.fault_every:g} --signal-every {args.signal_every:g}`.",
        "",
        "| measure | result |",
        "|---|---|",
        f"| requests sent (wrk, keep-alive) | {results['requests'] + results['errors_read']} |",
        f"| succeeded / failed | {succeeded} / {failed} |",
        f"| workers SIGKILLed at random | {chaos.kills} |",
        f"| fault requests (limits crossed on purpose) / signals to the master | "
        f"{chaos.faults} / {chaos.signals} |",
        f"| respawns in the log | {respawns} |",
        "| limit enforcements in the log | "
        + ", ".join(f"{name} {count}" for name, count in enforced.items()) + " |",
        f"| worst time below the wanted pool size (5 ms sampling) | {chaos.worst_below_ms:.0f} ms |",
        f"| crash-loop backoffs (failed starts; a worker killed from outside is never one) | {backoffs} |",
        f"| master RSS before / after | {rss_before} / {rss_after} KiB |",
        f"| master open descriptors before / after | {fds_before} / {fds_after} |",
        f"| zombies left | {zombies} |",
        f"| verdict | {'every failure explained by a kill' if explained else 'UNEXPLAINED FAILURES'} |",
    ]
    publish("chaos", "Chaos run", lines, args.write_docs)
    ok = explained and zombies == 0 and fds_after <= fds_before
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
