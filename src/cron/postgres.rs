//! The PostgreSQL cron store (`cron_store = "postgresql://..."`): every host that runs the
//! same jobs on one database claims each due run there, so it runs once across them all.
//!
//! - **A claim is one transaction**: the job's row is locked (`FOR UPDATE SKIP LOCKED`: a
//!   host that finds it locked looks again in a moment), its open run looked at, its next
//!   due time moved and the new run inserted, together.
//! - **A run holds a lease** (`lease_until`, on the database's clock), which its cron worker
//!   renews every quarter of `cron_lease`. A host that dies stops renewing; once the lease
//!   has passed, the next host to look records the run as interrupted (with the host and
//!   the cron worker's pid) and the job goes on. Locks that live only as long as a session
//!   (advisory locks) would not do: a restart of PostgreSQL drops them all while the jobs
//!   still run.
//! - **A worker that cannot renew stops its job** once three quarters of the lease have
//!   passed since its last renewal, before any other host may take the job over: a network
//!   cut cannot make a job run twice at once. The database refuses it too: at most one open
//!   run per job (a unique index).
//! - **The connection** (its bounds, its outages, the tables' versions) is
//!   [`crate::database`]'s.

use std::time::{Duration, SystemTime};

use super::store::{JobState, RunRecord, to_ms};
use super::{Decision, describe_time};
use crate::config::CronStoreUrl;
pub use crate::database::StoreError;
use crate::database::{Database, SchemaStatus, StoreUse};

/// Where `forkwarden cron run` wakes the cron workers of every host.
const CHANNEL: &str = "forkwarden_cron";

/// How long a sleeping cron worker listens for `forkwarden cron run` on each of its wakes
/// (once a second).
const NOTIFICATION_PEEK: Duration = Duration::from_millis(10);

/// Runs of a job kept in its history.
const HISTORY_KEPT: i64 = 1000;

/// What holds a due job back, as a claim found it.
#[derive(Debug)]
pub struct Holder {
    pub host: String,
    pub worker_pid: i32,
    pub lease_until: SystemTime,
    /// How long until the lease passes unless renewed (the database's clock).
    pub lease_left: Duration,
}

/// What a claim found and did.
pub enum Claimed {
    /// Another host is writing its claim now (the row is locked): look again in a moment.
    Contended,
    /// A run is in progress elsewhere, its lease alive.
    Held(Holder),
    /// It runs now: run `run` is inserted with its lease; the job has `runs` runs.
    Run {
        decision: Decision,
        run: i64,
        runs: u64,
    },
    /// Not run now: `decision` (a wait, a first due time, a skipped run) is written.
    Written(Decision),
}

/// Where a run is claimed from: this host and cron worker, and the lease it takes.
pub struct Claimant<'a> {
    pub host: &'a str,
    pub worker_pid: i32,
    pub lease: Duration,
}

/// A job's state as the store tells it, with the run in progress, if any.
pub struct StoredJob {
    pub state: JobState,
    /// `host (cron worker pid N)` of a run in progress with a live lease.
    pub running_on: Option<String>,
}

pub struct PgStore {
    db: Database,
}

impl PgStore {
    /// A store on `url`, whose waits stay well inside `heartbeat` (None: no heartbeat is
    /// watched); `listens`: waits for `forkwarden cron run` (a cron worker does). Nothing is
    /// connected until first used.
    pub fn new(url: &CronStoreUrl, heartbeat: Option<Duration>, listens: bool) -> Self {
        let listen: &'static [&'static str] = if listens { &[CHANNEL] } else { &[] };
        Self {
            db: Database::new(url, StoreUse::Cron, heartbeat, listen),
        }
    }

    /// Whether the tables are there and of this version, without creating them.
    pub fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        self.db.schema_status()
    }

    /// The job's next due time and whether a run was asked for, read without a lock (to
    /// decide whether a claim is worth trying).
    pub fn next_due(&self, job: &str) -> Result<(Option<SystemTime>, bool), StoreError> {
        self.db.with(|client| {
            let row = client
                .query_opt(
                    "SELECT next_run, run_asked FROM forkwarden.cron_job WHERE name = $1",
                    &[&job],
                )
                .map_err(|error| self.db.refused(&error))?;
            Ok(row.map_or((None, false), |row| (row.get(0), row.get(1))))
        })
    }

    /// Claims `job` in one transaction: with its row locked, an open run whose lease has
    /// passed is recorded as interrupted (returned, for the log), then `decide` is given
    /// the stored next due time and whether a run was asked for, and what it decides is
    /// written (a first due time, a skipped run, or a new run with its lease).
    pub fn claim(
        &self,
        job: &str,
        now: SystemTime,
        claimant: &Claimant<'_>,
        decide: impl FnOnce(Option<SystemTime>, bool) -> Decision,
    ) -> Result<(Claimed, Option<RunRecord>), StoreError> {
        self.db.with(|client| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let mut tx = client.transaction().map_err(refused)?;
            tx.execute(
                "INSERT INTO forkwarden.cron_job (name) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&job],
            )
            .map_err(refused)?;
            let Some(row) = tx
                .query_opt(
                    "SELECT next_run, run_asked FROM forkwarden.cron_job WHERE name = $1 \
                     FOR UPDATE SKIP LOCKED",
                    &[&job],
                )
                .map_err(refused)?
            else {
                return Ok((Claimed::Contended, None));
            };
            let (next_run, asked): (Option<SystemTime>, bool) = (row.get(0), row.get(1));
            let interrupted = match close_lapsed_run(&mut tx, job, now).map_err(refused)? {
                OpenRun::Held(holder) => {
                    tx.commit().map_err(refused)?;
                    return Ok((Claimed::Held(holder), None));
                }
                OpenRun::Interrupted(record) => Some(record),
                OpenRun::None => None,
            };
            let decision = decide(next_run, asked);
            let claimed = write_decision(&mut tx, job, now, claimant, decision).map_err(refused)?;
            tx.commit().map_err(refused)?;
            Ok((claimed, interrupted))
        })
    }

    /// Renews the lease of run `run` for `lease`; false when the run is no longer open
    /// (another host recorded it as interrupted: its lease had passed).
    pub fn renew(&self, run: i64, lease: Duration) -> Result<bool, StoreError> {
        self.db.with(|client| {
            client
                .execute(
                    "UPDATE forkwarden.cron_run SET lease_until = now() + make_interval(secs => $2) \
                     WHERE id = $1 AND ended_at IS NULL",
                    &[&run, &lease.as_secs_f64()],
                )
                .map(|updated| updated == 1)
                .map_err(|error| self.db.refused(&error))
        })
    }

    /// Records how run `run` of `job` ended and counts it; returns the job's next due time,
    /// or None in the outer option when the run had already been recorded as interrupted.
    pub fn finish(
        &self,
        job: &str,
        run: i64,
        record: &RunRecord,
    ) -> Result<Option<Option<SystemTime>>, StoreError> {
        self.db.with(|client| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let mut tx = client.transaction().map_err(refused)?;
            let ended = super::store::from_ms(record.end_ms);
            let updated = tx
                .execute(
                    "UPDATE forkwarden.cron_run SET ended_at = $2, lease_until = NULL, pid = $3, \
                     result = $4, succeeded = $5, exit_status = $6, signal = $7, \
                     output_tail = $8 WHERE id = $1 AND ended_at IS NULL",
                    &[
                        &run,
                        &ended,
                        &record.pid,
                        &record.result,
                        &record.succeeded,
                        &record.exit_status,
                        &record.signal,
                        &record.output_tail,
                    ],
                )
                .map_err(refused)?;
            if updated == 0 {
                tx.commit().map_err(refused)?;
                return Ok(None);
            }
            let next: Option<SystemTime> = tx
                .query_one(
                    "UPDATE forkwarden.cron_job SET \
                     succeeded = succeeded + CASE WHEN $2 THEN 1 ELSE 0 END, \
                     failed = failed + CASE WHEN $2 THEN 0 ELSE 1 END, \
                     consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures + 1 END \
                     WHERE name = $1 RETURNING next_run",
                    &[&job, &record.succeeded],
                )
                .map_err(refused)?
                .get(0);
            tx.execute(
                "DELETE FROM forkwarden.cron_run WHERE job = $1 AND ended_at IS NOT NULL \
                 AND id < (SELECT min(id) FROM (SELECT id FROM forkwarden.cron_run \
                 WHERE job = $1 ORDER BY id DESC LIMIT $2) AS kept)",
                &[&job, &HISTORY_KEPT],
            )
            .map_err(refused)?;
            tx.commit().map_err(refused)?;
            Ok(Some(next))
        })
    }

    /// Asks for a run of `job` now: marked in its row (a host that is down sees it when it
    /// is back), and announced to the cron workers of every host.
    pub fn ask_run(&self, job: &str) -> Result<(), StoreError> {
        self.db.with(|client| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let mut tx = client.transaction().map_err(refused)?;
            tx.execute(
                "INSERT INTO forkwarden.cron_job (name, run_asked) VALUES ($1, true) \
                 ON CONFLICT (name) DO UPDATE SET run_asked = true",
                &[&job],
            )
            .map_err(refused)?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &job])
                .map_err(refused)?;
            tx.commit().map_err(refused)
        })
    }

    /// Whether `forkwarden cron run` announced a run since last asked (never waits
    /// long); also true when the connection closed (the database restarted), so that the
    /// sleeping cron worker looks at once and learns of asks made meanwhile, once
    /// reconnected.
    pub fn run_announced(&self) -> bool {
        self.db.notified(NOTIFICATION_PEEK)
    }

    /// The job's last `count` runs, oldest first (a run in progress included).
    pub fn history(&self, job: &str, count: usize) -> Result<Vec<RunRecord>, StoreError> {
        let limit = i64::try_from(count).unwrap_or(i64::MAX);
        self.db.with(|client| {
            let rows = client
                .query(
                    "SELECT host, worker_pid, pid, started_at, ended_at, result, succeeded, \
                     exit_status, signal, output_tail, lease_until, lease_until > now() \
                     FROM forkwarden.cron_run WHERE job = $1 ORDER BY id DESC LIMIT $2",
                    &[&job, &limit],
                )
                .map_err(|error| self.db.refused(&error))?;
            let mut runs: Vec<RunRecord> = rows
                .iter()
                .map(|row| {
                    let start_ms = to_ms(row.get(3));
                    let ended: Option<SystemTime> = row.get(4);
                    let lease_until: Option<SystemTime> = row.get(10);
                    let result = match (row.get::<_, Option<String>>(5), ended) {
                        (Some(result), _) => result,
                        (None, None) if row.get::<_, Option<bool>>(11) == Some(true) => {
                            "running".to_string()
                        }
                        (None, _) => format!(
                            "running, but its lease passed at {}",
                            describe_time(lease_until.map(to_ms))
                        ),
                    };
                    RunRecord {
                        host: row.get(0),
                        pid: row.get::<_, Option<i32>>(2).or(Some(row.get(1))),
                        start_ms,
                        // A run in progress: so far.
                        end_ms: ended.map_or_else(|| to_ms(SystemTime::now()), to_ms),
                        result,
                        succeeded: row.get::<_, Option<bool>>(6).unwrap_or(false),
                        exit_status: row.get(7),
                        signal: row.get(8),
                        output_tail: row.get(9),
                    }
                })
                .collect();
            runs.reverse();
            Ok(runs)
        })
    }

    /// The job's state (as the file store keeps it), with where it runs now.
    pub fn job(&self, job: &str) -> Result<StoredJob, StoreError> {
        self.db.with(|client| {
            let row = client
                .query_opt(
                    "SELECT j.next_run, j.runs, j.succeeded, j.failed, j.consecutive_failures, \
                     r.host, r.worker_pid, r.started_at, r.ended_at, r.result, r.succeeded, \
                     r.ended_at IS NULL AND r.lease_until > now() \
                     FROM forkwarden.cron_job j LEFT JOIN LATERAL (SELECT * FROM \
                     forkwarden.cron_run WHERE job = j.name ORDER BY id DESC LIMIT 1) r ON true \
                     WHERE j.name = $1",
                    &[&job],
                )
                .map_err(|error| self.db.refused(&error))?;
            let Some(row) = row else {
                return Ok(StoredJob {
                    state: JobState::default(),
                    running_on: None,
                });
            };
            let count = |at: usize| u64::try_from(row.get::<_, i64>(at)).unwrap_or(0);
            let host: Option<String> = row.get(5);
            let worker_pid: Option<i32> = row.get(6);
            let started: Option<SystemTime> = row.get(7);
            let ended: Option<SystemTime> = row.get(8);
            let running = row.get::<_, Option<bool>>(11) == Some(true);
            let state = JobState {
                next_run_ms: row.get::<_, Option<SystemTime>>(0).map(to_ms),
                last_start_ms: started.map(to_ms),
                last_end_ms: ended.map(to_ms).or(started.map(to_ms)),
                last_result: row.get(9),
                last_succeeded: row.get(10),
                consecutive_failures: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
                runs: count(1),
                succeeded: count(2),
                failed: count(3),
                last_host: host.clone(),
                last_worker_pid: worker_pid,
            };
            let running_on = running.then(|| {
                format!(
                    "{} (cron worker pid {})",
                    host.unwrap_or_default(),
                    worker_pid.unwrap_or_default()
                )
            });
            Ok(StoredJob { state, running_on })
        })
    }
}

/// A job's open run, as a claim finds it.
enum OpenRun {
    /// None is open.
    None,
    /// One is, under a lease that has not passed: its holder.
    Held(Holder),
    /// One was, whose lease had passed: now recorded as interrupted (for the log).
    Interrupted(RunRecord),
}

/// In the claim's transaction (the job's row locked): the job's open run, recorded as
/// interrupted if its lease has passed on the database's clock.
fn close_lapsed_run(
    tx: &mut postgres::Transaction<'_>,
    job: &str,
    now: SystemTime,
) -> Result<OpenRun, postgres::Error> {
    let Some(open) = tx.query_opt(
        "SELECT id, host, worker_pid, started_at, lease_until, \
         EXTRACT(EPOCH FROM lease_until - now())::float8 \
         FROM forkwarden.cron_run WHERE job = $1 AND ended_at IS NULL",
        &[&job],
    )?
    else {
        return Ok(OpenRun::None);
    };
    let (id, host, worker_pid, started): (i64, String, i32, SystemTime) =
        (open.get(0), open.get(1), open.get(2), open.get(3));
    let lease_until: Option<SystemTime> = open.get(4);
    // Seconds the lease has left, on the database's clock.
    let lease_left = open.get::<_, Option<f64>>(5).unwrap_or(0.0);
    if lease_left > 0.0 {
        return Ok(OpenRun::Held(Holder {
            host,
            worker_pid,
            lease_until: lease_until.unwrap_or(now),
            lease_left: Duration::try_from_secs_f64(lease_left).unwrap_or(Duration::ZERO),
        }));
    }
    let result = format!(
        "interrupted: its cron worker (pid {worker_pid} on {host}) stopped renewing its lease \
         (until {})",
        describe_time(lease_until.map(to_ms))
    );
    tx.execute(
        "UPDATE forkwarden.cron_run SET ended_at = $2, lease_until = NULL, \
         succeeded = false, result = $3 WHERE id = $1",
        &[&id, &now, &result],
    )?;
    tx.execute(
        "UPDATE forkwarden.cron_job SET failed = failed + 1, \
         consecutive_failures = consecutive_failures + 1 WHERE name = $1",
        &[&job],
    )?;
    Ok(OpenRun::Interrupted(RunRecord {
        host,
        pid: Some(worker_pid),
        start_ms: to_ms(started),
        end_ms: to_ms(now),
        result,
        ..RunRecord::default()
    }))
}

/// In the claim's transaction: writes what `decision` says (a first due time, a skipped
/// run, or a new run under `claimant`'s lease).
fn write_decision(
    tx: &mut postgres::Transaction<'_>,
    job: &str,
    now: SystemTime,
    claimant: &Claimant<'_>,
    decision: Decision,
) -> Result<Claimed, postgres::Error> {
    match decision {
        Decision::Wait { store: None, .. } => Ok(Claimed::Written(decision)),
        Decision::Wait {
            store: next @ Some(_),
            ..
        }
        | Decision::Skip { next, .. } => {
            tx.execute(
                "UPDATE forkwarden.cron_job SET next_run = $2 WHERE name = $1",
                &[&job, &next],
            )?;
            Ok(Claimed::Written(decision))
        }
        Decision::Run { next, .. } => {
            let run: i64 = tx
                .query_one(
                    "INSERT INTO forkwarden.cron_run \
                     (job, host, worker_pid, started_at, lease_until) \
                     VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) RETURNING id",
                    &[
                        &job,
                        &claimant.host,
                        &claimant.worker_pid,
                        &now,
                        &claimant.lease.as_secs_f64(),
                    ],
                )?
                .get(0);
            let runs: i64 = tx
                .query_one(
                    "UPDATE forkwarden.cron_job SET next_run = $2, run_asked = false, \
                     runs = runs + 1 WHERE name = $1 RETURNING runs",
                    &[&job, &next],
                )?
                .get(0);
            Ok(Claimed::Run {
                decision,
                run,
                runs: u64::try_from(runs).unwrap_or(0),
            })
        }
    }
}
