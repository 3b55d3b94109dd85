//! The master: one single-threaded poll loop that keeps the worker population alive.
//!
//! Each turn is a few short steps, in the manner of Odoo's and gunicorn's masters:
//! [`Master::handle_signals`], [`Master::reap_children`], [`Master::enforce_deadlines`],
//! [`Master::spawn_missing`], [`Master::retire_replaced`], then [`Master::wait`] for the next
//! event: a signal, a worker's notification, or the earliest deadline. The master never
//! busy-polls, never runs application code and never touches a client connection.

mod listener;
mod pidfile;
mod pool;
mod report;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook_mio::v1_0::Signals;
use tracing::{debug, error, info, warn};

pub use pidfile::PidfileError;
pub use pool::{Role, WorkerId};

use crate::app::AppFactory;
use crate::config::{Config, RESTART_ONLY_KEYS};
use crate::format::elapsed;
use crate::limits::{self, EXPIRY_GRACE, Enforcement, MasterLimits, Observation};
use crate::log::Logging;
use crate::notify::{self, Notification, Notifier, NotifyReceiver};
use crate::scoreboard::{WorkerRow, WorkerState};
use crate::sys::{self, MASTER_SIGNALS};
use crate::worker::{self, WorkerSpec};
use pidfile::Pidfile;
use pool::{Kill, PendingReport, Pool, RetireReason, Retiring, Worker};
use report::{Ending, Exit, Verdict};

const SIGNALS: Token = Token(0);
const NOTIFICATIONS: Token = Token(1);

/// How long a slot waits before another attempt when fork() itself failed.
const SPAWN_RETRY: Duration = Duration::from_secs(1);

/// The master's exit status after a worker reported a critical error (it exited with 3).
pub const EXIT_STATUS_CRITICAL: u8 = 3;
/// The master's exit status when its event loop broke down.
pub const EXIT_STATUS_FAILURE: u8 = 1;

/// Why the master could not start.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot listen on {address} (http_interface, http_port): {source}")]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    #[error(transparent)]
    Pidfile(#[from] PidfileError),
    #[error("cannot use data_dir {} for cron state: {source}", path.display())]
    DataDir { path: PathBuf, source: io::Error },
    #[error("the master must be single-threaded to fork safely, but it has {0} threads")]
    Threaded(usize),
    #[error("cannot set up the event loop: {0}")]
    EventLoop(#[from] io::Error),
}

/// The server is on its way down.
struct Stopping {
    exit_status: u8,
    /// A second stop signal arrived: every worker was killed.
    forced: bool,
}

pub struct Master {
    config: Config,
    config_path: PathBuf,
    pid: Pid,
    app: Box<AppFactory>,
    logging: Logging,
    poll: Poll,
    signals: Signals,
    notifier: Notifier,
    notifications: NotifyReceiver,
    listener: Option<TcpListener>,
    pool: Pool,
    /// When this server started: cron runs due before it fell while the server was down.
    started_at: std::time::SystemTime,
    limits: MasterLimits,
    /// When the workers' RSS and scoreboard rows are next looked at.
    next_limit_scan: Option<Instant>,
    /// The earliest moment a request in flight crosses its wall-clock limit.
    next_request_deadline: Option<Instant>,
    stopping: Option<Stopping>,
    /// Dropped (and so removed) when the master returns from [`Master::run`].
    _pidfile: Option<Pidfile>,
}

impl Master {
    /// Sets the master up: signal handling, the listening socket (when there are HTTP
    /// workers) and the pid file. Nothing is forked yet.
    pub fn new(
        config: Config,
        config_path: PathBuf,
        app: Box<AppFactory>,
        logging: Logging,
    ) -> Result<Self, MasterError> {
        let threads = sys::thread_count()?;
        if threads != 1 {
            return Err(MasterError::Threaded(threads));
        }
        let poll = Poll::new()?;
        let mut signals = Signals::new(MASTER_SIGNALS.map(|signal| signal as i32))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let (notifier, mut notifications) = notify::channel()?;
        poll.registry()
            .register(notifications.source(), NOTIFICATIONS, Interest::READABLE)?;
        let listener = if config.workers > 0 {
            Some(bind_http(&config)?)
        } else {
            None
        };
        if !config.cron.is_empty() {
            crate::cron::JobStore::open(&config.data_dir).map_err(|source| {
                MasterError::DataDir {
                    path: config.data_dir.clone(),
                    source,
                }
            })?;
        }
        let pidfile = config.pidfile.as_deref().map(Pidfile::create).transpose()?;
        sys::set_process_title(&format!("forkwarden: master ({})", config_path.display()));
        Ok(Self {
            pool: Pool::new(config.workers, config.max_cron_threads),
            limits: MasterLimits::from_config(&config),
            started_at: std::time::SystemTime::now(),
            next_limit_scan: None,
            next_request_deadline: None,
            config,
            config_path,
            pid: nix::unistd::getpid(),
            app,
            logging,
            poll,
            signals,
            notifier,
            notifications,
            listener,
            stopping: None,
            _pidfile: pidfile,
        })
    }

    /// Runs until the server is stopped; returns the process exit status.
    pub fn run(mut self) -> u8 {
        info!(
            "forkwarden {} master (pid {}) starting {} http and {} cron workers; config {}",
            env!("CARGO_PKG_VERSION"),
            self.pid,
            self.config.workers,
            self.config.max_cron_threads,
            self.config_path.display()
        );
        let mut events = Events::with_capacity(64);
        loop {
            self.handle_signals();
            self.reap_children();
            self.enforce_deadlines();
            self.enforce_limits();
            if let Some(stopping) = &self.stopping
                && self.pool.is_empty()
            {
                info!("all workers have stopped; master exiting");
                return stopping.exit_status;
            }
            self.spawn_missing();
            self.retire_replaced();
            if let Err(error) = self.wait(&mut events) {
                error!("the event loop failed: {error}; killing all workers");
                self.kill_all_and_reap();
                return EXIT_STATUS_FAILURE;
            }
        }
    }

    // ---- step 1: signals ----

    fn handle_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for signal in pending {
            match Signal::try_from(signal) {
                Ok(Signal::SIGTERM | Signal::SIGINT) => {
                    let name = signal_name(signal);
                    self.begin_stop(&format!("{name} received"), 0);
                }
                Ok(Signal::SIGHUP) => self.reload(),
                Ok(Signal::SIGTTIN) => self.scale_http(1),
                Ok(Signal::SIGTTOU) => self.scale_http(-1),
                Ok(Signal::SIGUSR1) => self.reopen_logs(),
                Ok(Signal::SIGQUIT) => self.log_status(),
                // SIGCHLD: children are reaped on every turn.
                _ => {}
            }
        }
    }

    /// SIGTERM/SIGINT: stop accepting, let workers finish, kill what remains after
    /// `graceful_timeout`. A second stop signal kills every worker at once.
    fn begin_stop(&mut self, why: &str, exit_status: u8) {
        match &mut self.stopping {
            None => {
                info!(
                    "{why}: stopping gracefully; {} workers finish their current work (graceful_timeout {})",
                    self.pool.workers().count(),
                    self.config.graceful_timeout
                );
                self.stopping = Some(Stopping {
                    exit_status,
                    forced: false,
                });
                // Close the master's copy of the socket; each worker closes its own on exit.
                self.listener = None;
                let running: Vec<Pid> = self
                    .pool
                    .workers()
                    .filter(|worker| worker.retiring.is_none())
                    .map(|worker| worker.pid)
                    .collect();
                for pid in running {
                    self.retire(pid, RetireReason::Shutdown);
                }
            }
            Some(stopping) if !stopping.forced => {
                stopping.forced = true;
                warn!(
                    "{why} while stopping: killing the {} remaining workers now",
                    self.pool.workers().count()
                );
                for worker in self.pool.workers_mut() {
                    worker.kill = Some(Kill {
                        reason: "the server was told to stop at once".into(),
                        sigkill_at: None,
                    });
                    worker.reported = false;
                    send_signal(worker.pid, Signal::SIGKILL);
                }
            }
            Some(_) => {}
        }
    }

    /// SIGHUP: re-read the config; if it is valid, replace every worker by one of a new
    /// generation, gracefully; if not, say why and keep running as before.
    fn reload(&mut self) {
        if self.stopping.is_some() {
            info!("SIGHUP ignored: the server is stopping");
            return;
        }
        let mut new = match Config::load(&self.config_path) {
            Ok(config) => config,
            Err(error) => {
                error!(
                    "SIGHUP: the config was not reloaded; the running config stays in force: {error}"
                );
                return;
            }
        };
        for change in self.config.changes(&new) {
            if RESTART_ONLY_KEYS.contains(&change.key.as_str()) {
                warn!("SIGHUP: {change}: takes effect only after a restart");
            } else {
                info!("SIGHUP: {change}");
            }
        }
        new.keep_restart_only_values(&self.config);
        if let Err(error) = self.logging.apply(&new) {
            error!("SIGHUP: {error}; logging goes on as before");
            new.logfile.clone_from(&self.config.logfile);
        }
        self.config = new;
        self.limits = MasterLimits::from_config(&self.config);
        if let Some(listener) = &self.listener
            && let Err(error) =
                crate::http::configure_listener(listener, self.config.socket_timeout())
        {
            error!("SIGHUP: cannot apply http_socket_timeout to the listening socket: {error}");
        }
        let generation = self.pool.next_generation();
        self.pool.set_wanted(Role::Http, self.config.workers);
        self.pool
            .set_wanted(Role::Cron, self.config.max_cron_threads);
        info!(
            "SIGHUP: config reloaded; starting generation {generation} ({} http, {} cron workers) to replace the running workers",
            self.config.workers, self.config.max_cron_threads
        );
    }

    /// SIGTTIN/SIGTTOU: one HTTP worker more or fewer, never fewer than one.
    fn scale_http(&mut self, delta: i32) {
        let signal = if delta > 0 { "SIGTTIN" } else { "SIGTTOU" };
        if self.stopping.is_some() {
            info!("{signal} ignored: the server is stopping");
            return;
        }
        let old = self.pool.wanted(Role::Http);
        let new = old.saturating_add_signed(delta).max(1);
        if new == old {
            info!("{signal} ignored: already at {old} http worker, the minimum");
            return;
        }
        self.pool.set_wanted(Role::Http, new);
        info!("{signal}: http workers {old} -> {new}");
    }

    /// SIGUSR1: reopen the log file, and have every worker reopen it too.
    fn reopen_logs(&mut self) {
        match crate::log::reopen() {
            Ok(()) => info!("SIGUSR1: log file reopened"),
            Err(error) => error!("SIGUSR1: {error}"),
        }
        for worker in self.pool.workers() {
            send_signal(worker.pid, Signal::SIGUSR1);
        }
    }

    /// SIGQUIT: one line for the server, one per worker.
    fn log_status(&self) {
        let role_line = |role| format!("{}/{}", self.pool.count(role), self.pool.wanted(role));
        info!(
            "status: master pid {}, config generation {}, http workers {} wanted, cron workers {} wanted{}",
            self.pid,
            self.pool.generation(),
            role_line(Role::Http),
            role_line(Role::Cron),
            if self.stopping.is_some() {
                ", stopping"
            } else {
                ""
            }
        );
        let mut workers: Vec<&Worker> = self.pool.workers().collect();
        workers.sort_by_key(|worker| (worker.id, worker.generation));
        let now = Instant::now();
        for worker in workers {
            let row = worker.row.snapshot();
            let state = match (row.state, row.busy_for) {
                (WorkerState::Busy, Some(busy)) => {
                    format!("busy for {} on {}", elapsed(busy), row.request)
                }
                (WorkerState::Booting, _) => "booting".to_string(),
                _ => "idle".to_string(),
            };
            let leaving = match (&worker.kill, &worker.retiring) {
                (Some(kill), _) => format!(", being killed ({})", kill.reason),
                (None, Some(retiring)) => format!(", stopping ({})", retiring.reason),
                (None, None) => String::new(),
            };
            let rss = worker
                .last_rss
                .map(|rss| format!(", rss {} MiB", rss >> 20))
                .unwrap_or_default();
            info!(
                "status: {} (pid {}, generation {}): {state}{leaving}, up {}, {} served{rss}",
                worker.id,
                worker.pid,
                worker.generation,
                elapsed(now.saturating_duration_since(worker.started)),
                row.requests
            );
        }
    }

    // ---- step 2: reap ----

    /// Collects every child that has exited and decides what its end means.
    fn reap_children(&mut self) {
        loop {
            let reaped = match sys::reap_child() {
                Ok(Some(reaped)) => reaped,
                Ok(None) => return,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    error!("waitpid failed: {errno}");
                    return;
                }
            };
            let (pid, ending) = match reaped.status {
                WaitStatus::Exited(pid, status) => (pid, Ending::Exited(status)),
                WaitStatus::Signaled(pid, signal, core_dumped) => (
                    pid,
                    Ending::Signaled {
                        signal,
                        core_dumped,
                    },
                ),
                _ => continue,
            };
            let exit = Exit {
                ending,
                cpu: Some(reaped.cpu),
            };
            self.on_worker_exit(pid, exit);
        }
    }

    fn on_worker_exit(&mut self, pid: Pid, exit: Exit) {
        let Some(mut worker) = self.pool.take(pid) else {
            debug!("reaped pid {pid}, which is not a worker: {}", exit.ending);
            return;
        };
        let now = Instant::now();
        let row = worker.row.snapshot();
        // A worker that left Booting had reported ready, even if the datagram was not read.
        worker.ready |= row.state != WorkerState::Booting;
        let mut report = report::report(&worker, exit, &row, &self.limits, now);
        if let Some(group) = row.job_group {
            // The cron worker died during a job: the job must not run on unsupervised.
            let _ = nix::sys::signal::killpg(Pid::from_raw(group), Signal::SIGKILL);
            report
                .line
                .push_str(&format!("; its job's process group {group} was killed"));
        }
        let unexpected = report.verdict.is_unexpected();
        if report.verdict == Verdict::Critical && self.stopping.is_none() {
            error!("{}; stopping the server", report.line);
            self.begin_stop("critical error in a worker", EXIT_STATUS_CRITICAL);
        } else if worker.reported {
            debug!("{} (reported when the limit was enforced)", report.line);
        } else if self.stopping.is_some() || worker.retiring.is_some() {
            log_end(&report.line, unexpected);
        } else {
            self.replace(worker.id, report.line, unexpected, report.failed_start, now);
        }
    }

    /// Decides what follows the end of a worker in slot `id` (reported by `line`): a
    /// replacement at once, one after a crash-loop backoff, or none. The line is logged
    /// with the outcome; the replacement's pid is added when it is forked.
    fn replace(
        &mut self,
        id: WorkerId,
        line: String,
        unexpected: bool,
        failed_start: bool,
        now: Instant,
    ) {
        if self.stopping.is_some() {
            log_end(&line, unexpected);
        } else if !self.pool.is_wanted(id) {
            log_end(
                &format!("{line}; not replaced: its slot is no longer wanted"),
                unexpected,
            );
        } else if let Some(current) = self.pool.current(id) {
            log_end(
                &format!("{line}; its slot is served by pid {}", current.pid),
                unexpected,
            );
        } else {
            let delay = self.pool.record_exit(id, failed_start, now);
            if delay.is_zero() {
                self.pool
                    .set_pending_report(id, PendingReport { line, unexpected });
            } else {
                warn!(
                    "{line}; restarting in {} ({} failed starts in a row)",
                    elapsed(delay),
                    self.pool.failures_in_a_row(id)
                );
            }
        }
    }

    // ---- step 3: deadlines ----

    /// Sends the SIGKILLs that are due: to workers told to stop that have not within
    /// `graceful_timeout`, and to expired workers that did not leave within their grace.
    fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        let timeout = self.config.graceful_timeout;
        for worker in self.pool.workers_mut() {
            match (&mut worker.kill, &worker.retiring) {
                (Some(kill), _) if kill.sigkill_at.is_some_and(|at| at <= now) => {
                    kill.sigkill_at = None;
                    send_signal(worker.pid, Signal::SIGKILL);
                }
                (None, Some(retiring)) if retiring.deadline <= now => {
                    worker.kill = Some(Kill {
                        reason: format!(
                            "did not stop within graceful_timeout ({timeout}) after being told to ({})",
                            retiring.reason
                        ),
                        sigkill_at: None,
                    });
                    worker.reported = false;
                    send_signal(worker.pid, Signal::SIGKILL);
                }
                _ => {}
            }
        }
    }

    /// Checks every worker against its limits (see [`crate::limits`]): RSS every
    /// `memory_poll_interval`, wall-clock time on every turn, and acts on what is crossed.
    fn enforce_limits(&mut self) {
        if !self.limits.needs_polling() {
            self.next_limit_scan = None;
            self.next_request_deadline = None;
            return;
        }
        let now = Instant::now();
        let poll_memory =
            self.limits.watches_memory() && self.next_limit_scan.is_none_or(|at| at <= now);
        if self.next_limit_scan.is_none_or(|at| at <= now) {
            self.next_limit_scan = Some(now + self.limits.poll_interval);
        }
        let mut crossed = Vec::new();
        let mut earliest: Option<Instant> = None;
        for worker in self.pool.workers_mut() {
            if worker.kill.is_some() {
                continue;
            }
            let row = worker.row.snapshot();
            if poll_memory {
                // A cron job's processes count towards its cron worker's memory.
                let job = row.job_group.map_or(0, limits::process_group_rss);
                let own = worker.memory.as_ref().and_then(|probe| probe.rss().ok());
                worker.last_rss = own.map(|rss| rss + job);
            }
            let observation = Observation {
                role: Some(worker.id.role),
                age: now.saturating_duration_since(worker.started),
                busy_for: row.busy_for,
                work_limit: row.work_limit,
                rss: worker.last_rss.filter(|_| poll_memory),
                leaving: worker.retiring.is_some(),
            };
            match limits::check(&self.limits, &observation) {
                Some(enforcement) => crossed.push((worker.pid, enforcement)),
                None => {
                    if let Some(left) = limits::time_to_deadline(&self.limits, &observation) {
                        let deadline = now + left;
                        earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
                    }
                }
            }
        }
        self.next_request_deadline = earliest;
        for (pid, enforcement) in crossed {
            self.enforce(pid, enforcement, now);
        }
    }

    /// Acts on a crossed limit and logs it in one line, with the replacement's pid (the
    /// replacement is started at once, in this same turn of the loop).
    fn enforce(&mut self, pid: Pid, enforcement: Enforcement, now: Instant) {
        let graceful = self.config.graceful_timeout.duration();
        let Some(worker) = self.pool.get_mut(pid) else {
            return;
        };
        let row = worker.row.snapshot();
        let (what, unexpected) = match enforcement {
            Enforcement::Kill(detail) => {
                send_signal(pid, Signal::SIGKILL);
                let what = format!("killed: {detail}");
                worker.kill = Some(Kill {
                    reason: detail,
                    sigkill_at: None,
                });
                (what, true)
            }
            Enforcement::Expire(detail) => {
                // The worker answers 504 and leaves; SIGKILL follows if it cannot.
                send_signal(pid, Signal::SIGUSR2);
                let what = format!("killed: {detail}");
                worker.kill = Some(Kill {
                    reason: detail,
                    sigkill_at: Some(now + EXPIRY_GRACE),
                });
                (what, true)
            }
            Enforcement::Recycle(detail) => {
                worker.row.request_stop();
                send_signal(pid, Signal::SIGTERM);
                let what = format!("recycled: {detail}");
                worker.retiring = Some(Retiring {
                    reason: RetireReason::Limit(detail),
                    deadline: now + graceful,
                });
                (what, false)
            }
        };
        worker.reported = true;
        let (line, failed_start) = report::describe(worker, &what, true, &row, now);
        let id = worker.id;
        self.replace(id, line, unexpected, failed_start, now);
    }

    // ---- step 4: spawn and retire ----

    /// Starts a worker in every slot that wants one and may have one now.
    fn spawn_missing(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let now = Instant::now();
        for id in self.pool.slots_to_fill(now) {
            let pending = self.pool.take_pending_report(id);
            match (self.spawn(id), pending) {
                (Ok(pid), Some(report)) if report.unexpected => {
                    warn!("{}; respawned as pid {pid}", report.line);
                }
                (Ok(pid), Some(report)) => info!("{}; respawned as pid {pid}", report.line),
                (Ok(pid), None) => info!("{id} started as pid {pid}"),
                (Err(error), pending) => {
                    if let Some(report) = pending {
                        warn!("{}", report.line);
                    }
                    error!(
                        "cannot start {id}: {error}; trying again in {}",
                        elapsed(SPAWN_RETRY)
                    );
                    self.pool.delay_slot(id, now + SPAWN_RETRY);
                }
            }
        }
    }

    /// Forks a worker for slot `id`.
    fn spawn(&mut self, id: WorkerId) -> io::Result<Pid> {
        if id.role == Role::Http && self.listener.is_none() {
            let listener = bind_http(&self.config).map_err(io::Error::other)?;
            self.listener = Some(listener);
        }
        let row = WorkerRow::new()?;
        let generation = self.pool.generation();
        let spec = WorkerSpec {
            id,
            generation,
            master_pid: self.pid,
            config: &self.config,
            listener: self.listener.as_ref(),
            notifier: &self.notifier,
            row: &row,
            app: &*self.app,
            server_started: self.started_at,
        };
        let started = Instant::now();
        let pid = sys::fork_process(|| worker::run(spec))?;
        self.pool
            .add(Worker::new(pid, id, generation, started, row));
        Ok(pid)
    }

    /// Tells workers to stop whose slot is gone or whose replacement is ready.
    fn retire_replaced(&mut self) {
        for (pid, reason) in self.pool.to_retire() {
            self.retire(pid, reason);
        }
    }

    /// Asks a worker to finish its current work and exit (SIGTERM); it is killed if it has
    /// not within `graceful_timeout`.
    fn retire(&mut self, pid: Pid, reason: RetireReason) {
        let deadline = Instant::now() + self.config.graceful_timeout.duration();
        if let Some(worker) = self.pool.get_mut(pid) {
            debug!("stopping {} (pid {pid}): {reason}", worker.id);
            worker.row.request_stop();
            worker.retiring = Some(Retiring { reason, deadline });
            send_signal(pid, Signal::SIGTERM);
        }
    }

    // ---- step 5: wait ----

    /// Sleeps until a signal, a worker notification or the earliest deadline.
    fn wait(&mut self, events: &mut Events) -> io::Result<()> {
        let include_respawns = self.stopping.is_none();
        let limit_checks = [self.next_limit_scan, self.next_request_deadline]
            .into_iter()
            .flatten()
            .filter(|_| !self.pool.is_empty());
        let timeout = self
            .pool
            .next_deadline(include_respawns)
            .into_iter()
            .chain(limit_checks)
            .min()
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
        match self.poll.poll(events, timeout) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
        // Read notifications whatever woke us: a worker's READY=1 is queued before its exit,
        // so reading it here, before the next reap, keeps the two in order.
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
        let Some(worker) = self.pool.get_mut(notification.pid) else {
            return;
        };
        if notification.get("READY") == Some("1") && !worker.ready {
            worker.ready = true;
            debug!(
                "{} (pid {}) ready after {}",
                worker.id,
                worker.pid,
                elapsed(worker.started.elapsed())
            );
        }
    }

    /// Last resort when the loop itself fails: no worker may outlive the master.
    fn kill_all_and_reap(&mut self) {
        let pids: Vec<Pid> = self.pool.workers().map(|worker| worker.pid).collect();
        for pid in pids {
            send_signal(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// Binds the HTTP socket of `config` and says where it listens.
fn bind_http(config: &Config) -> Result<TcpListener, MasterError> {
    let address = SocketAddr::new(config.http_interface, config.http_port);
    let listener = listener::bind(address, config.listen_backlog)
        .and_then(|listener| {
            crate::http::configure_listener(&listener, config.socket_timeout())?;
            Ok(listener)
        })
        .map_err(|source| MasterError::Bind { address, source })?;
    let bound = listener.local_addr()?;
    info!("listening on http://{bound}");
    Ok(listener)
}

/// Logs the end of a worker: a warning when nobody planned it.
fn log_end(line: &str, unexpected: bool) {
    if unexpected {
        warn!("{line}");
    } else {
        info!("{line}");
    }
}

/// Sends `signal` to a worker; a worker that is already gone will be reaped anyway.
fn send_signal(pid: Pid, signal: Signal) {
    if let Err(errno) = kill(pid, signal)
        && errno != Errno::ESRCH
    {
        warn!("cannot send {} to pid {pid}: {errno}", signal.as_str());
    }
}

fn signal_name(signal: i32) -> &'static str {
    Signal::try_from(signal).map_or("signal", Signal::as_str)
}
