"""The WSGI app tests/preload.rs serves with `[app] preload = true`. Standard library only.

It imports `version` from the current directory (the code a deploy changes; a test rewrites
it, then sends SIGHUP), and says where things happened: /info gives the version loaded, the
pid that loaded it (the template), the pid the post-fork hook ran in, and the worker's
FORKWARDEN_SLOT, FORKWARDEN_GENERATION and LISTEN_PID as this process sees them.
"""

import os
import time
from urllib.parse import parse_qs

import version

LOADED_BY = os.getpid()
POST_FORK_PID = None
HELD = []

# As an application that starts a helper while it loads and never waits for it: it ends at
# once, and the template must reap it (it would stay a zombie for the template's life).
HELPER = os.fork()
if HELPER == 0:
    os._exit(0)


def post_fork():
    """--post-fork preload_app:post_fork"""
    global POST_FORK_PID
    POST_FORK_PID = os.getpid()


def tick():
    """A cron job's function (`call = "preload_app:tick"`): says where it runs."""
    print(f"tick in {os.getpid()} parent {os.getppid()} loaded_by {LOADED_BY} "
          f"post_fork {POST_FORK_PID} job {os.environ.get('FORKWARDEN_JOB')} "
          f"env {os.environ.get('TICK_ENV')} nice {os.nice(0)}", flush=True)


def fail():
    raise RuntimeError("a job that fails")


def hang():
    time.sleep(60)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/pid":
        body = str(os.getpid())
    elif path == "/info":
        env = os.environ
        body = (f"version={version.VERSION} loaded_by={LOADED_BY} post_fork={POST_FORK_PID} "
                f"slot={env.get('FORKWARDEN_SLOT')} generation={env.get('FORKWARDEN_GENERATION')} "
                f"listen_pid_is_mine={env.get('LISTEN_PID') == str(os.getpid())}")
    elif path == "/sleep":
        time.sleep(int(query.get("ms", ["0"])[0]) / 1000)
        body = f"slept in pid {os.getpid()}"
    elif path == "/alloc":
        HELD.append(bytearray(b"\x01") * (int(query.get("mb", ["0"])[0]) << 20))
        body = "allocated"
    else:
        body = "hello"
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
