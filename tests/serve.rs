//! `forkwarden serve MODULE:APP`: a WSGI application served without a config file, with
//! gunicorn's flags, and `check` loading the application before a start.

mod common;

use std::process::{Command, Stdio};

use common::{BINARY, SOON, Server, http_get, python_runner_path, run_binary, wait_until};
use nix::sys::signal::Signal;

const HELLO: &str = r"import os

def app(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [('hello from %d' % os.getpid()).encode()]
";

/// The environment that finds forkwarden_wsgi, as an install into the Python would.
fn python_env() -> Vec<(&'static str, String)> {
    vec![("PYTHONPATH", python_runner_path().to_string())]
}

/// Runs `forkwarden serve ARGS --check` in a directory holding hello.py; returns the exit
/// status and what it printed (stdout, then stderr).
fn serve_check(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.py"), HELLO).unwrap();
    let output = Command::new(BINARY)
        .arg("serve")
        .args(args)
        .arg("--check")
        .current_dir(dir.path())
        .envs(python_env())
        .stdin(Stdio::null())
        .output()
        .expect("run forkwarden serve --check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn serve_runs_a_wsgi_app_from_the_current_directory_without_a_config() {
    let server = Server::serve(
        &[
            "hello:app",
            "-w",
            "3",
            "-b",
            "127.0.0.1:0",
            "--max-requests",
            "1000",
        ],
        &[("hello.py", HELLO)],
        &python_env(),
    );
    assert!(server.port > 0, "{}", server.log_text());
    assert!(
        wait_until(SOON, || http_get(server.port, "/")
            .body
            .starts_with("hello from")),
        "{}",
        server.log_text()
    );
    assert_eq!(server.wait_for_workers("http worker", 3).len(), 3);
    server.wait_for_log("config serve hello:app");
    // No cron worker idles without jobs.
    assert!(server.log_matching("cron worker 0").is_empty());
    // A reload keeps what the command line said.
    server.signal(Signal::SIGHUP);
    server.wait_for_log("starting generation 2 (3 http, 0 cron workers)");
    assert!(wait_until(SOON, || {
        server.log_matching("stopped (replaced after reload)").len() == 3
    }));
    assert!(http_get(server.port, "/").body.starts_with("hello from"));
}

#[test]
fn serve_with_preload_forks_the_workers_from_a_template() {
    let server = Server::serve(
        &["hello:app", "--preload", "-w", "2", "-b", "127.0.0.1:0"],
        &[("hello.py", HELLO)],
        &python_env(),
    );
    server.wait_for_log("loaded the application in");
    assert!(wait_until(SOON, || http_get(server.port, "/").status == 200));
}

#[test]
fn serve_of_an_app_that_cannot_be_imported_exits_naming_the_error() {
    let mut server = Server::serve(
        &["nosuchmodule:app", "-b", "127.0.0.1:0"],
        &[],
        &python_env(),
    );
    let line = server.wait_start_failure();
    assert!(
        line.contains("ModuleNotFoundError: No module named 'nosuchmodule'"),
        "{line}"
    );
}

#[test]
fn serve_check_loads_the_app_and_prints_the_settings() {
    let (status, text) = serve_check(&["hello:app", "-w", "5", "--timeout", "30"]);
    assert_eq!(status, Some(0), "{text}");
    assert!(
        text.contains("# the application loads (hello:app)"),
        "{text}"
    );
    assert!(text.contains("workers = 5"), "{text}");
    assert!(text.contains("limit_time_real = \"30s\""), "{text}");
    assert!(text.contains("nonblocking = true"), "{text}");

    let (status, text) = serve_check(&["hello:nothing"]);
    assert_eq!(status, Some(2), "{text}");
    assert!(text.contains("AttributeError"), "{text}");
    assert!(text.contains("the application did not load"), "{text}");
}

#[test]
fn serve_flags_are_checked_and_named() {
    let (status, text) = serve_check(&["hello:app", "-b", "somewhere:80"]);
    assert_eq!(status, Some(2), "{text}");
    assert!(text.contains("is not an address to listen on"), "{text}");
    let (status, text) = serve_check(&["hello:app", "-w", "5000"]);
    assert_eq!(status, Some(2), "{text}");
    assert!(text.contains("--workers: 5000 is more workers"), "{text}");
    let (status, text) = serve_check(&["hello:app", "--python", "/nonexistent/python3"]);
    assert_eq!(status, Some(2), "{text}");
    assert!(text.contains("--python: "), "{text}");
}

#[test]
fn check_catches_a_python_without_forkwarden_wsgi_and_a_wrong_nonblocking() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.py"), HELLO).unwrap();
    // The system's Python, without the package on its path.
    let config = "workers = 1\nhttp_port = 0\n[app]\n\
                  command = [\"python3\", \"-m\", \"forkwarden_wsgi\", \"hello:app\"]\n";
    let (status, stderr, _) = run_binary(dir.path(), config, &["check"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("No module named forkwarden_wsgi"),
        "{stderr}"
    );
    assert!(stderr.contains("the application did not load"), "{stderr}");

    let config = format!("{config}nonblocking = false\n");
    let (status, stderr, _) = run_binary(dir.path(), &config, &["check"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("app.nonblocking: forkwarden_wsgi waits for the listening socket"),
        "{stderr}"
    );
}
