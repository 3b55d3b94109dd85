//! What a worker's end means, and the one log line that says so:
//! `http worker 1 (pid 4312) died: killed by SIGKILL after 12.3s, 57 requests served`.

use std::fmt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::pool::{FAST_FAILURE, RetireReason, Role, Worker};
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
            Self::KilledByMaster(_) | Self::BootFailed | Self::Died
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

pub fn report(worker: &Worker, ending: Ending, row: &RowSnapshot, now: Instant) -> Report {
    let uptime = now.saturating_duration_since(worker.started);
    let verdict = verdict(worker, ending, row);
    let what = match &verdict {
        Verdict::Retired(reason) => format!("stopped ({reason})"),
        Verdict::Recycled(reason) => format!("exited: {}", recycle_reason(*reason, ending)),
        Verdict::KilledByMaster(reason) => format!("killed: {reason}"),
        Verdict::Critical => format!("{ending} (critical error)"),
        Verdict::BootFailed => format!("failed to start: {ending}"),
        Verdict::Died => format!("died: {ending}"),
    };
    let during = match (row.busy_for, worker.id.role) {
        (Some(_), Role::Http) if verdict.is_unexpected() => {
            format!(" while serving {}", row.request)
        }
        (Some(_), Role::Cron) if verdict.is_unexpected() => {
            format!(" while running {}", row.request)
        }
        _ => String::new(),
    };
    let work = match (worker.id.role, row.requests) {
        (Role::Http, 1) => "1 request served".to_string(),
        (Role::Http, n) => format!("{n} requests served"),
        (Role::Cron, 1) => "1 job run".to_string(),
        (Role::Cron, n) => format!("{n} jobs run"),
    };
    let line = format!(
        "{} (pid {}) {what}{during} after {}, {work}",
        worker.id,
        worker.pid,
        format_uptime(uptime)
    );
    let failed_start = verdict.is_unexpected() && (uptime < FAST_FAILURE || !worker.ready);
    Report {
        verdict,
        line,
        failed_start,
    }
}

fn verdict(worker: &Worker, ending: Ending, row: &RowSnapshot) -> Verdict {
    if let Some(reason) = &worker.kill_reason {
        return Verdict::KilledByMaster(reason.clone());
    }
    if ending == Ending::Exited(EXIT_CRITICAL) {
        return Verdict::Critical;
    }
    if let Some(retiring) = worker.retiring {
        return Verdict::Retired(retiring.reason);
    }
    if !worker.ready {
        return Verdict::BootFailed;
    }
    match (ending, row.exit_reason) {
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
        ExitReason::Unknown => ending.to_string(),
    }
}

/// `0.04s`, `12.3s`, `5m12s`, `2h3m`, `3d4h`.
pub fn format_uptime(uptime: Duration) -> String {
    let seconds = uptime.as_secs();
    match seconds {
        0 => format!("{:.2}s", uptime.as_secs_f64()),
        1..60 => format!("{:.1}s", uptime.as_secs_f64()),
        60..3600 => format!("{}m{}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h{}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::pool::{Retiring, WorkerId};
    use crate::scoreboard::{WorkerRow, WorkerState};
    use nix::unistd::Pid;

    fn worker(ready: bool, age: Duration) -> (Worker, Instant) {
        let now = Instant::now();
        let worker = Worker {
            pid: Pid::from_raw(4312),
            id: WorkerId {
                role: Role::Http,
                slot: 1,
            },
            generation: 1,
            started: now - age,
            ready,
            row: WorkerRow::new().unwrap(),
            retiring: None,
            kill_reason: None,
        };
        (worker, now)
    }

    fn row(requests: u64, exit_reason: ExitReason) -> RowSnapshot {
        RowSnapshot {
            state: WorkerState::Idle,
            exit_reason,
            requests,
            busy_for: None,
            request: String::new(),
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

        worker.kill_reason = Some("did not stop within graceful_timeout (30s)".into());
        let killed = report(&worker, SIGKILL, &row(9, ExitReason::Unknown), now);
        assert!(
            killed
                .line
                .contains("killed: did not stop within graceful_timeout (30s)")
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
    fn uptimes_read_naturally() {
        assert_eq!(format_uptime(Duration::from_millis(40)), "0.04s");
        assert_eq!(format_uptime(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(format_uptime(Duration::from_secs(312)), "5m12s");
        assert_eq!(format_uptime(Duration::from_secs(7380)), "2h3m");
        assert_eq!(
            format_uptime(Duration::from_secs(3 * 86400 + 4 * 3600)),
            "3d4h"
        );
    }
}
