"""The newcomer's minute, side by side with gunicorn: from a fresh virtual environment to
the first 200 of a Flask app.

For forkwarden: `pip install` of the wheel (built from this checkout into dist/ with
`pip wheel .`, or the one given with --wheel) and Flask, then `forkwarden serve app:app`;
for gunicorn: `pip install gunicorn flask`, then `gunicorn app:app`. Both from PyPI (the
same Flask), both with 2 workers, both timed by this script as a client over loopback.

    python3 scripts/bench_install.py [--wheel dist/forkwarden-...whl] [--write-docs]
"""

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fwbench  # noqa: E402

APP = '''from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "hello from flask"
'''


def timed(command, **kwargs):
    """Runs `command`; the seconds it took."""
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, **kwargs)
    return time.monotonic() - started


def free_port():
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def first_200(command, cwd, port):
    """Starts `command` in `cwd` and polls until GET / answers 200; the seconds that took.
    The server is stopped (SIGTERM to the process it started, then waited for)."""
    started = time.monotonic()
    server = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    def answers():
        try:
            return fwbench.http_get(port, "/", timeout=1.0)[0] == 200
        except OSError:
            return False

    try:
        answered = fwbench.wait_for(answers, timeout=60)
        return answered - started
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def build_wheel(dist):
    """`pip wheel .` of this checkout, as CI builds it; the wheel and the seconds it took."""
    os.makedirs(dist, exist_ok=True)
    for old in glob.glob(os.path.join(dist, "forkwarden-*.whl")):
        os.remove(old)
    seconds = timed([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                     "--wheel-dir", dist, fwbench.ROOT])
    return glob.glob(os.path.join(dist, "forkwarden-*.whl"))[0], seconds


def newcomer(scratch, packages, serve):
    """A fresh venv, `packages` installed, then `serve(venv)` until the first 200: the
    seconds of each step."""
    venv = os.path.join(scratch, "venv")
    app_dir = os.path.join(scratch, "app")
    os.makedirs(app_dir)
    with open(os.path.join(app_dir, "app.py"), "w") as f:
        f.write(APP)
    create = timed([sys.executable, "-m", "venv", venv])
    install = timed([os.path.join(venv, "bin", "pip"), "install", "--quiet", *packages])
    port = free_port()
    start = first_200(serve(venv, port), app_dir, port)
    return create, install, start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", help="a wheel built already (default: build one)")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    built = None
    wheel = args.wheel
    if wheel is None:
        wheel, built = build_wheel(os.path.join(fwbench.ROOT, "dist"))
    rows = []
    runs = [
        ("forkwarden", [wheel, "flask"],
         lambda venv, port: [os.path.join(venv, "bin", "forkwarden"), "serve", "app:app",
                             "-w", "2", "-b", f"127.0.0.1:{port}"]),
        ("gunicorn", ["gunicorn", "flask"],
         lambda venv, port: [os.path.join(venv, "bin", "gunicorn"), "app:app", "-w", "2",
                             "-b", f"127.0.0.1:{port}"]),
    ]
    for name, packages, serve in runs:
        scratch = tempfile.mkdtemp(prefix=f"bench-install-{name}-")
        try:
            create, install, start = newcomer(scratch, packages, serve)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        total = create + install + start
        rows.append(f"| {name} | {create:.1f} s | {install:.1f} s | {start:.2f} s | "
                    f"**{total:.1f} s** |")
    lines = [
        f"Machine: {fwbench.machine()}.",
        "",
        "| server | `python -m venv` | `pip install` (wheel or PyPI, and Flask) "
        "| start to first 200 | fresh venv to first 200 |",
        "|---|---|---|---|---|",
        *rows,
    ]
    if built is not None:
        lines += ["", f"Building the wheel from this checkout (`pip wheel .`, release "
                      f"binary and runner, cargo's cache as it was): {built:.0f} s; a user "
                      f"who installs a published wheel needs no Rust toolchain."]
    fwbench.publish("install", "From a fresh venv to the first 200", lines, args.write_docs)


if __name__ == "__main__":
    main()
