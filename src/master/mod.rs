//! The master: one single-threaded poll loop that keeps the worker population alive.
//!
//! Each turn is a few short steps, in the manner of Odoo's and gunicorn's masters:
//! handle signals (`signals.rs`), reap children (here), enforce deadlines and limits
//! (`enforce.rs`), spawn missing workers and retire replaced ones (here), then wait for the
//! next event: a signal, a worker's notification, or the earliest deadline. The population
//! and its backoff live in `pool.rs`, the one-line exit reports in `report.rs`. The master
//! never busy-polls, never runs application code and never touches a client connection.

mod enforce;
mod exec;
mod listener;
mod pidfile;
mod pool;
mod report;
mod signals;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook_mio::v1_0::Signals;
use tracing::{debug, error, info, warn};

pub use pidfile::PidfileError;
pub use pool::{Role, WorkerId};

use crate::app::AppFactory;
use crate::config::Config;
use crate::format::elapsed;
use crate::limits::MasterLimits;
use crate::log::Logging;
use crate::notify::{self, Notification, Notifier, NotifyReceiver};
use crate::scoreboard::{WorkerRow, WorkerState};
use crate::sys::{self, MASTER_SIGNALS};
use crate::worker::{self, WorkerSpec};
use pidfile::Pidfile;
use pool::{PendingReport, Pool, RetireReason, Retiring, Worker};
use report::{Ending, Exit, Verdict};

const SIGNALS: Token = Token(0);
const NOTIFICATIONS: Token = Token(1);
/// Exec workers' output pipes get tokens from here on.
const FIRST_OUTPUT_TOKEN: usize = 2;

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
    /// The next poll token for an exec worker's output pipe.
    next_token: usize,
    /// RLIMIT_CPU's hard limit, which workers inherit; exec workers' soft limit stays below.
    cpu_hard_limit: u64,
    limits: MasterLimits,
    /// When the workers' RSS and scoreboard rows are next looked at.
    next_limit_scan: Option<Instant>,
    /// The earliest moment a request in flight crosses its wall-clock limit.
    next_request_deadline: Option<Instant>,
    stopping: Option<Stopping>,
    /// systemd (`Type=notify`), told `READY=1` once the first population is ready.
    service_manager: Option<crate::notify::ServiceManager>,
    announced_ready: bool,
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
            next_token: FIRST_OUTPUT_TOKEN,
            cpu_hard_limit: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CPU)
                .map_or(libc::RLIM_INFINITY, |(_, hard)| hard),
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
            service_manager: crate::notify::ServiceManager::from_environment(),
            announced_ready: false,
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
        if let Some(app) = &self.config.app {
            info!(
                "[app] {:?}: each http worker runs it with the socket as fd 3 and \
                 NOTIFY_SOCKET={}; memory limits, ready_timeout, the watchdog and respawn apply \
                 to any program; limit_time_real, limit_time_cpu, limit_request and a graceful \
                 limit_memory_soft recycle need the program to send BUSY=1/IDLE=1 around each \
                 request (forkwarden_wsgi does)",
                app.command,
                self.notifications.address()
            );
        }
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
            self.announce_readiness();
            if let Err(error) = self.wait(&mut events) {
                error!("the event loop failed: {error}; killing all workers");
                self.kill_all_and_reap();
                return EXIT_STATUS_FAILURE;
            }
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
        let name = worker.name();
        if let Some(exec) = &mut worker.exec {
            // The program's last words come before the line about its end.
            exec.close(&name, self.poll.registry());
        }
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

    /// Tells the service manager, once, that the server is ready: every wanted worker of the
    /// first population has reported ready (so `systemctl start` returns when it can serve).
    fn announce_readiness(&mut self) {
        if self.announced_ready || self.stopping.is_some() || !self.pool.all_ready() {
            return;
        }
        self.announced_ready = true;
        if let Some(manager) = &self.service_manager {
            manager.send(&format!(
                "READY=1\nSTATUS={} http and {} cron workers ready\nMAINPID={}",
                self.pool.wanted(Role::Http),
                self.pool.wanted(Role::Cron),
                self.pid
            ));
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
        let exec_app = self.config.app.as_ref().filter(|_| id.role == Role::Http);
        let pipes = exec_app.map(|_| exec::ExecPipes::new()).transpose()?;
        let spec = WorkerSpec {
            id,
            generation,
            master_pid: self.pid,
            config: &self.config,
            listener: self.listener.as_ref(),
            notifier: &self.notifier,
            row: &row,
            app: &*self.app,
            notify_address: self.notifications.address(),
            exec_output: pipes.as_ref().map(exec::ExecPipes::for_child),
            server_started: self.started_at,
        };
        let started = Instant::now();
        let pid = sys::fork_process(|| worker::run(spec))?;
        let mut worker = Worker::new(pid, id, generation, started, row);
        if let (Some(app), Some(pipes)) = (exec_app, pipes) {
            let tokens = [Token(self.next_token), Token(self.next_token + 1)];
            self.next_token += 2;
            let ready_timeout = app.ready_timeout.duration();
            let limit_request = crate::limits::request_limit_for_worker(&self.config);
            let state = exec::ExecState::new(
                pipes,
                tokens,
                self.poll.registry(),
                ready_timeout,
                limit_request,
            )?;
            // A program that does not speak sd_notify (ready_timeout = 0) serves at once.
            worker.ready = ready_timeout.is_zero();
            if worker.ready {
                worker.row.set_state(crate::scoreboard::WorkerState::Idle);
            }
            worker.exec = Some(state);
        }
        self.pool.add(worker);
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
            worker.signal(Signal::SIGTERM);
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
        let output: Vec<Token> = events
            .iter()
            .map(|event| event.token())
            .filter(|token| token.0 >= FIRST_OUTPUT_TOKEN)
            .collect();
        self.read_exec_output(&output);
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
            if worker.exec.is_some() {
                // The master keeps an exec worker's scoreboard row: the program cannot.
                worker.row.set_state(crate::scoreboard::WorkerState::Idle);
            }
            debug!(
                "{} (pid {}) ready after {}",
                worker.id,
                worker.pid,
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

fn signal_name(signal: i32) -> &'static str {
    Signal::try_from(signal).map_or("signal", Signal::as_str)
}
