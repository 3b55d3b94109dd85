//! The cron worker's loop: run every due job (claiming each run, see [`crate::cron`]),
//! then sleep until the next due time, a signal, or a change of the wall clock.
//!
//! The sleep is an absolute CLOCK_REALTIME timer that the kernel also ends when the clock is
//! set, so a clock change cannot make a job late; the worker wakes once a second meanwhile
//! only to show it is alive (its heartbeat) and that its master is still there.
//!
//! The cron worker is a child subreaper: whatever a job starts stays below it, however it
//! detaches itself, and is killed when the run ends (see [`cron::run`]), before the job's
//! lock is released. A job never runs twice at once, with all its processes.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use nix::sys::timer::{Expiration, TimerSetTimeFlags};
use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
use tracing::{debug, error, info, warn};

use forkwarden_worker::context::{BEAT_INTERVAL, Outcome, WorkerContext};

use crate::config::Config;
use crate::cron::{self, Claim, Scheduler, Turn, describe_time, to_ms};
use crate::scoreboard::ExitReason;
use crate::sys::WorkerSignals;

/// How long to wait before looking again at a job whose state could not be read or written.
const STORE_ERROR_RETRY: Duration = Duration::from_secs(60);

/// What a cron worker gets from the master.
pub(super) struct CronSpec<'a> {
    pub context: WorkerContext<'a>,
    pub config: &'a Config,
    /// Where it asks the preload template to run a `call` job.
    pub calls_path: &'a Path,
    /// When the server started (runs due before it were missed while it was down).
    pub server_started: SystemTime,
}

pub(super) fn run(spec: &CronSpec<'_>, signals: &WorkerSignals) -> Outcome {
    if let Err(errno) = nix::sys::prctl::set_child_subreaper(true) {
        error!(
            "{}: cannot become a child subreaper: {errno}",
            spec.context.name()
        );
        return Outcome::BootFailed;
    }
    if let Err(errno) = crate::sys::lower_priority(crate::cron::CRON_NICENESS) {
        warn!(
            "{}: cannot lower its priority: {errno}",
            spec.context.name()
        );
    }
    let scheduler = match Scheduler::new(spec.config, spec.server_started, true) {
        Ok(scheduler) => scheduler,
        Err(error) => {
            error!(
                "{}: cannot use data_dir {}: {error}",
                spec.context.name(),
                spec.config.data_dir.display()
            );
            return Outcome::BootFailed;
        }
    };
    let alarm = match TimerFd::new(
        ClockId::CLOCK_REALTIME,
        TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
    ) {
        Ok(alarm) => alarm,
        Err(errno) => {
            error!("{}: cannot create its timer: {errno}", spec.context.name());
            return Outcome::BootFailed;
        }
    };
    spec.context.report_ready();
    if spec.config.cron.is_empty() {
        debug!("{}: no [[cron]] jobs are configured", spec.context.name());
    }
    let claim_deadline = match crate::sys::ClaimDeadline::install() {
        Ok(deadline) => deadline,
        Err(error) => {
            error!(
                "{}: cannot set up its jobs' claim deadline: {error}",
                spec.context.name()
            );
            return Outcome::BootFailed;
        }
    };
    let worker = CronWorker {
        spec,
        signals,
        scheduler,
        alarm,
        claim_deadline,
    };
    Outcome::Left(worker.serve())
}

struct CronWorker<'a> {
    spec: &'a CronSpec<'a>,
    signals: &'a WorkerSignals,
    scheduler: Scheduler<'a>,
    alarm: TimerFd,
    /// Kills a job whose claim in a shared store stops holding, on time (see
    /// [`crate::sys::ClaimDeadline`]).
    claim_deadline: crate::sys::ClaimDeadline,
}

impl CronWorker<'_> {
    fn serve(&self) -> ExitReason {
        loop {
            if let Some(reason) = self.spec.context.stop_reason(self.signals) {
                return reason;
            }
            self.spec.context.reopen_log_if_asked(self.signals);
            let next = self.run_due_jobs();
            if self.spec.context.stop_reason(self.signals).is_none() {
                self.sleep_until(next);
            }
        }
    }

    /// Runs each job that is due, one after the other; returns when the next one is due.
    fn run_due_jobs(&self) -> Option<SystemTime> {
        let mut earliest: Option<SystemTime> = None;
        for index in 0..self.spec.config.cron.len() {
            if self.spec.context.stop_reason(self.signals).is_some() {
                break;
            }
            let now = SystemTime::now();
            let next = match self.scheduler.turn(index, now) {
                Ok(Turn::Wait(at)) => Some(at),
                Ok(Turn::Run(claim)) => self.run_claimed(index, claim),
                Err(error) => {
                    let name = &self.spec.config.cron[index].name;
                    warn!(
                        "cron job {name}: its state cannot be used ({error}); trying again later"
                    );
                    Some(now + STORE_ERROR_RETRY)
                }
            };
            earliest = match (earliest, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        earliest
    }

    /// Runs the claimed run of job `index` (in the config).
    fn run_claimed(&self, index: usize, claim: Claim<'_>) -> Option<SystemTime> {
        let job = claim.job;
        let row = self.spec.context.row;
        let limit = self.scheduler.limit_of(job);
        self.spec.context.begin_work("job", &job.name);
        row.set_work_limit(limit.map(|(limit, _)| limit));
        let started = Instant::now();
        let mut job_pid = None;
        let account = super::account_variables(self.spec.config);
        let calls = self.spec.calls_path;
        let tail = cron::OutputTail::default();
        let mut renew = || self.scheduler.renew(&claim);
        let upkeep = self.scheduler.renewal_period().map(|every| cron::Upkeep {
            every,
            holds_for: self.scheduler.claim_holds_for(),
            deadline: &self.claim_deadline,
            renew: &mut renew,
        });
        let task = cron::task(job);
        let ending = crate::task::run(
            &task,
            limit,
            upkeep,
            &account,
            calls,
            self.signals,
            &tail,
            |pid| {
                row.set_job_group(Some(pid.as_raw()));
                job_pid = Some(pid);
                info!(
                    event = "cron_run_started",
                    job = job.name.as_str(),
                    pid = pid.as_raw(),
                    run = claim.runs(),
                    slot = self.spec.context.id.slot,
                    "cron job {} started as pid {pid} by {} (run {})",
                    job.name,
                    self.spec.context.name(),
                    claim.runs()
                );
            },
        );
        row.set_job_group(None);
        row.set_work_limit(None);
        row.end_request();
        let duration = started.elapsed();
        let took = crate::format::elapsed(duration);
        let next = self.scheduler.finish(
            claim,
            &ending,
            job_pid.map(|pid| pid.as_raw()),
            tail.take(),
            SystemTime::now(),
        );
        // What the master counts (it never reads the job's files).
        row.count_job_end(index, ending.succeeded());
        let who = job_pid.map_or(String::new(), |pid| format!(" (pid {pid})"));
        let next_text = describe_time(next.map(to_ms));
        macro_rules! ended {
            ($level:expr, $line:expr) => {
                tracing::event!(
                    $level,
                    event = "cron_run_ended",
                    job = job.name.as_str(),
                    pid = job_pid.map(|pid| pid.as_raw()),
                    succeeded = ending.succeeded(),
                    result = %ending,
                    duration = duration.as_secs_f64(),
                    "{}",
                    $line
                )
            };
        }
        if ending.succeeded() {
            ended!(
                tracing::Level::INFO,
                format!(
                    "cron job {}{who} {ending} after {took}; next run {next_text}",
                    job.name
                )
            );
        } else {
            ended!(
                tracing::Level::WARN,
                format!(
                    "cron job {}{who} failed: {ending} after {took}; next run {next_text}",
                    job.name
                )
            );
        }
        next
    }

    /// Sleeps until `at` (wall clock), a signal, or a change of the clock; without `at`,
    /// until a signal. Wakes once a second meanwhile to beat.
    fn sleep_until(&self, at: Option<SystemTime>) {
        let armed = at.map(|at| {
            let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
            // A zero expiration would disarm the timer; a due time is never at the epoch.
            let when = TimeSpec::from(since_epoch.max(Duration::from_nanos(1)));
            self.alarm.set(
                Expiration::OneShot(when),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME | TimerSetTimeFlags::TFD_TIMER_CANCEL_ON_SET,
            )
        });
        if let Some(Err(errno)) = armed {
            warn!(
                "{}: cannot set its timer ({errno}); checking again in a second",
                self.spec.context.name()
            );
            let _ = self.signals.poll(&mut [], Some(Duration::from_secs(1)));
            return;
        }
        loop {
            self.spec.context.row.beat();
            let mut fds = [PollFd::new(self.alarm.as_fd(), PollFlags::POLLIN)];
            let woken = self.signals.poll(&mut fds, Some(BEAT_INTERVAL));
            if !matches!(woken, Ok(0))
                || self.spec.context.stop_reason(self.signals).is_some()
                || self.scheduler.any_run_asked()
            {
                break;
            }
            self.spec.context.reopen_log_if_asked(self.signals);
        }
        // Consume the expiry (ECANCELED when the clock was set; EAGAIN when a signal woke us).
        let _ = self.alarm.wait();
    }
}
