#!/usr/bin/env python3
"""Keep-alive, connection churn and slow requests: forkwarden (its built-in workers, and the
Python runner's) beside nginx, uWSGI (--http11-socket), Granian and gunicorn (sync), 4
workers each.

nginx answers `/` with a fixed body from its own event loop (the reference for raw HTTP);
uWSGI, Granian, gunicorn and forkwarden's Python runner serve scripts/compare_app.py
(installed into the throw-away virtualenv under target/ that scripts/compare.py uses);
forkwarden's built-in workers serve its demo app. Measured, each on a fresh server, with wrk
on loopback, in --rounds interleaved rounds (each cell: the median of the rounds, and the
range when there are several):
  * requests/s and p99 latency on `/` with 64 and with 8 keep-alive connections, and how
    many new TCP connections each request cost (the kernel's PassiveOpens counter: a server
    that closes kept-alive connections makes its clients reconnect);
  * two slow mixes: 2, then 8, connections asking for `/sleep?ms=200` (always one in
    flight on each) beside 16 asking for `/`: the fast requests' p99 and rate (nginx has no
    slow endpoint: not measured). With 2 slow in flight, two of the 4 workers are free: a
    fast request should never wait for a slow one.
With --baseline DIR (a checkout of an earlier commit, built with `cargo build --release`),
forkwarden of that checkout is measured too, in the same rounds.
Targets (issues 11 and 28): 64 connections at least 0.6x nginx and at least Granian; 8
connections at least uWSGI; with 2 slow in flight, a fast p99 at most gunicorn's (target:
Granian's, single-digit ms); with 8 slow in flight, no worse than gunicorn's.

Usage: scripts/keepalive.sh [--seconds 5] [--rounds 1] [--baseline DIR] [--write-docs]
Only loopback traffic; every server started is stopped by pid at the end, even on Ctrl-C.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import compare
from fwbench import BINARY, ROOT, build, machine, publish, runner_app

WORKERS = 4


def start_forkwarden(root=ROOT):
    binary = os.path.join(root, "target", "release", "forkwarden")
    return compare.run_forkwarden("forkwarden, built-in workers", WORKERS, 0, 0,
                                  "demo_fault_endpoints = true\n", binary)


def start_forkwarden_python(root=ROOT):
    binary = os.path.join(root, "target", "release", "forkwarden")
    app_dir = os.path.join(root, "scripts")
    return compare.run_forkwarden("forkwarden, Python runner", WORKERS, 0, 0,
                                  runner_app("compare_app:app", app_dir, root=root), binary)


def start_nginx():
    port = compare.free_port()
    directory = tempfile.mkdtemp()
    config = os.path.join(directory, "nginx.conf")
    with open(config, "w") as f:
        f.write(f"""worker_processes {WORKERS};
pid {directory}/nginx.pid;
error_log {directory}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {directory};
    proxy_temp_path {directory};
    fastcgi_temp_path {directory};
    uwsgi_temp_path {directory};
    scgi_temp_path {directory};
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "Hello from nginx\\n"; }}
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    server = compare.Running([nginx, "-c", config, "-g", "daemon off;"], port)
    server.name = "nginx"
    return server


def start_granian():
    port = compare.free_port()
    command = [os.path.join(compare.VENV, "bin", "granian"), "--interface", "wsgi",
               "--workers", str(WORKERS), "--host", "127.0.0.1", "--port", str(port),
               "--no-ws", "compare_app:app"]
    server = compare.Running(command, port, cwd=compare.APP_DIR)
    server.name = "Granian"
    return server


def start_uwsgi():
    return compare.start_uwsgi(WORKERS)


def start_gunicorn():
    return compare.start_gunicorn(WORKERS)


SERVERS = [("forkwarden, built-in workers", start_forkwarden),
           ("forkwarden, Python runner", start_forkwarden_python), ("nginx", start_nginx),
           ("uWSGI --http11-socket", start_uwsgi), ("Granian", start_granian),
           ("gunicorn (sync)", start_gunicorn)]


def passive_opens():
    """TCP connections the kernel has accepted so far (all loopback here)."""
    with open("/proc/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("PassiveOpens")])


def wrk(port, connections, seconds, path="/"):
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", compare.WRK_REPORT,
               f"http://127.0.0.1:{port}{path}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r"^(\w+) (\d+)$", output, re.M)}


def keep_alive(start, connections, seconds):
    server = start().ready()
    try:
        opened = passive_opens()
        report = wrk(server.port, connections, seconds)
        churn = (passive_opens() - opened) / max(report["requests"], 1)
        return {
            "rate": report["requests"] / (report["duration_us"] / 1e6),
            "p99": report["latency_p99_us"] / 1000,
            "churn": churn,
            "errors": compare.failures(report),
        }
    finally:
        server.stop()


def slow_mix(start, seconds, slow_connections):
    server = start().ready()
    try:
        slow = {}
        thread = threading.Thread(target=lambda: slow.update(
            wrk(server.port, slow_connections, seconds, "/sleep?ms=200")))
        thread.start()
        fast = wrk(server.port, 16, seconds)
        thread.join()
        return {
            "p99": fast["latency_p99_us"] / 1000,
            "rate": fast["requests"] / (fast["duration_us"] / 1e6),
            "errors": compare.failures(fast) + compare.failures(slow),
        }
    finally:
        server.stop()


def even(start, seconds):
    """16 keep-alive connections on /sleep?ms=15, every request alike: the fair wait for
    one is 4 turns of 15 ms (16 clients on 4 workers); its p99 says how unfairly the
    requests are taken (Odoo's /web/login is such a load)."""
    server = start().ready()
    try:
        report = wrk(server.port, 16, seconds, "/sleep?ms=15")
        return {
            "p99": report["latency_p99_us"] / 1000,
            "rate": report["requests"] / (report["duration_us"] / 1e6),
            "errors": compare.failures(report),
        }
    finally:
        server.stop()


def measure(name, start, seconds):
    return {
        "64": keep_alive(start, 64, seconds),
        "8": keep_alive(start, 8, seconds),
        "mix2": None if name == "nginx" else slow_mix(start, seconds, 2),
        "mix8": None if name == "nginx" else slow_mix(start, seconds, 8),
        "even": None if name == "nginx" else even(start, seconds),
    }


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def summary(results, key):
    """The median of `results`' `key` values, with their range when there are several."""
    values = [result[key] for result in results]
    text = f"{median(values):.1f}" if key == "p99" else f"{median(values):.0f}"
    if len(values) > 1:
        low, high = min(values), max(values)
        text += f" ({low:.1f}-{high:.1f})" if key == "p99" else f" ({low:.0f}-{high:.0f})"
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", metavar="DIR",
                        help="a checkout of an earlier commit, built in release mode")
    parser.add_argument("--only", metavar="TEXT",
                        help="measure only the servers whose name holds TEXT (no table)")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    build()
    compare.ensure_venv()
    servers = list(SERVERS)
    if args.baseline:
        baseline = os.path.abspath(args.baseline)
        servers[2:2] = [
            ("forkwarden before, built-in workers", lambda: start_forkwarden(baseline)),
            ("forkwarden before, Python runner", lambda: start_forkwarden_python(baseline)),
        ]
    if args.only:
        servers = [(name, start) for name, start in servers if args.only in name]
    rows = {name: [] for name, _ in servers}
    for round_ in range(args.rounds):
        for name, start in servers:
            print(f"round {round_ + 1}: measuring {name} ...", file=sys.stderr)
            rows[name].append(measure(name, start, args.seconds))
    names = [name for name, _ in servers]
    if args.only:
        for name in names:
            for key in ("64", "8", "mix2", "mix8", "even"):
                results = [result[key] for result in rows[name]]
                if results[0] is not None:
                    print(f"{name} {key}: {summary(results, 'rate')}/s, p99 "
                          f"{summary(results, 'p99')} ms")
        return

    def rate_cell(results):
        return (f"{summary(results, 'rate')}/s; p99 {summary(results, 'p99')} ms; "
                f"{median([r['churn'] for r in results]):.2f} new connections per request; "
                f"{sum(r['errors'] for r in results)} errors")

    def mix_cell(results):
        if results[0] is None:
            return "n/a"
        return (f"fast p99 {summary(results, 'p99')} ms ({summary(results, 'rate')}/s); "
                f"{sum(r['errors'] for r in results)} errors")

    def even_cell(results):
        if results[0] is None:
            return "n/a"
        return (f"p99 {summary(results, 'p99')} ms ({summary(results, 'rate')}/s); "
                f"{sum(r['errors'] for r in results)} errors")

    def row(label, key, render):
        return (f"| {label} | "
                + " | ".join(render([result[key] for result in rows[name]]) for name in names)
                + " |")

    def rate(name, key):
        return median([result[key]["rate"] for result in rows[name]])

    def p99(name, key):
        return median([result[key]["p99"] for result in rows[name]])

    ours, python = "forkwarden, built-in workers", "forkwarden, Python runner"
    versions = (f"{compare.version_of([BINARY, '--version'])}; "
                f"{compare.version_of([shutil.which('nginx') or '/usr/sbin/nginx', '-v'])}; "
                f"uWSGI {compare.version_of([os.path.join(compare.VENV, 'bin', 'uwsgi'), '--version'])}; "
                f"{compare.version_of([os.path.join(compare.VENV, 'bin', 'granian'), '--version'])}")
    command = f"scripts/keepalive.sh --seconds {args.seconds} --rounds {args.rounds}"
    if args.baseline:
        command += " --baseline DIR"
        baseline_commit = subprocess.run(
            ["git", "-C", args.baseline, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True).stdout.strip() or "unknown"
    lines = [
        f"Machine: {machine()}. Versions: {versions}.",
        f"Command: `{command}`. {WORKERS} workers each; wrk with 2 threads on the same "
        "machine. nginx returns a fixed body; uWSGI, Granian, gunicorn and forkwarden's "
        "Python runner serve scripts/compare_app.py; forkwarden's built-in workers its demo "
        "app. Each cell: the median of the rounds (their range)."
        + (f" \"before\": commit {baseline_commit}, measured in the same rounds."
           if args.baseline else ""),
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        row("requests/s on `/`, 64 keep-alive connections", "64", rate_cell),
        row("requests/s on `/`, 8 keep-alive connections", "8", rate_cell),
        row("2 slow in flight: 2 connections on `/sleep?ms=200` beside 16 on `/`", "mix2",
            mix_cell),
        row("8 slow in flight: 8 connections on `/sleep?ms=200` beside 16 on `/`", "mix8",
            mix_cell),
        row("every request alike: 16 connections on `/sleep?ms=15` (fair wait 60 ms)",
            "even", even_cell),
        "",
        f"Targets: 64 connections {rate(ours, '64') / rate('nginx', '64'):.2f}x nginx (at least "
        f"0.6x) and {rate(ours, '64') / rate('Granian', '64'):.2f}x Granian (at least 1x); 8 "
        f"connections {rate(ours, '8') / rate('uWSGI --http11-socket', '8'):.2f}x uWSGI (at "
        f"least 1x); 2 slow in flight: fast p99 {p99(ours, 'mix2'):.1f} ms (built-in) and "
        f"{p99(python, 'mix2'):.1f} ms (Python) against gunicorn's "
        f"{p99('gunicorn (sync)', 'mix2'):.1f} ms (at most) and Granian's "
        f"{p99('Granian', 'mix2'):.1f} ms (target); 8 slow in flight: "
        f"{p99(ours, 'mix8'):.1f} ms and {p99(python, 'mix8'):.1f} ms against gunicorn's "
        f"{p99('gunicorn (sync)', 'mix8'):.1f} ms (no worse).",
    ]
    publish("keepalive", "Keep-alive, churn and slow requests side by side", lines,
            args.write_docs)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, compare.stop_everything)
    signal.signal(signal.SIGTERM, compare.stop_everything)
    try:
        main()
    finally:
        for started in compare.STARTED:
            if started.poll() is None:
                os.killpg(started.pid, signal.SIGKILL)
                started.wait()
