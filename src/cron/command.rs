//! What `forkwarden cron list`, `cron history NAME` and `cron run NAME` do, on the job
//! store (no server needs to run for them).

use std::io;
use std::time::SystemTime;

use super::{Scheduler, describe_time};
use crate::config::Config;
use crate::database::{SCHEMA_VERSION, SchemaStatus};
use crate::format::{columns, elapsed};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot use the cron store ({store}): {source}")]
    Store { store: String, source: io::Error },
    #[error("no [[cron]] job named {name:?} in the config (jobs: {known})")]
    UnknownJob { name: String, known: String },
}

/// The commands' error for a failure of the config's cron store, which it names: the
/// PostgreSQL address, or the directory under `data_dir`.
fn store_error(config: &Config) -> impl Fn(io::Error) -> CommandError + '_ {
    |source| CommandError::Store {
        store: match &config.cron_store {
            Some(url) => url.to_string(),
            None => config.data_dir.join("cron").display().to_string(),
        },
        source,
    }
}

fn scheduler(config: &Config) -> Result<Scheduler<'_>, CommandError> {
    Scheduler::new(config, SystemTime::now(), false).map_err(store_error(config))
}

/// Runs `command` on the file store as the workers' user when this is root and the files are
/// theirs (data_dir is): a link, a FIFO or a hard link they planted there is then worth no
/// more to them than what they could open themselves. A PostgreSQL store is used as is.
fn on_the_store<T>(
    config: &Config,
    command: impl FnOnce() -> Result<T, CommandError>,
) -> Result<T, CommandError> {
    match config
        .data_dir_owner()
        .filter(|_| config.cron_store.is_none())
    {
        Some(workers) => crate::sys::as_user(&workers, command).map_err(store_error(config))?,
        None => command(),
    }
}

/// Every job with its schedule, next run and last result, as a table.
pub fn list(config: &Config) -> Result<String, CommandError> {
    on_the_store(config, || list_jobs(config))
}

fn list_jobs(config: &Config) -> Result<String, CommandError> {
    if config.cron.is_empty() {
        return Ok("no [[cron]] jobs in the config\n".to_string());
    }
    let scheduler = scheduler(config)?;
    let mut rows = vec![
        [
            "NAME",
            "SCHEDULE",
            "NEXT RUN",
            "LAST START",
            "LAST RESULT",
            "FAILURES IN A ROW",
        ]
        .map(str::to_string),
    ];
    let states = scheduler.states().map_err(store_error(config))?;
    for (job, state, running_on) in states {
        let schedule = match (&job.schedule, job.interval) {
            (Some(expression), _) => expression.to_string(),
            (None, Some(interval)) => format!("every {interval}"),
            (None, None) => String::new(),
        };
        let last = if let Some(running_on) = running_on {
            format!("running now ({running_on})")
        } else if state.interrupted() {
            "interrupted: its cron worker died".to_string()
        } else {
            state
                .last_result
                .clone()
                .unwrap_or_else(|| "never run".into())
        };
        rows.push([
            job.name.clone(),
            schedule,
            describe_time(state.next_run_ms),
            describe_time(state.last_start_ms),
            last,
            state.consecutive_failures.to_string(),
        ]);
    }
    Ok(columns(&rows))
}

/// The job of the config named `name`.
fn job_named<'a>(
    scheduler: &Scheduler<'a>,
    config: &Config,
    name: &str,
) -> Result<&'a crate::config::CronJob, CommandError> {
    scheduler
        .jobs()
        .find(|job| job.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = config.cron.iter().map(|job| job.name.as_str()).collect();
            CommandError::UnknownJob {
                name: name.to_string(),
                known: if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                },
            }
        })
}

/// Asks for a run of job `name` now, besides its schedule: the first cron worker to look
/// (within a second) runs it, once, and its next due time stays as it was.
pub fn ask_run(config: &Config, name: &str) -> Result<String, CommandError> {
    on_the_store(config, || {
        let scheduler = scheduler(config)?;
        let job = job_named(&scheduler, config, name)?;
        scheduler.ask_run(job).map_err(store_error(config))
    })?;
    let who = if config.max_cron_threads == 0 {
        "no cron worker runs with this config (max_cron_threads = 0): it runs once one does"
    } else if config.cron_store.is_some() {
        "a cron worker of one of the hosts on the cron store takes it within a second (none \
         running: once one starts)"
    } else {
        "a cron worker of the running server takes it within a second (none running: once one \
         starts)"
    };
    Ok(format!(
        "asked for a run of {name}: {who}; see `forkwarden cron history {name}`\n"
    ))
}

/// Job `name`'s last `count` runs, newest last: a table, or one JSON object per line.
pub fn history(
    config: &Config,
    name: &str,
    count: usize,
    json: bool,
) -> Result<String, CommandError> {
    let store = store_error(config);
    let runs = on_the_store(config, || {
        let scheduler = scheduler(config)?;
        let job = job_named(&scheduler, config, name)?;
        scheduler.history(job, count).map_err(&store)
    })?;
    if json {
        let mut text = String::new();
        for run in &runs {
            text.push_str(
                &crate::format::json_for_terminal(run).map_err(|error| store(error.into()))?,
            );
            text.push('\n');
        }
        return Ok(text);
    }
    if runs.is_empty() {
        return Ok(format!("cron job {name}: no run recorded yet\n"));
    }
    let mut rows = vec![["START", "TOOK", "HOST", "PID", "RESULT"].map(str::to_string)];
    let mut text = String::new();
    for run in &runs {
        let took = u64::try_from(run.end_ms.saturating_sub(run.start_ms)).unwrap_or(0);
        rows.push([
            describe_time(Some(run.start_ms)),
            elapsed(std::time::Duration::from_millis(took)),
            run.host.clone(),
            run.pid
                .map_or_else(|| "-".to_string(), |pid| pid.to_string()),
            run.result.clone(),
        ]);
    }
    text.push_str(&columns(&rows));
    if let Some(last) = runs.last().filter(|run| !run.output_tail.is_empty()) {
        text.push_str(&format!(
            "\nlast lines of the last run ({}):\n",
            describe_time(Some(last.start_ms))
        ));
        for line in &last.output_tail {
            text.push_str(&format!("  {line}\n"));
        }
    }
    Ok(text)
}

/// For `forkwarden check`: whether the PostgreSQL `cron_store` answers and holds the tables
/// of this version (None: runs are kept in files). Creates nothing.
pub fn check_store(config: &Config) -> Option<Result<String, String>> {
    let url = config.cron_store.as_ref()?;
    let store = super::postgres::PgStore::new(url, None, false);
    let version = SCHEMA_VERSION;
    Some(match store.schema_status() {
        Ok(SchemaStatus::Current) => Ok(format!(
            "cron_store {url}: reachable; its tables are current (schema forkwarden, version \
             {version})"
        )),
        Ok(SchemaStatus::Absent) => Ok(format!(
            "cron_store {url}: reachable; its tables are made by the first cron worker that \
             starts (schema forkwarden, version {version}; the user needs CREATE on the \
             database)"
        )),
        Ok(SchemaStatus::Older(found)) => Ok(format!(
            "cron_store {url}: reachable; its tables (version {found}) are brought to version \
             {version} by the first cron worker that starts"
        )),
        Ok(SchemaStatus::Newer(found)) => Err(format!(
            "cron_store {url}: its tables have version {found}, newer than this forkwarden's \
             ({version}): run the forkwarden that made them"
        )),
        Err(error) => Err(error.to_string()),
    })
}
