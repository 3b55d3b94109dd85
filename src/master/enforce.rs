//! Step 4 of the master's loop: the deadlines it keeps (readiness, graceful stops, 504
//! grace, programs' watchdogs) and the per-worker limits and liveness it checks (decided in
//! [`crate::limits`], acted on here).

use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Master;
use super::exec::Markers;
use super::lifecycle::{Departure, Lifecycle, RetireReason};
use super::pool::{self, Worker, WorkerKind};
use super::report::{self, Facts};
use crate::id::Role;
use crate::limits::{
    self, Breach, EXPIRY_GRACE, Enforcement, IDLE_SCAN, MemoryActivity, Observation,
};
use crate::proctree;
use crate::sys::ProcessHandle;

impl Master {
    /// Who a cron job's process may be the child of, besides its cron worker: a preload
    /// template (a `call` job), or the master (its cron worker died).
    pub(super) fn job_parents(&self) -> Vec<Pid> {
        std::iter::once(self.pid)
            .chain(self.templates.pids())
            .collect()
    }

    /// Acts on the deadlines that are due: workers not ready in time, programs silent past
    /// their watchdog, workers that did not stop within `graceful_timeout`, and SIGKILLs due
    /// after a gentler signal.
    pub(super) fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        let timeout = self.config.graceful_timeout;
        let mut due = Vec::new();
        for worker in self.pool.workers_mut() {
            if worker.deadline().is_none_or(|at| at > now) {
                continue;
            }
            match &mut worker.lifecycle {
                Lifecycle::Starting { ready_by } => {
                    let given = pool::ready_timeout_given(worker.started, *ready_by);
                    let waited = crate::format::seconds(given);
                    let detail = format!(
                        "did not {} within ready_timeout ({waited})",
                        worker.kind.readiness()
                    );
                    let took = now.saturating_duration_since(worker.started);
                    due.push((
                        worker.pid,
                        Breach::time("ready_timeout", took, given, detail),
                    ));
                }
                Lifecycle::Serving => {
                    if let Some(exec) = worker.kind.program()
                        && let Some(period) = exec.watchdog
                        && !worker.row.is_busy()
                    {
                        let silent = now.saturating_duration_since(exec.last_alive);
                        due.push((
                            worker.pid,
                            Breach::time(
                                "heartbeat_timeout",
                                silent,
                                period,
                                format!(
                                    "watchdog: no WATCHDOG=1 for {} (WATCHDOG_USEC={})",
                                    crate::format::measured(silent),
                                    period.as_micros()
                                ),
                            ),
                        ));
                    }
                }
                Lifecycle::Leaving(leaving) => match &mut leaving.departure {
                    Departure::Kill { sigkill_at, .. } => {
                        *sigkill_at = None;
                        worker.signal(Signal::SIGKILL);
                    }
                    Departure::Retire { reason, .. } => {
                        let reason = format!(
                            "did not stop within graceful_timeout ({timeout}) after being told to ({reason})"
                        );
                        worker.depart(
                            Departure::Kill {
                                reason,
                                sigkill_at: None,
                            },
                            false,
                        );
                        worker.signal(Signal::SIGKILL);
                    }
                },
            }
        }
        for (pid, breach) in due {
            self.enforce(pid, Enforcement::Kill(breach), now);
        }
        self.enforce_template_deadlines(now);
    }

    /// Checks every worker against its limits (see [`crate::limits`]) and its liveness, and
    /// acts on what is crossed. Scoreboard rows are read on every turn (no system call);
    /// /proc only on a scan, and only for the workers whose memory may have changed.
    pub(super) fn enforce_limits(&mut self) {
        if !self.limits.needs_polling() {
            self.next_scan = None;
            self.next_request_deadline = None;
            return;
        }
        let now = Instant::now();
        let scan = self.next_scan.is_none_or(|at| at <= now);
        let limits = &self.limits;
        if scan && limits.watches_memory() {
            // Before the rows are read: a request starting meanwhile is seen in its row,
            // or its worker sees the master resting and wakes it.
            self.board.set_master_resting(true);
        }
        let mut crossed = Vec::new();
        let mut earliest: Option<Instant> = None;
        let job_parents = self.job_parents();
        // Whether some worker's memory must be read again at the short interval.
        let mut active = false;
        for worker in self.pool.workers_mut() {
            if matches!(
                worker.leaving().map(|leaving| &leaving.departure),
                Some(Departure::Kill { .. })
            ) {
                continue;
            }
            let busy = worker.row.is_busy();
            if scan && limits.watches_memory() {
                let activity = memory_activity(worker, busy);
                let starting = matches!(worker.lifecycle, Lifecycle::Starting { .. });
                // Whose memory may change before the next scan: the master watches closely.
                active |= starting || activity.is_active(worker.memory.requests);
                let last = worker
                    .memory
                    .at
                    .map(|at| (now.saturating_duration_since(at), worker.memory.requests));
                if limits::memory_due(activity, starting, last, limits.poll_interval) {
                    read_memory(worker, &job_parents, now);
                }
            }
            if let Some(breach) = silence(worker, limits, scan, now) {
                crossed.push((worker.pid, Enforcement::Kill(breach)));
                continue;
            }
            let observation = Observation {
                role: Some(worker.id.role),
                age: now.saturating_duration_since(worker.started),
                busy_for: if busy { worker.row.busy_for() } else { None },
                // A cron job's own `timeout`, which only a cron worker's row may carry.
                work_limit: worker
                    .row
                    .work_limit()
                    .filter(|_| worker.id.role == Role::Cron),
                rss: worker.memory.rss.filter(|_| worker.memory.at == Some(now)),
                leaving: !worker.is_serving(),
            };
            match limits::check(limits, &observation) {
                Some(enforcement) => crossed.push((worker.pid, enforcement)),
                None => {
                    // A deadline too far to count (a row's own work limit) is none.
                    if let Some(deadline) = limits::time_to_deadline(limits, &observation)
                        .and_then(|left| now.checked_add(left))
                    {
                        earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
                    }
                }
            }
        }
        if scan {
            let every = if active {
                self.board.set_master_resting(false);
                self.limits.poll_interval
            } else {
                IDLE_SCAN.max(self.limits.poll_interval)
            };
            self.next_scan = Some(now + every);
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
            Enforcement::Expire(detail) if !worker.answers_limits() => Enforcement::Kill(detail),
            other => other,
        };
        let breach = enforcement.breach().clone();
        self.tally.enforced(breach.limit);
        let (what, unexpected) = match enforcement {
            Enforcement::Kill(Breach { detail, .. }) => {
                worker.signal(Signal::SIGKILL);
                let what = format!("killed: {detail}");
                worker.depart(
                    Departure::Kill {
                        reason: detail,
                        sigkill_at: None,
                    },
                    true,
                );
                (what, true)
            }
            Enforcement::Expire(Breach { detail, .. }) => {
                // The worker answers 504 and leaves; SIGKILL follows if it cannot.
                worker.signal(Signal::SIGUSR2);
                let what = format!("killed: {detail}");
                worker.depart(
                    Departure::Kill {
                        reason: detail,
                        sigkill_at: Some(now + EXPIRY_GRACE),
                    },
                    true,
                );
                (what, true)
            }
            Enforcement::Recycle(Breach { detail, .. }) => {
                worker.row.request_stop();
                // A program in the middle of a request gets SIGTERM once it is idle.
                let signal_now = !(worker
                    .kind
                    .program()
                    .is_some_and(|exec| exec.markers == Markers::Notified)
                    && row.busy_for.is_some());
                if signal_now {
                    worker.signal(Signal::SIGTERM);
                }
                let what = format!("recycled: {detail}");
                worker.depart(
                    Departure::Retire {
                        reason: RetireReason::Limit(detail),
                        deadline: now + graceful,
                        signalled: signal_now,
                    },
                    true,
                );
                (what, false)
            }
        };
        let line = report::describe(worker, &what, true, &row, now);
        let facts = Facts::of(
            worker,
            &row,
            now,
            "limit_enforced",
            breach.limit.to_string(),
        )
        .with_breach(&breach);
        let failed_start = unexpected && report::failed_start(worker, None, &row, now);
        let id = worker.id;
        self.replace(id, line, facts, unexpected, failed_start, now);
    }
}

/// What tells whether `worker`'s memory may have changed (see [`limits::memory_due`]).
fn memory_activity(worker: &Worker, busy: bool) -> MemoryActivity {
    if !worker.kind.counts_requests() {
        return MemoryActivity::Opaque;
    }
    MemoryActivity::Marked {
        busy,
        requests: worker.row.requests(),
        // A program's memory may grow while it is idle (its own threads, its children).
        grows_when_idle: worker.kind.program().is_some(),
    }
}

/// Reads the memory of `worker`: a built-in worker's own, plus its cron job's processes; a
/// program's whole process tree.
fn read_memory(worker: &mut Worker, job_parents: &[Pid], now: Instant) {
    let tree = worker.kind.measured_with_children();
    let Some(own) = proctree::memory(worker.pid, tree) else {
        return;
    };
    let job = cron_job(worker, job_parents).and_then(|job| proctree::memory(job.pid(), true));
    worker.memory.rss = Some(own.rss.saturating_add(job.map_or(0, |job| job.rss)));
    worker.memory.address_space = Some(own.address_space);
    worker.memory.at = Some(now);
    worker.memory.requests = worker.row.requests();
}

/// The cron job `worker` runs now, if it is a cron worker whose row names the job's
/// process group and that group is provably the job's: led by a process whose parent is
/// the cron worker (a command), one of `job_parents` (a preload template, for a `call`
/// job; the master, once the cron worker died and the job came to it). A row is memory
/// the worker writes: the number in it is only a claim, never acted on unchecked.
pub(super) fn cron_job(worker: &Worker, job_parents: &[Pid]) -> Option<ProcessHandle> {
    if !matches!(worker.kind, WorkerKind::Cron { .. }) {
        return None;
    }
    let leader = Pid::from_raw(worker.row.job_group()?);
    let job = ProcessHandle::open(leader).ok()?;
    let lineage = proctree::lineage(leader)?;
    let parent_ours = lineage.parent == worker.pid || job_parents.contains(&lineage.parent);
    // Checked after the read: it was this very process that /proc described.
    (lineage.group == leader && parent_ours && job.is_alive()).then_some(job)
}

/// The line that kills a ready worker that serves no request and has shown no sign of life
/// for `heartbeat_timeout`: no heartbeat in its row (a built-in worker), or seen stopped (a
/// program whose watchdog is not armed; checked on a scan).
fn silence(
    worker: &mut Worker,
    limits: &limits::MasterLimits,
    scan: bool,
    now: Instant,
) -> Option<Breach> {
    limits.heartbeat?;
    if !matches!(worker.lifecycle, Lifecycle::Serving) {
        return None;
    }
    let beats_in_row = worker.answers_limits();
    let silent_for = match worker.kind.program_mut() {
        _ if beats_in_row && worker.row.is_busy() => return None,
        _ if beats_in_row => worker.row.silent_for()?,
        None => return None,
        Some(exec) if exec.watchdog.is_some() || !scan => return None,
        Some(exec) => {
            let stopped = proctree::state(worker.pid).is_some_and(proctree::is_stopped);
            if !stopped {
                exec.stopped_since = None;
                return None;
            }
            now.saturating_duration_since(*exec.stopped_since.get_or_insert(now))
        }
    };
    let detail = limits::silence_exceeded(limits, silent_for)?;
    let seen = proctree::state(worker.pid).map_or_else(
        || "gone".to_string(),
        |state| describe_state(state).to_string(),
    );
    Some(Breach::time(
        "heartbeat_timeout",
        silent_for,
        limits.heartbeat?,
        format!("{detail}; its state: {seen}"),
    ))
}

fn describe_state(state: char) -> &'static str {
    match state {
        'T' => "stopped (T: SIGSTOP or a job-control signal)",
        't' => "stopped by a debugger (t)",
        'D' => "in uninterruptible sleep (D)",
        'S' => "sleeping (S)",
        'R' => "running (R)",
        'Z' => "exited, not yet reaped (Z)",
        _ => "unusual",
    }
}
