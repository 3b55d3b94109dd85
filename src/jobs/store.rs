//! The job queue's statements: claims, leases, ends of attempts, deaths, the lapsed leases
//! of dead hosts, and what the `forkwarden job` commands read and change.

use std::time::Duration;

use postgres::Transaction;

use super::{AttemptEnd, CHANNEL, Fate, JobDeath, Outcome, fate};
use crate::config::{Config, CronStoreUrl, JobKind, default_retry_delay};
use crate::database::{Database, StoreError, StoreUse};
use crate::scoreboard::ChannelCount;

/// How many lapsed leases one claim records at most (the rest go to the next claims).
const LAPSED_PER_CLAIM: i64 = 10;

/// A job claimed by this job worker: its attempt runs now.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    /// Its args, as JSON text.
    pub args: String,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
    pub max_attempts: u32,
    /// Its attempt's row.
    pub attempt_id: i64,
    /// How long it waited from due (enqueued, its eta, or its retry's time) to this claim.
    pub waited: Duration,
}

/// What a renewal of a running job's lease found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    Renewed,
    /// Renewed, and `forkwarden job cancel` asks it to stop.
    CancelAsked,
    /// It is no longer this worker's (its lease passed and another host recorded it lost).
    Gone,
}

/// A job as `forkwarden job list` and `job show` show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub channel: String,
    pub state: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub priority: i32,
    pub args: String,
    pub identity_key: Option<String>,
    pub enqueued_at: String,
    pub eta: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub host: Option<String>,
    pub worker_pid: Option<i32>,
    pub result: Option<String>,
    pub progress: Option<String>,
}

/// One attempt, as `forkwarden job show` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttemptRow {
    pub attempt: i32,
    pub host: String,
    pub worker_pid: i32,
    pub pid: Option<i32>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
    pub limit: Option<String>,
    pub output_tail: Vec<String>,
}

/// The queue, through one connection.
pub struct JobQueue {
    db: Database,
}

/// The columns a [`JobRow`] is read from (times as text on the database's clock).
const JOB_COLUMNS: &str = "id, kind, channel, state, attempt, max_attempts, priority, args::text, \
    identity_key, to_char(enqueued_at, 'YYYY-MM-DD HH24:MI:SS.MS TZ'), \
    to_char(eta, 'YYYY-MM-DD HH24:MI:SS.MS TZ'), \
    to_char(started_at, 'YYYY-MM-DD HH24:MI:SS.MS TZ'), \
    to_char(ended_at, 'YYYY-MM-DD HH24:MI:SS.MS TZ'), host, worker_pid, result, \
    CASE WHEN progress_total IS NOT NULL THEN progress_done || '/' || progress_total END";

fn job_row(row: &postgres::Row) -> JobRow {
    JobRow {
        id: row.get(0),
        kind: row.get(1),
        channel: row.get(2),
        state: row.get(3),
        attempt: row.get(4),
        max_attempts: row.get(5),
        priority: row.get(6),
        args: row.get(7),
        identity_key: row.get(8),
        enqueued_at: row.get(9),
        eta: row.get(10),
        started_at: row.get(11),
        ended_at: row.get(12),
        host: row.get(13),
        worker_pid: row.get(14),
        result: row.get(15),
        progress: row.get(16),
    }
}

/// What `enqueue` is given besides the kind and args.
#[derive(Clone, Debug, Default)]
pub struct EnqueueOptions {
    pub priority: Option<i32>,
    /// Not before this long from now.
    pub delay: Option<Duration>,
    pub channel: Option<String>,
    pub identity_key: Option<String>,
    pub max_attempts: Option<i32>,
}

impl JobQueue {
    /// The queue in `url`, for a job worker (`listens`: woken by enqueues) or a command;
    /// its waits stay inside `heartbeat`. Nothing is connected until first used.
    pub fn new(url: &CronStoreUrl, heartbeat: Option<Duration>, listens: bool) -> Self {
        let listen: &'static [&'static str] = if listens { &[CHANNEL] } else { &[] };
        Self {
            db: Database::new(url, StoreUse::Jobs, heartbeat, listen),
        }
    }

    /// Waits up to `wait` for an enqueue on any host; true when one came (or the
    /// connection closed: look at once).
    pub fn notified(&self, wait: Duration) -> bool {
        self.db.notified(wait)
    }

    /// Writes the kinds and channels of `config`, so that `enqueue` accepts the kinds and
    /// claims honour the capacities (the last host to start says).
    pub fn register(&self, config: &Config) -> Result<(), StoreError> {
        self.db.with(|client| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let mut tx = client.transaction().map_err(refused)?;
            for kind in &config.job {
                let attempts = i32::try_from(kind.max_attempts).unwrap_or(i32::MAX);
                tx.execute(
                    "INSERT INTO forkwarden.job_kind (name, channel, max_attempts) \
                     VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET \
                     channel = $2, max_attempts = $3, updated_at = now()",
                    &[&kind.name, &kind.channel, &attempts],
                )
                .map_err(refused)?;
            }
            for channel in &config.channel {
                let capacity = i32::try_from(channel.capacity).unwrap_or(i32::MAX);
                tx.execute(
                    "INSERT INTO forkwarden.job_channel (name, capacity) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET capacity = $2",
                    &[&channel.name, &capacity],
                )
                .map_err(refused)?;
            }
            tx.commit().map_err(refused)
        })
    }

    /// Records as lost the attempts whose lease passed (their host died), their jobs
    /// retried or failed per `config`.
    pub fn record_lapsed(&self, config: &Config) -> Result<(), StoreError> {
        self.db.with(|client| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let mut tx = client.transaction().map_err(refused)?;
            record_lapsed(&mut tx, config).map_err(refused)?;
            tx.commit().map_err(refused)
        })
    }

    /// Claims the next job of `config`'s kinds that is due and whose channel has room, for
    /// this worker (`host`, `worker_pid`) under a lease of `lease`. None: nothing to run now.
    /// A job in a channel without a capacity (the common case) takes two round trips: the
    /// best job found, then the claim in one statement.
    pub fn claim(
        &self,
        config: &Config,
        host: &str,
        worker_pid: i32,
        lease: Duration,
    ) -> Result<Option<Claimed>, StoreError> {
        let kinds: Vec<&str> = config.job.iter().map(|kind| kind.name.as_str()).collect();
        self.db.with(|session| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let best = session.prepared(BEST).map_err(refused)?;
            let Some(best) = session.query_opt(&best, &[&kinds]).map_err(refused)? else {
                return Ok(None);
            };
            let (channel, bounded): (String, bool) = (best.get(0), best.get(1));
            let seconds = lease.as_secs_f64();
            let claim = session.prepared(CLAIM).map_err(refused)?;
            let row = if bounded {
                let mut tx = session.transaction().map_err(refused)?;
                let row =
                    claim_in_channel(&mut tx, &claim, &kinds, &channel, host, worker_pid, seconds)
                        .map_err(refused)?;
                tx.commit().map_err(refused)?;
                row
            } else {
                let any_channel: Option<&str> = None;
                session
                    .query_opt(
                        &claim,
                        &[&kinds, &host, &worker_pid, &seconds, &any_channel],
                    )
                    .map_err(refused)?
            };
            Ok(row.map(|row| Claimed {
                id: row.get(0),
                kind: row.get(1),
                args: row.get(2),
                attempt: u32::try_from(row.get::<_, i32>(3)).unwrap_or(0),
                max_attempts: u32::try_from(row.get::<_, i32>(4)).unwrap_or(1),
                attempt_id: row.get(5),
                waited: Duration::try_from_secs_f64(row.get(6)).unwrap_or_default(),
            }))
        })
    }

    /// The jobs waiting (pending, due or not) and running over every host, in each of
    /// `channels` and, last, in all the others together.
    pub fn count_by_channel(&self, channels: &[&str]) -> Result<Vec<ChannelCount>, StoreError> {
        self.db.with(|session| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let count = session.prepared(COUNT_BY_CHANNEL).map_err(refused)?;
            let rows = session.query(&count, &[]).map_err(refused)?;
            let mut counts = vec![ChannelCount::default(); channels.len() + 1];
            for row in rows {
                let channel: &str = row.get(0);
                let index = channels
                    .iter()
                    .position(|name| *name == channel)
                    .unwrap_or(channels.len());
                let number = |column: usize| u64::try_from(row.get::<_, i64>(column)).unwrap_or(0);
                let slot = &mut counts[index];
                slot.waiting = slot.waiting.saturating_add(number(1));
                slot.running = slot.running.saturating_add(number(2));
            }
            Ok(counts)
        })
    }

    /// How long until the next pending job of `config`'s kinds is due (None: none waits).
    pub fn next_due(&self, config: &Config) -> Result<Option<Duration>, StoreError> {
        let kinds: Vec<&str> = config.job.iter().map(|kind| kind.name.as_str()).collect();
        self.db.with(|session| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let next = session
                .prepared(
                    "SELECT EXTRACT(EPOCH FROM min(eta) - now())::float8 FROM forkwarden.job \
                     WHERE state = 'pending' AND kind = ANY($1)",
                )
                .map_err(refused)?;
            let seconds: Option<f64> = session.query_one(&next, &[&kinds]).map_err(refused)?.get(0);
            Ok(seconds.map(|seconds| Duration::try_from_secs_f64(seconds).unwrap_or_default()))
        })
    }

    /// Renews the lease of job `id`, run by this worker, for `lease`, writing the
    /// `progress` (done, total) it last reported.
    pub fn renew(
        &self,
        id: i64,
        host: &str,
        worker_pid: i32,
        lease: Duration,
        progress: Option<(i64, i64)>,
    ) -> Result<Lease, StoreError> {
        let (done, total) = progress.unzip();
        self.db.with(|session| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let renew = session
                .prepared(
                    "UPDATE forkwarden.job SET lease_until = now() + make_interval(secs => $4), \
                     progress_done = coalesce($5, progress_done), \
                     progress_total = coalesce($6, progress_total) \
                     WHERE id = $1 AND state = 'running' AND host = $2 AND worker_pid = $3 \
                     RETURNING cancel_asked",
                )
                .map_err(refused)?;
            let row = session
                .query_opt(
                    &renew,
                    &[&id, &host, &worker_pid, &lease.as_secs_f64(), &done, &total],
                )
                .map_err(refused)?;
            Ok(match row.map(|row| row.get::<_, bool>(0)) {
                None => Lease::Gone,
                Some(true) => Lease::CancelAsked,
                Some(false) => Lease::Renewed,
            })
        })
    }

    /// Records the end of attempt `claimed` and writes the job's fate (given the kind's
    /// retry delay), in one statement; returns the fate written, or None when the attempt
    /// had already been recorded (as lost, by a host that found its lease passed).
    pub fn finish(
        &self,
        claimed: &Claimed,
        end: &AttemptEnd,
        retry_delay: Duration,
        progress: Option<(i64, i64)>,
    ) -> Result<Option<Fate>, StoreError> {
        let fate = fate(
            end.outcome,
            claimed.attempt,
            claimed.max_attempts,
            retry_delay,
        );
        self.db.with(|session| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let finish = session.prepared(FINISH).map_err(refused)?;
            end_attempt(
                &mut **session,
                &finish,
                claimed.attempt_id,
                end,
                fate,
                progress,
            )
            .map_err(refused)
        })
    }

    /// Records the end of the attempt that job worker `death` was running on `host` (if
    /// any): the cause the master gave, and the job's fate. Returns the job and its fate.
    pub fn record_death(
        &self,
        config: &Config,
        host: &str,
        death: &JobDeath,
    ) -> Result<Option<(i64, String, Fate)>, StoreError> {
        self.db.with(|client| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let mut tx = client.transaction().map_err(refused)?;
            let Some(open) = tx
                .query_opt(
                    "SELECT a.id, a.job, j.kind, j.attempt, j.max_attempts \
                     FROM forkwarden.job_attempt a JOIN forkwarden.job j ON j.id = a.job \
                     WHERE a.host = $1 AND a.worker_pid = $2 AND a.ended_at IS NULL \
                     AND j.state = 'running' AND j.host = $1 AND j.worker_pid = $2 \
                     FOR UPDATE OF a, j",
                    &[&host, &death.worker_pid],
                )
                .map_err(refused)?
            else {
                tx.commit().map_err(refused)?;
                return Ok(None);
            };
            let (attempt_id, job, kind): (i64, i64, String) =
                (open.get(0), open.get(1), open.get(2));
            let value = death
                .limit
                .as_deref()
                .and_then(|limit| limit_value(config, &kind, limit));
            let end = AttemptEnd::of_death(death, value);
            let attempt = u32::try_from(open.get::<_, i32>(3)).unwrap_or(0);
            let delay = retry_delay(config, &kind, job, attempt);
            let fate = fate(
                end.outcome,
                attempt,
                u32::try_from(open.get::<_, i32>(4)).unwrap_or(1),
                delay,
            );
            let written =
                end_attempt(&mut tx, FINISH, attempt_id, &end, fate, None).map_err(refused)?;
            tx.commit().map_err(refused)?;
            Ok(written.map(|fate| (job, kind, fate)))
        })
    }

    /// Deletes done, failed and cancelled jobs that ended more than `retention` ago;
    /// returns how many.
    pub fn prune(&self, retention: Duration) -> Result<u64, StoreError> {
        self.db.with(|client| {
            client
                .execute(
                    "DELETE FROM forkwarden.job WHERE state IN ('done', 'failed', 'cancelled') \
                     AND ended_at < now() - make_interval(secs => $1)",
                    &[&retention.as_secs_f64()],
                )
                .map_err(|error| self.db.refused(&error))
        })
    }

    // ---- what the `forkwarden job` commands do ----

    /// Enqueues a job, as `forkwarden.enqueue` does in an application's transaction.
    pub fn enqueue(
        &self,
        kind: &str,
        args: &str,
        options: &EnqueueOptions,
    ) -> Result<i64, StoreError> {
        self.db.with(|client| {
            let delay = options.delay.map(|delay| delay.as_secs_f64());
            client
                .query_one(
                    "SELECT forkwarden.enqueue($1, $2::text::jsonb, priority => $3::int4, \
                     eta => now() + make_interval(secs => coalesce($4::float8, 0)), \
                     channel => $5::text, identity_key => $6::text, max_attempts => $7::int4)",
                    &[
                        &kind,
                        &args,
                        &options.priority,
                        &delay,
                        &options.channel,
                        &options.identity_key,
                        &options.max_attempts,
                    ],
                )
                .map(|row| row.get(0))
                .map_err(|error| self.db.refused(&error))
        })
    }

    /// The newest `limit` jobs, of `state` and `channel` if given.
    pub fn list(
        &self,
        state: Option<&str>,
        channel: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobRow>, StoreError> {
        self.db.with(|client| {
            client
                .query(
                    &format!(
                        "SELECT {JOB_COLUMNS} FROM forkwarden.job WHERE \
                         ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR channel = $2) \
                         ORDER BY id DESC LIMIT $3"
                    ),
                    &[&state, &channel, &limit],
                )
                .map(|rows| rows.iter().map(job_row).collect())
                .map_err(|error| self.db.refused(&error))
        })
    }

    /// Job `id` with its attempts, oldest first.
    pub fn show(&self, id: i64) -> Result<Option<(JobRow, Vec<AttemptRow>)>, StoreError> {
        self.db.with(|client| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let Some(job) = client
                .query_opt(
                    &format!("SELECT {JOB_COLUMNS} FROM forkwarden.job WHERE id = $1"),
                    &[&id],
                )
                .map_err(refused)?
            else {
                return Ok(None);
            };
            let attempts = client
                .query(
                    "SELECT attempt, host, worker_pid, pid, \
                     to_char(started_at, 'YYYY-MM-DD HH24:MI:SS.MS TZ'), \
                     to_char(ended_at, 'YYYY-MM-DD HH24:MI:SS.MS TZ'), outcome, detail, \
                     limit_name || ' ' || limit_value, output_tail \
                     FROM forkwarden.job_attempt WHERE job = $1 ORDER BY id",
                    &[&id],
                )
                .map_err(refused)?
                .iter()
                .map(|row| AttemptRow {
                    attempt: row.get(0),
                    host: row.get(1),
                    worker_pid: row.get(2),
                    pid: row.get(3),
                    started_at: row.get(4),
                    ended_at: row.get(5),
                    outcome: row.get(6),
                    detail: row.get(7),
                    limit: row.get(8),
                    output_tail: row.get(9),
                })
                .collect();
            Ok(Some((job_row(&job), attempts)))
        })
    }

    /// Makes an ended job (done, failed, cancelled) pending again, now, with one more
    /// attempt allowed; returns its state before, or None if there is no such job.
    pub fn retry(&self, id: i64) -> Result<Option<String>, StoreError> {
        self.db.with(|client| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let mut tx = client.transaction().map_err(refused)?;
            let Some(state) = locked_state(&mut tx, id).map_err(refused)? else {
                return Ok(None);
            };
            if matches!(state.as_str(), "done" | "failed" | "cancelled") {
                tx.execute(
                    "UPDATE forkwarden.job SET state = 'pending', eta = now(), ended_at = NULL, \
                     cancel_asked = false, max_attempts = greatest(max_attempts, attempt + 1), \
                     result = 'retry asked by forkwarden job retry' WHERE id = $1",
                    &[&id],
                )
                .map_err(refused)?;
                tx.execute("SELECT pg_notify($1, 'retry')", &[&CHANNEL])
                    .map_err(refused)?;
            }
            tx.commit().map_err(refused)?;
            Ok(Some(state))
        })
    }

    /// Cancels job `id`: a pending one at once, a running one by asking its job worker
    /// (it stops it with SIGTERM, then SIGKILL after a grace). Returns its state before,
    /// or None if there is no such job.
    pub fn cancel(&self, id: i64) -> Result<Option<String>, StoreError> {
        self.db.with(|client| {
            let refused = |error: postgres::Error| self.db.refused(&error);
            let mut tx = client.transaction().map_err(refused)?;
            let Some(state) = locked_state(&mut tx, id).map_err(refused)? else {
                return Ok(None);
            };
            match state.as_str() {
                "pending" => {
                    tx.execute(
                        "UPDATE forkwarden.job SET state = 'cancelled', ended_at = now(), \
                         result = 'cancelled before it ran' WHERE id = $1",
                        &[&id],
                    )
                    .map_err(refused)?;
                }
                "running" => {
                    tx.execute(
                        "UPDATE forkwarden.job SET cancel_asked = true WHERE id = $1",
                        &[&id],
                    )
                    .map_err(refused)?;
                }
                _ => {}
            }
            tx.commit().map_err(refused)?;
            Ok(Some(state))
        })
    }
}

/// Pending and running jobs by channel: two partial indexes (`job_waiting`,
/// `job_running`) hold exactly those rows, so the count never reads the ended ones.
const COUNT_BY_CHANNEL: &str = "SELECT channel, count(*) FILTER (WHERE state = 'pending'), \
    count(*) FILTER (WHERE state = 'running') FROM forkwarden.job \
    WHERE state IN ('pending', 'running') GROUP BY channel";

/// The best job to run next of the kinds `$1`, due, in a channel with room, as things stand
/// (nothing locked): its channel, and whether the channel has a capacity.
const BEST: &str = "SELECT j.channel, c.capacity IS NOT NULL FROM forkwarden.job j \
    LEFT JOIN forkwarden.job_channel c ON c.name = j.channel \
    WHERE j.state = 'pending' AND j.eta <= now() AND j.kind = ANY($1) \
    AND (c.name IS NULL OR c.capacity > (SELECT count(*) FROM forkwarden.job r \
        WHERE r.channel = c.name AND r.state = 'running')) \
    ORDER BY j.priority, j.eta, j.id LIMIT 1";

/// Claims, in one statement, the best due job of the kinds `$1` for worker `$3` on host
/// `$2` under a lease of `$4` seconds: in channel `$5` (whose row the transaction has
/// locked, and whose capacity it found room in), or with `$5` NULL in any channel without a
/// capacity. The job is marked running and its attempt inserted; returns the claimed job's
/// columns and the attempt's id.
const CLAIM: &str = "WITH next AS (SELECT j.id FROM forkwarden.job j \
        WHERE j.state = 'pending' AND j.eta <= now() AND j.kind = ANY($1) \
        AND CASE WHEN $5::text IS NULL THEN NOT EXISTS \
            (SELECT 1 FROM forkwarden.job_channel c WHERE c.name = j.channel) \
            ELSE j.channel = $5::text END \
        ORDER BY j.priority, j.eta, j.id LIMIT 1 FOR UPDATE SKIP LOCKED), \
    started AS (UPDATE forkwarden.job j SET state = 'running', attempt = j.attempt + 1, \
        started_at = now(), ended_at = NULL, host = $2, worker_pid = $3, \
        lease_until = now() + make_interval(secs => $4), progress_done = NULL, \
        progress_total = NULL FROM next WHERE j.id = next.id \
        RETURNING j.id, j.kind, j.args::text AS args, j.attempt, j.max_attempts, \
            greatest(extract(epoch FROM now() - j.eta), 0)::float8 AS waited), \
    attempt AS (INSERT INTO forkwarden.job_attempt (job, attempt, host, worker_pid, started_at) \
        SELECT id, attempt, $2, $3, now() FROM started RETURNING id) \
    SELECT s.id, s.kind, s.args, s.attempt, s.max_attempts, a.id, s.waited \
    FROM started s, attempt a";

/// Ends attempt `$1` (outcome `$2`, detail `$3`, exit status `$4`, signal `$5`, limit `$6`
/// with value `$7`, the job's pid `$8`, its last lines `$9`) unless it had already ended,
/// and writes its job's state `$10` (a retry: pending again in `$11` seconds; a cancel asked
/// meanwhile makes a retry or a failure a cancel) and its last progress (`$12` of `$13`),
/// and wakes the job workers of every host:
/// an ended job leaves room in its channel, a retry may be due at once. Returns the state.
const FINISH: &str = "WITH ended AS (UPDATE forkwarden.job_attempt SET ended_at = now(), \
        outcome = $2, detail = $3, exit_status = $4, signal = $5, limit_name = $6, \
        limit_value = $7, pid = coalesce($8, pid), output_tail = $9 \
        WHERE id = $1 AND ended_at IS NULL RETURNING job), \
    fated AS (UPDATE forkwarden.job j SET \
        state = CASE WHEN j.cancel_asked AND $10::text IN ('pending', 'failed') \
            THEN 'cancelled' ELSE $10::text END, \
        lease_until = NULL, result = $3, \
        eta = CASE WHEN $10::text = 'pending' AND NOT j.cancel_asked \
            THEN now() + make_interval(secs => $11::float8) ELSE j.eta END, \
        ended_at = CASE WHEN $10::text = 'pending' AND NOT j.cancel_asked \
            THEN NULL ELSE now() END, \
        progress_done = coalesce($12, j.progress_done), \
        progress_total = coalesce($13, j.progress_total) \
        FROM ended WHERE j.id = ended.job RETURNING j.state) \
    SELECT fated.state FROM fated, LATERAL (SELECT pg_notify('forkwarden_job', 'ended')) n";

/// In a claim's transaction, for a channel with a capacity: claims take turns on the
/// channel's row (locked until the claim commits), so each counts the running jobs after
/// the one before it committed, and none skips over the job another is about to take: the
/// capacity holds over every host and the channel keeps its priority order.
fn claim_in_channel(
    tx: &mut Transaction<'_>,
    claim: &postgres::Statement,
    kinds: &[&str],
    channel: &str,
    host: &str,
    worker_pid: i32,
    lease_seconds: f64,
) -> Result<Option<postgres::Row>, postgres::Error> {
    let capacity: i32 = tx
        .query_one(
            "SELECT capacity FROM forkwarden.job_channel WHERE name = $1 FOR UPDATE",
            &[&channel],
        )?
        .get(0);
    let running: i64 = tx
        .query_one(
            "SELECT count(*) FROM forkwarden.job WHERE channel = $1 AND state = 'running'",
            &[&channel],
        )?
        .get(0);
    if running >= i64::from(capacity) {
        return Ok(None);
    }
    tx.query_opt(
        claim,
        &[&kinds, &host, &worker_pid, &lease_seconds, &channel],
    )
}

/// In a command's transaction: job `id`'s state, its row locked until the transaction
/// ends (None: no such job).
fn locked_state(tx: &mut Transaction<'_>, id: i64) -> Result<Option<String>, postgres::Error> {
    Ok(tx
        .query_opt(
            "SELECT state FROM forkwarden.job WHERE id = $1 FOR UPDATE",
            &[&id],
        )?
        .map(|row| row.get(0)))
}

/// Ends attempt `attempt_id` as `end` says and writes its job's `fate` with the `progress`
/// it last reported, through `statement` ([`FINISH`], prepared or not); returns the fate
/// written (a cancel asked meanwhile makes a retry or a failure a cancel), or None when the
/// attempt had already ended.
fn end_attempt<T: postgres::ToStatement + ?Sized>(
    client: &mut impl postgres::GenericClient,
    statement: &T,
    attempt_id: i64,
    end: &AttemptEnd,
    fate: Fate,
    progress: Option<(i64, i64)>,
) -> Result<Option<Fate>, postgres::Error> {
    let (done, total) = progress.unzip();
    let after = match fate {
        Fate::Retry(after) => after.as_secs_f64(),
        _ => 0.0,
    };
    let (limit_name, limit_value) = end
        .limit
        .as_ref()
        .map_or((None, None), |(name, value)| (Some(name), Some(value)));
    let written = client.query_opt(
        statement,
        &[
            &attempt_id,
            &end.outcome.as_str(),
            &end.detail,
            &end.exit_status,
            &end.signal,
            &limit_name,
            &limit_value,
            &end.pid,
            &end.output_tail,
            &fate.state(),
            &after,
            &done,
            &total,
        ],
    )?;
    Ok(written.map(|row| match row.get::<_, String>(0).as_str() {
        "cancelled" => Fate::Cancelled,
        _ => fate,
    }))
}

/// How long `config`'s kind `kind` waits before the attempt after `failed` of job `job`
/// (a kind this host does not know: the default).
fn retry_delay(config: &Config, kind: &str, job: i64, failed: u32) -> Duration {
    config
        .job
        .iter()
        .find(|known| known.name == kind)
        .map_or_else(
            || default_retry_delay(job, failed),
            |known: &JobKind| known.retry_delay(job, failed),
        )
}

/// The value of limit `limit` for jobs of kind `kind` under `config`, in words: the kind's
/// own, else the top-level one.
fn limit_value(config: &Config, kind: &str, limit: &str) -> Option<String> {
    let known = config.job.iter().find(|known| known.name == kind);
    match limit {
        "limit_memory_hard" => {
            let bytes = known
                .and_then(|known| known.limit_memory_hard)
                .unwrap_or(config.limit_memory_hard);
            Some(crate::format::mib(bytes.bytes()))
        }
        "limit_memory_soft" => Some(crate::format::mib(config.limit_memory_soft.bytes())),
        "limit_time_real" => {
            let time = known
                .and_then(|known| known.limit_time_real)
                .unwrap_or(config.limit_time_real);
            Some(time.to_string())
        }
        _ => None,
    }
}

/// Records as lost the running attempts whose lease has passed (their host died, or lost
/// the database for longer than the lease), and writes their jobs' fates.
fn record_lapsed(tx: &mut Transaction<'_>, config: &Config) -> Result<(), postgres::Error> {
    let lapsed = tx.query(
        "SELECT j.id, j.kind, j.attempt, j.max_attempts, j.host, j.worker_pid, \
         to_char(j.lease_until, 'YYYY-MM-DD HH24:MI:SS TZ'), a.id FROM forkwarden.job j \
         JOIN forkwarden.job_attempt a ON a.job = j.id AND a.ended_at IS NULL \
         WHERE j.state = 'running' AND j.lease_until < now() \
         ORDER BY j.lease_until LIMIT $1 FOR UPDATE OF j SKIP LOCKED",
        &[&LAPSED_PER_CLAIM],
    )?;
    for row in lapsed {
        let (job, kind, attempt, max_attempts): (i64, String, i32, i32) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let host: Option<String> = row.get(4);
        let worker_pid: Option<i32> = row.get(5);
        let until: Option<String> = row.get(6);
        let attempt_id: i64 = row.get(7);
        let end = AttemptEnd {
            outcome: Outcome::Lost,
            detail: format!(
                "lost: its job worker (pid {} on {}) stopped renewing its lease (until {})",
                worker_pid.unwrap_or_default(),
                host.as_deref().unwrap_or("?"),
                until.as_deref().unwrap_or("?")
            ),
            exit_status: None,
            signal: None,
            limit: None,
            pid: None,
            output_tail: Vec::new(),
        };
        let attempt = u32::try_from(attempt).unwrap_or(0);
        let delay = retry_delay(config, &kind, job, attempt);
        let fate = fate(
            end.outcome,
            attempt,
            u32::try_from(max_attempts).unwrap_or(1),
            delay,
        );
        let Some(fate) = end_attempt(tx, FINISH, attempt_id, &end, fate, None)? else {
            continue;
        };
        tracing::warn!(
            event = "job_lease_lapsed",
            job,
            kind = kind.as_str(),
            "job {kind} #{job}: {}; {fate}",
            end.detail
        );
    }
    Ok(())
}
