//! The worker side: what a forked process does from the fork to its exit.
//!
//! [`run`] is the first code a new worker runs. It makes the process a proper worker (title,
//! death signal, signal handlers), then hands over to the role's loop: [`http`] or [`cron`].
//! It returns the exit status; the process then ends at once, without running the master's exit code (see [`crate::sys::fork_process`]).

mod access;
mod cron;
mod exec;
mod http;
pub mod kit;
mod send;

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};
use tracing::error;

use crate::app::AppFactory;
use crate::config::{Config, RunAs};
use crate::id::{Role, WorkerId};
use crate::notify::Doorbell;
use crate::scoreboard::{Board, ExitReason, WorkerRow, WorkerState};
use crate::sys::{self, RequestLimitSignals, WorkerSignals};

/// Exit status of a worker that left normally (the reason is in its scoreboard row).
pub const EXIT_OK: i32 = 0;
/// Exit status of a worker that could not boot (its application failed to start).
pub const EXIT_BOOT_FAILED: i32 = 1;
/// Exit status by which a worker reports a critical error: the server stops (Odoo's rule).
pub const EXIT_CRITICAL: i32 = 3;

/// How often an idle worker wakes to show it is alive (its heartbeat, which
/// `heartbeat_timeout` watches) and to check that its master is still there, in case the
/// death signal did not arrive; the longest any wait of a worker lasts.
const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Everything a new worker gets from the master.
pub struct WorkerSpec<'a> {
    pub id: WorkerId,
    pub generation: u64,
    pub master_pid: Pid,
    pub config: &'a Config,
    /// The shared listening socket (HTTP workers only).
    pub listener: Option<&'a TcpListener>,
    /// Where HTTP workers pass client connections to one another (built-in HTTP workers).
    pub handoff: Option<&'a HandoffChannel>,
    /// Rung once the worker's row says it is ready, and when it starts work while the
    /// master rests.
    pub doorbell: &'a Doorbell,
    pub row: &'a WorkerRow,
    /// What all workers share with the master.
    pub board: &'a Board,
    pub app: &'a AppFactory,
    /// `NOTIFY_SOCKET` for programs: the master's notification socket.
    pub notify_path: &'a Path,
    /// Where a cron worker asks the preload template to run a `call` job.
    pub calls_path: &'a Path,
    /// The program an exec worker becomes (`[app]`, or a `[[program]]`).
    pub exec_app: Option<&'a crate::config::ExecApp>,
    /// The output pipes of an exec worker (write ends), read by the master.
    pub exec_output: Option<ExecOutput<'a>>,
    /// Set when this process is not a worker but the preload template workers are forked
    /// from (`[app] preload = true`).
    pub template: Option<TemplateChannels<'a>>,
    /// The config of this worker's generation as a sealed memfd, for a program that runs
    /// forkwarden's HTTP worker (see [`kit`]).
    pub config_file: Option<std::os::fd::BorrowedFd<'a>>,
    /// `WATCHDOG_USEC` for programs (`heartbeat_timeout`; None: off).
    pub watchdog: Option<Duration>,
    /// When the server started (cron runs due before it were missed while it was down).
    pub server_started: std::time::SystemTime,
    /// A worker forked by a preload template starts as the child of a middle process that
    /// is exiting (see `kit`): that process while it lives, whose exit makes the master the
    /// parent. The worker serves meanwhile, and binds its parent-death signal once it is.
    pub middle_parent: std::cell::Cell<Option<Pid>>,
}

impl WorkerSpec<'_> {
    /// Every descriptor the worker uses from what it inherits (the forked child closes the
    /// rest): the listener, the doorbell, a program's output pipes, and the log file.
    pub fn inherited_descriptors(&self) -> Vec<RawFd> {
        let mut fds = vec![self.doorbell.as_fd().as_raw_fd()];
        fds.extend(self.listener.map(|listener| listener.as_raw_fd()));
        if let Some(handoff) = self.handoff {
            fds.extend(handoff.descriptors());
        }
        if let Some(output) = &self.exec_output {
            fds.extend([output.stdout.as_raw_fd(), output.stderr.as_raw_fd()]);
        }
        if let Some(template) = &self.template {
            fds.extend([template.control.as_raw_fd(), template.calls.as_raw_fd()]);
        }
        if let Some(config_file) = self.config_file {
            fds.push(config_file.as_raw_fd());
            fds.extend(self.board.descriptor().map(|fd| fd.as_raw_fd()));
            fds.extend(self.row.descriptor().map(|fd| fd.as_raw_fd()));
        }
        fds.extend(crate::log::descriptor());
        fds
    }

    /// Marks the worker ready in its row and wakes the master to read it.
    fn report_ready(&self) {
        self.row.set_state(WorkerState::Idle);
        self.doorbell.ring();
    }

    /// Marks the worker busy with `method target`, waking the master if it rests (one
    /// atomic load on the per-request path; a system call only for the first request after
    /// a quiet spell).
    fn begin_work(&self, method: &str, target: &str) {
        self.row.begin_request(method, target);
        if self.board.take_master_resting() {
            self.doorbell.ring();
        }
    }

    /// `http worker 2 (pid 4312)`, the worker's name in its own log lines.
    fn name(&self) -> String {
        format!("{} (pid {})", self.what(), std::process::id())
    }

    /// What this process is: `http worker 2`, or `app template`.
    fn what(&self) -> String {
        match self.template {
            Some(_) => crate::id::TEMPLATE.to_string(),
            None => self.id.to_string(),
        }
    }

    /// Whether the master that forked this worker is gone.
    fn orphaned(&self) -> bool {
        let parent = getppid();
        parent != self.master_pid && Some(parent) != self.middle_parent.get()
    }

    /// Once a worker forked by a template is the master's child, binds its parent-death
    /// signal to the master (a system call per turn of its loop until then, none after).
    fn bind_to_master_once_adopted(&self) {
        if self.middle_parent.get().is_none() || getppid() != self.master_pid {
            return;
        }
        if let Err(errno) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
            error!(
                "{}: cannot set the parent-death signal: {errno}",
                self.name()
            );
        }
        // The master may have died between the two calls: `orphaned` then says so.
        self.middle_parent.set(None);
    }
}

/// Where HTTP workers pass client connections to one another (see `sys::send_connection`):
/// two lanes, each a channel a worker sends on and an idle one takes from. `waiting`:
/// connections with a request waiting, which idle workers take first; `returning`: idle
/// ones, and clients whose last request ran long, which take their turn behind. The master
/// creates them and keeps every end for the server's life, reading none.
pub struct HandoffChannel {
    pub waiting: Lane,
    pub returning: Lane,
}

/// Which lane of the hand-off channel a connection goes to.
#[derive(Clone, Copy)]
enum HandoffLane {
    /// It has a request waiting: idle workers take it first.
    Waiting,
    /// It is idle, or its last request ran long: it takes its turn behind.
    Returning,
}

/// One lane of the hand-off channel: connections are sent on `send`, taken from `receive`.
pub struct Lane {
    pub send: std::os::fd::OwnedFd,
    pub receive: std::os::fd::OwnedFd,
}

impl HandoffChannel {
    pub fn new() -> std::io::Result<Self> {
        let lane = || -> std::io::Result<Lane> {
            let (send, receive) = sys::handoff_channel()?;
            Ok(Lane { send, receive })
        };
        Ok(Self {
            waiting: lane()?,
            returning: lane()?,
        })
    }

    fn lane(&self, lane: HandoffLane) -> &Lane {
        match lane {
            HandoffLane::Waiting => &self.waiting,
            HandoffLane::Returning => &self.returning,
        }
    }

    fn descriptors(&self) -> [RawFd; 4] {
        [
            self.waiting.send.as_raw_fd(),
            self.waiting.receive.as_raw_fd(),
            self.returning.send.as_raw_fd(),
            self.returning.receive.as_raw_fd(),
        ]
    }
}

/// What a preload template gets besides what any program gets.
pub struct TemplateChannels<'a> {
    /// Its end of the channel the master asks for workers on (descriptor 4).
    pub control: std::os::fd::BorrowedFd<'a>,
    /// The listening socket cron workers ask for `call` jobs on (descriptor 5).
    pub calls: std::os::fd::BorrowedFd<'a>,
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
    sys::set_process_title(&format!("forkwarden: {}", spec.what()));
    if let Some(run_as) = &spec.config.run_as
        && let Err(errno) = become_user(run_as)
    {
        error!(
            "{}: cannot switch to user {:?} (uid {}, gid {}): {errno}",
            spec.name(),
            run_as.user,
            run_as.uid,
            run_as.gid
        );
        return EXIT_BOOT_FAILED;
    }
    // The master's death must take its workers with it: nothing would enforce their limits,
    // and they would hold the port a restarted master needs. (Set after the change of user,
    // which clears it.)
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
    if let Some(app) = spec.exec_app {
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
    #[allow(unsafe_code)]
    // SAFETY: the handlers point at this worker's scoreboard row, which stays mapped until
    // the process exits (a forked worker never unmaps the rows it inherited: it ends in
    // `exit_now`), and `limit_signals` is dropped normally at the end of this function.
    let installed = unsafe {
        RequestLimitSignals::install(
            spec.row.exit_reason_word(),
            ExitReason::LimitTimeCpu.as_word(),
            ExitReason::LimitTimeReal.as_word(),
        )
    };
    let limit_signals = match installed {
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
        Role::Http => http::run(&spec, &signals, &limit_signals),
        Role::Cron => cron::run(&spec, &signals),
        Role::Program(name) => {
            error!("{}: no command given for program {name:?}", spec.name());
            Outcome::BootFailed
        }
    };
    match outcome {
        Outcome::Left(reason) => {
            spec.row.set_exit_reason(reason);
            EXIT_OK
        }
        Outcome::BootFailed => EXIT_BOOT_FAILED,
    }
}

/// Drops root for `run_as`: supplementary groups, then group, then user (after which none
/// of the three can be changed back).
fn become_user(run_as: &RunAs) -> nix::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        // Started as that user already (the config check refuses any other case).
        return Ok(());
    }
    nix::unistd::setgroups(&run_as.groups)?;
    nix::unistd::setgid(run_as.gid)?;
    nix::unistd::setuid(run_as.uid)
}

/// `USER`, `LOGNAME` and `HOME` of the account the workers run as (`user`), as a login or
/// systemd's `User=` would set them.
fn account_variables(config: &crate::config::Config) -> Vec<(OsString, OsString)> {
    config
        .run_as
        .iter()
        .flat_map(|run_as| {
            [
                ("USER".into(), run_as.user.clone().into()),
                ("LOGNAME".into(), run_as.user.clone().into()),
                ("HOME".into(), run_as.home.clone().into_os_string()),
            ]
        })
        .collect()
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
