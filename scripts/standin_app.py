"""A WSGI app that loads like Odoo: importing it takes about a second of work and keeps about
100 MB of Python objects (Odoo's registry is many small objects, which is what makes sharing
them copy-on-write hard: the garbage collector and reference counts write to them). Used by
scripts/compare.py (preload rows) and tests/preload.rs. Standard library only, but for the
database.

With STANDIN_DSN set (`user@/dbname` over the local socket, or `user@host:port/dbname`), it
opens a PostgreSQL connection while loading (pg8000) and reads from it, as Odoo reads its
registry. `post_fork` (forkwarden_wsgi --post-fork standin_app:post_fork) drops the
inherited connection without a word to the server (the template's session must live on;
a worker must never use it), and the worker opens one of its own when it first needs one, as
Odoo's connection pool does after its prefork server forks. /db answers the server's pid for
this process's connection (pg_backend_pid()), after its own pid.

STANDIN_MB (default 100) and STANDIN_LOAD_S (default 1) change the size and the load time.
With STANDIN_VERSION_FILE naming a file, / answers what the file held when the app was
loaded: the code on disk at load time, as a deploy changes it.
"""

import os
import time

LOAD_STARTED = time.monotonic()
TARGET_MB = int(os.environ.get("STANDIN_MB", "100"))
LOAD_SECONDS = float(os.environ.get("STANDIN_LOAD_S", "1"))
# About 100 bytes a record with its dict and strings: 10k records a MB.
RECORDS = [
    {"id": i, "name": f"record {i}", "model": f"model.{i % 500}", "active": bool(i % 3)}
    for i in range(TARGET_MB * 2_600)
]
INDEX = {record["name"]: record for record in RECORDS}
VERSION = "v1"
if os.environ.get("STANDIN_VERSION_FILE"):
    with open(os.environ["STANDIN_VERSION_FILE"]) as version_file:
        VERSION = version_file.read().strip()


def _connect():
    import pg8000.native

    dsn = os.environ["STANDIN_DSN"]
    user, _, rest = dsn.partition("@")
    where, _, database = rest.partition("/")
    if where:
        host, _, port = where.partition(":")
        return pg8000.native.Connection(user, host=host, port=int(port or 5432),
                                        database=database)
    return pg8000.native.Connection(user, database=database,
                                    unix_sock="/var/run/postgresql/.s.PGSQL.5432")


DB = _connect() if os.environ.get("STANDIN_DSN") else None
LOADED_WITH_BACKEND = DB.run("SELECT pg_backend_pid()")[0][0] if DB else None
if DB is not None:
    TABLES = DB.run("SELECT count(*) FROM pg_class")[0][0]
# The rest of the second, as the real load would spend it.
time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - LOAD_STARTED)))


def post_fork():
    """In each new worker: forget the template's connection; a new one is opened on first use."""
    global DB
    if DB is not None:
        # Close only this process's copy of the socket: closing the connection would tell
        # the server to end the session the template (and no one else) owns.
        DB._usock.close()
        DB = None


def database():
    """This process's own connection, opened on first use."""
    global DB
    if DB is None:
        DB = _connect()
    return DB


def scheduled():
    """A scheduled action (`call = "standin_app:scheduled"`, or a command that imports the
    app and calls it): reads some of what was loaded, as an Odoo cron job reads its registry."""
    active = sum(1 for record in RECORDS[:100_000] if record["active"])
    print(f"scheduled action: {active} active records", flush=True)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/pid":
        body = str(os.getpid())
    elif path == "/db":
        if os.environ.get("STANDIN_DSN"):
            body = f"{os.getpid()} {database().run('SELECT pg_backend_pid()')[0][0]}"
        else:
            body = "no database"
        # `?hold_ms=N` keeps the worker busy after the query, so that requests made at
        # once reach different workers.
        hold = environ.get("QUERY_STRING", "").partition("hold_ms=")[2]
        if hold.isdigit():
            time.sleep(int(hold) / 1000)
    elif path == "/loaded":
        body = f"{len(RECORDS)} records loaded with backend {LOADED_WITH_BACKEND}"
    elif path == "/health":
        body = "ok"
    else:
        body = f"hello from {VERSION}"
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
