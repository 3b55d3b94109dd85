//! What the master counts since it started, for `forkwarden status` and the metrics: how
//! workers ended, by cause; the limits it enforced; the last deaths with their line; the
//! requests served by workers that are gone, and how long they took.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use super::lifecycle::RetireReason;
use super::pool::RunCounts;
use super::report::{Verdict, limit_named};
use crate::id::Role;
use crate::scoreboard::{Durations, JobFigures, KindFigures};

/// How many recent deaths are kept.
const RECENT: usize = 10;

/// A worker's end that was not a plain stop (a limit, a recycle, a kill, a crash).
#[derive(Clone, Debug)]
pub struct Death {
    pub at: SystemTime,
    pub pid: i32,
    /// The line the master logged about it.
    pub line: String,
}

#[derive(Debug, Default)]
pub struct Tally {
    /// Worker ends by cause (`replaced`, `limit_request`, `limit_memory_hard`, `died`...).
    pub ends: BTreeMap<String, u64>,
    /// Limits enforced, by limit (`limit_memory_soft`, `limit_time_real`...).
    pub limits: BTreeMap<String, u64>,
    /// The last [`RECENT`] deaths, oldest first.
    pub recent: VecDeque<Death>,
    /// Requests (jobs, for cron workers) served by workers that have ended, by role.
    pub served_by_ended: BTreeMap<&'static str, Durations>,
    /// Runs of each cron job that ended, counted by cron workers that have ended.
    pub cron_runs_by_ended: BTreeMap<String, RunCounts>,
    /// The attempts of each job kind the job workers that ended counted.
    pub job_attempts_by_ended: BTreeMap<String, KindFigures>,
}

impl Tally {
    /// A worker of `role` ended as `verdict` says, after serving what `served` counts;
    /// `line` is what was logged.
    pub fn ended(
        &mut self,
        verdict: &Verdict,
        pid: i32,
        role: Role,
        served: &Durations,
        line: &str,
    ) {
        *self.ends.entry(verdict.cause()).or_default() += 1;
        self.served_by_ended
            .entry(role.as_str())
            .or_default()
            .add(served);
        if let Verdict::LimitExceeded(detail) = verdict
            && let Some(limit) = limit_named(detail)
        {
            // Enforced by the worker itself (limit_time_cpu): the master learns it here.
            self.enforced(limit);
        }
        let plain_stop = matches!(
            verdict,
            Verdict::Retired(
                RetireReason::Shutdown | RetireReason::Replaced | RetireReason::ScaledDown
            )
        );
        if !plain_stop {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(Death {
                at: SystemTime::now(),
                pid,
                line: line.to_string(),
            });
        }
    }

    /// A cron worker ended, having counted `runs` of the jobs of its config;
    /// `interrupted`: the job it was running when it ended, a failure.
    pub fn cron_worker_ended(
        &mut self,
        runs: impl IntoIterator<Item = (String, RunCounts)>,
        interrupted: Option<&str>,
    ) {
        for (job, counted) in runs {
            self.cron_runs_by_ended.entry(job).or_default().add(counted);
        }
        if let Some(job) = interrupted {
            self.cron_runs_by_ended
                .entry(job.to_string())
                .or_default()
                .add(RunCounts {
                    succeeded: 0,
                    failed: 1,
                });
        }
    }

    /// A job worker ended, having counted `figures` of the `kinds` of its config;
    /// `interrupted`: the kind of the job it was running when it ended, killed with it.
    pub fn job_worker_ended(
        &mut self,
        kinds: &[String],
        figures: &JobFigures,
        interrupted: Option<&str>,
    ) {
        for (kind, counted) in kinds.iter().zip(&figures.kinds) {
            self.job_attempts_by_ended
                .entry(kind.clone())
                .or_default()
                .add(counted);
        }
        if let Some(kind) = interrupted {
            let counts = self
                .job_attempts_by_ended
                .entry(kind.to_string())
                .or_default();
            let killed = &mut counts.outcomes[crate::jobs::Outcome::Killed.index()];
            *killed = killed.saturating_add(1);
        }
    }

    /// The master enforced `limit` (a config key: `limit_memory_hard`, `ready_timeout`...).
    pub fn enforced(&mut self, limit: &str) {
        *self.limits.entry(limit.to_string()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoreboard::ExitReason;

    fn served(count: u64) -> Durations {
        Durations {
            count,
            ..Durations::default()
        }
    }

    #[test]
    fn ends_are_counted_by_cause_and_limits_by_name() {
        let mut tally = Tally::default();
        tally.ended(
            &Verdict::Retired(RetireReason::Replaced),
            1,
            Role::Http,
            &served(5),
            "stopped",
        );
        tally.ended(
            &Verdict::KilledByMaster("limit_memory_hard exceeded (rss 9 > 8)".into()),
            2,
            Role::Http,
            &served(7),
            "killed: limit_memory_hard exceeded",
        );
        tally.enforced("limit_memory_hard");
        tally.ended(
            &Verdict::Recycled(ExitReason::LimitRequest),
            3,
            Role::Cron,
            &served(100),
            "exited",
        );
        tally.ended(
            &Verdict::Died,
            4,
            Role::Http,
            &served(0),
            "died: killed by SIGKILL",
        );
        assert_eq!(tally.ends["replaced"], 1);
        assert_eq!(tally.ends["limit_memory_hard"], 1);
        assert_eq!(tally.ends["limit_request"], 1);
        assert_eq!(tally.ends["died"], 1);
        assert_eq!(tally.limits["limit_memory_hard"], 1);
        assert_eq!(tally.served_by_ended["http"].count, 12);
        assert_eq!(tally.served_by_ended["cron"].count, 100);
        // A stop for a reload is not a death.
        let pids: Vec<i32> = tally.recent.iter().map(|death| death.pid).collect();
        assert_eq!(pids, [2, 3, 4]);
        for pid in 10..30 {
            tally.ended(&Verdict::Died, pid, Role::Http, &served(0), "died");
        }
        assert_eq!(tally.recent.len(), RECENT);
        assert_eq!(tally.recent.back().map(|death| death.pid), Some(29));
    }
}
