//! `forkwarden status`: what the master says about the running server, over its control
//! socket, and that no reader of it can hold the master up.

mod common;

use std::os::unix::net::UnixStream;
use std::process::Command;

use common::{BINARY, SOON, Server, http_get, wait_until};

fn status(server: &Server, args: &[&str]) -> (bool, String) {
    let output = Command::new(BINARY)
        .arg("status")
        .arg("--config")
        .arg(&server.config_path)
        .args(args)
        .output()
        .expect("run forkwarden status");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

fn status_json(server: &Server) -> serde_json::Value {
    let (ok, text) = status(server, &["--json"]);
    assert!(ok, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

#[test]
fn status_shows_each_worker_the_request_in_flight_and_what_ended() {
    let server = Server::start("workers = 2\ndemo_fault_endpoints = true");
    let pids = server.wait_for_workers("http worker", 2);
    assert_eq!(http_get(server.port, "/").status, 200);
    assert_eq!(http_get(server.port, "/crash").status, 0, "the worker died");
    server.wait_for_log("died: killed by SIGABRT while serving GET /crash");
    server.wait_for_workers("http worker", 2);
    std::thread::scope(|scope| {
        scope.spawn(|| http_get(server.port, "/sleep?ms=1500"));
        // The request shows in flight, on the worker serving it.
        let mut json = serde_json::Value::Null;
        assert!(
            wait_until(SOON, || {
                json = status_json(&server);
                json["workers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|worker| worker["state"] == "busy")
            }),
            "no busy worker: {json}"
        );
        let workers = json["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 2, "{json}");
        let busy = workers
            .iter()
            .find(|worker| worker["state"] == "busy")
            .unwrap();
        assert_eq!(busy["request"], "GET /sleep?ms=1500", "{json}");
        assert!(busy["busy_seconds"].as_f64().is_some(), "{json}");
        for worker in workers {
            assert_eq!(worker["role"], "http");
            assert!(
                worker["rss_bytes"].as_u64().is_some_and(|rss| rss > 0),
                "{json}"
            );
            assert!(worker["cpu_seconds"].as_f64().is_some(), "{json}");
        }
        assert_eq!(json["master"]["pid"], server.pid());
        assert_eq!(json["http_workers"]["wanted"], 2);
        assert_eq!(json["http_workers"]["running"], 2);
        assert_eq!(json["ends"]["died"], 1, "{json}");
        assert!(json["requests"].as_u64().is_some_and(|served| served >= 1));
        let death = &json["recent_deaths"][0];
        assert!(
            death["line"]
                .as_str()
                .unwrap()
                .contains("killed by SIGABRT"),
            "{json}"
        );
        assert!(
            pids.contains(&(death["pid"].as_i64().unwrap() as i32)),
            "{json}"
        );
        // The table says the same.
        let (ok, text) = status(&server, &[]);
        assert!(ok, "{text}");
        assert!(
            text.contains(&format!("forkwarden master pid {}", server.pid())),
            "{text}"
        );
        assert!(text.contains("http workers 2/2"), "{text}");
        assert!(text.contains("workers ended: died 1"), "{text}");
        assert!(text.contains("GET /sleep?ms=1500"), "{text}");
        assert!(
            text.contains("killed by SIGABRT while serving GET /crash"),
            "{text}"
        );
    });
}

#[test]
fn limits_enforced_are_counted_by_limit() {
    // Two servers: a tight limit_time_real must not catch the allocation on a busy machine.
    let timed = Server::start("workers = 1\ndemo_fault_endpoints = true\nlimit_time_real = 1");
    let memory =
        Server::start("workers = 1\ndemo_fault_endpoints = true\nlimit_memory_soft = \"64MiB\"");
    timed.wait_for_workers("http worker", 1);
    memory.wait_for_workers("http worker", 1);
    assert_eq!(http_get(timed.port, "/sleep?ms=3000").status, 504);
    timed.wait_for_log("killed: limit_time_real exceeded");
    assert_eq!(http_get(memory.port, "/alloc?mb=100").status, 200);
    memory.wait_for_log("recycled: limit_memory_soft exceeded");
    let mut json = serde_json::Value::Null;
    assert!(
        wait_until(SOON, || {
            json = status_json(&memory);
            json["ends"]["limit_memory_soft"] == 1
        }),
        "{json}"
    );
    assert_eq!(json["limits_enforced"]["limit_memory_soft"], 1, "{json}");
    assert!(
        wait_until(SOON, || {
            json = status_json(&timed);
            json["ends"]["limit_time_real"] == 1
        }),
        "{json}"
    );
    assert_eq!(json["limits_enforced"]["limit_time_real"], 1, "{json}");
}

#[test]
fn readers_that_never_read_delay_no_respawn_and_the_next_reader_is_answered() {
    let server = Server::start("workers = 2");
    let pids = server.wait_for_workers("http worker", 2);
    // data_dir is `forkwarden-data` beside the config, by default.
    let socket = server.dir.path().join("forkwarden-data/forkwarden.sock");
    // A hundred readers that connect and never read, and stay connected.
    let stuck: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&socket).expect("connect to the control socket"))
        .collect();
    server.kill_worker_expecting_respawn(pids[0]);
    server.wait_for_workers("http worker", 2);
    let json = status_json(&server);
    assert_eq!(json["http_workers"]["running"], 2, "{json}");
    assert_eq!(http_get(server.port, "/").status, 200);
    drop(stuck);
}

#[test]
fn status_without_a_running_server_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("forkwarden.toml");
    std::fs::write(&config, "workers = 1\n").unwrap();
    let output = Command::new(BINARY)
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("no forkwarden master answers on"), "{error}");
    assert!(error.contains("forkwarden.sock"), "{error}");
}

/// The first JSON log line containing `needle`, parsed.
fn json_line(server: &Server, needle: &str) -> serde_json::Value {
    let line = server.wait_for_log(needle);
    serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"))
}

#[test]
fn json_log_lines_carry_a_worker_s_end_and_a_limit_as_fields() {
    let server = Server::start(
        "workers = 1\ndemo_fault_endpoints = true\nlog_format = \"json\"\n\
         limit_memory_soft = 0\nlimit_memory_hard = \"80MiB\"\nlimit_memory_hard_rlimit = false",
    );
    let pid = server.wait_for_workers("http worker", 1)[0];
    assert_eq!(http_get(server.port, "/").status, 200);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let ended = json_line(&server, &format!("(pid {pid}) died: killed by SIGKILL"));
    assert_eq!(ended["event"], "worker_ended", "{ended}");
    assert_eq!(ended["role"], "http");
    assert_eq!(ended["slot"], 0);
    assert_eq!(ended["pid"], pid);
    assert_eq!(ended["cause"], "died");
    assert_eq!(ended["requests"], 1);
    assert!(ended["uptime"].as_f64().is_some(), "{ended}");
    let new_pid = ended["new_pid"].as_i64().expect("the replacement's pid") as i32;
    assert_eq!(server.wait_for_workers("http worker", 1), [new_pid]);
    // A worker past limit_memory_hard: the limit, what was measured and the limit.
    // (Killed while it allocates, or just after: no answer to count on.)
    let _ = http_get(server.port, "/alloc?mb=200");
    let killed = json_line(&server, "killed: limit_memory_hard exceeded");
    assert_eq!(killed["event"], "limit_enforced", "{killed}");
    assert_eq!(killed["pid"], new_pid);
    assert_eq!(killed["limit"], "limit_memory_hard");
    assert_eq!(killed["limit_value"], 80 << 20);
    assert!(
        killed["value"].as_u64().is_some_and(|rss| rss > 80 << 20),
        "{killed}"
    );
    assert_eq!(killed["cause"], "limit_memory_hard");
    // The master's other events say what they are too.
    server.signal(nix::sys::signal::Signal::SIGTTIN);
    let scaled = json_line(&server, "SIGTTIN: http workers 1 -> 2");
    assert_eq!(
        (&scaled["event"], &scaled["from"], &scaled["to"]),
        (&"scaled".into(), &1.into(), &2.into()),
        "{scaled}"
    );
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let reloaded = json_line(&server, "SIGHUP: config reloaded");
    assert_eq!(reloaded["event"], "reloaded", "{reloaded}");
    assert_eq!(reloaded["generation"], 2, "{reloaded}");
    assert!(killed["new_pid"].as_i64().is_some(), "{killed}");
}
