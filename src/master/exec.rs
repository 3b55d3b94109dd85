//! What the master does for exec workers (`[app]`): it reads their output, understands
//! their sd_notify messages (readiness, request markers, watchdog, status), and brings the
//! per-request limits to them from outside, since it cannot run code inside them.
//!
//! | message | effect |
//! |---|---|
//! | `READY=1` | the worker serves (a reload waits for it); until then `ready_timeout` runs |
//! | `BUSY=1`, `REQUEST=GET /path` | a request started: `limit_time_real` counts from now, RLIMIT_CPU is moved to the CPU used plus `limit_time_cpu` (`prlimit`) |
//! | `IDLE=1` | it ended: counts towards `limit_request`; a deferred recycle happens now. With `READY=1`: the program will mark its requests, and is idle |
//! | `WATCHDOG_USEC=N`, `WATCHDOG=1` | liveness: the program is given `WATCHDOG_USEC=heartbeat_timeout` in its environment; once it sends `WATCHDOG=1` (or declares its own period), silence past the period outside a request kills it |
//! | `STATUS=...` | shown in the SIGQUIT snapshot |
//! | `STOPPING=1` | logged |

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry, Token};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::Master;
use super::lifecycle::{Departure, Leaving, Lifecycle};
use crate::id::worker_name;
use crate::notify::Notification;
use crate::output::{LineSplitter, Stream, log_program_line};
use crate::worker::ExecOutput;

/// How much of one output pipe the master reads per turn of its loop: a program flooding
/// its output gets its share of the master's time, not all of it.
const OUTPUT_BUDGET: usize = 64 * 1024;
/// How much of an ended program's output is still logged: what its pipes hold (a full pipe
/// is 64 KiB), not what a process it left behind goes on writing.
const CLOSING_BUDGET: usize = 256 * 1024;
/// Lines of one program's output the master logs in a second at most. Past them it reads no
/// more of that program's output until the second is over: nothing is lost (the program
/// waits on its full pipe), and a program that floods its output costs the master a
/// bounded share of its time (it took 60 % of it for 94,000 lines a second).
const LINES_PER_SECOND: u32 = 10_000;

/// How fast a program's output is read: lines logged in the current second.
struct OutputPace {
    since: Instant,
    lines: u32,
    /// Told in the log that it writes faster than it is read.
    told: bool,
}

impl OutputPace {
    /// When the master may read again, if the lines of this second are spent.
    fn paused_until(&self, now: Instant) -> Option<Instant> {
        let window_end = self.since + Duration::from_secs(1);
        (self.lines >= LINES_PER_SECOND && now < window_end).then_some(window_end)
    }

    /// Whether more lines may be read now (a new second starts a new count).
    fn allows(&mut self, now: Instant) -> bool {
        if now >= self.since + Duration::from_secs(1) {
            self.since = now;
            self.lines = 0;
        }
        self.lines < LINES_PER_SECOND
    }
}

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
    pace: OutputPace,
    /// The last `STATUS=`.
    pub status: Option<String>,
    /// Liveness period: declared with `WATCHDOG_USEC`, or the `heartbeat_timeout` given to
    /// the program in its environment once it sends `WATCHDOG=1`. None: not armed.
    pub watchdog: Option<Duration>,
    /// The program's last message (any message shows it is alive), or its start.
    pub last_alive: Instant,
    /// The period it was offered in `WATCHDOG_USEC` (`heartbeat_timeout`; None: off).
    offered_watchdog: Option<Duration>,
    /// Since when the program has been seen stopped (SIGSTOP, a debugger), for programs
    /// whose liveness the watchdog does not cover.
    pub stopped_since: Option<Instant>,
    /// This worker's `limit_request` (with jitter; 0: none).
    pub limit_request: u64,
    /// What it says of its requests, which decides how the per-request limits reach it.
    pub markers: Markers,
    /// Its output spoke of memory it could not get (for the hint on a failed start).
    pub memory_error_seen: bool,
}

/// What a program tells the master of its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Markers {
    /// Nothing (yet): only its memory, its liveness and its exit can be watched.
    Silent,
    /// `BUSY=1` / `IDLE=1` messages: the master keeps its scoreboard row and brings the
    /// per-request limits to it from outside (`prlimit`, SIGKILL).
    Notified,
    /// It runs forkwarden's own HTTP worker (`SCOREBOARD=1` with `READY=1`: the Python
    /// runner): it keeps its row itself and answers the limits itself (504, 503), as a
    /// built-in worker does.
    Scoreboard,
}

impl ExecState {
    /// Whether its row says what it is doing (requests served, busy since when).
    pub fn counts_requests(&self) -> bool {
        self.markers != Markers::Silent
    }
}

/// What programs print when an allocation is refused (RLIMIT_AS, or no memory at all).
const MEMORY_ERROR_SIGNS: [&str; 6] = [
    "cannot allocate memory",
    "out of memory",
    "failed to reserve virtual memory",
    "memoryerror",
    "memory allocation of",
    "bad_alloc",
];

/// How many of a program's last lines per stream are kept, to quote when it cannot start.
const TAIL_LINES: usize = 3;
/// How much of each kept line: enough for an exception and its message.
const TAIL_LINE_CHARS: usize = 300;

struct OutputPipe {
    pipe: Receiver,
    token: Token,
    lines: LineSplitter,
    /// Its last lines, control characters escaped, each cut to [`TAIL_LINE_CHARS`].
    tail: std::collections::VecDeque<String>,
    stream: Stream,
    open: bool,
    /// More was waiting when the budget ran out.
    pending: bool,
}

impl ExecState {
    /// Takes the read ends of `pipes` (dropping the write ends: the child has its copies)
    /// and registers them in the poll loop under `tokens`. `offered_watchdog` is the period
    /// the program was given as `WATCHDOG_USEC`.
    pub fn new(
        pipes: ExecPipes,
        tokens: [Token; 2],
        registry: &Registry,
        limit_request: u64,
        offered_watchdog: Option<Duration>,
    ) -> io::Result<Self> {
        let ExecPipes { receivers, .. } = pipes;
        let [mut out, mut err] = receivers;
        registry.register(&mut out, tokens[0], Interest::READABLE)?;
        registry.register(&mut err, tokens[1], Interest::READABLE)?;
        let pipe = |pipe, token, stream| OutputPipe {
            pipe,
            token,
            lines: LineSplitter::default(),
            tail: std::collections::VecDeque::with_capacity(TAIL_LINES),
            stream,
            open: true,
            pending: true,
        };
        Ok(Self {
            outputs: [
                pipe(out, tokens[0], Stream::Stdout),
                pipe(err, tokens[1], Stream::Stderr),
            ],
            pace: OutputPace {
                since: Instant::now(),
                lines: 0,
                told: false,
            },
            status: None,
            watchdog: None,
            last_alive: Instant::now(),
            offered_watchdog,
            stopped_since: None,
            limit_request,
            markers: Markers::Silent,
            memory_error_seen: false,
        })
    }

    /// Marks the pipes behind `tokens` (those that are ours) as having output to read, and
    /// logs what is waiting, tagged with `name`, within each pipe's budget.
    pub fn read_woken(&mut self, tokens: &[Token], name: impl FnOnce() -> String) {
        for output in &mut self.outputs {
            if tokens.contains(&output.token) {
                output.pending = true;
            }
        }
        if self.has_pending_output() {
            self.read_output(&name());
        }
    }

    /// Whether output is waiting that the budget did not let us read yet, and may be read
    /// now (not past its lines of this second).
    pub fn has_pending_output(&self) -> bool {
        self.outputs
            .iter()
            .any(|output| output.open && output.pending)
            && self.pace.paused_until(Instant::now()).is_none()
    }

    /// When output left unread for the pace may be read again.
    pub fn output_deadline(&self) -> Option<Instant> {
        let waiting = self
            .outputs
            .iter()
            .any(|output| output.open && output.pending);
        waiting
            .then(|| self.pace.paused_until(Instant::now()))
            .flatten()
    }

    /// Logs what the program wrote, up to the budget per pipe and the lines of this second,
    /// tagged with `name`.
    pub fn read_output(&mut self, name: &str) {
        let mut memory_error = false;
        for output in &mut self.outputs {
            if output.open && output.pending {
                memory_error |= output.read(name, OUTPUT_BUDGET, &mut self.pace);
            }
        }
        self.memory_error_seen |= memory_error;
        if !self.pace.told && self.pace.paused_until(Instant::now()).is_some() {
            self.pace.told = true;
            warn!(
                "{name} writes more than {LINES_PER_SECOND} lines a second: its output is \
                 logged at that pace, and it waits on its pipe for the rest"
            );
        }
    }

    /// After the program's exit: logs what is left in its pipes now, without waiting for
    /// more (a process it left behind may hold them open for ever), and lets go of them.
    pub fn close(&mut self, name: &str, registry: &Registry) {
        for output in &mut self.outputs {
            if output.open {
                // Its last words, whatever the pace: what its pipe holds, no more.
                let mut unpaced = OutputPace {
                    since: Instant::now(),
                    lines: 0,
                    told: true,
                };
                self.memory_error_seen |= output.read(name, CLOSING_BUDGET, &mut unpaced);
                if let Some(line) = output.lines.finish() {
                    log_program_line(name, output.stream, &line);
                    keep_in_tail(&mut output.tail, &line);
                }
                output.open = false;
                output.pending = false;
            }
            let _ = registry.deregister(&mut output.pipe);
        }
    }

    /// Its last lines on standard error (on standard output if it wrote nothing there),
    /// oldest first: what to quote when it could not start.
    pub fn last_lines(&self) -> Vec<String> {
        let [stdout, stderr] = &self.outputs;
        let chosen = if stderr.tail.is_empty() {
            stdout
        } else {
            stderr
        };
        chosen.tail.iter().cloned().collect()
    }

    /// When a silent program is to be killed: past its watchdog period since its last
    /// message, once the watchdog is armed.
    pub fn watchdog_deadline(&self) -> Option<Instant> {
        // The period may be the program's own (`WATCHDOG_USEC`): one too long to add is none.
        self.watchdog
            .and_then(|period| self.last_alive.checked_add(period))
    }

    /// Records a message from the program: it is alive; `WATCHDOG_USEC` sets the period,
    /// `WATCHDOG=1` arms the period it was offered.
    pub fn heard(&mut self, notification: &Notification) {
        self.last_alive = Instant::now();
        if let Some(usec) = notification
            .get("WATCHDOG_USEC")
            .and_then(|v| v.parse().ok())
        {
            self.watchdog = Some(Duration::from_micros(usec)).filter(|period| !period.is_zero());
        }
        if notification.get("WATCHDOG") == Some("1") && self.watchdog.is_none() {
            self.watchdog = self.offered_watchdog;
        }
    }
}

impl OutputPipe {
    /// Reads and logs up to `budget` bytes, and no more lines than `pace` allows; returns
    /// whether a line spoke of memory that could not be had.
    fn read(&mut self, name: &str, budget: usize, pace: &mut OutputPace) -> bool {
        let mut chunk = [0u8; 8192];
        let mut read_so_far = 0;
        let mut memory_error = false;
        let stream = self.stream;
        let tail = &mut self.tail;
        let mut log = |line: &str, pace: &mut OutputPace| {
            let lower = line.to_ascii_lowercase();
            memory_error |= MEMORY_ERROR_SIGNS.iter().any(|sign| lower.contains(sign));
            log_program_line(name, stream, line);
            keep_in_tail(tail, line);
            pace.lines = pace.lines.saturating_add(1);
        };
        while read_so_far < budget {
            if !pace.allows(Instant::now()) {
                self.pending = true;
                return memory_error;
            }
            match self.pipe.read(&mut chunk) {
                Ok(0) => {
                    self.open = false;
                    self.pending = false;
                    if let Some(line) = self.lines.finish() {
                        log(&line, pace);
                    }
                    return memory_error;
                }
                Ok(read) => {
                    read_so_far += read;
                    for line in self.lines.push(&chunk[..read]) {
                        log(&line, pace);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.pending = false;
                    return memory_error;
                }
                Err(error) => {
                    warn!("{name}: reading its output failed: {error}");
                    self.open = false;
                    return memory_error;
                }
            }
        }
        // Budget spent with more to read: mio will not tell us again, so remember it.
        self.pending = true;
        memory_error
    }
}

/// Keeps `line` among the last [`TAIL_LINES`] of `tail`, escaped and cut short.
fn keep_in_tail(tail: &mut std::collections::VecDeque<String>, line: &str) {
    if line.trim().is_empty() {
        return;
    }
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    let cut: String = line.chars().take(TAIL_LINE_CHARS).collect();
    tail.push_back(crate::format::escape_controls_owned(&cut));
}

impl Master {
    /// Reads the output of exec workers whose pipes have something (`tokens` woke), within
    /// each pipe's budget.
    pub(super) fn read_exec_output(&mut self, tokens: &[Token]) {
        for template in self.templates.iter_mut() {
            let pid = template.pid;
            template
                .exec
                .read_woken(tokens, || crate::id::template_name(pid));
        }
        for worker in self.pool.workers_mut() {
            let (id, pid) = (worker.id, worker.pid);
            if let Some(exec) = worker.kind.program_mut() {
                exec.read_woken(tokens, || worker_name(id, pid));
            }
        }
    }

    /// When output left unread for a program's pace may be read again, the soonest.
    pub(super) fn exec_output_deadline(&self) -> Option<Instant> {
        self.pool
            .workers()
            .filter_map(|worker| worker.kind.program())
            .chain(self.templates.iter().map(|template| &template.exec))
            .filter_map(ExecState::output_deadline)
            .min()
    }

    /// Whether some exec worker has output left unread after its budget.
    pub(super) fn exec_output_pending(&self) -> bool {
        self.pool
            .workers()
            .filter_map(|worker| worker.kind.program())
            .chain(self.templates.iter().map(|template| &template.exec))
            .any(ExecState::has_pending_output)
    }

    /// Kills a program that says it runs forkwarden's worker (`SCOREBOARD=1`) with a worker
    /// kit of another version than this server's (it would read its row and the board at
    /// other places than where they are); true if it did. Before its readiness is taken: a
    /// program that keeps doing so backs off as one that fails to start.
    pub(super) fn refuse_other_kit(&mut self, notification: &Notification) -> bool {
        if notification.get("SCOREBOARD") != Some("1") {
            return false;
        }
        let version = crate::scoreboard::KIT_VERSION.to_string();
        let theirs = notification.get("KIT_VERSION");
        if theirs == Some(version.as_str()) {
            return false;
        }
        let detail = format!(
            "its worker kit is version {}, the server's is {version}: install the Python \
             package (or the program's forkwarden library) of the same forkwarden version as \
             the server",
            theirs.map_or(
                "1 or older".to_string(),
                crate::format::escape_controls_owned
            )
        );
        let breach = crate::limits::Breach {
            limit: "kit_version",
            value: 0,
            limit_value: 0,
            detail,
        };
        self.enforce(
            notification.pid,
            crate::limits::Enforcement::Kill(breach),
            Instant::now(),
        );
        true
    }

    /// The sd_notify messages only exec workers send (see the table above).
    pub(super) fn on_exec_notification(&mut self, notification: &Notification) {
        let time_cpu = self.enforcer.limits().time_cpu;
        let cpu_hard_limit = self.cpu_hard_limit;
        let Some(worker) = self.pool.get_mut(notification.pid) else {
            return;
        };
        let name = worker.name();
        let Some(exec) = worker.kind.program_mut() else {
            return;
        };
        exec.heard(notification);
        if let Some(status) = notification.get("STATUS") {
            exec.status = Some(status.to_string());
        }
        if notification.get("STOPPING") == Some("1") {
            debug!(pid = worker.pid.as_raw(), "{name} says it is stopping");
        }
        if notification.get("SCOREBOARD") == Some("1") && exec.markers != Markers::Scoreboard {
            debug!(
                pid = worker.pid.as_raw(),
                "{name} runs forkwarden's HTTP worker: it keeps its scoreboard row"
            );
            exec.markers = Markers::Scoreboard;
        }
        if exec.markers == Markers::Scoreboard {
            return;
        }
        if notification.get("BUSY") == Some("1") {
            if exec.markers != Markers::Notified {
                debug!(
                    pid = worker.pid.as_raw(),
                    "{name} sends request markers: per-request limits apply to it"
                );
                exec.markers = Markers::Notified;
            }
            let request = notification.get("REQUEST").unwrap_or("(request)");
            let (method, target) = request.split_once(' ').unwrap_or((request, ""));
            worker.row.begin_request(method, target);
            // A request may allocate: memory is watched closely from now on, even if the
            // master rested (built-in workers wake it through the board instead).
            self.enforcer.scan_soon();
            if !time_cpu.is_zero()
                && let Err(error) = crate::limits::arm_program_cpu_limit(
                    worker.pid,
                    &worker.row,
                    time_cpu,
                    cpu_hard_limit,
                )
            {
                warn!(
                    pid = worker.pid.as_raw(),
                    "{name}: cannot apply limit_time_cpu: {error}"
                );
            }
        }
        if notification.get("IDLE") == Some("1") {
            // Also sent with READY=1 by a program that will mark its requests: it is idle
            // and may be read rarely from now on.
            exec.markers = Markers::Notified;
            if worker.row.is_busy() {
                worker.row.end_request();
                self.on_exec_idle(notification.pid);
            }
        }
    }

    /// After a request of an exec worker: a stop deferred until now happens, and
    /// `limit_request` recycles the worker once reached.
    fn on_exec_idle(&mut self, pid: Pid) {
        let Some(worker) = self.pool.get_mut(pid) else {
            return;
        };
        if let Lifecycle::Leaving(Leaving {
            departure: Departure::Retire { signalled, .. },
            ..
        }) = &mut worker.lifecycle
        {
            if !*signalled {
                *signalled = true;
                worker.signal(Signal::SIGTERM);
            }
            return;
        }
        let Some(exec) = worker.kind.program() else {
            return;
        };
        let limit = exec.limit_request;
        let served = worker.row.requests();
        if limit > 0 && served >= limit && worker.is_serving() {
            let breach = crate::limits::Breach {
                limit: "limit_request",
                value: served,
                limit_value: limit,
                detail: format!("limit_request reached ({limit} requests)"),
            };
            self.enforce(
                pid,
                crate::limits::Enforcement::Recycle(breach),
                Instant::now(),
            );
        }
    }
}
