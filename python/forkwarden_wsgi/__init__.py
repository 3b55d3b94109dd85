"""Serve a WSGI application under forkwarden.

forkwarden starts this program in each HTTP worker slot (`[app]` in its config) with the
listening socket on file descriptor 3 (systemd socket activation) and forkwarden's worker kit
(FORKWARDEN_KIT_FD: its scoreboard, hand-off channel and config). The worker itself is
forkwarden's own HTTP worker, in Rust (the `_core` extension module): it reads requests,
keeps connections alive, enforces limit_request, limit_time_cpu (503) and limit_time_real
(504), and writes its state into its scoreboard row; Python is entered only to call the
application. See forkwarden's docs/python.md and docs/programs.md.

    python3 -m forkwarden_wsgi [--preload] [--post-fork module:function] myproject.wsgi:application

The current directory is put on sys.path, as gunicorn does.

With `preload = true` in forkwarden's [app] (--preload says so on the command line, and is
otherwise optional), this process is the template. It
imports the application once, freezes what it loaded out of the garbage collector's sight
(gc.freeze(), so the pages stay shared copy-on-write), says READY=1, and forks a worker each
time forkwarden asks on FORKWARDEN_CONTROL_FD (the protocol is in forkwarden's
docs/programs.md, "Preloading"). --post-fork names a function called in each new worker before it serves,
with no argument: close and reopen there what must not be shared between processes, such as
a database connection the application opened while loading. Without a template (no
FORKWARDEN_CONTROL_FD), the function is called once before serving, so an application
behaves the same either way.
"""

import argparse
import ctypes
import gc
import importlib
import os
import select
import signal
import socket
import sys
import time
import traceback

from . import jobs  # imported once in the template, not again in each job's process

try:
    from . import _core
except ImportError as error:  # run from a checkout without the extension built
    _core = None
    _CORE_ERROR = error

# How long the template waits in one turn of its loop at most.
IDLE_CHECK = 1.0
# The kit's descriptor a forked worker puts the row of its fork request on, counted from
# FORKWARDEN_KIT_FD (docs/worker-kit.md), as the core reads the kit.
KIT_ROW = _core.KIT_ROW if _core is not None else None


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


def load(target):
    """The callable named by `module:attribute` (attribute defaults to `application`)."""
    module_name, _, attribute = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in (attribute or "application").split("."):
        obj = getattr(obj, part)
    return obj


def serve(target, app):
    """The worker: forkwarden's HTTP worker serving `app` until it is told to leave (or
    recycled). Then the process ends, at once: a thread the application started (not a
    daemon) would otherwise keep it from exiting, and the worker from ever leaving."""
    if _core is None:
        sys.exit(f"forkwarden_wsgi: its core is not built ({_CORE_ERROR}); install it with "
                 "`pip install forkwarden`, or `pip install .` in forkwarden's source")
    status = _core.serve(app, target)
    exit_now(status)


# prctl(2) options (linux/prctl.h).
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# How long after a hand-over the template forks the next spare (two forks of the loaded
# application: CPU the new worker would otherwise compete with while it starts).
SPARE_DELAY = 0.2
LIBC = None


def prctl(option, value):
    global LIBC
    if LIBC is None:
        LIBC = ctypes.CDLL(None, use_errno=True)
    if LIBC.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option})")


def exit_now(status):
    """Ends a forked process without running the template's exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def fork():
    """os.fork(), with what the template buffered written first (not twice)."""
    sys.stdout.flush()
    sys.stderr.flush()
    return os.fork()


def in_forked_process(body):
    """Runs `body` in a process forked from the template and ends the process: status 0
    when it returns, its code on SystemExit, 1 (with the traceback) if it raises."""
    status = 1
    try:
        body()
        status = 0
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        exit_now(status)


def call_status(call, args_fd):
    """Calls `call` (module:function) with the args read from `args_fd` (if any); the
    status a process ending there would have: 0 when it returns, its code on SystemExit
    (jobs.Retry: 75), 1 (with the traceback on stderr) if it raises."""
    try:
        function = load(call)
        if args_fd is None:
            function()
        else:
            jobs.call_with_args(function, jobs.read_args(args_fd))
        return 0
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def serve_calls(connection, call, args_fd):
    """A job worker's executor: makes the call it was forked for, says `DONE=<status>`,
    and takes the next `CALL=`/`JOB=` request (its args as a descriptor, its environment
    as lines) from the same connection, until the job worker lets it go."""
    jobs._job_worker = connection  # for jobs.progress() and jobs.Retry(after=...)
    while True:
        status = call_status(call, args_fd)
        try:
            connection.send(f"DONE={status}".encode())
            message, fds, _, _ = socket.recv_fds(connection, 65536, 1)
        except OSError:
            return
        if not message:
            for fd in fds:
                os.close(fd)
            return
        request = assignments(message)
        call = request.pop("CALL", None)
        os.environ["FORKWARDEN_JOB"] = request.pop("JOB", "?")
        os.environ.update(request)
        args_fd = fds[0] if fds else None
        if call is None:
            print("forkwarden_wsgi: executor: a request without CALL=", file=sys.stderr,
                  flush=True)
            call = "forkwarden_wsgi.jobs:malformed"


def assignments(message):
    """The `KEY=VALUE` lines of a message, as a dict."""
    return dict(line.split("=", 1) for line in message.decode().splitlines() if "=" in line)


def onto_standard_streams(fds):
    """Puts the two descriptors a request brought on stdout and stderr."""
    for fd, standard in zip(fds, (1, 2)):
        os.dup2(fd, standard)
        if fd > 2:
            os.close(fd)


class Template:
    """The preload template (forkwarden's docs/programs.md, "Preloading"): hands a worker over for each
    request the master sends on FORKWARDEN_CONTROL_FD.

    A worker must become the master's child, so it is the child of a short-lived middle
    process, which exits once the worker has told the master who it is. The template keeps
    one such pair forked in advance (the spare): a request costs no fork, only the hand-over
    of the request to the spare worker; the next spare is forked after."""

    def __init__(self, control_fd, target, app, post_fork, stopping):
        self.control = socket.socket(fileno=control_fd)
        self.target, self.app, self.post_fork, self.stopping = target, app, post_fork, stopping
        self.master = os.getppid()
        self.template_pid = os.getpid()
        self.notifier = Notifier()
        self.watchdog = watchdog_interval()
        self.spare = None  # (middle pid, channel to the spare worker)
        calls = os.environ.get("FORKWARDEN_CALLS_FD")
        if calls:
            # Shared with the other generation's template during a reload: whichever
            # accepts first takes a request, and the other must not block in accept().
            os.set_blocking(int(calls), False)
        self.calls = socket.socket(fileno=int(calls)) if calls else None
        self.requests = set()  # cron and job workers' connections, before their request
        self.jobs = {}  # pidfd -> (pid, connection) of each running call job
        self.askers = {}  # connection or lifeline -> pid of each running call job
        self.lifelines = {}  # pid -> lifeline of each executor (a job worker's)

    def run(self):
        # What loading created is never collected, so the garbage collector's visits do
        # not write to (and so unshare) the pages every worker shares with the template.
        gc.freeze()
        watchdog = "\nWATCHDOG=1" if self.watchdog is not None else ""
        self.notifier.send(f"READY=1\nSTATUS=template: {self.target} loaded{watchdog}")
        last_alive = time.monotonic()
        spare_due = last_alive
        # Told to leave, it lets the cron jobs it runs finish first.
        while not self.stopping or self.jobs:
            timeout = IDLE_CHECK
            if self.spare is None and not self.stopping:
                if time.monotonic() >= spare_due:
                    self.spare = self.fork_spare()
                else:
                    timeout = spare_due - time.monotonic()
            waiting = list(self.jobs) + list(self.askers)
            if not self.stopping:
                waiting += [self.control, *self.requests]
                if self.calls is not None:
                    waiting.append(self.calls)
            readable, _, _ = select.select(waiting, [], [], max(timeout, 0))
            self.reap_others()
            now = time.monotonic()
            if self.watchdog is not None and now - last_alive >= self.watchdog:
                self.notifier.send("WATCHDOG=1")
                last_alive = now
            for ready in readable:
                if ready in self.jobs:
                    self.end_job(ready)
                elif ready in self.askers:
                    self.asker_left(ready)
                elif ready is self.calls:
                    self.accept_call()
                elif ready in self.requests:
                    self.start_job(ready)
                elif ready is self.control:
                    if not self.fork_requested():
                        return self.leave()  # the master is gone
                    # Not at once: the CPU is the new worker's while it starts.
                    spare_due = time.monotonic() + SPARE_DELAY
        self.leave()

    def reap_others(self):
        """Reaps the children the application started in the template and left behind
        (a helper forked while loading, a subprocess it never waited for): they would stay
        zombies for the template's life. The template's own (the spare's middle process,
        the call jobs) are left to the code that waits for them."""
        own = {pid for pid, _ in self.jobs.values()}
        if self.spare is not None:
            own.add(self.spare[0])
        children = set()
        try:
            for task in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{task}/children", encoding="ascii") as listed:
                    children.update(int(pid) for pid in listed.read().split())
        except OSError:
            return
        for pid in children - own:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def fork_requested(self):
        """Handles one message of the master; False at the end of the channel."""
        try:
            message, fds, _, _ = socket.recv_fds(self.control, 4096, 3)
        except InterruptedError:
            return True
        if not message:
            return False
        try:
            if self.spare is None:
                self.spare = self.fork_spare()
            self.hand_over(message, fds)
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def leave(self):
        if self.spare is not None:
            middle, channel = self.spare
            channel.close()  # the spare worker exits on the end of its channel, then its parent
            os.waitpid(middle, 0)
            self.spare = None
        self.notifier.send("STOPPING=1")

    # ---- cron jobs that name a function (`call` in forkwarden's [[cron]]) ----

    def accept_call(self):
        try:
            connection, _ = self.calls.accept()
        except (BlockingIOError, InterruptedError):
            return
        # A worker sends its request as soon as it is connected: most often it is there
        # already, and the job starts without another turn of the loop.
        if select.select([connection], [], [], 0)[0]:
            self.start_job(connection)
        else:
            self.requests.add(connection)

    def start_job(self, connection):
        """A cron or job worker's request: `CALL=module:function`, `JOB=name` and
        environment lines, with the job's stdout and stderr (and its args, for a queued
        job). Forks the process that calls the function (in its own process group, dying
        with the template), answers `PID=<pid>`, and later how it ended. With `SERVE=1` (a
        job worker's executor, which also brings its args and a lifeline), the process
        stays for the next calls on the same connection; it is killed once the lifeline
        closes."""
        self.requests.discard(connection)
        try:
            message, fds, _, _ = socket.recv_fds(connection, 65536, 4)
        except OSError:
            connection.close()
            return
        if not message:
            for fd in fds:
                os.close(fd)
            connection.close()  # the cron worker left before asking
            return
        request = assignments(message)
        call, job = request.pop("CALL", None), request.pop("JOB", "?")
        try:
            # The cron worker's niceness, which a job forked from here must have too.
            nice = min(max(int(request.pop("NICE", "0")), 0), 19)
        except ValueError:
            nice = 0
        serve = request.pop("SERVE", None) == "1"
        if call is None or len(fds) not in ((4,) if serve else (2, 3)):
            for fd in fds:
                os.close(fd)
            self.answer(connection, "ERROR=malformed call request")
            connection.close()
            return
        pid = fork()
        if pid == 0:
            in_forked_process(lambda: self.run_job(job, call, request, fds, nice,
                                                   connection if serve else None))
        for fd in fds[:3]:
            os.close(fd)
        self.answer(connection, f"PID={pid}")
        self.jobs[os.pidfd_open(pid)] = (pid, connection)
        if serve:
            lifeline = socket.socket(fileno=fds[3])
            self.lifelines[pid] = lifeline
            self.askers[lifeline] = pid
        else:
            self.askers[connection] = pid

    def asker_left(self, connection):
        """The worker that asked for a running job (or holds an executor's lifeline) is
        gone, or let it go (it sends nothing after its request): the job must not run on
        unsupervised, nor beside its next attempt."""
        try:
            if connection.recv(64):
                return  # not a hang-up: nothing is expected, and nothing is done
        except OSError:
            pass
        pid = self.askers.pop(connection)
        for kill in (os.killpg, os.kill):  # its group, or itself before it made the group
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass

    @staticmethod
    def answer(connection, message):
        """Tells the cron worker; False if it is gone (the master has seen to its run)."""
        try:
            connection.send(message.encode())
            return True
        except OSError:
            return False

    def close_template_descriptors(self):
        """In a process forked from the template: lets go of the template's own channels
        (the master's, the cron workers' and their jobs'), so that their ends are seen
        when the template's are closed."""
        if self.spare is not None:
            self.spare[1].close()
        for own in [self.control, self.calls, *self.requests]:
            if own is not None:
                own.close()
        for pidfd, (_, connection) in self.jobs.items():
            os.close(pidfd)
            connection.close()
        for lifeline in self.lifelines.values():
            lifeline.close()
        self.askers.clear()
        self.lifelines.clear()

    def run_job(self, job, call, environment, fds, nice=0, serve=None):
        """In the job's process: calls the function, `nice` lower in priority, with the
        job's args when a third descriptor brought them; `serve`: the connection to take
        the next calls from (an executor)."""
        os.setpgid(0, 0)  # its process group is what a time limit kills
        if nice:
            os.nice(nice)
        self.close_template_descriptors()
        if len(fds) == 4:
            os.close(fds[3])  # the lifeline is the template's to watch
        args_fd = fds[2] if len(fds) >= 3 else None
        onto_standard_streams(fds[:2])
        os.environ.update(environment)
        os.environ["FORKWARDEN_JOB"] = job
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.template_pid:
            exit_now(1)
        # SIGXCPU too: a job's limit_time_cpu (RLIMIT_CPU) must end it.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU):
            signal.signal(signum, signal.SIG_DFL)
        if self.post_fork is not None:
            self.post_fork()
        if serve is not None:
            return serve_calls(serve, call, args_fd)
        if args_fd is None:
            load(call)()
            return
        jobs.call_with_args(load(call), jobs.read_args(args_fd))

    def end_job(self, pidfd):
        pid, connection = self.jobs.pop(pidfd)
        self.askers.pop(connection, None)
        lifeline = self.lifelines.pop(pid, None)
        if lifeline is not None:
            self.askers.pop(lifeline, None)
            lifeline.close()
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            answer = f"SIGNAL={os.WTERMSIG(status)}"
        else:
            answer = f"EXIT={os.waitstatus_to_exitcode(status)}"
        # An executor's job worker may have let it go (it ends then): not news.
        if not self.answer(connection, answer) and lifeline is None:
            print(f"forkwarden_wsgi: template: call job pid {pid} ended ({answer}) after its "
                  "cron worker was gone", file=sys.stderr, flush=True)
        connection.close()

    def fork_spare(self):
        """Forks the middle process, which forks the spare worker; the worker waits on the
        returned channel for its request. Returns (middle pid, channel)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        middle = fork()
        if middle == 0:
            ours.close()
            in_forked_process(lambda: self.be_middle(theirs))
        theirs.close()
        return middle, ours

    def be_middle(self, channel):
        """The middle process: forks the spare worker, then waits until the worker closes
        its end of the pipe (once the master knows it, or when it leaves) and exits."""
        self.close_template_descriptors()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # it never outlives the template
        if os.getppid() != self.template_pid:
            exit_now(0)
        said, told = os.pipe()
        if os.fork() == 0:
            os.close(said)
            parent = os.getppid()
            in_forked_process(lambda: self.wait_for_request(channel, told, parent))
        os.close(told)
        channel.close()
        while os.read(said, 1):
            pass

    def hand_over(self, message, fds):
        """Gives the request to the spare worker, and waits for its middle process to exit
        (it does once the worker has said who it is)."""
        middle, channel = self.spare
        self.spare = None
        try:
            socket.send_fds(channel, [message], fds)
        except OSError as error:
            # The spare died (its middle process with it): the master's request times out.
            print(f"forkwarden_wsgi: template: the spare worker is gone ({error})",
                  file=sys.stderr, flush=True)
        channel.close()
        os.waitpid(middle, 0)

    def wait_for_request(self, channel, told, parent):
        """The spare worker: waits for its request (dies with its middle process until
        then), and becomes the worker it asks for."""
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            exit_now(0)
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(channel, 4096, 3)
                break
            except InterruptedError:
                continue
        channel.close()
        if not message:
            exit_now(0)  # the template left without using this spare
        request = assignments(message)
        if len(fds) != 3 or "FORKWARDEN_FORK" not in request:
            raise ValueError(f"malformed fork request {message!r}")
        # Its middle process exits next, which must not kill it.
        prctl(PR_SET_PDEATHSIG, 0)
        self.become_worker(request, fds, told, parent)

    def become_worker(self, request, fds, told, middle):
        """The fork request's descriptors: its stdout, its stderr and its scoreboard row,
        which goes where the kit has the row (the template's is a placeholder). `middle` is
        the middle process, the worker's parent until the master adopts it: the kit must
        know it, to tell it from whoever adopts an orphan once the master is gone."""
        os.setpgid(0, 0)  # its own process group: its signals never reach the template
        pid = str(os.getpid())
        os.environ.update(request)
        os.environ["FORKWARDEN_MIDDLE_PID"] = str(middle)
        os.environ["LISTEN_PID"] = pid
        os.environ.pop("WATCHDOG_USEC", None)
        os.environ.pop("WATCHDOG_PID", None)
        os.environ.pop("FORKWARDEN_CONTROL_FD", None)
        os.environ.pop("FORKWARDEN_CALLS_FD", None)
        Notifier().send(f"FORKWARDEN_FORK={request['FORKWARDEN_FORK']}")
        os.close(told)  # the middle process exits: the master becomes our parent
        stdout, stderr, row = fds
        onto_standard_streams([stdout, stderr])
        kit = os.environ.get("FORKWARDEN_KIT_FD")
        if kit is not None:
            os.dup2(row, int(kit) + KIT_ROW)
        os.close(row)
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        if self.post_fork is not None:
            self.post_fork()
        # The worker waits for its middle process to be gone before it binds its
        # parent-death signal to the master.
        serve(self.target, self.app)


def check(target, post_fork, loader=None):
    """`--check`: whether `target` (and `post_fork`) load and can be served; says why not
    on standard error. `loader` loads the application (default: `load(target)`). Returns
    the exit status."""
    if _core is None:
        print(f"forkwarden_wsgi: its core is not built ({_CORE_ERROR}); this Python "
              f"({sys.executable}) has the package without it: install forkwarden into it "
              "with pip", file=sys.stderr)
        return 1
    loaders = ((target, "the application", loader or (lambda: load(target))),
               (post_fork, "the post-fork function", lambda: load(post_fork)))
    for name, what, load_it in loaders:
        if name is None:
            continue
        try:
            loaded = load_it()
        except BaseException:
            traceback.print_exc()
            print(f"forkwarden_wsgi: cannot load {what} {name!r} (from {os.getcwd()}, "
                  f"with {sys.executable})", file=sys.stderr)
            return 1
        if not callable(loaded):
            print(f"forkwarden_wsgi: {name!r} is a {type(loaded).__name__}, not a callable "
                  f"{what}", file=sys.stderr)
            return 1
    print(f"forkwarden_wsgi: {target} loads with {sys.executable}", file=sys.stderr)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # `--odoo -- ODOO-OPTIONS`: what follows `--` is odoo-bin's.
    odoo_args = None
    if "--" in argv:
        cut = argv.index("--")
        argv, odoo_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python3 -m forkwarden_wsgi",
                                     description="Serve a WSGI application under forkwarden.")
    parser.add_argument("--preload", action="store_true",
                        help="say that this is the template workers are forked from ([app] "
                             "preload = true makes it one)")
    parser.add_argument("--post-fork", metavar="MODULE:FUNCTION",
                        help="called in each worker before it serves (reopen connections here)")
    parser.add_argument("--check", action="store_true",
                        help="load the application as a worker would, then exit: 0 if it "
                             "loads (what `forkwarden check` runs)")
    parser.add_argument("--odoo", action="store_true",
                        help="serve Odoo, loaded as odoo-bin loads it; odoo-bin's server "
                             "options follow `--` (e.g. -- -c /etc/odoo/odoo.conf)")
    parser.add_argument("app", metavar="MODULE:CALLABLE", nargs="?")
    args = parser.parse_args(argv)
    if args.odoo == (args.app is not None):
        parser.error("name the application (MODULE:CALLABLE), or give --odoo, not both")
    if odoo_args is not None and not args.odoo:
        parser.error("options after `--` are Odoo's: give --odoo")
    if args.odoo:
        from . import odoo as odoo_support
        target = "odoo"
        loader = lambda: odoo_support.load(odoo_args or [])  # noqa: E731
        post_fork_name = args.post_fork or "forkwarden_wsgi.odoo:post_fork"
    else:
        target = args.app
        loader = lambda: load(args.app)  # noqa: E731
        post_fork_name = args.post_fork
    if args.check:
        sys.path.insert(0, os.getcwd())
        sys.exit(check(target, post_fork_name, loader))
    stopping = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    sys.path.insert(0, os.getcwd())
    app = loader()
    post_fork = load(post_fork_name) if post_fork_name else None
    control = os.environ.get("FORKWARDEN_CONTROL_FD")
    if control is not None:
        # `preload = true` in [app] is what makes this process the template (the master
        # hands it the control channel); --preload only says so on the command line.
        Template(int(control), target, app, post_fork, stopping).run()
        return
    if post_fork is not None:
        post_fork()
    serve(target, app)
