//! Cron: scheduled jobs run by the cron workers, each due run exactly once.
//!
//! A job is due at its `next_run` (persisted under `data_dir`). A cron worker claims a due
//! run by taking the job's lock ([`store::JobStore::try_lock`]) and, under it, re-reading
//! the state and writing the claim: the start time and the *following* due time. Only then
//! does it run the job. So:
//! - two cron workers (or hosts sharing `data_dir`) never run a job at the same time;
//! - a worker killed mid-run loses the lock with its life, and the run is not repeated at
//!   once (the claim already moved `next_run`): the job runs again at its next due time,
//!   and the interrupted run is recorded as a failure by whoever claims it next;
//! - a run that fell due while the server was down runs once at start with
//!   `catch_up = true` (the default, Odoo's behaviour), and is skipped (logged) otherwise.

pub mod command;
mod runner;
mod schedule;
mod store;

use std::io;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

pub use runner::{OutputTail, RunEnding, run};
pub use schedule::Schedule;
pub use store::{JobLock, JobState, JobStore, RunRecord, from_ms, to_ms};

use crate::config::{Config, CronJob};

/// How soon to look again at a due job whose lock is held: the holder is most likely between
/// taking the lock and writing its claim (microseconds). Doubled while it stays held, up to
/// [`HELD_LOCK_RETRY_MAX`]: a run longer than the job's schedule, or a stuck holder.
const CLAIM_RACE_RETRY: Duration = Duration::from_millis(50);
const HELD_LOCK_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a due job's lock may stay held before the cron worker says the job is stalled.
const STALL_WARNING: Duration = Duration::from_secs(5);

/// A due job whose lock someone else holds.
struct Stall {
    since: SystemTime,
    retry: Duration,
    warned: bool,
}

/// The jobs of a config, with their schedules.
pub struct Scheduler<'a> {
    jobs: Vec<(&'a CronJob, Schedule)>,
    store: JobStore,
    default_limit: Duration,
    /// Runs due before this instant fell due while the server was down.
    server_started: SystemTime,
    /// Due jobs whose lock is held by someone else, by name.
    stalls: std::cell::RefCell<std::collections::HashMap<String, Stall>>,
}

/// What a cron worker should do about one job now.
pub enum Turn<'a> {
    /// Nothing until this time.
    Wait(SystemTime),
    /// Run it: the claim is written and the lock is held until [`Claim`] is finished.
    Run(Claim<'a>),
}

/// A claimed run of a job.
pub struct Claim<'a> {
    pub job: &'a CronJob,
    state: JobState,
    _lock: JobLock,
}

impl Claim<'_> {
    pub fn runs(&self) -> u64 {
        self.state.runs
    }
}

impl<'a> Scheduler<'a> {
    /// The jobs of `config`, stored under its `data_dir`.
    pub fn new(config: &'a Config, server_started: SystemTime) -> io::Result<Self> {
        let mut jobs = Vec::with_capacity(config.cron.len());
        for job in &config.cron {
            let schedule = match (&job.schedule, job.interval) {
                (Some(expression), _) => Schedule::cron(expression).map_err(io::Error::other)?,
                (None, Some(interval)) => Schedule::Every(interval.duration()),
                (None, None) => return Err(io::Error::other("job without a schedule")),
            };
            jobs.push((job, schedule));
        }
        Ok(Self {
            jobs,
            store: JobStore::open(&config.data_dir)?,
            default_limit: config.cron_time_limit(),
            server_started,
            stalls: Default::default(),
        })
    }

    pub fn jobs(&self) -> impl Iterator<Item = &'a CronJob> + '_ {
        self.jobs.iter().map(|(job, _)| *job)
    }

    /// The wall-clock limit of one run of `job`, and the key that sets it.
    pub fn limit_of(&self, job: &CronJob) -> Option<(Duration, &'static str)> {
        let (limit, key) = match job.timeout {
            Some(timeout) => (timeout.duration(), "timeout"),
            None => (self.default_limit, "limit_time_real_cron"),
        };
        Some((limit, key)).filter(|(limit, _)| !limit.is_zero())
    }

    /// Decides about job number `index` at `now`: wait (until when), or run (claimed).
    pub fn turn(&self, index: usize, now: SystemTime) -> io::Result<Turn<'a>> {
        let (job, schedule) = &self.jobs[index];
        let due = self.load(job).next_run();
        if let Some(due) = due
            && due > now
            && !self.store.run_asked(&job.name)
        {
            return Ok(Turn::Wait(due));
        }
        let Some(lock) = self.store.try_lock(&job.name)? else {
            return Ok(Turn::Wait(now + self.held_lock(job, now)));
        };
        self.stalls.borrow_mut().remove(&job.name);
        let mut state = self.load(job);
        // A run asked for by `forkwarden cron run` (looked at again under the lock: another
        // cron worker may have claimed it meanwhile).
        let asked = self.store.run_asked(&job.name);
        let never_scheduled = state.next_run().is_none();
        match state.next_run() {
            Some(due) if due > now && !asked => return Ok(Turn::Wait(due)),
            None => {
                // First sight of this job: schedule its first run.
                let first = schedule.first_due(now).unwrap_or(now);
                state.next_run_ms = Some(to_ms(first));
                if first > now && !asked {
                    self.store.save(&job.name, &state)?;
                    return Ok(Turn::Wait(first));
                }
            }
            Some(_) => {}
        }
        // Due by its schedule (else only asked for: its next due time stays).
        let scheduled = state.next_run().is_some_and(|due| due <= now);
        if state.interrupted() {
            warn!(
                "cron job {}: its previous run (started {}) never finished: its cron worker \
                 died; counted as failed",
                job.name,
                describe_time(state.last_start_ms)
            );
            state.last_end_ms = state.last_start_ms;
            state.last_result = Some("interrupted: its cron worker died".into());
            state.last_succeeded = Some(false);
            state.consecutive_failures += 1;
            state.failed = state.failed.saturating_add(1);
            let record = RunRecord {
                host: state.last_host.clone().unwrap_or_default(),
                pid: state.last_worker_pid,
                start_ms: state.last_start_ms.unwrap_or_default(),
                end_ms: to_ms(now),
                result: format!(
                    "interrupted: its cron worker (pid {}) died",
                    state
                        .last_worker_pid
                        .map_or_else(|| "?".to_string(), |pid| pid.to_string())
                ),
                ..RunRecord::default()
            };
            self.record_run(job, &record);
        }
        let following = schedule.next_after(now);
        let missed =
            scheduled && !never_scheduled && due.is_some_and(|due| due < self.server_started);
        if missed && !job.catch_up {
            info!(
                "cron job {}: the run due {} fell while the server was down; skipped \
                 (catch_up = false); next run {}",
                job.name,
                describe_time(state.next_run_ms),
                describe_time(following.map(to_ms))
            );
            state.next_run_ms = following.map(to_ms);
            self.store.save(&job.name, &state)?;
            return Ok(Turn::Wait(
                following.unwrap_or(now + Duration::from_secs(86_400)),
            ));
        }
        if missed {
            info!(
                "cron job {}: the run due {} fell while the server was down; running it now \
                 (catch_up = true)",
                job.name,
                describe_time(state.next_run_ms)
            );
        }
        if asked {
            info!(
                job = job.name.as_str(),
                "cron job {}: running it now, as `forkwarden cron run` asked", job.name
            );
            self.store.clear_asked(&job.name)?;
        }
        state.last_start_ms = Some(to_ms(now));
        if scheduled {
            state.next_run_ms = following.map(to_ms);
        }
        state.runs += 1;
        state.last_host = Some(host_name());
        state.last_worker_pid = Some(std::process::id() as i32);
        self.store.save(&job.name, &state)?;
        Ok(Turn::Run(Claim {
            job,
            state,
            _lock: lock,
        }))
    }

    /// Someone else holds the lock of due `job`: another cron worker writing its claim, or
    /// running it past its next due time, or a stuck (or hostile) holder. Says so once it
    /// has lasted [`STALL_WARNING`]; returns how soon to look again.
    fn held_lock(&self, job: &CronJob, now: SystemTime) -> Duration {
        let mut stalls = self.stalls.borrow_mut();
        let stall = stalls.entry(job.name.clone()).or_insert(Stall {
            since: now,
            retry: CLAIM_RACE_RETRY,
            warned: false,
        });
        let held_for = now.duration_since(stall.since).unwrap_or_default();
        if !stall.warned && held_for >= STALL_WARNING {
            stall.warned = true;
            let holder = match self.store.lock_holder(&job.name) {
                Some(pid) => {
                    let command = crate::proctree::command_name(nix::unistd::Pid::from_raw(pid))
                        .unwrap_or_else(|| "not on this host".into());
                    format!("pid {pid} ({command})")
                }
                None => "an unknown process".to_string(),
            };
            warn!(
                job = job.name.as_str(),
                holder = holder.as_str(),
                "cron job {} is due but its lock has been held by {holder} for {}: a run \
                 longer than its schedule, or a stuck holder; it runs once the lock is free",
                job.name,
                crate::format::elapsed(held_for)
            );
        }
        let retry = stall.retry;
        stall.retry = (retry * 2).min(HELD_LOCK_RETRY_MAX);
        retry
    }

    /// Records how a claimed run ended (in its state and its history: the job's pid, if it
    /// started, and the last lines it wrote), and releases the job; returns when it is next
    /// due.
    pub fn finish(
        &self,
        mut claim: Claim<'a>,
        ending: &RunEnding,
        job_pid: Option<i32>,
        output_tail: Vec<String>,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let record = RunRecord {
            host: claim.state.last_host.clone().unwrap_or_default(),
            pid: job_pid,
            start_ms: claim.state.last_start_ms.unwrap_or_default(),
            end_ms: to_ms(now),
            result: ending.to_string(),
            succeeded: ending.succeeded(),
            exit_status: ending.exit_status(),
            signal: ending.signal(),
            output_tail,
        };
        self.record_run(claim.job, &record);
        let state = &mut claim.state;
        state.last_end_ms = Some(to_ms(now).max(state.last_start_ms.unwrap_or(i64::MIN)));
        state.last_result = Some(ending.to_string());
        state.last_succeeded = Some(ending.succeeded());
        if ending.succeeded() {
            state.consecutive_failures = 0;
            state.succeeded = state.succeeded.saturating_add(1);
        } else {
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            state.failed = state.failed.saturating_add(1);
        }
        if let Err(error) = self.store.save(&claim.job.name, state) {
            warn!(
                "cron job {}: cannot record its result: {error}",
                claim.job.name
            );
        }
        state.next_run()
    }

    /// Adds a run to `job`'s history; a failure is logged (the run itself is recorded in
    /// the job's state).
    fn record_run(&self, job: &CronJob, record: &RunRecord) {
        if let Err(error) = self.store.append_run(&job.name, record) {
            warn!(
                "cron job {}: cannot add the run to its history: {error}",
                job.name
            );
        }
    }

    /// Asks for a run of `job` now (see [`JobStore::ask_run`]).
    pub fn ask_run(&self, job: &CronJob) -> io::Result<()> {
        self.store.ask_run(&job.name)
    }

    /// Whether a run of any job was asked for and not yet claimed: a sleeping cron worker
    /// looks each second.
    pub fn any_run_asked(&self) -> bool {
        self.jobs().any(|job| self.store.run_asked(&job.name))
    }

    /// `job`'s last `count` runs, oldest first.
    pub fn history(&self, job: &CronJob, count: usize) -> io::Result<Vec<RunRecord>> {
        self.store.history(&job.name, count)
    }

    /// The state of `job`; a corrupt state file is logged and the job starts afresh.
    fn load(&self, job: &CronJob) -> JobState {
        self.store.load(&job.name).unwrap_or_else(|error| {
            warn!(
                "cron job {}: its state file is unreadable ({error}); starting afresh",
                job.name
            );
            JobState::default()
        })
    }

    /// Every job with its state, for `forkwarden cron list`.
    pub fn states(&self) -> Vec<(&'a CronJob, JobState)> {
        self.jobs
            .iter()
            .map(|(job, _)| (*job, self.load(job)))
            .collect()
    }

    /// Whether some process holds `job`'s lock now: it is running.
    pub fn is_running(&self, job: &CronJob) -> bool {
        matches!(self.store.try_lock(&job.name), Ok(None))
    }
}

/// This machine's name, for the runs' records.
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A stored time in local time, as `2026-11-25 19:00:00 +00:00`; `never` when absent.
pub fn describe_time(ms: Option<i64>) -> String {
    match ms {
        None => "never".to_string(),
        Some(ms) => {
            let local: chrono::DateTime<chrono::Local> = from_ms(ms).into();
            local.format("%Y-%m-%d %H:%M:%S %:z").to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TimeSpan;

    fn config(dir: &std::path::Path, catch_up: bool) -> Config {
        Config {
            data_dir: dir.to_path_buf(),
            cron: vec![CronJob {
                name: "tick".into(),
                schedule: None,
                interval: Some(TimeSpan::secs(60)),
                command: vec!["true".into()],
                call: None,
                cwd: None,
                env: Default::default(),
                timeout: None,
                catch_up,
            }],
            ..Config::default()
        }
    }

    fn expect_run<'a>(turn: Turn<'a>) -> Claim<'a> {
        match turn {
            Turn::Run(claim) => claim,
            Turn::Wait(at) => panic!("expected a run, got a wait until {at:?}"),
        }
    }

    #[test]
    fn an_interval_job_runs_at_once_then_after_its_interval() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), true);
        let now = SystemTime::now();
        let scheduler = Scheduler::new(&config, now).unwrap();
        let claim = expect_run(scheduler.turn(0, now).unwrap());
        // While claimed, no one else may run it.
        assert!(matches!(scheduler.turn(0, now).unwrap(), Turn::Wait(_)));
        let next = scheduler
            .finish(claim, &RunEnding::Exited(0), None, Vec::new(), now)
            .unwrap();
        assert_eq!(to_ms(next), to_ms(now + Duration::from_secs(60)));
        assert!(matches!(scheduler.turn(0, now).unwrap(), Turn::Wait(at) if at == next));
        let state = &scheduler.states()[0].1;
        assert_eq!((state.runs, state.last_succeeded), (1, Some(true)));
        assert_eq!((state.succeeded, state.failed), (1, 0));
    }

    #[test]
    fn an_asked_run_runs_once_now_and_leaves_the_schedule_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), true);
        let now = SystemTime::now();
        let scheduler = Scheduler::new(&config, now).unwrap();
        let claim = expect_run(scheduler.turn(0, now).unwrap());
        let next = scheduler
            .finish(claim, &RunEnding::Exited(0), None, Vec::new(), now)
            .unwrap();
        let later = now + Duration::from_secs(5);
        assert!(matches!(scheduler.turn(0, later).unwrap(), Turn::Wait(at) if at == next));
        scheduler.ask_run(&config.cron[0]).unwrap();
        assert!(scheduler.any_run_asked());
        let claim = expect_run(scheduler.turn(0, later).unwrap());
        assert!(!scheduler.any_run_asked(), "claimed: the request is gone");
        // Once: while it runs, and after, nothing more until its schedule says so.
        assert!(matches!(scheduler.turn(0, later).unwrap(), Turn::Wait(_)));
        let after = scheduler
            .finish(claim, &RunEnding::Exited(0), None, Vec::new(), later)
            .unwrap();
        assert_eq!(to_ms(after), to_ms(next), "the schedule stays");
        assert_eq!(scheduler.states()[0].1.runs, 2);
    }

    #[test]
    fn a_run_interrupted_by_a_dead_worker_is_not_repeated_at_once_and_counts_as_failed() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), true);
        let now = SystemTime::now();
        let scheduler = Scheduler::new(&config, now).unwrap();
        let claim = expect_run(scheduler.turn(0, now).unwrap());
        drop(claim); // the worker died: lock released, no result recorded
        let later = now + Duration::from_secs(5);
        assert!(
            matches!(scheduler.turn(0, later).unwrap(), Turn::Wait(_)),
            "not doubled"
        );
        let next_due = now + Duration::from_secs(60);
        let claim = expect_run(scheduler.turn(0, next_due).unwrap());
        scheduler.finish(claim, &RunEnding::Exited(0), None, Vec::new(), next_due);
        let state = &scheduler.states()[0].1;
        assert_eq!(state.runs, 2, "retried at its next due time");
        assert_eq!(
            (state.succeeded, state.failed),
            (1, 1),
            "the interrupted run counts as failed"
        );
    }

    #[test]
    fn a_missed_run_is_caught_up_once_or_skipped() {
        for catch_up in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let config = config(dir.path(), catch_up);
            let store = JobStore::open(dir.path()).unwrap();
            let now = SystemTime::now();
            let missed = JobState {
                next_run_ms: Some(to_ms(now - Duration::from_secs(3600))),
                ..JobState::default()
            };
            store.save("tick", &missed).unwrap();
            let scheduler = Scheduler::new(&config, now).unwrap();
            match scheduler.turn(0, now).unwrap() {
                Turn::Run(claim) => {
                    assert!(catch_up);
                    scheduler.finish(claim, &RunEnding::Exited(0), None, Vec::new(), now);
                }
                Turn::Wait(at) => {
                    assert!(!catch_up);
                    assert!(at > now);
                }
            }
            // Either way, once: nothing more is due now.
            assert!(matches!(scheduler.turn(0, now).unwrap(), Turn::Wait(_)));
        }
    }
}
