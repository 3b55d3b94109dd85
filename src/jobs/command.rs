//! What `forkwarden job enqueue|list|show|retry|cancel` do, on the queue in the config's
//! `cron_store` (no server needs to run for them).

use std::time::Duration;

use super::JobQueue;
use super::store::EnqueueOptions;
use crate::config::Config;
use crate::database::StoreError;
use crate::format::columns;

/// Most jobs `job list` prints.
const LIST_LIMIT: i64 = 100;
/// The states a job can be in, as `job list --state` takes them.
const STATES: [&str; 5] = ["pending", "running", "done", "failed", "cancelled"];

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(
        "no job queue: the config sets no cron_store (jobs live in a PostgreSQL database every \
         host shares)"
    )]
    NoStore,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("--args: not JSON ({0}); e.g. --args '{{\"invoice\": 42}}'")]
    Args(String),
    #[error("--state: {0:?} is not a state; expected one of {states}", states = STATES.join(", "))]
    State(String),
    #[error("no job #{0}")]
    NoSuchJob(i64),
}

fn queue(config: &Config) -> Result<JobQueue, CommandError> {
    let url = config.cron_store.as_ref().ok_or(CommandError::NoStore)?;
    Ok(JobQueue::new(url, None, false))
}

/// What `job enqueue` is given.
pub struct EnqueueRequest {
    pub kind: String,
    pub args: String,
    pub priority: Option<i32>,
    pub delay: Option<Duration>,
    pub channel: Option<String>,
    pub identity_key: Option<String>,
    pub max_attempts: Option<i32>,
}

/// Enqueues a job; says its id.
pub fn enqueue(config: &Config, request: &EnqueueRequest) -> Result<String, CommandError> {
    let args: serde_json::Value = serde_json::from_str(&request.args)
        .map_err(|error| CommandError::Args(error.to_string()))?;
    let options = EnqueueOptions {
        priority: request.priority,
        delay: request.delay,
        channel: request.channel.clone(),
        identity_key: request.identity_key.clone(),
        max_attempts: request.max_attempts,
    };
    let queue = queue(config)?;
    // This config's kinds are known to the database even before a job worker starts.
    if !config.job.is_empty() {
        queue.register(config)?;
    }
    let id = queue.enqueue(&request.kind, &args.to_string(), &options)?;
    Ok(format!("{id}\n"))
}

/// The newest jobs as a table (or one JSON object per line).
pub fn list(
    config: &Config,
    state: Option<&str>,
    channel: Option<&str>,
    json: bool,
) -> Result<String, CommandError> {
    if let Some(state) = state.filter(|state| !STATES.contains(state)) {
        return Err(CommandError::State(state.to_string()));
    }
    let jobs = queue(config)?.list(state, channel, LIST_LIMIT)?;
    if json {
        return Ok(jobs.iter().map(json_line).collect());
    }
    if jobs.is_empty() {
        return Ok("no jobs\n".to_string());
    }
    let mut rows = vec![
        [
            "id", "kind", "channel", "state", "attempt", "enqueued", "result",
        ]
        .map(String::from),
    ];
    for job in &jobs {
        rows.push([
            job.id.to_string(),
            job.kind.clone(),
            job.channel.clone(),
            job.state.clone(),
            format!("{}/{}", job.attempt, job.max_attempts),
            job.enqueued_at.clone(),
            job.result.clone().unwrap_or_default(),
        ]);
    }
    Ok(columns(&rows))
}

fn json_line(value: &impl serde::Serialize) -> String {
    format!("{}\n", serde_json::to_string(value).unwrap_or_default())
}

/// One job: its fields, args, and each attempt with how it ended and its last lines.
pub fn show(config: &Config, id: i64, json: bool) -> Result<String, CommandError> {
    let (job, attempts) = queue(config)?
        .show(id)?
        .ok_or(CommandError::NoSuchJob(id))?;
    if json {
        return Ok(json_line(
            &serde_json::json!({ "job": job, "attempts": attempts }),
        ));
    }
    let mut text = format!(
        "job #{} {} ({}), channel {}, priority {}\n  args: {}\n  attempts: {} of {}\n  \
         enqueued {}, due {}\n",
        job.id,
        job.kind,
        job.state,
        job.channel,
        job.priority,
        job.args,
        job.attempt,
        job.max_attempts,
        job.enqueued_at,
        job.eta
    );
    if let Some(key) = &job.identity_key {
        text.push_str(&format!("  identity key: {key}\n"));
    }
    if let Some(progress) = &job.progress {
        text.push_str(&format!("  progress: {progress}\n"));
    }
    if let Some(result) = &job.result {
        text.push_str(&format!("  result: {result}\n"));
    }
    for attempt in &attempts {
        text.push_str(&format!(
            "attempt {} on {} (job worker pid {}{}): started {}, {}\n",
            attempt.attempt,
            attempt.host,
            attempt.worker_pid,
            attempt
                .pid
                .map_or(String::new(), |pid| format!(", job pid {pid}")),
            attempt.started_at,
            match (&attempt.ended_at, &attempt.outcome) {
                (Some(ended), Some(outcome)) => format!(
                    "ended {ended}: {outcome}: {}",
                    attempt.detail.as_deref().unwrap_or("")
                ),
                _ => "running".to_string(),
            }
        ));
        if let Some(limit) = &attempt.limit {
            text.push_str(&format!("  limit: {limit}\n"));
        }
        for line in &attempt.output_tail {
            text.push_str(&format!("  | {line}\n"));
        }
    }
    Ok(text)
}

/// Makes an ended job pending again.
pub fn retry(config: &Config, id: i64) -> Result<String, CommandError> {
    match queue(config)?.retry(id)?.as_deref() {
        None => Err(CommandError::NoSuchJob(id)),
        Some(state @ ("pending" | "running")) => {
            Ok(format!("job #{id} is {state}: nothing to retry\n"))
        }
        Some(state) => Ok(format!("job #{id} was {state}; it is pending again\n")),
    }
}

/// Cancels a pending job, or asks a running one to stop.
pub fn cancel(config: &Config, id: i64) -> Result<String, CommandError> {
    match queue(config)?.cancel(id)?.as_deref() {
        None => Err(CommandError::NoSuchJob(id)),
        Some("pending") => Ok(format!("job #{id} cancelled\n")),
        Some("running") => Ok(format!(
            "job #{id} is running: its job worker stops it within a second (SIGTERM, then \
             SIGKILL after 5s)\n"
        )),
        Some(state) => Ok(format!("job #{id} is {state}: nothing to cancel\n")),
    }
}
