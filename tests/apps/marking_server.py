"""A program that speaks forkwarden's generic `[app]` protocol by itself, as a runtime without
the worker kit would (another language's server): socket activation on descriptor 3, READY=1,
BUSY=1 / REQUEST= / IDLE=1 around each request, WATCHDOG=1 while idle when WATCHDOG_USEC asks.
It serves scripts/compare_app.py's endpoints with the standard library's wsgiref, one request
at a time. The fixture that keeps that protocol (forkwarden's docs/programs.md, "Running any program")
tested, now that forkwarden_wsgi runs forkwarden's own worker. Needs `nonblocking = true`:
every worker waits in select() on the shared socket and must not then block in accept().

    python3 marking_server.py module:app
"""

import importlib
import os
import socket
import sys
import time
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer


def notify(message):
    address = os.environ.get("NOTIFY_SOCKET")
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(message.encode(), address)


class Server(WSGIServer):
    def __init__(self, listener, app):
        self.address_family = listener.family
        super().__init__(listener.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.server_name, self.server_port = listener.getsockname()[:2]
        self.setup_environ()
        self.set_app(app)
        self.timeout = 0.2

    def get_request(self):
        connection, address = self.socket.accept()
        connection.setblocking(True)
        return connection, address


class Handler(WSGIRequestHandler):
    def handle(self):
        self.raw_requestline = self.rfile.readline(65537)
        if not self.parse_request():
            return
        notify(f"BUSY=1\nREQUEST={self.command} {self.path}")
        try:
            self.run_application()
        finally:
            notify("IDLE=1")

    def run_application(self):
        handler = ServerHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ(),
                                multithread=False)
        handler.request_handler = self
        handler.run(self.server.get_app())

    def log_message(self, format, *args):
        pass


def main():
    sys.path.insert(0, os.getcwd())
    module, _, attribute = sys.argv[1].partition(":")
    app = getattr(importlib.import_module(module), attribute or "application")
    server = Server(socket.socket(fileno=3), app)
    usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    period = usec / 3e6 if usec else None
    notify("READY=1\nIDLE=1\nSTATUS=serving" + ("\nWATCHDOG=1" if period else ""))
    last = time.monotonic()
    while True:
        server.handle_request()
        if period is not None and time.monotonic() - last >= period:
            notify("WATCHDOG=1")
            last = time.monotonic()


main()
