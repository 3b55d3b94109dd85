//! forkwarden's tables, in their own schema `forkwarden`, and their versions: each version
//! is a step applied once, in order, under a transaction-scoped advisory lock (hosts that
//! start together wait for one another). A database with a newer version is left alone.

use postgres::Client;
use tracing::info;

/// The version of the tables below; a database with a newer one is left alone.
pub const SCHEMA_VERSION: i32 = 2;

/// Version 1: cron runs claimed across hosts (see `cron::postgres`).
const V1_CRON: &str = "
CREATE TABLE forkwarden.cron_job (
    name text PRIMARY KEY,
    -- When the job is next due (the clock of the host that claimed its last run).
    next_run timestamptz,
    -- `forkwarden cron run NAME` asked for a run now.
    run_asked boolean NOT NULL DEFAULT false,
    runs bigint NOT NULL DEFAULT 0,
    succeeded bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    consecutive_failures integer NOT NULL DEFAULT 0
);
CREATE TABLE forkwarden.cron_run (
    id bigserial PRIMARY KEY,
    job text NOT NULL REFERENCES forkwarden.cron_job (name) ON DELETE CASCADE,
    host text NOT NULL,
    -- The cron worker that claimed it, and the job's own process once it ended.
    worker_pid integer NOT NULL,
    pid integer,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    -- Until when the claim holds unless renewed (the database's clock); NULL once ended.
    lease_until timestamptz,
    result text,
    succeeded boolean,
    exit_status integer,
    signal integer,
    output_tail text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX cron_run_by_job ON forkwarden.cron_run (job, id);
-- At most one open run per job: the database itself refuses a second one.
CREATE UNIQUE INDEX cron_run_one_open ON forkwarden.cron_run (job) WHERE ended_at IS NULL;
";

/// Version 2: the job queue (see `jobs`).
const V2_JOBS: &str = r#"
-- The kinds the servers on this database run ([[job]]), written by each job worker at its
-- start: what `enqueue` accepts, and each kind's default channel and attempts.
CREATE TABLE forkwarden.job_kind (
    name text PRIMARY KEY,
    channel text NOT NULL,
    max_attempts integer NOT NULL CHECK (max_attempts > 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Channels with a capacity ([[channel]]): never more running jobs of the channel at once,
-- over every host.
CREATE TABLE forkwarden.job_channel (
    name text PRIMARY KEY,
    capacity integer NOT NULL CHECK (capacity > 0)
);
CREATE TABLE forkwarden.job (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    channel text NOT NULL,
    args jsonb NOT NULL DEFAULT '{}',
    -- Lower runs first (queue_job's convention).
    priority integer NOT NULL DEFAULT 10,
    -- Not run before this time (the database's clock).
    eta timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    -- Attempts started so far.
    attempt integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL CHECK (max_attempts > 0),
    identity_key text,
    progress_done bigint,
    progress_total bigint,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    ended_at timestamptz,
    -- The job worker of the running attempt (or of the last one).
    host text,
    worker_pid integer,
    -- Until when the running attempt holds unless renewed; NULL unless running.
    lease_until timestamptz,
    cancel_asked boolean NOT NULL DEFAULT false,
    -- How it ended, in words (the last attempt's).
    result text
);
CREATE INDEX job_waiting ON forkwarden.job (priority, eta, id) WHERE state = 'pending';
CREATE INDEX job_running ON forkwarden.job (channel) WHERE state = 'running';
CREATE INDEX job_ended ON forkwarden.job (ended_at) WHERE state IN ('done', 'failed', 'cancelled');
-- One pending or running job per identity key.
CREATE UNIQUE INDEX job_identity ON forkwarden.job (identity_key)
    WHERE identity_key IS NOT NULL AND state IN ('pending', 'running');
CREATE TABLE forkwarden.job_attempt (
    id bigserial PRIMARY KEY,
    job bigint NOT NULL REFERENCES forkwarden.job (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    host text NOT NULL,
    worker_pid integer NOT NULL,
    -- The job's own process.
    pid integer,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    -- done, error, retry, killed, timeout, lost, cancelled.
    outcome text,
    -- In words: the exception, the signal, the limit with its value.
    detail text,
    exit_status integer,
    signal integer,
    limit_name text,
    limit_value text,
    output_tail text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX job_attempt_by_job ON forkwarden.job_attempt (job, id);
-- Never two attempts of one job at once: the database itself refuses a second.
CREATE UNIQUE INDEX job_attempt_one_open ON forkwarden.job_attempt (job) WHERE ended_at IS NULL;
CREATE INDEX job_attempt_open_by_worker ON forkwarden.job_attempt (host, worker_pid)
    WHERE ended_at IS NULL;

-- Enqueues a job in the caller's transaction: it exists if and only if that transaction
-- commits, and the NOTIFY (sent at commit) wakes the job workers. A second enqueue with the
-- identity key of a pending or running job returns that job's id. An unknown kind is refused.
CREATE FUNCTION forkwarden.enqueue(
    kind text,
    args jsonb DEFAULT '{}',
    priority integer DEFAULT NULL,
    eta timestamptz DEFAULT NULL,
    channel text DEFAULT NULL,
    identity_key text DEFAULT NULL,
    max_attempts integer DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    known forkwarden.job_kind;
    existing bigint;
    created bigint;
BEGIN
    SELECT * INTO known FROM forkwarden.job_kind k WHERE k.name = enqueue.kind;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'forkwarden.enqueue: unknown job kind "%"; the kinds this database knows: %',
            kind, coalesce((SELECT string_agg(k.name, ', ' ORDER BY k.name)
                            FROM forkwarden.job_kind k), 'none')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'declare it in a [[job]] table of the server''s config';
    END IF;
    IF max_attempts IS NOT NULL AND max_attempts < 1 THEN
        RAISE EXCEPTION 'forkwarden.enqueue: max_attempts must be 1 or more, not %', max_attempts
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF identity_key IS NOT NULL THEN
        -- Concurrent enqueues of one key wait for one another here, so the second sees the
        -- first's job once it commits (or inserts its own if the first rolled back).
        PERFORM pg_advisory_xact_lock(hashtextextended('forkwarden.job:' || identity_key, 0));
        SELECT j.id INTO existing FROM forkwarden.job j
            WHERE j.identity_key = enqueue.identity_key AND j.state IN ('pending', 'running');
        IF FOUND THEN
            RETURN existing;
        END IF;
    END IF;
    INSERT INTO forkwarden.job (kind, channel, args, priority, eta, max_attempts, identity_key)
        VALUES (kind, coalesce(channel, known.channel), coalesce(args, '{}'),
                coalesce(priority, 10), coalesce(eta, now()),
                coalesce(max_attempts, known.max_attempts), identity_key)
        RETURNING id INTO created;
    PERFORM pg_notify('forkwarden_job', coalesce(channel, known.channel));
    RETURN created;
END
$$;
"#;

/// The steps from nothing to [`SCHEMA_VERSION`], each bringing the tables to its version.
const STEPS: [(i32, &str); 2] = [(1, V1_CRON), (2, V2_JOBS)];

/// Key of the transaction-scoped advisory lock under which the schema is changed.
const SCHEMA_LOCK: i64 = 0x666f_726b_7761_7264; // "forkward"

/// Whether the database holds forkwarden's tables (`forkwarden check`).
pub enum SchemaStatus {
    Absent,
    Current,
    Older(i32),
    Newer(i32),
}

/// The version of the tables, without changing anything.
pub fn status(client: &mut Client) -> Result<SchemaStatus, postgres::Error> {
    let present: bool = client
        .query_one(
            "SELECT to_regclass('forkwarden.schema_version') IS NOT NULL",
            &[],
        )?
        .get(0);
    if !present {
        return Ok(SchemaStatus::Absent);
    }
    let version: Option<i32> = client
        .query_one("SELECT max(version) FROM forkwarden.schema_version", &[])?
        .get(0);
    Ok(match version {
        None => SchemaStatus::Absent,
        Some(SCHEMA_VERSION) => SchemaStatus::Current,
        Some(older) if older < SCHEMA_VERSION => SchemaStatus::Older(older),
        Some(newer) => SchemaStatus::Newer(newer),
    })
}

/// Applies the steps the database has not had yet, in one transaction; refuses a newer
/// schema.
pub fn bring_up_to_date(client: &mut Client) -> Result<(), String> {
    let describe = |error: postgres::Error| super::describe(&error);
    let mut tx = client.transaction().map_err(describe)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(describe)?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS forkwarden; CREATE TABLE IF NOT EXISTS \
         forkwarden.schema_version (version integer NOT NULL)",
    )
    .map_err(describe)?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM forkwarden.schema_version",
            &[],
        )
        .map_err(describe)?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(format!(
            "its forkwarden schema has version {found}, which this forkwarden (version \
             {SCHEMA_VERSION}) does not know: run the forkwarden that made it"
        ));
    }
    for (version, step) in STEPS.iter().filter(|(version, _)| *version > found) {
        tx.batch_execute(step).map_err(describe)?;
        tx.execute(
            "INSERT INTO forkwarden.schema_version (version) VALUES ($1)",
            &[version],
        )
        .map_err(describe)?;
    }
    if found < SCHEMA_VERSION {
        info!(
            event = "store_schema_created",
            from = found,
            version = SCHEMA_VERSION,
            "brought forkwarden's tables from version {found} to {SCHEMA_VERSION} (schema forkwarden)"
        );
    }
    tx.commit().map_err(describe)
}
