//! The worker side: what a forked process does from the fork to its exit.
//!
//! [`run`] is the first code a new worker runs. It makes the process a proper worker (title,
//! death signal, signal handlers), then hands over to the role's loop: [`http`] or [`cron`].
//! It returns the exit status; the process then ends at once, without running the master's exit code (see [`crate::sys::fork_process`]).

mod cron;
mod exec;
mod http;

use std::net::TcpListener;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};
use tracing::error;

use crate::app::AppFactory;
use crate::config::Config;
use crate::master::WorkerId;
use crate::notify::Notifier;
use crate::scoreboard::{ExitReason, WorkerRow};
use crate::sys::{self, RequestLimitSignals, WorkerSignals};

/// Exit status of a worker that left normally (the reason is in its scoreboard row).
pub const EXIT_OK: i32 = 0;
/// Exit status of a worker that could not boot (its application failed to start).
pub const EXIT_BOOT_FAILED: i32 = 1;
/// Exit status by which a worker reports a critical error: the server stops (Odoo's rule).
pub const EXIT_CRITICAL: i32 = 3;

/// How often an idle worker wakes to check that its master is still there, in case the
/// death signal did not arrive (it is cleared, for instance, by a change of credentials).
const PARENT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Everything a new worker gets from the master.
pub struct WorkerSpec<'a> {
    pub id: WorkerId,
    pub generation: u64,
    pub master_pid: Pid,
    pub config: &'a Config,
    /// The shared listening socket (HTTP workers only).
    pub listener: Option<&'a TcpListener>,
    pub notifier: &'a Notifier,
    pub row: &'a WorkerRow,
    pub app: &'a AppFactory,
    /// `NOTIFY_SOCKET` for programs: the master's notification socket.
    pub notify_address: &'a str,
    /// The output pipes of an exec worker (write ends), read by the master.
    pub exec_output: Option<ExecOutput<'a>>,
    /// When the server started (cron runs due before it were missed while it was down).
    pub server_started: std::time::SystemTime,
}

impl WorkerSpec<'_> {
    /// `http worker 2 (pid 4312)`, the worker's name in its own log lines.
    fn name(&self) -> String {
        format!("{} (pid {})", self.id, std::process::id())
    }

    /// Whether the master that forked this worker is gone.
    fn orphaned(&self) -> bool {
        getppid() != self.master_pid
    }
}

/// Where an exec worker's program writes: pipes whose other ends the master reads.
pub struct ExecOutput<'a> {
    pub stdout: std::os::fd::BorrowedFd<'a>,
    pub stderr: std::os::fd::BorrowedFd<'a>,
}

/// How a worker's loop ended.
enum Outcome {
    /// Left on purpose, for this reason.
    Left(ExitReason),
    /// Could not start; the master will retry with backoff.
    BootFailed,
}

/// Runs a worker in the freshly forked child; returns its exit status.
pub fn run(spec: WorkerSpec<'_>) -> i32 {
    sys::set_process_title(&format!("forkwarden: {}", spec.id));
    // The master's death must take its workers with it: nothing would enforce their limits,
    // and they would hold the port a restarted master needs.
    if let Err(errno) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        error!(
            "{}: cannot set the parent-death signal: {errno}",
            spec.name()
        );
        return EXIT_BOOT_FAILED;
    }
    if spec.orphaned() {
        return EXIT_OK;
    }
    if let (crate::master::Role::Http, Some(app)) = (spec.id.role, &spec.config.app) {
        return exec::run(&spec, app);
    }
    let signals = match WorkerSignals::install() {
        Ok(signals) => signals,
        Err(errno) => {
            error!("{}: cannot install signal handlers: {errno}", spec.name());
            return EXIT_BOOT_FAILED;
        }
    };
    if let Err(errno) = crate::limits::apply_at_worker_start(spec.config) {
        error!(
            "{}: cannot apply limit_memory_hard as RLIMIT_AS: {errno}",
            spec.name()
        );
        return EXIT_BOOT_FAILED;
    }
    let limit_signals = match RequestLimitSignals::install(
        spec.row.exit_reason_word(),
        ExitReason::LimitTimeCpu.as_word(),
        ExitReason::LimitTimeReal.as_word(),
    ) {
        Ok(limit_signals) => limit_signals,
        Err(errno) => {
            error!(
                "{}: cannot install limit signal handlers: {errno}",
                spec.name()
            );
            return EXIT_BOOT_FAILED;
        }
    };
    let outcome = match spec.id.role {
        crate::master::Role::Http => http::run(&spec, &signals, &limit_signals),
        crate::master::Role::Cron => cron::run(&spec, &signals),
    };
    match outcome {
        Outcome::Left(reason) => {
            spec.row.set_exit_reason(reason);
            EXIT_OK
        }
        Outcome::BootFailed => EXIT_BOOT_FAILED,
    }
}

/// Common checks between two units of work: should this worker leave now, and why?
fn stop_reason(spec: &WorkerSpec<'_>, signals: &WorkerSignals) -> Option<ExitReason> {
    if told_to_stop(spec, signals) {
        Some(ExitReason::Stopped)
    } else if spec.orphaned() {
        Some(ExitReason::MasterGone)
    } else {
        None
    }
}

/// Whether the master told this worker to leave (SIGTERM, or its scoreboard flag). Only
/// memory reads: cheap enough for the per-request path, unlike the parent check.
fn told_to_stop(spec: &WorkerSpec<'_>, signals: &WorkerSignals) -> bool {
    signals.stop_requested() || spec.row.stop_requested()
}

/// Reopens the log file if the master asked (SIGUSR1).
fn reopen_log_if_asked(spec: &WorkerSpec<'_>, signals: &WorkerSignals) {
    if signals.take_reopen_log()
        && let Err(error) = crate::log::reopen()
    {
        error!("{}: {error}", spec.name());
    }
}
