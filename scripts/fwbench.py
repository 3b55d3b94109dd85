"""Shared helpers for forkwarden's benchmark scripts (standard library only).

Starts the release binary on 127.0.0.1 with a temporary config, talks HTTP to it over
loopback, reads /proc, and writes a generated section of docs/benchmarks.md.
"""

import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "forkwarden")
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")


def build():
    """Builds the release binary (cargo does nothing when it is up to date)."""
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)


def python_runner_path(root=ROOT):
    """PYTHONPATH for `python3 -m forkwarden_wsgi`: the runner of the checkout at `root`
    with its Rust core built in release mode (scripts/build-python-core.sh; cargo does
    nothing when it is up to date)."""
    script = os.path.join(root, "scripts", "build-python-core.sh")
    return subprocess.run([script, "--release"], check=True, capture_output=True,
                          text=True).stdout.strip()


def runner_app(target, cwd, flags=(), env=None, python=sys.executable, extra="", root=ROOT):
    """An `[app]` table serving WSGI callable `target` (module:name, found in `cwd`) under
    the Python runner (of the checkout at `root`); `flags` go before the target, `env` into
    its environment."""
    env = {"PYTHONPATH": python_runner_path(root), **(env or {})}
    command = ", ".join(f'"{part}"' for part in [python, "-m", "forkwarden_wsgi", *flags, target])
    variables = ", ".join(f'{key} = "{value}"' for key, value in env.items())
    return (f"[app]\ncommand = [{command}]\ncwd = \"{cwd}\"\nenv = {{ {variables} }}\n"
            f"nonblocking = true\n{extra}")


def at_once(count, task):
    """Runs `task()` in `count` threads released together; returns what each returned,
    leaving out those that failed with OSError (a refused or reset connection)."""
    results, barrier = [], threading.Barrier(count)

    def run():
        barrier.wait()
        try:
            results.append(task())
        except OSError:
            pass
    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def http_get(port, path, timeout=30.0):
    """GET path over a fresh connection; returns (status, body). Status 0: no response.
    Reads until the body announced by Content-Length is complete, or the server closes:
    not every server closes when asked to."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = b""
        try:
            while not _complete(data) and (chunk := conn.recv(65536)):
                data += chunk
        except ConnectionResetError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d+)", head)
    return (int(match.group(1)) if match else 0), body.decode(errors="replace")


def _complete(data):
    """Whether `data` holds a whole response framed by Content-Length."""
    head, separator, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return bool(separator) and length is not None and len(body) >= int(length.group(1))


def proc_state(pid):
    """The state letter of pid ('R', 'S', 'Z', ...), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_gone(pid):
    return proc_state(pid) in (None, "Z")


def rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


def children_of(parent):
    """Pids of the live (non-zombie) children of `parent`, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == parent and fields[0] != "Z":
                    pids.append(int(entry))
            except (OSError, IndexError):
                pass
    return pids


def wait_for(condition, timeout, interval=0.001):
    """Polls condition until true or timeout seconds pass; returns the time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


class Server:
    """A forkwarden master started with `settings` (TOML lines) on a free port."""

    def __init__(self, settings):
        self.dir = tempfile.TemporaryDirectory()
        config = os.path.join(self.dir.name, "fw.toml")
        with open(config, "w") as f:
            f.write("http_port = 0\nmax_cron_threads = 0\ndemo_fault_endpoints = true\n")
            f.write(settings + "\n")
        self.log = open(os.path.join(self.dir.name, "log"), "w+")
        self.proc = subprocess.Popen([BINARY, "--config", config], stderr=self.log,
                                     stdout=subprocess.DEVNULL)
        self.port = None
        wait_for(self._read_port, 10, 0.01)

    def _read_port(self):
        self.log.seek(0)
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log.read())
        self.port = int(match.group(1)) if match else None
        return self.port is not None

    def log_text(self):
        self.log.seek(0)
        return self.log.read()

    def metrics_address(self):
        """host:port of the metrics listener (`metrics_listen`), from the master's log."""
        match = re.search(r"metrics on http://([0-9.]+:\d+)/metrics", self.log_text())
        return match.group(1) if match else None

    def workers(self):
        return children_of(self.proc.pid)

    def status(self):
        """What `forkwarden status --json` reads: the master's answer on its control socket
        (data_dir is `forkwarden-data` beside the config)."""
        path = os.path.join(self.dir.name, "forkwarden-data", "forkwarden.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        return answer

    def wait_for_workers(self, count, timeout=10):
        wait_for(lambda: len(self.workers()) == count, timeout, 0.01)
        return self.workers()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()


def machine():
    """One line describing the machine and versions, for the docs."""
    cores = os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        model = ""
    version = subprocess.run([BINARY, "--version"], capture_output=True, text=True).stdout.strip()
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{cores} cores {model}, Linux {platform.release()}; {version}, {rustc}"


def write_docs_section(name, markdown):
    """Replaces the section between `<!-- name:start -->` and `<!-- name:end -->` in
    docs/benchmarks.md (appending it when absent) with `markdown`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = open(DOCS).read() if os.path.exists(DOCS) else "# Benchmarks\n"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    os.makedirs(os.path.dirname(DOCS), exist_ok=True)
    with open(DOCS, "w") as f:
        f.write(text)


def publish(section, title, lines, write_docs):
    """Prints a result table; with write_docs, also puts it in docs/benchmarks.md."""
    table = "\n".join(lines)
    print(table)
    if write_docs:
        write_docs_section(section, f"## {title}\n\n{table}")


def summary(samples_ms):
    """`median / max` of a list of milliseconds."""
    return f"{statistics.median(samples_ms):.1f} / {max(samples_ms):.1f} ms"
