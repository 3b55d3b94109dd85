"""Odoo under forkwarden, with no glue: `python -m forkwarden_wsgi --odoo -- ODOO-OPTIONS`.

ODOO-OPTIONS are odoo-bin's server options (`-c /etc/odoo/odoo.conf`, `-d DB`, ...). This
module does what odoo-bin does around the forks of its prefork master (odoo/cli/server.py
`main`, odoo/service/server.py `PreforkServer.run` and `Worker.start`), so that forkwarden
plays the master:

- before the workers are forked (in the preload template, or in each worker without
  preload): Odoo's options parsed (its logging set up with them), the server-wide modules
  loaded, each database of `db_name` created if missing and its registry loaded, a warm-up
  request to `/web/login` of each database (what the first request would otherwise build:
  the routing map, the assets' attachments), and Odoo's connection pool emptied, so that no
  two workers ever share a PostgreSQL connection (without it they fail with "server closed
  the connection unexpectedly");
- in each worker, before it serves: `random` reseeded, as Odoo's workers do;
- `cron_pass`, the scheduled actions of each database, at once and again whenever Odoo
  notifies `cron_trigger`, for about a minute (Odoo's `WorkerCron` loop), for a `[[cron]]`
  job with `call = "forkwarden_wsgi.odoo:cron_pass"` run back to back.

`forkwarden odoo -c odoo.conf` writes the whole config (HTTP workers, cron, the websocket
server) from odoo.conf; see forkwarden's docs/odoo.md.
"""

import csv
import io
import logging
import random
import time
from urllib.parse import quote

_logger = logging.getLogger("forkwarden_wsgi.odoo")


def _database_names():
    import odoo

    names = odoo.tools.config["db_name"]
    return [name for name in (names or "").split(",") if name]


def load(argv):
    """Odoo's WSGI application, loaded as odoo-bin's master loads it, ready to fork."""
    import odoo
    from odoo.service import server

    odoo.tools.config.parse_config(list(argv))
    # odoo-bin's: CSV fields large enough to import images.
    csv.field_size_limit(500 * 1024 * 1024)
    # Registries tell one another about changes through the database, as between the
    # processes of Odoo's own prefork server.
    odoo.multi_process = True
    server.load_server_wide_modules()
    databases = _database_names()
    for name in databases:
        try:
            odoo.service.db._create_empty_database(name)
            odoo.tools.config["init"]["base"] = True
        except odoo.service.db.DatabaseExists:
            pass
    if server.preload_registries(databases):
        raise SystemExit(f"forkwarden_wsgi: Odoo could not load database(s) {databases}")
    for name in databases:
        _warm_up(odoo.http.root, name)
    # Nothing of the pool may be shared with a forked worker (odoo's PreforkServer.run).
    odoo.sql_db.close_all()
    return with_request_log(odoo.http.root)


def with_request_log(app):
    """`app` writing Odoo's own line for each request, as its werkzeug server does
    (`127.0.0.1 - - [07/Dec/2026 06:00:00] "GET /web/login HTTP/1.1" 200 - 21 0.012 0.034`:
    Odoo's log filter adds the query count, SQL time and the rest), once the response is
    sent: when forkwarden closes the body."""
    logger = logging.getLogger("werkzeug")

    def logged(environ, start_response):
        if not logger.isEnabledFor(logging.INFO):
            return app(environ, start_response)
        seen = []

        def start(status, headers, exc_info=None):
            seen.append(status)
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        body = app(environ, start)

        def log():
            target = quote(environ.get("PATH_INFO", ""), safe="/;:@&=+$,!~*'()%")
            if environ.get("QUERY_STRING"):
                target += "?" + environ["QUERY_STRING"]
            code = seen[-1].split(" ", 1)[0] if seen else "-"
            logger.info('%s - - [%s] "%s %s %s" %s -', environ.get("REMOTE_ADDR", "-"),
                        time.strftime("%d/%b/%Y %H:%M:%S"), environ.get("REQUEST_METHOD"),
                        target, environ.get("SERVER_PROTOCOL"), code)

        close = getattr(body, "close", None)

        def close_then_log():
            try:
                if close is not None:
                    close()
            finally:
                log()

        try:
            body.close = close_then_log
        except (AttributeError, TypeError):
            # A body that takes no attribute (a list, a file wrapper): logged now, before
            # it is sent; its queries are all counted by then.
            log()
        return body

    return logged


def _warm_up(app, database):
    """Serves one GET /web/login of `database` in this process, as its first visitor
    would, so that what it builds (the routing map, the login page's assets) is built once,
    before the workers are forked from here."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/web/login",
        "QUERY_STRING": f"db={database}",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    statuses = []
    try:
        body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
        for _ in body:
            pass
        if hasattr(body, "close"):
            body.close()
    except Exception:  # a warm-up that fails costs the first visitor its time, no more
        _logger.warning("warm-up of database %s failed", database, exc_info=True)
        return
    _logger.info("warmed up database %s: GET /web/login answered %s", database,
                 statuses[0] if statuses else "nothing")


def post_fork():
    """In each new worker, before it serves: what Odoo's Worker.start does."""
    random.seed()


def cron_pass():
    """Odoo's scheduled actions, as Odoo's cron workers run them: every database of
    `db_name` (all of them if unset) at once, then again each time Odoo says a job was
    triggered (`NOTIFY cron_trigger`, whose payload is the database), until
    FORKWARDEN_CRON_PASS_SECONDS (50) have passed; then the process ends, and forkwarden's
    next run (a fresh process forked from the loaded template) takes over at once."""
    import os
    import select
    import time

    import odoo
    from odoo.addons.base.models.ir_cron import ir_cron

    seconds = float(os.environ.get("FORKWARDEN_CRON_PASS_SECONDS", "50"))
    deadline = time.monotonic() + seconds
    databases = _database_names() or odoo.service.db.list_dbs(True)
    # Odoo notifies on the `postgres` database, as its own cron workers listen.
    listener = odoo.sql_db.db_connect("postgres").cursor()
    listener.execute("SELECT pg_is_in_recovery()")
    if listener.fetchone()[0]:
        _logger.warning("PostgreSQL is in recovery: cron_trigger is not listened to")
    else:
        listener.execute("LISTEN cron_trigger")
    listener.commit()
    due = list(databases)
    try:
        while True:
            for name in due:
                ir_cron._process_jobs(name)
                if len(databases) > 1:
                    odoo.sql_db.close_db(name)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            connection = listener._cnx
            if not select.select([connection], [], [], left)[0]:
                return
            connection.poll()
            triggered = {notify.payload for notify in connection.notifies}
            connection.notifies.clear()
            due = [name for name in databases if name in triggered]
    finally:
        listener.close()
