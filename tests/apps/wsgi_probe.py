"""A WSGI application that shows what the Python runner gives it (tests/wsgi.rs): its environ,
and what happens when it fails in each way PEP 3333 allows or forbids."""

import hashlib
import io
import json
import os
import signal
import sys
import threading
import time
from urllib.parse import parse_qs

CLOSED = 0
FILE_READS = 0


class CountingFile(io.FileIO):
    """A file that counts the reads made through it: sendfile makes none."""

    def read(self, size=-1):
        global FILE_READS
        FILE_READS += 1
        return super().read(size)

    def readinto(self, buffer):
        global FILE_READS
        FILE_READS += 1
        return super().readinto(buffer)


def waiting_for(marker, first, then):
    """Yields `first`, then waits (10 s at most) for file `marker` before yielding `then`:
    the client can only see `first` while this waits if it was sent without waiting."""
    yield first
    deadline = time.monotonic() + 10
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield then


def parts(*chunks, fail=False):
    yield from chunks
    if fail:
        raise RuntimeError("failing mid-body, on purpose")


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
    if path == "/sigalrm":
        # The application's own SIGALRM, for 100 ms: the worker's hand-off alarm must not
        # fire it (it has a signal of its own).
        fired = []
        previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
        try:
            time.sleep(0.1)
        finally:
            signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(len(fired)).encode()]
    if path == "/exit":
        sys.exit(3)  # in a request: that request's end, not the server's
    if path == "/pid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    if path == "/thread":
        # A thread that is not a daemon and never ends: Python would wait for it at exit.
        threading.Thread(target=threading.Event().wait).start()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"a thread that never ends\n"]
    if path == "/close":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"one ", b"two"])
    if path == "/close-after-error":
        start_response("200 OK", [("Content-Type", "text/plain")])
        # Before its first part: nothing was sent, so the client gets a 500.
        return Closing([b"one ", b"two"], fail_after=0)
    if path == "/bad-status":
        start_response("two hundred", [])
        return [b"never sent"]
    if path == "/str-body":
        start_response("200 OK", [])
        return ["a str, not bytes"]
    if path == "/no-start":
        return [b"no start_response"]
    if path == "/latin1-header":
        start_response("200 OK", [("X-Name", "caf\u00e9")])
        return [b"ok"]
    if path == "/wide-header":
        start_response("200 OK", [("X-Name", "\u20ac")])
        return [b"never sent"]
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
    query = {key: values[0] for key, values in parse_qs(environ["QUERY_STRING"]).items()}
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return waiting_for(query["marker"], b"first;", b"second")
    if path == "/stream-length":
        # More than stated: the rest is not sent.
        start_response("200 OK", [("Content-Length", "10")])
        return parts(b"12345", b"", b"67890", b"extra")
    if path == "/first-part-too-long":
        # Its first part alone is past the stated length: the stated length is sent.
        start_response("200 OK", [("Content-Length", "4")])
        return parts(b"123456")
    if path == "/stream-short":
        start_response("200 OK", [("Content-Length", "10")])
        return parts(b"12345", b"6")
    if path == "/stream-fail":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"part one;", b"part two"], fail_after=1)
    if path == "/sendfile":
        start_response("200 OK", [("Content-Type", "text/plain")])
        file = CountingFile(__file__)
        buffered = io.BufferedReader(file)
        buffered.read(int(query.get("skip", "0")))
        return environ["wsgi.file_wrapper"](buffered, 1024)
    if path == "/input":
        data = environ["wsgi.input"].read()
        facts = {
            "kind": type(environ["wsgi.input"]).__name__,
            "length": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "content_length": environ.get("CONTENT_LENGTH"),
        }
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(facts).encode()]
    if path == "/file-reads":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(FILE_READS).encode()]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such path\n"]
