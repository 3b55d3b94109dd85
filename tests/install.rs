//! The newcomer's path, end to end: the wheel `pip install .` builds, installed into a fresh
//! virtual environment with Flask, gives a `forkwarden` command that serves a Flask app with
//! `forkwarden serve`, and stops, naming the error, on an app that cannot be imported.
//!
//! The wheel here is built in the dev profile around the binary the tests already built
//! (FORKWARDEN_BINARY), to keep the suite short; `.ci/run` builds the release wheel into
//! dist/ the same way, without those two shortcuts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{BINARY, SOON, Server, cannot_check, http_get, wait_until};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

const FLASK_APP: &str = r#"from flask import Flask

app = Flask(__name__)

@app.route("/")
def index():
    return "hello from flask"
"#;

/// Runs `command`; its combined output if it failed.
fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{command:?}: {error}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{command:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// A new virtual environment at `dir` with `packages` from PyPI; None (said why) if PyPI
/// cannot be reached.
fn venv_with(dir: &Path, packages: &[&str]) -> Option<PathBuf> {
    run(Command::new("python3").args(["-m", "venv"]).arg(dir)).expect("python3 -m venv");
    if packages.is_empty() {
        return Some(dir.to_path_buf());
    }
    match run(Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet"])
        .args(packages))
    {
        Ok(()) => Some(dir.to_path_buf()),
        Err(error) => {
            cannot_check(&format!("pip cannot install {packages:?}: {error}"));
            None
        }
    }
}

/// Builds the wheel from this checkout into `dist`; its path.
fn build_wheel(tools: &Path, dist: &Path) -> PathBuf {
    run(Command::new(tools.join("bin/pip"))
        .args([
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
        ])
        .arg(dist)
        .arg(REPO)
        .env("FORKWARDEN_BINARY", BINARY)
        // maturin, from the tools' environment, as an activated one would have it.
        .env(
            "PATH",
            format!(
                "{}:{}",
                tools.join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("MATURIN_PEP517_ARGS", "--profile dev"))
    .expect("pip wheel of the checkout");
    std::fs::read_dir(dist)
        .expect("dist")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .expect("a wheel in dist")
}

#[test]
fn a_wheel_installed_in_a_fresh_venv_serves_a_flask_app() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(tools) = venv_with(&scratch.path().join("tools"), &["maturin>=1.5,<2"]) else {
        return;
    };
    let wheel = build_wheel(&tools, &scratch.path().join("dist"));
    let Some(user) = venv_with(&scratch.path().join("user"), &["flask"]) else {
        return;
    };
    run(Command::new(user.join("bin/pip"))
        .args(["install", "--quiet"])
        .arg(&wheel))
    .expect("pip install of the wheel");
    // The command is in the environment's bin/, beside its python.
    let forkwarden = user.join("bin/forkwarden");
    assert!(forkwarden.is_file(), "no {}", forkwarden.display());

    let server = Server::serve_with(
        &forkwarden,
        &["myapp:app", "-b", "127.0.0.1:0"],
        &[("myapp.py", FLASK_APP)],
        &[],
    );
    assert!(server.port > 0, "{}", server.log_text());
    assert!(
        wait_until(SOON, || http_get(server.port, "/").body
            == "hello from flask"),
        "{}",
        server.log_text()
    );
    // Run by the environment's own python, found beside the command.
    server.wait_for_log(&format!(
        "{} -m forkwarden_wsgi myapp:app",
        user.join("bin/python3").display()
    ));
    drop(server);

    let mut broken = Server::serve_with(
        &forkwarden,
        &["missing_module:app", "-b", "127.0.0.1:0"],
        &[],
        &[],
    );
    let line = broken.wait_start_failure();
    assert!(line.contains("No module named 'missing_module'"), "{line}");
}
