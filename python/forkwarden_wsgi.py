"""Serve a WSGI application under forkwarden, one request at a time.

forkwarden starts this program in each HTTP worker slot (`[app]` in its config) with the
listening socket on file descriptor 3 (systemd socket activation: LISTEN_FDS=1,
LISTEN_PID) and a notification socket (NOTIFY_SOCKET). It serves one request at a time,
like Odoo's workers, and tells forkwarden what it is doing in the sd_notify format:

    READY=1                       once it listens
    BUSY=1 + REQUEST=GET /path    when a request starts (limit_time_real counts from here)
    IDLE=1                        when it ends (limit_request counts these)
    STOPPING=1                    on the way out

SIGTERM or SIGINT: finish the current request, then exit. Standard library only, so it
works in any virtualenv. Usage:

    python3 -m forkwarden_wsgi myproject.wsgi:application

The current directory is put on sys.path, as gunicorn does.
"""

import importlib
import os
import signal
import socket
import sys
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

LISTEN_FD = 3
# Each read and write of a client connection; a silent client must not hold the worker.
CONNECTION_TIMEOUT = 30.0
# How often an idle worker looks at its stop flag.
IDLE_CHECK = 1.0


class Notifier:
    """Sends sd_notify messages to NOTIFY_SOCKET; does nothing without one."""

    def __init__(self):
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.socket = None
        if self.address:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, message):
        if self.socket is not None:
            try:
                self.socket.sendto(message.encode(), self.address)
            except OSError:
                pass  # the master is gone or its queue is full: nothing to do about it


def load(target):
    """The callable named by `module:attribute` (attribute defaults to `application`)."""
    module_name, _, attribute = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in (attribute or "application").split("."):
        obj = getattr(obj, part)
    return obj


def inherited_socket():
    if os.environ.get("LISTEN_FDS") != "1" or os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("forkwarden_wsgi: no listening socket: expected LISTEN_FDS=1 and "
                 "LISTEN_PID=<this pid>, as forkwarden sets them")
    # Family and type are read from the descriptor itself.
    return socket.socket(fileno=LISTEN_FD)


class Server(WSGIServer):
    """wsgiref's server on the inherited socket, which stays non-blocking: it is shared
    with the other workers, and another one may accept a connection first."""

    def __init__(self, listener, app, notifier):
        self.address_family = listener.family
        super().__init__(listener.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        host, port = listener.getsockname()[:2]
        self.server_name, self.server_port = host, port
        self.setup_environ()
        self.set_app(app)
        self.notifier = notifier
        self.timeout = IDLE_CHECK

    def get_request(self):
        connection, address = self.socket.accept()
        connection.setblocking(True)
        connection.settimeout(CONNECTION_TIMEOUT)
        return connection, address


class Handler(WSGIRequestHandler):
    def handle(self):
        # wsgiref's handle(), with the request markers around the application.
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.parse_request():
            return
        notifier = self.server.notifier
        notifier.send(f"BUSY=1\nREQUEST={self.command} {self.path}")
        try:
            handler = ServerHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ(),
                                    multithread=False)
            handler.request_handler = self
            handler.run(self.server.get_app())
        finally:
            notifier.send("IDLE=1")

    def log_message(self, format, *args):
        pass  # forkwarden logs what matters; an access log belongs in front of it


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python3 -m forkwarden_wsgi module:callable")
    stopping = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    sys.path.insert(0, os.getcwd())
    notifier = Notifier()
    app = load(argv[0])
    server = Server(inherited_socket(), app, notifier)
    notifier.send(f"READY=1\nSTATUS=serving {argv[0]}")
    while not stopping:
        server.handle_request()
    notifier.send("STOPPING=1")


if __name__ == "__main__":
    main()
