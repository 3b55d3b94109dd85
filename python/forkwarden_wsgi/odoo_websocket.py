"""Odoo's websocket server (`odoo-bin gevent`) on the socket forkwarden hands it:
`python -m forkwarden_wsgi.odoo_websocket -- ODOO-OPTIONS`.

Odoo's own gevent server binds `gevent_port` itself, so a restart (every reload) leaves a
gap in which clients are refused. Run as a `[[program]]` with `listen`, it serves on the
socket forkwarden bound once and keeps across instances (descriptor 3, `LISTEN_FDS`), and
says `READY=1` once it accepts: a reload starts the new instance on the same socket, waits
for it, then stops the old one, and a connection that arrives in between waits in the
socket's queue instead of being refused. Everything else is odoo-bin gevent's.
"""

import os
import signal
import socket
import sys

from . import Notifier

# systemd's socket activation: the first passed descriptor.
LISTEN_FDS_START = 3
# On SIGTERM: how long requests in progress (a handshake) may take to finish before the
# process ends; open websockets are closed then, and their clients reconnect to the new one.
STOP_GRACE = 2.0


def inherited_socket():
    """The listening socket forkwarden passed (LISTEN_FDS naming this process), if any."""
    if os.environ.get("LISTEN_FDS") != "1" or os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    return socket.socket(fileno=LISTEN_FDS_START)


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    # As `odoo-bin gevent`: importing odoo with `gevent` first monkey-patches for gevent
    # and makes Odoo's server the evented one.
    sys.argv = [sys.argv[0], "gevent", *argv]
    import odoo  # noqa: F401
    import gevent
    import gevent.pywsgi

    # Odoo's GeventServer.stop calls gevent.shutdown(), which gevent no longer has: its
    # server would end in a traceback (and a failure status) each time it stops.
    if not hasattr(gevent, "shutdown"):
        gevent.shutdown = lambda: None
    listener = inherited_socket()
    notifier = Notifier()
    base = gevent.pywsgi.WSGIServer

    class InheritedSocketServer(base):
        """gevent's WSGI server on forkwarden's socket, saying READY=1 once it accepts."""

        def __init__(self, address, *args, **kwargs):
            super().__init__(listener if listener is not None else address, *args, **kwargs)

        def start(self):
            super().start()
            # Told to go (a reload's new instance is ready): stop accepting at once (the
            # socket's queue is the new instance's now), give what is in progress
            # STOP_GRACE to finish, then stop, which ends Odoo's server.
            def leave():
                self.stop_accepting()
                gevent.spawn_later(STOP_GRACE, self.stop)

            gevent.signal_handler(signal.SIGTERM, leave)
            notifier.send("READY=1")

    # Odoo's GeventServer imports the class when it starts, after this.
    gevent.pywsgi.WSGIServer = InheritedSocketServer
    from odoo.cli.server import main as odoo_main

    odoo_main(argv)


if __name__ == "__main__":
    main()
