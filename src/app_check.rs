//! `forkwarden check` (and `forkwarden serve --check`) loads the application the way a
//! worker would, so that an application that cannot be imported, or a Python without
//! forkwarden_wsgi, is found before a start: the Python runner has a check mode
//! (`python3 -m forkwarden_wsgi --check MODULE:APP`) that imports the application and exits.
//! It runs with the `[app]` table's command, directory and environment, as the workers' user
//! when there is one: importing an application runs its code, which is never run as root.

use std::io;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::Pid;

use crate::config::{Config, ExecApp};
use crate::sys;

/// How long the application may take to load when `ready_timeout` is off.
const DEFAULT_LOAD_TIME: Duration = Duration::from_secs(60);

/// Why the application could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AppCheckError {
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error(
        "the application did not load (app.command {command:?} exited with {status}; its \
         output is above)"
    )]
    Failed {
        command: Vec<String>,
        status: String,
    },
    #[error("the application did not load within {0:?} (ready_timeout); it was killed")]
    TooSlow(Duration),
    #[error("waiting for the check of the application failed: {0}")]
    Wait(io::Error),
}

/// Loads the application of `config` in the Python runner's check mode; its output goes to
/// this process's standard streams. `Ok(None)`: its `[app]` is not the Python runner, so
/// there is nothing to load this way; `Ok(Some(what))`: it loaded.
pub fn check_app(config: &Config) -> Result<Option<String>, AppCheckError> {
    let Some(app) = config.app.as_ref().filter(|app| app.runs_forkwarden_wsgi()) else {
        return Ok(None);
    };
    let command = with_check_flag(app);
    let mut child = Command::new(&command[0]);
    child
        .args(&command[1..])
        .envs(&app.env)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if let Some(cwd) = &app.cwd {
        child.current_dir(cwd);
    }
    if let Some(run_as) = &config.run_as
        && nix::unistd::geteuid().is_root()
    {
        sys::run_as_account(&mut child, run_as.uid, run_as.gid, &run_as.groups);
        child
            .env("HOME", &run_as.home)
            .env("USER", &run_as.user)
            .env("LOGNAME", &run_as.user);
    }
    let mut child = child.spawn().map_err(|source| AppCheckError::Spawn {
        program: command[0].clone(),
        source,
    })?;
    let limit = app.ready_timeout.unwrap_or(config.ready_timeout).duration();
    let limit = if limit.is_zero() {
        DEFAULT_LOAD_TIME
    } else {
        limit
    };
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let exited = sys::pidfd_open(pid).map_err(AppCheckError::Wait)?;
    let mut fds = [PollFd::new(exited.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(limit).unwrap_or(PollTimeout::MAX);
    let ready = loop {
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.map_err(|errno| AppCheckError::Wait(errno.into()))?,
        }
    };
    if ready == 0 {
        let _ = child.kill();
        let _ = child.wait();
        return Err(AppCheckError::TooSlow(limit));
    }
    let status = child.wait().map_err(AppCheckError::Wait)?;
    if status.success() {
        Ok(Some(format!(
            "the application loads ({})",
            command.last().map_or("", String::as_str)
        )))
    } else {
        Err(AppCheckError::Failed {
            command: app.command.clone(),
            status: status.to_string(),
        })
    }
}

/// The `[app]` command with `--check` right after `forkwarden_wsgi`.
fn with_check_flag(app: &ExecApp) -> Vec<String> {
    let mut command = Vec::with_capacity(app.command.len() + 1);
    let mut added = false;
    for (index, word) in app.command.iter().enumerate() {
        command.push(word.clone());
        let after_module = word == "forkwarden_wsgi" && index > 0 && app.command[index - 1] == "-m";
        if after_module && !added {
            command.push("--check".to_string());
            added = true;
        }
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_flag_goes_to_the_runner_not_to_python() {
        let app = ExecApp {
            command: [
                "python3",
                "-X",
                "dev",
                "-m",
                "forkwarden_wsgi",
                "--preload",
                "a:b",
            ]
            .map(String::from)
            .to_vec(),
            cwd: None,
            env: Default::default(),
            ready_timeout: None,
            nonblocking: true,
            preload: true,
        };
        assert_eq!(
            with_check_flag(&app),
            [
                "python3",
                "-X",
                "dev",
                "-m",
                "forkwarden_wsgi",
                "--check",
                "--preload",
                "a:b"
            ]
        );
    }
}
