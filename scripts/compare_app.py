"""The WSGI app scripts/compare.sh serves with gunicorn and uWSGI: the same endpoints as
forkwarden's built-in demo app (/, /health, /pid, /echo (the request body), /sleep?ms=N,
/burn?ms=N, /alloc?mb=N, /crash, /crash?exit=N). Standard library only.

With COMPARE_APP_CRASH_AT_BOOT=1 in the environment, importing it fails, as an app with a
broken deployment would (to compare crash-at-boot behaviour).
"""

import os
import time
from urllib.parse import parse_qs

if os.environ.get("COMPARE_APP_CRASH_AT_BOOT") == "1":
    raise RuntimeError("COMPARE_APP_CRASH_AT_BOOT=1: failing on purpose at import")

LEAKED = []


def _number(environ, name):
    values = parse_qs(environ.get("QUERY_STRING", "")).get(name)
    return int(values[0]) if values else 0


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    status, body = "200 OK", b""
    if path == "/":
        body = b"Hello from the comparison app\n"
    elif path == "/health":
        body = b"ok\n"
    elif path == "/pid":
        body = f"{os.getpid()}\n".encode()
    elif path == "/echo":
        # As most applications read a body: CONTENT_LENGTH bytes (set for a chunked one too).
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    elif path == "/sleep":
        ms = _number(environ, "ms")
        time.sleep(ms / 1000)
        body = f"slept {ms} ms in pid {os.getpid()}\n".encode()
    elif path == "/burn":
        ms = _number(environ, "ms")
        until = time.monotonic() + ms / 1000
        spins = 0
        while time.monotonic() < until:
            spins += 1
        body = f"burned {ms} ms of CPU\n".encode()
    elif path == "/alloc":
        mb = _number(environ, "mb")
        LEAKED.append(bytearray(b"\x01") * (mb << 20))
        body = f"allocated {mb} MiB\n".encode()
    elif path == "/crash":
        code = parse_qs(environ.get("QUERY_STRING", "")).get("exit")
        if code:
            os._exit(int(code[0]))
        os.abort()
    else:
        status, body = "404 Not Found", b"no such path\n"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
