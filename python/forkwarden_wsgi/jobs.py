"""forkwarden's job queue, from Python: enqueue jobs in your own transaction, and what a
running job can ask (docs/jobs.md).

    from forkwarden_wsgi import jobs
    job_id = jobs.enqueue(cursor, "send_invoice", {"invoice": 42}, priority=5)

`cursor` is any DB-API cursor on the database named by the server's `cron_store` (psycopg2,
psycopg 3, pg8000; Odoo's `env.cr`): the job exists if and only if that transaction commits,
and the job workers are woken when it does."""

import json
import os

#: The exit status that asks for another attempt later (EX_TEMPFAIL), for command jobs.
RETRY_STATUS = 75


#: The connection to the job worker, in a job worker's executor (set by forkwarden_wsgi).
_job_worker = None


class Retry(Exception):
    """Raised by a `call` job: this attempt did not succeed, try again after the kind's
    retry delay, or `after` seconds (as many attempts as `max_attempts` allows)."""

    def __init__(self, message="", after=None):
        super().__init__(message)
        self.after = after


def progress(done, total):
    """Reports a `call` job's progress (`done` of `total`), shown by `forkwarden job show`
    and kept in the job's row; True if it could be told (in a job worker's executor)."""
    if _job_worker is None:
        return False
    done, total = int(done), int(total)
    if not 0 <= done <= total:
        raise ValueError(f"progress {done}/{total}: expected 0 <= done <= total")
    try:
        _job_worker.send(f"PROGRESS={done}/{total}".encode())
        return True
    except OSError:
        return False


def enqueue(cursor, kind, args=None, *, priority=None, eta=None, channel=None,
            identity_key=None, max_attempts=None):
    """Enqueues a job of `kind` (a `[[job]]` name) with `args` (anything JSON can hold) in
    the cursor's transaction; returns its id. With `identity_key`, a pending or running job
    with that key is not enqueued twice: its id is returned. `eta` (a timezone-aware
    datetime) delays it; lower `priority` runs first (default 10)."""
    cursor.execute(
        "SELECT forkwarden.enqueue(%s, %s::jsonb, priority => %s, eta => %s, channel => %s, "
        "identity_key => %s, max_attempts => %s)",
        (kind, json.dumps({} if args is None else args), priority, eta, channel,
         identity_key, max_attempts),
    )
    return cursor.fetchone()[0]


def current():
    """The running job, in a job's process: {"id", "kind", "attempt"}; None elsewhere."""
    if "FORKWARDEN_JOB_ID" not in os.environ:
        return None
    return {
        "id": int(os.environ["FORKWARDEN_JOB_ID"]),
        "kind": os.environ.get("FORKWARDEN_JOB_KIND"),
        "attempt": int(os.environ.get("FORKWARDEN_JOB_ATTEMPT", "1")),
    }


def read_args(fd):
    """The job's args, from the descriptor the job worker lent (read from its start)."""
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 16, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    os.close(fd)
    return json.loads(b"".join(chunks) or b"null")


def call_with_args(function, args):
    """Calls a job's function: an object's members as keyword arguments, a list's as
    positional ones, anything else (but null) as the one argument. A `Retry` raised ends the
    process with RETRY_STATUS."""
    try:
        if isinstance(args, dict):
            return function(**args)
        if isinstance(args, list):
            return function(*args)
        if args is None:
            return function()
        return function(args)
    except Retry as retry:
        import sys
        after = "" if retry.after is None else f" after {retry.after}s"
        print(f"forkwarden: retry asked{after}: {retry}", file=sys.stderr, flush=True)
        if retry.after is not None and _job_worker is not None:
            try:
                _job_worker.send(f"RETRY_AFTER={float(retry.after)}".encode())
            except OSError:
                pass
        raise SystemExit(RETRY_STATUS) from None


def malformed():
    """What an executor calls for a request that named no function: a failure."""
    raise ValueError("a call request without CALL=")
