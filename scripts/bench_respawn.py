#!/usr/bin/env python3
"""Measure how fast forkwarden replaces a killed worker, and what its master costs.

Starts the release binary on 127.0.0.1 (a free port) and reports:
  * respawn latency: SIGKILL of the only HTTP worker -> the first response from its
    replacement (the connection waits in the listen backlog meanwhile), over --kills runs.
    Each worker is killed only once it is older than 1 s: a worker dying younger counts as
    a failed start, and the master would (rightly) back off as from a crash loop;
  * the master's resident memory and open descriptors with --workers workers;
  * the master's CPU time while idle for --idle seconds.

Usage: scripts/bench_respawn.py [--kills 20] [--workers 8] [--idle 10]
Only loopback traffic; every process started is stopped by pid at the end.
"""

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "forkwarden")
TICKS = os.sysconf("SC_CLK_TCK")


def http_get(port, path, timeout=10.0):
    """GET path; returns the body (raises on failure)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {head[:40]!r}")
    return body.decode()


class Server:
    def __init__(self, workers):
        self.dir = tempfile.TemporaryDirectory()
        config = os.path.join(self.dir.name, "fw.toml")
        with open(config, "w") as f:
            f.write(f"http_port = 0\nworkers = {workers}\nmax_cron_threads = 0\n")
        self.log = open(os.path.join(self.dir.name, "log"), "w+")
        self.proc = subprocess.Popen([BINARY, "--config", config], stderr=self.log,
                                     stdout=subprocess.DEVNULL)
        self.port = None
        deadline = time.monotonic() + 10
        while self.port is None and time.monotonic() < deadline:
            self.log.seek(0)
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log.read())
            self.port = int(match.group(1)) if match else None
            time.sleep(0.02)
        if self.port is None:
            raise RuntimeError("server did not start")

    def workers(self):
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                        pids.append(int(entry))
                except (OSError, IndexError):
                    pass
        return pids

    def wait_for_workers(self, count, timeout=10):
        deadline = time.monotonic() + timeout
        while len(self.workers()) != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"expected {count} workers, have {self.workers()}")
            time.sleep(0.02)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()


def master_stats(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu_ticks = int(fields[11]) + int(fields[12])
    return rss, fds, cpu_ticks


# A worker younger than this that dies is a failed start to the master (crash-loop backoff).
FAST_FAILURE_S = 1.0


def respawn_latency(kills):
    server = Server(workers=1)
    try:
        server.wait_for_workers(1)
        http_get(server.port, "/health")
        samples = []
        for _ in range(kills):
            old = int(http_get(server.port, "/pid"))
            os.kill(old, signal.SIGKILL)
            killed_at = time.monotonic()
            new = int(http_get(server.port, "/pid"))
            samples.append((time.monotonic() - killed_at) * 1000)
            if new == old:
                raise RuntimeError("the killed worker answered")
            # Let the replacement outlive the fast-failure window before the next kill.
            time.sleep(FAST_FAILURE_S + 0.1)
        return samples
    finally:
        server.stop()


def master_cost(workers, idle):
    server = Server(workers=workers)
    try:
        server.wait_for_workers(workers)
        for _ in range(200):
            http_get(server.port, "/")
        rss, fds, cpu_before = master_stats(server.proc.pid)
        time.sleep(idle)  # measuring idle cost: nothing to wait for but time itself
        _, _, cpu_after = master_stats(server.proc.pid)
        worker_rss = []
        for pid in server.workers():
            with open(f"/proc/{pid}/status") as f:
                worker_rss.append(next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")))
        return rss, fds, (cpu_after - cpu_before) / TICKS, worker_rss
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    if not os.path.exists(BINARY):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    samples = respawn_latency(args.kills)
    samples.sort()
    print(f"respawn latency, SIGKILL -> replacement answering, {len(samples)} kills:")
    print(f"  median {statistics.median(samples):.2f} ms, "
          f"p90 {samples[int(len(samples) * 0.9) - 1]:.2f} ms, max {samples[-1]:.2f} ms")

    rss, fds, cpu, worker_rss = master_cost(args.workers, args.idle)
    print(f"master with {args.workers} http workers: RSS {rss} KiB, {fds} open descriptors, "
          f"CPU {cpu:.2f} s over {args.idle:.0f} s idle")
    print(f"  worker RSS: median {statistics.median(worker_rss):.0f} KiB")


if __name__ == "__main__":
    sys.exit(main())
