//! Step 3 of the master's loop: the deadlines it keeps (graceful stops, 504 grace) and the
//! per-worker limits it checks (decided in [`crate::limits`], acted on here).

use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::pool::{Kill, RetireReason, Retiring};
use super::{Master, report};
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
                    worker.signal(Signal::SIGKILL);
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
                    worker.signal(Signal::SIGKILL);
                }
                _ => {}
            }
        }
        self.enforce_exec_deadlines(now);
    }

    /// Kills exec workers that did not report `READY=1` within `ready_timeout`, or went
    /// silent past the watchdog period they declared.
    fn enforce_exec_deadlines(&mut self, now: Instant) {
        let ready_timeout = self.config.app.as_ref().map(|app| app.ready_timeout);
        let mut due = Vec::new();
        for worker in self.pool.workers() {
            let Some(exec) = &worker.exec else { continue };
            if worker.kill.is_some() || exec.deadline(worker.ready).is_none_or(|at| at > now) {
                continue;
            }
            let detail = match (worker.ready, exec.watchdog, ready_timeout) {
                (false, _, Some(timeout)) => {
                    format!("did not report READY=1 within ready_timeout ({timeout})")
                }
                (_, Some(period), _) => format!(
                    "watchdog: no WATCHDOG=1 for {} (WATCHDOG_USEC={})",
                    crate::format::measured(now.saturating_duration_since(exec.last_alive)),
                    period.as_micros()
                ),
                _ => continue,
            };
            due.push((worker.pid, detail));
        }
        for (pid, detail) in due {
            self.enforce(pid, Enforcement::Kill(detail), now);
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
        // Process groups whose whole memory counts: an exec worker's (its program and the
        // helpers it starts) and a running cron job's (added to its cron worker's). One scan
        // of /proc serves them all, and none is made when there are none.
        let group_rss = if poll_memory {
            let groups: Vec<i32> = self
                .pool
                .workers()
                .filter_map(|worker| match &worker.exec {
                    Some(_) => Some(worker.pid.as_raw()),
                    None => worker.row.job_group(),
                })
                .collect();
            limits::process_groups_rss(&groups)
        } else {
            Default::default()
        };
        let mut crossed = Vec::new();
        let mut earliest: Option<Instant> = None;
        for worker in self.pool.workers_mut() {
            if worker.kill.is_some() {
                continue;
            }
            let row = worker.row.snapshot();
            if poll_memory {
                let own = worker.memory.as_ref().and_then(|probe| probe.rss().ok());
                worker.last_rss = match (&worker.exec, row.job_group) {
                    (Some(_), _) => group_rss.get(&worker.pid.as_raw()).copied().or(own),
                    (None, Some(job)) => {
                        own.map(|rss| rss + group_rss.get(&job).copied().unwrap_or(0))
                    }
                    (None, None) => own,
                };
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
    pub(super) fn enforce(&mut self, pid: Pid, enforcement: Enforcement, now: Instant) {
        let graceful = self.config.graceful_timeout.duration();
        let Some(worker) = self.pool.get_mut(pid) else {
            return;
        };
        let row = worker.row.snapshot();
        // A program cannot be asked to answer 504 from inside: it is killed, and the
        // request it was serving named in the log.
        let enforcement = match enforcement {
            Enforcement::Expire(detail) if worker.exec.is_some() => Enforcement::Kill(detail),
            other => other,
        };
        let (what, unexpected) = match enforcement {
            Enforcement::Kill(detail) => {
                worker.signal(Signal::SIGKILL);
                let what = format!("killed: {detail}");
                worker.kill = Some(Kill {
                    reason: detail,
                    sigkill_at: None,
                });
                (what, true)
            }
            Enforcement::Expire(detail) => {
                // The worker answers 504 and leaves; SIGKILL follows if it cannot.
                worker.signal(Signal::SIGUSR2);
                let what = format!("killed: {detail}");
                worker.kill = Some(Kill {
                    reason: detail,
                    sigkill_at: Some(now + EXPIRY_GRACE),
                });
                (what, true)
            }
            Enforcement::Recycle(detail) => {
                worker.row.request_stop();
                match &mut worker.exec {
                    // A program in the middle of a request gets SIGTERM once it is idle.
                    Some(exec) if exec.sends_markers && row.busy_for.is_some() => {
                        exec.stop_deferred = true;
                    }
                    _ => worker.signal(Signal::SIGTERM),
                }
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
