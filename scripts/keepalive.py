#!/usr/bin/env python3
"""Keep-alive, connection churn and slow requests: forkwarden's built-in workers beside
nginx, uWSGI (--http11-socket), Granian and gunicorn (sync), 4 workers each.

nginx answers `/` with a fixed body from its own event loop (the reference for raw HTTP);
uWSGI, Granian and gunicorn serve scripts/compare_app.py (installed into the throw-away
virtualenv under target/ that scripts/compare.py uses); forkwarden serves its built-in demo
app. Measured, each on a fresh server, with wrk on loopback:
  * requests/s and p99 latency on `/` with 64 and with 8 keep-alive connections, and how
    many new TCP connections each request cost (the kernel's PassiveOpens counter: a server
    that closes kept-alive connections makes its clients reconnect);
  * the slow mix: 8 connections asking for `/sleep?ms=200` beside 16 asking for `/`: the
    fast requests' p99 (nginx has no slow endpoint: not measured).
Targets (issue 11): 64 connections at least 0.6x nginx and at least Granian; 8 connections
at least uWSGI; in the slow mix, a fast p99 no worse than gunicorn's.

Usage: scripts/keepalive.sh [--seconds 5] [--write-docs]
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
from fwbench import BINARY, ROOT, build, machine, publish

WORKERS = 4


def start_forkwarden():
    return compare.run_forkwarden("forkwarden, built-in workers", WORKERS, 0, 0,
                                  "demo_fault_endpoints = true\n")


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


SERVERS = [("forkwarden, built-in workers", start_forkwarden), ("nginx", start_nginx),
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


def slow_mix(start, seconds):
    server = start().ready()
    try:
        slow = {}
        thread = threading.Thread(
            target=lambda: slow.update(wrk(server.port, 8, seconds, "/sleep?ms=200")))
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    build()
    compare.ensure_venv()
    rows = {}
    for name, start in SERVERS:
        print(f"measuring {name} ...", file=sys.stderr)
        rows[name] = {
            "64": keep_alive(start, 64, args.seconds),
            "8": keep_alive(start, 8, args.seconds),
            "mix": None if name == "nginx" else slow_mix(start, args.seconds),
        }
    names = [name for name, _ in SERVERS]
    ours = rows[names[0]]

    def cell(result):
        return (f"{result['rate']:.0f}; p99 {result['p99']:.1f} ms; "
                f"{result['churn']:.2f} new connections per request; {result['errors']} errors")

    def mix_cell(result):
        if result is None:
            return "n/a"
        return f"fast p99 {result['p99']:.1f} ms ({result['rate']:.0f}/s); {result['errors']} errors"

    def row(label, render):
        return f"| {label} | " + " | ".join(render(rows[name]) for name in names) + " |"

    def ratio(key, other):
        return ours[key]["rate"] / rows[other][key]["rate"]

    versions = (f"{compare.version_of([BINARY, '--version'])}; "
                f"{compare.version_of([shutil.which('nginx') or '/usr/sbin/nginx', '-v'])}; "
                f"uWSGI {compare.version_of([os.path.join(compare.VENV, 'bin', 'uwsgi'), '--version'])}; "
                f"{compare.version_of([os.path.join(compare.VENV, 'bin', 'granian'), '--version'])}")
    lines = [
        f"Machine: {machine()}. Versions: {versions}.",
        f"Command: `scripts/keepalive.sh --seconds {args.seconds}`. {WORKERS} workers each; wrk "
        "with 2 threads on the same machine. nginx returns a fixed body; uWSGI, Granian and "
        "gunicorn serve scripts/compare_app.py; forkwarden its built-in app.",
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        row("requests/s on `/`, 64 keep-alive connections", lambda r: cell(r["64"])),
        row("requests/s on `/`, 8 keep-alive connections", lambda r: cell(r["8"])),
        row("slow mix: 8 connections on `/sleep?ms=200` beside 16 on `/`",
            lambda r: mix_cell(r["mix"])),
        "",
        f"Targets: 64 connections {ratio('64', 'nginx'):.2f}x nginx (at least 0.6x) and "
        f"{ratio('64', 'Granian'):.2f}x Granian (at least 1x); 8 connections "
        f"{ratio('8', 'uWSGI --http11-socket'):.2f}x uWSGI (at least 1x); slow mix fast p99 "
        f"{ours['mix']['p99']:.1f} ms against gunicorn's "
        f"{rows['gunicorn (sync)']['mix']['p99']:.1f} ms (no worse).",
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
