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
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook_mio::v1_0::Signals;
use tracing::{debug, error, info, warn};

pub use pidfile::PidfileError;
pub use pool::{Role, WorkerId};

use crate::app::AppFactory;
use crate::config::{Config, RESTART_ONLY_KEYS};
use crate::log::Logging;
use crate::notify::{self, Notification, Notifier, NotifyReceiver};
use crate::scoreboard::{WorkerRow, WorkerState};
use crate::sys::{self, MASTER_SIGNALS};
use crate::worker::{self, WorkerSpec};
use pidfile::Pidfile;
use pool::{PendingReport, Pool, RetireReason, Retiring, Worker};
use report::{Ending, Verdict, format_uptime};

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
        let pidfile = config.pidfile.as_deref().map(Pidfile::create).transpose()?;
        sys::set_process_title(&format!("forkwarden: master ({})", config_path.display()));
        Ok(Self {
            pool: Pool::new(config.workers, config.max_cron_threads),
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
                    worker.kill_reason = Some("the server was told to stop at once".into());
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
                    format!("busy for {} on {}", format_uptime(busy), row.request)
                }
                (WorkerState::Booting, _) => "booting".to_string(),
                _ => "idle".to_string(),
            };
            let retiring = worker
                .retiring
                .map(|retiring| format!(", stopping ({})", retiring.reason))
                .unwrap_or_default();
            info!(
                "status: {} (pid {}, generation {}): {state}{retiring}, up {}, {} served",
                worker.id,
                worker.pid,
                worker.generation,
                format_uptime(now.saturating_duration_since(worker.started)),
                row.requests
            );
        }
    }

    // ---- step 2: reap ----

    /// Collects every child that has exited and decides what its end means.
    fn reap_children(&mut self) {
        loop {
            let (pid, ending) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, status)) => (pid, Ending::Exited(status)),
                Ok(WaitStatus::Signaled(pid, signal, core_dumped)) => (
                    pid,
                    Ending::Signaled {
                        signal,
                        core_dumped,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(errno) => {
                    error!("waitpid failed: {errno}");
                    return;
                }
            };
            self.on_worker_exit(pid, ending);
        }
    }

    fn on_worker_exit(&mut self, pid: Pid, ending: Ending) {
        let Some(mut worker) = self.pool.take(pid) else {
            debug!("reaped pid {pid}, which is not a worker: {ending}");
            return;
        };
        let now = Instant::now();
        let row = worker.row.snapshot();
        // A worker that left Booting had reported ready, even if the datagram was not read.
        worker.ready |= row.state != WorkerState::Booting;
        let report = report::report(&worker, ending, &row, now);
        let id = worker.id;
        let unexpected = report.verdict.is_unexpected();
        let log = |line: String| {
            if unexpected {
                warn!("{line}");
            } else {
                info!("{line}");
            }
        };
        if report.verdict == Verdict::Critical && self.stopping.is_none() {
            error!("{}; stopping the server", report.line);
            self.begin_stop("critical error in a worker", EXIT_STATUS_CRITICAL);
        } else if self.stopping.is_some() || worker.retiring.is_some() {
            log(report.line);
        } else if !self.pool.is_wanted(id) {
            log(format!(
                "{}; not replaced: its slot is no longer wanted",
                report.line
            ));
        } else if let Some(current) = self.pool.current(id) {
            log(format!(
                "{}; its slot is served by pid {}",
                report.line, current.pid
            ));
        } else {
            let delay = self.pool.record_exit(id, report.failed_start, now);
            if delay.is_zero() {
                self.pool.set_pending_report(
                    id,
                    PendingReport {
                        line: report.line,
                        unexpected,
                    },
                );
            } else {
                warn!(
                    "{}; restarting in {} ({} failed starts in a row)",
                    report.line,
                    format_uptime(delay),
                    self.pool.failures_in_a_row(id)
                );
            }
        }
    }

    // ---- step 3: deadlines ----

    /// Kills workers that were told to stop and have not within `graceful_timeout`.
    fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        let timeout = self.config.graceful_timeout;
        for worker in self.pool.workers_mut() {
            let Some(retiring) = worker.retiring else {
                continue;
            };
            if worker.kill_reason.is_none() && retiring.deadline <= now {
                worker.kill_reason = Some(format!(
                    "did not stop within graceful_timeout ({timeout}) after being told to ({})",
                    retiring.reason
                ));
                send_signal(worker.pid, Signal::SIGKILL);
            }
        }
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
                        format_uptime(SPAWN_RETRY)
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
        };
        let started = Instant::now();
        let pid = sys::fork_process(|| worker::run(spec))?;
        self.pool.add(Worker {
            pid,
            id,
            generation,
            started,
            ready: false,
            row,
            retiring: None,
            kill_reason: None,
        });
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
            worker.retiring = Some(Retiring { reason, deadline });
            send_signal(pid, Signal::SIGTERM);
        }
    }

    // ---- step 5: wait ----

    /// Sleeps until a signal, a worker notification or the earliest deadline.
    fn wait(&mut self, events: &mut Events) -> io::Result<()> {
        let include_respawns = self.stopping.is_none();
        let timeout = self
            .pool
            .next_deadline(include_respawns)
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
                format_uptime(worker.started.elapsed())
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
        .map_err(|source| MasterError::Bind { address, source })?;
    let bound = listener.local_addr()?;
    info!("listening on http://{bound}");
    Ok(listener)
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
