//! What a worker's end means, and the one log line that says so:
//! `http worker 1 (pid 4312) died: killed by SIGKILL after 12.3s, 57 requests served`.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::lifecycle::{Departure, RetireReason};
use super::pool::Worker;
use crate::format::mib;
use crate::id::{Role, WorkerId};
use crate::limits::{self, Breach, MasterLimits};
use crate::scoreboard::{ExitReason, RowSnapshot};
use forkwarden_worker::context::{EXIT_CRITICAL, EXIT_OK};

/// A program without request markers that ends on its own this soon after it was started
/// counts as a failed start (for other workers, requests served tell).
pub const FAST_FAILURE: Duration = Duration::from_secs(1);

/// A death report waiting for the replacement's pid.
pub struct PendingReport {
    pub line: String,
    pub facts: Facts,
    pub unexpected: bool,
}

impl PendingReport {
    pub fn level(&self) -> tracing::Level {
        level(self.unexpected)
    }
}

/// The death reports waiting for their replacement's pid, by slot: a worker's end is logged
/// in one line with the pid that replaces it.
#[derive(Default)]
pub struct PendingReports(HashMap<WorkerId, PendingReport>);

impl PendingReports {
    pub fn set(&mut self, id: WorkerId, report: PendingReport) {
        self.0.insert(id, report);
    }

    pub fn take(&mut self, id: WorkerId) -> Option<PendingReport> {
        self.0.remove(&id)
    }
}

/// How a child process ended, as waitpid(2) reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signaled { signal: Signal, core_dumped: bool },
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(status) => write!(f, "exited with status {status}"),
            Self::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {}", signal.as_str())?;
                if *core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// What a worker's end means for the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It stopped because the master told it to.
    Retired(RetireReason),
    /// It left on its own for a planned reason (a limit, a signal it was sent).
    Recycled(ExitReason),
    /// The master killed it; why.
    KilledByMaster(String),
    /// It ended itself on crossing a limit (`limit_time_cpu`); which, and by how much.
    LimitExceeded(String),
    /// It exited with status 3: a critical error, the server stops.
    Critical,
    /// It died before it was ready.
    BootFailed,
    /// It crashed, or something else killed it.
    Died,
}

impl Verdict {
    /// Whether the end was not planned by anyone: logged as a warning.
    pub fn is_unexpected(&self) -> bool {
        matches!(
            self,
            Self::KilledByMaster(_) | Self::LimitExceeded(_) | Self::BootFailed | Self::Died
        )
    }
}

/// The level of a line about a worker's end: unexpected ends are warnings, planned ones
/// informational.
pub fn level(unexpected: bool) -> tracing::Level {
    if unexpected {
        tracing::Level::WARN
    } else {
        tracing::Level::INFO
    }
}

impl Verdict {
    /// The cause of an end, as one short key: `replaced`, `limit_request`,
    /// `limit_memory_hard`, `died`... (`forkwarden status`, the log's `cause` field).
    pub fn cause(&self) -> String {
        match self {
            Self::Retired(RetireReason::Shutdown) => "shutdown".to_string(),
            Self::Retired(RetireReason::Replaced) => "replaced".to_string(),
            Self::Retired(RetireReason::ScaledDown) => "scaled_down".to_string(),
            Self::Retired(RetireReason::Limit(detail) | RetireReason::OnItsOwn(detail))
            | Self::KilledByMaster(detail)
            | Self::LimitExceeded(detail) => limit_named(detail).unwrap_or("killed").to_string(),
            Self::Recycled(reason) => reason.as_key().to_string(),
            Self::Critical => "critical".to_string(),
            Self::BootFailed => "boot_failed".to_string(),
            Self::Died => "died".to_string(),
        }
    }
}

/// The limit a detail line starts with (each names its config key first), if it is one.
pub fn limit_named(detail: &str) -> Option<&str> {
    detail
        .split_whitespace()
        .next()
        .filter(|word| word.starts_with("limit_"))
}

/// What a line about a worker says, as log fields (`log_format = "json"`, where a log
/// pipeline filters on them): the worker, why it ended or which limit it crossed, what it
/// was doing. The replacement's pid (`new_pid`) is added when it is known.
#[derive(Clone, Debug)]
pub struct Facts {
    /// `worker_ended`, or `limit_enforced` when the master acted on a limit.
    pub event: &'static str,
    pub role: &'static str,
    pub slot: u32,
    pub pid: i32,
    /// Why it ended ([`Verdict::cause`]), or the limit enforced.
    pub cause: String,
    /// The request (or job) it was on, if it was on one.
    pub request: Option<String>,
    /// Seconds since it started.
    pub uptime: f64,
    /// Requests served (jobs run, for a cron worker).
    pub requests: u64,
    /// The limit crossed, what was measured and the limit (bytes, or milliseconds).
    pub limit: Option<&'static str>,
    pub value: Option<u64>,
    pub limit_value: Option<u64>,
    /// Failed starts in a row, when the slot backs off.
    pub failures_in_a_row: Option<u32>,
}

impl Facts {
    pub fn of(
        worker: &Worker,
        row: &RowSnapshot,
        now: Instant,
        event: &'static str,
        cause: String,
    ) -> Self {
        Self {
            event,
            role: worker.id.role.as_str(),
            slot: worker.id.slot,
            pid: worker.pid.as_raw(),
            cause,
            request: row.busy_for.map(|_| row.request.clone()),
            uptime: now.saturating_duration_since(worker.started).as_secs_f64(),
            requests: row.requests,
            limit: None,
            value: None,
            limit_value: None,
            failures_in_a_row: None,
        }
    }

    pub fn with_breach(mut self, breach: &Breach) -> Self {
        self.limit = Some(breach.limit);
        self.value = Some(breach.value);
        self.limit_value = Some(breach.limit_value);
        self
    }
}

/// The verdict on a worker's end and the line that reports it (without what happens next).
pub struct Report {
    pub verdict: Verdict,
    pub line: String,
    /// How it ended, in the line's words (`killed: limit_memory_hard exceeded (rss 612 MiB >
    /// 512 MiB)`), without who and when.
    pub ending: String,
    pub facts: Facts,
    /// It counts as a failed start (see [`failed_start`]): a crash loop if it keeps
    /// happening.
    pub failed_start: bool,
}

/// How a worker ended: its status, and the CPU time it used over its life.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    pub ending: Ending,
    pub cpu: Option<Duration>,
}

pub fn report(
    worker: &Worker,
    exit: Exit,
    row: &RowSnapshot,
    limits: &MasterLimits,
    now: Instant,
) -> Report {
    let verdict = verdict(worker, exit, row, limits);
    let what = match &verdict {
        Verdict::Retired(reason) => format!("stopped ({reason})"),
        Verdict::Recycled(reason) => format!("exited: {}", recycle_reason(*reason, exit.ending)),
        Verdict::KilledByMaster(reason) | Verdict::LimitExceeded(reason) => {
            format!("killed: {reason}")
        }
        Verdict::Critical => format!("{} (critical error)", exit.ending),
        Verdict::BootFailed => format!("failed to start: {}", exit.ending),
        Verdict::Died => format!("died: {}", exit.ending),
    };
    let unexpected = verdict.is_unexpected();
    let mut line = describe(worker, &what, unexpected, row, now);
    if matches!(verdict, Verdict::Died | Verdict::BootFailed) {
        line.push_str(&memory_hint(worker, exit.ending, limits));
    }
    let facts = Facts::of(worker, row, now, "worker_ended", verdict.cause());
    Report {
        failed_start: unexpected && failed_start(worker, Some(exit.ending), row, now),
        verdict,
        line,
        ending: what,
        facts,
    }
}

/// `http worker 1 (pid 4312) {what} while serving GET /x after 12.3s, 57 requests served`.
pub fn describe(
    worker: &Worker,
    what: &str,
    unexpected: bool,
    row: &RowSnapshot,
    now: Instant,
) -> String {
    let uptime = now.saturating_duration_since(worker.started);
    let during = match (row.busy_for, worker.id.role) {
        (Some(_), Role::Http | Role::Program(_)) if unexpected => {
            format!(" while serving {}", row.request)
        }
        (Some(_), Role::Cron | Role::Job) if unexpected => {
            format!(" while running {}", row.request)
        }
        _ => String::new(),
    };
    let work = match (worker.id.role, row.requests) {
        (Role::Http | Role::Program(_), 1) => "1 request served".to_string(),
        (Role::Http | Role::Program(_), n) => format!("{n} requests served"),
        (Role::Cron | Role::Job, 1) => "1 job run".to_string(),
        (Role::Cron | Role::Job, n) => format!("{n} jobs run"),
    };
    format!(
        "{} {what}{during} after {}, {work}",
        worker.name(),
        crate::format::elapsed(uptime)
    )
}

/// Whether an unexpected end counts as a failed start, which backs the slot off: the worker
/// never became ready, or it ended on its own (`ending`; None: the master ended it) before
/// it completed or even began a single request. A worker killed from outside (an operator,
/// the OOM killer) or dying in a request is replaced at once: the 1 ms respawn must not
/// turn into a 10 s outage because something killed workers quickly, nor because one
/// request kills every worker it reaches.
pub fn failed_start(
    worker: &Worker,
    ending: Option<Ending>,
    row: &RowSnapshot,
    now: Instant,
) -> bool {
    if !worker.is_ready() {
        return true;
    }
    if !ending.is_some_and(ended_on_its_own) {
        return false;
    }
    if worker.kind.counts_requests() {
        row.requests == 0 && row.busy_for.is_none()
    } else {
        // A program that says nothing of its requests: only its uptime can tell.
        now.saturating_duration_since(worker.started) < FAST_FAILURE
    }
}

/// A process ends on its own by exiting or by a fault of its own (a crash, an abort);
/// SIGKILL, SIGTERM and the like come from someone else.
fn ended_on_its_own(ending: Ending) -> bool {
    match ending {
        Ending::Exited(_) => true,
        Ending::Signaled { signal, .. } => matches!(
            signal,
            Signal::SIGSEGV
                | Signal::SIGBUS
                | Signal::SIGILL
                | Signal::SIGFPE
                | Signal::SIGABRT
                | Signal::SIGSYS
                | Signal::SIGTRAP
        ),
    }
}

/// What to add to the line of a worker that crashed or failed to start when memory may be
/// why: RLIMIT_AS (`limit_memory_hard`) refuses allocations silently, and the process that
/// gets no memory aborts or exits.
fn memory_hint(worker: &Worker, ending: Ending, limits: &MasterLimits) -> String {
    let Some(cap) = limits.address_space_cap else {
        return String::new();
    };
    if worker
        .kind
        .program()
        .is_some_and(|exec| exec.memory_error_seen)
    {
        return format!(
            "; it could not get memory: limit_memory_hard = {} caps its address space \
             (RLIMIT_AS); a runtime that reserves much more virtual memory than it uses \
             (Node, Java, Go) needs limit_memory_hard_rlimit = false",
            mib(cap)
        );
    }
    match worker.memory.address_space {
        Some(used)
            if ended_on_its_own(ending) && used.saturating_mul(10) >= cap.saturating_mul(9) =>
        {
            format!(
                "; its address space was last seen at {} of limit_memory_hard {} (RLIMIT_AS): \
             an allocation was probably refused",
                mib(used),
                mib(cap)
            )
        }
        _ => String::new(),
    }
}

fn verdict(worker: &Worker, exit: Exit, row: &RowSnapshot, limits: &MasterLimits) -> Verdict {
    let ending = exit.ending;
    let departure = worker.leaving().map(|leaving| &leaving.departure);
    if let Some(Departure::Kill { reason, .. }) = departure {
        return Verdict::KilledByMaster(reason.clone());
    }
    if ending == Ending::Exited(EXIT_CRITICAL) {
        return Verdict::Critical;
    }
    // One that left on its own is told by its row, as if the master had not known.
    if let Some(Departure::Retire { reason, .. }) = departure
        && !matches!(reason, RetireReason::OnItsOwn(_))
    {
        return Verdict::Retired(reason.clone());
    }
    if !worker.is_ready() {
        return Verdict::BootFailed;
    }
    let request_cpu = exit.cpu.map(|total| total.saturating_sub(row.request_cpu));
    match (ending, row.exit_reason) {
        (Ending::Exited(EXIT_OK), ExitReason::LimitTimeCpu)
        | (
            Ending::Signaled {
                signal: Signal::SIGXCPU,
                ..
            },
            _,
        ) => Verdict::LimitExceeded(limits::describe_cpu_exceeded(limits, request_cpu)),
        (Ending::Exited(EXIT_OK), ExitReason::LimitTimeReal) => {
            Verdict::LimitExceeded("limit_time_real exceeded".to_string())
        }
        (Ending::Exited(EXIT_OK), reason) if reason != ExitReason::Unknown => {
            Verdict::Recycled(reason)
        }
        _ => Verdict::Died,
    }
}

pub fn recycle_reason(reason: ExitReason, ending: Ending) -> String {
    match reason {
        ExitReason::LimitRequest => "limit_request reached".to_string(),
        ExitReason::AppPanicked => "the application panicked; replaced to start clean".to_string(),
        ExitReason::Stopped => "stopped by a signal not sent by the master".to_string(),
        ExitReason::MasterGone => "its master is gone".to_string(),
        ExitReason::AppAsked => "the application asked to be replaced".to_string(),
        ExitReason::HttpPanicked => {
            "reading a request panicked; replaced to start clean".to_string()
        }
        ExitReason::LimitTimeCpu | ExitReason::LimitTimeReal | ExitReason::Unknown => {
            ending.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::id::WorkerId;
    use crate::scoreboard::{WorkerRow, WorkerState};
    use nix::unistd::Pid;

    fn worker(ready: bool, age: Duration) -> (Worker, Instant) {
        let now = Instant::now();
        let id = WorkerId {
            role: Role::Http,
            slot: 1,
        };
        let process = super::super::pool::WorkerProcess::Child(Pid::from_raw(4312));
        let kind = super::super::pool::WorkerKind::Http;
        let mut worker = Worker::new(
            process,
            id,
            kind,
            1,
            now - age,
            WorkerRow::new().unwrap(),
            None,
        );
        if ready {
            worker.mark_ready();
        }
        (worker, now)
    }

    fn report(worker: &Worker, ending: Ending, row: &RowSnapshot, now: Instant) -> Report {
        let limits = MasterLimits::from_config(&Config::default());
        super::report(worker, Exit { ending, cpu: None }, row, &limits, now)
    }

    fn row(requests: u64, exit_reason: ExitReason) -> RowSnapshot {
        RowSnapshot {
            state: WorkerState::Idle,
            exit_reason,
            requests,
            busy_for: None,
            request: String::new(),
            request_cpu: Duration::ZERO,
        }
    }

    const SIGKILL: Ending = Ending::Signaled {
        signal: Signal::SIGKILL,
        core_dumped: false,
    };

    #[test]
    fn a_killed_worker_is_reported_as_the_issue_shows() {
        let (worker, now) = worker(true, Duration::from_millis(12_300));
        let report = report(&worker, SIGKILL, &row(57, ExitReason::Unknown), now);
        assert_eq!(
            report.line,
            "http worker 1 (pid 4312) died: killed by SIGKILL after 12.3s, 57 requests served"
        );
        assert_eq!(report.verdict, Verdict::Died);
        assert!(!report.failed_start);
    }

    #[test]
    fn the_request_in_flight_is_named() {
        let (worker, now) = worker(true, Duration::from_secs(5));
        let mut snapshot = row(3, ExitReason::Unknown);
        snapshot.busy_for = Some(Duration::from_millis(20));
        snapshot.request = "GET /crash".into();
        let ending = Ending::Signaled {
            signal: Signal::SIGABRT,
            core_dumped: true,
        };
        let line = report(&worker, ending, &snapshot, now).line;
        assert!(
            line.contains("died: killed by SIGABRT (core dumped) while serving GET /crash after"),
            "{line}"
        );
    }

    #[test]
    fn verdicts_follow_who_wanted_the_end() {
        let (mut worker, now) = worker(true, Duration::from_secs(90));
        let planned = report(
            &worker,
            Ending::Exited(0),
            &row(3, ExitReason::LimitRequest),
            now,
        );
        assert_eq!(planned.verdict, Verdict::Recycled(ExitReason::LimitRequest));
        assert!(
            planned
                .line
                .contains("exited: limit_request reached after 1m30s, 3 requests served")
        );
        assert!(!planned.verdict.is_unexpected());

        let critical = report(
            &worker,
            Ending::Exited(3),
            &row(0, ExitReason::Unknown),
            now,
        );
        assert_eq!(critical.verdict, Verdict::Critical);

        worker.depart(
            Departure::Retire {
                reason: RetireReason::Replaced,
                deadline: now,
                signalled: true,
            },
            false,
        );
        let retired = report(
            &worker,
            Ending::Exited(0),
            &row(9, ExitReason::Stopped),
            now,
        );
        assert_eq!(retired.verdict, Verdict::Retired(RetireReason::Replaced));

        worker.depart(
            Departure::Kill {
                reason: "did not stop within graceful_timeout (30s)".into(),
                sigkill_at: None,
            },
            false,
        );
        let killed = report(&worker, SIGKILL, &row(9, ExitReason::Unknown), now);
        assert!(
            killed
                .line
                .contains("killed: did not stop within graceful_timeout (30s)")
        );
    }

    #[test]
    fn a_cpu_limit_exit_reports_the_requests_cpu_time() {
        let (worker, now) = worker(true, Duration::from_secs(80));
        let mut snapshot = row(4, ExitReason::LimitTimeCpu);
        snapshot.busy_for = Some(Duration::from_secs(61));
        snapshot.request = "GET /burn?ms=90000".into();
        snapshot.request_cpu = Duration::from_secs(2);
        let limits = MasterLimits::from_config(&Config::default());
        let exit = Exit {
            ending: Ending::Exited(0),
            cpu: Some(Duration::from_millis(62_300)),
        };
        let report = super::report(&worker, exit, &snapshot, &limits, now);
        assert!(report.verdict.is_unexpected());
        assert!(
            report.line.contains(
                "killed: limit_time_cpu exceeded (cpu 60.30s > 60s) while serving GET /burn?ms=90000"
            ),
            "{}",
            report.line
        );
    }

    #[test]
    fn dying_before_ready_is_a_failed_start() {
        let (worker, now) = worker(false, Duration::from_secs(5));
        let report = report(
            &worker,
            Ending::Exited(1),
            &row(0, ExitReason::Unknown),
            now,
        );
        assert_eq!(report.verdict, Verdict::BootFailed);
        assert!(report.failed_start);
        assert!(
            report
                .line
                .contains("failed to start: exited with status 1")
        );
    }

    #[test]
    fn only_starts_that_failed_back_off() {
        let sigkill = Ending::Signaled {
            signal: Signal::SIGKILL,
            core_dumped: false,
        };
        let abort = Ending::Signaled {
            signal: Signal::SIGABRT,
            core_dumped: true,
        };
        // Ready, killed from outside within its first second: replaced at once.
        let (fresh, now) = worker(true, Duration::from_millis(30));
        assert!(!report(&fresh, sigkill, &row(0, ExitReason::Unknown), now).failed_start);
        // Ready, crashing on its own before serving anything: a failed start.
        assert!(report(&fresh, abort, &row(0, ExitReason::Unknown), now).failed_start);
        // Dying in its first request: that request's fault, replaced at once.
        let mut busy = row(0, ExitReason::Unknown);
        busy.busy_for = Some(Duration::from_millis(5));
        busy.request = "GET /crash".into();
        assert!(!report(&fresh, abort, &busy, now).failed_start);
        // After requests served, even a quick crash is not a failed start.
        assert!(!report(&fresh, abort, &row(3, ExitReason::Unknown), now).failed_start);
        // Never ready: always a failed start, whoever killed it.
        let (unready, now) = worker(false, Duration::from_secs(30));
        assert!(report(&unready, sigkill, &row(0, ExitReason::Unknown), now).failed_start);
    }

    #[test]
    fn a_crash_near_the_address_space_cap_names_limit_memory_hard() {
        let (mut worker, now) = worker(true, Duration::from_secs(5));
        worker.memory.address_space = Some(250 << 20);
        let limits = MasterLimits::from_config(&Config {
            limit_memory_soft: crate::config::ByteSize::mib(128),
            limit_memory_hard: crate::config::ByteSize::mib(256),
            ..Config::default()
        });
        let exit = Exit {
            ending: Ending::Signaled {
                signal: Signal::SIGABRT,
                core_dumped: false,
            },
            cpu: None,
        };
        let line = super::report(&worker, exit, &row(2, ExitReason::Unknown), &limits, now).line;
        assert!(
            line.ends_with(
                "its address space was last seen at 250 MiB of limit_memory_hard 256 MiB \
                 (RLIMIT_AS): an allocation was probably refused"
            ),
            "{line}"
        );
    }
}
