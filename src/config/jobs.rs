//! `[[job]]` and `[[channel]]`: the kinds of job the job workers run from the queue in the
//! shared database, and the channels that bound how many run at once across hosts.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, TimeSpan};

/// The channel a kind runs in when it names none (queue_job's).
pub const ROOT_CHANNEL: &str = "root";
/// Attempts of a job whose kind says nothing.
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const MAX_ATTEMPTS_BOUND: u32 = 1000;
/// The default retry delay: this after the first failed attempt, doubled after each one
/// after it, up to [`RETRY_CAP`], each time give or take a quarter (jitter, so that jobs that
/// failed together do not all come back together).
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(3600);
const MAX_NAME: usize = 100;

/// `[[job]]`: a kind of job, what runs it and how it is retried and limited.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobKind {
    /// What `enqueue` names: letters, digits, '.', '_' or '-'.
    pub name: String,
    /// Program and arguments, run once per job (its args as JSON on its standard input).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Or: a function of the preloaded application (`module:function`), called with the
    /// job's args in a process forked from the template: no interpreter start per job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// Working directory of a command (relative to the config file's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Variables added to the job's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The channel its jobs run in unless an enqueue names another.
    #[serde(default = "root_channel")]
    pub channel: String,
    /// Attempts before a job is failed, unless an enqueue says otherwise.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How long to wait before the next attempt, by attempt number: `{ 1 = "10s", 4 =
    /// "1m" }` retries after 10 s from the 1st failed attempt on, after 1 min from the 4th
    /// (queue_job's retry_pattern). Unset: exponential from 0.5 s with jitter.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retry_pattern: BTreeMap<String, TimeSpan>,
    /// Wall-clock limit of one attempt (default: the top-level `limit_time_real`; 0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_time_real: Option<TimeSpan>,
    /// CPU time one attempt's process may use (default: the top-level `limit_time_cpu`; 0:
    /// none); past it the kernel ends it (RLIMIT_CPU, SIGXCPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_time_cpu: Option<TimeSpan>,
    /// Resident memory of the job worker with its job past which the attempt is killed
    /// (default: the top-level `limit_memory_hard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_memory_hard: Option<ByteSize>,
    /// Memory past which the job worker is replaced once the attempt has ended (default:
    /// the top-level `limit_memory_soft`, measured as it says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_memory_soft: Option<ByteSize>,
}

fn root_channel() -> String {
    ROOT_CHANNEL.to_string()
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// What runs a job: the sum of the two ways.
#[derive(Clone, Copy, Debug)]
pub enum JobAction<'a> {
    Command(&'a [String]),
    Call(&'a str),
}

impl JobKind {
    pub fn action(&self) -> JobAction<'_> {
        match &self.call {
            Some(call) => JobAction::Call(call),
            None => JobAction::Command(&self.command),
        }
    }

    /// How long to wait before attempt `failed + 1` of job `job`, after attempt `failed`
    /// did not succeed.
    pub fn retry_delay(&self, job: i64, failed: u32) -> Duration {
        let pattern = self
            .retry_pattern
            .iter()
            .filter_map(|(from, delay)| Some((from.parse::<u32>().ok()?, delay.duration())))
            .filter(|(from, _)| *from <= failed)
            .max_by_key(|(from, _)| *from);
        if let Some((_, delay)) = pattern {
            return delay;
        }
        default_retry_delay(job, failed)
    }
}

/// Exponential from [`RETRY_FIRST`], capped, with a jitter of up to a quarter either way
/// drawn from the job and attempt (the same job retried twice draws the same).
pub fn default_retry_delay(job: i64, failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(20);
    let base = RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_CAP);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (job, failed).hash(&mut hasher);
    // A factor in [0.75, 1.25).
    let factor = 0.75 + (hasher.finish() % 1000) as f64 / 2000.0;
    base.mul_f64(factor)
}

/// The channels a job worker's row counts jobs of: each `[[channel]]` and each kind's
/// channel, once, in name order (jobs enqueued in a channel of no kind are counted apart).
pub fn channel_names<'a>(kinds: &'a [JobKind], channels: &'a [JobChannel]) -> Vec<&'a str> {
    let names: std::collections::BTreeSet<&str> = kinds
        .iter()
        .map(|kind| kind.channel.as_str())
        .chain(channels.iter().map(|channel| channel.name.as_str()))
        .collect();
    names.into_iter().collect()
}

/// `[[channel]]`: never more than `capacity` running jobs of this channel at once, over
/// every host that shares the database.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobChannel {
    pub name: String,
    pub capacity: u32,
}

/// Checks `[[job]]` and `[[channel]]`: the key to blame (under `job[i]` or `channel[i]`)
/// and what is wrong. `preloads`: the application is preloaded (a `call` needs it);
/// `has_store`: a PostgreSQL `cron_store` is set (the queue lives there).
pub fn validate(
    kinds: &[JobKind],
    channels: &[JobChannel],
    preloads: bool,
    has_store: bool,
) -> Result<(), (String, String)> {
    let mut names = std::collections::BTreeSet::new();
    for (index, kind) in kinds.iter().enumerate() {
        let at = |key: &str, message: String| (format!("job[{index}].{key}"), message);
        let name = &kind.name;
        if !usable_name(name) {
            return Err(at(
                "name",
                format!(
                    "job kind name {name:?} is not usable: expected 1 to {MAX_NAME} letters, \
                     digits, '.', '_' or '-'"
                ),
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(at("name", format!("job kind {name:?} is declared twice")));
        }
        if !has_store {
            return Err(at(
                "name",
                format!(
                    "job kind {name:?}: jobs live in a PostgreSQL database that every host \
                     shares; set cron_store = \"postgresql://USER@HOST:PORT/DBNAME\""
                ),
            ));
        }
        let action = super::Action {
            command: &kind.command,
            call: kind.call.as_deref(),
            has_cwd: kind.cwd.is_some(),
        };
        action
            .validate(&format!("job kind {name:?}"), preloads)
            .map_err(|(key, message)| at(key, message))?;
        if !usable_name(&kind.channel) {
            return Err(at(
                "channel",
                format!("channel name {:?} is not usable", kind.channel),
            ));
        }
        if !(1..=MAX_ATTEMPTS_BOUND).contains(&kind.max_attempts) {
            return Err(at(
                "max_attempts",
                format!(
                    "{} is not usable: expected 1 to {MAX_ATTEMPTS_BOUND}",
                    kind.max_attempts
                ),
            ));
        }
        if let Some(cpu) = kind.limit_time_cpu
            && cpu.duration().subsec_nanos() != 0
        {
            return Err(at(
                "limit_time_cpu",
                format!("\"{cpu}\" is not usable: the kernel counts CPU time in whole seconds"),
            ));
        }
        if let (Some(soft), Some(hard)) = (kind.limit_memory_soft, kind.limit_memory_hard)
            && soft.bytes() > hard.bytes()
        {
            return Err(at(
                "limit_memory_soft",
                format!(
                    "limit_memory_soft = \"{soft}\" is larger than limit_memory_hard = \"{hard}\""
                ),
            ));
        }
        for from in kind.retry_pattern.keys() {
            if from.parse::<u32>().map_or(true, |from| from == 0) {
                return Err(at(
                    "retry_pattern",
                    format!(
                        "key {from:?} is not an attempt number; expected e.g. \
                         retry_pattern = {{ 1 = \"10s\", 4 = \"1m\" }}"
                    ),
                ));
            }
        }
    }
    let mut declared = std::collections::BTreeSet::new();
    for (index, channel) in channels.iter().enumerate() {
        let at = |key: &str, message: String| (format!("channel[{index}].{key}"), message);
        if !usable_name(&channel.name) {
            return Err(at(
                "name",
                format!(
                    "channel name {:?} is not usable: expected 1 to {MAX_NAME} letters, \
                     digits, '.', '_' or '-'",
                    channel.name
                ),
            ));
        }
        if !declared.insert(channel.name.as_str()) {
            return Err(at(
                "name",
                format!("channel {:?} is declared twice", channel.name),
            ));
        }
        if channel.capacity == 0 {
            return Err(at(
                "capacity",
                "0 would never run a job; expected 1 or more (leave the channel out for no \
                 bound)"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn usable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(pattern: &[(&str, u64)]) -> JobKind {
        JobKind {
            name: "k".into(),
            command: vec!["true".into()],
            call: None,
            cwd: None,
            env: BTreeMap::new(),
            channel: root_channel(),
            max_attempts: 5,
            retry_pattern: pattern
                .iter()
                .map(|(from, secs)| (from.to_string(), TimeSpan::secs(*secs)))
                .collect(),
            limit_time_real: None,
            limit_time_cpu: None,
            limit_memory_hard: None,
            limit_memory_soft: None,
        }
    }

    #[test]
    fn a_retry_pattern_applies_from_its_attempt_on() {
        let kind = kind(&[("1", 10), ("4", 60)]);
        assert_eq!(kind.retry_delay(7, 1), Duration::from_secs(10));
        assert_eq!(kind.retry_delay(7, 3), Duration::from_secs(10));
        assert_eq!(kind.retry_delay(7, 4), Duration::from_secs(60));
        assert_eq!(kind.retry_delay(7, 50), Duration::from_secs(60));
    }

    #[test]
    fn the_default_retry_doubles_with_jitter_and_is_capped() {
        let kind = kind(&[]);
        for job in 0..200 {
            let first = kind.retry_delay(job, 1);
            assert!(
                first >= Duration::from_millis(375) && first < Duration::from_millis(625),
                "{first:?}"
            );
            let third = kind.retry_delay(job, 3);
            assert!(
                third >= Duration::from_millis(1500) && third < Duration::from_millis(2500),
                "{third:?}"
            );
            assert!(kind.retry_delay(job, 40) < Duration::from_secs(4500));
        }
        let spread: std::collections::BTreeSet<_> =
            (0..50).map(|job| kind.retry_delay(job, 1)).collect();
        assert!(spread.len() > 10, "no jitter: {spread:?}");
    }

    #[test]
    fn a_kind_needs_the_store_and_a_usable_action() {
        let store = |kinds: &[JobKind]| validate(kinds, &[], false, true);
        let mut bad = kind(&[]);
        assert!(
            validate(std::slice::from_ref(&bad), &[], false, false)
                .unwrap_err()
                .1
                .contains("cron_store")
        );
        bad.call = Some("app:run".into());
        assert_eq!(
            store(std::slice::from_ref(&bad)).unwrap_err().0,
            "job[0].call"
        );
        bad.command.clear();
        let (key, message) = store(std::slice::from_ref(&bad)).unwrap_err();
        assert_eq!(key, "job[0].call");
        assert!(message.contains("preload"), "{message}");
        let mut pattern = kind(&[("0", 1)]);
        pattern.name = "p".into();
        assert_eq!(store(&[pattern]).unwrap_err().0, "job[0].retry_pattern");
        let channels = [JobChannel {
            name: "root.csv".into(),
            capacity: 0,
        }];
        assert_eq!(
            validate(&[], &channels, false, true).unwrap_err().0,
            "channel[0].capacity"
        );
    }
}
