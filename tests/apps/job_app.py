"""The application tests/jobs.rs preloads: a trivial WSGI app, and functions that `[[job]]`
kinds call with the job's args. Standard library only (plus forkwarden_wsgi)."""

import os
import time

from forkwarden_wsgi import jobs


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


def record(path, value):
    """Appends `value`, the job's id and attempt, this process's parent and this process
    to `path`."""
    job = jobs.current()
    with open(path, "a") as marks:
        marks.write(f"{value} {job['id']} {job['attempt']} {os.getppid()} {os.getpid()}\n")


def flaky(path):
    """Asks for another attempt the first time, then records it."""
    if jobs.current()["attempt"] == 1:
        raise jobs.Retry("not yet")
    record(path, "flaky")


def broken():
    raise ValueError("no such invoice")


def sleep(seconds):
    time.sleep(seconds)


def steps(total, pause):
    """Reports its progress, step after step."""
    for step in range(total):
        jobs.progress(step, total)
        time.sleep(pause)
    jobs.progress(total, total)


def later(seconds):
    """Asks to be retried after `seconds` the first time."""
    if jobs.current()["attempt"] == 1:
        raise jobs.Retry("come back later", after=seconds)


def spin():
    """Burns CPU until a limit ends it."""
    while True:
        pass
