//! Companion programs (`[[program]]`): other programs supervised beside the HTTP workers,
//! with the same respawn, log lines, reload and stop.

mod common;

use std::collections::BTreeSet;

use common::{SOON, Server, http_get, is_alive, pid_after, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A `[[program]]` named `name` answering each connection on descriptor 3 with its pid.
fn answering_program(name: &str, count: u32) -> String {
    let source = [
        "import os, socket",
        "listener = socket.socket(fileno=3)",
        "assert os.environ['LISTEN_FDNAMES'] == os.environ['EXPECTED_NAME']",
        "while True:",
        "  connection, _ = listener.accept()",
        "  connection.recv(65536)",
        "  body = str(os.getpid())",
        "  connection.sendall(('HTTP/1.1 200 OK' + chr(13) + chr(10) + 'Content-Length: %d' % len(body) + chr(13) + chr(10) + 'Connection: close' + chr(13) + chr(10) + chr(13) + chr(10) + body).encode())",
        "  connection.close()",
    ]
    .join("\\\\n");
    format!(
        "[[program]]\nname = \"{name}\"\ncount = {count}\nlisten = \"127.0.0.1:0\"\n\
         command = [\"python3\", \"-c\", \"exec(\\\"{source}\\\")\"]\nready_timeout = 0\n\
         env = {{ EXPECTED_NAME = \"{name}\" }}\n"
    )
}

/// The port a program listens on, from its start line.
fn program_port(server: &Server, name: &str) -> u16 {
    let line = server.wait_for_log(&format!("{name} programs listen on 127.0.0.1:"));
    line.rsplit(':').next().unwrap().trim().parse().unwrap()
}

fn program_pids(server: &Server, name: &str) -> BTreeSet<i32> {
    server
        .log_matching(&format!("{name} program "))
        .iter()
        .filter(|line| line.contains(" started as pid ") || line.contains("respawned as pid "))
        .map(|line| {
            let marker = if line.contains("respawned as pid ") {
                "respawned as pid "
            } else {
                "started as pid "
            };
            pid_after(line, marker)
        })
        .filter(|pid| is_alive(*pid))
        .collect()
}

#[test]
fn a_companion_program_is_respawned_reloaded_and_stopped_like_a_worker() {
    let mut server = Server::start(&format!(
        "workers = 1\n{}",
        answering_program("websocket", 2)
    ));
    let port = program_port(&server, "websocket");
    assert!(wait_until(SOON, || program_pids(&server, "websocket")
        .len()
        == 2));
    let pids = program_pids(&server, "websocket");
    let answered: i32 = http_get(port, "/").body.parse().unwrap();
    assert!(pids.contains(&answered), "{answered} not in {pids:?}");
    // The HTTP workers are served as before, on their own port.
    assert_eq!(server.get("/").status, 200);
    // Killed: replaced, and the line says which program it was.
    kill(Pid::from_raw(answered), Signal::SIGKILL).unwrap();
    let line = server.wait_for_log(&format!("(pid {answered}) died: killed by SIGKILL"));
    assert!(line.contains("websocket program "), "{line}");
    let replacement = pid_after(&line, "respawned as pid ");
    assert!(wait_until(SOON, || is_alive(replacement)));
    // SIGHUP replaces every instance; the socket stays the same.
    let before = program_pids(&server, "websocket");
    server.signal(Signal::SIGHUP);
    assert!(wait_until(SOON, || before
        .iter()
        .all(|pid| !is_alive(*pid))));
    assert!(wait_until(SOON, || program_pids(&server, "websocket")
        .len()
        == 2));
    assert_eq!(http_get(port, "/").status, 200);
    // A reload without the program stops it; the HTTP workers go on.
    let running = program_pids(&server, "websocket");
    server.rewrite_config("workers = 1\n");
    server.signal(Signal::SIGHUP);
    server.wait_for_log_all(&["websocket program ", "stopped (scaled down)"]);
    assert!(wait_until(SOON, || running
        .iter()
        .all(|pid| !is_alive(*pid))));
    assert_eq!(server.get("/").status, 200);
    server.signal(Signal::SIGTERM);
    assert!(
        server
            .wait_exit(SOON)
            .is_some_and(|status| status.success())
    );
}

#[test]
fn a_program_without_a_socket_gets_none_and_stops_with_the_server() {
    let mut server = Server::start(
        "workers = 1\n[[program]]\nname = \"consumer\"\n\
         command = [\"python3\", \"-c\", \"import os, time; print('fd 3 open:', os.path.exists('/proc/self/fd/3'), 'LISTEN_FDS' in os.environ, flush=True); time.sleep(600)\"]\n\
         ready_timeout = 0\n",
    );
    server.wait_for_log("consumer program 0 (pid ");
    server.wait_for_log("): fd 3 open: False False");
    let pids = program_pids(&server, "consumer");
    assert_eq!(pids.len(), 1);
    server.signal(Signal::SIGTERM);
    assert!(
        server
            .wait_exit(SOON)
            .is_some_and(|status| status.success())
    );
    assert!(pids.iter().all(|pid| !is_alive(*pid)));
}

#[test]
fn program_tables_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for (table, key, message) in [
        (
            "[[program]]\nname = \"a b\"\ncommand = [\"true\"]\n",
            "program[0].name",
            "is not usable",
        ),
        (
            "[[program]]\nname = \"a\"\ncommand = [\"true\"]\n[[program]]\nname = \"a\"\ncommand = [\"true\"]\n",
            "program[1].name",
            "declared twice",
        ),
        (
            "[[program]]\nname = \"a\"\ncommand = [\"true\"]\ncount = 0\n",
            "program[0].count",
            "count 0 is not usable",
        ),
        (
            "[[program]]\nname = \"a\"\ncommand = [\"no-such-program-fw\"]\n",
            "program[0].command",
            "no-such-program-fw",
        ),
        (
            "http_port = 8069\n[[program]]\nname = \"a\"\ncommand = [\"true\"]\nlisten = \"127.0.0.1:8069\"\n",
            "program[0].listen",
            "already the address",
        ),
    ] {
        let (status, stderr, _) = common::run_binary(dir.path(), table, &["check"]);
        assert_eq!(status.code(), Some(2), "{table}: {stderr}");
        assert!(
            stderr.contains(key) && stderr.contains(message),
            "{table}: {stderr}"
        );
    }
}
