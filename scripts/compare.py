#!/usr/bin/env python3
"""Compare forkwarden with gunicorn (sync workers) and uWSGI (master + processes).

gunicorn and uWSGI (the `pyuwsgi` wheel) are installed into a throw-away virtualenv under
target/ and serve scripts/compare_app.py; so does forkwarden through its WSGI runner
(`python3 -m forkwarden_wsgi`, the like-for-like column), and, in a column of its own,
forkwarden's built-in demo app (native code, same endpoints). Same worker counts and
equivalent limits everywhere (gunicorn --timeout; uWSGI --harakiri, --reload-on-rss,
--evil-reload-on-rss), each reloaded its own zero-downtime way (SIGHUP for forkwarden and
gunicorn; a chain reload through the master FIFO for uWSGI, whose SIGHUP re-executes the
master). Measured, each on a fresh server:
  * throughput on / with and without keep-alive (wrk, 4 workers, 8 connections);
  * CPU per request in a worker (1 worker, 1 keep-alive client);
  * respawn latency after SIGKILL: death to the new worker answering (1 worker, --kills);
  * time to end a hung request past a 2 s limit (1 worker);
  * reaction to a worker leaking past a 128 MiB memory limit (1 worker);
  * failed requests while the server reloads 5 times under load (4 workers);
  * the master's RSS and idle CPU with 8 workers;
  * a worker that crashes at boot: forks per second, and whether the server stays up.

Usage: scripts/compare.sh [--kills 20] [--write-docs]
Only loopback traffic; every process started is stopped by pid at the end, even on Ctrl-C.
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
import threading
import time

from fwbench import (BINARY, ROOT, build, children_of, http_get, is_gone, machine, publish,
                     runner_app, wait_for)

VENV = os.path.join(ROOT, "target", "compare-venv")
APP_DIR = os.path.join(ROOT, "scripts")
WRK_REPORT = os.path.join(ROOT, "scripts", "wrk_report.lua")
TICKS = os.sysconf("SC_CLK_TCK")
LIMIT_S = 2
LIMIT_MIB = 128
STARTED = []  # every server process started, for the exit handler


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ensure_venv():
    """gunicorn, uWSGI (pyuwsgi), Granian and Flask, in a virtualenv of their own under
    target/."""
    wanted = {"gunicorn": "gunicorn", "uwsgi": "pyuwsgi", "granian": "granian", "flask": "flask"}
    missing = [package for command, package in wanted.items()
               if not os.path.exists(os.path.join(VENV, "bin", command))]
    if missing:
        print(f"installing {', '.join(missing)} into {VENV} (pip)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", *missing],
                       check=True)


def version_of(command):
    result = subprocess.run(command, capture_output=True, text=True)
    return (result.stdout + result.stderr).strip().splitlines()[0]


class Running:
    """A server under test: its master process and port. `spawned` matches the log line the
    server writes for each worker it forks; `reload` triggers its zero-downtime reload."""

    def __init__(self, command, port, env=None, cwd=None, spawned="", reload=None):
        self.port = port
        self.spawned = spawned
        self.reload = reload or (lambda: self.proc.send_signal(signal.SIGHUP))
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=cwd,
                                     start_new_session=True)
        STARTED.append(self.proc)

    def ready(self, timeout=20):
        def answers():
            try:
                return http_get(self.port, "/health", timeout=2)[0] == 200
            except OSError:
                return False
        wait_for(answers, timeout, 0.05)
        return self

    def spawn_count(self):
        self.log.seek(0)
        return len(re.findall(self.spawned, self.log.read()))

    def workers(self):
        return children_of(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if self.name == "uWSGI" else signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def run_forkwarden(name, workers, limit_time, limit_memory, settings, binary=BINARY):
    """forkwarden (`binary`) with the shared settings (no recycling, the given limits) and
    `settings`."""
    port = free_port()
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(
        f"http_port = {port}\nworkers = {workers}\nmax_cron_threads = 0\nlimit_request = 0\n"
        f"limit_time_real = {limit_time}\nlimit_memory_soft = 0\n"
        f"limit_memory_hard = {limit_memory << 20}\nlimit_memory_hard_rlimit = false\n"
        + settings)
    config.close()
    server = Running([binary, "--config", config.name], port,
                     spawned=r"(started|respawned) as pid")
    server.name = name
    return server


def start_forkwarden(workers, limit_time=0, limit_memory=0, crash_at_boot=False):
    return run_forkwarden(
        "forkwarden", workers, limit_time, limit_memory,
        f"demo_fault_endpoints = true\ndemo_crash_at_boot = {str(crash_at_boot).lower()}\n")


def start_forkwarden_wsgi(workers, limit_time=0, limit_memory=0, crash_at_boot=False):
    return run_forkwarden(
        "forkwarden + WSGI runner", workers, limit_time, limit_memory,
        runner_app("compare_app:app", APP_DIR,
                   env={"COMPARE_APP_CRASH_AT_BOOT": "1" if crash_at_boot else "0"}))


def start_gunicorn(workers, limit_time=0, limit_memory=0, crash_at_boot=False):
    port = free_port()
    command = [os.path.join(VENV, "bin", "gunicorn"), "-w", str(workers), "-b",
               f"127.0.0.1:{port}", "--chdir", APP_DIR, "--timeout", str(limit_time or 3600),
               "--graceful-timeout", "5", "--log-level", "info", "compare_app:app"]
    env = {"COMPARE_APP_CRASH_AT_BOOT": "1" if crash_at_boot else "0"}
    server = Running(command, port, env, spawned=r"Booting worker with pid")
    server.name = "gunicorn"
    return server


def start_uwsgi(workers, limit_time=0, limit_memory=0, crash_at_boot=False):
    port = free_port()
    fifo = os.path.join(tempfile.mkdtemp(), "master.fifo")
    command = [os.path.join(VENV, "bin", "uwsgi"), "--master", "--processes", str(workers),
               "--http11-socket", f"127.0.0.1:{port}", "--chdir", APP_DIR, "--master-fifo", fifo,
               "--wsgi-file", "compare_app.py", "--callable", "app", "--lazy-apps",
               "--die-on-term", "--disable-logging", "--need-app"]
    if limit_time:
        command += ["--harakiri", str(limit_time)]
    if limit_memory:
        command += ["--reload-on-rss", str(limit_memory), "--evil-reload-on-rss", str(limit_memory)]
    # pyuwsgi re-executes the interpreter on some reloads: it must find the virtualenv's.
    env = {"COMPARE_APP_CRASH_AT_BOOT": "1" if crash_at_boot else "0",
           "PATH": os.path.join(VENV, "bin") + os.pathsep + os.environ.get("PATH", "")}

    def chain_reload():
        with open(fifo, "w") as control:
            control.write("c")
    server = Running(command, port, env, spawned=r"[Ss]pawned uWSGI worker", reload=chain_reload)
    server.name = "uWSGI"
    return server


SERVERS = [("forkwarden + WSGI runner", start_forkwarden_wsgi), ("gunicorn", start_gunicorn),
           ("uWSGI", start_uwsgi), ("forkwarden, native app", start_forkwarden)]


def wrk(port, seconds, close=False):
    command = ["wrk", "-t2", "-c8", f"-d{seconds}s", "-s", WRK_REPORT]
    if close:
        command += ["-H", "Connection: close"]
    output = subprocess.run(command + [f"http://127.0.0.1:{port}/"], capture_output=True,
                            text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r"^(\w+) (\d+)$", output, re.M)}


def failures(report):
    return report["non_2xx"] + sum(v for k, v in report.items() if k.startswith("errors_"))


def throughput(start):
    result = {}
    for label, close in (("keep-alive", False), ("no keep-alive", True)):
        server = start(4).ready()
        try:
            report = wrk(server.port, 5, close)
            result[label] = report["requests"] / (report["duration_us"] / 1e6)
            result[label + " errors"] = failures(report)
            result[label + " latency"] = (report["latency_p99_us"] / 1000,
                                          report["latency_max_us"] / 1000)
        finally:
            server.stop()
    return result


def cpu_per_request(start, seconds=4):
    """User and system CPU microseconds per request in the only worker, one keep-alive
    client: what serving a request costs, without scheduling effects."""
    server = start(1).ready()
    try:
        worker = current_pid(server)

        def cpu():
            with open(f"/proc/{worker}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]), int(fields[12])
        (user0, system0) = cpu()
        command = ["wrk", "-t1", "-c1", f"-d{seconds}s", "-s", WRK_REPORT,
                   f"http://127.0.0.1:{server.port}/"]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        requests = int(re.search(r"^requests (\d+)$", output, re.M).group(1))
        (user1, system1) = cpu()
        per = lambda ticks: ticks / TICKS / requests * 1e6
        return per(user1 - user0), per(system1 - system0)
    finally:
        server.stop()


def current_pid(server):
    """The pid of the worker that answers (the servers here have one worker)."""
    return int(http_get(server.port, "/pid")[1])


def respawn(start, kills):
    server = start(1).ready()
    samples = []
    try:
        for _ in range(kills):
            time.sleep(1.1)  # the same pause for every server: none sees kills as a crash loop
            old = current_pid(server)
            os.kill(old, signal.SIGKILL)
            killed = time.monotonic()
            new = current_pid(server)
            samples.append((time.monotonic() - killed) * 1000)
            assert new != old
    finally:
        server.stop()
    return samples


def hung_request(start, runs=3):
    """Seconds from sending a request that hangs to its end (the limit is LIMIT_S)."""
    server = start(1, limit_time=LIMIT_S).ready()
    ends = []
    try:
        for _ in range(runs):
            time.sleep(1.1)
            sent = time.monotonic()
            try:
                http_get(server.port, "/sleep?ms=20000", timeout=30)
            except OSError:
                pass
            ends.append(time.monotonic() - sent)
            server.ready()
    finally:
        server.stop()
    return ends


def leak(start, runs=3):
    """Milliseconds from the leaking request's answer to the worker being gone (None: the
    worker was still there 5 s later)."""
    server = start(1, limit_memory=LIMIT_MIB).ready()
    results = []
    try:
        for _ in range(runs):
            time.sleep(1.1)
            pid = current_pid(server)
            try:
                http_get(server.port, f"/alloc?mb={2 * LIMIT_MIB}", timeout=30)
            except OSError:
                pass
            answered = time.monotonic()
            try:
                gone = wait_for(lambda: is_gone(pid), 5)
                results.append((gone - answered) * 1000)
                server.ready()
            except TimeoutError:
                results.append(None)
                break
    finally:
        server.stop()
    return results


def reload_under_load(start, reloads=5):
    server = start(4).ready()
    try:
        def reloader():
            for _ in range(reloads):
                time.sleep(1)
                server.reload()
        thread = threading.Thread(target=reloader)
        thread.start()
        report = wrk(server.port, reloads + 1)
        thread.join()
        return failures(report), report["requests"]
    finally:
        server.stop()


def master_cost(start, idle=10):
    server = start(8).ready()
    try:
        wait_for(lambda: len(server.workers()) >= 8, 20, 0.05)
        for _ in range(100):
            http_get(server.port, "/")
        pid = server.proc.pid
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

        def cpu():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        before = cpu()
        time.sleep(idle)  # the idle cost is what is measured
        return rss, (cpu() - before) / TICKS / idle * 100
    finally:
        server.stop()


def crash_at_boot(start, seconds=5):
    """Worker forks per second (from the server's own log) while every worker fails at boot,
    and whether the server is still up at the end."""
    server = start(2, crash_at_boot=True)
    try:
        until = time.monotonic() + seconds
        while time.monotonic() < until and server.proc.poll() is None:
            time.sleep(0.05)  # the server is left alone for `seconds`
        alive = server.proc.poll() is None
        forks = server.spawn_count()
    finally:
        server.stop()
    return forks / seconds, alive


def ms(samples):
    return f"{statistics.median(samples):.1f} / {max(samples):.1f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    build()
    ensure_venv()
    rows = {}
    for name, start in SERVERS:
        print(f"measuring {name} ...", file=sys.stderr)
        rows[name] = {
            "throughput": throughput(start),
            "cpu": cpu_per_request(start),
            "respawn": respawn(start, args.kills),
            "hung": hung_request(start),
            "leak": leak(start),
            "reload": reload_under_load(start),
            "master": master_cost(start),
            "crash": crash_at_boot(start),
        }
    names = [name for name, _ in SERVERS]

    def row(label, cell):
        return f"| {label} | " + " | ".join(cell(rows[name]) for name in names) + " |"

    def leak_cell(result):
        done = [value for value in result["leak"] if value is not None]
        if len(done) < len(result["leak"]):
            return "not killed (no memory limit enforced)"
        return f"killed {ms(done)} after the answer"

    def ratio(key, lower_is_better):
        ours = rows[names[0]]
        others = [rows[name] for name in ("gunicorn", "uWSGI")]
        value = lambda r: statistics.median(r[key]) if isinstance(r[key], list) else r[key]
        return " / ".join(
            f"{(value(other) / value(ours) if lower_is_better else value(ours) / value(other)):.1f}x"
            for other in others)

    versions = (f"{version_of([BINARY, '--version'])}; gunicorn "
                f"{version_of([os.path.join(VENV, 'bin', 'gunicorn'), '--version']).split()[-1].strip('()')}; "
                f"uWSGI {version_of([os.path.join(VENV, 'bin', 'uwsgi'), '--version'])}")
    lines = [
        f"Machine: {machine()}. Versions: {versions}.",
        f"Command: `scripts/compare.sh --kills {args.kills}`. gunicorn: sync workers, "
        f"`--timeout {LIMIT_S}` for the hung request. uWSGI: `--master --processes N "
        f"--http11-socket --lazy-apps`, `--harakiri {LIMIT_S}`, `--reload-on-rss {LIMIT_MIB} "
        f"--evil-reload-on-rss {LIMIT_MIB}`. forkwarden: `limit_time_real = {LIMIT_S}`, "
        f"`limit_memory_hard = {LIMIT_MIB}MiB` (RSS polling). Times are median / max.",
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        row("requests/s on `/`, keep-alive (4 workers, wrk 8 connections); p99 / max latency",
            lambda r: throughput_cell(r, "keep-alive")),
        row("requests/s on `/`, client asks `Connection: close`; p99 / max latency",
            lambda r: throughput_cell(r, "no keep-alive")),
        row("worker CPU per request on `/`, 1 worker, 1 keep-alive client: user + system",
            lambda r: f"{r['cpu'][0]:.1f} + {r['cpu'][1]:.1f} us"),
        row(f"SIGKILL of a worker -> replacement answering ({args.kills} kills)",
            lambda r: ms(r["respawn"])),
        row(f"hung request, limit {LIMIT_S} s: ended after",
            lambda r: f"{statistics.median(r['hung']):.3f} / {max(r['hung']):.3f} s"),
        row(f"worker leaking past {LIMIT_MIB} MiB", leak_cell),
        row("failed requests during 5 reloads under load", lambda r: f"{r['reload'][0]} of {r['reload'][1]}"),
        row("master RSS, 8 workers", lambda r: f"{r['master'][0]} KiB"),
        row("master CPU while idle, 8 workers", lambda r: f"{r['master'][1]:.2f} %"),
        row("worker crashing at boot: forks per second (server still up after 5 s)",
            lambda r: f"{r['crash'][0]:.1f} ({'yes' if r['crash'][1] else 'no: it exits'})"),
        "",
        "forkwarden (same WSGI app, through the runner) vs gunicorn / vs uWSGI (above 1.0x: "
        f"forkwarden does better): keep-alive throughput {ratio_throughput(rows, 'keep-alive')}, "
        f"respawn {ratio('respawn', True)}, master RSS {ratio_master_rss(rows)}.",
    ]
    publish("compare", "forkwarden, gunicorn and uWSGI side by side", lines, args.write_docs)


def throughput_cell(result, label):
    throughput = result["throughput"]
    p99, worst = throughput[label + " latency"]
    return (f"{throughput[label]:.0f}; {p99:.1f} / {worst:.0f} ms; "
            f"{throughput[label + ' errors']} errors")


def ratio_throughput(rows, label):
    ours = rows[SERVERS[0][0]]["throughput"][label]
    return " / ".join(f"{ours / rows[name]['throughput'][label]:.1f}x" for name in ("gunicorn", "uWSGI"))


def ratio_master_rss(rows):
    ours = rows[SERVERS[0][0]]["master"][0]
    return " / ".join(f"{rows[name]['master'][0] / ours:.1f}x" for name in ("gunicorn", "uWSGI"))


def stop_everything(*_):
    for proc in STARTED:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    raise SystemExit(130)


def run(main):
    """Runs `main`; every server it started is stopped by pid at the end, even on Ctrl-C."""
    signal.signal(signal.SIGINT, stop_everything)
    signal.signal(signal.SIGTERM, stop_everything)
    try:
        main()
    finally:
        for started in STARTED:
            if started.poll() is None:
                os.killpg(started.pid, signal.SIGKILL)
                started.wait()


if __name__ == "__main__":
    run(main)
