#!/usr/bin/env python3
"""Preloading side by side: forkwarden's template (`[app] preload = true`), forkwarden
starting each worker cold (exec), gunicorn `--preload` and uWSGI (which preloads unless told
`--lazy-apps`), all serving scripts/standin_app.py: an app that loads like Odoo (about 1 s of
import, about 100 MB of small Python objects kept), with a PostgreSQL connection opened while
loading and a new one opened in each worker by its post-fork hook when a local PostgreSQL
answers (scripts/ensure-postgres.sh starts one). 4 workers each. Measured, each on a fresh
server:
  * SIGKILL of a worker until a pid not seen before answers (--kills times);
  * memory: the 4 workers' PSS added up, against one worker's RSS (PSS shares each page
    among the processes that map it: what the workers cost together);
  * SIGHUP under load (wrk, 8 connections): failed requests, and whether the code on disk
    (a file the app reads when it loads, changed before the signal) is what answers after;
  * forkwarden only: the template SIGKILLed under load: failed requests.

Usage: scripts/compare.sh (runs this after compare.py) or python3 scripts/compare_preload.py
[--kills 20] [--write-docs]. Only loopback traffic; every process started is stopped.
"""

import argparse
import datetime
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import compare
from compare import APP_DIR, VENV, Running, failures, free_port, run, version_of, wrk
from fwbench import (BINARY, at_once, build, children_of, http_get, machine, publish,
                     runner_app, wait_for)

WORKERS = 4
PYTHON = os.path.join(VENV, "bin", "python")


def ensure_venv():
    """compare.py's virtualenv (gunicorn, uWSGI), with pg8000 for the stand-in's database."""
    compare.ensure_venv()
    if subprocess.run([PYTHON, "-c", "import pg8000"], capture_output=True).returncode != 0:
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", "pg8000"], check=True)


def database():
    """STANDIN_DSN for the local PostgreSQL when it answers (None: run without one)."""
    dsn = os.environ.get("STANDIN_DSN", "root@/forkwarden_test")
    probe = subprocess.run(
        [PYTHON, "-c", "import standin_app"], cwd=APP_DIR, capture_output=True, text=True,
        env={**os.environ, "STANDIN_DSN": dsn, "STANDIN_MB": "1", "STANDIN_LOAD_S": "0"})
    if probe.returncode != 0:
        print(f"no database for the stand-in ({probe.stderr.strip().splitlines()[-1:]}); "
              "measuring without one", file=sys.stderr)
        return None
    return dsn


class Setup:
    """What every server gets: the stand-in's environment and its version file."""

    def __init__(self, dsn):
        self.version_file = tempfile.NamedTemporaryFile("w", suffix=".version", delete=False)
        self.version_file.close()
        self.set_version("v1")
        self.env = {"STANDIN_VERSION_FILE": self.version_file.name}
        if dsn:
            self.env["STANDIN_DSN"] = dsn

    def set_version(self, version):
        with open(self.version_file.name, "w") as f:
            f.write(version)


def forkwarden(setup, preload):
    port = free_port()
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    flags = (["--preload"] if preload else []) + ["--post-fork", "standin_app:post_fork"]
    config.write(
        f"http_port = {port}\nworkers = {WORKERS}\nmax_cron_threads = 0\nlimit_request = 0\n"
        "log_level = \"debug\"\n"
        "limit_memory_soft = 0\nlimit_memory_hard = 0\n"
        + runner_app("standin_app:app", APP_DIR, flags=flags, env=setup.env, python=PYTHON,
                     extra=f"preload = {'true' if preload else 'false'}\n"))
    config.close()
    server = Running([BINARY, "--config", config.name], port)
    server.name = "forkwarden, preload" if preload else "forkwarden, exec (no preload)"
    server.template = lambda: template_pid(server)
    return server


def template_pid(server):
    """The pid in forkwarden's latest `app template started as pid N` line."""
    server.log.seek(0)
    lines = [line for line in server.log.read().splitlines()
             if "app template started as pid " in line]
    return int(lines[-1].split("started as pid ")[1].split()[0]) if lines else None


def gunicorn(setup):
    port = free_port()
    hooks = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    hooks.write("def post_fork(server, worker):\n"
                "    import standin_app\n    standin_app.post_fork()\n")
    hooks.close()
    command = [os.path.join(VENV, "bin", "gunicorn"), "--preload", "-w", str(WORKERS),
               "-b", f"127.0.0.1:{port}", "--chdir", APP_DIR, "-c", hooks.name,
               "--graceful-timeout", "5", "standin_app:app"]
    server = Running(command, port, setup.env)
    server.name = "gunicorn --preload"
    return server


def uwsgi(setup):
    port = free_port()
    fifo = os.path.join(tempfile.mkdtemp(), "master.fifo")
    shim = os.path.join(tempfile.mkdtemp(), "standin_uwsgi.py")
    with open(shim, "w") as f:
        f.write("import uwsgi\nimport standin_app\n"
                "uwsgi.post_fork_hook = standin_app.post_fork\napp = standin_app.app\n")
    command = [os.path.join(VENV, "bin", "uwsgi"), "--master", "--processes", str(WORKERS),
               "--http11-socket", f"127.0.0.1:{port}", "--chdir", APP_DIR, "--master-fifo", fifo,
               "--pythonpath", os.path.dirname(shim), "--pythonpath", APP_DIR,
               "--module", "standin_uwsgi:app", "--die-on-term", "--disable-logging",
               "--need-app"]
    env = {**setup.env, "PATH": os.path.join(VENV, "bin") + os.pathsep + os.environ["PATH"]}

    def chain_reload():
        with open(fifo, "w") as control:
            control.write("c")
    server = Running(command, port, env, reload=chain_reload)
    server.name = "uWSGI (preloads)"
    return server


def workers_of(server):
    """The server's worker processes (a template is not one)."""
    template = getattr(server, "template", lambda: None)()
    return [pid for pid in children_of(server.proc.pid) if pid != template]


def settled(server):
    server.ready(60)
    wait_for(lambda: len(workers_of(server)) == WORKERS, 60, 0.05)
    return server


def answering_pid(server):
    return int(http_get(server.port, "/pid")[1])


def answering_pids(server):
    """The pids that answer a burst of as many simultaneous requests as there are workers:
    whatever order a server hands connections to its idle workers in (forkwarden's take
    them oldest first, so one request after another never reaches a new worker while an
    older one is idle), a burst reaches every worker that serves."""
    return set(at_once(WORKERS, lambda: answering_pid(server)))


def respawn(start, kills):
    """ms from SIGKILL of a worker until a pid not seen before answers /pid (to a burst of
    requests, see `answering_pids`); and, for
    forkwarden, until the replacement said READY=1 (the `ready after` line of its debug log),
    which leaves out the race for the next connection among the 4 workers, and from the
    master's fork request (`asked the app template ... for http worker N`) to that READY=1."""
    server = settled(start())
    samples, ready, asked = [], [], []
    try:
        seen = set(workers_of(server))
        for _ in range(kills):
            time.sleep(1.1)  # the same pause for every server: none sees a crash loop
            victim = answering_pid(server)
            os.kill(victim, signal.SIGKILL)
            killed, killed_at = time.monotonic(), time.time()
            deadline = killed + 60
            while time.monotonic() < deadline:
                new = answering_pids(server) - seen
                if new:
                    samples.append((time.monotonic() - killed) * 1000)
                    pid = new.pop()
                    seen.add(pid)
                    break
            else:
                raise TimeoutError(f"{server.name}: no new worker within 60 s")
            ready_line = logged(server, f"(pid {pid}) ready after")
            if ready_line is not None:
                ready_at, text = ready_line
                ready.append((ready_at - killed_at) * 1000)
                slot = text.split(" (pid ")[0].split("DEBUG ")[-1]
                asked_line = logged(server, f"for {slot} (fork request", before=ready_at)
                if asked_line is not None:
                    asked.append((ready_at - asked_line[0]) * 1000)
            seen.update(workers_of(server))
    finally:
        server.stop()
    return samples, ready, asked


def logged(server, needle, before=None):
    """(wall-clock time, text) of forkwarden's first log line containing `needle`, or with
    `before`, of the last one logged before then; None: none."""
    server.log.seek(0)
    found = None
    for line in server.log.read().splitlines():
        if needle not in line:
            continue
        stamp = line.split()[0].rstrip("Z")
        at = datetime.datetime.fromisoformat(stamp).replace(
            tzinfo=datetime.timezone.utc).timestamp()
        if before is None:
            return at, line
        if at <= before:
            found = (at, line)
    return found


def descendants(pid):
    """Every live process below `pid`."""
    found, frontier = [], [pid]
    while frontier:
        children = children_of(frontier.pop())
        found += children
        frontier += children
    return found


def kib(pid, field, path="smaps_rollup"):
    with open(f"/proc/{pid}/{path}") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(f"no {field} for {pid}")


def memory(start):
    """(PSS of the 4 workers added up, RSS of one worker, PSS of every process of the
    server: master, template and its spare, workers), KiB, after every worker has served."""
    server = settled(start())
    try:
        for _ in range(200):
            http_get(server.port, "/")
        workers = workers_of(server)
        pss = sum(kib(pid, "Pss") for pid in workers)
        rss = max(kib(pid, "Rss") for pid in workers)
        everything = [server.proc.pid] + descendants(server.proc.pid)
        return pss, rss, sum(kib(pid, "Pss") for pid in everything)
    finally:
        server.stop()


def reload_under_load(start, setup):
    """(failed, requests) over 6 s of wrk with a reload at 1 s, and whether the new code
    answers afterwards (within 30 s)."""
    setup.set_version("v1")
    server = settled(start())
    try:
        def reloader():
            time.sleep(1)
            setup.set_version("v2")
            server.reload()
        thread = threading.Thread(target=reloader)
        thread.start()
        report = wrk(server.port, 6)
        thread.join()
        try:
            wait_for(lambda: all(http_get(server.port, "/")[1] == "hello from v2"
                                 for _ in range(8)), 30, 0.2)
            new_code = True
        except TimeoutError:
            new_code = False
        return failures(report), report["requests"], new_code
    finally:
        server.stop()
        setup.set_version("v1")


def cron_runs(setup, seconds=14):
    """Seconds from start to end of each run of a scheduled action, as a `call` job (forked
    from the template) and as a command job (a fresh interpreter that imports the app), from
    forkwarden's own log lines (`exited with status 0 after X`)."""
    port = free_port()
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    data = tempfile.mkdtemp()
    env = ", ".join(f"{key} = \"{value}\"" for key, value in setup.env.items())
    config.write(
        f"http_port = {port}\nworkers = 1\nmax_cron_threads = 2\ndata_dir = \"{data}\"\n"
        "limit_memory_soft = 0\nlimit_memory_hard = 0\n"
        + runner_app("standin_app:app", APP_DIR,
                     flags=["--preload", "--post-fork", "standin_app:post_fork"],
                     env=setup.env, python=PYTHON, extra="preload = true\n")
        + "[[cron]]\nname = \"as-call\"\ninterval = \"2s\"\ncall = \"standin_app:scheduled\"\n"
        f"env = {{ {env} }}\n"
        "[[cron]]\nname = \"as-command\"\ninterval = \"2s\"\n"
        f"command = [\"{PYTHON}\", \"-c\", \"import standin_app; standin_app.scheduled()\"]\n"
        f"cwd = \"{APP_DIR}\"\nenv = {{ {env} }}\n")
    config.close()
    server = Running([BINARY, "--config", config.name], port)
    server.name = "forkwarden, cron"
    try:
        settled(server)
        time.sleep(seconds)  # the jobs run on their own schedule meanwhile
        server.log.seek(0)
        log = server.log.read()
    finally:
        server.stop()
    runs = {}
    for name in ("as-call", "as-command"):
        found = re.findall(rf"cron job {name} \(pid \d+\) exited with status 0 after "
                           r"([\d.]+)s", log)
        runs[name] = [float(value) for value in found]
    return runs


def template_killed_under_load(start):
    server = settled(start())
    try:
        def killer():
            time.sleep(1)
            os.kill(server.template(), signal.SIGKILL)
        thread = threading.Thread(target=killer)
        thread.start()
        report = wrk(server.port, 5)
        thread.join()
        return failures(report), report["requests"]
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    build()
    ensure_venv()
    dsn = database()
    setup = Setup(dsn)
    servers = [("forkwarden, preload", lambda: forkwarden(setup, True)),
               ("gunicorn --preload", lambda: gunicorn(setup)),
               ("uWSGI (preloads)", lambda: uwsgi(setup)),
               ("forkwarden, exec (no preload)", lambda: forkwarden(setup, False))]
    rows = {}
    for name, start in servers:
        print(f"measuring {name} ...", file=sys.stderr)
        rows[name] = {
            "respawn": respawn(start, args.kills),
            "memory": memory(start),
            "reload": reload_under_load(start, setup),
        }
        if name == "forkwarden, preload":
            rows[name]["template"] = template_killed_under_load(start)
            rows[name]["cron"] = cron_runs(setup)
    names = [name for name, _ in servers]

    def row(label, cell):
        return f"| {label} | " + " | ".join(cell(rows[name]) for name in names) + " |"

    def ms(samples):
        return f"{statistics.median(samples):.1f} / {max(samples):.1f} ms"

    def mib(kib_value):
        return f"{kib_value / 1024:.1f} MiB"

    def cron_cell(result):
        if "cron" not in result:
            return "n/a"
        cell = []
        for name, label in (("as-call", "call"), ("as-command", "command")):
            runs = result["cron"][name]
            cell.append(f"{label} {statistics.median(runs):.2f} / {max(runs):.2f} s "
                        f"({len(runs)} runs)" if runs else f"{label}: no run")
        return "; ".join(cell)

    def memory_cell(result):
        pss, rss, parent = result["memory"]
        return f"{mib(pss)} = {pss / rss:.2f}x one worker's RSS ({mib(rss)})"

    versions = (f"{version_of([BINARY, '--version'])}; gunicorn "
                f"{version_of([os.path.join(VENV, 'bin', 'gunicorn'), '--version']).split()[-1].strip('()')}; "
                f"uWSGI {version_of([os.path.join(VENV, 'bin', 'uwsgi'), '--version'])}")
    lines = [
        f"Machine: {machine()}. Versions: {versions}.",
        f"Command: `scripts/compare.sh --kills {args.kills}` (its preload part, "
        "scripts/compare_preload.py). App: scripts/standin_app.py (1 s import, about 100 MB "
        f"of small objects), {'with' if dsn else 'without'} a PostgreSQL connection opened "
        "while loading and reopened by each worker's post-fork hook. "
        f"{WORKERS} workers each; gunicorn sync workers with `--preload` and a `post_fork` "
        "hook; uWSGI `--master --processes 4 --http11-socket`, no `--lazy-apps`, "
        "`uwsgi.post_fork_hook`, reloaded through its master FIFO (chain reload); forkwarden "
        "through `python3 -m forkwarden_wsgi --post-fork standin_app:post_fork`. Times are "
        "median / max.",
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        row(f"SIGKILL of a worker until a new pid answers a burst of 4 requests ({args.kills} kills)",
            lambda r: ms(r["respawn"][0])),
        row("SIGKILL of a worker until its replacement said READY=1 (forkwarden's log)",
            lambda r: ms(r["respawn"][1]) if r["respawn"][1] else "n/a"),
        row("of which: the master's fork request to that READY=1 (forkwarden's log)",
            lambda r: ms(r["respawn"][2]) if r["respawn"][2] else "n/a"),
        row("PSS of the 4 workers added up, after 200 requests", memory_cell),
        row("PSS of all the server's processes (master, template and spare, workers)",
            lambda r: mib(r["memory"][2])),
        row("reload under load (wrk 8 connections, 6 s): failed requests; new code served after",
            lambda r: f"{r['reload'][0]} of {r['reload'][1]}; "
                      f"{'yes' if r['reload'][2] else 'no: old code'}"),
        row("template SIGKILLed under load (wrk 8 connections, 5 s): failed requests",
            lambda r: f"{r['template'][0]} of {r['template'][1]}" if "template" in r else "n/a"),
        row("a scheduled action, start to end of the run (median / max, forkwarden's log): "
            "`call` (forked from the template) vs command (a fresh interpreter imports the app)",
            cron_cell),
    ]
    publish("compare-preload", "Preloaded workers side by side", lines, args.write_docs)


if __name__ == "__main__":
    run(main)
