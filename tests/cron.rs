//! Cron workers: scheduled jobs run exactly once per due time, inside their limits, with
//! results that survive a restart. (`{dir}` in a config is the server's temp directory.)

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{SOON, Server, cron_list, is_alive, pid_after, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A job that appends `start <time>` and `end <time>` to `{dir}/marks` around a sleep.
fn marking_job(name: &str, interval: &str, sleep: &str) -> String {
    format!(
        "[[cron]]\nname = \"{name}\"\ninterval = \"{interval}\"\ncommand = [\"sh\", \"-c\", \
         \"echo start $(date +%s.%N) >> {{dir}}/marks; sleep {sleep}; \
         echo end $(date +%s.%N) >> {{dir}}/marks\"]\n"
    )
}

/// (kind, time) for each line of `{dir}/marks`.
fn marks(dir: &Path) -> Vec<(String, f64)> {
    std::fs::read_to_string(dir.join("marks"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (kind, time) = line.split_once(' ')?;
            Some((kind.to_string(), time.parse().ok()?))
        })
        .collect()
}

fn count(dir: &Path, kind: &str) -> usize {
    marks(dir).iter().filter(|(k, _)| k == kind).count()
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn an_interval_job_runs_repeatedly_about_its_interval_apart() {
    let server = Server::spawn(&format!(
        "workers = 1\nmax_cron_threads = 1\n{}",
        marking_job("tick", "1s", "0")
    ));
    let dir = server.dir.path();
    assert!(
        wait_until(SOON, || count(dir, "start") >= 3),
        "{}",
        server.log_text()
    );
    let starts: Vec<f64> = marks(dir)
        .into_iter()
        .filter(|(kind, _)| kind == "start")
        .map(|(_, time)| time)
        .collect();
    // Each run is claimed 1 s after the previous claim; the markers are written once the
    // shell is running, which delays each by the time a process takes to start: tens of ms,
    // up to most of a second on a machine running two test suites at once. A late start
    // brings the next one closer, so two neighbours prove little; the k-th run counted
    // from the first cannot come before k intervals, less the first one's delay.
    for (k, start) in starts.iter().enumerate().skip(1) {
        assert!(
            start - starts[0] >= k as f64 - 0.5,
            "runs too close: {starts:?}"
        );
    }
    server.wait_for_log_all(&["cron job tick (pid ", "exited with status 0 after"]);
}

#[test]
fn two_cron_workers_never_run_the_same_job_at_once() {
    let server = Server::spawn(&format!(
        "workers = 1\nmax_cron_threads = 2\n{}",
        marking_job("slow", "1s", "1.5")
    ));
    server.wait_for_workers("cron worker", 2);
    let dir = server.dir.path();
    assert!(
        wait_until(Duration::from_secs(20), || count(dir, "end") >= 3),
        "{}",
        server.log_text()
    );
    let marks = marks(dir);
    for (index, (kind, _)) in marks.iter().enumerate() {
        let expected = if index % 2 == 0 { "start" } else { "end" };
        assert_eq!(kind, expected, "runs overlapped: {marks:?}");
    }
    for pair in marks.windows(2) {
        assert!(pair[1].1 >= pair[0].1, "out of order: {marks:?}");
    }
}

/// A server running a job that starts a sleeping child and hangs; returns the child's pid.
fn hanging_job(settings: &str, timeout: &str) -> (Server, i32) {
    let server = Server::spawn(&format!(
        "workers = 1\nmax_cron_threads = 1\n{settings}\n[[cron]]\nname = \"hang\"\n\
         interval = \"1h\"\n{timeout}\
         command = [\"sh\", \"-c\", \"sleep 60 & echo $! > {{dir}}/child.pid; wait\"]\n"
    ));
    let child_pid = server.dir.path().join("child.pid");
    let written = || {
        lines_of(&child_pid)
            .first()
            .and_then(|pid| pid.parse().ok())
    };
    assert!(
        wait_until(SOON, || written().is_some()),
        "{}",
        server.log_text()
    );
    let child = written().unwrap_or_default();
    (server, child)
}

#[test]
fn a_job_past_its_timeout_is_killed_with_its_children() {
    let (server, child) = hanging_job("", "timeout = \"1s\"\n");
    let line = server.wait_for_log("cron job hang (pid ");
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains("failed: killed with its process group: timeout exceeded (running "),
        "{line}"
    );
    assert!(
        wait_until(SOON, || !is_alive(child)),
        "the job's sleeping child survived"
    );
}

#[test]
fn cron_jobs_respect_limit_time_real_cron() {
    let (server, child) = hanging_job("limit_time_real_cron = 1", "");
    let line = server.wait_for_log("killed with its process group: limit_time_real_cron exceeded");
    assert!(line.contains("> 1s)"), "{line}");
    assert!(wait_until(SOON, || !is_alive(child)));
}

#[test]
fn a_sigkilled_cron_worker_takes_its_job_down_and_the_run_is_not_doubled() {
    let server = Server::spawn(
        "workers = 1\nmax_cron_threads = 1\n[[cron]]\nname = \"long\"\ninterval = \"1h\"\n\
         command = [\"sh\", \"-c\", \"echo run >> {dir}/runs; sleep 60\"]\n",
    );
    let started = server.wait_for_log("cron job long started as pid ");
    let job = pid_after(&started, "as pid ");
    let runs = server.dir.path().join("runs");
    assert!(
        wait_until(SOON, || lines_of(&runs).len() == 1),
        "the job never got going"
    );
    let worker = server.wait_for_workers("cron worker", 1)[0];
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    server.wait_for_log_all(&[
        &format!("(pid {worker}) died: killed by SIGKILL while running job long"),
        "its job's process group",
    ]);
    assert!(
        wait_until(SOON, || !is_alive(job)),
        "the job outlived its cron worker"
    );
    let replacement = server.wait_for_workers("cron worker", 1)[0];
    assert_ne!(replacement, worker);
    server.wait_until_idle("cron worker");
    assert_eq!(
        lines_of(&runs).len(),
        1,
        "the interrupted run is not repeated before its next due time"
    );
    let (status, list) = cron_list(&server.config_path);
    assert!(status.success());
    assert!(list.contains("interrupted: its cron worker died"), "{list}");
}

#[test]
fn results_survive_a_restart_and_do_not_rerun_the_job() {
    let server = Server::spawn(
        "workers = 1\nmax_cron_threads = 1\n[[cron]]\nname = \"hourly\"\ninterval = \"1h\"\n\
         command = [\"sh\", \"-c\", \"echo run >> {dir}/runs\"]\n",
    );
    server.wait_for_log("cron job hourly (pid ");
    let server = server.restart();
    server.wait_for_workers("cron worker", 1);
    server.wait_until_idle("cron worker");
    assert_eq!(lines_of(&server.dir.path().join("runs")).len(), 1);
    let (_, list) = cron_list(&server.config_path);
    let row = list
        .lines()
        .find(|line| line.starts_with("hourly"))
        .unwrap_or_default();
    assert!(
        row.contains("every 1h") && row.contains("exited with status 0"),
        "{list}"
    );
}

#[test]
fn a_run_missed_while_down_is_caught_up_once_or_skipped() {
    let job = |name: &str, catch_up: bool| {
        format!(
            "[[cron]]\nname = \"{name}\"\ninterval = \"1h\"\ncatch_up = {catch_up}\n\
             command = [\"sh\", \"-c\", \"echo {name} >> {{dir}}/runs\"]\n"
        )
    };
    // No cron worker at first: write the state of two jobs that fell due an hour ago,
    // while "no server ran", then restart with cron workers.
    let server = Server::spawn(&format!(
        "workers = 1\nmax_cron_threads = 0\n{}{}",
        job("eager", true),
        job("lazy", false)
    ));
    server.wait_for_log("listening on http://");
    // The cron workers make it; there are none yet.
    let state_dir = server.dir.path().join("forkwarden-data/cron");
    std::fs::create_dir_all(&state_dir).unwrap();
    let hour_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 3_600_000;
    for name in ["eager", "lazy"] {
        let state = format!("next_run_ms = {hour_ago}\nruns = 4\n");
        std::fs::write(state_dir.join(format!("{name}.state.toml")), state).unwrap();
    }
    let text = std::fs::read_to_string(&server.config_path).unwrap();
    std::fs::write(
        &server.config_path,
        text.replace("max_cron_threads = 0", "max_cron_threads = 1"),
    )
    .unwrap();
    let server = server.restart();
    server.wait_for_log("cron job eager: the run due ");
    server.wait_for_log("cron job eager (pid ");
    server.wait_for_log("cron job lazy: the run due ");
    server.wait_for_log("skipped (catch_up = false)");
    server.wait_until_idle("cron worker");
    let runs = lines_of(&server.dir.path().join("runs"));
    assert_eq!(
        runs,
        ["eager"],
        "caught up once, and only with catch_up = true"
    );
}

#[test]
fn a_job_inherits_only_its_standard_streams() {
    let server = Server::spawn(
        "workers = 1\nmax_cron_threads = 1\n[[cron]]\nname = \"fds\"\ninterval = \"1h\"\n\
         command = [\"sh\", \"-c\", \"ls /proc/self/fd | sort -n | tr '\\\\n' ' '\"]\n",
    );
    // `ls` itself opens one descriptor (3) to read the directory; nothing may follow it.
    let line = server.wait_for_log("cron job fds: ");
    assert!(line.trim_end().ends_with("cron job fds: 0 1 2 3"), "{line}");
}

#[test]
fn a_carriage_return_in_a_jobs_output_cannot_forge_a_log_line() {
    let server = Server::spawn(
        "workers = 1\nmax_cron_threads = 1\n[[cron]]\nname = \"forger\"\ninterval = \"1h\"\n\
         command = [\"printf\", \"done\\\\rERROR everything is on fire\\\\033[2K\\\\n\"]\n",
    );
    let line = server.wait_for_log("cron job forger: ");
    assert!(
        line.ends_with("cron job forger: done\\x0dERROR everything is on fire\\x1b[2K"),
        "{line:?}"
    );
}

#[test]
fn json_log_lines_carry_a_run_s_job_pid_and_result_and_its_output_s_source() {
    let server = Server::spawn(
        "workers = 1\nmax_cron_threads = 1\nlog_format = \"json\"\n[[cron]]\nname = \"say\"\n\
         interval = \"1h\"\ncommand = [\"sh\", \"-c\", \"echo hello from the job; exit 3\"]\n",
    );
    let parse = |line: String| -> serde_json::Value {
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"))
    };
    let started = parse(server.wait_for_log("\"event\":\"cron_run_started\""));
    assert_eq!(started["job"], "say", "{started}");
    assert_eq!(started["run"], 1, "{started}");
    let pid = started["pid"].as_i64().expect("the job's pid");
    let ended = parse(server.wait_for_log("\"event\":\"cron_run_ended\""));
    assert_eq!(
        (&ended["job"], &ended["pid"], &ended["succeeded"]),
        (&"say".into(), &pid.into(), &false.into()),
        "{ended}"
    );
    assert_eq!(ended["result"], "exited with status 3", "{ended}");
    assert!(ended["duration"].as_f64().is_some(), "{ended}");
    let output = parse(server.wait_for_log("hello from the job"));
    assert_eq!(output["event"], "program_output", "{output}");
    assert_eq!(output["stream"], "stdout", "{output}");
    assert!(
        output["source"]
            .as_str()
            .is_some_and(|source| source.contains("say")),
        "{output}"
    );
}

/// `forkwarden cron history NAME --json` on `server`'s config: one JSON object per run.
fn history(server: &Server, name: &str) -> Vec<serde_json::Value> {
    let output = std::process::Command::new(common::BINARY)
        .args(["cron", "history", name, "--json", "--config"])
        .arg(&server.config_path)
        .output()
        .expect("run forkwarden cron history");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON run"))
        .collect()
}

#[test]
fn the_history_records_each_run_and_an_interrupted_one_with_its_host_and_worker() {
    let server = Server::spawn(
        "workers = 1\nmax_cron_threads = 1\n[[cron]]\nname = \"long\"\ninterval = \"2s\"\n\
         command = [\"sh\", \"-c\", \"if [ -f {dir}/once ]; then echo quick; exit 3; fi; \
         touch {dir}/once; sleep 60\"]\n",
    );
    // Killed once the first run is under way (it left its mark), not before it began.
    let once = server.dir.path().join("once");
    assert!(wait_until(SOON, || once.exists()), "{}", server.log_text());
    let worker = server.wait_for_workers("cron worker", 1)[0];
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    // The replacement claims the next due run, and notes the interrupted one first.
    let mut runs = Vec::new();
    assert!(
        wait_until(SOON, || {
            runs = history(&server, "long");
            runs.len() >= 2
        }),
        "{runs:?}\n{}",
        server.log_text()
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let interrupted = &runs[0];
    assert_eq!(interrupted["host"], host.trim(), "{interrupted}");
    assert_eq!(interrupted["pid"], worker, "{interrupted}");
    assert_eq!(interrupted["succeeded"], false, "{interrupted}");
    assert!(
        interrupted["result"]
            .as_str()
            .is_some_and(|result| result
                .contains(&format!("interrupted: its cron worker (pid {worker}) died"))),
        "{interrupted}"
    );
    let quick = &runs[1];
    assert_eq!(quick["result"], "exited with status 3", "{quick}");
    assert_eq!(quick["exit_status"], 3, "{quick}");
    assert_eq!(
        quick["output_tail"],
        serde_json::json!(["quick"]),
        "{quick}"
    );
    assert!(
        quick["pid"]
            .as_i64()
            .is_some_and(|pid| pid != i64::from(worker)),
        "{quick}"
    );
    // The table says the same, with the last lines of the last run.
    let output = std::process::Command::new(common::BINARY)
        .args(["cron", "history", "long", "--config"])
        .arg(&server.config_path)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("interrupted: its cron worker"), "{table}");
    assert!(table.contains("last lines of the last run"), "{table}");
    assert!(table.contains("  quick"), "{table}");
}

#[test]
fn cron_run_asks_for_one_run_now_which_one_worker_takes_and_the_schedule_stays() {
    let server = Server::spawn(
        "workers = 1\nmax_cron_threads = 2\n[[cron]]\nname = \"hourly\"\ninterval = \"1h\"\n\
         command = [\"sh\", \"-c\", \"echo run >> {dir}/runs\"]\n",
    );
    let runs = server.dir.path().join("runs");
    assert!(
        wait_until(SOON, || lines_of(&runs).len() == 1),
        "{}",
        server.log_text()
    );
    server.wait_for_workers("cron worker", 2);
    let next_run = |list: &str| {
        list.lines()
            .find(|line| line.starts_with("hourly"))
            .map(|row| row.split("  ").nth(2).unwrap_or_default().to_string())
    };
    let (_, before) = cron_list(&server.config_path);
    let output = std::process::Command::new(common::BINARY)
        .args(["cron", "run", "hourly", "--config"])
        .arg(&server.config_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("asked for a run of hourly"),
        "{output:?}"
    );
    server.wait_for_log("running it now, as `forkwarden cron run` asked");
    assert!(
        wait_until(SOON, || lines_of(&runs).len() == 2),
        "{}",
        server.log_text()
    );
    // One run for one ask, whichever of the two cron workers took it: the ask is gone with
    // its claim, and the next due time is where the schedule put it (an hour on).
    let asked = server
        .dir
        .path()
        .join("forkwarden-data/cron/hourly.run-asked");
    assert!(!asked.exists(), "the ask outlived its run");
    assert_eq!(
        server.log_matching("as `forkwarden cron run` asked").len(),
        1,
        "{}",
        server.log_text()
    );
    let (_, after) = cron_list(&server.config_path);
    assert_eq!(next_run(&before), next_run(&after), "{before}\n{after}");
    // An unknown job is refused, naming the known ones.
    let output = std::process::Command::new(common::BINARY)
        .args(["cron", "run", "nope", "--config"])
        .arg(&server.config_path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("no [[cron]] job named \"nope\" in the config (jobs: hourly)"),
        "{error}"
    );
}
