#!/usr/bin/env python3
"""Idle and slow connections against 2 workers: do real clients still get served?

Starts forkwarden (release build; --binary for another one) with 2 workers and the default
http_socket_timeout (2 s), opens --idle connections that never send a byte and --slow
"slowloris" connections that send a request head one byte a second, and meanwhile sends a
normal request (GET /health, a new connection each) every 50 ms for --seconds seconds.
Reports the normal requests' latency (target: p99 under 100 ms), and when and how the bad
connections were cut (each must be, at its deadline: a slow head gets 408 when the 2 s for
its head are up; a silent connection is held back by the kernel (TCP_DEFER_ACCEPT, 2 s) and
then closed after 2 s more without an answer).

Usage: scripts/attack.py [--idle 500] [--slow 500] [--seconds 10] [--binary PATH] [--write-docs]
Only loopback traffic; bounded in time and in connections; the server is stopped by pid.
"""

import argparse
import selectors
import socket
import statistics
import time

import fwbench
from fwbench import Server, build, http_get, machine, publish


def open_connections(port, count):
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        sockets.append(sock)
    return sockets


def attack(port, idle_count, slow_count, seconds):
    started = time.monotonic()
    idle = open_connections(port, idle_count)
    slow = open_connections(port, slow_count)
    watch = selectors.DefaultSelector()
    for sock in idle + slow:
        watch.register(sock, selectors.EVENT_READ)
    cut = {}  # socket -> (seconds after start, what it got)
    head = b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 1000
    latencies, failures = [], 0
    next_byte, next_request, sent = started, started, 0
    deadline = started + seconds
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_byte:
            # One more byte of each slow head that is still open.
            for sock in slow:
                if sock not in cut:
                    try:
                        sock.send(head[sent:sent + 1])
                    except OSError:
                        pass
            sent += 1
            next_byte += 1.0
        if now >= next_request:
            began = time.monotonic()
            try:
                status, _ = http_get(port, "/health", timeout=30)
            except OSError:
                status = 0
            latencies.append((time.monotonic() - began) * 1000)
            failures += status != 200
            next_request += 0.05
        for key, _ in watch.select(timeout=0.01):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            what = data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed, no answer"
            cut[sock] = (time.monotonic() - started, what)
            watch.unregister(sock)
    for sock in idle + slow:
        sock.close()
    return latencies, failures, cut, idle, slow


def summary(values, unit):
    if not values:
        return "none"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"median {statistics.median(ordered):.1f} {unit}, p99 {p99:.1f} {unit}, "
            f"max {ordered[-1]:.1f} {unit}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--binary", help="measure this forkwarden binary instead")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.binary:
        fwbench.BINARY = args.binary
    else:
        build()
    with Server("workers = 2") as server:
        server.wait_for_workers(2)
        latencies, failures, cut, idle, slow = attack(
            server.port, args.idle, args.slow, args.seconds)
    slow_cut = [cut[sock][0] for sock in slow if sock in cut]
    idle_cut = [cut[sock][0] for sock in idle if sock in cut]
    answers = sorted({cut[sock][1] for sock in slow if sock in cut})
    lines = [
        f"Machine: {machine()}.",
        f"Command: `scripts/attack.py --idle {args.idle} --slow {args.slow} "
        f"--seconds {args.seconds:g}`; 2 workers, http_socket_timeout 2 s.",
        "",
        "| measure | result |",
        "|---|---|",
        f"| normal requests (GET /health, a new connection every 50 ms), latency "
        f"| {summary(latencies, 'ms')}; {failures} failed of {len(latencies)} |",
        f"| slow heads (one byte a second) cut | {len(slow_cut)} of {len(slow)}, "
        f"{summary(slow_cut, 's')} after they connected; answer: {', '.join(answers) or '-'} |",
        f"| silent connections cut | {len(idle_cut)} of {len(idle)}, "
        f"{summary(idle_cut, 's')} after they connected |",
    ]
    publish("attack", "Idle and slow connections against 2 workers", lines, args.write_docs)


if __name__ == "__main__":
    main()
