"""Serve a WSGI application under forkwarden, one request at a time.

forkwarden starts this program in each HTTP worker slot (`[app]` in its config) with the
listening socket on file descriptor 3 (systemd socket activation: LISTEN_FDS=1,
LISTEN_PID) and a notification socket (NOTIFY_SOCKET). It serves one request at a time,
like Odoo's workers, and tells forkwarden what it is doing in the sd_notify format:

    READY=1 + IDLE=1              once it listens (IDLE=1: requests will be marked)
    BUSY=1 + REQUEST=GET /path    when a request starts (limit_time_real counts from here)
    IDLE=1                        when it ends (limit_request counts these)
    WATCHDOG=1                    while idle, every third of WATCHDOG_USEC when it is set
    STOPPING=1                    on the way out

An application that runs out of memory (MemoryError: limit_memory_hard caps the address
space with RLIMIT_AS) gets its request answered 500, the log says so, and the worker leaves
to be replaced.

SIGTERM or SIGINT: finish the current request, then exit. Standard library only, so it
works in any virtualenv. Usage:

    python3 -m forkwarden_wsgi myproject.wsgi:application

The current directory is put on sys.path, as gunicorn does.
"""

import importlib
import os
import resource
import signal
import socket
import sys
import time
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


def watchdog_interval():
    """How often to send WATCHDOG=1 (seconds), by systemd's convention: WATCHDOG_USEC set,
    and WATCHDOG_PID (if set) naming us; a third of the period leaves a margin. None: off."""
    pid = os.environ.get("WATCHDOG_PID")
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    if usec <= 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return usec / 3e6


def address_space_limit():
    """RLIMIT_AS as a readable size, or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else f"{soft >> 20} MiB"


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
        self.watchdog = watchdog_interval()
        self.last_alive = time.monotonic()
        # Set when the application ran out of memory: the worker leaves after the request.
        self.out_of_memory = False

    def handle_timeout(self):
        # Idle: show the master this worker is alive, as often as the watchdog asks.
        now = time.monotonic()
        if self.watchdog is not None and now - self.last_alive >= self.watchdog:
            self.notifier.send("WATCHDOG=1")
            self.last_alive = now

    def get_request(self):
        connection, address = self.socket.accept()
        connection.setblocking(True)
        connection.settimeout(CONNECTION_TIMEOUT)
        return connection, address


class AppHandler(ServerHandler):
    """wsgiref's handler, noting a MemoryError so the worker can say why and leave."""

    def log_exception(self, exc_info):
        if issubclass(exc_info[0], MemoryError):
            self.request_handler.server.out_of_memory = True
            limit = address_space_limit()
            cap = (f"limit_memory_hard caps the address space at {limit} (RLIMIT_AS)"
                   if limit else "the system is out of memory")
            print(f"forkwarden_wsgi: MemoryError serving {self.request_handler.command} "
                  f"{self.request_handler.path}: an allocation was refused: {cap}; this "
                  "worker leaves to be replaced", file=sys.stderr, flush=True)
        super().log_exception(exc_info)


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
        self.server.last_alive = time.monotonic()  # any message shows life
        try:
            handler = AppHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ(),
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
    # WATCHDOG=1 with READY=1: the master watches this worker's liveness from now on.
    watchdog = "\nWATCHDOG=1" if server.watchdog is not None else ""
    notifier.send(f"READY=1\nIDLE=1\nSTATUS=serving {argv[0]}{watchdog}")
    while not stopping and not server.out_of_memory:
        server.handle_request()
    notifier.send("STOPPING=1")


if __name__ == "__main__":
    main()
