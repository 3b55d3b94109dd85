#!/usr/bin/env python3
"""Real Odoo 17 side by side: `odoo-bin` with its own prefork server (`workers = 2`,
`max_cron_threads = 1`) and `forkwarden odoo` on the same odoo.conf (other ports), the same
database and venv (scripts/ensure-odoo.sh). Measured on each, in one run:

  * respawn: SIGKILL of an HTTP worker until its replacement exists and a GET /web/login
    answers 200 (--kills times; median and max);
  * memory: the PSS of each HTTP worker (what one more worker costs), after 20 requests;
  * /web/login throughput, keep-alive (wrk, 2 threads, 8 connections, 5 s), both servers
    up at once and measured in turn, --rounds times;
  * SIGHUP under load (wrk on /web/login): requests that failed;
  * websocket during a SIGHUP: handshakes every 20 ms for 15 s, the longest time none
    succeeded;
  * cron trigger: a scheduled action created and triggered as Odoo's code does
    (`ir.cron._trigger`, NOTIFY cron_trigger at commit), until it has run.

Usage: python3 scripts/compare_odoo.py [--kills 10] [--rounds 3] [--write-docs]. Only loopback traffic;
every process started is stopped.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fwbench import (BINARY, ROOT, build, children_of, http_get, machine,  # noqa: E402
                     publish, python_runner_path, wait_for)

ODOO = os.path.abspath(os.environ.get("FORKWARDEN_ODOO", os.path.join(ROOT, "..", "shared",
                                                                      "odoo17")))
DATABASE = "forkwarden_odoo"
WRK_REPORT = os.path.join(ROOT, "scripts", "wrk_report.lua")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ensure_odoo():
    """The venv's python (scripts/ensure-postgres.sh and ensure-odoo.sh)."""
    subprocess.run([os.path.join(ROOT, "scripts", "ensure-postgres.sh")], check=True,
                   stdout=subprocess.DEVNULL)
    return subprocess.run([os.path.join(ROOT, "scripts", "ensure-odoo.sh")], check=True,
                          capture_output=True, text=True).stdout.strip()


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def niceness(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return None


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return int(re.search(r"^Pss:\s+(\d+) kB", f.read(), re.M).group(1))
    except (OSError, AttributeError):
        return None


class Deployment:
    """One of the two servers, started on its own ports with the same odoo.conf options."""

    def __init__(self, name, python, directory):
        self.name = name
        self.http, self.gevent = free_port(), free_port()
        self.conf = os.path.join(directory, f"{name}.conf")
        with open(self.conf, "w") as f:
            f.write(f"[options]\naddons_path = {ODOO}/odoo/addons\ndb_name = {DATABASE}\n"
                    f"dbfilter = ^{DATABASE}$\nhttp_interface = 127.0.0.1\n"
                    f"http_port = {self.http}\ngevent_port = {self.gevent}\nworkers = 2\n"
                    "max_cron_threads = 1\nlog_level = warn\nlimit_time_real = 120\n")
        self.log = open(os.path.join(directory, f"{name}.log"), "w")
        self.process = subprocess.Popen(self.command(python), stdout=self.log,
                                        stderr=subprocess.STDOUT, env=self.environment())

    def ready(self):
        wait_for(lambda: self.get("/web/login") == 200, timeout=120, interval=0.05)
        wait_for(lambda: len(self.http_workers()) == 2, timeout=60, interval=0.05)
        return self

    def get(self, path):
        try:
            return http_get(self.http, path, timeout=10)[0]
        except OSError:
            return 0

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class OdooBin(Deployment):
    def command(self, python):
        self.python = python
        return [python, os.path.join(ODOO, "odoo-bin"), "-c", self.conf]

    def environment(self):
        # The venv's bin first on PATH, as an activated venv has it: on SIGHUP odoo-bin
        # re-executes itself as plain `python`, found on PATH (else it finds another Python,
        # without Odoo's requirements, and dies).
        path = f"{os.path.dirname(self.python)}:{os.environ.get('PATH', '')}"
        return {**os.environ, "PATH": path}

    def http_workers(self):
        # Without setproctitle every child has odoo-bin's command line: the HTTP workers
        # are those that are not the gevent server and not reniced (cron workers are +10).
        return [pid for pid in children_of(self.process.pid)
                if " gevent " not in cmdline(pid) and niceness(pid) == 0]


class Forkwarden(Deployment):
    def command(self, python):
        return [BINARY, "odoo", "-c", self.conf, "--python", python, "--odoo-path", ODOO]

    def environment(self):
        return {**os.environ, "PYTHONPATH": python_runner_path()}

    def http_workers(self):
        return [pid for pid in children_of(self.process.pid)
                if cmdline(pid).startswith("forkwarden: http worker")]


def respawn(server, kills):
    samples = []
    for _ in range(kills):
        before = set(server.http_workers())
        victim = sorted(before)[0]
        started = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def replaced():
            workers = set(server.http_workers())
            return len(workers) == 2 and victim not in workers and workers - before
        wait_for(replaced, timeout=60, interval=0.001)
        done = wait_for(lambda: server.get("/web/login") == 200, timeout=60, interval=0.001)
        samples.append(done - started)
        time.sleep(0.3)
    return samples


def memory(server):
    for _ in range(20):
        server.get("/web/login")
    values = [pss_kib(pid) for pid in server.http_workers()]
    values = [value for value in values if value is not None]
    return statistics.mean(values) / 1024 if values else None


def wrk(server, seconds, during=None):
    command = ["wrk", "-t2", "-c8", f"-d{seconds}s", "-s", WRK_REPORT,
               f"http://127.0.0.1:{server.http}/web/login"]
    load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    if during is not None:
        time.sleep(1)
        during()
    output = load.communicate()[0]
    return {key: int(value) for key, value in re.findall(r"^(\w+) (\d+)$", output, re.M)}


def failed(report):
    return report["non_2xx"] + sum(v for k, v in report.items() if k.startswith("errors_"))


def handshake(port):
    request = (f"GET /websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: "
               "http://127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(request.encode())
            return b" 101 " in conn.recv(64)
    except OSError:
        return False


def websocket_gap(server, seconds=15):
    """The longest time no handshake succeeded, through a SIGHUP sent 2 s in."""
    wait_for(lambda: handshake(server.gevent), timeout=60, interval=0.05)
    start = time.monotonic()
    signalled = False
    last_ok, gap = time.monotonic(), 0.0
    while time.monotonic() - start < seconds:
        if not signalled and time.monotonic() - start >= 2:
            os.kill(server.process.pid, signal.SIGHUP)
            signalled = True
        now = time.monotonic()
        if handshake(server.gevent):
            gap = max(gap, now - last_ok)
            last_ok = now
        time.sleep(0.02)
    gap = max(gap, time.monotonic() - last_ok)
    return gap


def parameter(key):
    output = subprocess.run(["psql", "-d", DATABASE, "-tAc",
                             f"SELECT value FROM ir_config_parameter WHERE key = '{key}'"],
                            capture_output=True, text=True).stdout.strip()
    return output or None


def cron_trigger(server, python):
    key = f"forkwarden.compare.{server.name}.{os.getpid()}.{time.monotonic_ns()}"
    created = subprocess.run(
        [python, os.path.join(ROOT, "tests", "apps", "odoo_trigger.py"), server.conf,
         DATABASE, key], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ODOO},
        check=True)
    committed = time.monotonic()
    try:
        ran = wait_for(lambda: parameter(key) is not None, timeout=90, interval=0.005)
        return ran - committed
    finally:
        subprocess.run(["psql", "-d", DATABASE, "-qc",
                        f"DELETE FROM ir_cron WHERE id = {created.stdout.strip()}; "
                        f"DELETE FROM ir_config_parameter WHERE key = '{key}'"],
                       capture_output=True)


def measure(kind, python, directory, kills):
    result = {}
    server = kind(kind.__name__.lower(), python, directory)
    try:
        server.ready()
        samples = respawn(server, kills)
        result["respawn"] = (statistics.median(samples), max(samples))
        result["pss"] = memory(server)
        result["cron"] = cron_trigger(server, python)
    finally:
        server.stop()
    # A fresh server for the reloads.
    server = kind(kind.__name__.lower() + "-reload", python, directory)
    try:
        server.ready()
        report = wrk(server, 6, during=lambda: os.kill(server.process.pid, signal.SIGHUP))
        result["sighup failed"] = (failed(report), report["requests"],
                                   report["errors_connect"])
        server.ready()
        result["websocket gap"] = websocket_gap(server)
    finally:
        server.stop()
    return result


def throughput(kinds, python, directory, rounds):
    """/web/login under keep-alive load, both servers up at once and measured in turn,
    `rounds` times (one 5 s run is too noisy on a small machine): per server, the runs'
    rates and p99s, and the errors in all."""
    servers = [kind(kind.__name__.lower() + "-load", python, directory) for kind in kinds]
    runs = [{"rates": [], "p99s": [], "errors": 0, "cpu_ms": []} for _ in servers]
    try:
        for server in servers:
            server.ready()
            for _ in range(20):  # what a first visitor builds, built before measuring
                server.get("/web/login")
        for _ in range(rounds):
            for server, run in zip(servers, runs):
                cpu_before = tree_cpu_seconds(server.process.pid)
                report = wrk(server, 5)
                used = tree_cpu_seconds(server.process.pid) - cpu_before
                run["cpu_ms"].append(used * 1000 / max(report["requests"], 1))
                run["rates"].append(report["requests"] / (report["duration_us"] / 1e6))
                run["p99s"].append(report["latency_p99_us"] / 1000)
                run["errors"] += failed(report)
    finally:
        for server in servers:
            server.stop()
    return runs


def tree_cpu_seconds(root):
    """CPU time (user and system) used so far by `root` and every process below it that
    is alive now: a server's own processes (PostgreSQL's are not among them)."""
    tick = os.sysconf("SC_CLK_TCK")
    pending, total = [root], 0.0
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
        pending.extend(children_of(pid))
    return total


def spread(values, unit):
    """The median, with the range when there are several values."""
    text = f"{statistics.median(values):.0f}"
    if len(values) > 1:
        text += f" ({min(values):.0f}-{max(values):.0f})"
    return text + unit


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved throughput runs per server")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    build()
    python = ensure_odoo()
    directory = tempfile.mkdtemp(prefix="compare-odoo-")
    odoo = measure(OdooBin, python, directory, args.kills)
    forkwarden = measure(Forkwarden, python, directory, args.kills)
    for result, run in zip((odoo, forkwarden),
                           throughput((OdooBin, Forkwarden), python, directory, args.rounds)):
        result["throughput"] = run
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    rows = [
        ("kill -9 of an HTTP worker until replaced and answering, median / max",
         lambda r: f"{ms(r['respawn'][0])} / {ms(r['respawn'][1])}"),
        ("PSS of an HTTP worker (what one more costs)", lambda r: f"{r['pss']:.0f} MiB"),
        (f"/web/login, keep-alive (wrk -t2 -c8, 5 s, {args.rounds} interleaved runs: median "
         "(range)): throughput, p99 latency",
         lambda r: f"{spread(r['throughput']['rates'], ' req/s')}, p99 "
                   f"{spread(r['throughput']['p99s'], ' ms')} "
                   f"({r['throughput']['errors']} errors)"),
        ("CPU time of the server's processes per /web/login in those runs (PostgreSQL's "
         "not counted)",
         lambda r: f"{statistics.median(r['throughput']['cpu_ms']):.1f} ms "
                   f"({min(r['throughput']['cpu_ms']):.1f}-"
                   f"{max(r['throughput']['cpu_ms']):.1f})"),
        ("SIGHUP under load (wrk, 6 s): requests served, and failed or refused",
         lambda r: f"{r['sighup failed'][1]} served, {r['sighup failed'][0]} failed "
                   f"({r['sighup failed'][2]} refused connections)"),
        ("websocket through a SIGHUP: longest time between two handshakes that succeeded "
         "(one takes about 0.1 s)",
         lambda r: f"{r['websocket gap']:.2f} s"),
        ("a scheduled action triggered (NOTIFY cron_trigger) until it has run",
         lambda r: f"{r['cron']:.2f} s"),
    ]
    lines = [
        f"Machine: {machine()}. Odoo 17.0 (../shared/odoo17: base, web, bus), one database, "
        f"PostgreSQL on the same machine. Command: `python3 scripts/compare_odoo.py "
        f"--kills {args.kills} --rounds {args.rounds}`. Both on the same odoo.conf options "
        "(workers = 2, max_cron_threads = 1), the same venv (Python 3.12), one after the "
        "other, but for the throughput runs: both up, measured in turn.",
        "",
        "| measure | odoo-bin (prefork) | forkwarden odoo |",
        "|---|---|---|",
        *(f"| {label} | {cell(odoo)} | {cell(forkwarden)} |" for label, cell in rows),
    ]
    publish("compare-odoo", "Odoo 17 side by side: odoo-bin and forkwarden odoo", lines,
            args.write_docs)


if __name__ == "__main__":
    main()
