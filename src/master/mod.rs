//! The master: one single-threaded poll loop that keeps the worker population alive.
//!
//! Each turn is a few short steps, in the manner of Odoo's and gunicorn's masters:
//! handle signals (`signals.rs`), reap children and whatever they left behind (here and
//! `strays.rs`), note the workers that became ready, enforce deadlines and limits
//! (`enforce.rs`), spawn missing workers and retire replaced ones (here), then wait for the
//! next event: a signal, a worker's bell or notification, a program's output, or the
//! earliest deadline. The population and its backoff live in `pool.rs`, the one-line exit
//! reports in `report.rs` and their tally in `tally.rs`, the preload template HTTP workers
//! are forked from (`[app] preload = true`) in `template.rs`. What the master knows at one
//! moment (`survey.rs`) goes to `forkwarden status` over a control socket (`control.rs`) and
//! to Prometheus and the status page over the metrics listener (`metrics.rs`), both read in
//! the same poll and never waited on (`answers.rs`). The master never busy-polls, never runs
//! application code and never touches a client connection of the application.

mod answers;
mod control;
mod enforce;
mod exec;
mod exposition;
mod lifecycle;
mod metrics;
mod pidfile;
mod pool;
mod report;
mod signals;
mod sockets;
mod strays;
mod survey;
mod tally;
mod template;
mod tokens;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook_mio::v1_0::Signals;
use tracing::{Level, debug, error, info, warn};

pub use control::socket_path as control_socket_path;
pub use pidfile::PidfileError;

use crate::app::AppFactory;
use crate::config::{Config, ConfigSource, ExecApp};
use crate::doorbell::Doorbell;
use crate::format::elapsed;
use crate::id::{Role, WorkerId};
use crate::limits::MasterLimits;
use crate::log::Logging;
use crate::notify::{Notification, NotifyReceiver};
use crate::scoreboard::{Board, WorkerRow, WorkerState};
use crate::sys::{self, Exited, MASTER_SIGNALS};
use crate::worker::{self, ProgramSpec, WorkerRun, WorkerSpec};
use forkwarden_worker::context::WorkerContext;
use forkwarden_worker::kit::KitParts;
use forkwarden_worker::settings::HttpSettings;
use lifecycle::{Departure, RetireReason};
use pidfile::Pidfile;
use pool::{Pool, Worker, WorkerKind, WorkerProcess};
use report::{Ending, Exit, Facts, PendingReport, PendingReports, Verdict};
use strays::Strays;
use template::Templates;
use tokens::{EventSource, OutputTokens};

/// How long a slot waits before another attempt when fork() itself failed.
const SPAWN_RETRY: Duration = Duration::from_secs(1);

/// The master's exit status after a worker reported a critical error (it exited with 3).
pub const EXIT_STATUS_CRITICAL: u8 = 3;
/// The master's exit status when its event loop broke down, or when the application
/// could not start at all (see [`FIRST_START_ATTEMPTS`]).
pub const EXIT_STATUS_FAILURE: u8 = 1;

/// Failed starts in a row, before any worker of its role was ever ready, after which
/// the server stops instead of retrying for ever: an application that cannot be imported
/// or a program that is missing will not start by itself (gunicorn stops at the first).
/// More than one, so that one unlucky start (a port still taken, a database restarting)
/// does not stop a server; once it has served, failed starts are retried with backoff.
const FIRST_START_ATTEMPTS: u32 = 3;

/// Why the master could not start.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot listen on {address} (http_interface, http_port): {source}")]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("cannot listen on {address} (metrics_listen): {source}")]
    Metrics {
        address: SocketAddr,
        source: io::Error,
    },
    #[error(transparent)]
    Pidfile(#[from] PidfileError),
    #[error("cannot use data_dir {}: {source}", path.display())]
    DataDir { path: PathBuf, source: io::Error },
    #[error("cannot create the master's private runtime directory in {}: {source}", path.display())]
    RuntimeDir { path: PathBuf, source: io::Error },
    #[error("the master must be single-threaded to fork safely, but it has {0} threads")]
    Threaded(usize),
    #[error("cannot set up the event loop: {0}")]
    EventLoop(#[from] io::Error),
}

/// What became of a request to start a worker.
enum Spawned {
    /// Forked: this is its pid.
    Started(Pid),
    /// Asked of the preload template; the worker joins when it says who it is.
    Requested,
    /// The preload template is not ready yet; asked once it is.
    Waiting,
}

/// What follows the end of a worker (see `Master::after_exit`).
enum AfterExit {
    /// It reported a critical error (exit status 3): the server stops.
    StopServer,
    /// Its end was logged when a limit was enforced on it.
    AlreadyReported,
    /// It left on its own and its replacement was started then: this pid, or none yet (a
    /// template was asked for it).
    AlreadyReplaced(Option<Pid>),
    /// It was told to go (or the server stops): its end is logged, nothing replaces it here.
    Log,
    /// Its slot failed its first starts and no worker of its role was ever ready.
    GiveUpStarting,
    /// A replacement starts, at once or after a backoff.
    Replace,
}

/// Where the server is in its life.
enum Phase {
    /// The first population is starting: the service manager is told READY=1 once it is
    /// ready.
    Starting,
    /// Serving (reloads happen within it: generations, not phases).
    Serving,
    /// On the way down, to exit with `exit_status`; `forced`: a second stop signal arrived
    /// and every worker was killed.
    Stopping { exit_status: u8, forced: bool },
}

impl Phase {
    fn is_stopping(&self) -> bool {
        matches!(self, Self::Stopping { .. })
    }
}

pub struct Master {
    config: Config,
    /// The HTTP worker settings of `config` as a sealed memfd (read with pread: its offset
    /// does not matter), lent to every HTTP program of the current generation as part of
    /// its worker kit.
    handed_settings: std::os::fd::OwnedFd,
    /// Where the config is read again from on SIGHUP.
    source: ConfigSource,
    pid: Pid,
    app: Box<AppFactory>,
    logging: Logging,
    poll: Poll,
    signals: Signals,
    /// Rung by built-in workers whose row has news (they are ready, or start work while
    /// the master rests).
    doorbell: Doorbell,
    /// What every worker shares with the master (whether it rests).
    board: Board,
    /// Programs' sd_notify messages.
    notifications: NotifyReceiver,
    /// The private directory that holds the notification socket; removed on exit.
    _runtime_dir: tempfile::TempDir,
    /// The listening sockets and the hand-off channel, lent to workers.
    sockets: sockets::Sockets,
    pool: Pool,
    /// The preload templates HTTP workers are forked from (`[app] preload = true`).
    templates: Templates,
    /// Processes that workers left behind, killed and not yet reaped.
    strays: Strays,
    /// When this server started: cron runs due before it fell while the server was down.
    started_at: std::time::SystemTime,
    /// Poll tokens for programs' output pipes.
    output_tokens: OutputTokens,
    /// RLIMIT_CPU's hard limit, which workers inherit; exec workers' soft limit stays below.
    cpu_hard_limit: u64,
    /// Decides which limits and deadlines are crossed (step 4).
    enforcer: enforce::Enforcer,
    phase: Phase,
    /// systemd (`Type=notify`), told `READY=1` once the first population is ready.
    service_manager: Option<crate::notify::ServiceManager>,
    /// Where `forkwarden status` asks (None: another master answers there, or it could not
    /// be made).
    control: Option<control::ControlSocket>,
    /// The metrics listener (`metrics_listen`), if there is one.
    metrics: Option<metrics::MetricsListener>,
    /// What happened to workers since the start, for `forkwarden status`.
    tally: tally::Tally,
    /// Death lines waiting for the pid of the worker that replaces theirs.
    pending_reports: PendingReports,
    /// Dropped (and so removed) when the master returns from [`Master::run`].
    _pidfile: Option<Pidfile>,
}

impl Master {
    /// Sets the master up: signal handling, its private directory and notification socket,
    /// the listening socket (when there are HTTP workers), data_dir and the pid file. Nothing
    /// is forked yet.
    pub fn new(
        config: Config,
        source: ConfigSource,
        app: Box<AppFactory>,
        logging: Logging,
    ) -> Result<Self, MasterError> {
        // Orphans below the workers come to the master, which kills them (see strays.rs).
        nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)?;
        let poll = Poll::new()?;
        let mut signals = Signals::new(MASTER_SIGNALS.map(|signal| signal as i32))?;
        poll.registry().register(
            &mut signals,
            EventSource::Signals.token(),
            Interest::READABLE,
        )?;
        let runtime_dir = runtime_dir(&config)?;
        let mut notifications = NotifyReceiver::bind(runtime_dir.path())?;
        give_to_workers_user(&config, notifications.path())?;
        poll.registry().register(
            notifications.source(),
            EventSource::Notifications.token(),
            Interest::READABLE,
        )?;
        let handed_settings = forkwarden_worker::kit::settings_file(&config.http_settings())?;
        let doorbell = Doorbell::new()?;
        let bell = doorbell.as_fd().as_raw_fd();
        poll.registry().register(
            &mut SourceFd(&bell),
            EventSource::Doorbell.token(),
            Interest::READABLE,
        )?;
        let listener = if config.workers > 0 {
            Some(bind_http(&config)?)
        } else {
            None
        };
        let data_dir =
            crate::data_dir::DataDir::open(&config.data_dir, config.data_dir_owner().as_ref())
                .map_err(|source| MasterError::DataDir {
                    path: config.data_dir.clone(),
                    source,
                })?;
        let pidfile = config.pidfile.as_deref().map(Pidfile::create).transpose()?;
        let control = control::ControlSocket::bind(&data_dir, poll.registry());
        let metrics = config
            .metrics_listen
            .map(|address| {
                metrics::MetricsListener::bind(address, poll.registry())
                    .map_err(|source| MasterError::Metrics { address, source })
            })
            .transpose()?;
        sys::set_process_title(&format!("forkwarden: master ({})", source.describe()));
        Ok(Self {
            pool: Pool::new(
                config.workers,
                config.max_cron_threads,
                config.wanted_job_workers(),
                &config.program,
            ),
            templates: Templates::new(runtime_dir.path().join("calls")),
            strays: Strays::default(),
            enforcer: enforce::Enforcer::new(MasterLimits::from_config(&config)),
            started_at: std::time::SystemTime::now(),
            output_tokens: OutputTokens::new(),
            cpu_hard_limit: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CPU)
                .map_or(libc::RLIM_INFINITY, |(_, hard)| hard),
            config,
            handed_settings,
            source,
            pid: nix::unistd::getpid(),
            app,
            logging,
            poll,
            signals,
            doorbell,
            board: Board::new()?,
            notifications,
            _runtime_dir: runtime_dir,
            sockets: sockets::Sockets::new(listener)?,
            phase: Phase::Starting,
            service_manager: crate::notify::ServiceManager::from_environment(),
            control,
            metrics,
            tally: tally::Tally::default(),
            pending_reports: PendingReports::default(),
            _pidfile: pidfile,
        })
    }

    /// Runs until the server is stopped; returns the process exit status.
    pub fn run(mut self) -> u8 {
        info!(
            pid = self.pid.as_raw(),
            "forkwarden {} master (pid {}) starting {} http and {} cron workers{}; config {}",
            env!("CARGO_PKG_VERSION"),
            self.pid,
            self.config.workers,
            self.config.max_cron_threads,
            match self.config.wanted_job_workers() {
                0 => String::new(),
                count => format!(", {count} job workers"),
            },
            self.source.describe()
        );
        for program in &self.config.program {
            info!(
                program = program.name.as_str(),
                count = program.count,
                "program {:?}: {} instances of {:?}{}",
                program.name,
                program.count,
                program.command,
                program
                    .listen
                    .map(|address| format!(", each given {address} as fd 3"))
                    .unwrap_or_default()
            );
        }
        if let Some(run_as) = &self.config.run_as {
            info!(
                user = run_as.user.as_str(),
                uid = run_as.uid.as_raw(),
                gid = run_as.gid.as_raw(),
                "workers, programs and cron jobs run as user {} (uid {}, gid {})",
                run_as.user,
                run_as.uid,
                run_as.gid
            );
        }
        if let Some(app) = &self.config.app {
            let how = if app.runs_forkwarden_wsgi() {
                "forkwarden's worker through the worker kit"
            } else {
                "a program (limits it cannot see need the kit or BUSY=1/IDLE=1: see \
                 docs/programs.md)"
            };
            info!(
                "http workers run {}: {how} (NOTIFY_SOCKET={}; the socket is fd 3, the kit \
                 from fd 4)",
                app.command.join(" "),
                self.notifications.path().display()
            );
        }
        debug!(
            "command line: {:?}",
            std::env::args_os().collect::<Vec<_>>()
        );
        // Only now that everything is in place: the server serves from here on.
        self.announce_listening();
        let mut events = Events::with_capacity(64);
        loop {
            self.handle_signals();
            self.reap_children();
            self.note_ready_workers();
            self.enforce_deadlines();
            self.enforce_limits();
            if let Phase::Stopping { exit_status, .. } = self.phase
                && self.pool.is_empty()
                && self.templates.is_empty()
            {
                self.kill_strays();
                if self.strays.all_gone() {
                    info!(
                        event = "stopped",
                        "all workers have stopped; master exiting"
                    );
                    return exit_status;
                }
            }
            self.spawn_missing();
            self.retire_replaced();
            self.announce_readiness();
            self.board
                .set_http_workers(self.pool.serving(Role::Http) as u64);
            if let Err(error) = self.wait(&mut events) {
                error!("the event loop failed: {error}; killing all workers");
                self.kill_all_and_reap();
                return EXIT_STATUS_FAILURE;
            }
        }
    }

    fn announce_listening(&self) {
        if let Some(Ok(address)) = self.sockets.http().map(TcpListener::local_addr) {
            info!(address = %address, "listening on http://{address}");
        }
    }

    // ---- step 2: reap ----

    /// Collects every child that has exited and decides what its end means; then kills
    /// what the workers that ended left behind.
    fn reap_children(&mut self) {
        let mut ended = Vec::new();
        let mut reaped_any = false;
        loop {
            let pid = match sys::exited_child() {
                Ok(Exited::Child(pid)) => pid,
                Ok(Exited::None) => {
                    self.strays.children_left(true);
                    break;
                }
                Ok(Exited::NoChildren) => {
                    self.strays.children_left(false);
                    break;
                }
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    error!("waitid failed: {errno}");
                    break;
                }
            };
            // Not reaped yet: its pid, and the group it leads, are still its own.
            let job_killed = self.kill_groups_of(pid);
            let reaped = match sys::reap(pid) {
                Ok(reaped) => reaped,
                Err(errno) => {
                    error!("cannot reap pid {pid}: {errno}");
                    break;
                }
            };
            let ending = match reaped.status {
                WaitStatus::Exited(_, status) => Ending::Exited(status),
                WaitStatus::Signaled(_, signal, core_dumped) => Ending::Signaled {
                    signal,
                    core_dumped,
                },
                _ => continue,
            };
            let exit = Exit {
                ending,
                cpu: Some(reaped.cpu),
            };
            reaped_any = true;
            if self.on_template_exit(pid, &exit) {
                ended.push(crate::id::TEMPLATE.to_string());
                continue;
            }
            if let Some(name) = self.on_worker_exit(pid, exit, job_killed) {
                ended.push(name);
            }
        }
        // The processes below what ended have just come to the master.
        if reaped_any {
            self.strays.ended(ended);
            self.kill_strays();
        }
    }

    /// Kills what must go with child `pid`, which has exited and is not reaped yet: the
    /// process group of a program or a template (its own children), the cron job of a cron
    /// worker (whose process came to the master). Returns the job's process group, if one
    /// was killed.
    fn kill_groups_of(&mut self, pid: Pid) -> Option<Pid> {
        if self.templates.pids().any(|template| template == pid) {
            // The half-forked processes of its group go with it; its workers are in their own.
            let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
            return None;
        }
        let job_parents = self.job_parents();
        let worker = self.pool.get_mut(pid)?;
        if worker.kind.has_process_group() {
            // What it started in its own process group goes with it; what it started
            // elsewhere comes to the master, which kills it as left behind.
            let _ = worker.process().signal(Signal::SIGKILL, true);
        }
        // A cron worker that died during a job: the job must not run on unsupervised.
        let job = enforce::cron_job(worker, &job_parents)?;
        job.signal_group(Signal::SIGKILL).ok().map(|()| job.pid())
    }

    /// Handles the end of process `pid`; returns the worker's name if it was a worker.
    fn on_worker_exit(&mut self, pid: Pid, exit: Exit, job_killed: Option<Pid>) -> Option<String> {
        let Some(worker) = self.pool.take(pid) else {
            self.strays.reaped(pid, exit.ending);
            return None;
        };
        let now = Instant::now();
        let (worker, report) = self.account_for_exit(worker, exit, job_killed, now);
        let name = worker.name();
        let unexpected = report.verdict.is_unexpected();
        let level = report::level(unexpected);
        let id = worker.id;
        match self.after_exit(&worker, &report) {
            AfterExit::StopServer => {
                let line = format!("{}; stopping the server", report.line);
                log_worker(Level::ERROR, &report.facts, None, &line);
                self.begin_stop("critical error in a worker", EXIT_STATUS_CRITICAL);
            }
            AfterExit::AlreadyReported => {
                debug!("{} (reported when the limit was enforced)", report.line);
            }
            AfterExit::AlreadyReplaced(Some(current)) => log_worker(
                level,
                &report.facts,
                Some(current),
                &format!("{}; respawned as pid {current}", report.line),
            ),
            AfterExit::AlreadyReplaced(None) => {
                // Its replacement, asked of the template, is named when it comes.
                let pending = PendingReport {
                    line: report.line,
                    facts: report.facts,
                    unexpected,
                };
                self.pending_reports.set(id, pending);
            }
            AfterExit::Log => log_worker(level, &report.facts, None, &report.line),
            AfterExit::GiveUpStarting => {
                let last_lines = worker
                    .kind
                    .program()
                    .map(exec::ExecState::last_lines)
                    .unwrap_or_default();
                let facts = Some(&report.facts);
                self.give_up_starting(id.role, &report.line, facts, &last_lines);
            }
            AfterExit::Replace => {
                let failed_start = report.failed_start;
                self.replace(id, report.line, report.facts, unexpected, failed_start, now);
            }
        }
        Some(name)
    }

    /// The books kept on a worker that ended: what its row says (it may have become ready
    /// unseen), the board's counts it held, its program's last output, its report (with
    /// the cron job killed with it) and the tally.
    fn account_for_exit(
        &mut self,
        mut worker: Worker,
        exit: Exit,
        job_killed: Option<Pid>,
        now: Instant,
    ) -> (Worker, report::Report) {
        let row = worker.row.snapshot();
        // A worker whose row left Booting had become ready, even if the master had not
        // looked at the row yet.
        if row.state != WorkerState::Booting {
            worker.mark_ready();
        }
        self.pool.note_ended(&worker);
        if worker.row.counted_idle() {
            self.board.forget_idle();
        }
        if worker.row.counted_long() {
            self.board.forget_long_request();
        }
        let name = worker.name();
        if let Some(exec) = worker.kind.program_mut() {
            // The program's last words come before the line about its end.
            exec.close(&name, self.poll.registry());
        }
        let mut report = report::report(&worker, exit, &row, self.enforcer.limits(), now);
        if let Some(group) = job_killed {
            report
                .line
                .push_str(&format!("; its job's process group {group} was killed"));
        }
        let durations = worker.row.durations();
        let pid = worker.pid.as_raw();
        self.tally.ended(
            &report.verdict,
            pid,
            worker.id.role,
            &durations,
            &report.line,
        );
        if worker.id.role == Role::Job {
            // Its successor records how its job's attempt ended, with this cause.
            self.pool.note_job_death(crate::jobs::JobDeath {
                worker_pid: pid,
                cause: report.ending.clone(),
                limit: report::limit_named(report.ending.trim_start_matches("killed: "))
                    .map(str::to_string),
            });
            self.pool.forget_job_death(pid);
        }
        let interrupted = worker.running_job(&row);
        if let Some((kinds, figures)) = worker.job_figures() {
            self.tally
                .job_worker_ended(kinds, &figures, interrupted.as_deref());
        } else if worker.id.role == Role::Cron {
            let runs: Vec<_> = worker
                .run_counts()
                .map(|(job, runs)| (job.to_string(), runs))
                .collect();
            self.tally.cron_worker_ended(runs, interrupted.as_deref());
        }
        (worker, report)
    }

    /// What follows the end of `worker`, reported by `report`.
    fn after_exit(&self, worker: &Worker, report: &report::Report) -> AfterExit {
        let stopping = self.phase.is_stopping();
        let leaving = worker.leaving();
        let left_on_its_own = leaving.is_some_and(|leaving| {
            matches!(
                leaving.departure,
                Departure::Retire {
                    reason: RetireReason::OnItsOwn(_),
                    ..
                }
            )
        });
        if report.verdict == Verdict::Critical && !stopping {
            AfterExit::StopServer
        } else if leaving.is_some_and(|leaving| leaving.reported) {
            AfterExit::AlreadyReported
        } else if left_on_its_own && !stopping && self.pool.is_wanted(worker.id) {
            // Its replacement was started when it said it would leave.
            AfterExit::AlreadyReplaced(self.pool.current(worker.id).map(|current| current.pid))
        } else if stopping || leaving.is_some() {
            AfterExit::Log
        } else if report.failed_start
            && self.cannot_start(
                worker.id.role,
                self.pool.failures_in_a_row(worker.id).saturating_add(1),
            )
        {
            AfterExit::GiveUpStarting
        } else {
            AfterExit::Replace
        }
    }

    /// Decides what follows the end of a worker in slot `id` (reported by `line`): a
    /// replacement at once, one after a crash-loop backoff, or none. The line is logged
    /// with the outcome; the replacement's pid is added when it is forked.
    fn replace(
        &mut self,
        id: WorkerId,
        line: String,
        facts: Facts,
        unexpected: bool,
        failed_start: bool,
        now: Instant,
    ) {
        let level = report::level(unexpected);
        if self.phase.is_stopping() {
            log_worker(level, &facts, None, &line);
        } else if !self.pool.is_wanted(id) {
            log_worker(
                level,
                &facts,
                None,
                &format!("{line}; not replaced: its slot is no longer wanted"),
            );
        } else if let Some(current) = self.pool.current(id) {
            let current = current.pid;
            log_worker(
                level,
                &facts,
                None,
                &format!("{line}; its slot is served by pid {current}"),
            );
        } else {
            let delay = self.pool.record_exit(id, failed_start, now);
            if delay.is_zero() {
                self.pending_reports.set(
                    id,
                    PendingReport {
                        line,
                        facts,
                        unexpected,
                    },
                );
            } else {
                let failures = self.pool.failures_in_a_row(id);
                let facts = Facts {
                    failures_in_a_row: Some(failures),
                    ..facts
                };
                log_worker(
                    Level::WARN,
                    &facts,
                    None,
                    &format!(
                        "{line}; restarting in {} ({failures} failed starts in a row)",
                        elapsed(delay)
                    ),
                );
            }
        }
    }

    /// Whether `failures` failed starts in a row of a worker of `role` mean that it cannot
    /// start at all: the server is starting, no worker of that role has ever been ready,
    /// and that is the limit.
    fn cannot_start(&self, role: Role, failures: u32) -> bool {
        matches!(self.phase, Phase::Starting)
            && !self.pool.has_served(role)
            && failures >= FIRST_START_ATTEMPTS
    }

    /// Stops the server after the last of [`FIRST_START_ATTEMPTS`] failed starts, whose
    /// report is `line`, quoting the program's `last_lines` (an import error's last
    /// lines say why better than anything the master knows).
    /// `facts`: the worker's, for the log's fields (none for a preload template).
    fn give_up_starting(
        &mut self,
        role: Role,
        line: &str,
        facts: Option<&Facts>,
        last_lines: &[String],
    ) {
        let quoted = if last_lines.is_empty() {
            String::new()
        } else {
            format!("; its last output: {}", last_lines.join(" | "))
        };
        let line = format!(
            "{line}; the application cannot start: {FIRST_START_ATTEMPTS} failed starts in a \
             row and no {} worker has ever been ready{quoted}",
            role.as_str()
        );
        match facts {
            Some(facts) => log_worker(Level::ERROR, facts, None, &line),
            None => error!(event = "template_load_failed", "{line}"),
        }
        error!(
            event = "start_failed",
            "stopping: fix what the lines above say and start again (a server that has \
             served retries failed starts with backoff instead)"
        );
        self.begin_stop("the application cannot start", EXIT_STATUS_FAILURE);
    }

    // ---- step 3: readiness ----

    /// Marks ready the built-in workers whose scoreboard row left Booting: the row is the
    /// truth, the doorbell only woke us up (no message to lose, however many start at once).
    fn note_ready_workers(&mut self) {
        self.note_leaving_workers();
        for worker in self.pool.workers_mut() {
            if worker.kind.ready_in_row()
                && worker.row.state() != WorkerState::Booting
                && worker.mark_ready()
            {
                debug!(
                    pid = worker.pid.as_raw(),
                    "{} ready after {}",
                    worker.name(),
                    elapsed(worker.started.elapsed())
                );
            }
        }
    }

    /// Workers that said in their row that they leave on its own (`limit_request`, the
    /// application asked) are replaced now, and given `graceful_timeout` to finish: one
    /// that lingers (a thread of the application's that keeps it from exiting) holds no
    /// slot. One such worker per slot at a time: a program that says it at every start
    /// cannot make the master fork without end.
    fn note_leaving_workers(&mut self) {
        let leaving: Vec<(Pid, WorkerId, crate::scoreboard::ExitReason)> = self
            .pool
            .workers()
            .filter(|worker| worker.is_serving() && worker.answers_limits())
            .filter_map(|worker| Some((worker.pid, worker.id, worker.row.leaving()?)))
            .collect();
        let now = Instant::now();
        let deadline = now + self.config.graceful_timeout.duration();
        for (pid, id, reason) in leaving {
            let already = self.pool.workers().any(|other| {
                other.id == id
                    && other.pid != pid
                    && other.leaving().is_some_and(|leaving| {
                        matches!(
                            &leaving.departure,
                            Departure::Retire {
                                reason: RetireReason::OnItsOwn(_),
                                ..
                            }
                        )
                    })
            });
            let Some(worker) = self.pool.get_mut(pid).filter(|_| !already) else {
                continue;
            };
            let why = report::recycle_reason(reason, report::Ending::Exited(0));
            debug!(
                pid = pid.as_raw(),
                "{} leaves on its own ({why}): its replacement starts now",
                worker.name()
            );
            worker.depart(
                Departure::Retire {
                    reason: RetireReason::OnItsOwn(why),
                    deadline,
                    signalled: true,
                },
                false,
            );
        }
    }

    // ---- step 5: spawn and retire ----

    /// Starts a worker in every slot that wants one and may have one now (with preload:
    /// asks the template for it, once the template is ready).
    fn spawn_missing(&mut self) {
        if self.phase.is_stopping() {
            return;
        }
        self.ensure_template();
        let now = Instant::now();
        for id in self.pool.slots_to_fill(now) {
            if self.templates.requested(id) {
                continue;
            }
            match self.spawn(id) {
                Ok(Spawned::Started(pid)) => self.log_spawned(id, pid),
                Ok(Spawned::Requested) => {}
                Ok(Spawned::Waiting) => {
                    // The template may take long to load (or fail to): the end of the
                    // worker being replaced is told now, not when its replacement comes.
                    if let Some(report) = self.pending_reports.take(id) {
                        log_worker(
                            report.level(),
                            &report.facts,
                            None,
                            &format!(
                                "{}; its replacement waits for the {} to load",
                                report.line,
                                crate::id::TEMPLATE
                            ),
                        );
                    }
                }
                Err(error) => {
                    if let Some(report) = self.pending_reports.take(id) {
                        log_worker(Level::WARN, &report.facts, None, &report.line);
                    }
                    error!(
                        event = "spawn_failed",
                        role = id.role.as_str(),
                        slot = id.slot,
                        "cannot start {id}: {error}; trying again in {}",
                        elapsed(SPAWN_RETRY)
                    );
                    self.pool.delay_slot(id, now + SPAWN_RETRY);
                }
            }
        }
    }

    /// Logs that `pid` now serves slot `id`: with the end of the worker it replaces, if any.
    fn log_spawned(&mut self, id: WorkerId, pid: Pid) {
        match self.pending_reports.take(id) {
            Some(report) => log_worker(
                report.level(),
                &report.facts,
                Some(pid),
                &format!("{}; respawned as pid {pid}", report.line),
            ),
            None => info!(
                role = id.role.as_str(),
                slot = id.slot,
                pid = pid.as_raw(),
                "{id} started as pid {pid}"
            ),
        }
    }

    /// Tells the service manager, once, that the server is ready: every wanted worker of the
    /// first population has reported ready (so `systemctl start` returns when it can serve).
    fn announce_readiness(&mut self) {
        if !matches!(self.phase, Phase::Starting) || !self.pool.all_ready() {
            return;
        }
        self.phase = Phase::Serving;
        if let Some(manager) = &self.service_manager {
            manager.send(&format!(
                "READY=1\nSTATUS={} http and {} cron workers ready\nMAINPID={}",
                self.pool.wanted(Role::Http),
                self.pool.wanted(Role::Cron),
                self.pid
            ));
        }
    }

    /// The listening socket, bound again if a scale-down to no HTTP worker closed it.
    fn http_listener(&mut self) -> io::Result<&TcpListener> {
        let config = &self.config;
        let (_, bound_now) = self
            .sockets
            .http_or_bind(|| bind_http(config).map_err(io::Error::other))?;
        if bound_now {
            self.announce_listening();
        }
        self.sockets
            .http()
            .ok_or_else(|| io::Error::other("no listening socket"))
    }

    /// What a process forked for slot `id` of `generation` shares with the master, with
    /// its scoreboard `row`.
    fn worker_context<'a>(
        &'a self,
        id: WorkerId,
        generation: u64,
        row: &'a WorkerRow,
    ) -> WorkerContext<'a> {
        WorkerContext {
            id,
            generation,
            master_pid: self.pid,
            doorbell: &self.doorbell,
            row,
            board: &self.board,
            middle_parent: std::cell::Cell::new(None),
        }
    }

    /// Forks a worker for slot `id`, or (with preload) asks the template for one.
    fn spawn(&mut self, id: WorkerId) -> io::Result<Spawned> {
        if id.role == Role::Http {
            self.http_listener()?;
            if self.preloads() {
                return self.request_fork(id);
            }
        }
        let program = match id.role {
            Role::Program(name) => {
                let program = self.config.program.iter().find(|p| p.name == name);
                let program = program
                    .ok_or_else(|| io::Error::other(format!("no program {name:?} configured")))?;
                let (listen, app) = (program.listen, program.exec_app());
                if let Some(address) = listen {
                    self.sockets
                        .bind_program(name, address, self.config.listen_backlog)?;
                }
                Some(app)
            }
            Role::Http | Role::Cron | Role::Job => None,
        };
        let mut row = match id.role {
            Role::Cron => WorkerRow::for_cron(self.config.cron.len())?,
            Role::Job => WorkerRow::for_jobs(self.config.job_row_shape())?,
            Role::Http | Role::Program(_) => WorkerRow::new()?,
        };
        let generation = self.pool.generation();
        let (exec_app, listener) = match id.role {
            Role::Http => (self.config.app.as_ref(), self.sockets.http()),
            Role::Program(name) => (program.as_ref(), self.sockets.program(name)),
            Role::Cron | Role::Job => (None, None),
        };
        if let Some(listener) = listener {
            // O_NONBLOCK belongs to the file description all workers of a role share.
            // Built-in workers wait in epoll and must not block in accept() after losing a
            // race; a program gets what systemd gives (blocking unless `nonblocking = true`).
            listener.set_nonblocking(exec_app.is_none_or(|app| app.nonblocking))?;
        }
        let pipes = exec_app.map(|_| exec::ExecPipes::new()).transpose()?;
        let http_settings = self.config.http_settings();
        // The ends of the job workers that died, for this one to record (see `jobs`).
        let job_deaths = if id.role == Role::Job {
            self.pool.take_job_deaths()
        } else {
            Vec::new()
        };
        let run = self.worker_run(id, exec_app, pipes.as_ref(), listener, &row, &http_settings)?;
        let run = match run {
            WorkerRun::Job { calls_path, .. } => WorkerRun::Job {
                calls_path,
                deaths: &job_deaths,
            },
            run => run,
        };
        let spec = WorkerSpec {
            context: self.worker_context(id, generation, &row),
            config: &self.config,
            run,
        };
        let keep = spec.inherited_descriptors();
        let started = Instant::now();
        #[allow(unsafe_code)]
        // SAFETY: the child runs `worker::run(spec)`, which uses no descriptor but those
        // `spec` lends it, all listed by `inherited_descriptors` (the listener, the doorbell,
        // the output pipes, the log file), and those it opens itself. It never touches the
        // master's own objects (poll, signal pipe, other workers' pipes), whose descriptors
        // the child closes, and never drops them: it ends in `exit_now`.
        let pid = unsafe { sys::fork_process(&keep, || worker::run(spec)) }?;
        // A program has its own copy of the row's memfd now; a built-in worker, the mapping.
        row.close_descriptor();
        if let Err(error) = row.keep_from_later_workers() {
            warn!("{id}: its scoreboard row will be inherited by later workers: {error}");
        }
        let ready_timeout = match exec_app {
            Some(app) => self.config.program_ready_timeout(app),
            None => self.config.ready_timeout.duration(),
        };
        let ready_by = Some(started + ready_timeout).filter(|_| !ready_timeout.is_zero());
        // A program that does not speak sd_notify (ready_timeout = 0) serves at once.
        let serves_at_once = exec_app.is_some_and(|app| !app.notifies());
        let kind = self.watched_as(id, pipes)?;
        let mut worker = Worker::new(
            WorkerProcess::Child(pid),
            id,
            kind,
            generation,
            started,
            row,
            ready_by,
        );
        if serves_at_once {
            worker.mark_ready();
            worker.row.set_state(WorkerState::Idle);
        }
        self.pool.add(worker);
        Ok(Spawned::Started(pid))
    }

    /// What the child forked for slot `id` runs: `exec_app` (with its output `pipes`), or
    /// the built-in HTTP or cron loop; `row` is its scoreboard row.
    fn worker_run<'a>(
        &'a self,
        id: WorkerId,
        exec_app: Option<&'a ExecApp>,
        pipes: Option<&'a exec::ExecPipes>,
        listener: Option<&'a TcpListener>,
        row: &'a WorkerRow,
        http_settings: &'a HttpSettings,
    ) -> io::Result<WorkerRun<'a>> {
        Ok(match (exec_app, pipes, listener) {
            (Some(app), Some(pipes), listener) => WorkerRun::Program(ProgramSpec {
                app,
                output: pipes.for_child(),
                listener,
                notify_path: self.notifications.path(),
                watchdog: self.enforcer.limits().heartbeat,
                // The worker kit, for an HTTP worker's program that runs forkwarden's own loop.
                kit: (id.role == Role::Http).then(|| KitParts {
                    settings: self.handed_settings.as_fd(),
                    board: &self.board,
                    doorbell: &self.doorbell,
                    handoff: self.sockets.handoff(),
                    row,
                }),
                template: None,
            }),
            (None, _, Some(listener)) if id.role == Role::Http => WorkerRun::Http {
                listener,
                handoff: self.sockets.handoff(),
                settings: http_settings,
                app: &*self.app,
            },
            (None, _, _) if id.role == Role::Cron => WorkerRun::Cron {
                calls_path: self.templates.calls_path(),
                server_started: self.started_at,
            },
            (None, _, _) if id.role == Role::Job => WorkerRun::Job {
                calls_path: self.templates.calls_path(),
                deaths: &[],
            },
            _ => return Err(io::Error::other(format!("{id}: nothing to run"))),
        })
    }

    /// How the master watches the worker it just forked for slot `id`: a program through
    /// its output `pipes` (now in the poll), a cron worker with its jobs' counts.
    fn watched_as(
        &mut self,
        id: WorkerId,
        pipes: Option<exec::ExecPipes>,
    ) -> io::Result<WorkerKind> {
        Ok(match pipes {
            Some(pipes) => {
                let tokens = self.output_tokens.pair();
                let limit_request = crate::limits::request_limit_for_worker(&self.config);
                WorkerKind::Program(Box::new(exec::ExecState::new(
                    pipes,
                    tokens,
                    self.poll.registry(),
                    limit_request,
                    self.enforcer.limits().heartbeat,
                )?))
            }
            None if id.role == Role::Job => WorkerKind::Job {
                kinds: self
                    .config
                    .job
                    .iter()
                    .map(|kind| kind.name.clone())
                    .collect(),
                channels: self
                    .config
                    .job_channels()
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            },
            None if id.role == Role::Cron => WorkerKind::Cron {
                jobs: self
                    .config
                    .cron
                    .iter()
                    .map(|job| job.name.clone())
                    .collect(),
            },
            None => WorkerKind::Http,
        })
    }

    /// Tells workers to stop whose slot is gone or whose replacement is ready, and
    /// templates no longer needed.
    fn retire_replaced(&mut self) {
        for (pid, reason) in self.pool.to_retire() {
            self.retire(pid, reason);
        }
        self.retire_old_templates();
    }

    /// Asks a worker to finish its current work and exit (SIGTERM); it is killed if it has
    /// not within `graceful_timeout`.
    fn retire(&mut self, pid: Pid, reason: RetireReason) {
        let deadline = Instant::now() + self.config.graceful_timeout.duration();
        if let Some(worker) = self.pool.get_mut(pid) {
            debug!(pid = pid.as_raw(), "stopping {}: {reason}", worker.name());
            worker.row.request_stop();
            worker.depart(
                Departure::Retire {
                    reason,
                    deadline,
                    signalled: true,
                },
                false,
            );
            worker.signal(Signal::SIGTERM);
        }
    }

    // ---- step 6: wait ----

    /// Sleeps until a signal, a worker's bell or notification, a program's output, or the
    /// earliest deadline.
    fn wait(&mut self, events: &mut Events) -> io::Result<()> {
        let include_respawns = !self.phase.is_stopping();
        let limit_checks = self
            .enforcer
            .next_deadline()
            .filter(|_| !self.pool.is_empty());
        let timeout = self
            .pool
            .next_deadline(include_respawns)
            .into_iter()
            .chain(limit_checks)
            .chain(self.templates.next_deadline(include_respawns))
            .chain(self.strays.deadline())
            .chain(self.exec_output_deadline())
            .chain(
                self.control
                    .as_ref()
                    .and_then(control::ControlSocket::next_deadline),
            )
            .chain(
                self.metrics
                    .as_ref()
                    .and_then(metrics::MetricsListener::next_deadline),
            )
            .min()
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
        // Output left unread by its budget last turn: look again without sleeping.
        let timeout = if self.exec_output_pending() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        match self.poll.poll(events, timeout) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
        let mut output = Vec::new();
        let mut status_asked = false;
        for event in events.iter() {
            match EventSource::of(event.token()) {
                EventSource::Doorbell => {
                    self.doorbell.silence();
                    // A worker is ready, or woke the master from rest: look at once.
                    self.enforcer.scan_now();
                }
                EventSource::ControlListener => status_asked = true,
                EventSource::ControlReader(key) => {
                    if let Some(control) = &mut self.control {
                        control.write_to(key, self.poll.registry());
                    }
                }
                EventSource::MetricsListener => {
                    if let Some(metrics) = &mut self.metrics {
                        metrics.accept(self.poll.registry());
                    }
                }
                EventSource::MetricsConnection(key) => self.serve_metrics_connection(key),
                EventSource::Output(_) => output.push(event.token()),
                // Read at the top of every turn, woken or not.
                EventSource::Signals | EventSource::Notifications => {}
            }
        }
        if let Some(control) = &mut self.control {
            control.expire(Instant::now(), self.poll.registry());
        }
        if let Some(metrics) = &mut self.metrics {
            metrics.expire(Instant::now(), self.poll.registry());
        }
        if status_asked {
            self.answer_status();
        }
        self.read_exec_output(&output);
        // Read notifications whatever woke us: a program's READY=1 is queued before its
        // exit, so reading it here, before the next reap, keeps the two in order.
        self.read_notifications();
        Ok(())
    }

    fn read_notifications(&mut self) {
        loop {
            match self.notifications.recv() {
                Ok(Some(notification)) => self.on_notification(&notification),
                Ok(None) => return,
                Err(error) => {
                    warn!("reading worker notifications failed: {error}");
                    return;
                }
            }
        }
    }

    fn on_notification(&mut self, notification: &Notification) {
        if self.on_template_notification(notification) {
            return;
        }
        // A worker forked by a template says so first (possibly with more in the message).
        self.adopt_forked(notification);
        let Some(worker) = self.pool.get_mut(notification.pid) else {
            return;
        };
        if worker.kind.program().is_none() {
            return;
        }
        if worker.is_serving() && !worker.is_ready() && self.refuse_other_kit(notification) {
            return;
        }
        let Some(worker) = self.pool.get_mut(notification.pid) else {
            return;
        };
        if notification.get("READY") == Some("1") && worker.mark_ready() {
            // The master keeps an exec worker's scoreboard row: the program cannot.
            worker.row.set_state(WorkerState::Idle);
            debug!(
                pid = worker.pid.as_raw(),
                "{} ready after {}",
                worker.name(),
                elapsed(worker.started.elapsed())
            );
        }
        self.on_exec_notification(notification);
    }

    /// Last resort when the loop itself fails: no worker may outlive the master.
    fn kill_all_and_reap(&mut self) {
        for worker in self.pool.workers() {
            worker.signal(Signal::SIGKILL);
            let _ = waitpid(worker.pid, None);
        }
        self.kill_templates();
        for pid in self.templates.pids() {
            let _ = waitpid(pid, None);
        }
    }
}

/// The master's private directory, under `$RUNTIME_DIRECTORY` when systemd gives one, else
/// the system's temporary directory: the master's (0700), or with `user`, root's with the
/// workers' group allowed through (0710) to reach the sockets in it, but never to create,
/// rename or replace anything there. So the master's own calls there by path (bind, chown
/// of a socket it just made) cannot be redirected.
fn runtime_dir(config: &Config) -> Result<tempfile::TempDir, MasterError> {
    let base = std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let error = |source| MasterError::RuntimeDir {
        path: base.clone(),
        source,
    };
    let dir = tempfile::Builder::new()
        .prefix("forkwarden-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(error)?;
    if let Some(workers) = config
        .run_as
        .as_ref()
        .and_then(crate::config::RunAs::fs_identity)
    {
        let opened = nix::fcntl::open(
            dir.path(),
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_NOFOLLOW,
            nix::sys::stat::Mode::empty(),
        );
        opened
            .and_then(|fd| {
                nix::unistd::fchown(&fd, None, Some(workers.gid))?;
                nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o710))
            })
            .map_err(|errno| error(errno.into()))?;
    }
    Ok(dir)
}

/// Gives `path`, a socket the master just made in its private directory, to the user
/// workers run as (`user`), so that programs can reach it.
fn give_to_workers_user(config: &Config, path: &std::path::Path) -> io::Result<()> {
    match config
        .run_as
        .as_ref()
        .and_then(crate::config::RunAs::fs_identity)
    {
        Some(workers) => {
            std::os::unix::fs::lchown(path, Some(workers.uid.as_raw()), Some(workers.gid.as_raw()))
        }
        None => Ok(()),
    }
}

/// Binds the HTTP socket of `config`.
fn bind_http(config: &Config) -> Result<TcpListener, MasterError> {
    let address = SocketAddr::new(config.http_interface, config.http_port);
    sockets::bind(address, config.listen_backlog)
        .and_then(|listener| {
            forkwarden_worker::http::configure_listener(&listener, config.socket_timeout())?;
            Ok(listener)
        })
        .map_err(|source| MasterError::Bind { address, source })
}

/// Logs the end of a worker: a warning when nobody planned it.
/// Logs `line` about a worker with its `facts` as fields (and its replacement's pid).
fn log_worker(level: Level, facts: &Facts, new_pid: Option<Pid>, line: &str) {
    macro_rules! at {
        ($level:expr) => {
            tracing::event!(
                $level,
                event = facts.event,
                role = facts.role,
                slot = facts.slot,
                pid = facts.pid,
                cause = facts.cause.as_str(),
                request = facts.request.as_deref(),
                uptime = facts.uptime,
                requests = facts.requests,
                limit = facts.limit,
                value = facts.value,
                limit_value = facts.limit_value,
                failures_in_a_row = facts.failures_in_a_row,
                new_pid = new_pid.map(Pid::as_raw),
                "{line}"
            )
        };
    }
    match level {
        Level::ERROR => at!(Level::ERROR),
        Level::WARN => at!(Level::WARN),
        _ => at!(Level::INFO),
    }
}

fn signal_name(signal: i32) -> &'static str {
    Signal::try_from(signal).map_or("signal", Signal::as_str)
}
