//! Exec workers (`[app]`): any program under the same supervision. Here the Python runner
//! (`python3 -m forkwarden_wsgi`, forkwarden's own worker through the worker kit), a server
//! that speaks the generic protocol itself (tests/apps/marking_server.py: sd_notify request
//! markers, as another language's server would), and a few plain programs.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    SOON, Server, children_of, http_get, is_alive, pid_after, python_runner_path, wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// `[app]` running scripts/compare_app.py under the Python runner, with `env` (`KEY = "value"`
/// entries) added to its environment.
fn wsgi_app(env: &str) -> String {
    let env = if env.is_empty() {
        String::new()
    } else {
        format!(", {env}")
    };
    format!(
        "[app]\ncommand = [\"python3\", \"-m\", \"forkwarden_wsgi\", \"compare_app:app\"]\n\
         cwd = \"{REPO}/scripts\"\nready_timeout = \"20s\"\nnonblocking = true\n\
         env = {{ PYTHONPATH = \"{}\"{env} }}\n",
        python_runner_path()
    )
}

/// `[app]` running scripts/compare_app.py under tests/apps/marking_server.py.
fn marking_app() -> String {
    format!(
        "[app]\ncommand = [\"python3\", \"{REPO}/tests/apps/marking_server.py\", \
         \"compare_app:app\"]\ncwd = \"{REPO}/scripts\"\nready_timeout = \"20s\"\n\
         nonblocking = true\n"
    )
}

/// A server running the Python runner; waits until `workers` programs are ready.
fn wsgi_server(settings: &str, workers: usize) -> Server {
    app_server(settings, workers, &wsgi_app(""))
}

/// A server running the marking server; waits until `workers` programs are ready.
fn marking_server(settings: &str, workers: usize) -> Server {
    app_server(settings, workers, &marking_app())
}

fn app_server(settings: &str, workers: usize, app: &str) -> Server {
    let server = Server::start(&format!("workers = {workers}\n{settings}\n{app}"));
    assert!(
        wait_until(SOON, || server.get("/health").status == 200),
        "{}",
        server.log_text()
    );
    server.wait_for_workers("", workers);
    server
}

#[test]
fn each_program_answers_with_its_own_pid() {
    let server = marking_server("", 3);
    let programs: BTreeSet<i32> = children_of(server.pid()).into_iter().collect();
    assert_eq!(programs.len(), 3);
    // Three slow requests at once must be served by three different programs.
    let answers: BTreeSet<i32> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| http_get(server.port, "/sleep?ms=700").body))
            .collect();
        handles
            .into_iter()
            .map(|handle| pid_after(&handle.join().unwrap(), "in pid "))
            .collect()
    });
    assert_eq!(answers, programs);
    server.wait_for_log_all(&["NOTIFY_SOCKET=/", "/forkwarden-", "/notify;"]);
}

#[test]
fn a_killed_program_is_replaced_and_logged() {
    let server = wsgi_server("", 1);
    let victim: i32 = server.get("/pid").body.trim().parse().unwrap();
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let line = server.wait_for_log(&format!("(pid {victim}) died: killed by SIGKILL"));
    let replacement = pid_after(&line, "respawned as pid ");
    assert!(wait_until(SOON, || server.get("/pid").body.trim()
        == replacement.to_string()));
}

#[test]
fn a_request_past_limit_time_real_is_killed_and_logged_with_its_path() {
    let server = marking_server("limit_time_real = 1", 2);
    let reply = server.get("/sleep?ms=8000");
    assert_eq!(
        reply.status, 0,
        "no 504 from outside the program: the connection ends"
    );
    let line = server.wait_for_log("killed: limit_time_real exceeded (running ");
    assert!(line.contains("while serving GET /sleep?ms=8000"), "{line}");
    assert!(line.contains("respawned as pid"), "{line}");
}

#[test]
fn a_request_past_limit_time_cpu_is_stopped_by_rlimit_cpu() {
    let server = marking_server("limit_time_cpu = 1\nlimit_time_real = 30", 1);
    let _ = server.get("/burn?ms=20000");
    let line = server.wait_for_log("killed: limit_time_cpu exceeded (cpu ");
    assert!(line.contains("while serving GET /burn?ms=20000"), "{line}");
}

#[test]
fn a_leak_past_limit_memory_hard_is_killed() {
    let settings =
        "limit_memory_soft = 0\nlimit_memory_hard = \"100MiB\"\nlimit_memory_hard_rlimit = false";
    for server in [wsgi_server(settings, 1), marking_server(settings, 1)] {
        leak_is_killed(&server);
    }
}

fn leak_is_killed(server: &Server) {
    let _ = server.get("/alloc?mb=200");
    // Memory is read at the short interval from the request on (a program that is idle
    // after it would otherwise be read only every 10 s): far sooner than that.
    let killed = wait_until(Duration::from_secs(5), || {
        !server
            .log_matching("killed: limit_memory_hard exceeded (rss ")
            .is_empty()
    });
    assert!(killed, "not killed within 5 s: {}", server.log_text());
    let line = server.wait_for_log("killed: limit_memory_hard exceeded (rss ");
    assert!(line.contains("> 100 MiB)"), "{line}");
}

#[test]
fn limit_request_counts_idle_markers() {
    // Ready without a request (a readiness probe would count towards the limit).
    let server = Server::start(&format!(
        "workers = 1\nlimit_request = 3\n{}",
        marking_app()
    ));
    server.wait_until_idle("http worker");
    let first = server.get("/pid").body;
    assert_eq!(server.get("/pid").body, first);
    assert_eq!(server.get("/pid").body, first);
    let line = server.wait_for_log("recycled: limit_request reached (3 requests)");
    let replacement = pid_after(&line, "respawned as pid ");
    assert!(wait_until(SOON, || server.get("/pid").body.trim()
        == replacement.to_string()));
}

#[test]
fn an_application_that_cannot_start_ends_the_first_start_with_its_error() {
    // Before: "listening on", then failed starts with backoff for ever and requests that
    // hang. Now: three failed starts before any worker was ever ready stop the server,
    // quoting the program's last words, with status 1 (gunicorn: "Worker failed to boot").
    let mut server = Server::spawn(&format!(
        "workers = 2\n{}",
        wsgi_app("COMPARE_APP_CRASH_AT_BOOT = \"1\"")
    ));
    let line = server.wait_start_failure();
    assert!(
        line.contains("3 failed starts in a row and no http worker has ever been ready"),
        "{line}"
    );
    assert!(
        line.contains("its last output: ")
            && line.contains("RuntimeError: COMPARE_APP_CRASH_AT_BOOT=1"),
        "{line}"
    );
    assert!(line.contains(" ERROR "), "{line}");
    server.wait_for_log("stopping: fix what the lines above say");
}

#[test]
fn a_program_crashing_at_import_after_serving_is_backed_off() {
    // Once the server has served, a failed start is retried with backoff (the database
    // may come back): a reload to code that cannot start keeps the old worker serving.
    let server = wsgi_server("", 1);
    let serving = server.get("/pid").body;
    server.rewrite_config(&format!(
        "workers = 1\n{}",
        wsgi_app("COMPARE_APP_CRASH_AT_BOOT = \"1\"")
    ));
    server.signal(Signal::SIGHUP);
    server.wait_for_log("[stderr]: RuntimeError: COMPARE_APP_CRASH_AT_BOOT=1");
    server.wait_for_log("restarting in 0.20s (3 failed starts in a row)");
    assert!(is_alive(server.pid()));
    assert_eq!(server.get("/pid").body, serving);
}

#[test]
fn a_program_exiting_with_status_3_stops_the_server() {
    let mut server = wsgi_server("", 2);
    let _ = server.get("/crash?exit=3");
    server.wait_for_log("exited with status 3 (critical error)");
    assert_eq!(
        server.wait_exit(SOON).and_then(|status| status.code()),
        Some(3)
    );
}

#[test]
fn a_program_that_never_reports_ready_is_killed_after_ready_timeout() {
    let server = Server::spawn(
        "workers = 1\n[app]\ncommand = [\"sleep\", \"60\"]\nready_timeout = \"1s\"\n",
    );
    let line = server.wait_for_log("killed: did not report READY=1 within ready_timeout (1s)");
    assert!(line.contains(" WARN "), "{line}");
    // Its replacement is killed the same way: a failed start each time, so backed off.
    let twice = wait_until(SOON, || {
        server.log_matching("killed: did not report READY=1").len() >= 2
    });
    assert!(twice, "{}", server.log_text());
    server.wait_for_log("failed starts in a row");
}

#[test]
fn a_program_without_notify_still_gets_respawn_memory_limits_and_its_output_logged() {
    let program = "import sys, time; print('hello from the program', flush=True); \
                   print('and its stderr', file=sys.stderr, flush=True); \
                   block = bytearray(200 << 20); time.sleep(60)";
    let server = Server::spawn(&format!(
        "workers = 1\nlimit_memory_soft = 0\nlimit_memory_hard = \"100MiB\"\n\
         limit_memory_hard_rlimit = false\n\
         [app]\ncommand = [\"python3\", \"-c\", \"{program}\"]\nready_timeout = 0\n"
    ));
    server.wait_for_log_all(&["http worker 0 (pid ", "): hello from the program"]);
    server.wait_for_log("[stderr]: and its stderr");
    let line = server.wait_for_log("killed: limit_memory_hard exceeded (rss ");
    assert!(line.contains("respawned as pid"), "{line}");
    let shell = Server::spawn(
        "workers = 1\n[app]\ncommand = [\"sh\", \"-c\", \"while :; do sleep 1; done\"]\n\
         ready_timeout = 0\n",
    );
    let program = shell.wait_for_workers("", 1)[0];
    kill(Pid::from_raw(program), Signal::SIGKILL).unwrap();
    shell.wait_for_log(&format!("(pid {program}) died: killed by SIGKILL"));
    shell.wait_for_workers("", 1);
}

#[test]
fn killing_forkwarden_leaves_no_program_behind() {
    let mut server = wsgi_server("", 2);
    let programs = children_of(server.pid());
    assert_eq!(programs.len(), 2);
    server.signal(Signal::SIGKILL);
    server.wait_exit(SOON);
    let gone = wait_until(Duration::from_secs(2), || {
        programs.iter().all(|pid| !is_alive(*pid))
    });
    assert!(gone, "programs alive after the master died: {programs:?}");
}

/// A Python program, run with `ready_timeout` and the given source (one line per entry).
fn python_program(source: &[&str], ready_timeout: &str) -> String {
    // `\\\\n` here is `\\n` in the TOML text and `\n` in the Python source: a newline
    // once `exec` runs it.
    let program = source.join("\\\\n");
    format!(
        "workers = 1\n[app]\ncommand = [\"python3\", \"-c\", \"exec(\\\"{program}\\\")\"]\n\
         ready_timeout = {ready_timeout}\n"
    )
}

#[test]
fn the_program_inherits_only_its_standard_streams_the_socket_and_the_worker_kit() {
    let server = Server::spawn(&python_program(
        &[
            "import os, time",
            "def is_open(fd):",
            "  try:",
            "    os.fstat(fd)",
            "    return True",
            "  except OSError:",
            "    return False",
            "print('descriptors', [fd for fd in range(1024) if is_open(fd)], flush=True)",
            "print('LISTEN_FDS', os.environ['LISTEN_FDS'], os.environ['LISTEN_PID'] == str(os.getpid()), flush=True)",
            "print('KIT', os.environ['FORKWARDEN_KIT_FD'], os.readlink('/proc/self/fd/4'), flush=True)",
            "time.sleep(60)",
        ],
        "0",
    ));
    // The listening socket on 3, the worker kit from 4 on (nine, see src/worker/kit.rs).
    server.wait_for_log("): descriptors [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]");
    server.wait_for_log("): LISTEN_FDS 1 True");
    server.wait_for_log("): KIT 4 /memfd:forkwarden-settings");
}

#[test]
fn a_program_silent_past_its_watchdog_is_killed_and_its_status_shown() {
    let server = Server::spawn(&python_program(
        &[
            "import os, socket, time",
            "address = os.environ['NOTIFY_SOCKET'].replace('@', chr(0), 1)",
            "notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)",
            "send = lambda message: notify.sendto(message.encode(), address)",
            "send('READY=1')",
            "send('STATUS=warming caches')",
            "send('WATCHDOG_USEC=500000')",
            "for _ in range(4):",
            "  time.sleep(0.2)",
            "  send('WATCHDOG=1')",
            "time.sleep(60)",
        ],
        "\"5s\"",
    ));
    server.wait_until_idle("http worker");
    server.signal(Signal::SIGQUIT);
    server.wait_for_log("status \"warming caches\"");
    let line = server.wait_for_log("killed: watchdog: no WATCHDOG=1 for ");
    assert!(line.contains("(WATCHDOG_USEC=500000)"), "{line}");
    assert!(line.contains("respawned as pid"), "{line}");
}

#[test]
fn a_stopped_program_is_caught_by_its_heartbeat_or_its_watchdog() {
    // The runner beats in its scoreboard row, as a built-in worker does; the marking server
    // sends WATCHDOG=1, as WATCHDOG_USEC (heartbeat_timeout) asks.
    for (server, killed) in [
        (
            wsgi_server("heartbeat_timeout = \"2s\"", 1),
            "killed: no sign of life for ",
        ),
        (
            marking_server("heartbeat_timeout = \"2s\"", 1),
            "killed: watchdog: no WATCHDOG=1",
        ),
    ] {
        let program: i32 = server.get("/pid").body.trim().parse().unwrap();
        kill(Pid::from_raw(program), Signal::SIGSTOP).unwrap();
        let line = server.wait_for_log(&format!("(pid {program}) {killed}"));
        assert!(line.contains("2s") || line.contains("2000000"), "{line}");
        assert!(wait_until(SOON, || server.get("/health").status == 200));
    }
}

#[test]
fn a_program_that_cannot_get_memory_at_start_is_told_about_rlimit_as() {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        common::cannot_check("node is not installed");
        return;
    }
    // Node reserves far more virtual memory than it uses: RLIMIT_AS at 256 MiB stops it.
    let server = Server::spawn(
        "workers = 1\nlimit_memory_soft = 0\nlimit_memory_hard = \"256MiB\"\n\
         [app]\ncommand = [\"node\", \"-e\", \"setTimeout(() => {}, 60000)\"]\nready_timeout = 0\n",
    );
    let line = server.wait_for_log("it could not get memory: ");
    assert!(
        line.contains("limit_memory_hard = 256 MiB caps its address space (RLIMIT_AS)")
            && line.contains("limit_memory_hard_rlimit = false"),
        "{line}"
    );
}

/// A program that answers each connection with how it got descriptor 3 (`blocking` or
/// `nonblocking`), accepting with a plain `accept()`, as socket-activated services do.
fn accepting_program(nonblocking: bool) -> String {
    let mut config = python_program(
        &[
            "import fcntl, os, socket, select",
            "listener = socket.socket(fileno=3)",
            "mode = 'nonblocking' if fcntl.fcntl(3, fcntl.F_GETFL) & os.O_NONBLOCK else 'blocking'",
            "while True:",
            "  if mode == 'nonblocking':",
            "    select.select([listener], [], [])",
            "  connection, _ = listener.accept()",
            "  connection.recv(65536)",
            "  connection.sendall(('HTTP/1.1 200 OK' + chr(13) + chr(10) + 'Content-Length: %d' % len(mode) + chr(13) + chr(10) + 'Connection: close' + chr(13) + chr(10) + chr(13) + chr(10) + mode).encode())",
            "  connection.close()",
        ],
        "0",
    );
    config = config.replace("workers = 1", "workers = 2");
    if nonblocking {
        config.push_str("nonblocking = true\n");
    }
    config
}

#[test]
fn descriptor_3_is_blocking_as_systemd_hands_it_over_unless_nonblocking_is_set() {
    let server = Server::spawn(&accepting_program(false));
    for _ in 0..4 {
        let reply = http_get(server.port, "/");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "blocking"),
            "{}",
            server.log_text()
        );
    }
    assert!(
        server.log_matching("respawned").is_empty() && server.log_matching("died").is_empty(),
        "a blocking accept() must not fail: {}",
        server.log_text()
    );
    let server = Server::spawn(&accepting_program(true));
    assert!(wait_until(SOON, || http_get(server.port, "/").body == "nonblocking"));
}

#[test]
fn a_program_line_keeps_its_level_and_loses_its_own_timestamp() {
    let server = Server::spawn(&python_program(
        &[
            "import os, sys, time",
            "print('2026-11-28 12:00:01,234 %d ERROR prod odoo.http: Exception during request' % os.getpid(), file=sys.stderr, flush=True)",
            "print('2026-11-28 12:00:01,235 %d INFO prod werkzeug: GET / 200' % os.getpid(), file=sys.stderr, flush=True)",
            "print('a plain line on stderr', file=sys.stderr, flush=True)",
            "print('a plain line on stdout', flush=True)",
            "time.sleep(60)",
        ],
        "0",
    ));
    let program = server.wait_for_workers("", 1)[0];
    // The program's own timestamp is dropped; the line keeps the level it states.
    let error = server.wait_for_log(&format!(
        "(pid {program}) [stderr]: {program} ERROR prod odoo.http: Exception during request"
    ));
    assert!(error.contains(" ERROR "), "{error}");
    let info = server.wait_for_log(&format!("[stderr]: {program} INFO prod werkzeug"));
    assert!(
        info.contains(" INFO ") && !info.contains(" WARN "),
        "{info}"
    );
    let plain = server.wait_for_log("[stderr]: a plain line on stderr");
    assert!(plain.contains(" WARN "), "{plain}");
    let stdout = server.wait_for_log("): a plain line on stdout");
    assert!(stdout.contains(" INFO "), "{stdout}");
}

#[test]
fn a_program_flooding_its_output_is_read_at_a_bounded_pace() {
    // Before: 471,642 lines in 5 s were logged as fast as they came, the master at 60 % CPU.
    let server =
        Server::start("workers = 1\n[app]\ncommand = [\"yes\", \"flood\"]\nready_timeout = 0\n");
    server.wait_for_log("writes more than 10000 lines a second");
    let floods = |server: &Server| server.log_matching(": flood");
    assert!(wait_until(SOON, || {
        let lines = floods(&server);
        lines.len() > 2 && common::log_interval(&lines[0], &lines[lines.len() - 1]).as_secs() >= 2
    }));
    let lines = floods(&server);
    let span = common::log_interval(&lines[0], &lines[lines.len() - 1]);
    // At most 10,000 a second, each second started counting anew (and one more second's
    // worth for the edges).
    let most = (span.as_secs_f64().ceil() + 1.0) * 10_000.0;
    assert!(
        (lines.len() as f64) <= most,
        "{} lines in {span:?}",
        lines.len()
    );
    // Nothing lost meanwhile: the program waits on its pipe, and is still there.
    assert!(
        server.log_matching("died").is_empty(),
        "{:?}",
        server.log_matching("died")
    );
}
