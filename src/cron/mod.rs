//! Cron: scheduled jobs run by the cron workers, each due run exactly once.
//!
//! A job is due at its `next_run`, kept in one of two stores: files under `data_dir` (the
//! default), or a PostgreSQL database that several hosts share (`cron_store`, see
//! [`postgres`]). Whatever the store, `Scheduler::decide` says what is due; the store makes
//! the claim exclusive. With files, a cron worker takes the job's lock
//! ([`store::JobStore::try_lock`]) and, under it, re-reads the state and writes the claim:
//! the start time and the *following* due time; PostgreSQL does the same in one transaction,
//! and the run holds a lease instead of a lock. Only then does the job run. So:
//! - two cron workers (or hosts sharing `data_dir` or the database) never run a job at the
//!   same time;
//! - a worker killed mid-run loses the lock with its life, and the run is not repeated at
//!   once (the claim already moved `next_run`): the job runs again at its next due time,
//!   and the interrupted run is recorded as a failure by whoever claims it next;
//! - a run that fell due while the server was down runs once at start with
//!   `catch_up = true` (the default, Odoo's behaviour), and is skipped (logged) otherwise.

pub mod command;
pub mod postgres;
mod schedule;
mod store;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

pub use crate::task::{OutputTail, Renewal, RunEnding, Task, TaskAction, Upkeep};
pub use schedule::Schedule;
pub use store::{JobLock, JobState, JobStore, RunRecord, from_ms, to_ms};

use crate::config::{Config, CronJob};
use postgres::{Claimant, Claimed, PgStore, StoreError};

/// How much lower a cron worker's priority is than an HTTP worker's (Odoo's +10), so that
/// scheduled work yields the CPU to requests; its jobs inherit it, and a `call` job forked by
/// the preload template is given it (`NICE=` in the request).
pub const CRON_NICENESS: i32 = 10;

/// What one run of `job` runs.
pub fn task(job: &CronJob) -> Task<'_> {
    Task {
        label: format!("cron job {}", job.name),
        name: &job.name,
        action: match &job.call {
            Some(call) => TaskAction::Call(call),
            None => TaskAction::Command(&job.command),
        },
        cwd: job.cwd.as_deref(),
        env: job
            .env
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        input: None,
        notes: None,
    }
}

/// How soon to look again at a due job whose lock is held: the holder is most likely between
/// taking the lock and writing its claim (microseconds). Doubled while it stays held, up to
/// [`HELD_LOCK_RETRY_MAX`]: a run longer than the job's schedule, or a stuck holder.
const CLAIM_RACE_RETRY: Duration = Duration::from_millis(50);
const HELD_LOCK_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a due job's lock may stay held before the cron worker says the job is stalled.
const STALL_WARNING: Duration = Duration::from_secs(5);
/// Why a run is stopped whose lease another host found passed.
const LEASE_TAKEN: &str = "another host recorded its run as interrupted (its lease had passed)";
/// How far ahead to look again at a job whose schedule never matches again.
const NEVER_AGAIN_RETRY: Duration = Duration::from_secs(86_400);
/// How soon to try again to save a run's end that could not be saved (a full disk).
const UNSAVED_RETRY: Duration = Duration::from_secs(5);

/// A due job whose lock someone else holds.
struct Stall {
    since: SystemTime,
    retry: Duration,
    warned: bool,
}

/// Where runs are claimed and recorded.
enum Store {
    /// Files under `data_dir`, locked with flock(2): the servers that share the directory.
    Files(JobStore),
    /// A PostgreSQL database that every host shares (`cron_store`).
    Postgres(Box<PgStore>),
}

/// The jobs of a config, with their schedules.
pub struct Scheduler<'a> {
    jobs: Vec<(&'a CronJob, Schedule)>,
    store: Store,
    default_limit: Duration,
    /// How long a claim in the PostgreSQL store holds unless renewed.
    lease: Duration,
    /// This machine's name, in the runs' records.
    host: String,
    /// Runs due before this instant fell due while the server was down.
    server_started: SystemTime,
    /// Due jobs whose lock is held by someone else, by name.
    stalls: RefCell<HashMap<String, Stall>>,
    /// Ended runs whose end the PostgreSQL store could not take yet (job, run id, record):
    /// written before the next claim.
    unrecorded: RefCell<Vec<(String, i64, RunRecord)>>,
    /// In the file store, ended runs whose state could not be saved (a full disk), by job:
    /// the job's lock is kept with it, so that no other cron worker takes the run for one
    /// whose cron worker died; saved again at the job's next turn.
    unsaved: RefCell<HashMap<String, (JobLock, JobState)>>,
}

/// What a cron worker should do about one job now.
pub enum Turn<'a> {
    /// Nothing until this time.
    Wait(SystemTime),
    /// Run it: the claim is written and held until [`Claim`] is finished.
    Run(Claim<'a>),
}

/// What makes a claimed run exclusive while it runs.
enum Hold {
    /// The job's lock file, held until dropped (or the process dies), with the job's state.
    File { lock: JobLock, state: JobState },
    /// Run `run` in the PostgreSQL store, whose lease was last renewed by a request sent at
    /// `renewed`.
    Lease { run: i64, renewed: Cell<Instant> },
}

/// A claimed run of a job.
pub struct Claim<'a> {
    pub job: &'a CronJob,
    /// The job's runs, this one included.
    runs: u64,
    start: SystemTime,
    hold: Hold,
}

impl Claim<'_> {
    pub fn runs(&self) -> u64 {
        self.runs
    }
}

/// What is to be done about a job at a given time: the same rules whatever the store.
#[derive(Debug)]
pub enum Decision {
    /// Not due: wait until `until`; `store`: a first due time to write (a job never seen).
    Wait {
        until: SystemTime,
        store: Option<SystemTime>,
    },
    /// It fell due while the server was down, and `catch_up = false`: skipped; `next` is
    /// written.
    Skip {
        missed: SystemTime,
        next: Option<SystemTime>,
    },
    /// Run it now; `next` is its next due time (as it was, for a run only asked for).
    Run {
        next: Option<SystemTime>,
        missed: Option<SystemTime>,
        asked: bool,
    },
}

impl Decision {
    /// When to look at the job again, unless it runs now: its due time, or the one after a
    /// skipped run (a schedule that never matches again: a day from now).
    fn wait_until(&self, now: SystemTime) -> SystemTime {
        match self {
            Self::Wait { until, .. } => *until,
            Self::Skip { next, .. } => next.unwrap_or(now + NEVER_AGAIN_RETRY),
            Self::Run { .. } => now,
        }
    }
}

impl<'a> Scheduler<'a> {
    /// The jobs of `config`, stored where `cron_store` says (under `data_dir` by default).
    /// `listens`: wait for `forkwarden cron run` (a cron worker does, a command does not).
    pub fn new(config: &'a Config, server_started: SystemTime, listens: bool) -> io::Result<Self> {
        let mut jobs = Vec::with_capacity(config.cron.len());
        for job in &config.cron {
            let schedule = match (&job.schedule, job.interval) {
                (Some(expression), _) => Schedule::Cron(Box::new(
                    expression.cron().map_err(io::Error::other)?.clone(),
                )),
                (None, Some(interval)) => Schedule::Every(interval.duration()),
                (None, None) => return Err(io::Error::other("job without a schedule")),
            };
            jobs.push((job, schedule));
        }
        let store = match &config.cron_store {
            Some(url) => {
                let heartbeat = Some(config.heartbeat_timeout.duration()).filter(|t| !t.is_zero());
                Store::Postgres(Box::new(PgStore::new(url, heartbeat, listens)))
            }
            None => Store::Files(JobStore::open(&config.data_dir)?),
        };
        Ok(Self {
            jobs,
            store,
            default_limit: config.cron_time_limit(),
            lease: config.cron_lease.duration(),
            host: host_name(),
            server_started,
            stalls: RefCell::default(),
            unrecorded: RefCell::default(),
            unsaved: RefCell::default(),
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

    /// What to do about job number `index` at `now`, given its stored next due time
    /// (`None`: never scheduled) and whether a run of it was asked for.
    fn decide(
        &self,
        index: usize,
        stored_next: Option<SystemTime>,
        asked: bool,
        now: SystemTime,
    ) -> Decision {
        let (job, schedule) = &self.jobs[index];
        let (due, never_scheduled) = match stored_next {
            None => {
                let first = schedule.first_due(now).unwrap_or(now);
                if first > now && !asked {
                    return Decision::Wait {
                        until: first,
                        store: Some(first),
                    };
                }
                (first, true)
            }
            Some(due) if due > now && !asked => {
                return Decision::Wait {
                    until: due,
                    store: None,
                };
            }
            Some(due) => (due, false),
        };
        // Due by its schedule (else only asked for: its next due time stays).
        let scheduled = due <= now;
        let following = schedule.next_after(now);
        let missed =
            Some(due).filter(|due| scheduled && !never_scheduled && *due < self.server_started);
        if let Some(missed) = missed
            && !job.catch_up
        {
            return Decision::Skip {
                missed,
                next: following,
            };
        }
        Decision::Run {
            next: if scheduled { following } else { Some(due) },
            missed,
            asked,
        }
    }

    /// Says what is done about a due job that is not simply run on time.
    fn announce(job: &CronJob, decision: &Decision) {
        match decision {
            Decision::Skip { missed, next } => info!(
                job = job.name.as_str(),
                "cron job {}: the run due {} fell while the server was down; skipped \
                 (catch_up = false); next run {}",
                job.name,
                describe_time(Some(to_ms(*missed))),
                describe_time(next.map(to_ms))
            ),
            Decision::Run {
                missed: Some(missed),
                ..
            } => info!(
                job = job.name.as_str(),
                "cron job {}: the run due {} fell while the server was down; running it now \
                 (catch_up = true)",
                job.name,
                describe_time(Some(to_ms(*missed)))
            ),
            _ => {}
        }
        if let Decision::Run { asked: true, .. } = decision {
            info!(
                job = job.name.as_str(),
                "cron job {}: running it now, as `forkwarden cron run` asked", job.name
            );
        }
    }

    /// Decides about job number `index` at `now`: wait (until when), or run (claimed).
    pub fn turn(&self, index: usize, now: SystemTime) -> io::Result<Turn<'a>> {
        match &self.store {
            Store::Files(store) => self.turn_on_files(store, index, now),
            Store::Postgres(store) => self.turn_on_postgres(store, index, now),
        }
    }

    fn turn_on_files(
        &self,
        store: &JobStore,
        index: usize,
        now: SystemTime,
    ) -> io::Result<Turn<'a>> {
        let (job, _) = &self.jobs[index];
        if let Some(retry) = self.save_unsaved(store, job, now) {
            return Ok(Turn::Wait(retry));
        }
        if let Some(due) = self.load(store, job).next_run()
            && due > now
            && !store.run_asked(&job.name)
        {
            return Ok(Turn::Wait(due));
        }
        let Some(lock) = store.try_lock(&job.name)? else {
            let retry = self.held(job, now, || match store.lock_holder(&job.name) {
                Some(pid) => {
                    let command = crate::proctree::command_name(nix::unistd::Pid::from_raw(pid))
                        .unwrap_or_else(|| "not on this host".into());
                    format!("its lock has been held by pid {pid} ({command})")
                }
                None => "its lock has been held by an unknown process".to_string(),
            });
            return Ok(Turn::Wait(now + retry));
        };
        self.stalls.borrow_mut().remove(&job.name);
        // Looked at again under the lock: another cron worker may have claimed it meanwhile.
        let mut state = self.load(store, job);
        let decision = self.decide(index, state.next_run(), store.run_asked(&job.name), now);
        if !matches!(decision, Decision::Wait { .. }) {
            self.record_interrupted(store, job, &mut state, now);
            Self::announce(job, &decision);
        }
        match decision {
            Decision::Run { next, asked, .. } => {
                if asked {
                    store.clear_asked(&job.name)?;
                }
                state.last_start_ms = Some(to_ms(now));
                state.next_run_ms = next.map(to_ms);
                state.runs += 1;
                state.last_host = Some(self.host.clone());
                state.last_worker_pid = Some(std::process::id() as i32);
                store.save(&job.name, &state)?;
                Ok(Turn::Run(Claim {
                    job,
                    runs: state.runs,
                    start: now,
                    hold: Hold::File { lock, state },
                }))
            }
            Decision::Skip { next, .. }
            | Decision::Wait {
                store: next @ Some(_),
                ..
            } => {
                state.next_run_ms = next.map(to_ms);
                store.save(&job.name, &state)?;
                Ok(Turn::Wait(decision.wait_until(now)))
            }
            Decision::Wait { store: None, .. } => Ok(Turn::Wait(decision.wait_until(now))),
        }
    }

    /// Saves the state of `job`'s last run if it could not be saved when the run ended; when
    /// to try again if it still cannot (the job's lock is kept meanwhile).
    fn save_unsaved(&self, store: &JobStore, job: &CronJob, now: SystemTime) -> Option<SystemTime> {
        let mut unsaved = self.unsaved.borrow_mut();
        let (_, state) = unsaved.get(&job.name)?;
        if let Err(error) = store.save(&job.name, state) {
            debug!(
                "cron job {}: its last run's end still cannot be saved: {error}",
                job.name
            );
            return Some(now + UNSAVED_RETRY);
        }
        info!(
            job = job.name.as_str(),
            "cron job {}: its last run's end is saved now", job.name
        );
        unsaved.remove(&job.name);
        None
    }

    /// In the file store, a run whose cron worker died before recording its end is found by
    /// the next claim: counted as failed in `state`, and added to the history with the host
    /// and pid of that cron worker.
    fn record_interrupted(
        &self,
        store: &JobStore,
        job: &CronJob,
        state: &mut JobState,
        now: SystemTime,
    ) {
        if !state.interrupted() {
            return;
        }
        warn!(
            job = job.name.as_str(),
            "cron job {}: its previous run (started {}) never finished: its cron worker \
             died; counted as failed",
            job.name,
            describe_time(state.last_start_ms)
        );
        state.last_end_ms = state.last_start_ms;
        state.last_result = Some("interrupted: its cron worker died".into());
        state.count_end(false);
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
        self.record_run(store, job, &record);
    }

    fn turn_on_postgres(
        &self,
        store: &PgStore,
        index: usize,
        now: SystemTime,
    ) -> io::Result<Turn<'a>> {
        self.record_unrecorded(store);
        let (job, _) = &self.jobs[index];
        match store.next_due(&job.name) {
            Ok((Some(due), false)) if due > now => return Ok(Turn::Wait(due)),
            Ok(_) => {}
            Err(error) => return Self::store_failed(error, now),
        }
        let claimant = Claimant {
            host: &self.host,
            worker_pid: std::process::id() as i32,
            lease: self.lease,
        };
        // The lease runs from the database's clock during the claim, after this.
        let asked_at = Instant::now();
        let claimed = store.claim(&job.name, now, &claimant, |next, asked| {
            self.decide(index, next, asked, now)
        });
        let (claimed, interrupted) = match claimed {
            Ok(claimed) => claimed,
            Err(error) => return Self::store_failed(error, now),
        };
        if let Some(run) = interrupted {
            warn!(
                event = "cron_run_interrupted",
                job = job.name.as_str(),
                host = run.host.as_str(),
                pid = run.pid,
                "cron job {}: its run started {} on {} {}; counted as failed",
                job.name,
                describe_time(Some(run.start_ms)),
                run.host,
                run.result
            );
        }
        match claimed {
            Claimed::Contended => Ok(Turn::Wait(now + CLAIM_RACE_RETRY)),
            Claimed::Held(holder) => {
                let retry = self.held(job, now, || {
                    format!(
                        "a run of it has been in progress on host {} (cron worker pid {}, \
                         lease until {})",
                        holder.host,
                        holder.worker_pid,
                        describe_time(Some(to_ms(holder.lease_until)))
                    )
                });
                // Not much later than the lease could pass: a dead host's job is taken over
                // then, not a backoff step after.
                let lease_passes = holder.lease_left + CLAIM_RACE_RETRY;
                Ok(Turn::Wait(now + retry.min(lease_passes)))
            }
            Claimed::Run {
                decision,
                run,
                runs,
            } => {
                self.stalls.borrow_mut().remove(&job.name);
                Self::announce(job, &decision);
                Ok(Turn::Run(Claim {
                    job,
                    runs,
                    start: now,
                    hold: Hold::Lease {
                        run,
                        renewed: Cell::new(asked_at),
                    },
                }))
            }
            Claimed::Written(decision) => {
                self.stalls.borrow_mut().remove(&job.name);
                Self::announce(job, &decision);
                Ok(Turn::Wait(decision.wait_until(now)))
            }
        }
    }

    /// The PostgreSQL store failed: unreachable, look again at its retry time (the outage
    /// is logged once, by the store); refused, an error for the caller to log.
    fn store_failed(error: StoreError, now: SystemTime) -> io::Result<Turn<'a>> {
        match error {
            StoreError::Unreachable { retry_at, .. } => Ok(Turn::Wait(
                now + retry_at.saturating_duration_since(Instant::now()),
            )),
            refused @ StoreError::Refused { .. } => Err(io::Error::other(refused)),
        }
    }

    /// Writes the ends of runs that the PostgreSQL store could not take when they ended.
    fn record_unrecorded(&self, store: &PgStore) {
        let mut unrecorded = self.unrecorded.borrow_mut();
        while let Some((job, run, record)) = unrecorded.first() {
            match store.finish(job, *run, record) {
                Ok(Some(_)) => {
                    info!(
                        job = job.as_str(),
                        "cron job {job}: the end of its run started {} is recorded now that \
                         the cron store is back",
                        describe_time(Some(record.start_ms))
                    );
                }
                Ok(None) => Self::ended_after_takeover(job, record),
                Err(_) => return,
            }
            unrecorded.remove(0);
        }
    }

    fn ended_after_takeover(job: &str, record: &RunRecord) {
        warn!(
            job = job,
            "cron job {job}: its run started {} had been recorded as interrupted by another \
             host (its lease passed while it could not be renewed); it {}",
            describe_time(Some(record.start_ms)),
            record.result
        );
    }

    /// Someone else holds due `job`: another cron worker writing its claim, or running it
    /// past its next due time, or a stuck (or hostile) holder, which `holder` describes. Says
    /// so once it has lasted [`STALL_WARNING`]; returns how soon to look again.
    fn held(&self, job: &CronJob, now: SystemTime, holder: impl FnOnce() -> String) -> Duration {
        let mut stalls = self.stalls.borrow_mut();
        let stall = stalls.entry(job.name.clone()).or_insert(Stall {
            since: now,
            retry: CLAIM_RACE_RETRY,
            warned: false,
        });
        let held_for = now.duration_since(stall.since).unwrap_or_default();
        if !stall.warned && held_for >= STALL_WARNING {
            stall.warned = true;
            let holder = holder();
            warn!(
                job = job.name.as_str(),
                holder = holder.as_str(),
                "cron job {} is due but {holder} for {}: a run longer than its schedule, or a \
                 stuck holder; it runs once it is free",
                job.name,
                crate::format::elapsed(held_for)
            );
        }
        let retry = stall.retry;
        stall.retry = (retry * 2).min(HELD_LOCK_RETRY_MAX);
        retry
    }

    /// How often a claimed run must renew its claim while it runs (None: it holds as long as
    /// its cron worker lives: the file lock).
    pub fn renewal_period(&self) -> Option<Duration> {
        match self.store {
            Store::Files(_) => None,
            Store::Postgres(_) => Some(self.lease / 4),
        }
    }

    /// How long a claim holds past its last renewal before its run must be stopped: three
    /// quarters of the lease, so that it stops before another host may take the job over.
    pub fn claim_holds_for(&self) -> Duration {
        self.lease * 3 / 4
    }

    /// Renews `claim` while it runs: when the renewal was asked (the lease holds from then),
    /// None when this one failed but the claim still holds; an error (why) when it no longer
    /// holds, or may soon not (unrenewed for [`Self::claim_holds_for`]): the run must be
    /// stopped, since another host may take the job over once the lease has passed.
    pub fn renew(&self, claim: &Claim<'_>) -> Renewal {
        let (Store::Postgres(store), Hold::Lease { run, renewed }) = (&self.store, &claim.hold)
        else {
            return Renewal::Holds;
        };
        let asked_at = Instant::now();
        match store.renew(*run, self.lease) {
            Ok(true) => {
                renewed.set(asked_at);
                Renewal::Renewed(asked_at)
            }
            Ok(false) => Renewal::Lost(LEASE_TAKEN.to_string()),
            Err(error) => {
                let unrenewed = renewed.get().elapsed();
                if unrenewed < self.claim_holds_for() {
                    return Renewal::Holds;
                }
                Renewal::Lost(format!(
                    "its lease could not be renewed for {} ({error}); past cron_lease ({}) \
                     another host may take the job over",
                    crate::format::elapsed(unrenewed),
                    crate::format::elapsed(self.lease)
                ))
            }
        }
    }

    /// Records how a claimed run ended (in its state and its history: the job's pid, if it
    /// started, and the last lines it wrote), and releases the job; returns when it is next
    /// due.
    pub fn finish(
        &self,
        claim: Claim<'a>,
        ending: &RunEnding,
        job_pid: Option<i32>,
        output_tail: Vec<String>,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let record = RunRecord {
            host: self.host.clone(),
            pid: job_pid,
            start_ms: to_ms(claim.start),
            end_ms: to_ms(now).max(to_ms(claim.start)),
            result: ending.to_string(),
            succeeded: ending.succeeded(),
            exit_status: ending.exit_status(),
            signal: ending.signal(),
            output_tail,
        };
        let job = claim.job;
        match (&self.store, claim.hold) {
            (Store::Files(store), Hold::File { lock, mut state }) => {
                self.record_run(store, job, &record);
                state.last_end_ms = Some(record.end_ms);
                state.last_result = Some(record.result);
                state.count_end(record.succeeded);
                match store.save(&job.name, &state) {
                    Ok(()) => state.next_run(),
                    Err(error) => {
                        // Released now, the lock would let the next claim take this run for
                        // an interrupted one (and pause the job): kept until it is saved.
                        warn!(
                            job = job.name.as_str(),
                            "cron job {}: cannot record how its run ended ({error}); the job \
                             waits until it is recorded (trying again every {}s)",
                            job.name,
                            UNSAVED_RETRY.as_secs()
                        );
                        self.unsaved
                            .borrow_mut()
                            .insert(job.name.clone(), (lock, state));
                        Some(now + UNSAVED_RETRY)
                    }
                }
            }
            (Store::Postgres(store), Hold::Lease { run, .. }) => {
                match store.finish(&job.name, run, &record) {
                    Ok(Some(next)) => next,
                    Ok(None) => {
                        Self::ended_after_takeover(&job.name, &record);
                        Some(now)
                    }
                    Err(error) => {
                        warn!(
                            job = job.name.as_str(),
                            "cron job {}: cannot record how its run ended yet ({error}); it \
                             is recorded once the cron store answers",
                            job.name
                        );
                        self.unrecorded
                            .borrow_mut()
                            .push((job.name.clone(), run, record));
                        Some(now)
                    }
                }
            }
            _ => unreachable!("a claim is held in the store that made it"),
        }
    }

    /// Adds a run to `job`'s history; a failure is logged (the run itself is recorded in
    /// the job's state).
    fn record_run(&self, store: &JobStore, job: &CronJob, record: &RunRecord) {
        if let Err(error) = store.append_run(&job.name, record) {
            warn!(
                "cron job {}: cannot add the run to its history: {error}",
                job.name
            );
        }
    }

    /// Asks for a run of `job` now: the cron workers that look (each second, or at once on
    /// PostgreSQL's notification) claim it, one of them.
    pub fn ask_run(&self, job: &CronJob) -> io::Result<()> {
        match &self.store {
            Store::Files(store) => store.ask_run(&job.name),
            Store::Postgres(store) => store.ask_run(&job.name).map_err(io::Error::other),
        }
    }

    /// Whether a run of any job was asked for and not yet claimed: a sleeping cron worker
    /// looks each second.
    pub fn any_run_asked(&self) -> bool {
        match &self.store {
            Store::Files(store) => self.jobs().any(|job| store.run_asked(&job.name)),
            Store::Postgres(store) => store.run_announced(),
        }
    }

    /// `job`'s last `count` runs, oldest first.
    pub fn history(&self, job: &CronJob, count: usize) -> io::Result<Vec<RunRecord>> {
        match &self.store {
            Store::Files(store) => store.history(&job.name, count),
            Store::Postgres(store) => store.history(&job.name, count).map_err(io::Error::other),
        }
    }

    /// The state of `job` in the file store; a corrupt state file is logged and the job
    /// starts afresh.
    fn load(&self, store: &JobStore, job: &CronJob) -> JobState {
        store.load(&job.name).unwrap_or_else(|error| {
            warn!(
                "cron job {}: its state file is unreadable ({error}); starting afresh",
                job.name
            );
            JobState::default()
        })
    }

    /// Every job with its state and, when a run of it is in progress, where (for
    /// `forkwarden cron list`).
    pub fn states(&self) -> io::Result<Vec<(&'a CronJob, JobState, Option<String>)>> {
        self.jobs
            .iter()
            .map(|(job, _)| match &self.store {
                Store::Files(store) => {
                    let running = matches!(store.try_lock(&job.name), Ok(None));
                    let holder = running.then(|| match store.lock_holder(&job.name) {
                        Some(pid) => format!("pid {pid}"),
                        None => "another process".to_string(),
                    });
                    Ok((*job, self.load(store, job), holder))
                }
                Store::Postgres(store) => store
                    .job(&job.name)
                    .map(|stored| (*job, stored.state, stored.running_on))
                    .map_err(io::Error::other),
            })
            .collect()
    }
}

/// This machine's name, for the runs' records.
/// This machine's name, in the records of runs and attempts.
pub fn host_name() -> String {
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
        let scheduler = Scheduler::new(&config, now, false).unwrap();
        let claim = expect_run(scheduler.turn(0, now).unwrap());
        // While claimed, no one else may run it.
        assert!(matches!(scheduler.turn(0, now).unwrap(), Turn::Wait(_)));
        let next = scheduler
            .finish(claim, &RunEnding::Exited(0), None, Vec::new(), now)
            .unwrap();
        assert_eq!(to_ms(next), to_ms(now + Duration::from_secs(60)));
        assert!(matches!(scheduler.turn(0, now).unwrap(), Turn::Wait(at) if at == next));
        let state = &scheduler.states().unwrap()[0].1;
        assert_eq!((state.runs, state.last_succeeded), (1, Some(true)));
        assert_eq!((state.succeeded, state.failed), (1, 0));
    }

    #[test]
    fn an_asked_run_runs_once_now_and_leaves_the_schedule_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), true);
        let now = SystemTime::now();
        let scheduler = Scheduler::new(&config, now, false).unwrap();
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
        assert_eq!(scheduler.states().unwrap()[0].1.runs, 2);
    }

    #[test]
    fn a_run_interrupted_by_a_dead_worker_is_not_repeated_at_once_and_counts_as_failed() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), true);
        let now = SystemTime::now();
        let scheduler = Scheduler::new(&config, now, false).unwrap();
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
        let state = &scheduler.states().unwrap()[0].1;
        assert_eq!(state.runs, 2, "retried at its next due time");
        assert_eq!(
            (state.succeeded, state.failed),
            (1, 1),
            "the interrupted run counts as failed"
        );
    }

    #[test]
    fn a_run_whose_end_cannot_be_saved_is_not_taken_for_an_interrupted_one() {
        // Before: on a full disk the end of a run that went well was lost, and the next
        // claim recorded it as interrupted (a failure), pausing the job.
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), true);
        let now = SystemTime::now();
        let scheduler = Scheduler::new(&config, now, false).unwrap();
        let claim = expect_run(scheduler.turn(0, now).unwrap());
        // The state cannot be written: the directory is replaced by a file meanwhile (root
        // may write anywhere, so no permission would stop it).
        let cron = dir.path().join("cron");
        let aside = dir.path().join("cron.aside");
        std::fs::rename(&cron, &aside).unwrap();
        std::fs::write(&cron, "not a directory").unwrap();
        let retry = scheduler
            .finish(claim, &RunEnding::Exited(0), None, Vec::new(), now)
            .unwrap();
        assert_eq!(retry, now + UNSAVED_RETRY);
        // Still not: it waits, its lock kept (no other cron worker may take the run).
        assert!(matches!(scheduler.turn(0, now).unwrap(), Turn::Wait(_)));
        std::fs::remove_file(&cron).unwrap();
        std::fs::rename(&aside, &cron).unwrap();
        let other = JobStore::open(dir.path()).unwrap();
        assert!(
            other.try_lock("tick").unwrap().is_none(),
            "the lock is kept"
        );
        // Once it can be written, it is; the run counts as it ended: well.
        let later = now + UNSAVED_RETRY;
        assert!(matches!(scheduler.turn(0, later).unwrap(), Turn::Wait(_)));
        let state = &scheduler.states().unwrap()[0].1;
        assert_eq!((state.runs, state.succeeded, state.failed), (1, 1, 0));
        assert!(!state.interrupted());
        assert!(
            other.try_lock("tick").unwrap().is_some(),
            "released once saved"
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
            let scheduler = Scheduler::new(&config, now, false).unwrap();
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
