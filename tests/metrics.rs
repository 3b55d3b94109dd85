//! The metrics listener (`metrics_listen`): Prometheus metrics that count what happened,
//! checked by the real `promtool`; the live status page, rendered by a real browser; and
//! that no client of the listener can hold the master up.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{SOON, Server, http_get, wait_until};

/// The metrics listener's address, from the master's start line.
fn metrics_address(server: &Server) -> String {
    let line = server.wait_for_log("metrics on http://");
    line.split("metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the address in the metrics line")
        .to_string()
}

/// `GET path` on the metrics listener with `extra` header lines; the status line's code,
/// the head and the body. 0 when the connection is refused or closed without an answer.
fn get(address: &str, path: &str, extra: &str) -> (u16, String, String) {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return (0, String::new(), String::new());
    };
    stream.set_read_timeout(Some(SOON)).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: metrics\r\n{extra}\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new(), String::new());
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// The samples of a Prometheus text exposition: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the first sample whose `name{labels}` starts with `name` and contains
/// every one of `labels`.
fn sample(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> Option<f64> {
    samples
        .iter()
        .find(|(key, _)| {
            key.split('{').next() == Some(name) && labels.iter().all(|label| key.contains(label))
        })
        .map(|(_, value)| *value)
}

fn has_command(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn metrics_count_requests_durations_ends_limits_and_cron_runs() {
    let server = Server::start(
        "workers = 1\nmax_cron_threads = 1\ndemo_fault_endpoints = true\n\
         metrics_listen = \"127.0.0.1:0\"\nlimit_memory_soft = 0\n\
         limit_memory_hard = \"80MiB\"\nlimit_memory_hard_rlimit = false\n\
         [[cron]]\nname = \"tick\"\ninterval = \"1s\"\ncommand = [\"true\"]\n",
    );
    let address = metrics_address(&server);
    server.wait_for_workers("http worker", 1);
    for _ in 0..5 {
        assert_eq!(http_get(server.port, "/").status, 200);
    }
    assert_eq!(http_get(server.port, "/sleep?ms=300").status, 200);
    // Counted once the worker has closed the request (just after the answer left).
    let mut metrics = BTreeMap::new();
    let counted = wait_until(SOON, || {
        metrics = samples(&get(&address, "/metrics", "").2);
        sample(&metrics, "forkwarden_requests_total", &["role=\"http\""]) == Some(6.0)
    });
    assert!(counted, "not 6 requests: {metrics:?}");
    let duration = |le: &str| {
        sample(
            &metrics,
            "forkwarden_request_duration_seconds_bucket",
            &[&format!("le=\"{le}\"")],
        )
    };
    assert_eq!(duration("+Inf"), Some(6.0), "{metrics:?}");
    // The 300 ms request is past the 0.25 s bucket and within the 0.5 s one.
    assert!(
        duration("0.25").is_some_and(|count| count <= 5.0),
        "{metrics:?}"
    );
    assert_eq!(duration("0.5"), Some(6.0), "{metrics:?}");
    assert!(
        sample(&metrics, "forkwarden_request_duration_seconds_sum", &[])
            .is_some_and(|sum| sum >= 0.3),
        "{metrics:?}"
    );
    // Killed while it allocates, or just after: no answer to count on.
    let _ = http_get(server.port, "/alloc?mb=200");
    server.wait_for_log("killed: limit_memory_hard exceeded");
    let mut text = String::new();
    assert!(
        wait_until(SOON, || {
            let (status, _, body) = get(&address, "/metrics", "");
            text = body;
            metrics = samples(&text);
            status == 200
                && sample(
                    &metrics,
                    "forkwarden_cron_runs_total",
                    &["job=\"tick\"", "succeeded"],
                )
                .is_some_and(|runs| runs >= 1.0)
                && sample(
                    &metrics,
                    "forkwarden_workers",
                    &["role=\"http\"", "state=\"idle\""],
                ) == Some(1.0)
                // The killed worker reaped (until then it shows as "killed").
                && sample(
                    &metrics,
                    "forkwarden_worker_ends_total",
                    &["cause=\"limit_memory_hard\""],
                ) == Some(1.0)
        }),
        "no cron run, no idle HTTP worker or no end counted:\n{text}"
    );
    // The killed worker's requests still count.
    assert!(
        sample(&metrics, "forkwarden_requests_total", &["role=\"http\""])
            .is_some_and(|requests| requests >= 6.0),
        "{text}"
    );
    let ends = sample(
        &metrics,
        "forkwarden_worker_ends_total",
        &["cause=\"limit_memory_hard\""],
    );
    assert_eq!(ends, Some(1.0), "{text}");
    let enforced = sample(
        &metrics,
        "forkwarden_limit_enforcements_total",
        &["limit=\"limit_memory_hard\""],
    );
    assert_eq!(enforced, Some(1.0), "{text}");
    assert!(
        sample(
            &metrics,
            "forkwarden_worker_resident_memory_bytes",
            &["role=\"http\""]
        )
        .is_some_and(|rss| rss > 0.0),
        "{text}"
    );
    assert!(
        sample(&metrics, "forkwarden_master_resident_memory_bytes", &[])
            .is_some_and(|rss| rss > 0.0),
        "{text}"
    );
    // Prometheus asks for OpenMetrics, and gets it.
    let (status, head, body) = get(
        &address,
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n",
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    // The classic text format passes Prometheus's own linter.
    if !has_command("promtool") {
        common::cannot_check(
            "promtool not installed (Debian package prometheus): metrics not linted",
        );
        return;
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_listener_answers_only_its_paths_and_methods() {
    let server = Server::start("workers = 1\nmetrics_listen = \"127.0.0.1:0\"");
    let address = metrics_address(&server);
    assert_eq!(get(&address, "/nope", "").0, 404);
    // The root links what the port offers.
    let (status, _, index) = get(&address, "/", "");
    assert_eq!(status, 200);
    for link in [
        "href=\"/status\"",
        "href=\"/metrics\"",
        "href=\"/status.json\"",
    ] {
        assert!(index.contains(link), "{index}");
    }
    let (status, head, body) = get(&address, "/status.json", "");
    assert_eq!(status, 200, "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["master"]["pid"], server.pid());
    let mut stream = TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    stream
        .write_all(b"POST /metrics HTTP/1.1\r\nHost: m\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    // Not HTTP at all.
    let mut stream = TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    stream.write_all(b"\x16\x03\x01 hello\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}

#[test]
fn silent_metrics_clients_delay_no_respawn_and_are_dropped() {
    let server = Server::start("workers = 2\nmetrics_listen = \"127.0.0.1:0\"");
    let address = metrics_address(&server);
    let pids = server.wait_for_workers("http worker", 2);
    // A hundred clients that connect and never ask.
    let silent: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(&address).ok())
        .collect();
    server.kill_worker_expecting_respawn(pids[0]);
    // They are dropped at their deadline; then the listener answers again.
    assert!(
        wait_until(SOON, || get(&address, "/metrics", "").0 == 200),
        "the metrics listener never answered again"
    );
    drop(silent);
}

#[test]
fn the_status_page_shows_each_worker_live_in_a_real_browser() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| has_command(name))
    else {
        common::cannot_check(
            "no chromium installed (Debian package chromium): status page not rendered",
        );
        return;
    };
    let server =
        Server::start("workers = 2\ndemo_fault_endpoints = true\nmetrics_listen = \"127.0.0.1:0\"");
    let address = metrics_address(&server);
    let pids = server.wait_for_workers("http worker", 2);
    let profile = tempfile::tempdir().unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| http_get(server.port, "/sleep?ms=4000"));
        assert!(
            wait_until(SOON, || get(&address, "/status.json", "")
                .2
                .contains("\"busy\"")),
            "no worker busy"
        );
        // The page fetches /status.json and draws it; the DOM is dumped once it has.
        let mut dom = String::new();
        let drawn = wait_until(Duration::from_secs(20), || {
            let output = Command::new(chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--virtual-time-budget=3000",
                    "--dump-dom",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(format!("http://{address}/status"))
                .stderr(Stdio::null())
                .output()
                .expect("run chromium");
            dom = String::from_utf8_lossy(&output.stdout).into_owned();
            dom.contains("data-updated=")
        });
        assert!(drawn, "the page never drew the status:\n{dom}");
        for pid in &pids {
            assert!(
                dom.contains(&format!("<tr data-pid=\"{pid}\" data-role=\"http\"")),
                "no row for worker {pid}:\n{dom}"
            );
        }
        assert!(dom.contains("data-state=\"busy\""), "{dom}");
        assert!(dom.contains("GET /sleep?ms=4000"), "{dom}");
        // The busy worker's time bar runs against limit_time_real (120 s by default).
        assert!(dom.contains("data-limit=\"120\""), "{dom}");
        assert!(
            dom.contains(&format!("master pid {}", server.pid())),
            "{dom}"
        );
    });
}
