"""A preload template that loads nothing and forks nothing: it says READY=1, then writes
each fork request the master sends it, one per line, to a file, and never answers. The
requests stay waiting, so that a test can try to answer them from elsewhere, as an impostor
would (tests/trust.rs).

    python3 silent_template.py REQUESTS_FILE
"""

import os
import socket
import sys

control = socket.socket(fileno=int(os.environ["FORKWARDEN_CONTROL_FD"]))
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
    notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
with open(sys.argv[1], "a", encoding="utf-8") as requests:
    while True:
        message, fds, _, _ = socket.recv_fds(control, 4096, 8)
        if not message:
            sys.exit(0)  # the master is gone
        for fd in fds:
            os.close(fd)
        requests.write(message.decode().replace("\n", " ") + "\n")
        requests.flush()
