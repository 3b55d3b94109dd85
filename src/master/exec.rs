//! What the master does for exec workers (`[app]`): it reads their output, understands
//! their sd_notify messages (readiness, request markers, watchdog, status), and brings the
//! per-request limits to them from outside, since it cannot run code inside them.
//!
//! | message | effect |
//! |---|---|
//! | `READY=1` | the worker serves (a reload waits for it); until then `ready_timeout` runs |
//! | `BUSY=1`, `REQUEST=GET /path` | a request started: `limit_time_real` counts from now, RLIMIT_CPU is moved to the CPU used plus `limit_time_cpu` (`prlimit`) |
//! | `IDLE=1` | it ended: counts towards `limit_request`; a deferred recycle happens now |
//! | `WATCHDOG_USEC=N`, `WATCHDOG=1` | liveness: past N µs without `WATCHDOG=1`, the worker is killed |
//! | `STATUS=...` | shown in the SIGQUIT snapshot |
//! | `STOPPING=1` | logged |

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry, Token};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use super::Master;
use super::pool::worker_name;
use crate::notify::Notification;
use crate::output::LineSplitter;
use crate::worker::ExecOutput;

/// How much of one output pipe the master reads per turn of its loop: a program flooding
/// its output gets its share of the master's time, not all of it.
const OUTPUT_BUDGET: usize = 64 * 1024;

/// The write ends of a new exec worker's output pipes, handed to the child.
pub struct ExecPipes {
    stdout: Sender,
    stderr: Sender,
    receivers: [Receiver; 2],
}

impl ExecPipes {
    pub fn new() -> io::Result<Self> {
        let (stdout, out) = mio::unix::pipe::new()?;
        let (stderr, err) = mio::unix::pipe::new()?;
        // The program writes with ordinary blocking writes; a full pipe makes it wait.
        stdout.set_nonblocking(false)?;
        stderr.set_nonblocking(false)?;
        Ok(Self {
            stdout,
            stderr,
            receivers: [out, err],
        })
    }

    /// The ends the child puts on its descriptors 1 and 2.
    pub fn for_child(&self) -> ExecOutput<'_> {
        ExecOutput {
            stdout: self.stdout.as_fd(),
            stderr: self.stderr.as_fd(),
        }
    }
}

/// The master's side of one exec worker.
pub struct ExecState {
    outputs: [OutputPipe; 2],
    /// The last `STATUS=`.
    pub status: Option<String>,
    /// Liveness period declared with `WATCHDOG_USEC`.
    pub watchdog: Option<Duration>,
    /// The last `WATCHDOG=1` (or the start).
    pub last_alive: Instant,
    /// When an unready worker is killed (`ready_timeout`).
    pub ready_deadline: Option<Instant>,
    /// A graceful stop was decided while a request ran: SIGTERM waits for `IDLE=1`.
    pub stop_deferred: bool,
    /// This worker's `limit_request` (with jitter; 0: none).
    pub limit_request: u64,
    /// It has sent request markers, so the per-request limits reach it.
    pub sends_markers: bool,
}

struct OutputPipe {
    pipe: Receiver,
    token: Token,
    lines: LineSplitter,
    tag: &'static str,
    open: bool,
    /// More was waiting when the budget ran out.
    pending: bool,
}

impl ExecState {
    /// Takes the read ends of `pipes` (dropping the write ends: the child has its copies)
    /// and registers them in the poll loop under `tokens`.
    pub fn new(
        pipes: ExecPipes,
        tokens: [Token; 2],
        registry: &Registry,
        ready_timeout: Duration,
        limit_request: u64,
    ) -> io::Result<Self> {
        let ExecPipes { receivers, .. } = pipes;
        let [mut out, mut err] = receivers;
        registry.register(&mut out, tokens[0], Interest::READABLE)?;
        registry.register(&mut err, tokens[1], Interest::READABLE)?;
        let now = Instant::now();
        let pipe = |pipe, token, tag| OutputPipe {
            pipe,
            token,
            lines: LineSplitter::default(),
            tag,
            open: true,
            pending: true,
        };
        Ok(Self {
            outputs: [pipe(out, tokens[0], ""), pipe(err, tokens[1], " [stderr]")],
            status: None,
            watchdog: None,
            last_alive: now,
            ready_deadline: Some(now + ready_timeout).filter(|_| !ready_timeout.is_zero()),
            stop_deferred: false,
            limit_request,
            sends_markers: false,
        })
    }

    /// Marks the pipe behind `token`, if it is one of ours, as having output to read.
    pub fn wake(&mut self, token: Token) {
        for output in &mut self.outputs {
            if output.token == token {
                output.pending = true;
            }
        }
    }

    /// Whether output is waiting that the budget did not let us read yet.
    pub fn has_pending_output(&self) -> bool {
        self.outputs
            .iter()
            .any(|output| output.open && output.pending)
    }

    /// Logs what the program wrote, up to the budget per pipe, tagged with `name`.
    pub fn read_output(&mut self, name: &str) {
        for output in &mut self.outputs {
            if output.open && output.pending {
                output.read(name, OUTPUT_BUDGET);
            }
        }
    }

    /// After the program's exit: logs the rest of its output and deregisters the pipes.
    pub fn close(&mut self, name: &str, registry: &Registry) {
        for output in &mut self.outputs {
            while output.open {
                output.read(name, usize::MAX);
            }
            let _ = registry.deregister(&mut output.pipe);
        }
    }

    /// The earliest moment this worker is to be killed: unready past `ready_timeout`, or
    /// silent past its watchdog period.
    pub fn deadline(&self, ready: bool) -> Option<Instant> {
        let ready_by = self.ready_deadline.filter(|_| !ready);
        let alive_by = self.watchdog.map(|period| self.last_alive + period);
        ready_by.into_iter().chain(alive_by).min()
    }
}

impl OutputPipe {
    fn read(&mut self, name: &str, budget: usize) {
        let mut chunk = [0u8; 8192];
        let mut read_so_far = 0;
        while read_so_far < budget {
            match self.pipe.read(&mut chunk) {
                Ok(0) => {
                    self.open = false;
                    self.pending = false;
                    if let Some(line) = self.lines.finish() {
                        info!("{name}{}: {line}", self.tag);
                    }
                    return;
                }
                Ok(read) => {
                    read_so_far += read;
                    for line in self.lines.push(&chunk[..read]) {
                        info!("{name}{}: {line}", self.tag);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.pending = false;
                    return;
                }
                Err(error) => {
                    warn!("{name}: reading its output failed: {error}");
                    self.open = false;
                    return;
                }
            }
        }
        // Budget spent with more to read: mio will not tell us again, so remember it.
        self.pending = true;
    }
}

impl Master {
    /// Reads the output of exec workers whose pipes have something (`tokens` woke), within
    /// each pipe's budget.
    pub(super) fn read_exec_output(&mut self, tokens: &[Token]) {
        for worker in self.pool.workers_mut() {
            let (id, pid) = (worker.id, worker.pid);
            let Some(exec) = &mut worker.exec else {
                continue;
            };
            for token in tokens {
                exec.wake(*token);
            }
            if exec.has_pending_output() {
                exec.read_output(&worker_name(id, pid));
            }
        }
    }

    /// Whether some exec worker has output left unread after its budget.
    pub(super) fn exec_output_pending(&self) -> bool {
        self.pool
            .workers()
            .filter_map(|worker| worker.exec.as_ref())
            .any(ExecState::has_pending_output)
    }

    /// The sd_notify messages only exec workers send (see the table above).
    pub(super) fn on_exec_notification(&mut self, notification: &Notification) {
        let time_cpu = self.limits.time_cpu;
        let cpu_hard_limit = self.cpu_hard_limit;
        let Some(worker) = self.pool.get_mut(notification.pid) else {
            return;
        };
        let name = || worker_name(worker.id, worker.pid);
        let Some(exec) = &mut worker.exec else {
            return;
        };
        if let Some(status) = notification.get("STATUS") {
            exec.status = Some(status.to_string());
        }
        if let Some(usec) = notification
            .get("WATCHDOG_USEC")
            .and_then(|v| v.parse().ok())
        {
            exec.watchdog = Some(Duration::from_micros(usec)).filter(|period| !period.is_zero());
            exec.last_alive = Instant::now();
        }
        if notification.get("WATCHDOG") == Some("1") {
            exec.last_alive = Instant::now();
        }
        if notification.get("STOPPING") == Some("1") {
            debug!("{} says it is stopping", name());
        }
        if notification.get("BUSY") == Some("1") {
            if !exec.sends_markers {
                debug!(
                    "{} sends request markers: per-request limits apply to it",
                    name()
                );
                exec.sends_markers = true;
            }
            let request = notification.get("REQUEST").unwrap_or("(request)");
            let (method, target) = request.split_once(' ').unwrap_or((request, ""));
            worker.row.begin_request(method, target);
            if !time_cpu.is_zero()
                && let Err(error) = crate::limits::arm_program_cpu_limit(
                    worker.pid,
                    &worker.row,
                    time_cpu,
                    cpu_hard_limit,
                )
            {
                warn!("{}: cannot apply limit_time_cpu: {error}", worker.name());
            }
        }
        if notification.get("IDLE") == Some("1") {
            worker.row.end_request();
            self.on_exec_idle(notification.pid);
        }
    }

    /// After a request of an exec worker: a deferred stop happens now, and `limit_request`
    /// recycles the worker once reached.
    fn on_exec_idle(&mut self, pid: Pid) {
        let Some(worker) = self.pool.get_mut(pid) else {
            return;
        };
        let Some(exec) = &mut worker.exec else {
            return;
        };
        if exec.stop_deferred {
            exec.stop_deferred = false;
            worker.signal(nix::sys::signal::Signal::SIGTERM);
            return;
        }
        let limit = exec.limit_request;
        if limit > 0 && worker.row.requests() >= limit && worker.is_serving() {
            let detail = format!("limit_request reached ({limit} requests)");
            self.enforce(
                pid,
                crate::limits::Enforcement::Recycle(detail),
                Instant::now(),
            );
        }
    }
}
