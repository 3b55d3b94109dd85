#!/usr/bin/env python3
"""WSGI servers side by side: requests per second and CPU per request.

The same applications under forkwarden's Python runner (`python3 -m forkwarden_wsgi`, its
Rust core in release mode), gunicorn (sync workers), uWSGI (`--http-socket` and
`--http11-socket`) and Granian (`--interface wsgi`), 4 workers each, all from one virtualenv
under target/ (scripts/compare.py installs it):
  * the trivial app: `/` of scripts/compare_app.py (a fixed 30-byte answer);
  * a Flask app (scripts/flask_app.py): `/page`, a Jinja template rendered, and `/api`, JSON.
Each is loaded by wrk (2 threads) for --seconds on a fresh server, after a 1 s warm-up, three ways: keep-alive
with 8 and with 64 connections, and `Connection: close` with 16. Each row gives requests
per second and, beside it, the CPU time (user + system) all the server's processes spent
per request over the run, read from /proc: what serving a request costs, whoever does it.
Requests that failed (errors or non-2xx) are counted and shown.

Usage: scripts/compare.sh --wsgi-only [--seconds 5] [--write-docs]
Only loopback traffic; every process started is stopped by pid at the end, even on Ctrl-C.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import compare
from compare import APP_DIR, VENV, WRK_REPORT, Running, failures, free_port, version_of
from fwbench import BINARY, at_once, build, children_of, machine, publish, runner_app

TICKS = os.sysconf("SC_CLK_TCK")
WORKERS = 4
APPS = [
    # (label, WSGI target for module:callable servers, uWSGI file and callable, path)
    ("trivial app, `/`", "compare_app:app", ("compare_app.py", "app"), "/"),
    ("Flask, template render (`/page`)", "flask_app:app", ("flask_app.py", "app"), "/page"),
    ("Flask, JSON (`/api`)", "flask_app:app", ("flask_app.py", "app"), "/api"),
]
LOADS = [
    ("keep-alive, 8 connections", 8, False),
    ("keep-alive, 64 connections", 64, False),
    ("`Connection: close`, 16 connections", 16, True),
]


def start_forkwarden(target, _uwsgi):
    port = free_port()
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(
        f"http_port = {port}\nworkers = {WORKERS}\nmax_cron_threads = 0\nlimit_request = 0\n"
        "limit_memory_soft = 0\nlimit_memory_hard = 0\nlog_level = \"warn\"\n"
        + runner_app(target, APP_DIR, python=os.path.join(VENV, "bin", "python")))
    config.close()
    return Running([BINARY, "--config", config.name], port)


def start_gunicorn(target, _uwsgi):
    port = free_port()
    return Running([os.path.join(VENV, "bin", "gunicorn"), "-w", str(WORKERS), "-b",
                    f"127.0.0.1:{port}", "--chdir", APP_DIR, "--log-level", "warning", target],
                   port)


def uwsgi(option):
    def start(_target, uwsgi_app):
        port = free_port()
        wsgi_file, callable_name = uwsgi_app
        env = {"PATH": os.path.join(VENV, "bin") + os.pathsep + os.environ.get("PATH", "")}
        return Running([os.path.join(VENV, "bin", "uwsgi"), "--master", "--processes",
                        str(WORKERS), option, f"127.0.0.1:{port}", "--chdir", APP_DIR,
                        "--wsgi-file", wsgi_file, "--callable", callable_name,
                        "--disable-logging", "--need-app", "--die-on-term"], port, env)
    return start


def start_granian(target, _uwsgi):
    port = free_port()
    return Running([os.path.join(VENV, "bin", "granian"), "--interface", "wsgi", "--workers",
                    str(WORKERS), "--host", "127.0.0.1", "--port", str(port), "--log-level",
                    "warning", target], port, cwd=APP_DIR)


SERVERS = [
    ("forkwarden + runner", start_forkwarden),
    ("gunicorn (sync)", start_gunicorn),
    ("uWSGI `--http-socket`", uwsgi("--http-socket")),
    ("uWSGI `--http11-socket`", uwsgi("--http11-socket")),
    ("Granian (wsgi)", start_granian),
]


def tree_cpu(root):
    """User + system CPU seconds of `root` and every process under it (threads included)."""
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
        except (OSError, IndexError, ValueError):
            continue
        pending.extend(children_of(pid))
    return total


def load(server, path, connections, close, seconds):
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", WRK_REPORT]
    if close:
        command += ["-H", "Connection: close"]
    before = tree_cpu(server.proc.pid)
    output = subprocess.run(command + [f"http://127.0.0.1:{server.port}{path}"],
                            capture_output=True, text=True, check=True).stdout
    cpu = tree_cpu(server.proc.pid) - before
    report = {key: int(value) for key, value in re.findall(r"^(\w+) (\d+)$", output, re.M)}
    rate = report["requests"] / (report["duration_us"] / 1e6)
    per_request_us = cpu / report["requests"] * 1e6 if report["requests"] else float("nan")
    # How they failed: wrk's error kinds and non-2xx answers, those that happened.
    kinds = {key.removeprefix("errors_"): count for key, count in report.items()
             if (key.startswith("errors_") or key == "non_2xx") and count}
    return rate, per_request_us, failures(report), kinds


def closes_when_asked(port, path):
    """Whether the server closes the connection after answering a request that says
    `Connection: close` (RFC 9112 9.6); one that keeps it open was measured kept alive."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
                       .encode())
        try:
            while client.recv(65536):
                pass
            return True
        except socket.timeout:
            return False


def connections_answered(port, path, count, wait=2.0):
    """How many of `count` keep-alive connections, opened at once and held open, get an
    answer to their first request within `wait` seconds: a server that stays with the
    connections it has while they are open leaves the others waiting."""
    def client():
        with socket.create_connection(("127.0.0.1", port), timeout=wait) as connection:
            connection.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            answered = connection.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(wait)  # held open, as a browser or a proxy's pool does
            return answered
    return sum(at_once(count, client))


def cell(rate, cpu_us, failed, kinds, best):
    mark = "**" if rate >= best else ""
    text = f"{mark}{rate / 1000:.1f}k{mark} · {cpu_us:.0f} µs"
    how = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    return text + (f" ({failed} failed: {how})" if failed else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    build()
    compare.ensure_venv()
    results = {}
    ignores_close = set()
    served = {}
    for app_label, target, uwsgi_app, path in APPS:
        for load_label, connections, close in LOADS:
            for name, start in SERVERS:
                server = start(target, uwsgi_app)
                server.name = name
                try:
                    server.ready()
                    # Every worker up and warm (imports done, caches filled) before measuring.
                    load(server, path, connections, close, 1)
                    results[(app_label, load_label, name)] = load(
                        server, path, connections, close, args.seconds)
                    if close and not closes_when_asked(server.port, path):
                        ignores_close.add(name)
                    if not close:
                        served[(app_label, load_label, name)] = connections_answered(
                            server.port, path, connections)
                finally:
                    server.stop()
                print(f"{app_label} | {load_label} | {name}: "
                      f"{results[(app_label, load_label, name)]}", file=sys.stderr)
    versions = (f"gunicorn {version_of([os.path.join(VENV, 'bin', 'gunicorn'), '--version'])}, "
                f"uWSGI {version_of([os.path.join(VENV, 'bin', 'uwsgi'), '--version'])}, "
                f"{version_of([os.path.join(VENV, 'bin', 'granian'), '--version'])}, "
                f"Python {sys.version.split()[0]}")
    lines = [
        f"Machine: {machine()}; {versions}.",
        f"Command: `scripts/compare.sh --wsgi-only --seconds {args.seconds}` "
        f"(scripts/compare_wsgi.py). {WORKERS} workers each, wrk with 2 threads on the same "
        "machine. Each cell: requests per second (the best of the row in bold) · CPU time of "
        "all the server's processes per request (user + system, from /proc). Left out of a "
        "row's best: a server whose requests failed (wrk's errors and non-2xx answers, "
        "counted in the cell), and, checked after each run and marked, a server that keeps the "
        "connection open after answering a request that says `Connection: close`, and one "
        "that answers fewer than all of as many keep-alive connections as the row's, opened "
        "at once and held open for 2 s (the others wait for a worker that stays with its "
        "connections).",
        "",
        "| app | load | " + " | ".join(name for name, _ in SERVERS) + " |",
        "|---|---|" + "---|" * len(SERVERS),
    ]
    for app_label, _, _, _ in APPS:
        for load_label, connections, close in LOADS:
            # Not comparable: a server whose requests failed, one that ignored
            # `Connection: close` (it kept its connections), or one that left some of the
            # kept-alive connections unanswered (it served fewer clients than the row's load).
            def why_not(name):
                if results[(app_label, load_label, name)][2]:
                    return "requests failed"
                if close and name in ignores_close:
                    return "`close` ignored: the connections stayed open"
                answered = served.get((app_label, load_label, name), connections)
                if answered < connections:
                    return f"answered {answered} of {connections} connections held open"
                return None
            compared = [name for name, _ in SERVERS if why_not(name) is None]
            best = max(results[(app_label, load_label, name)][0] for name in compared)
            cells = []
            for name, _ in SERVERS:
                text = cell(*results[(app_label, load_label, name)],
                            best if name in compared else float("inf"))
                if why_not(name) not in (None, "requests failed"):
                    text += f" ({why_not(name)})"
                cells.append(text)
            lines.append(f"| {app_label} | {load_label} | " + " | ".join(cells) + " |")
    publish("compare_wsgi", "WSGI servers side by side", lines, args.write_docs)


if __name__ == "__main__":
    compare.run(main)
