//! What the master knows about the server at one moment: the workers (from the pool and
//! their scoreboard rows, with memory and CPU read from /proc now), the tallies since the
//! start, the cron jobs. `forkwarden status` gets it as JSON (control.rs), Prometheus and
//! the status page get it from the metrics listener (metrics.rs).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::Master;
use super::lifecycle::{Departure, Lifecycle};
use super::pool::{RunCounts, Worker};
use super::template::{Template, TemplateState};
use crate::id::Role;
use crate::jobs::Outcome;
use crate::scoreboard::{
    ChannelCount, Durations, KindFigures, QueueReading, RowSnapshot, WorkerState,
};

#[derive(Debug, Serialize)]
pub(super) struct Survey {
    pub master: MasterSurvey,
    pub limits: LimitSurvey,
    pub http_workers: Headcount,
    pub cron_workers: Headcount,
    pub job_workers: Headcount,
    /// Requests served since the start, by HTTP workers and programs alive or ended (cron
    /// runs and job attempts are counted per job instead).
    pub requests: u64,
    /// Worker ends by cause.
    pub ends: BTreeMap<String, u64>,
    /// Limits enforced, by limit.
    pub limits_enforced: BTreeMap<String, u64>,
    /// The last deaths, newest first.
    pub recent_deaths: Vec<DeathSurvey>,
    pub workers: Vec<WorkerSurvey>,
    /// Requests served and how long they took, by role (ended workers included).
    #[serde(skip)]
    pub served: BTreeMap<&'static str, Durations>,
    /// The cron jobs and how their runs on this server went since it started.
    pub cron_jobs: Vec<CronJobSurvey>,
    /// The `[[job]]` kinds, with the attempts this server's job workers ended (the queue
    /// itself is in the database: `forkwarden job list`).
    pub job_kinds: Vec<JobKindSurvey>,
    /// The channels of the config's kinds, with the jobs of each over every host as a job
    /// worker of this server last read them.
    pub job_channels: Vec<ChannelSurvey>,
    /// When that was (Unix seconds); None before the first reading.
    pub job_queue_read_at: Option<f64>,
}

/// A `[[job]]` kind and the attempts of it this server's job workers ended since it started.
#[derive(Debug, Serialize)]
pub(super) struct JobKindSurvey {
    pub name: String,
    pub attempts: u64,
    /// Attempts that ended done; every other outcome counts as failed.
    pub succeeded: u64,
    pub failed: u64,
    /// By outcome (`done`, `error`, `retry`, `killed`, `timeout`, `lost`, `cancelled`,
    /// `not_started`).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// What became of its jobs after those attempts: `done`, `retried`, `failed` (no attempt
    /// left), `cancelled`.
    pub fates: BTreeMap<&'static str, u64>,
    /// How long its jobs waited from due to start, and how long its attempts ran.
    #[serde(skip)]
    pub waited: Durations,
    #[serde(skip)]
    pub ran: Durations,
    /// Whether a job worker of this server runs one now.
    pub running: bool,
}

/// A channel: its capacity (None: unbounded) and its jobs over every host, as last read.
#[derive(Debug, Serialize)]
pub(super) struct ChannelSurvey {
    /// `None` for the jobs of channels the config does not name.
    pub name: Option<String>,
    pub capacity: Option<u32>,
    pub waiting: Option<u64>,
    pub running: Option<u64>,
}

/// A job's progress, as it last reported it.
#[derive(Clone, Copy, Debug, Serialize)]
pub(super) struct Progress {
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct MasterSurvey {
    pub pid: i32,
    pub generation: u64,
    pub config: String,
    pub uptime_seconds: f64,
    pub stopping: bool,
    pub rss_bytes: Option<u64>,
    /// Where HTTP workers are reached (`http://127.0.0.1:8069`), while the socket is open.
    pub listening: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct LimitSurvey {
    pub limit_memory_soft: u64,
    pub limit_memory_hard: u64,
    pub limit_time_real: f64,
    /// What a cron job may take (`limit_time_real_cron`, or `limit_time_real` for -1).
    pub limit_time_real_cron: f64,
    pub limit_time_cpu: f64,
    pub limit_request: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct Headcount {
    pub wanted: u32,
    pub running: usize,
}

#[derive(Debug, Serialize)]
pub(super) struct DeathSurvey {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub pid: i32,
    pub line: String,
}

#[derive(Debug, Serialize)]
pub(super) struct WorkerSurvey {
    pub role: &'static str,
    /// The program's name, for a `[[program]]` instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<&'static str>,
    pub slot: u32,
    pub pid: i32,
    pub generation: u64,
    pub state: WorkerStateName,
    /// `METHOD /target` (or `job NAME`) being served, and for how long.
    pub request: Option<String>,
    pub busy_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub requests: u64,
    pub uptime_seconds: f64,
    /// What a program last said of itself (sd_notify STATUS=).
    pub status: Option<String>,
    /// A job worker's job's progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum WorkerStateName {
    Booting,
    Idle,
    Busy,
    Retiring,
    Killed,
}

impl WorkerStateName {
    pub const ALL: [Self; 5] = [
        Self::Booting,
        Self::Idle,
        Self::Busy,
        Self::Retiring,
        Self::Killed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Booting => "booting",
            Self::Idle => "idle",
            Self::Busy => "busy",
            Self::Retiring => "retiring",
            Self::Killed => "killed",
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct CronJobSurvey {
    pub name: String,
    /// Runs that ended since the server started, on this server.
    pub runs: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Whether a cron worker of this server is running it now.
    pub running: bool,
}

/// A preload template as it is now, as a row of the workers' table (role `template`):
/// its memory is what the workers forked from it share.
fn template_survey(template: &Template, now: Instant) -> WorkerSurvey {
    let state = match template.state {
        TemplateState::Loading { .. } => WorkerStateName::Booting,
        TemplateState::Ready => WorkerStateName::Idle,
        TemplateState::Leaving { .. } => WorkerStateName::Retiring,
    };
    WorkerSurvey {
        role: "template",
        program: None,
        slot: 0,
        pid: template.pid.as_raw(),
        generation: template.generation,
        state,
        request: None,
        busy_seconds: None,
        rss_bytes: crate::proctree::memory(template.pid, false).map(|memory| memory.rss),
        cpu_seconds: cpu_seconds(template.pid.as_raw()),
        requests: 0,
        uptime_seconds: now
            .saturating_duration_since(template.started)
            .as_secs_f64(),
        status: template.exec.status.clone(),
        progress: None,
    }
}

/// The template's spare pair, as rows of the workers' table (role `spare`): the middle
/// process and the worker forked in advance, waiting for the next fork request. Found
/// below the template in its process group (what it forks for jobs and workers moves to
/// groups of their own); shown, never signalled: the template owns them.
fn spare_survey(template: &Template, now: Instant) -> Vec<WorkerSurvey> {
    if !matches!(template.state, TemplateState::Ready) {
        return Vec::new();
    }
    crate::proctree::same_group_below(template.pid)
        .into_iter()
        .map(|pid| WorkerSurvey {
            role: "spare",
            program: None,
            slot: 0,
            pid: pid.as_raw(),
            generation: template.generation,
            state: WorkerStateName::Idle,
            request: None,
            busy_seconds: None,
            rss_bytes: crate::proctree::memory(pid, false).map(|memory| memory.rss),
            cpu_seconds: cpu_seconds(pid.as_raw()),
            requests: 0,
            uptime_seconds: crate::proctree::started_ago(pid)
                .unwrap_or_else(|| now.saturating_duration_since(template.started))
                .as_secs_f64(),
            status: None,
            progress: None,
        })
        .collect()
}

/// One worker as it is now, its row read as `row`.
fn worker_survey(worker: &Worker, row: RowSnapshot, now: Instant) -> WorkerSurvey {
    let state = match (&worker.lifecycle, row.state) {
        (Lifecycle::Leaving(leaving), _) => match leaving.departure {
            Departure::Kill { .. } => WorkerStateName::Killed,
            Departure::Retire { .. } => WorkerStateName::Retiring,
        },
        (_, WorkerState::Booting) => WorkerStateName::Booting,
        (_, WorkerState::Busy) => WorkerStateName::Busy,
        (_, _) => WorkerStateName::Idle,
    };
    let busy = row.busy_for.filter(|_| row.state == WorkerState::Busy);
    // Read now: the master reads idle workers' memory seldom.
    let rss_bytes = crate::proctree::memory(worker.pid, worker.kind.measured_with_children())
        .map(|memory| memory.rss)
        .or(worker.memory.rss);
    WorkerSurvey {
        role: worker.id.role.as_str(),
        program: match worker.id.role {
            Role::Program(name) => Some(name),
            _ => None,
        },
        slot: worker.id.slot,
        pid: worker.pid.as_raw(),
        generation: worker.generation,
        state,
        request: busy.map(|_| row.request.clone()),
        busy_seconds: busy.map(|busy| busy.as_secs_f64()),
        rss_bytes,
        cpu_seconds: cpu_seconds(worker.pid.as_raw()),
        requests: row.requests,
        uptime_seconds: now.saturating_duration_since(worker.started).as_secs_f64(),
        status: worker.kind.program().and_then(|exec| exec.status.clone()),
        progress: busy
            .and(worker.job_figures())
            .and_then(|(_, figures)| figures.progress)
            .map(|(done, total)| Progress { done, total }),
    }
}

impl Master {
    /// The server as it is now.
    pub(super) fn survey(&self) -> Survey {
        let now = Instant::now();
        let config = &self.config;
        let uptime = SystemTime::now()
            .duration_since(self.started_at)
            .unwrap_or_default();
        let mut workers: Vec<&Worker> = self.pool.workers().collect();
        workers.sort_by_key(|worker| (worker.id, worker.generation));
        let mut served = BTreeMap::new();
        for (role, ended) in &self.tally.served_by_ended {
            served.insert(*role, ended.clone());
        }
        let mut running_jobs = Vec::new();
        let mut running_kinds = Vec::new();
        let mut cron_runs = self.tally.cron_runs_by_ended.clone();
        let mut job_attempts = self.tally.job_attempts_by_ended.clone();
        // The freshest reading of the queue among the job workers.
        let mut queue: Option<QueueReading> = None;
        let rows: Vec<WorkerSurvey> = workers
            .iter()
            .map(|worker| {
                let row = worker.row.snapshot();
                served
                    .entry(worker.id.role.as_str())
                    .or_insert_with(Durations::default)
                    .add(&worker.row.durations());
                if let Some((kinds, figures)) = worker.job_figures() {
                    running_kinds.extend(worker.running_job(&row));
                    for (kind, counted) in kinds.iter().zip(&figures.kinds) {
                        job_attempts.entry(kind.clone()).or_default().add(counted);
                    }
                    if let Some(reading) = figures.queue
                        && queue
                            .as_ref()
                            .is_none_or(|freshest| freshest.read_at_ms < reading.read_at_ms)
                    {
                        queue = Some(reading);
                    }
                } else {
                    running_jobs.extend(worker.running_job(&row));
                    for (job, runs) in worker.run_counts() {
                        cron_runs.entry(job.to_string()).or_default().add(runs);
                    }
                }
                worker_survey(worker, row, now)
            })
            .collect();
        let mut rows = rows;
        for template in self.templates.iter() {
            rows.push(template_survey(template, now));
            rows.extend(spare_survey(template, now));
        }
        // Workers alive and ended, every role that serves requests: a cron worker's runs
        // are counted per job (`cron_runs`), not as requests.
        let requests = served
            .iter()
            .filter(|(role, _)| ![Role::Cron.as_str(), Role::Job.as_str()].contains(role))
            .fold(0, |sum: u64, (_, served)| sum.saturating_add(served.count));
        let tally = &self.tally;
        let headcount = |role| Headcount {
            wanted: self.pool.wanted(role),
            running: self.pool.count(role),
        };
        Survey {
            master: MasterSurvey {
                pid: self.pid.as_raw(),
                generation: self.pool.generation(),
                config: self.source.describe(),
                uptime_seconds: uptime.as_secs_f64(),
                stopping: self.phase.is_stopping(),
                rss_bytes: crate::proctree::memory(self.pid, false).map(|memory| memory.rss),
                listening: self
                    .sockets
                    .http()
                    .and_then(|listener| listener.local_addr().ok())
                    .map(|address| format!("http://{address}")),
            },
            limits: LimitSurvey {
                limit_memory_soft: config.limit_memory_soft.bytes(),
                limit_memory_hard: config.limit_memory_hard.bytes(),
                limit_time_real: config.limit_time_real.duration().as_secs_f64(),
                limit_time_real_cron: config.cron_time_limit().as_secs_f64(),
                limit_time_cpu: config.limit_time_cpu.duration().as_secs_f64(),
                limit_request: config.limit_request,
            },
            http_workers: headcount(Role::Http),
            cron_workers: headcount(Role::Cron),
            job_workers: headcount(Role::Job),
            requests,
            ends: tally.ends.clone(),
            limits_enforced: tally.limits.clone(),
            recent_deaths: tally
                .recent
                .iter()
                .rev()
                .map(|death| DeathSurvey {
                    at: death
                        .at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |at| at.as_secs()),
                    pid: death.pid,
                    line: death.line.clone(),
                })
                .collect(),
            workers: rows,
            served,
            cron_jobs: tasks(
                self.config.cron.iter().map(|job| &job.name),
                &running_jobs,
                &cron_runs,
            ),
            job_kinds: self
                .config
                .job
                .iter()
                .map(|kind| {
                    let counted = job_attempts.remove(&kind.name).unwrap_or_default();
                    job_kind_survey(&kind.name, counted, running_kinds.contains(&kind.name))
                })
                .collect(),
            job_channels: channels(config, queue.as_ref()),
            job_queue_read_at: queue.map(|reading| reading.read_at_ms as f64 / 1000.0),
        }
    }
}

/// The cron jobs (or job kinds) `names` of the config with the runs (attempts) this
/// server's workers ended since it started (each host counts its own), and whether one runs
/// now. Counted in memory from the workers' rows: the master never reads the job files under
/// data_dir, which the workers' user can write, nor the database (`forkwarden cron list`
/// and `forkwarden job list` read the stores).
fn tasks<'a>(
    names: impl Iterator<Item = &'a String>,
    running: &[String],
    runs: &BTreeMap<String, RunCounts>,
) -> Vec<CronJobSurvey> {
    names
        .map(|name| {
            let counted = runs.get(name).copied().unwrap_or_default();
            CronJobSurvey {
                name: name.clone(),
                runs: counted.succeeded.saturating_add(counted.failed),
                succeeded: counted.succeeded,
                failed: counted.failed,
                running: running.contains(name),
            }
        })
        .collect()
}

/// A kind's survey from the attempts counted.
fn job_kind_survey(name: &str, counted: KindFigures, running: bool) -> JobKindSurvey {
    let attempts = counted
        .outcomes
        .iter()
        .fold(0u64, |sum, count| sum.saturating_add(*count));
    let succeeded = counted.outcomes[Outcome::Done.index()];
    JobKindSurvey {
        name: name.to_string(),
        attempts,
        succeeded,
        failed: attempts.saturating_sub(succeeded),
        outcomes: Outcome::ALL
            .iter()
            .map(|outcome| (outcome.as_str(), counted.outcomes[outcome.index()]))
            .collect(),
        fates: crate::jobs::Fate::NAMES
            .iter()
            .zip(counted.fates)
            .map(|(name, count)| (*name, count))
            .collect(),
        waited: counted.waited,
        ran: counted.ran,
        running,
    }
}

/// The config's channels with their capacity and, once read, their jobs; then the jobs of
/// the channels it does not name, if there are any.
fn channels(config: &crate::config::Config, queue: Option<&QueueReading>) -> Vec<ChannelSurvey> {
    let count = |index: usize| queue.and_then(|reading| reading.channels.get(index).copied());
    let names = config.job_channels();
    let mut channels: Vec<ChannelSurvey> = names
        .iter()
        .enumerate()
        .map(|(index, name)| ChannelSurvey {
            name: Some((*name).to_string()),
            capacity: config
                .channel
                .iter()
                .find(|channel| channel.name == *name)
                .map(|channel| channel.capacity),
            waiting: count(index).map(|count| count.waiting),
            running: count(index).map(|count| count.running),
        })
        .collect();
    if let Some(others) = count(names.len()).filter(|count| *count != ChannelCount::default()) {
        channels.push(ChannelSurvey {
            name: None,
            capacity: None,
            waiting: Some(others.waiting),
            running: Some(others.running),
        });
    }
    channels
}

/// CPU seconds (user + system) process `pid` has used, from /proc.
fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    Some((stat.utime + stat.stime) as f64 / ticks)
}
