//! Per-worker limits: the worker crossing one is replaced, the log line names the limit by
//! its config key, and requests running on other workers at that moment complete normally.
//! Those an HTTP worker answers itself run against the built-in workers and the Python
//! runner (see `Flavour`).

mod common;

use std::thread;

use common::{Flavour, Reply, SOON, Server, http_get, is_alive, pid_after, wait_until};

against_both!(
    rss_past_limit_memory_hard_is_killed_while_others_finish,
    past_limit_memory_soft_the_request_succeeds_then_the_worker_recycles,
    a_request_past_limit_time_cpu_gets_503_and_its_worker_is_replaced,
    a_request_past_limit_time_real_gets_504_and_idle_workers_are_left_alone,
);

/// Starts `path` on one worker and returns the thread that will hold its reply, once the
/// request is known to be in flight.
fn in_flight(server: &Server, path: &'static str) -> thread::JoinHandle<Reply> {
    let port = server.port;
    let handle = thread::spawn(move || http_get(port, path));
    server.wait_until_busy_with(&format!("GET {path}"));
    handle
}

fn rss_past_limit_memory_hard_is_killed_while_others_finish(flavour: Flavour) {
    let server = flavour.server(
        "limit_memory_soft = 0\nlimit_memory_hard = \"64MiB\"\nlimit_memory_hard_rlimit = false",
        2,
    );
    let other = in_flight(&server, "/sleep?ms=1500");
    let _ = server.get("/alloc?mb=100");
    let line = server.wait_for_log("killed: limit_memory_hard exceeded (rss ");
    assert!(
        line.contains(" WARN ") && line.contains(" > 64 MiB)"),
        "{line}"
    );
    let replacement = pid_after(&line, "respawned as pid ");
    assert!(wait_until(SOON, || is_alive(replacement)), "{line}");
    let reply = other.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.starts_with("slept 1500 ms"), "{reply:?}");
}

#[test]
fn an_allocation_refused_by_rlimit_as_is_logged_as_limit_memory_hard_and_recycles() {
    let server = Server::start("workers = 1\nlimit_memory_soft = 0\nlimit_memory_hard = \"96MiB\"");
    let pid = server.get("/pid").body;
    let reply = server.get("/alloc?mb=200");
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(
        reply.body.contains("could not allocate 200 MiB"),
        "{reply:?}"
    );
    let refused = server.wait_for_log("an allocation of 200 MiB was refused");
    assert!(
        refused.contains("limit_memory_hard caps its address space at 96 MiB (RLIMIT_AS)"),
        "{refused}"
    );
    let line = server.wait_for_log(&format!(
        "(pid {}) exited: the application asked to be replaced",
        pid.trim()
    ));
    let replacement = pid_after(&line, "respawned as pid ");
    assert!(
        wait_until(SOON, || server.get("/pid").body.trim()
            == replacement.to_string()),
        "{line}"
    );
}

fn past_limit_memory_soft_the_request_succeeds_then_the_worker_recycles(flavour: Flavour) {
    let server = flavour.server("limit_memory_soft = \"48MiB\"\nlimit_memory_hard = 0", 1);
    let first = server.get("/pid").body;
    let reply = server.get("/alloc?mb=64");
    assert_eq!(
        reply.status, 200,
        "the request over the soft limit still succeeds"
    );
    let line = server.wait_for_log("recycled: limit_memory_soft exceeded (rss ");
    assert!(
        line.contains(" INFO ") && line.contains(" > 48 MiB)"),
        "{line}"
    );
    let replacement = pid_after(&line, "respawned as pid ");
    assert!(wait_until(SOON, || server.get("/pid").body.trim()
        == replacement.to_string()));
    assert_ne!(server.get("/pid").body, first);
}

fn a_request_past_limit_time_cpu_gets_503_and_its_worker_is_replaced(flavour: Flavour) {
    let server = flavour.server("limit_time_cpu = 1\nlimit_time_real = 30", 2);
    let other = in_flight(&server, "/sleep?ms=2500");
    let reply = server.get("/burn?ms=10000");
    assert!(
        reply.status == 503 || reply.status == 0,
        "503, or the connection closed: {reply:?}"
    );
    let line = server.wait_for_log("killed: limit_time_cpu exceeded (cpu ");
    assert!(
        line.contains("> 1s) while serving GET /burn?ms=10000"),
        "{line}"
    );
    assert!(line.contains("respawned as pid"), "{line}");
    let reply = other.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.starts_with("slept 2500 ms"), "{reply:?}");
}

fn a_request_past_limit_time_real_gets_504_and_idle_workers_are_left_alone(flavour: Flavour) {
    let server = flavour.server("limit_time_real = 2", 3);
    let before = server.wait_for_workers(flavour.title(), 3);
    let hung = in_flight(&server, "/sleep?ms=8000");
    let short = in_flight(&server, "/sleep?ms=1200");
    let reply = hung.join().unwrap();
    assert_eq!(reply.status, 504, "{reply:?}");
    let line = server.wait_for_log("killed: limit_time_real exceeded (running ");
    assert!(
        line.contains("> 2s) while serving GET /sleep?ms=8000"),
        "{line}"
    );
    assert!(line.contains("respawned as pid"), "{line}");
    let reply = short.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.starts_with("slept 1200 ms"), "{reply:?}");
    // Exactly one worker was killed: the idle one and the one that served in time remain.
    let killed = server.log_matching("killed: ").len();
    assert_eq!(killed, 1, "{}", server.log_text());
    let victim = pid_after(&line, "(pid ");
    assert!(before.contains(&victim));
    assert!(
        wait_until(SOON, || !is_alive(victim)),
        "the hung worker is gone"
    );
    let survivors = before.iter().filter(|pid| is_alive(**pid)).count();
    assert_eq!(survivors, 2, "idle workers are never killed for being idle");
}

#[test]
fn a_cron_worker_older_than_limit_time_worker_cron_is_replaced() {
    let server =
        Server::spawn("workers = 1\nmax_cron_threads = 1\nlimit_time_worker_cron = \"1s\"");
    let first = server.wait_for_workers("cron worker", 1)[0];
    let line = server.wait_for_log(&format!(
        "(pid {first}) recycled: limit_time_worker_cron reached"
    ));
    assert!(
        line.contains(" INFO ") && line.contains("respawned as pid"),
        "{line}"
    );
    let replacement = pid_after(&line, "respawned as pid ");
    assert!(wait_until(SOON, || !is_alive(first) && is_alive(replacement)));
}
