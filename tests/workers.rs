//! The worker population: the right number of workers, each replaced when it dies, with a
//! log line that says how; crash loops backed off; nothing outliving the master.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    SOON, Server, is_alive, log_interval, pid_after, process_title, send_raw, wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn each_configured_worker_answers_with_its_own_pid() {
    let server = Server::start("workers = 3");
    let workers: BTreeSet<i32> = server
        .wait_for_workers("http worker", 3)
        .into_iter()
        .collect();
    // Three requests running at once must be served by three different workers. /pid is
    // sent with /sleep, pipelined, so the worker that ran the sleep answers it too: an idle
    // connection after a long request would go back to the shared queue instead.
    let answers: BTreeSet<i32> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    let replies = send_raw(
                        server.port,
                        b"GET /sleep?ms=500 HTTP/1.1\r\nHost: test\r\n\r\n\
                          GET /pid HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
                    );
                    assert!(replies.contains("slept 500 ms"), "{replies}");
                    let last = replies.rsplit("\r\n\r\n").next().unwrap_or_default();
                    last.trim().parse::<i32>().expect("a pid")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    assert_eq!(
        answers, workers,
        "each worker answers /pid with its own pid"
    );
}

#[test]
fn process_titles_show_each_role() {
    let server = Server::start("workers = 2\nmax_cron_threads = 1");
    let http = server.wait_for_workers("http worker", 2);
    let cron = server.wait_for_workers("cron worker", 1);
    let mut titles: Vec<String> = http
        .iter()
        .chain(&cron)
        .map(|pid| process_title(*pid).unwrap())
        .collect();
    titles.sort();
    assert_eq!(
        titles,
        [
            "forkwarden: cron worker 0",
            "forkwarden: http worker 0",
            "forkwarden: http worker 1"
        ]
    );
    let master = process_title(server.pid()).unwrap();
    assert!(master.starts_with("forkwarden: master"), "{master}");
}

#[test]
fn a_killed_worker_is_replaced_and_the_log_says_how() {
    let server = Server::start("workers = 2");
    let before = server.wait_for_workers("http worker", 2);
    let victim = before[0];
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let line = server.wait_for_log(&format!("(pid {victim}) died: killed by SIGKILL after"));
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains("requests served; respawned as pid "),
        "{line}"
    );
    let new_pid = pid_after(&line, "respawned as pid ");
    let after = server.wait_for_workers("http worker", 2);
    assert!(
        after.contains(&new_pid) && !after.contains(&victim),
        "{after:?}"
    );
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn a_crash_in_a_request_is_logged_with_the_request() {
    let server = Server::start("workers = 1");
    let pid = server.wait_for_workers("http worker", 1)[0];
    let reply = server.get("/crash");
    assert_eq!(
        reply.status, 0,
        "the connection closes without a response: {reply:?}"
    );
    server.wait_for_log_all(&[
        &format!("(pid {pid}) died: killed by SIGABRT"),
        "while serving GET /crash",
        "respawned as pid",
    ]);
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn a_worker_failing_at_boot_is_backed_off_not_respawned_in_a_loop() {
    // After the server has served (a first start that cannot succeed stops it instead).
    let server = Server::start("workers = 1");
    server.wait_for_workers("http worker", 1);
    server.rewrite_config("workers = 1\ndemo_crash_at_boot = true");
    server.signal(Signal::SIGHUP);
    let first = server.wait_for_log("failed to start: exited with status 1");
    // Failures 2..5 wait 0.1 + 0.2 + 0.4 + 0.8 s before the next start; a tight respawn loop
    // would reach the sixth failure within milliseconds. The master's own timestamps say.
    let sixth = server.wait_for_log("restarting in 1.6s (6 failed starts in a row)");
    let elapsed = log_interval(&first, &sixth);
    assert!(
        elapsed >= Duration::from_millis(1500),
        "backoff too short: {elapsed:?}"
    );
    let failures = server
        .log_matching("failed to start: exited with status 1")
        .len();
    assert!(
        (6..=7).contains(&failures),
        "{failures} failed starts: not backed off"
    );
    let reasons = server.log_matching("the application failed to start: demo_crash_at_boot");
    assert!(reasons.len() >= 6, "each failure says why");
    assert!(is_alive(server.pid()), "the master keeps running");
}

#[test]
fn a_worker_that_never_starts_stops_the_first_start() {
    let mut server = Server::spawn("workers = 1\ndemo_crash_at_boot = true");
    let line = server.wait_start_failure();
    assert!(
        line.contains("the application cannot start: 3 failed starts in a row"),
        "{line}"
    );
    let failures = server
        .log_matching("failed to start: exited with status 1")
        .len();
    assert_eq!(failures, 3, "{}", server.log_text());
}

#[test]
fn a_critical_exit_status_stops_the_whole_server() {
    let mut server = Server::start("workers = 2");
    let workers = server.wait_for_workers("http worker", 2);
    let _ = server.get("/crash?exit=3");
    server.wait_for_log("exited with status 3 (critical error) after");
    server.wait_for_log("critical error in a worker: stopping gracefully");
    let status = server.wait_exit(SOON).expect("master exits");
    assert_eq!(status.code(), Some(3));
    assert!(workers.iter().all(|pid| !is_alive(*pid)), "no worker left");
}

#[test]
fn killing_the_master_takes_every_worker_with_it() {
    let mut server = Server::start("workers = 2\nmax_cron_threads = 1");
    let mut workers = server.wait_for_workers("http worker", 2);
    workers.extend(server.wait_for_workers("cron worker", 1));
    server.signal(Signal::SIGKILL);
    server.wait_exit(SOON).expect("master killed");
    let gone = wait_until(Duration::from_secs(2), || {
        workers.iter().all(|pid| !is_alive(*pid))
    });
    assert!(
        gone,
        "workers still alive 2 s after the master died: {workers:?}"
    );
}

#[test]
fn cron_workers_run_at_a_lower_priority_than_http_workers() {
    let server = Server::start("workers = 1\nmax_cron_threads = 1");
    let http = server.wait_for_workers("http worker", 1)[0];
    let cron = server.wait_for_workers("cron worker", 1)[0];
    let nice = |pid: i32| -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Field 19 is the nice value; fields after the command name start at 3.
        stat.rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(16)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        wait_until(SOON, || nice(cron) == nice(http) + 10),
        "http {} cron {}",
        nice(http),
        nice(cron)
    );
}
