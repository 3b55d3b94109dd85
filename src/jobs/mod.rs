//! The job queue: jobs enqueued in the shared PostgreSQL database (`cron_store`), in the
//! application's own transaction (`forkwarden.enqueue`), and run by the job workers.
//!
//! - **A claim is one short transaction**: the first pending job of a kind this host runs,
//!   due, in a channel with room (`FOR UPDATE SKIP LOCKED`; the channel's row locked while
//!   its running jobs are counted, so a capacity holds over every host), is marked running
//!   under a lease, and its attempt row inserted.
//! - **The lease** is renewed while the job runs (each renewal also tells whether the job
//!   was cancelled); a job worker that cannot renew kills its job before the lease may pass.
//!   A host that dies stops renewing: once its leases pass, the next claim on any host
//!   records those attempts as lost and the jobs are retried.
//! - **A job worker that dies** (killed by a limit, a signal, a crash) is not left to the
//!   lease: the master hands its end, with the cause it knows, to the next job worker it
//!   starts, which records it at once (`JobDeath`) and retries or fails the job.
//! - **Each attempt ends with a fate** ([`fate`]): done, retried after the kind's retry
//!   delay, failed once no attempt is left, or cancelled.

pub mod command;
mod store;

use std::time::Duration;

pub use store::{Claimed, JobQueue, JobRow, Lease};

use crate::task::RunEnding;

/// Where `enqueue` (and `forkwarden job retry`) wake the job workers of every host.
pub const CHANNEL: &str = "forkwarden_job";

/// What the master knows of a job worker that ended, for its successor to record: its pid,
/// and how it ended in the master's words (`killed: limit_memory_hard exceeded (rss 1.3 GiB
/// > 1.2 GiB)`), with the key of the limit crossed, if one was.
#[derive(Clone, Debug)]
pub struct JobDeath {
    pub worker_pid: i32,
    pub cause: String,
    pub limit: Option<String>,
}

/// How an attempt ended, as its row says (`outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// It failed (an exception, a status other than 0 and 75).
    Error,
    /// It asked for another attempt (exit status 75, `jobs.Retry`).
    RetryAsked,
    /// A signal ended it, or its job worker was killed with it.
    Killed,
    /// Past its kind's `limit_time_real` or `limit_time_cpu`.
    TimedOut,
    /// Its lease passed, or its claim was lost: no one knows how it ended.
    Lost,
    /// Cancelled while it ran.
    Cancelled,
    /// It could not be started.
    NotStarted,
}

impl Outcome {
    /// Every outcome, in the order a job worker's row counts them.
    pub const ALL: [Self; crate::scoreboard::JOB_OUTCOMES] = [
        Self::Done,
        Self::Error,
        Self::RetryAsked,
        Self::Killed,
        Self::TimedOut,
        Self::Lost,
        Self::Cancelled,
        Self::NotStarted,
    ];

    /// Its place in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|outcome| *outcome == self)
            .unwrap_or(0)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Error => "error",
            Self::RetryAsked => "retry",
            Self::Killed => "killed",
            Self::TimedOut => "timeout",
            Self::Lost => "lost",
            Self::Cancelled => "cancelled",
            Self::NotStarted => "not_started",
        }
    }

    /// The outcome of a run that ended with `ending`.
    pub fn of(ending: &RunEnding) -> Self {
        match ending {
            RunEnding::Exited(0) => Self::Done,
            RunEnding::Exited(RETRY_STATUS) => Self::RetryAsked,
            RunEnding::Exited(_) => Self::Error,
            RunEnding::Signaled(_) | RunEnding::Lost => Self::Killed,
            RunEnding::TimedOut { .. } => Self::TimedOut,
            RunEnding::CouldNotStart(_) => Self::NotStarted,
            RunEnding::ClaimLost(_) => Self::Lost,
            RunEnding::Stopped { .. } => Self::Cancelled,
        }
    }
}

/// The exit status by which a command job asks for another attempt (EX_TEMPFAIL).
pub const RETRY_STATUS: i32 = 75;

/// What becomes of a job after an attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fate {
    Done,
    /// Pending again, not before this long from now.
    Retry(Duration),
    /// No attempt left.
    Failed,
    Cancelled,
}

/// `retried in 0.5s`, `failed: no attempt left`: what follows an attempt, in words.
impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Done => f.write_str("done"),
            Self::Retry(after) => write!(f, "retried in {}", crate::format::elapsed(*after)),
            Self::Failed => f.write_str("failed: no attempt left"),
            Self::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl Fate {
    /// Its place among the fates a job worker's row counts (see
    /// `scoreboard::JOB_FATES`), and its name there.
    pub const NAMES: [&'static str; crate::scoreboard::JOB_FATES] =
        ["done", "retried", "failed", "cancelled"];

    pub fn index(self) -> usize {
        match self {
            Self::Done => 0,
            Self::Retry(_) => 1,
            Self::Failed => 2,
            Self::Cancelled => 3,
        }
    }

    /// The job's state once this fate is written.
    pub fn state(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Retry(_) => "pending",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The fate of a job whose attempt `attempt` (of `max_attempts`) ended with `outcome`;
/// `retry_delay` is how long its kind waits before attempt `attempt + 1`.
pub fn fate(outcome: Outcome, attempt: u32, max_attempts: u32, retry_delay: Duration) -> Fate {
    match outcome {
        Outcome::Done => Fate::Done,
        Outcome::Cancelled => Fate::Cancelled,
        _ if attempt < max_attempts => Fate::Retry(retry_delay),
        _ => Fate::Failed,
    }
}

/// The end of an attempt, as its row records it.
#[derive(Clone, Debug)]
pub struct AttemptEnd {
    pub outcome: Outcome,
    /// In words: how it ended, with the exception's last line when there is one.
    pub detail: String,
    pub exit_status: Option<i32>,
    pub signal: Option<i32>,
    /// The limit that ended it, and its value.
    pub limit: Option<(String, String)>,
    /// The job's own process.
    pub pid: Option<i32>,
    pub output_tail: Vec<String>,
}

impl AttemptEnd {
    /// The end of a run: `ending`, the job's `pid` and its last lines.
    pub fn of_run(ending: &RunEnding, pid: Option<i32>, output_tail: Vec<String>) -> Self {
        let outcome = Outcome::of(ending);
        let mut detail = ending.to_string();
        // A Python exception's last line says what it was.
        if outcome == Outcome::Error
            && let Some(last) = output_tail
                .iter()
                .rev()
                .find_map(|line| line.strip_prefix("[stderr] "))
        {
            detail = format!("{detail}: {last}");
        }
        let limit = match ending {
            RunEnding::TimedOut { limit, key, .. } => {
                Some((key.to_string(), crate::config::TimeSpan(*limit).to_string()))
            }
            _ => None,
        };
        Self {
            outcome,
            detail,
            exit_status: ending.exit_status(),
            signal: ending.signal(),
            limit,
            pid,
            output_tail,
        }
    }

    /// The same end, told as the kernel's `limit_time_cpu` when SIGXCPU ended the job
    /// (its RLIMIT_CPU was set to `limit` past the CPU it had used when the attempt began).
    pub fn past_cpu_limit(mut self, limit: Option<Duration>) -> Self {
        if let Some(limit) = limit
            && self.signal == Some(nix::sys::signal::Signal::SIGXCPU as i32)
        {
            let value = crate::config::TimeSpan(limit).to_string();
            self.outcome = Outcome::TimedOut;
            self.detail = format!("killed by SIGXCPU: limit_time_cpu exceeded (cpu > {value})");
            self.limit = Some(("limit_time_cpu".to_string(), value));
        }
        self
    }

    /// The end of an attempt whose job worker died: what the master said of it, and the
    /// value of the limit it names (`limit_value`, as the successor's config has it).
    pub fn of_death(death: &JobDeath, limit_value: Option<String>) -> Self {
        Self {
            outcome: Outcome::Killed,
            detail: format!(
                "its job worker (pid {}) {}",
                death.worker_pid,
                death.cause.trim_start_matches("died: ")
            ),
            exit_status: None,
            signal: None,
            limit: death.limit.clone().zip(limit_value),
            pid: None,
            output_tail: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_is_retried_until_none_is_left() {
        let delay = Duration::from_secs(10);
        assert_eq!(fate(Outcome::Done, 5, 5, delay), Fate::Done);
        assert_eq!(fate(Outcome::Error, 1, 5, delay), Fate::Retry(delay));
        assert_eq!(fate(Outcome::Killed, 4, 5, delay), Fate::Retry(delay));
        assert_eq!(fate(Outcome::TimedOut, 5, 5, delay), Fate::Failed);
        assert_eq!(fate(Outcome::RetryAsked, 5, 5, delay), Fate::Failed);
        assert_eq!(fate(Outcome::Cancelled, 1, 5, delay), Fate::Cancelled);
    }

    #[test]
    fn an_attempt_end_says_why_in_words() {
        let tail = vec![
            "working".to_string(),
            "[stderr] Traceback (most recent call last):".to_string(),
            "[stderr] ValueError: no such invoice".to_string(),
        ];
        let end = AttemptEnd::of_run(&RunEnding::Exited(1), Some(42), tail);
        assert_eq!(end.outcome, Outcome::Error);
        assert_eq!(
            end.detail,
            "exited with status 1: ValueError: no such invoice"
        );
        let timed_out = RunEnding::TimedOut {
            ran: Duration::from_millis(2003),
            limit: Duration::from_secs(2),
            key: "limit_time_real",
        };
        let end = AttemptEnd::of_run(&timed_out, Some(42), Vec::new());
        assert_eq!(end.outcome, Outcome::TimedOut);
        assert_eq!(
            end.limit.as_ref().map(|(key, _)| key.as_str()),
            Some("limit_time_real")
        );
        assert_eq!(
            Outcome::of(&RunEnding::Exited(RETRY_STATUS)),
            Outcome::RetryAsked
        );
        let xcpu = RunEnding::Signaled(nix::sys::signal::Signal::SIGXCPU as i32);
        let end = AttemptEnd::of_run(&xcpu, Some(42), Vec::new())
            .past_cpu_limit(Some(Duration::from_secs(3)));
        assert_eq!(end.outcome, Outcome::TimedOut);
        assert_eq!(end.limit, Some(("limit_time_cpu".into(), "3s".into())));
        let killed = AttemptEnd::of_run(&RunEnding::Signaled(9), None, Vec::new())
            .past_cpu_limit(Some(Duration::from_secs(3)));
        assert_eq!((killed.outcome, killed.limit), (Outcome::Killed, None));
        let death = JobDeath {
            worker_pid: 7,
            cause: "killed: limit_memory_hard exceeded (rss 300 MiB > 200 MiB)".into(),
            limit: Some("limit_memory_hard".into()),
        };
        let end = AttemptEnd::of_death(&death, Some("200 MiB".into()));
        assert_eq!(
            end.limit,
            Some(("limit_memory_hard".into(), "200 MiB".into()))
        );
        assert_eq!(
            end.detail,
            "its job worker (pid 7) killed: limit_memory_hard exceeded (rss 300 MiB > 200 MiB)"
        );
    }
}
