//! What a worker's end means, and the one log line that says so:
//! `http worker 1 (pid 4312) died: killed by SIGKILL after 12.3s, 57 requests served`.

use std::fmt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::pool::{FAST_FAILURE, RetireReason, Role, Worker};
use crate::limits::{self, MasterLimits};
use crate::scoreboard::{ExitReason, RowSnapshot};
use crate::worker::{EXIT_CRITICAL, EXIT_OK};

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

/// The verdict on a worker's end and the line that reports it (without what happens next).
pub struct Report {
    pub verdict: Verdict,
    pub line: String,
    /// It failed within [`FAST_FAILURE`] of starting, or before it was ready: a crash loop
    /// if it keeps happening.
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
    let (line, failed_start) = describe(worker, &what, verdict.is_unexpected(), row, now);
    Report {
        verdict,
        line,
        failed_start,
    }
}

/// `http worker 1 (pid 4312) {what} while serving GET /x after 12.3s, 57 requests served`,
/// and whether this end, if unexpected, counts as a failed start (see [`FAST_FAILURE`]).
pub fn describe(
    worker: &Worker,
    what: &str,
    unexpected: bool,
    row: &RowSnapshot,
    now: Instant,
) -> (String, bool) {
    let uptime = now.saturating_duration_since(worker.started);
    let during = match (row.busy_for, worker.id.role) {
        (Some(_), Role::Http) if unexpected => format!(" while serving {}", row.request),
        (Some(_), Role::Cron) if unexpected => format!(" while running {}", row.request),
        _ => String::new(),
    };
    let work = match (worker.id.role, row.requests) {
        (Role::Http, 1) => "1 request served".to_string(),
        (Role::Http, n) => format!("{n} requests served"),
        (Role::Cron, 1) => "1 job run".to_string(),
        (Role::Cron, n) => format!("{n} jobs run"),
    };
    let line = format!(
        "{} {what}{during} after {}, {work}",
        worker.name(),
        crate::format::elapsed(uptime)
    );
    (line, unexpected && (uptime < FAST_FAILURE || !worker.ready))
}

fn verdict(worker: &Worker, exit: Exit, row: &RowSnapshot, limits: &MasterLimits) -> Verdict {
    let ending = exit.ending;
    if let Some(kill) = &worker.kill {
        return Verdict::KilledByMaster(kill.reason.clone());
    }
    if ending == Ending::Exited(EXIT_CRITICAL) {
        return Verdict::Critical;
    }
    if let Some(retiring) = &worker.retiring {
        return Verdict::Retired(retiring.reason.clone());
    }
    if !worker.ready {
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

fn recycle_reason(reason: ExitReason, ending: Ending) -> String {
    match reason {
        ExitReason::LimitRequest => "limit_request reached".to_string(),
        ExitReason::AppPanicked => "the application panicked; replaced to start clean".to_string(),
        ExitReason::Stopped => "stopped by a signal not sent by the master".to_string(),
        ExitReason::MasterGone => "its master is gone".to_string(),
        ExitReason::LimitTimeCpu | ExitReason::LimitTimeReal | ExitReason::Unknown => {
            ending.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::master::pool::{Kill, Retiring, WorkerId};
    use crate::scoreboard::{WorkerRow, WorkerState};
    use nix::unistd::Pid;

    fn worker(ready: bool, age: Duration) -> (Worker, Instant) {
        let now = Instant::now();
        let id = WorkerId {
            role: Role::Http,
            slot: 1,
        };
        let mut worker = Worker::new(
            Pid::from_raw(4312),
            id,
            1,
            now - age,
            WorkerRow::new().unwrap(),
        );
        worker.ready = ready;
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
            job_group: None,
            work_limit: None,
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

        worker.retiring = Some(Retiring {
            reason: RetireReason::Replaced,
            deadline: now,
        });
        let retired = report(
            &worker,
            Ending::Exited(0),
            &row(9, ExitReason::Stopped),
            now,
        );
        assert_eq!(retired.verdict, Verdict::Retired(RetireReason::Replaced));

        worker.kill = Some(Kill {
            reason: "did not stop within graceful_timeout (30s)".into(),
            sigkill_at: None,
        });
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
}
