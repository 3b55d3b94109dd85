//! A bad config never starts a half-working server: it is rejected, with exit status 2 and
//! a message naming the key and line, before anything is bound or forked.

mod common;

use common::{config_text, run_binary};

/// Runs the server on `config` and asserts it refused to start, naming `key` and `line`.
fn assert_rejected(config: &str, key: &str, line: usize, also: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr, _) = run_binary(dir.path(), config, &[]);
    assert_eq!(
        status.code(),
        Some(2),
        "config:\n{config}\nstderr:\n{stderr}"
    );
    let location = format!("forkwarden.toml:{line}: {key}:");
    assert!(
        stderr.contains(&location),
        "expected {location:?} in:\n{stderr}"
    );
    assert!(stderr.contains(also), "expected {also:?} in:\n{stderr}");
    assert!(
        !stderr.contains("listening on"),
        "nothing may be bound:\n{stderr}"
    );
}

#[test]
fn unknown_keys_are_rejected_with_what_is_accepted() {
    assert_rejected(
        "workers = 2\nwrkers = 3\n",
        "wrkers",
        2,
        "unknown key `wrkers`; did you mean `workers`?",
    );
}

#[test]
fn wrong_types_are_rejected_with_the_value() {
    assert_rejected(
        "http_port = 0\nworkers = \"four\"\n",
        "workers",
        2,
        "\"four\"",
    );
    assert_rejected(
        "demo_fault_endpoints = 1\n",
        "demo_fault_endpoints",
        1,
        "expected a boolean",
    );
    assert_rejected(
        "http_interface = \"localhost\"\n",
        "http_interface",
        1,
        "127.0.0.1",
    );
}

#[test]
fn nothing_to_run_is_rejected() {
    assert_rejected(
        "workers = 0\nmax_cron_threads = 0\n",
        "workers",
        1,
        "nothing to run",
    );
}

#[test]
fn a_soft_memory_limit_above_the_hard_one_is_rejected() {
    assert_rejected(
        "limit_memory_hard = \"1GiB\"\nlimit_memory_soft = \"2GiB\"\n",
        "limit_memory_soft",
        2,
        "larger than limit_memory_hard",
    );
}

#[test]
fn negative_sizes_and_unknown_units_are_rejected() {
    assert_rejected(
        "limit_memory_hard = -1\n",
        "limit_memory_hard",
        1,
        "negative size -1",
    );
    assert_rejected(
        "limit_memory_soft = \"12 parsecs\"\n",
        "limit_memory_soft",
        1,
        "\"512MiB\"",
    );
    assert_rejected(
        "limit_memory_soft = \"512M\"\n",
        "limit_memory_soft",
        1,
        "512MiB",
    );
    assert_rejected(
        "limit_time_real = \"soon\"\n",
        "limit_time_real",
        1,
        "\"90s\"",
    );
}

#[test]
fn a_syntax_error_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr, _) = run_binary(dir.path(), "workers = 2\nhttp_port = = 3\n", &[]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("forkwarden.toml:2:"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::BINARY)
        .arg("--config")
        .arg(dir.path().join("absent.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file"));
}

#[test]
fn check_prints_the_effective_settings_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let (status, _, stdout) = run_binary(dir.path(), "workers = 5\n", &["check"]);
    assert!(status.success());
    assert!(stdout.contains("workers = 5\n"), "{stdout}");
    assert!(
        stdout.contains("limit_memory_hard = \"2560MiB\"\n"),
        "{stdout}"
    );
    assert!(stdout.contains("limit_time_real_cron = -1\n"), "{stdout}");
    let (status, stderr, _) = run_binary(dir.path(), "workers = -5\n", &["check"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/forkwarden.toml");
    let output = std::process::Command::new(common::BINARY)
        .args(["check", "--config"])
        .arg(example)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_port_in_use_is_reported_and_nothing_is_forked() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(&format!("http_port = {port}"));
    let (status, stderr, _) = run_binary(dir.path(), &config, &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("started as pid"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}

/// Asserts a config with `job` (a `[[cron]]` table) is rejected naming the job and `key`.
fn assert_job_rejected(job: &str, key: &str, also: &str) {
    let config = format!("workers = 1\n\n[[cron]]\n{job}");
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr, _) = run_binary(dir.path(), &config, &[]);
    assert_eq!(
        status.code(),
        Some(2),
        "config:\n{config}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(": {key}: ")),
        "expected key {key} in:\n{stderr}"
    );
    assert!(stderr.contains(also), "expected {also:?} in:\n{stderr}");
}

#[test]
fn each_bad_cron_job_is_rejected_with_its_name() {
    assert_job_rejected(
        "name = \"empty\"\ninterval = \"1m\"\ncommand = []\n",
        "cron[0].command",
        "cron job \"empty\": command is empty",
    );
    assert_job_rejected(
        "name = \"typo\"\ninterval = \"1m\"\ncomand = [\"true\"]\n",
        "cron[0].comand",
        "cron job \"typo\": unknown key `comand`; did you mean `command`?",
    );
    assert_job_rejected(
        "name = \"bad-schedule\"\nschedule = \"61 * * * *\"\ncommand = [\"true\"]\n",
        "cron[0].schedule",
        "cron job \"bad-schedule\": cannot parse \"61 * * * *\"",
    );
    assert_job_rejected(
        "name = \"both\"\nschedule = \"* * * * *\"\ninterval = \"1m\"\ncommand = [\"true\"]\n",
        "cron[0].schedule",
        "cron job \"both\": give exactly one of schedule",
    );
    assert_job_rejected(
        "name = \"neither\"\ncommand = [\"true\"]\n",
        "cron[0].name",
        "cron job \"neither\": give exactly one of schedule",
    );
    assert_job_rejected(
        "name = \"twice\"\ninterval = \"1m\"\ncommand = [\"true\"]\n\n\
         [[cron]]\nname = \"twice\"\ninterval = \"2m\"\ncommand = [\"true\"]\n",
        "cron[1].name",
        "cron job \"twice\" is declared twice",
    );
    assert_job_rejected(
        "name = \"../escape\"\ninterval = \"1m\"\ncommand = [\"true\"]\n",
        "cron[0].name",
        "cron job name \"../escape\" is not usable",
    );
}

#[test]
fn a_bad_job_is_located_at_its_own_line() {
    let config = "workers = 1\n\n[[cron]]\nname = \"ok\"\ninterval = \"1m\"\ncommand = [\"true\"]\n\n\
                  [[cron]]\nname = \"broken\"\nschedule = \"nope\"\ncommand = [\"true\"]\n";
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr, _) = run_binary(dir.path(), config, &[]);
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("forkwarden.toml:10: cron[1].schedule: cron job \"broken\""),
        "{stderr}"
    );
}

#[test]
fn check_refuses_what_would_not_start() {
    assert_rejected(
        "workers = 1\n[app]\ncommand = [\"pyhton3\", \"-m\", \"app\"]\n",
        "app.command",
        3,
        "program \"pyhton3\" was not found in PATH",
    );
    assert_rejected(
        "workers = 1\n[[cron]]\nname = \"report\"\ninterval = \"1h\"\n\
         command = [\"/no/such/report\"]\n",
        "cron[0].command",
        5,
        "program \"/no/such/report\" does not exist",
    );
    assert_rejected(
        "data_dir = \"/proc/version/data\"\n[[cron]]\nname = \"report\"\n\
         interval = \"1h\"\ncommand = [\"true\"]\n",
        "data_dir",
        1,
        "/proc/version is not a directory",
    );
    assert_rejected(
        "pidfile = \"/no/such/dir/fw.pid\"\n",
        "pidfile",
        1,
        "its directory does not exist",
    );
    assert_rejected(
        "user = \"no-such-user-forkwarden\"\n",
        "user",
        1,
        "no user \"no-such-user-forkwarden\" on this system",
    );
    // `check` says the same, before anything runs.
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr, _) =
        run_binary(dir.path(), "[app]\ncommand = [\"pyhton3\"]\n", &["check"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("app.command"), "{stderr}");
}

#[test]
fn a_job_name_too_long_for_a_file_name_is_rejected() {
    assert_job_rejected(
        &format!(
            "name = \"{}\"\ninterval = \"1m\"\ncommand = [\"true\"]\n",
            "j".repeat(101)
        ),
        "cron[0].name",
        "expected 1 to 100 letters",
    );
}

#[test]
fn a_server_that_cannot_start_never_says_it_listens() {
    // pid 1 is always alive: the pid file says another server runs.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fw.pid"), "1\n").unwrap();
    let config = config_text("pidfile = \"fw.pid\"");
    let (status, stderr, _) = run_binary(dir.path(), &config, &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is forkwarden already running?"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[test]
fn a_bad_or_taken_metrics_address_is_rejected_naming_metrics_listen() {
    assert_rejected(
        "metrics_listen = \"localhost\"\n",
        "metrics_listen",
        1,
        "\"localhost\" is not an IP address with a port",
    );
    assert_rejected(
        "http_port = 8069\nmetrics_listen = \"127.0.0.1:8069\"\n",
        "metrics_listen",
        2,
        "is the HTTP workers' address",
    );
    // A port another process holds: the server does not start (exit status 1).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(&format!("metrics_listen = \"{address}\""));
    let (status, stderr, _) = run_binary(dir.path(), &config, &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {address} (metrics_listen)")),
        "{stderr}"
    );
    assert!(!stderr.contains("started as pid"), "{stderr}");
}
