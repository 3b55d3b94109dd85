"""A WSGI application that shows what the Python runner gives it (tests/wsgi.rs): its environ,
and what happens when it fails in each way PEP 3333 allows or forbids."""

import json
import os
import sys

CLOSED = 0


class Closing:
    """A response iterable with close(): says on stderr when it is closed."""

    def __init__(self, chunks, fail_after=None):
        self.chunks, self.fail_after = chunks, fail_after

    def __iter__(self):
        for index, chunk in enumerate(self.chunks):
            if self.fail_after is not None and index == self.fail_after:
                raise RuntimeError("failing while iterating, on purpose")
            yield chunk

    def close(self):
        global CLOSED
        CLOSED += 1
        print(f"wsgi_probe: closed ({CLOSED} so far)", file=sys.stderr, flush=True)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/environ"):
        body = environ["wsgi.input"].read()
        shown = {key: value for key, value in environ.items() if isinstance(value, (str, bool))}
        shown["body_read"] = body.decode("latin-1")
        shown["wsgi.version"] = list(environ["wsgi.version"])
        shown["pid"] = os.getpid()
        data = json.dumps(shown).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [data]
    if path == "/raise":
        raise ValueError("raised on purpose")
    if path == "/close":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"one ", b"two"])
    if path == "/close-after-error":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"one ", b"two"], fail_after=1)
    if path == "/bad-status":
        start_response("two hundred", [])
        return [b"never sent"]
    if path == "/str-body":
        start_response("200 OK", [])
        return ["a str, not bytes"]
    if path == "/no-start":
        return [b"no start_response"]
    if path == "/header-injection":
        start_response("200 OK", [("X-Value", "a\r\nSet-Cookie: injected=1")])
        return [b"never sent"]
    if path == "/write":
        write = start_response("201 Created", [("Content-Type", "text/plain")])
        write(b"written, ")
        return [b"then returned"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 1024)
    if path == "/memory":
        raise MemoryError()
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such path\n"]
