//! Cron across hosts: several servers ("hosts") on one PostgreSQL `cron_store` run each due
//! run once, take over the runs of a host that dies, and ride out the database going away.
//!
//! Each test starts a PostgreSQL cluster of its own (initdb in a temporary directory, on a
//! free loopback port, password authentication), so that stopping it disturbs no other
//! test. The jobs write a mark when they start and when they end; the marks of all hosts
//! go to one file, and must never overlap.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::postgres::{Cluster, PASSWORD};
use common::{SOON, Server, children_of, http_get, is_alive, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A host's config: one HTTP worker, one cron worker, and job `beat` every second, which
/// marks its start and end (with `tag`) in `marks`, running `seconds`.
fn host_config(cluster: &Cluster, lease: &str, tag: &str, marks: &Path, seconds: &str) -> String {
    let script = format!(
        "echo start {tag} $$ $(date +%s.%N) >> {marks}; sleep {seconds}; \
         echo end {tag} $$ $(date +%s.%N) >> {marks}",
        marks = marks.display()
    );
    format!(
        "workers = 1\nmax_cron_threads = 1\ncron_store = \"{url}\"\ncron_lease = \"{lease}\"\n\
         [[cron]]\nname = \"beat\"\ninterval = \"1s\"\ncommand = [\"sh\", \"-c\", \"{script}\"]\n",
        url = cluster.url(),
    )
}

/// A host whose password comes from PGPASSWORD.
fn start_host(config: &str) -> Server {
    let server = Server::spawn_with_env(config, &[("PGPASSWORD", PASSWORD.to_string())]);
    server.wait_for_log("listening on http://");
    server
}

/// A host whose password comes from a password file (PGPASSFILE), as libpq reads it.
fn start_host_with_password_file(cluster: &Cluster, config: &str, dir: &Path) -> Server {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join("pgpass");
    let line = format!(
        "# the test cluster\n127.0.0.1:{}:postgres:forkwarden:{PASSWORD}\n",
        cluster.port
    );
    std::fs::write(&file, line).expect("password file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let server = Server::spawn_with_env(config, &[("PGPASSFILE", file.display().to_string())]);
    server.wait_for_log("listening on http://");
    server
}

/// Runs the binary with `args` on `server`'s config and the password in the environment;
/// returns (success, stdout, stderr).
fn command(server: &Server, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(common::BINARY)
        .args(args)
        .arg("--config")
        .arg(&server.config_path)
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("run forkwarden");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One run as its marks tell: who, its pid, when it started and (if it did) ended.
#[derive(Debug)]
struct Marked {
    tag: String,
    pid: String,
    start: f64,
    end: Option<f64>,
}

fn read_marks(marks: &Path) -> Vec<Marked> {
    let text = std::fs::read_to_string(marks).unwrap_or_default();
    let mut runs: Vec<Marked> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [what, tag, pid, time] = fields[..] else {
            continue;
        };
        let Ok(time) = time.parse::<f64>() else {
            continue;
        };
        match what {
            "start" => runs.push(Marked {
                tag: tag.to_string(),
                pid: pid.to_string(),
                start: time,
                end: None,
            }),
            "end" => {
                if let Some(run) = runs.iter_mut().find(|run| run.pid == pid && run.tag == tag) {
                    run.end = Some(time);
                }
            }
            _ => {}
        }
    }
    runs.sort_by(|a, b| a.start.total_cmp(&b.start));
    runs
}

/// Asserts that no run began before the one before it ended; a run without an end must be
/// the one given in `killed_at` (the host killed at that time) or the last.
fn assert_no_overlap(runs: &[Marked], killed: Option<(&str, f64)>) {
    for pair in runs.windows(2) {
        let (earlier, later) = (&pair[0], &pair[1]);
        let ended = match (earlier.end, killed) {
            (Some(end), _) => end,
            (None, Some((tag, at))) if earlier.tag == tag => at,
            (None, _) => panic!("a run never ended yet another began: {earlier:?} {later:?}"),
        };
        assert!(
            later.start >= ended,
            "two runs overlapped: {earlier:?} and {later:?}; all: {runs:#?}"
        );
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64()
}

/// `forkwarden cron history beat --json` on `server`'s config: one JSON object per run.
fn history(server: &Server) -> Vec<serde_json::Value> {
    let (success, stdout, stderr) = command(
        server,
        &["cron", "history", "beat", "--json", "--last", "1000"],
    );
    assert!(success, "cron history failed: {stderr}");
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON run"))
        .collect()
}

/// Asserts that the history (read through `server`'s config) holds exactly the runs the
/// marks show, each done well; returns it.
fn assert_each_run_recorded_once(server: &Server, runs: &[Marked]) -> Vec<serde_json::Value> {
    let history_runs = history(server);
    assert_eq!(
        history_runs.len(),
        runs.len(),
        "history {history_runs:#?} against marks {runs:#?}"
    );
    assert!(
        history_runs.iter().all(|run| run["succeeded"] == true),
        "{history_runs:#?}"
    );
    history_runs
}

/// Stops `server` gracefully and waits for it (its config stays, for the commands).
fn stop(server: &mut Server) {
    server.signal(Signal::SIGTERM);
    assert!(
        server.wait_exit(SOON).is_some(),
        "the server stops; its log:\n{}",
        server.log_text()
    );
}

#[test]
fn two_hosts_on_one_database_run_each_due_run_once() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let shared = tempfile::tempdir().expect("temp dir");
    let marks = shared.path().join("marks");
    let mut a = start_host(&host_config(&cluster, "60s", "a", &marks, "0.3"));
    let mut b = start_host_with_password_file(
        &cluster,
        &host_config(&cluster, "60s", "b", &marks, "0.3"),
        shared.path(),
    );
    // About 20 s of a job due every second.
    let began = Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || read_marks(&marks).len() >= 20),
        "20 runs within 60 s; marks: {:#?}",
        read_marks(&marks)
    );
    let took = began.elapsed();
    stop(&mut a);
    stop(&mut b);
    for server in [&a, &b] {
        assert!(
            !server.log_text().contains(PASSWORD),
            "the password is never logged"
        );
    }
    let runs = read_marks(&marks);
    assert_no_overlap(&runs, None);
    assert!(
        runs.iter().any(|run| run.tag == "b"),
        "b (password from its password file) claimed runs too: {runs:#?}"
    );
    // Each claimed run ran once, and is in the history, done.
    let history_runs = assert_each_run_recorded_once(&a, &runs);
    // None doubled: no run started before its due time, a second after the previous start
    // (from the second run on: the first waits for the hosts' first connections to a new
    // database, its tables made). None skipped: an interval is counted from the previous
    // start, so a late run (a cron worker stalled ~2 s once with two test suites on two
    // cores) delays the next and skips nothing; a schedule that skipped due times would
    // show gaps of two seconds and more throughout, which the median catches.
    let starts: Vec<i64> = history_runs
        .iter()
        .map(|run| run["start_ms"].as_i64().expect("start_ms"))
        .collect();
    let mut gaps: Vec<i64> = starts
        .windows(2)
        .skip(1)
        .map(|pair| pair[1] - pair[0])
        .collect();
    assert!(
        gaps.iter().all(|gap| *gap >= 900),
        "a run started before its due time (due every 1000 ms): starts {starts:?}"
    );
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    assert!(
        (900..1500).contains(&median),
        "runs a median {median} ms apart (due every 1000 ms): starts {starts:?}"
    );
    assert!(
        runs.len() as f64 >= took.as_secs_f64() - 2.0,
        "{} runs in {took:?}",
        runs.len()
    );
}

#[test]
fn a_host_killed_mid_run_is_recorded_as_interrupted_and_the_other_takes_over() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let shared = tempfile::tempdir().expect("temp dir");
    let marks = shared.path().join("marks");
    let a = start_host(&host_config(&cluster, "3s", "a", &marks, "0.8"));
    let mut b = start_host(&host_config(&cluster, "3s", "b", &marks, "0.8"));
    let a_worker = a.wait_for_workers("cron worker", 1)[0];
    // During a run of a's, a power cut: the whole of a, job included.
    assert!(
        wait_until(Duration::from_secs(30), || read_marks(&marks)
            .last()
            .is_some_and(|run| run.tag == "a" && run.end.is_none())),
        "a run on host a; marks: {:#?}",
        read_marks(&marks)
    );
    let mut tree = vec![a.pid()];
    let mut index = 0;
    while index < tree.len() {
        tree.extend(children_of(tree[index]));
        index += 1;
    }
    for pid in &tree {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let killed_at = now_seconds();
    let cut_short = read_marks(&marks).pop().expect("a's run");
    assert!(
        wait_until(SOON, || tree[1..].iter().all(|pid| !is_alive(*pid))),
        "host a is gone"
    );
    // Once a's lease has passed, b records the run as interrupted, with a's host and cron
    // worker, and goes on.
    let mut interrupted = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            interrupted = history(&b).into_iter().find(|run| {
                run["result"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("interrupted"))
            });
            interrupted.is_some()
        }),
        "the run is recorded as interrupted; history: {:#?}",
        history(&b)
    );
    let interrupted = interrupted.expect("found above");
    assert_eq!(interrupted["pid"], a_worker, "{interrupted}");
    assert_eq!(interrupted["succeeded"], false, "{interrupted}");
    let host = nix::unistd::gethostname().expect("host name");
    assert_eq!(interrupted["host"], host.to_string_lossy().as_ref());
    assert!(
        wait_until(Duration::from_secs(30), || read_marks(&marks)
            .iter()
            .filter(|run| run.tag == "b" && run.start > killed_at && run.end.is_some())
            .count()
            >= 2),
        "b carries on; marks: {:#?}",
        read_marks(&marks)
    );
    b.wait_for_log("stopped renewing its lease");
    stop(&mut b);
    // b waited for a's lease (3 s from its claim, at least) before it took the job over
    // (less a margin: the job's own start, which its mark tells, comes after its claim).
    let taken_over = read_marks(&marks)
        .into_iter()
        .find(|run| run.start > killed_at)
        .expect("a run after the cut");
    eprintln!(
        "host b took the job over {:.2} s after the cut run started ({:.2} s after the cut)",
        taken_over.start - cut_short.start,
        taken_over.start - killed_at
    );
    assert!(
        taken_over.start >= cut_short.start + 2.5,
        "b took the job over {:.2} s after a's run started, before its lease of 3 s passed",
        taken_over.start - cut_short.start
    );
    assert_no_overlap(&read_marks(&marks), Some(("a", killed_at)));
}

#[test]
fn the_database_going_away_stops_no_request_and_doubles_no_run() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let shared = tempfile::tempdir().expect("temp dir");
    let marks = shared.path().join("marks");
    let mut a = start_host(&host_config(&cluster, "20s", "a", &marks, "1.5"));
    let mut b = start_host(&host_config(&cluster, "20s", "b", &marks, "1.5"));
    // A run in progress, then PostgreSQL stops for 5 s.
    assert!(
        wait_until(Duration::from_secs(30), || read_marks(&marks)
            .last()
            .is_some_and(|run| run.end.is_none())),
        "a run in progress; marks: {:#?}",
        read_marks(&marks)
    );
    let running = read_marks(&marks).pop().expect("a run");
    cluster.stop();
    let stopped = Instant::now();
    let mut answered = 0;
    while stopped.elapsed() < Duration::from_secs(5) {
        for server in [&a, &b] {
            let reply = http_get(server.port, "/");
            assert_eq!(reply.status, 200, "HTTP while the database is away");
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.start_again();
    let back_at = now_seconds();
    // The run in progress went on to its end; the jobs go on once the database is back.
    assert!(
        wait_until(Duration::from_secs(60), || read_marks(&marks)
            .iter()
            .filter(|run| run.start > back_at && run.end.is_some())
            .count()
            >= 3),
        "runs after the database came back; marks: {:#?}",
        read_marks(&marks)
    );
    let runs = read_marks(&marks);
    let kept = runs
        .iter()
        .find(|run| run.pid == running.pid && run.tag == running.tag)
        .expect("the run in progress");
    assert!(
        kept.end.is_some_and(|end| end - kept.start >= 1.5),
        "the run in progress when the database went away ran to its end: {kept:?}"
    );
    for server in [&a, &b] {
        server.wait_for_log("is reachable again after");
        let outages = server.log_matching("cron jobs wait (a run in progress goes on)");
        assert_eq!(outages.len(), 1, "the outage is logged once: {outages:#?}");
        assert!(!outages[0].contains(PASSWORD));
    }
    stop(&mut a);
    stop(&mut b);
    let runs = read_marks(&marks);
    assert_no_overlap(&runs, None);
    // Every run is recorded, its end too (the one that ended while the database was away
    // once it was back), and none twice.
    assert_each_run_recorded_once(&a, &runs);
    assert!(answered > 0);
}

#[test]
fn cron_run_wakes_every_host_and_exactly_one_runs_it() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let shared = tempfile::tempdir().expect("temp dir");
    let marks = shared.path().join("marks");
    // Due at once, then not for an hour.
    let config = |tag: &str| {
        host_config(&cluster, "60s", tag, &marks, "0.2")
            .replace("interval = \"1s\"", "interval = \"1h\"")
    };
    let mut a = start_host(&config("a"));
    let mut b = start_host(&config("b"));
    assert!(wait_until(SOON, || read_marks(&marks).len() == 1));
    // `forkwarden check` finds the database and its tables.
    let (success, stdout, stderr) = command(&a, &["check"]);
    assert!(success, "{stderr}");
    assert!(
        stdout.contains("reachable; its tables are current (schema forkwarden, version 2)"),
        "{stdout}"
    );
    let (success, stdout, stderr) = command(&a, &["cron", "run", "beat"]);
    assert!(success, "{stderr}");
    assert!(stdout.contains("asked for a run of beat"), "{stdout}");
    assert!(
        wait_until(SOON, || read_marks(&marks).len() == 2),
        "the asked-for run; marks: {:#?}",
        read_marks(&marks)
    );
    // Once: no other host runs it too.
    assert!(
        !wait_until(Duration::from_secs(3), || read_marks(&marks).len() > 2),
        "one ask, one run: {:#?}",
        read_marks(&marks)
    );
    let (success, list, stderr) = command(&b, &["cron", "list"]);
    assert!(success, "{stderr}");
    assert!(list.contains("every 1h"), "{list}");
    assert!(list.contains("exited with status 0"), "{list}");
    // Each host's master counts the runs its own cron worker ended (its metrics' counts).
    for (server, tag) in [(&a, "a"), (&b, "b")] {
        let (success, status, stderr) = command(server, &["status", "--json"]);
        assert!(success, "{stderr}");
        let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
        let ran_here = read_marks(&marks)
            .iter()
            .filter(|run| run.tag == tag)
            .count();
        assert_eq!(
            status["cron_jobs"][0]["succeeded"], ran_here,
            "host {tag}: {status}"
        );
    }
    stop(&mut a);
    stop(&mut b);
    // An unreachable database fails the check, naming it and why.
    cluster.stop();
    let (success, _, stderr) = command_on(&cluster, shared.path());
    assert!(!success);
    assert!(
        stderr.contains("cannot reach the cron store postgresql://forkwarden@127.0.0.1"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

/// `forkwarden check` of a config on `cluster`, written in `dir`.
fn command_on(cluster: &Cluster, dir: &Path) -> (bool, String, String) {
    let path = dir.join("check.toml");
    std::fs::write(
        &path,
        common::config_text(&host_config(cluster, "60s", "c", &dir.join("m"), "0")),
    )
    .expect("config");
    let output = Command::new(common::BINARY)
        .args(["check", "--config"])
        .arg(&path)
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("run forkwarden check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A TCP relay on loopback between a host and the cluster that can be paused: while it is,
/// it moves nothing either way, yet the kernel keeps both connections up, as a link that
/// drops everything without a word does to the cron worker's renewals.
struct Relay {
    port: u16,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn to(target: u16) -> Relay {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("relay port");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let (paused, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (paused_, stop_) = (Arc::clone(&paused), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop_.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else {
                        continue;
                    };
                    let (paused, stop) = (Arc::clone(&paused_), Arc::clone(&stop_));
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
                        let mut buffer = [0u8; 16 << 10];
                        while !stop.load(Ordering::SeqCst) {
                            if paused.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                            match from.read(&mut buffer) {
                                Ok(0) => break,
                                Ok(read) => {
                                    if to.write_all(&buffer[..read]).is_err() {
                                        break;
                                    }
                                }
                                Err(error)
                                    if matches!(
                                        error.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, paused, stop }
    }

    fn pause(&self, paused: bool) {
        self.paused
            .store(paused, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_cut_link_stops_the_job_before_another_host_may_take_it_over() {
    // Before: a renewal waiting on a link cut without a word delayed the stop at three
    // quarters of the lease past the lease itself: the other host took the job over and
    // both ran it at once.
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let shared = tempfile::tempdir().expect("temp dir");
    let marks = shared.path().join("marks");
    // The job marks its start, then ticks every 50 ms for 4 s (longer than the lease, and
    // short enough for a host stopped during it to let it end within graceful_timeout).
    let config = |tag: &str, port: u16| {
        let script = format!(
            "echo start {tag} $$ $(date +%s.%N) >> {marks}; i=0; while [ $i -lt 80 ]; do \
             echo tick {tag} $$ $(date +%s.%N) >> {marks}; sleep 0.05; i=$((i+1)); done; \
             echo end {tag} $$ $(date +%s.%N) >> {marks}",
            marks = marks.display()
        );
        format!(
            "workers = 1\nmax_cron_threads = 1\n\
             cron_store = \"postgresql://forkwarden@127.0.0.1:{port}/postgres\"\n\
             cron_lease = \"2s\"\n\
             [[cron]]\nname = \"beat\"\ninterval = \"1s\"\ncommand = [\"sh\", \"-c\", \"{script}\"]\n"
        )
    };
    let relay = Relay::to(cluster.port);
    let mut a = start_host(&config("a", relay.port));
    assert!(
        wait_until(Duration::from_secs(30), || read_marks(&marks)
            .iter()
            .any(|run| run.tag == "a")),
        "a run on host a; marks: {:#?}",
        read_marks(&marks)
    );
    // The link of host a goes silent in the middle of its run; host b comes.
    relay.pause(true);
    let cut = now_seconds();
    let mut b = start_host(&config("b", cluster.port));
    assert!(
        wait_until(Duration::from_secs(30), || read_marks(&marks)
            .iter()
            .any(|run| run.tag == "b")),
        "host b takes the job over; marks: {:#?}",
        read_marks(&marks)
    );
    let text = std::fs::read_to_string(&marks).unwrap_or_default();
    let times = |what: &str, tag: &str| -> Vec<f64> {
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() == 4 && fields[0] == what && fields[1] == tag)
                    .then(|| fields[3].parse().ok())
                    .flatten()
            })
            .collect()
    };
    let a_last = times("tick", "a").into_iter().fold(0.0, f64::max);
    let b_start = times("start", "b").into_iter().fold(f64::MAX, f64::min);
    eprintln!(
        "host a's job last ticked {:.2} s after the cut; host b's run started {:.2} s after it",
        a_last - cut,
        b_start - cut
    );
    assert!(
        a_last < b_start,
        "host a's job still ran ({a_last}) after host b's started ({b_start}):\n{text}"
    );
    relay.pause(false);
    stop(&mut a);
    stop(&mut b);
}
