//! Step 3 of the master's loop: the deadlines it keeps (graceful stops, 504 grace) and the
//! per-worker limits it checks (decided in [`crate::limits`], acted on here).

use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::pool::{Kill, RetireReason, Retiring};
use super::{Master, report, send_signal};
use crate::limits::{self, EXPIRY_GRACE, Enforcement, Observation};

impl Master {
    /// Sends the SIGKILLs that are due: to workers told to stop that have not within
    /// `graceful_timeout`, and to expired workers that did not leave within their grace.
    pub(super) fn enforce_deadlines(&mut self) {
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
    pub(super) fn enforce_limits(&mut self) {
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
}
