//! Step 4 of the master's loop: the deadlines it keeps (readiness, graceful stops, 504
//! grace, programs' watchdogs) and the per-worker limits and liveness it checks.
//!
//! Enforcement is a part of the master like the pool: [`Enforcer`] owns the limits and when
//! it looks next, and *decides*; the master only carries out what it decided
//! ([`Master::enforce`]). The decisions that need no process, what a due deadline calls for
//! ([`deadline_step`]) and how a crossed limit is answered ([`respond`]), are pure
//! functions, unit-tested below; whether a limit is crossed is [`crate::limits::check`].

use crate::id::Role;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Master;
use super::exec::Markers;
use super::lifecycle::{Departure, Lifecycle, RetireReason};
use super::pool::{self, Pool, Worker, WorkerKind};
use super::report::{self, Facts};
use crate::config::TimeSpan;
use crate::limits::{
    self, Breach, EXPIRY_GRACE, Enforcement, IDLE_SCAN, MasterLimits, MemoryActivity, Observation,
};
use crate::proctree;
use crate::scoreboard::Board;
use crate::sys::ProcessHandle;

/// The enforcement part: the limits of the current config and when it next looks.
pub(super) struct Enforcer {
    limits: MasterLimits,
    /// When the workers' memory and liveness are next looked at.
    next_scan: Option<Instant>,
    /// The earliest moment a request in flight crosses its wall-clock limit.
    next_request_deadline: Option<Instant>,
}

/// What a worker's due deadline calls for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DeadlineStep {
    /// It crossed a limit: not ready within `ready_timeout`, or silent past its watchdog.
    Enforce(Enforcement),
    /// The grace after a gentler signal (SIGUSR2 for a 504) is over: SIGKILL now.
    Sigkill,
    /// Told to stop, it did not within `graceful_timeout`: killed, saying why.
    Overstayed(String),
}

/// How the master answers a crossed limit: what it sends, what it records and what it logs.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Response {
    /// The signal to send now (none: a program in a request is told once it is idle).
    pub signal: Option<Signal>,
    /// Ask the worker in its row to stop after its current request.
    pub request_stop: bool,
    pub departure: Departure,
    /// `killed: ...` or `recycled: ...`, the heart of the log line.
    pub what: String,
    /// Its end counts as a failure (it did not leave when asked to).
    pub unexpected: bool,
}

/// What the answer to a limit depends on in the worker itself.
#[derive(Clone, Copy, Debug)]
pub(super) struct Answering {
    /// It answers the per-request limits from inside (504, recycle): forkwarden's worker.
    pub answers_limits: bool,
    /// A program that marks its requests and is in one now: SIGTERM waits for its IDLE=1.
    pub in_marked_request: bool,
}

impl Answering {
    fn of(worker: &Worker) -> Self {
        let marks_requests = worker
            .kind
            .program()
            .is_some_and(|exec| exec.markers == Markers::Notified);
        Self {
            answers_limits: worker.answers_limits(),
            in_marked_request: marks_requests && worker.row.is_busy(),
        }
    }
}

/// How `enforcement` is carried out on a worker that answers as `answering` says: a
/// program cannot be asked to answer 504 from inside, so it is killed instead (and the
/// request it was serving named in the log); a recycled program in a request is told once
/// it is idle.
pub(super) fn respond(
    enforcement: Enforcement,
    answering: Answering,
    graceful: Duration,
    now: Instant,
) -> (Breach, Response) {
    let enforcement = match enforcement {
        Enforcement::Expire(breach) if !answering.answers_limits => Enforcement::Kill(breach),
        other => other,
    };
    let breach = enforcement.breach().clone();
    let response = match enforcement {
        Enforcement::Kill(Breach { detail, .. }) => Response {
            signal: Some(Signal::SIGKILL),
            request_stop: false,
            what: format!("killed: {detail}"),
            departure: Departure::Kill {
                reason: detail,
                sigkill_at: None,
            },
            unexpected: true,
        },
        Enforcement::Expire(Breach { detail, .. }) => Response {
            // The worker answers 504 and leaves; SIGKILL follows if it cannot.
            signal: Some(Signal::SIGUSR2),
            request_stop: false,
            what: format!("killed: {detail}"),
            departure: Departure::Kill {
                reason: detail,
                sigkill_at: Some(now + EXPIRY_GRACE),
            },
            unexpected: true,
        },
        Enforcement::Recycle(Breach { detail, .. }) => {
            let signal_now = !answering.in_marked_request;
            Response {
                signal: signal_now.then_some(Signal::SIGTERM),
                request_stop: true,
                what: format!("recycled: {detail}"),
                departure: Departure::Retire {
                    reason: RetireReason::Limit(detail),
                    deadline: now + graceful,
                    signalled: signal_now,
                },
                unexpected: false,
            }
        }
    };
    (breach, response)
}

/// What `worker`'s deadline calls for at `now`, if it is due.
pub(super) fn deadline_step(
    worker: &Worker,
    graceful_timeout: TimeSpan,
    now: Instant,
) -> Option<DeadlineStep> {
    if worker.deadline().is_none_or(|at| at > now) {
        return None;
    }
    match &worker.lifecycle {
        Lifecycle::Starting { ready_by } => {
            let given = pool::ready_timeout_given(worker.started, *ready_by);
            let detail = format!(
                "did not {} within ready_timeout ({})",
                worker.kind.readiness(),
                crate::format::seconds(given)
            );
            let took = now.saturating_duration_since(worker.started);
            let breach = Breach::time("ready_timeout", took, given, detail);
            Some(DeadlineStep::Enforce(Enforcement::Kill(breach)))
        }
        Lifecycle::Serving => {
            let exec = worker.kind.program()?;
            let period = exec.watchdog?;
            // A request in flight is the per-request limits' to judge.
            if worker.row.is_busy() {
                return None;
            }
            let silent = now.saturating_duration_since(exec.last_alive);
            let detail = format!(
                "watchdog: no WATCHDOG=1 for {} (WATCHDOG_USEC={})",
                crate::format::measured(silent),
                period.as_micros()
            );
            let breach = Breach::time("heartbeat_timeout", silent, period, detail);
            Some(DeadlineStep::Enforce(Enforcement::Kill(breach)))
        }
        Lifecycle::Leaving(leaving) => match &leaving.departure {
            Departure::Kill { .. } => Some(DeadlineStep::Sigkill),
            Departure::Retire { reason, .. } => Some(DeadlineStep::Overstayed(format!(
                "did not stop within graceful_timeout ({graceful_timeout}) after being told \
                 to ({reason})"
            ))),
        },
    }
}

impl Enforcer {
    pub fn new(limits: MasterLimits) -> Self {
        Self {
            limits,
            next_scan: None,
            next_request_deadline: None,
        }
    }

    pub fn limits(&self) -> &MasterLimits {
        &self.limits
    }

    /// The limits of a reloaded config.
    pub fn reload(&mut self, limits: MasterLimits) {
        self.limits = limits;
    }

    /// Looks at the workers at once (one is ready, or woke the master from rest).
    pub fn scan_now(&mut self) {
        self.next_scan = Some(Instant::now());
    }

    /// Looks within one poll interval (a program began a request, which may allocate).
    pub fn scan_soon(&mut self) {
        let soon = Instant::now() + self.limits.poll_interval;
        self.next_scan = Some(self.next_scan.map_or(soon, |at| at.min(soon)));
    }

    /// When it must look again by itself: the next scan, the next request to cross its
    /// wall-clock limit.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.next_scan, self.next_request_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// The due deadlines of the pool's workers, with what each calls for.
    pub fn due_deadlines(
        &self,
        pool: &Pool,
        graceful_timeout: TimeSpan,
        now: Instant,
    ) -> Vec<(Pid, DeadlineStep)> {
        pool.workers()
            .filter_map(|worker| {
                deadline_step(worker, graceful_timeout, now).map(|step| (worker.pid, step))
            })
            .collect()
    }

    /// Checks every worker against its limits (see [`crate::limits`]) and its liveness,
    /// and returns what is crossed. Scoreboard rows are read on every turn (no system
    /// call); /proc only on a scan, and only for the workers whose memory may have changed.
    /// `job_parents`: see [`cron_job`].
    pub fn crossed_limits(
        &mut self,
        pool: &mut Pool,
        board: &Board,
        job_parents: &[Pid],
        now: Instant,
    ) -> Vec<(Pid, Enforcement)> {
        if !self.limits.needs_polling() {
            self.next_scan = None;
            self.next_request_deadline = None;
            return Vec::new();
        }
        let scan = self.next_scan.is_none_or(|at| at <= now);
        let limits = &self.limits;
        let watch_memory = scan && limits.watches_memory();
        if watch_memory {
            // Before the rows are read: a request starting meanwhile is seen in its row,
            // or its worker sees the master resting and wakes it.
            board.set_master_resting(true);
        }
        let mut crossed = Vec::new();
        let mut earliest: Option<Instant> = None;
        // Whether some worker's memory must be read again at the short interval.
        let mut active = false;
        for worker in pool.workers_mut() {
            if matches!(
                worker.leaving().map(|leaving| &leaving.departure),
                Some(Departure::Kill { .. })
            ) {
                continue;
            }
            let busy = worker.row.is_busy();
            if watch_memory {
                let activity = memory_activity(worker, busy);
                let starting = matches!(worker.lifecycle, Lifecycle::Starting { .. });
                // Whose memory may change before the next scan: the master watches closely.
                active |= starting || activity.is_active(worker.memory.requests);
                let last = worker
                    .memory
                    .at
                    .map(|at| (now.saturating_duration_since(at), worker.memory.requests));
                if limits::memory_due(activity, starting, last, limits.poll_interval) {
                    read_memory(worker, job_parents, now);
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
                // A cron job's own `timeout` or a job kind's `limit_time_real`, which only
                // a cron or job worker's row may carry.
                work_limit: worker
                    .row
                    .work_limit()
                    .filter(|_| worker.id.role.runs_tasks()),
                // Chosen among the config's own kinds: a row can name no other limit.
                work_kind: worker
                    .job_shape()
                    .and_then(|shape| worker.row.work_kind(shape)),
                rss: worker.memory.rss.filter(|_| worker.memory.at == Some(now)),
                virtual_size: worker
                    .memory
                    .address_space
                    .filter(|_| worker.memory.at == Some(now)),
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
                board.set_master_resting(false);
                limits.poll_interval
            } else {
                IDLE_SCAN.max(limits.poll_interval)
            };
            self.next_scan = Some(now + every);
        }
        self.next_request_deadline = earliest;
        crossed
    }
}

impl Master {
    /// Who a cron job's process may be the child of, besides its cron worker: a preload
    /// template (a `call` job), or the master (its cron worker died).
    pub(super) fn job_parents(&self) -> Vec<Pid> {
        std::iter::once(self.pid)
            .chain(self.templates.pids())
            .collect()
    }

    /// Carries out what the due deadlines call for: workers not ready in time, programs
    /// silent past their watchdog, workers that did not stop within `graceful_timeout`,
    /// and SIGKILLs due after a gentler signal.
    pub(super) fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        let due = self
            .enforcer
            .due_deadlines(&self.pool, self.config.graceful_timeout, now);
        for (pid, step) in due {
            match step {
                DeadlineStep::Enforce(enforcement) => self.enforce(pid, enforcement, now),
                DeadlineStep::Sigkill => {
                    if let Some(worker) = self.pool.get_mut(pid) {
                        worker.signal(Signal::SIGKILL);
                        if let Some(Departure::Kill { sigkill_at, .. }) = worker.departure_mut() {
                            *sigkill_at = None;
                        }
                    }
                }
                DeadlineStep::Overstayed(reason) => {
                    if let Some(worker) = self.pool.get_mut(pid) {
                        worker.signal(Signal::SIGKILL);
                        let departure = Departure::Kill {
                            reason,
                            sigkill_at: None,
                        };
                        worker.depart(departure, false);
                    }
                }
            }
        }
        self.enforce_template_deadlines(now);
    }

    /// Carries out what the enforcer finds crossed among the workers' limits.
    pub(super) fn enforce_limits(&mut self) {
        let now = Instant::now();
        let job_parents = self.job_parents();
        let crossed = self
            .enforcer
            .crossed_limits(&mut self.pool, &self.board, &job_parents, now);
        for (pid, enforcement) in crossed {
            self.enforce(pid, enforcement, now);
        }
    }

    /// Carries out a crossed limit (see [`respond`]) and logs it in one line, with the
    /// replacement's pid (the replacement is started at once, in this same turn of the
    /// loop).
    pub(super) fn enforce(&mut self, pid: Pid, enforcement: Enforcement, now: Instant) {
        let graceful = self.config.graceful_timeout.duration();
        let job_parents = self.job_parents();
        let Some(worker) = self.pool.get_mut(pid) else {
            return;
        };
        let row = worker.row.snapshot();
        let (breach, response) = respond(enforcement, Answering::of(worker), graceful, now);
        self.tally.enforced(breach.limit);
        if response.request_stop {
            worker.row.request_stop();
        }
        if let Some(signal) = response.signal {
            worker.signal(signal);
        }
        let killed_job_worker =
            worker.id.role == Role::Job && response.signal == Some(Signal::SIGKILL);
        worker.depart(response.departure, true);
        let line = report::describe(worker, &response.what, true, &row, now);
        let facts = Facts::of(
            worker,
            &row,
            now,
            "limit_enforced",
            breach.limit.to_string(),
        )
        .with_breach(&breach);
        let unexpected = response.unexpected;
        let failed_start = unexpected && report::failed_start(worker, None, &row, now);
        let id = worker.id;
        if killed_job_worker {
            // Its replacement starts now, and records how its job ended: the job goes first.
            if let Some(job) = cron_job(worker, &job_parents) {
                let _ = job.signal_group(Signal::SIGKILL);
            }
            self.pool.note_job_death(crate::jobs::JobDeath {
                worker_pid: pid.as_raw(),
                cause: response.what.clone(),
                limit: Some(breach.limit.to_string()),
            });
        }
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
    if !matches!(
        worker.kind,
        WorkerKind::Cron { .. } | WorkerKind::Job { .. }
    ) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::WorkerId;
    use crate::scoreboard::WorkerRow;
    use pool::WorkerProcess;

    const GRACEFUL: Duration = Duration::from_secs(30);

    fn breach(limit: &'static str) -> Breach {
        Breach {
            limit,
            value: 2,
            limit_value: 1,
            detail: format!("{limit} exceeded"),
        }
    }

    fn http_worker(started: Instant, ready_by: Option<Instant>) -> Worker {
        Worker::new(
            WorkerProcess::Child(Pid::from_raw(4242)),
            WorkerId {
                role: Role::Http,
                slot: 0,
            },
            WorkerKind::Http,
            0,
            started,
            WorkerRow::new().unwrap(),
            ready_by,
        )
    }

    const BUILT_IN: Answering = Answering {
        answers_limits: true,
        in_marked_request: false,
    };
    const PROGRAM_IN_REQUEST: Answering = Answering {
        answers_limits: false,
        in_marked_request: true,
    };

    #[test]
    fn an_expired_request_of_a_built_in_worker_gets_a_504_then_sigkill_after_the_grace() {
        let now = Instant::now();
        let (crossed, response) = respond(
            Enforcement::Expire(breach("limit_time_real")),
            BUILT_IN,
            GRACEFUL,
            now,
        );
        assert_eq!(crossed, breach("limit_time_real"));
        assert_eq!(response.signal, Some(Signal::SIGUSR2));
        assert_eq!(
            response.departure,
            Departure::Kill {
                reason: "limit_time_real exceeded".into(),
                sigkill_at: Some(now + EXPIRY_GRACE),
            }
        );
        assert_eq!(response.what, "killed: limit_time_real exceeded");
        assert!(response.unexpected && !response.request_stop);
    }

    #[test]
    fn a_program_cannot_answer_504_so_an_expired_request_kills_it() {
        let now = Instant::now();
        let (_, response) = respond(
            Enforcement::Expire(breach("limit_time_real")),
            PROGRAM_IN_REQUEST,
            GRACEFUL,
            now,
        );
        assert_eq!(response.signal, Some(Signal::SIGKILL));
        assert!(matches!(
            response.departure,
            Departure::Kill {
                sigkill_at: None,
                ..
            }
        ));
    }

    #[test]
    fn a_recycle_waits_for_a_program_to_finish_its_request_before_sigterm() {
        let now = Instant::now();
        let (_, response) = respond(
            Enforcement::Recycle(breach("limit_memory_soft")),
            PROGRAM_IN_REQUEST,
            GRACEFUL,
            now,
        );
        assert_eq!(response.signal, None);
        assert!(response.request_stop && !response.unexpected);
        assert_eq!(
            response.departure,
            Departure::Retire {
                reason: RetireReason::Limit("limit_memory_soft exceeded".into()),
                deadline: now + GRACEFUL,
                signalled: false,
            }
        );
        assert_eq!(response.what, "recycled: limit_memory_soft exceeded");

        let (_, idle) = respond(
            Enforcement::Recycle(breach("limit_memory_soft")),
            BUILT_IN,
            GRACEFUL,
            now,
        );
        assert_eq!(idle.signal, Some(Signal::SIGTERM));
        assert!(matches!(
            idle.departure,
            Departure::Retire {
                signalled: true,
                ..
            }
        ));
    }

    #[test]
    fn a_worker_not_ready_by_its_deadline_is_killed_for_ready_timeout() {
        let started = Instant::now();
        let ready_by = started + Duration::from_secs(60);
        let worker = http_worker(started, Some(ready_by));
        let graceful = TimeSpan::secs(30);
        assert_eq!(deadline_step(&worker, graceful, started), None);
        let late = ready_by + Duration::from_millis(5);
        let Some(DeadlineStep::Enforce(Enforcement::Kill(crossed))) =
            deadline_step(&worker, graceful, late)
        else {
            panic!("a late start must be killed");
        };
        assert_eq!(crossed.limit, "ready_timeout");
        assert_eq!(crossed.value, 60_005);
        assert_eq!(crossed.limit_value, 60_000);
        assert_eq!(
            crossed.detail,
            "did not become ready within ready_timeout (60s)"
        );
    }

    #[test]
    fn a_serving_built_in_worker_has_no_deadline_of_its_own() {
        let now = Instant::now();
        let mut worker = http_worker(now, Some(now));
        assert!(worker.mark_ready());
        let later = now + Duration::from_secs(3600);
        assert_eq!(deadline_step(&worker, TimeSpan::secs(30), later), None);
    }

    #[test]
    fn a_leaving_worker_is_killed_when_its_grace_or_graceful_timeout_runs_out() {
        let now = Instant::now();
        let graceful = TimeSpan::secs(30);
        let mut worker = http_worker(now, None);
        worker.mark_ready();
        worker.depart(
            Departure::Retire {
                reason: RetireReason::Shutdown,
                deadline: now + GRACEFUL,
                signalled: true,
            },
            false,
        );
        assert_eq!(deadline_step(&worker, graceful, now), None);
        assert_eq!(
            deadline_step(&worker, graceful, now + GRACEFUL),
            Some(DeadlineStep::Overstayed(
                "did not stop within graceful_timeout (30s) after being told to (server \
                 stopping)"
                    .into()
            ))
        );

        worker.depart(
            Departure::Kill {
                reason: "limit_time_real exceeded".into(),
                sigkill_at: Some(now + EXPIRY_GRACE),
            },
            true,
        );
        assert_eq!(deadline_step(&worker, graceful, now), None);
        assert_eq!(
            deadline_step(&worker, graceful, now + EXPIRY_GRACE),
            Some(DeadlineStep::Sigkill)
        );
        // SIGKILL sent: nothing left to do but reap it.
        if let Some(Departure::Kill { sigkill_at, .. }) = worker.departure_mut() {
            *sigkill_at = None;
        }
        assert_eq!(deadline_step(&worker, graceful, now + GRACEFUL), None);
    }
}
