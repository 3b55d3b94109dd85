//! The worker side: what a forked process does from the fork to its exit.
//!
//! [`run`] is the first code a new worker runs. It makes the process a proper worker (title,
//! death signal, signal handlers), then hands over to the role's loop: [`http`] or [`cron`].
//! It returns the exit status; the process then ends at once, without running the master's exit code (see [`crate::sys::fork_process`]).

mod cron;
mod exec;
mod job;

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::time::{Duration, SystemTime};

use forkwarden_worker::context::{
    EXIT_BOOT_FAILED, EXIT_OK, HandoffChannel, Outcome, WorkerContext,
};
use forkwarden_worker::http_worker::{self, HttpSpec};
use forkwarden_worker::kit::KitParts;
use forkwarden_worker::settings::HttpSettings;
use nix::sys::signal::Signal;
use tracing::error;

use crate::app::{AppFactory, WorkerInfo};
use crate::config::{Config, ExecApp, RunAs};
use crate::scoreboard::ExitReason;
use crate::sys::{self, RequestLimitSignals, WorkerSignals};

/// Everything a new worker gets from the master.
pub struct WorkerSpec<'a> {
    /// Who it is, its row, the master's doorbell.
    pub context: WorkerContext<'a>,
    /// The config of its generation.
    pub config: &'a Config,
    /// What the forked child runs.
    pub run: WorkerRun<'a>,
}

/// What a forked child runs, with what only that kind of worker gets.
pub enum WorkerRun<'a> {
    /// A built-in HTTP worker: forkwarden's loop, serving the application `app` builds.
    Http {
        /// The listening socket all HTTP workers share.
        listener: &'a TcpListener,
        /// Where HTTP workers pass client connections to one another.
        handoff: &'a HandoffChannel,
        settings: &'a HttpSettings,
        app: &'a AppFactory,
    },
    /// A cron worker.
    Cron {
        /// Where it asks the preload template to run a `call` job.
        calls_path: &'a Path,
        /// When the server started (runs due before it were missed while it was down).
        server_started: SystemTime,
    },
    /// A job worker.
    Job {
        /// Where it asks the preload template to run a `call` job.
        calls_path: &'a Path,
        /// Job workers that ended since the last one started: their jobs' ends to record.
        deaths: &'a [crate::jobs::JobDeath],
    },
    /// A program the child becomes (`[app]`, a `[[program]]`, or the preload template).
    Program(ProgramSpec<'a>),
}

/// What a program is started with.
pub struct ProgramSpec<'a> {
    pub app: &'a ExecApp,
    /// Its output pipes (write ends), read by the master.
    pub output: ExecOutput<'a>,
    /// The listening socket it is handed as descriptor 3 (an HTTP worker's, or a
    /// `[[program]]`'s with `listen`).
    pub listener: Option<&'a TcpListener>,
    /// `NOTIFY_SOCKET`: the master's notification socket.
    pub notify_path: &'a Path,
    /// `WATCHDOG_USEC` (`heartbeat_timeout`; None: off).
    pub watchdog: Option<Duration>,
    /// The worker kit, for an HTTP worker's program that runs forkwarden's own loop (see
    /// `forkwarden_worker::kit`).
    pub kit: Option<KitParts<'a>>,
    /// Set when this process is not a worker but the preload template workers are forked
    /// from (`[app] preload = true`).
    pub template: Option<TemplateChannels<'a>>,
}

impl WorkerSpec<'_> {
    /// Every descriptor the worker uses from what it inherits (the forked child closes the
    /// rest): the doorbell, the listener, the hand-off channel, a program's output pipes and
    /// kit, and the log file.
    pub fn inherited_descriptors(&self) -> Vec<RawFd> {
        let mut fds = vec![self.context.doorbell.as_fd().as_raw_fd()];
        match &self.run {
            WorkerRun::Http {
                listener, handoff, ..
            } => {
                fds.push(listener.as_raw_fd());
                fds.extend(handoff.descriptors());
            }
            WorkerRun::Cron { .. } | WorkerRun::Job { .. } => {}
            WorkerRun::Program(program) => {
                fds.extend(program.listener.map(AsRawFd::as_raw_fd));
                fds.extend([
                    program.output.stdout.as_raw_fd(),
                    program.output.stderr.as_raw_fd(),
                ]);
                if let Some(template) = &program.template {
                    fds.extend([template.control.as_raw_fd(), template.calls.as_raw_fd()]);
                }
                if let Some(kit) = &program.kit {
                    fds.push(kit.settings.as_raw_fd());
                    fds.extend(kit.handoff.descriptors());
                    fds.extend(kit.board.descriptor().map(|fd| fd.as_raw_fd()));
                    fds.extend(kit.row.descriptor().map(|fd| fd.as_raw_fd()));
                }
            }
        }
        fds.extend(crate::log::descriptor());
        fds
    }

    /// Whether this process is the preload template rather than a worker.
    fn is_template(&self) -> bool {
        matches!(&self.run, WorkerRun::Program(program) if program.template.is_some())
    }

    /// What this process is: `http worker 2`, or `app template`.
    fn what(&self) -> String {
        if self.is_template() {
            crate::id::TEMPLATE.to_string()
        } else {
            self.context.id.to_string()
        }
    }

    /// `http worker 2 (pid 4312)`, the worker's name in its own log lines.
    fn name(&self) -> String {
        format!("{} (pid {})", self.what(), std::process::id())
    }
}

/// What a preload template gets besides what any program gets.
pub struct TemplateChannels<'a> {
    /// Its end of the channel the master asks for workers on (descriptor 4).
    pub control: BorrowedFd<'a>,
    /// The listening socket cron workers ask for `call` jobs on (descriptor 5).
    pub calls: BorrowedFd<'a>,
}

/// Where an exec worker's program writes: pipes whose other ends the master reads.
pub struct ExecOutput<'a> {
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
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
    if spec.context.orphaned() {
        return EXIT_OK;
    }
    let name = spec.name();
    let WorkerSpec {
        context,
        config,
        run,
    } = spec;
    match run {
        WorkerRun::Program(program) => exec::run(&context, config, &program, &name),
        WorkerRun::Http {
            listener,
            handoff,
            settings,
            app,
        } => built_in(
            context,
            config.worker_limits(),
            &name,
            |context, signals, limit_signals| {
                let info = WorkerInfo {
                    slot: context.id.slot,
                    generation: context.generation,
                    config,
                };
                let build_app = || app(&info);
                let http = HttpSpec {
                    context,
                    listener,
                    handoff,
                    settings,
                    build_app: &build_app,
                };
                http_worker::run(&http, signals, limit_signals)
            },
        ),
        WorkerRun::Cron {
            calls_path,
            server_started,
        } => built_in(
            context,
            config.worker_limits(),
            &name,
            |context, signals, _| {
                let cron = cron::CronSpec {
                    context,
                    config,
                    calls_path,
                    server_started,
                };
                cron::run(&cron, signals)
            },
        ),
        WorkerRun::Job { calls_path, deaths } => built_in(
            context,
            config.job_worker_limits(),
            &name,
            |context, signals, _| {
                let spec = job::JobSpec {
                    context,
                    config,
                    calls_path,
                    deaths,
                };
                job::run(&spec, signals)
            },
        ),
    }
}

/// Runs a built-in worker's loop `serve` once its signal handlers and RLIMIT_AS are in
/// place; returns the exit status.
fn built_in<'a>(
    context: WorkerContext<'a>,
    limits: forkwarden_worker::limits::WorkerLimits,
    name: &str,
    serve: impl FnOnce(WorkerContext<'a>, &WorkerSignals, &RequestLimitSignals<'_>) -> Outcome,
) -> i32 {
    let signals = match WorkerSignals::install() {
        Ok(signals) => signals,
        Err(errno) => {
            error!("{name}: cannot install signal handlers: {errno}");
            return EXIT_BOOT_FAILED;
        }
    };
    if let Err(errno) = limits.apply_at_start() {
        error!("{name}: cannot apply limit_memory_hard as RLIMIT_AS: {errno}");
        return EXIT_BOOT_FAILED;
    }
    let row = context.row;
    #[allow(unsafe_code)]
    // SAFETY: the handlers point at this worker's scoreboard row, which stays mapped until
    // the process exits (a forked worker never unmaps the rows it inherited: it ends in
    // `exit_now`), and `limit_signals` is dropped normally at the end of this function.
    let installed = unsafe {
        RequestLimitSignals::install(
            row.exit_reason_word(),
            ExitReason::LimitTimeCpu.as_word(),
            ExitReason::LimitTimeReal.as_word(),
        )
    };
    let limit_signals = match installed {
        Ok(limit_signals) => limit_signals,
        Err(errno) => {
            error!("{name}: cannot install limit signal handlers: {errno}");
            return EXIT_BOOT_FAILED;
        }
    };
    serve(context, &signals, &limit_signals).exit_status(row)
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
