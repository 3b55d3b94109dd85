//! The job worker's loop: record the ends of the job workers that died before it (the
//! master handed them over), then claim one job at a time from the queue (see
//! [`crate::jobs`]), run it as a task under a lease it renews, record how it ended, and
//! wait for the next one: woken by an enqueue on any host (LISTEN), or when the next
//! delayed job falls due.
//!
//! Like a cron worker, it is a child subreaper running at the cron workers' lower priority:
//! whatever a job starts stays below it and is killed when the attempt ends.

use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use forkwarden_worker::context::{BEAT_INTERVAL, Outcome, WorkerContext};

use crate::config::{Config, JobAction, JobKind};
use crate::database::StoreError;
use crate::jobs::{AttemptEnd, Claimed, Fate, JobDeath, JobQueue};
use crate::scoreboard::ExitReason;
use crate::sys::WorkerSignals;
use crate::task::{Executor, OutputTail, Renewal, RunEnding, RunNotes, Task, TaskAction, Upkeep};

/// How often a running job's lease is renewed at most: each renewal also learns whether
/// the job was cancelled, so this bounds how long a cancel takes to reach it.
const RENEWAL_MAX: Duration = Duration::from_secs(1);
/// How often the worker removes the ended jobs past `job_retention`.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often it looks for attempts whose lease passed (their host died).
const LAPSED_EVERY: Duration = Duration::from_secs(1);
/// How often it counts the jobs of each channel for the status and the metrics (between
/// jobs, and while one runs).
const QUEUE_READ_EVERY: Duration = Duration::from_secs(5);

/// What a job worker gets from the master.
pub(super) struct JobSpec<'a> {
    pub context: WorkerContext<'a>,
    pub config: &'a Config,
    /// Where it asks the preload template to run a `call` job.
    pub calls_path: &'a Path,
    /// Job workers that ended since the last one started: their jobs' ends to record.
    pub deaths: &'a [JobDeath],
}

pub(super) fn run(spec: &JobSpec<'_>, signals: &WorkerSignals) -> Outcome {
    let name = spec.context.name();
    if let Err(errno) = nix::sys::prctl::set_child_subreaper(true) {
        error!("{name}: cannot become a child subreaper: {errno}");
        return Outcome::BootFailed;
    }
    if let Err(errno) = crate::sys::lower_priority(crate::cron::CRON_NICENESS) {
        warn!("{name}: cannot lower its priority: {errno}");
    }
    let Some(url) = &spec.config.cron_store else {
        error!("{name}: no cron_store to take jobs from");
        return Outcome::BootFailed;
    };
    let claim_deadline = match crate::sys::ClaimDeadline::install() {
        Ok(deadline) => deadline,
        Err(error) => {
            error!("{name}: cannot set up its jobs' claim deadline: {error}");
            return Outcome::BootFailed;
        }
    };
    let heartbeat = Some(spec.config.heartbeat_timeout.duration()).filter(|t| !t.is_zero());
    let worker = JobWorker {
        spec,
        signals,
        queue: JobQueue::new(url, heartbeat, true),
        claim_deadline,
        host: crate::cron::host_name(),
        pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
        lease: spec.config.cron_lease.duration(),
        deaths: spec.deaths.to_vec(),
        registered: false,
        pruned_at: None,
        lapsed_at: None,
        limit_request: spec.config.worker_limits().request_limit(),
        refusal: None,
        executor: std::cell::RefCell::new(None),
        shape: spec.config.job_row_shape(),
        queue_read_at: std::cell::Cell::new(None),
    };
    spec.context.report_ready();
    Outcome::Left(worker.serve())
}

struct JobWorker<'a> {
    spec: &'a JobSpec<'a>,
    signals: &'a WorkerSignals,
    queue: JobQueue,
    /// Kills a job whose lease stops holding, on time (see [`crate::sys::ClaimDeadline`]).
    claim_deadline: crate::sys::ClaimDeadline,
    host: String,
    pid: i32,
    lease: Duration,
    /// Deaths not recorded yet (the database was away).
    deaths: Vec<JobDeath>,
    /// Whether this config's kinds and channels are written in the database.
    registered: bool,
    pruned_at: Option<Instant>,
    lapsed_at: Option<Instant>,
    /// Jobs it runs before it leaves to be replaced (0: no limit).
    limit_request: u64,
    /// The last refusal of the database, said once until it changes.
    refusal: Option<String>,
    /// The process forked from the preload template that runs its `call` jobs, one after
    /// the other (see [`crate::task::run_in_executor`]).
    executor: std::cell::RefCell<Option<Executor>>,
    /// How its row is laid out (see [`crate::scoreboard::JobRowShape`]).
    shape: crate::scoreboard::JobRowShape,
    /// When it last counted the jobs of each channel into its row.
    queue_read_at: std::cell::Cell<Option<Instant>>,
}

impl JobWorker<'_> {
    fn serve(mut self) -> ExitReason {
        loop {
            if let Some(reason) = self.spec.context.stop_reason(self.signals) {
                return reason;
            }
            self.spec.context.reopen_log_if_asked(self.signals);
            self.spec.context.row.beat();
            let wait = match self.upkeep().and_then(|()| self.next()) {
                Ok(Some(claimed)) => {
                    self.run_claimed(&claimed);
                    if self.limit_request > 0
                        && self.spec.context.row.requests() >= self.limit_request
                    {
                        // Its replacement may start now.
                        self.spec.context.row.set_leaving(ExitReason::LimitRequest);
                        self.spec.context.doorbell.ring();
                        return ExitReason::LimitRequest;
                    }
                    continue;
                }
                Ok(None) => self
                    .queue
                    .next_due(self.spec.config)
                    .ok()
                    .flatten()
                    .map_or(BEAT_INTERVAL, |due| due.min(BEAT_INTERVAL)),
                Err(error) => {
                    // Unreachable: logged once by the connection; refused: said once.
                    if let StoreError::Refused { .. } = &error
                        && self.refusal.as_deref() != Some(&error.to_string())
                    {
                        warn!("{}: {error}; trying again", self.spec.context.name());
                        self.refusal = Some(error.to_string());
                    }
                    let _ = self.signals.poll(&mut [], Some(BEAT_INTERVAL));
                    continue;
                }
            };
            self.refusal = None;
            // Woken by an enqueue on any host, at the next due job, or to beat.
            self.queue.notified(wait);
        }
    }

    /// What must be written before claiming: the kinds, the deaths, old jobs pruned.
    fn upkeep(&mut self) -> Result<(), StoreError> {
        if !self.registered {
            self.queue.register(self.spec.config)?;
            self.registered = true;
        }
        while let Some(death) = self.deaths.first() {
            match self
                .queue
                .record_death(self.spec.config, &self.host, death)?
            {
                Some((job, kind, fate)) => {
                    if let Some(index) = self.spec.config.job.iter().position(|k| k.name == kind) {
                        self.spec
                            .context
                            .row
                            .count_fate(self.shape, index, fate.index());
                    }
                    warn!(
                        event = "job_attempt_ended",
                        job,
                        kind = kind.as_str(),
                        outcome = "killed",
                        "job {kind} #{job}: its job worker (pid {}) {}; {fate}",
                        death.worker_pid,
                        death.cause.trim_start_matches("died: "),
                    );
                }
                None => debug!(
                    "job worker pid {} ended running no job ({})",
                    death.worker_pid, death.cause
                ),
            }
            self.deaths.remove(0);
        }
        if self.pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            let pruned = self
                .queue
                .prune(self.spec.config.job_retention.duration())?;
            if pruned > 0 {
                info!(
                    event = "jobs_pruned",
                    count = pruned,
                    "removed {pruned} ended job(s) older than job_retention ({})",
                    self.spec.config.job_retention
                );
            }
            self.pruned_at = Some(Instant::now());
        }
        if self.lapsed_at.is_none_or(|at| at.elapsed() >= LAPSED_EVERY) {
            self.queue.record_lapsed(self.spec.config)?;
            self.lapsed_at = Some(Instant::now());
        }
        self.read_queue()
    }

    /// Counts the jobs waiting and running in each channel into its row, if the last count
    /// is older than [`QUEUE_READ_EVERY`]: the master shows them (it never reads the
    /// database itself).
    fn read_queue(&self) -> Result<(), StoreError> {
        if self
            .queue_read_at
            .get()
            .is_some_and(|at| at.elapsed() < QUEUE_READ_EVERY)
        {
            return Ok(());
        }
        let counts = self
            .queue
            .count_by_channel(&self.spec.config.job_channels())?;
        let read_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |now| u64::try_from(now.as_millis()).unwrap_or(u64::MAX));
        self.spec
            .context
            .row
            .set_queue(self.shape, &counts, read_at_ms);
        self.queue_read_at.set(Some(Instant::now()));
        Ok(())
    }

    fn next(&self) -> Result<Option<Claimed>, StoreError> {
        self.queue
            .claim(self.spec.config, &self.host, self.pid, self.lease)
    }

    /// Runs the claimed attempt, records how it ended, and logs it.
    fn run_claimed(&self, claimed: &Claimed) {
        let context = &self.spec.context;
        let row = context.row;
        let Some((index, kind)) = self
            .spec
            .config
            .job
            .iter()
            .enumerate()
            .find(|(_, kind)| kind.name == claimed.kind)
        else {
            // Claims name only this config's kinds: the database was changed by hand.
            warn!(
                "job #{}: kind {:?} is not configured",
                claimed.id, claimed.kind
            );
            return;
        };
        let label = format!("job {} #{}", kind.name, claimed.id);
        let limit = job_time_limit(self.spec.config, kind);
        let cpu_limit = Some(
            kind.limit_time_cpu
                .unwrap_or(self.spec.config.limit_time_cpu)
                .duration(),
        )
        .filter(|limit| !limit.is_zero());
        context.begin_work("job", &format!("{} #{}", kind.name, claimed.id));
        row.set_work_limit(limit.map(|(limit, _)| limit));
        row.set_work_kind(self.shape, Some(index));
        let started = Instant::now();
        let mut job_pid = None;
        let tail = OutputTail::default();
        let notes = RunNotes::default();
        let task = job_task(kind, claimed, label.clone(), &notes);
        let renewed_at = std::cell::Cell::new(Instant::now());
        let mut renew = || self.renew(claimed, &renewed_at, notes.progress.get());
        let upkeep = Upkeep {
            every: (self.lease / 4).min(RENEWAL_MAX),
            holds_for: self.lease * 3 / 4,
            deadline: &self.claim_deadline,
            renew: &mut renew,
        };
        let account = super::account_variables(self.spec.config);
        let command = matches!(task.action, TaskAction::Command(_));
        let started_as = |pid: nix::unistd::Pid| {
            row.set_job_group(Some(pid.as_raw()));
            job_pid = Some(pid.as_raw());
            self.limit_job_process(pid, kind, cpu_limit, command);
            info!(
                event = "job_attempt_started",
                job = claimed.id,
                kind = kind.name.as_str(),
                attempt = claimed.attempt,
                pid = pid.as_raw(),
                "{label} (attempt {}/{}) started as pid {pid} by {}",
                claimed.attempt,
                claimed.max_attempts,
                context.name()
            );
        };
        let ending = match task.action {
            TaskAction::Call(call) => crate::task::run_in_executor(
                &task,
                call,
                &mut self.executor.borrow_mut(),
                &notes,
                limit,
                Some(upkeep),
                &account,
                self.spec.calls_path,
                self.signals,
                &tail,
                started_as,
            ),
            TaskAction::Command(_) => crate::task::run(
                &task,
                limit,
                Some(upkeep),
                &account,
                self.spec.calls_path,
                self.signals,
                &tail,
                started_as,
            ),
        };
        row.set_job_group(None);
        row.set_work_limit(None);
        row.set_work_kind(self.shape, None);
        row.set_progress(self.shape, None);
        let ran = started.elapsed();
        let end = AttemptEnd::of_run(&ending, job_pid, tail.take()).past_cpu_limit(cpu_limit);
        row.count_attempt(self.shape, index, end.outcome.index(), claimed.waited, ran);
        row.end_request();
        let took = crate::format::elapsed(ran);
        let delay = notes
            .retry_after
            .get()
            .unwrap_or_else(|| kind.retry_delay(claimed.id, claimed.attempt));
        let fate = self.record(claimed, &end, delay, notes.progress.get());
        if let Some(fate) = fate {
            row.count_fate(self.shape, index, fate.index());
        }
        log_end(&label, claimed, &ending, &end, fate, &took);
    }

    /// Holds the process that runs an attempt of `kind` (a command's own, or the executor
    /// that calls the function) to the kind's CPU time and address space: RLIMIT_CPU past the
    /// CPU it has used (SIGXCPU ends it), RLIMIT_AS at its `limit_memory_hard`. A command's
    /// hard limits come down too (SIGKILL a second past SIGXCPU, should it ignore that); an
    /// executor keeps its hard ones, which its next call may need above this one's.
    fn limit_job_process(
        &self,
        pid: nix::unistd::Pid,
        kind: &JobKind,
        cpu_limit: Option<Duration>,
        command: bool,
    ) {
        use crate::sys::JobLimit;
        let name = self.spec.context.name();
        if let Some(limit) = cpu_limit {
            // A fresh command has used nothing; an executor what its earlier calls did.
            let used = nix::time::ClockId::pid_cpu_clock_id(pid)
                .and_then(nix::time::clock_gettime)
                .map(Duration::from)
                .unwrap_or_default();
            let soft = forkwarden_worker::limits::cpu_soft_limit(used, limit);
            let hard = command.then(|| soft.saturating_add(1));
            if let Err(error) = crate::sys::set_job_limit_of(pid, JobLimit::Cpu, soft, hard) {
                warn!("{name}: cannot apply limit_time_cpu to its job (pid {pid}): {error}");
            }
        }
        let config = self.spec.config;
        let memory = kind
            .limit_memory_hard
            .unwrap_or(config.limit_memory_hard)
            .bytes();
        if memory > 0 && config.limit_memory_hard_rlimit {
            let hard = command.then_some(memory);
            if let Err(error) =
                crate::sys::set_job_limit_of(pid, JobLimit::AddressSpace, memory, hard)
            {
                warn!("{name}: cannot apply limit_memory_hard to its job (pid {pid}): {error}");
            }
        }
    }

    /// Renews the running job's lease, with the progress it last reported: what the runner
    /// must do about it.
    fn renew(
        &self,
        claimed: &Claimed,
        renewed_at: &std::cell::Cell<Instant>,
        progress: Option<(i64, i64)>,
    ) -> Renewal {
        let progress_shown = progress.map(|(done, total)| {
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            (count(done), count(total))
        });
        self.spec
            .context
            .row
            .set_progress(self.shape, progress_shown);
        let asked = Instant::now();
        match self
            .queue
            .renew(claimed.id, &self.host, self.pid, self.lease, progress)
        {
            Ok(crate::jobs::Lease::Renewed) => {
                renewed_at.set(asked);
                // Only once the lease holds (a count waiting on a database that is away
                // would delay the renewal); best effort: a failed count waits for the next.
                let _ = self.read_queue();
                Renewal::Renewed(asked)
            }
            Ok(crate::jobs::Lease::CancelAsked) => {
                renewed_at.set(asked);
                Renewal::StopAsked("cancelled by forkwarden job cancel".to_string())
            }
            Ok(crate::jobs::Lease::Gone) => Renewal::Lost(
                "another host recorded the attempt as lost (its lease had passed)".to_string(),
            ),
            Err(error) => {
                let unrenewed = renewed_at.get().elapsed();
                if unrenewed < self.lease * 3 / 4 {
                    return Renewal::Holds;
                }
                Renewal::Lost(format!(
                    "its lease could not be renewed for {} ({error}); past cron_lease another \
                     host may take the job over",
                    crate::format::elapsed(unrenewed)
                ))
            }
        }
    }

    /// Records the attempt's end, trying again while the lease still holds (the database
    /// may be back in a moment); the fate written, None if it could not be (the lease then
    /// passes, and another claim records the attempt as lost: the job is retried).
    fn record(
        &self,
        claimed: &Claimed,
        end: &AttemptEnd,
        delay: Duration,
        progress: Option<(i64, i64)>,
    ) -> Option<Fate> {
        let since = Instant::now();
        loop {
            match self.queue.finish(claimed, end, delay, progress) {
                Ok(fate) => return fate,
                Err(error) if since.elapsed() < self.lease / 2 => {
                    debug!(
                        "job #{}: its end cannot be recorded yet: {error}",
                        claimed.id
                    );
                    self.spec.context.row.beat();
                    let _ = self.signals.poll(&mut [], Some(BEAT_INTERVAL));
                }
                Err(error) => {
                    warn!(
                        "job #{}: its end could not be recorded ({error}); once its lease \
                         passes it is recorded as lost and retried",
                        claimed.id
                    );
                    return None;
                }
            }
        }
    }
}

/// The wall-clock limit of an attempt of `kind`, and the key that sets it.
fn job_time_limit(config: &Config, kind: &JobKind) -> Option<(Duration, &'static str)> {
    let limit = kind.limit_time_real.unwrap_or(config.limit_time_real);
    Some((limit.duration(), "limit_time_real")).filter(|(limit, _)| !limit.is_zero())
}

/// What an attempt of `claimed` runs: its kind's command or call, with its args.
fn job_task<'a>(
    kind: &'a JobKind,
    claimed: &'a Claimed,
    label: String,
    notes: &'a RunNotes,
) -> Task<'a> {
    let mut env: Vec<(String, String)> = kind
        .env
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    env.extend([
        ("FORKWARDEN_JOB_ID".to_string(), claimed.id.to_string()),
        ("FORKWARDEN_JOB_KIND".to_string(), kind.name.clone()),
        (
            "FORKWARDEN_JOB_ATTEMPT".to_string(),
            claimed.attempt.to_string(),
        ),
    ]);
    Task {
        label,
        name: &kind.name,
        action: match kind.action() {
            JobAction::Command(command) => TaskAction::Command(command),
            JobAction::Call(call) => TaskAction::Call(call),
        },
        cwd: kind.cwd.as_deref(),
        env,
        input: Some(claimed.args.as_bytes()),
        notes: Some(notes),
    }
}

/// The line that says how an attempt ended and what follows.
fn log_end(
    label: &str,
    claimed: &Claimed,
    ending: &RunEnding,
    end: &AttemptEnd,
    fate: Option<Fate>,
    took: &str,
) {
    let then = fate.map_or_else(
        || "its end is not recorded".to_string(),
        |fate| fate.to_string(),
    );
    let line = format!(
        "{label} (attempt {}/{}) {} after {took}; {then}",
        claimed.attempt, claimed.max_attempts, end.detail
    );
    let level = if ending.succeeded() {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    macro_rules! ended {
        ($level:expr) => {
            tracing::event!(
                $level,
                event = "job_attempt_ended",
                job = claimed.id,
                kind = claimed.kind.as_str(),
                attempt = claimed.attempt,
                outcome = end.outcome.as_str(),
                state = fate.map(Fate::state),
                "{line}"
            )
        };
    }
    if level == tracing::Level::INFO {
        ended!(tracing::Level::INFO);
    } else {
        ended!(tracing::Level::WARN);
    }
}
