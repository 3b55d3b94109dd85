//! Job workers on a PostgreSQL queue: jobs enqueued in a transaction run exactly once across
//! hosts, within their channel's capacity, in priority order; a job worker killed mid-job
//! has its attempt recorded at once with the cause and the job retried; limits, cancels and
//! `call` kinds. Each test starts a PostgreSQL cluster of its own.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::postgres::{Cluster, PASSWORD};
use common::{SOON, Server, python_runner_path, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// How long a job may take to burn its 1 s of CPU time: it runs at the job workers' nice
/// +10, and a loaded machine (a build beside the tests) gives it a small share of a core.
const CPU_SECOND: Duration = Duration::from_secs(120);

/// A host with `job_workers` job workers on `cluster`'s queue beside one HTTP worker, and
/// `kinds` (`[[job]]` and `[[channel]]` tables, which come last).
fn host(cluster: &Cluster, job_workers: u32, kinds: &str) -> Server {
    let config = format!(
        "workers = 1\njob_workers = {job_workers}\ncron_store = \"{}\"\ncron_lease = \"10s\"\n{kinds}",
        cluster.url()
    );
    let server = Server::spawn_with_env(&config, &[("PGPASSWORD", PASSWORD.to_string())]);
    assert!(
        wait_until(SOON, || server.workers("job worker").len()
            == job_workers as usize),
        "{}",
        server.log_text()
    );
    wait_for_kinds(cluster, &server);
    server
}

/// Waits until a job worker of `server` has written its kinds to the database (what
/// `forkwarden.enqueue` accepts).
fn wait_for_kinds(cluster: &Cluster, server: &Server) {
    let mut client = cluster.client();
    let known = wait_until(SOON, || {
        client
            .query_one("SELECT count(*) FROM forkwarden.job_kind", &[])
            .is_ok_and(|row| row.get::<_, i64>(0) > 0)
    });
    assert!(known, "no kind registered; log:\n{}", server.log_text());
}

/// A host preloading tests/apps/job_app.py, with one HTTP worker and `job_workers` job
/// workers, and `kinds`.
fn preloading_host(cluster: &Cluster, job_workers: u32, kinds: &str) -> Server {
    let config = format!(
        "workers = 1\njob_workers = {job_workers}\ncron_store = \"{url}\"\ncron_lease = \"10s\"\n\
         [app]\ncommand = [\"python3\", \"-m\", \"forkwarden_wsgi\", \"job_app:app\"]\n\
         env = {{ PYTHONPATH = \"{runner}:{REPO}/tests/apps\" }}\n\
         preload = true\nready_timeout = \"20s\"\n{kinds}",
        url = cluster.url(),
        runner = python_runner_path(),
    );
    let server = Server::spawn_with_env(&config, &[("PGPASSWORD", PASSWORD.to_string())]);
    server.wait_for_log("loaded the application in");
    assert!(
        wait_until(SOON, || server.workers("job worker").len()
            == job_workers as usize),
        "{}",
        server.log_text()
    );
    wait_for_kinds(cluster, &server);
    server
}

/// `forkwarden job ARGS` on `server`'s config: (success, stdout, stderr).
fn job_command(server: &Server, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(common::BINARY)
        .arg("job")
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

/// `forkwarden job show ID --json`: the job and its attempts.
fn show(server: &Server, id: i64) -> serde_json::Value {
    let (ok, stdout, stderr) = job_command(server, &["show", &id.to_string(), "--json"]);
    assert!(ok, "job show failed: {stderr}");
    serde_json::from_str(&stdout).expect("a JSON job")
}

/// Waits until job `id` is in `state`; returns it as `job show` tells.
fn wait_for_state(server: &Server, id: i64, state: &str, within: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let reached = wait_until(within, || {
        last = show(server, id);
        last["job"]["state"] == state
    });
    assert!(
        reached,
        "job #{id} never became {state}: {last:#}\nlog:\n{}",
        server.log_text()
    );
    last
}

/// The lines of a marks file, split into words.
fn marks(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn stop(mut server: Server) {
    server.signal(Signal::SIGTERM);
    assert!(
        server.wait_exit(SOON).is_some(),
        "the server stops; its log:\n{}",
        server.log_text()
    );
}

/// A kind that appends its job id to `marks` (its args come on standard input).
fn marking_kind(name: &str, marks: &Path, extra: &str) -> String {
    format!(
        "[[job]]\nname = \"{name}\"\n{extra}\ncommand = [\"sh\", \"-c\", \
         \"cat > /dev/null; echo $FORKWARDEN_JOB_ID >> {}\"]\n",
        marks.display()
    )
}

#[test]
fn jobs_enqueued_in_transactions_run_exactly_once_across_two_hosts() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let marks_file = dir.path().join("marks");
    let kinds = marking_kind("mark", &marks_file, "");
    let a = host(&cluster, 2, &kinds);
    let b = host(&cluster, 2, &kinds);
    // The schema and the kinds are written by the first job worker to start.
    let mut client = cluster.client();
    assert!(
        wait_until(SOON, || client
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'forkwarden' \
                 AND tablename = 'job_kind'",
                &[]
            )
            .is_ok_and(|row| row.get::<_, i64>(0) == 1)
            && client
                .query_one("SELECT count(*) FROM forkwarden.job_kind", &[])
                .is_ok_and(|row| row.get::<_, i64>(0) == 1)),
        "{}",
        a.log_text()
    );
    // An unknown kind is refused, naming the known ones.
    let refused = client
        .query_one("SELECT forkwarden.enqueue('nope')", &[])
        .expect_err("an unknown kind");
    let text = refused
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        text.contains("unknown job kind \"nope\"") && text.contains("mark"),
        "{text}"
    );
    // A rolled-back enqueue leaves no job.
    let mut tx = client.transaction().unwrap();
    tx.query_one("SELECT forkwarden.enqueue('mark', '{}')", &[])
        .unwrap();
    tx.rollback().unwrap();
    // 2,000 jobs, from two connections (as two hosts' applications), in batches.
    const JOBS: i64 = 2000;
    let mut other = cluster.client();
    for batch in 0..20 {
        let client = if batch % 2 == 0 {
            &mut client
        } else {
            &mut other
        };
        let mut tx = client.transaction().unwrap();
        tx.execute(
            "SELECT forkwarden.enqueue('mark', jsonb_build_object('n', n)) \
             FROM generate_series(1, 100) AS n",
            &[],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let done = |client: &mut postgres::Client| -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM forkwarden.job WHERE state = 'done'",
                &[],
            )
            .map(|row| row.get(0))
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(180), || done(&mut client) == JOBS),
        "{} of {JOBS} done; log of a:\n{}",
        done(&mut client),
        a.log_text()
    );
    let total: i64 = client
        .query_one("SELECT count(*) FROM forkwarden.job", &[])
        .unwrap()
        .get(0);
    assert_eq!(total, JOBS, "the rolled-back enqueue left a job");
    // Each job ran once: its id marked once, none missing.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for line in marks(&marks_file) {
        *seen.entry(line[0].clone()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "jobs run twice: {twice:?}");
    assert_eq!(seen.len() as i64, JOBS, "jobs missing");
    // Both hosts took their share.
    let hosts: i64 = client
        .query_one(
            "SELECT count(DISTINCT worker_pid) FROM forkwarden.job_attempt",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        hosts >= 3,
        "the job workers of both hosts ran jobs ({hosts} workers)"
    );
    stop(a);
    stop(b);
}

#[test]
fn an_identity_key_enqueues_one_job_however_many_ask_at_once() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Never due for an hour: the jobs stay pending while the test looks.
    let server = host(
        &cluster,
        1,
        &marking_kind("mark", &dir.path().join("marks"), ""),
    );
    let mut first = cluster.client();
    assert!(wait_until(SOON, || first
        .query_one("SELECT count(*) FROM forkwarden.job_kind", &[])
        .is_ok_and(|row| row.get::<_, i64>(0) == 1)));
    let mut tx = first.transaction().unwrap();
    let id: i64 = tx
        .query_one(
            "SELECT forkwarden.enqueue('mark', eta => now() + interval '1 hour', \
             identity_key => 'invoice-42')",
            &[],
        )
        .unwrap()
        .get(0);
    // A second enqueue of the key, from another connection, waits for the first
    // transaction, then sees its job.
    let url_port = cluster.port;
    let second = std::thread::spawn(move || {
        let settings = format!(
            "host=127.0.0.1 port={url_port} user=forkwarden password={PASSWORD} dbname=postgres"
        );
        let mut client = postgres::Client::connect(&settings, postgres::NoTls).unwrap();
        client
            .query_one(
                "SELECT forkwarden.enqueue('mark', identity_key => 'invoice-42')",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
    });
    std::thread::sleep(Duration::from_millis(200)); // let the second one wait on the key
    tx.commit().unwrap();
    assert_eq!(
        second.join().unwrap(),
        id,
        "the second enqueue returns the first job"
    );
    let (ok, stdout, stderr) = job_command(
        &server,
        &["enqueue", "mark", "--identity-key", "invoice-42"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), id.to_string());
    let count: i64 = first
        .query_one("SELECT count(*) FROM forkwarden.job", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    stop(server);
}

#[test]
fn a_channel_of_capacity_one_runs_one_job_at_a_time_across_hosts_in_priority_order() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let marks_file = dir.path().join("marks");
    let kinds = format!(
        "[[channel]]\nname = \"root.csv\"\ncapacity = 1\n\
         [[job]]\nname = \"csv\"\nchannel = \"root.csv\"\ncommand = [\"sh\", \"-c\", \
         \"cat > /dev/null; echo start $FORKWARDEN_JOB_ID $(date +%s.%N) >> {m}; sleep 0.2; \
         echo end $FORKWARDEN_JOB_ID $(date +%s.%N) >> {m}\"]\n",
        m = marks_file.display()
    );
    let a = host(&cluster, 2, &kinds);
    let b = host(&cluster, 2, &kinds);
    let mut client = cluster.client();
    assert!(wait_until(SOON, || client
        .query_one("SELECT count(*) FROM forkwarden.job_channel", &[])
        .is_ok_and(|row| row.get::<_, i64>(0) == 1)));
    // Enqueued in one transaction: priorities 30, 20, 10 (lower first), then five at 40.
    let mut tx = client.transaction().unwrap();
    let mut ids = Vec::new();
    for priority in [30, 20, 10, 40, 40, 40, 40, 40] {
        ids.push(
            tx.query_one(
                "SELECT forkwarden.enqueue('csv', priority => $1)",
                &[&priority],
            )
            .unwrap()
            .get::<_, i64>(0),
        );
    }
    tx.commit().unwrap();
    let last = *ids.last().unwrap();
    wait_for_state(&a, last, "done", Duration::from_secs(60));
    for id in &ids {
        wait_for_state(&a, *id, "done", SOON);
    }
    let lines = marks(&marks_file);
    let mut runs: Vec<(String, f64, f64)> = Vec::new();
    for line in &lines {
        let time: f64 = line[2].parse().unwrap();
        match line[0].as_str() {
            "start" => runs.push((line[1].clone(), time, f64::INFINITY)),
            _ => {
                if let Some(run) = runs.iter_mut().find(|run| run.0 == line[1]) {
                    run.2 = time;
                }
            }
        }
    }
    assert_eq!(runs.len(), ids.len(), "{lines:?}");
    for pair in runs.windows(2) {
        assert!(
            pair[1].1 >= pair[0].2,
            "two jobs of the channel ran at once: {pair:?}"
        );
    }
    let order: Vec<String> = runs.iter().take(3).map(|run| run.0.clone()).collect();
    assert_eq!(
        order,
        [ids[2], ids[1], ids[0]].map(|id| id.to_string()),
        "priority order"
    );
    // Each host's status counts the attempts its job workers ran: 8 in all.
    let attempts = |server: &Server| {
        let status = server.status_json();
        assert_eq!(status["job_workers"]["running"], 2, "{status:#}");
        status["job_kinds"][0]["succeeded"].as_u64().unwrap_or(0)
    };
    assert_eq!(attempts(&a) + attempts(&b), 8);
    stop(a);
    stop(b);
}

#[test]
fn a_job_worker_killed_mid_job_has_its_attempt_recorded_at_once_and_the_job_retried() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let marks_file = dir.path().join("marks");
    // The first attempt hangs; the second succeeds.
    let kinds = format!(
        "[[job]]\nname = \"post\"\nretry_pattern = {{ 1 = \"0s\" }}\n\
         command = [\"sh\", \"-c\", \"cat > /dev/null; echo attempt $FORKWARDEN_JOB_ATTEMPT \
         $$ >> {m}; test $FORKWARDEN_JOB_ATTEMPT -gt 1 || sleep 60\"]\n",
        m = marks_file.display()
    );
    let server = host(&cluster, 1, &kinds);
    let (ok, stdout, stderr) = job_command(&server, &["enqueue", "post", "--args", "{\"n\": 1}"]);
    assert!(ok, "{stderr}");
    let id: i64 = stdout.trim().parse().unwrap();
    server.wait_for_log(&format!("job post #{id} (attempt 1/5) started as pid"));
    let worker = server.workers("job worker")[0];
    // Its mark comes once its shell has read its args: a moment after it started.
    let mut first_job_pid = None;
    assert!(
        wait_until(SOON, || {
            first_job_pid = marks(&marks_file)
                .first()
                .and_then(|line| line.get(2)?.parse::<i32>().ok());
            first_job_pid.is_some()
        }),
        "the first attempt's mark"
    );
    let first_job_pid = first_job_pid.unwrap_or_default();
    let killed = Instant::now();
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    let job = wait_for_state(&server, id, "done", SOON);
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{job:#}");
    assert_eq!(attempts[0]["outcome"], "killed", "{job:#}");
    let detail = attempts[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("its job worker (pid {worker})")) && detail.contains("SIGKILL"),
        "{detail}"
    );
    assert_eq!(attempts[1]["outcome"], "done");
    // Recorded within a second, not when a lease (10 s) passed.
    let line = server.wait_for_log(&format!("job post #{id}: its job worker (pid {worker})"));
    assert!(line.contains("retried in"), "{line}");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "the retry waited for the lease"
    );
    // The first attempt's process went with its job worker.
    assert!(
        wait_until(SOON, || !common::is_alive(first_job_pid)),
        "the killed attempt's process still runs"
    );
    // This server counts both attempts (the killed one by the master) and what became of
    // the job after each (by the job worker that recorded it: the death's by the new one).
    let counted = |status: &serde_json::Value| {
        let kind = &status["job_kinds"][0];
        [
            &kind["outcomes"]["killed"],
            &kind["outcomes"]["done"],
            &kind["fates"]["retried"],
            &kind["fates"]["done"],
        ]
        .map(|count| count.as_u64().unwrap_or(0))
    };
    assert!(
        wait_until(SOON, || counted(&server.status_json()) == [1, 1, 1, 1]),
        "{:#}",
        server.status_json()["job_kinds"]
    );
    stop(server);
}

#[test]
fn a_job_past_its_kinds_limits_says_which_in_its_attempt() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let kinds = "[[job]]\nname = \"hog\"\nmax_attempts = 1\nlimit_memory_hard = \"80MiB\"\n\
         command = [\"python3\", \"-c\", \"import time; x = bytearray(300 << 20); \
         time.sleep(30)\"]\n\
         [[job]]\nname = \"slow\"\nmax_attempts = 1\nlimit_time_real = \"1s\"\n\
         command = [\"sleep\", \"30\"]\n";
    let config_extra = "memory_poll_interval = \"100ms\"\nlimit_memory_hard_rlimit = false\n";
    let server = host(&cluster, 2, &format!("{config_extra}{kinds}"));
    let (_, hog, _) = job_command(&server, &["enqueue", "hog"]);
    let (_, slow, _) = job_command(&server, &["enqueue", "slow"]);
    let hog: i64 = hog.trim().parse().expect("an id");
    let slow: i64 = slow.trim().parse().expect("an id");
    let job = wait_for_state(&server, hog, "failed", SOON);
    let attempt = &job["attempts"][0];
    assert_eq!(attempt["outcome"], "killed", "{job:#}");
    assert_eq!(attempt["limit"], "limit_memory_hard 80 MiB", "{job:#}");
    assert!(
        attempt["detail"]
            .as_str()
            .unwrap()
            .contains("killed: limit_memory_hard exceeded (rss"),
        "{job:#}"
    );
    let job = wait_for_state(&server, slow, "failed", SOON);
    let attempt = &job["attempts"][0];
    assert_eq!(attempt["outcome"], "timeout", "{job:#}");
    assert_eq!(attempt["limit"], "limit_time_real 1s", "{job:#}");
    stop(server);
}

#[test]
fn a_job_past_its_kinds_cpu_limit_is_ended_by_the_kernel_and_counted_by_outcome() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let kinds = "metrics_listen = \"127.0.0.1:0\"\n\
         [[job]]\nname = \"spin\"\nmax_attempts = 1\nlimit_time_cpu = \"1s\"\n\
         channel = \"cpu\"\ncommand = [\"python3\", \"-c\", \"while True: pass\"]\n\
         [[job]]\nname = \"idle\"\ncommand = [\"true\"]\n\
         [[channel]]\nname = \"cpu\"\ncapacity = 1\n";
    let server = host(&cluster, 1, kinds);
    let (_, spin, _) = job_command(&server, &["enqueue", "spin"]);
    let spin: i64 = spin.trim().parse().expect("an id");
    let job = wait_for_state(&server, spin, "failed", CPU_SECOND);
    let attempt = &job["attempts"][0];
    assert_eq!(attempt["outcome"], "timeout", "{job:#}");
    assert_eq!(attempt["limit"], "limit_time_cpu 1s", "{job:#}");
    assert!(
        attempt["detail"]
            .as_str()
            .unwrap()
            .contains("killed by SIGXCPU: limit_time_cpu exceeded"),
        "{job:#}"
    );
    // Ten jobs wait in the root channel (due in an hour): the next count of the queue shows
    // them, and the attempts are counted by outcome.
    for _ in 0..10 {
        job_command(&server, &["enqueue", "idle", "--delay", "1h"]);
    }
    let counted = wait_until(SOON, || {
        let status = server.status_json();
        status["job_channels"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|channel| channel["name"] == "root" && channel["waiting"] == 10)
    });
    let status = server.status_json();
    assert!(counted, "{status:#}");
    let spin_kind = &status["job_kinds"][0];
    assert_eq!(spin_kind["name"], "spin", "{status:#}");
    assert_eq!(spin_kind["outcomes"]["timeout"], 1, "{status:#}");
    assert_eq!(spin_kind["failed"], 1, "{status:#}");
    assert_eq!(spin_kind["fates"]["failed"], 1, "{status:#}");
    let line = server.wait_for_log("metrics on http://");
    let address = line
        .split("metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the metrics address");
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    let metrics = common::http_get(port, "/metrics").body;
    for expected in [
        "forkwarden_job_attempts_total{kind=\"spin\",outcome=\"timeout\"} 1",
        "forkwarden_jobs{state=\"pending\",channel=\"root\"} 10",
        "forkwarden_job_channel_capacity{channel=\"cpu\"} 1",
        "forkwarden_job_run_seconds_count{kind=\"spin\"} 1",
        "forkwarden_job_fates_total{kind=\"spin\",fate=\"failed\"} 1",
        "forkwarden_job_wait_seconds_bucket{kind=\"spin\",le=\"+Inf\"} 1",
    ] {
        assert!(metrics.contains(expected), "{expected} in:\n{metrics}");
    }
    stop(server);
}

#[test]
fn a_command_job_reports_progress_and_its_own_retry_delay_on_notify_socket() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let marks_file = dir.path().join("marks");
    // Says 2 of 5 done, marks that it did, holds on until the test has seen it, then asks
    // for its next attempt in an hour and exits 75.
    let script = format!(
        "import os, socket, time\n\
         address = os.environ['NOTIFY_SOCKET']\n\
         address = '\\0' + address[1:] if address.startswith('@') else address\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.sendto(b'PROGRESS=2/5', address)\n\
         open('{m}', 'a').write('sent\\n')\n\
         while not os.path.exists('{m}.go'): time.sleep(0.05)\n\
         s.sendto(b'RETRY_AFTER=3600', address)\n\
         raise SystemExit(75)\n",
        m = marks_file.display()
    );
    let kinds = format!("[[job]]\nname = \"steps\"\ncommand = [\"python3\", \"-c\", {script:?}]\n");
    let server = host(&cluster, 1, &kinds);
    let (_, id, _) = job_command(&server, &["enqueue", "steps"]);
    let id: i64 = id.trim().parse().expect("an id");
    assert!(wait_until(SOON, || !marks(&marks_file).is_empty()));
    // Shown by status (from the job worker's row) and written to the job's row at the next
    // lease renewal.
    let shown = wait_until(SOON, || {
        server.status_json()["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|worker| worker["progress"]["done"] == 2 && worker["progress"]["total"] == 5)
    });
    assert!(shown, "{:#}", server.status_json());
    let written = wait_until(SOON, || show(&server, id)["job"]["progress"] == "2/5");
    assert!(written, "{:#}", show(&server, id));
    std::fs::write(format!("{}.go", marks_file.display()), "").unwrap();
    let job = wait_for_state(&server, id, "pending", SOON);
    assert_eq!(job["attempts"][0]["outcome"], "retry", "{job:#}");
    let (_, listed, _) = job_command(&server, &["show", &id.to_string()]);
    assert!(listed.contains("progress: 2/5"), "{listed}");
    // Its own delay, not the kind's (half a second): not due for about an hour.
    server.wait_for_log(&format!(
        "job steps #{id} (attempt 1/5) exited with status 75"
    ));
    let line = server
        .log_text()
        .lines()
        .find(|line| line.contains(&format!("job steps #{id} (attempt 1/5) exited")))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("retried in 1h"), "{line}");
    stop(server);
}

#[test]
fn a_running_job_is_cancelled_with_sigterm() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let marks_file = dir.path().join("marks");
    let kinds = format!(
        "[[job]]\nname = \"long\"\ncommand = [\"sh\", \"-c\", \"trap 'echo terminated >> {m}; \
         exit 143' TERM; echo ready >> {m}; cat > /dev/null; sleep 60 & wait\"]\n",
        m = marks_file.display()
    );
    let server = host(&cluster, 1, &kinds);
    let (_, stdout, _) = job_command(&server, &["enqueue", "long"]);
    let id: i64 = stdout.trim().parse().expect("an id");
    server.wait_for_log(&format!("job long #{id} (attempt 1/5) started"));
    // Once its shell listens for SIGTERM (it says so).
    assert!(wait_until(SOON, || !marks(&marks_file).is_empty()));
    let (ok, said, stderr) = job_command(&server, &["cancel", &id.to_string()]);
    assert!(ok && said.contains("is running"), "{said} {stderr}");
    let job = wait_for_state(&server, id, "cancelled", SOON);
    assert_eq!(job["attempts"][0]["outcome"], "cancelled", "{job:#}");
    assert_eq!(
        marks(&marks_file),
        [["ready"], ["terminated"]],
        "the job got SIGTERM"
    );
    // A pending job is cancelled at once, and can be retried.
    let (_, stdout, _) = job_command(&server, &["enqueue", "long", "--delay", "1h"]);
    let later: i64 = stdout.trim().parse().expect("an id");
    let (ok, said, _) = job_command(&server, &["cancel", &later.to_string()]);
    assert!(ok && said.contains("cancelled"), "{said}");
    let (ok, said, _) = job_command(&server, &["retry", &later.to_string()]);
    assert!(ok && said.contains("pending again"), "{said}");
    // Due at once now: it runs, and is cancelled again.
    server.wait_for_log(&format!("job long #{later} (attempt 1/5) started"));
    let (ok, listed, _) = job_command(&server, &["list", "--state", "running"]);
    assert!(
        ok && listed.contains(&later.to_string()) && listed.contains("long"),
        "{listed}"
    );
    job_command(&server, &["cancel", &later.to_string()]);
    wait_for_state(&server, later, "cancelled", SOON);
    stop(server);
}

#[test]
fn a_call_kind_runs_in_a_process_forked_from_the_template_with_its_args() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let marks_file = dir.path().join("marks");
    let kinds = "[[job]]\nname = \"record\"\ncall = \"job_app:record\"\n\
         [[job]]\nname = \"flaky\"\ncall = \"job_app:flaky\"\nretry_pattern = { 1 = \"0s\" }\n\
         [[job]]\nname = \"broken\"\ncall = \"job_app:broken\"\nmax_attempts = 1\n\
         [[job]]\nname = \"sleep\"\ncall = \"job_app:sleep\"\nmax_attempts = 1\n\
         limit_time_real = \"1s\"\n\
         [[job]]\nname = \"steps\"\ncall = \"job_app:steps\"\n\
         [[job]]\nname = \"later\"\ncall = \"job_app:later\"\nretry_pattern = { 1 = \"0s\" }\n\
         [[job]]\nname = \"spin\"\ncall = \"job_app:spin\"\nmax_attempts = 1\n\
         limit_time_cpu = \"1s\"\n";
    let server = preloading_host(&cluster, 1, kinds);
    let path = marks_file.display().to_string();
    let args = serde_json::json!({ "path": path, "value": "hello" }).to_string();
    let (ok, stdout, stderr) = job_command(&server, &["enqueue", "record", "--args", &args]);
    assert!(ok, "{stderr}");
    let id: i64 = stdout.trim().parse().unwrap();
    wait_for_state(&server, id, "done", SOON);
    let template = server.log_matching("app template (pid ");
    let lines = marks(&marks_file);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0][0], "hello");
    assert_eq!(lines[0][1], id.to_string());
    assert!(
        template
            .iter()
            .any(|line| line.contains(&format!("(pid {})", lines[0][3]))),
        "forked from the template (parent {}): {template:?}",
        lines[0][3]
    );
    let args = serde_json::json!({ "path": path }).to_string();
    let (_, stdout, _) = job_command(&server, &["enqueue", "flaky", "--args", &args]);
    let flaky: i64 = stdout.trim().parse().unwrap();
    let job = wait_for_state(&server, flaky, "done", SOON);
    assert_eq!(job["attempts"][0]["outcome"], "retry", "{job:#}");
    let (_, stdout, _) = job_command(&server, &["enqueue", "broken"]);
    let broken: i64 = stdout.trim().parse().unwrap();
    let job = wait_for_state(&server, broken, "failed", SOON);
    assert_eq!(
        job["attempts"][0]["detail"], "exited with status 1: ValueError: no such invoice",
        "{job:#}"
    );
    // A job reports its progress: seen while it runs (written at each renewal), and at its end.
    let args = serde_json::json!({ "total": 2, "pause": 1.5 }).to_string();
    let (_, stdout, _) = job_command(&server, &["enqueue", "steps", "--args", &args]);
    let steps: i64 = stdout.trim().parse().unwrap();
    assert!(
        wait_until(SOON, || {
            let job = show(&server, steps);
            job["job"]["state"] == "running" && job["job"]["progress"] == "1/2"
        }),
        "{:#}",
        show(&server, steps)
    );
    let job = wait_for_state(&server, steps, "done", SOON);
    assert_eq!(job["job"]["progress"], "2/2", "{job:#}");
    // A job asks to be retried later than its kind would (0 s here): after 2 s.
    let args = serde_json::json!({ "seconds": 2 }).to_string();
    let (_, stdout, _) = job_command(&server, &["enqueue", "later", "--args", &args]);
    let later: i64 = stdout.trim().parse().unwrap();
    wait_for_state(&server, later, "done", SOON);
    let waited: f64 = cluster
        .client()
        .query_one(
            "SELECT EXTRACT(EPOCH FROM max(started_at) - min(ended_at))::float8 \
             FROM forkwarden.job_attempt WHERE job = $1",
            &[&later],
        )
        .unwrap()
        .get(0);
    assert!((2.0..5.0).contains(&waited), "retried after {waited}s");
    // Attempt after attempt in one process, the job worker's executor: no fork per job.
    let record = |value: &str| {
        let args = serde_json::json!({ "path": path, "value": value }).to_string();
        let (_, stdout, _) = job_command(&server, &["enqueue", "record", "--args", &args]);
        let id: i64 = stdout.trim().parse().unwrap();
        wait_for_state(&server, id, "done", SOON);
        marks(&marks_file).last().unwrap()[4].clone()
    };
    let executor = record("again");
    assert_eq!(
        record("again-and-again"),
        executor,
        "a new process for each job"
    );
    // Past its limit, the executor is killed with the job; the next job gets a new one.
    let args = serde_json::json!({ "seconds": 30 }).to_string();
    let (_, stdout, _) = job_command(&server, &["enqueue", "sleep", "--args", &args]);
    let slow: i64 = stdout.trim().parse().unwrap();
    let job = wait_for_state(&server, slow, "failed", SOON);
    assert_eq!(job["attempts"][0]["outcome"], "timeout", "{job:#}");
    assert!(wait_until(SOON, || !common::is_alive(
        executor.parse().unwrap()
    )));
    let next = record("after-the-limit");
    assert_ne!(next, executor);
    // Past its kind's CPU time, the executor is ended by the kernel (SIGXCPU), however much
    // CPU its earlier calls used; the next job gets a new one.
    let (_, stdout, _) = job_command(&server, &["enqueue", "spin"]);
    let spin: i64 = stdout.trim().parse().unwrap();
    let job = wait_for_state(&server, spin, "failed", CPU_SECOND);
    assert_eq!(job["attempts"][0]["outcome"], "timeout", "{job:#}");
    assert_eq!(job["attempts"][0]["limit"], "limit_time_cpu 1s", "{job:#}");
    assert_ne!(record("after-the-cpu-limit"), next);
    // A job worker killed mid-call: the template kills its executor (its lifeline closed).
    let (_, stdout, _) = job_command(&server, &["enqueue", "sleep", "--args", &args]);
    let hung: i64 = stdout.trim().parse().unwrap();
    server.wait_for_log(&format!("job sleep #{hung} (attempt 1/1) started"));
    let worker = server.workers("job worker")[0];
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    wait_for_state(&server, hung, "failed", SOON);
    assert!(
        wait_until(SOON, || !common::is_alive(next.parse().unwrap())),
        "the executor outlived its job worker"
    );
    stop(server);
}

/// A kind whose jobs mark their start and end (`start|end JOB TIME`) in `marks`, taking
/// `seconds`.
fn timed_kind(name: &str, marks: &Path, seconds: &str) -> String {
    format!(
        "[[job]]\nname = \"{name}\"\nretry_pattern = {{ 1 = \"0s\" }}\ncommand = [\"sh\", \"-c\", \
         \"cat > /dev/null; echo start $FORKWARDEN_JOB_ID $(date +%s.%N) >> {m}; sleep {seconds}; \
         echo end $FORKWARDEN_JOB_ID $(date +%s.%N) >> {m}\"]\n",
        m = marks.display()
    )
}

/// The runs in `marks`: (job, start, end if it ended), by start.
fn runs(marks_file: &Path) -> Vec<(String, f64, Option<f64>)> {
    let mut runs: Vec<(String, f64, Option<f64>)> = Vec::new();
    for line in marks(marks_file) {
        let time: f64 = line[2].parse().unwrap();
        match line[0].as_str() {
            "start" => runs.push((line[1].clone(), time, None)),
            _ => {
                if let Some(run) = runs.iter_mut().rev().find(|run| run.0 == line[1]) {
                    run.2 = Some(time);
                }
            }
        }
    }
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    runs
}

#[test]
fn a_host_killed_whole_has_its_job_resumed_by_another_after_the_lease() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let marks_file = dir.path().join("marks");
    // A short lease: a dead host's job is taken over 3 s after its last renewal.
    let kinds = format!(
        "cron_lease = \"3s\"\n{}",
        timed_kind("long", &marks_file, "2")
    );
    // Host a alone takes the job.
    let mut a = host(&cluster, 1, &kinds);
    let (_, stdout, _) = job_command(&a, &["enqueue", "long"]);
    let id: i64 = stdout.trim().parse().expect("an id");
    a.wait_for_log(&format!("job long #{id} (attempt 1/5) started"));
    // Once its shell has marked its start.
    assert!(wait_until(SOON, || !marks(&marks_file).is_empty()));
    let b = host(&cluster, 1, &kinds);
    // The whole host a dies at once: its master, its workers, the job with them.
    a.signal(Signal::SIGKILL);
    let _ = a.wait_exit(SOON);
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let job = wait_for_state(&b, id, "done", Duration::from_secs(30));
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{job:#}");
    assert_eq!(attempts[0]["outcome"], "lost", "{job:#}");
    assert!(
        attempts[0]["detail"]
            .as_str()
            .unwrap()
            .contains("stopped renewing its lease"),
        "{job:#}"
    );
    let runs = runs(&marks_file);
    assert_eq!(runs.len(), 2, "{runs:?}");
    // The first run died with its host before it ended; the second began after that.
    assert_eq!(runs[0].2, None, "{runs:?}");
    assert!(
        runs[1].1 >= killed,
        "the retry began before the host died: {runs:?}"
    );
    assert!(runs[1].2.is_some(), "{runs:?}");
    stop(b);
}

#[test]
fn the_database_away_for_five_seconds_runs_nothing_twice_and_http_goes_on() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let marks_file = dir.path().join("marks");
    let kinds = format!(
        "cron_lease = \"20s\"\n{}",
        timed_kind("step", &marks_file, "1")
    );
    let server = host(&cluster, 2, &kinds);
    let mut ids = Vec::new();
    for _ in 0..6 {
        let (_, stdout, _) = job_command(&server, &["enqueue", "step"]);
        ids.push(stdout.trim().parse::<i64>().expect("an id"));
    }
    server.wait_for_log("job step #");
    cluster.stop();
    let away = Instant::now();
    while away.elapsed() < Duration::from_secs(5) {
        assert_eq!(common::http_get(server.port, "/").status, 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.start_again();
    for id in &ids {
        wait_for_state(&server, *id, "done", Duration::from_secs(60));
    }
    let runs = runs(&marks_file);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for run in &runs {
        *seen.entry(run.0.as_str()).or_default() += 1;
    }
    assert!(
        seen.values().all(|count| *count == 1) && seen.len() == ids.len(),
        "each job ran once: {runs:?}\n{}",
        server.log_text()
    );
    server.wait_for_log("cannot reach the job store");
    server.wait_for_log("is reachable again after");
    stop(server);
}
