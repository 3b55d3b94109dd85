"""The jobs scripts/bench_jobs.py runs, the same under each queue: a no-op, a 50 ms job, a
job that notes when it starts, and one whose first attempt hangs (to be SIGKILLed).

Each queue wraps these functions its own way (a forkwarden `call`, a procrastinate task, a
Celery task); the bodies are these."""

import os
import time

#: Where `stamp` and `stuck` write (one line per start), from the environment.
STAMPS = os.environ.get("BENCH_STAMPS", "/tmp/bench-jobs-stamps")


def app(environ, start_response):
    """forkwarden preloads this module as its [app]."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


def noop():
    pass


def sleep50():
    time.sleep(0.05)


def stamp(tag):
    """Notes when it started: `start TAG TIME PID`."""
    with open(STAMPS, "a") as out:
        out.write(f"start {tag} {time.time():.6f} {os.getpid()}\n")


def stuck(tag):
    """Its first start hangs (it is killed); a later one notes when it started."""
    first = not os.path.exists(f"{STAMPS}.{tag}")
    if first:
        open(f"{STAMPS}.{tag}", "w").close()
    stamp(tag)
    if first:
        time.sleep(120)


# ---- procrastinate ----

def procrastinate_app(conninfo):
    import procrastinate
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
    retry = procrastinate.RetryStrategy(max_attempts=5, wait=0)
    for function in (noop, sleep50, stamp, stuck):
        app.task(name=function.__name__, retry=retry)(function)
    return app


PROCRASTINATE_APP = (procrastinate_app(os.environ["BENCH_PG"])
                     if os.environ.get("BENCH_QUEUE") == "procrastinate" else None)


# ---- Celery ----

def celery_app(redis_url):
    from celery import Celery
    app = Celery("jobs_bench_app", broker=redis_url, backend=redis_url)
    # Its best settings for a killed worker: acknowledged once done, and a task whose
    # worker process died is rejected, so it is delivered again.
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True,
                    worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
    for function in (noop, sleep50, stamp, stuck):
        app.task(name=function.__name__)(function)
    return app


CELERY_APP = (celery_app(os.environ["BENCH_REDIS"])
              if os.environ.get("BENCH_QUEUE") == "celery" else None)
