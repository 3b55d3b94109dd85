//! The master's signals: graceful stop, reload, scaling, log reopening, status.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{SOON, Server, children_of, http_get, is_alive, wait_until};
use nix::sys::signal::Signal;

#[test]
fn sigterm_lets_the_request_in_flight_finish_and_leaves_nothing_behind() {
    let mut server = Server::start("workers = 2\nmax_cron_threads = 1");
    let mut workers = server.wait_for_workers("http worker", 2);
    workers.extend(server.wait_for_workers("cron worker", 1));
    let port = server.port;
    let in_flight = std::thread::spawn(move || http_get(port, "/sleep?ms=1500"));
    server.wait_until_busy_with("GET /sleep?ms=1500");
    server.signal(Signal::SIGTERM);
    let reply = in_flight.join().unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "slept 1500 ms\n")
    );
    let status = server.wait_exit(SOON).expect("master exits");
    assert!(status.success(), "{status:?}");
    server.wait_for_log("SIGTERM received: stopping gracefully");
    server.wait_for_log("all workers have stopped; master exiting");
    assert!(
        workers.iter().all(|pid| !is_alive(*pid)),
        "workers left: {workers:?}"
    );
}

#[test]
fn a_second_sigterm_stops_at_once() {
    let mut server = Server::start("workers = 1\ngraceful_timeout = \"60s\"");
    server.wait_for_workers("http worker", 1);
    let port = server.port;
    let in_flight = std::thread::spawn(move || http_get(port, "/sleep?ms=30000"));
    server.wait_until_busy_with("GET /sleep?ms=30000");
    server.signal(Signal::SIGTERM);
    server.wait_for_log("stopping gracefully");
    server.signal(Signal::SIGTERM);
    server
        .wait_exit(SOON)
        .expect("master exits long before the request would end");
    server.wait_for_log("killed: the server was told to stop at once");
    assert_eq!(
        in_flight.join().unwrap().status,
        0,
        "the killed request got no response"
    );
}

#[test]
fn sigttin_and_sigttou_change_the_population_but_never_below_one() {
    let server = Server::start("workers = 2");
    server.wait_for_workers("http worker", 2);
    server.signal(Signal::SIGTTIN);
    server.wait_for_log("SIGTTIN: http workers 2 -> 3");
    server.wait_for_workers("http worker", 3);
    for expected in ["3 -> 2", "2 -> 1"] {
        server.signal(Signal::SIGTTOU);
        server.wait_for_log(&format!("SIGTTOU: http workers {expected}"));
    }
    server.wait_for_workers("http worker", 1);
    server.wait_for_log("stopped (scaled down)");
    server.signal(Signal::SIGTTOU);
    server.wait_for_log("SIGTTOU ignored: already at 1 http worker");
    assert_eq!(server.workers("http worker").len(), 1);
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn sighup_applies_a_new_worker_count_and_replaces_every_worker() {
    let server = Server::start("workers = 2");
    let old: BTreeSet<i32> = server
        .wait_for_workers("http worker", 2)
        .into_iter()
        .collect();
    server.rewrite_config("workers = 3");
    server.signal(Signal::SIGHUP);
    server.wait_for_log("SIGHUP: workers: 2 -> 3");
    server.wait_for_log("starting generation 2");
    let converged = wait_until(SOON, || {
        let now: BTreeSet<i32> = server.workers("http worker").into_iter().collect();
        now.len() == 3 && now.is_disjoint(&old)
    });
    assert!(converged, "not 3 new workers; log:\n{}", server.log_text());
    // Gone from /proc (a zombie) comes just before the master reaps it and says so.
    server.wait_for_log_count("stopped (replaced after reload)", 2);
    assert_eq!(
        server.log_matching("stopped (replaced after reload)").len(),
        2
    );
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn sighup_does_not_cut_a_request_in_flight() {
    let server = Server::start("workers = 1");
    server.wait_for_workers("http worker", 1);
    let port = server.port;
    let in_flight = std::thread::spawn(move || http_get(port, "/sleep?ms=1000"));
    server.wait_until_busy_with("GET /sleep?ms=1000");
    server.signal(Signal::SIGHUP);
    server.wait_for_log("starting generation 2");
    let reply = in_flight.join().unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "slept 1000 ms\n")
    );
    server.wait_for_log("stopped (replaced after reload)");
}

#[test]
fn sighup_with_an_invalid_config_keeps_the_running_one() {
    let server = Server::start("workers = 2");
    let workers: BTreeSet<i32> = server
        .wait_for_workers("http worker", 2)
        .into_iter()
        .collect();
    server.rewrite_config("workers = \"many\"");
    server.signal(Signal::SIGHUP);
    let line = server.wait_for_log("SIGHUP: the config was not reloaded");
    assert!(line.contains("workers"), "{line}");
    server.signal(Signal::SIGQUIT);
    server.wait_for_log("status: master pid");
    let now: BTreeSet<i32> = server.workers("http worker").into_iter().collect();
    assert_eq!(now, workers, "workers untouched");
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn sigusr1_reopens_the_log_file() {
    let server = Server::spawn("logfile = \"forkwarden.log\"\nlog_format = \"json\"");
    let log = server.dir.path().join("forkwarden.log");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(SOON, || read().contains("listening on http://")),
        "{}",
        read()
    );
    let first_line = read().lines().next().unwrap_or_default().to_string();
    assert!(
        first_line.starts_with('{') && first_line.contains("\"message\""),
        "{first_line}"
    );
    std::fs::rename(&log, server.dir.path().join("forkwarden.log.1")).unwrap();
    server.signal(Signal::SIGUSR1);
    assert!(
        wait_until(SOON, || read().contains("SIGUSR1: log file reopened")),
        "{}",
        read()
    );
}

#[test]
fn the_pidfile_lives_as_long_as_the_master() {
    let mut server = Server::start("pidfile = \"forkwarden.pid\"");
    let pidfile = server.dir.path().join("forkwarden.pid");
    let written = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(written.trim(), server.pid().to_string());
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(SOON).unwrap().success());
    assert!(!pidfile.exists());
}

#[test]
fn systemd_is_told_ready_once_workers_are_and_stopping_on_stop() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd.set_read_timeout(Some(SOON)).unwrap();
    let mut server = Server::spawn_with_env(
        "workers = 2\nmax_cron_threads = 1\n[[cron]]\nname = \"env\"\ninterval = \"1h\"\n\
         command = [\"sh\", \"-c\", \"echo NOTIFY_SOCKET=${NOTIFY_SOCKET:-unset}\"]\n",
        &[("NOTIFY_SOCKET", socket_path.display().to_string())],
    );
    let mut buffer = [0u8; 512];
    let length = systemd.recv(&mut buffer).expect("READY=1 from the master");
    let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
    assert!(message.starts_with("READY=1\n"), "{message}");
    assert!(
        message.contains("STATUS=2 http and 1 cron workers ready"),
        "{message}"
    );
    // Ready means ready: every worker answers by now.
    assert_eq!(server.workers("http worker").len(), 2);
    assert_eq!(server.get("/health").status, 200);
    // The master's NOTIFY_SOCKET is its own: a cron job does not see it.
    server.wait_for_log("cron job env: NOTIFY_SOCKET=unset");
    server.signal(Signal::SIGTERM);
    let length = systemd
        .recv(&mut buffer)
        .expect("STOPPING=1 from the master");
    assert_eq!(&buffer[..length], b"STOPPING=1");
    assert!(server.wait_exit(SOON).unwrap().success());
}

#[test]
fn the_process_title_leaves_the_arguments_intact() {
    let server = Server::start("log_level = \"debug\"");
    let line = server.wait_for_log("command line: ");
    assert!(line.contains("\"--config\""), "{line}");
    let title = common::process_title(server.pid()).unwrap();
    assert!(title.starts_with("forkwarden: master"), "{title}");
}

#[test]
fn a_storm_of_reloads_keeps_one_population_starting_not_one_per_sighup() {
    // Before: 30 SIGHUPs in 3 s left 159 processes: every generation's workers started and
    // lived until they were ready, only to be replaced at once.
    let server = Server::start(
        "workers = 2\n[app]\ncommand = [\"/usr/bin/python3\", \"-c\", \"import os, socket, \
         time; time.sleep(1); socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(\
         b'READY=1', os.environ['NOTIFY_SOCKET']); time.sleep(60)\"]\nready_timeout = \"20s\"\n",
    );
    assert!(wait_until(SOON, || children_of(server.pid()).len() == 2));
    server.wait_until_idle("http worker");
    let serving = children_of(server.pid());
    let mut most = 0;
    for _ in 0..20 {
        server.signal(Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(50));
        most = most.max(children_of(server.pid()).len());
    }
    // The two serving, two starting, and a few killed not reaped yet.
    assert!(most <= 8, "{most} processes during the storm");
    server.wait_for_log("superseded by generation");
    server.wait_for_log("SIGHUP: config reloaded; starting generation 21");
    assert!(
        serving.iter().all(|pid| is_alive(*pid)),
        "the serving workers went before their replacements were ready"
    );
    // The last generation's workers replace them once ready.
    assert!(
        wait_until(SOON, || {
            let now = children_of(server.pid());
            now.len() == 2 && now.iter().all(|pid| !serving.contains(pid))
        }),
        "{:?}",
        children_of(server.pid())
    );
}
