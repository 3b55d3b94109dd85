"""Job queues side by side: forkwarden's job workers, procrastinate (PostgreSQL) and Celery
with a Redis broker, on this machine and the same PostgreSQL cluster, 4 workers each, the
same Python job bodies (scripts/jobs_bench_app.py).

Measures, for each:
- no-op throughput: N no-op jobs enqueued at once (one transaction, a batch, a burst of
  messages), jobs per second until the last is done;
- 50 ms jobs: N jobs of 50 ms, jobs per second (4 workers: 80/s at best);
- enqueue to start at rest: one job at a time, from just before the enqueue commits to the
  moment the job's body starts (the body notes time.time()), p50 and p99;
- a SIGKILLed job: the process running a job's first attempt is killed (forkwarden: its
  job worker; procrastinate: its worker; Celery: the pool process), and the time until the
  job's body starts again is measured (up to 30 s: "not retried").

Run with the venv scripts/ensure-bench-jobs.sh makes (procrastinate, Celery, psycopg):

    scripts/ensure-bench-jobs.sh && target/bench-jobs-venv/bin/python scripts/bench_jobs.py [--write-docs]
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fwbench  # noqa: E402

import psycopg  # noqa: E402

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
VENV_BIN = os.path.dirname(sys.executable)
DATABASE = "fwbench_jobs"
CONNINFO = f"dbname={DATABASE} host=/var/run/postgresql"
WORKERS = 4
RETRY_WAIT = 30.0


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fresh_database():
    subprocess.run(["dropdb", "--if-exists", DATABASE], check=True)
    subprocess.run(["createdb", DATABASE], check=True)


def wait_for(condition, timeout, step=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return None


def stamps(path):
    """The `start TAG TIME PID` lines written so far: [(tag, time, pid)]."""
    try:
        with open(path) as lines:
            return [(tag, float(at), int(pid)) for _, tag, at, pid in
                    (line.split() for line in lines if line.startswith("start "))]
    except FileNotFoundError:
        return []


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


class Queue:
    """One queue under test: start() its workers, enqueue jobs, count the done ones."""

    name = ""

    def __init__(self, workdir):
        self.workdir = workdir
        self.stamps = os.path.join(workdir, "stamps")
        self.env = {**os.environ, "BENCH_STAMPS": self.stamps,
                    "PYTHONPATH": SCRIPTS, "BENCH_PG": CONNINFO}
        self.processes = []

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def throughput(self, kind, count):
        before = self.done()
        started = time.monotonic()
        self.enqueue_many(kind, count)
        finished = wait_for(lambda: self.done() >= before + count and time.monotonic(), 300,
                            step=0.01)
        if not finished:
            return None
        return count / (finished - started)

    def latency(self, samples):
        """Seconds from just before the enqueue commits to the body's start, one at a time."""
        waits = []
        for index in range(samples):
            tag = f"l{index}"
            at = self.enqueue_one("stamp", {"tag": tag})
            started = wait_for(lambda: next((t for g, t, _ in stamps(self.stamps) if g == tag),
                                            None), 10)
            if started is None:
                raise RuntimeError(f"{self.name}: job {tag} never started")
            waits.append(started - at)
            time.sleep(0.05)  # at rest between two
        return waits

    def retry_after_kill(self):
        tag = "k"
        self.enqueue_one("stuck", {"tag": tag})
        first = wait_for(lambda: next(((t, p) for g, t, p in stamps(self.stamps) if g == tag),
                                      None), 10)
        if first is None:
            raise RuntimeError(f"{self.name}: the stuck job never started")
        victim = self.process_to_kill(first[1])
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        again = wait_for(lambda: next((t for g, t, _ in stamps(self.stamps)
                                       if g == tag and t > killed), None), RETRY_WAIT)
        return None if again is None else again - killed


class Forkwarden(Queue):
    name = "forkwarden"

    def start(self):
        fresh_database()
        runner = fwbench.python_runner_path()
        kinds = "".join(
            f'[[job]]\nname = "{name}"\ncall = "jobs_bench_app:{name}"\n'
            f'retry_pattern = {{ 1 = "0s" }}\n' for name in ("noop", "sleep50", "stamp", "stuck"))
        config = (
            f'workers = 1\nhttp_port = 0\nmax_cron_threads = 0\njob_workers = {WORKERS}\n'
            f'cron_store = "postgresql://{os.environ.get("USER", "root")}@%2Fvar%2Frun%2Fpostgresql/{DATABASE}"\n'
            f'data_dir = "{self.workdir}/data"\n'
            f'[app]\ncommand = ["{sys.executable}", "-m", "forkwarden_wsgi", "jobs_bench_app:app"]\n'
            f'cwd = "{SCRIPTS}"\nenv = {{ PYTHONPATH = "{runner}:{SCRIPTS}", '
            f'BENCH_STAMPS = "{self.stamps}" }}\npreload = true\nnonblocking = true\n{kinds}')
        path = os.path.join(self.workdir, "forkwarden.toml")
        with open(path, "w") as out:
            out.write(config)
        log = open(os.path.join(self.workdir, "forkwarden.log"), "w")
        self.processes.append(subprocess.Popen([fwbench.BINARY, "--config", path],
                                               stdout=log, stderr=log))
        self.db = psycopg.connect(CONNINFO, autocommit=True)
        registered = wait_for(lambda: self._kinds() == 4, 60, step=0.05)
        if not registered:
            raise RuntimeError("forkwarden's job workers did not start")

    def _kinds(self):
        try:
            return self.db.execute("SELECT count(*) FROM forkwarden.job_kind").fetchone()[0]
        except psycopg.Error:
            return 0

    def enqueue_many(self, kind, count):
        with self.db.transaction():
            self.db.execute("SELECT forkwarden.enqueue(%s) FROM generate_series(1, %s)",
                            (kind, count))

    def enqueue_one(self, kind, args):
        import json
        with self.db.transaction():
            self.db.execute("SELECT forkwarden.enqueue(%s, %s::jsonb)", (kind, json.dumps(args)))
            at = time.time()
        return at

    def done(self):
        return self.db.execute(
            "SELECT count(*) FROM forkwarden.job WHERE state = 'done'").fetchone()[0]

    def process_to_kill(self, job_pid):
        # The job worker running it: the one whose attempt is open.
        return self.db.execute(
            "SELECT worker_pid FROM forkwarden.job_attempt WHERE ended_at IS NULL").fetchone()[0]

    def stop(self):
        self.db.close()
        super().stop()


class Procrastinate(Queue):
    name = "procrastinate"

    def start(self):
        fresh_database()
        self.env["BENCH_QUEUE"] = "procrastinate"
        os.environ.update(BENCH_QUEUE="procrastinate", BENCH_PG=CONNINFO,
                          BENCH_STAMPS=self.stamps)
        app_path = "jobs_bench_app.PROCRASTINATE_APP"
        subprocess.run([os.path.join(VENV_BIN, "procrastinate"), "--app", app_path, "schema",
                        "--apply"], env=self.env, check=True, capture_output=True)
        log = open(os.path.join(self.workdir, "procrastinate.log"), "w")
        for _ in range(WORKERS):
            self.processes.append(subprocess.Popen(
                [os.path.join(VENV_BIN, "procrastinate"), "--app", app_path, "worker",
                 "--concurrency", "1"], env=self.env, stdout=log, stderr=log))
        import jobs_bench_app
        self.app = jobs_bench_app.procrastinate_app(CONNINFO)
        self.app.open()
        self.db = psycopg.connect(CONNINFO, autocommit=True)
        time.sleep(2)  # the workers connect and LISTEN

    def enqueue_many(self, kind, count):
        self.app.tasks[kind].batch_defer(*[{} for _ in range(count)])

    def enqueue_one(self, kind, args):
        at = time.time()
        self.app.tasks[kind].defer(**args)
        return at

    def done(self):
        return self.db.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'").fetchone()[0]

    def process_to_kill(self, job_pid):
        return job_pid  # the worker process runs its jobs in threads

    def stop(self):
        self.app.close()
        self.db.close()
        super().stop()


class Celery(Queue):
    name = "Celery (Redis broker)"

    def start(self):
        port = free_port()
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.processes.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.env.update(BENCH_QUEUE="celery", BENCH_REDIS=self.redis_url)
        os.environ.update(BENCH_QUEUE="celery", BENCH_REDIS=self.redis_url,
                          BENCH_STAMPS=self.stamps)
        import redis
        self.redis = redis.Redis.from_url(self.redis_url)
        wait_for(lambda: self._pings(), 10, step=0.05)
        log = open(os.path.join(self.workdir, "celery.log"), "w")
        self.processes.append(subprocess.Popen(
            [os.path.join(VENV_BIN, "celery"), "-A", "jobs_bench_app.CELERY_APP", "worker",
             "--concurrency", str(WORKERS), "--pool", "prefork", "-O", "fair",
             "--without-heartbeat", "--without-mingle", "--without-gossip", "--loglevel",
             "WARNING"], env=self.env, stdout=log, stderr=log))
        import jobs_bench_app
        self.app = jobs_bench_app.celery_app(self.redis_url)
        self.results = []
        # Ready once a task round-trips.
        if not wait_for(lambda: self._round_trip(), 60, step=0.2):
            raise RuntimeError("Celery's worker did not start")

    def _pings(self):
        try:
            return self.redis.ping()
        except Exception:
            return False

    def _round_trip(self):
        try:
            self.app.tasks["noop"].delay().get(timeout=1)
            return True
        except Exception:
            return False

    def enqueue_many(self, kind, count):
        task = self.app.tasks[kind]
        self.pending = [task.delay() for _ in range(count)]

    def enqueue_one(self, kind, args):
        at = time.time()
        self.app.tasks[kind].delay(**args)
        return at

    def done(self):
        pending = getattr(self, "pending", [])
        return sum(1 for result in pending if result.ready()) - len(pending)

    def throughput(self, kind, count):
        started = time.monotonic()
        self.enqueue_many(kind, count)
        for result in self.pending:
            result.get(timeout=300)
        return count / (time.monotonic() - started)

    def process_to_kill(self, job_pid):
        return job_pid  # the pool process running it

    def stop(self):
        super().stop()


def measure(queue_class, jobs, samples):
    with tempfile.TemporaryDirectory() as workdir:
        queue = queue_class(workdir)
        try:
            queue.start()
            noop = queue.throughput("noop", jobs)
            slow = queue.throughput("sleep50", max(jobs // 10, 40))
            waits = queue.latency(samples)
            retried = queue.retry_after_kill()
        finally:
            queue.stop()
    return {
        "noop": noop,
        "sleep50": slow,
        "p50": percentile(waits, 0.5) * 1000,
        "p99": percentile(waits, 0.99) * 1000,
        "retried": retried,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    fwbench.build()
    results = {}
    for queue_class in (Forkwarden, Procrastinate, Celery):
        print(f"measuring {queue_class.name}...", flush=True)
        results[queue_class.name] = measure(queue_class, args.jobs, args.samples)
        print(f"  {results[queue_class.name]}", flush=True)
    rate = lambda value: "failed" if value is None else f"{value:,.0f}/s"  # noqa: E731
    lines = [
        f"`scripts/bench_jobs.py --jobs {args.jobs} --samples {args.samples}`, {WORKERS} "
        "workers each, one PostgreSQL 15 cluster on the same machine (Celery: Redis "
        f"broker and result backend, acks_late and reject_on_worker_lost); {fwbench.machine()}.",
        "",
        "| measure | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
        f"| no-op jobs, {args.jobs} enqueued at once | "
        + " | ".join(rate(r["noop"]) for r in results.values()) + " |",
        f"| 50 ms jobs ({WORKERS} workers: 80/s at best) | "
        + " | ".join(rate(r["sleep50"]) for r in results.values()) + " |",
        f"| enqueue to start at rest, p50 / p99 ({args.samples} jobs) | "
        + " | ".join(f"{r['p50']:.1f} / {r['p99']:.1f} ms" for r in results.values()) + " |",
        "| a SIGKILLed job's worker: its body starts again after | "
        + " | ".join(f"{r['retried']:.2f} s" if r["retried"] is not None
                     else f"not within {RETRY_WAIT:.0f} s" for r in results.values()) + " |",
    ]
    fwbench.publish("bench_jobs", "Job queues: forkwarden, procrastinate, Celery", lines,
                    args.write_docs)


if __name__ == "__main__":
    main()
