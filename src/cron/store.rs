//! What is remembered about each job across runs and restarts, and the lock that makes a
//! run exclusive: both files under `data_dir/cron/`.
//!
//! `NAME.state.toml` holds the job's next due time and last result; it is rewritten
//! atomically (temporary file, fsync, rename), so a crash leaves the old or the new state,
//! never half of one. `NAME.lock` is held with `flock(2)` by the cron worker running the
//! job; the kernel releases it when that process dies, so a crash never leaves a job stuck
//! as running, and two cron workers (or hosts sharing the directory) never run it at once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// A job's persisted state. Times are milliseconds since the Unix epoch. Every field has a
/// default, so state files written by older versions still load.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct JobState {
    /// When the job is next due.
    pub next_run_ms: Option<i64>,
    /// When the last run started (written when the run is claimed).
    pub last_start_ms: Option<i64>,
    /// When the last run ended (absent or older than the start: it never finished).
    pub last_end_ms: Option<i64>,
    /// How the last run ended: `exited with status 0`, `killed: timeout exceeded ...`.
    pub last_result: Option<String>,
    pub last_succeeded: Option<bool>,
    /// Failed runs in a row (a non-zero exit, a signal, a timeout, an interrupted run).
    pub consecutive_failures: u32,
    /// Runs started since the state was created.
    pub runs: u64,
}

impl JobState {
    pub fn next_run(&self) -> Option<SystemTime> {
        self.next_run_ms.map(from_ms)
    }

    /// Whether the last run started but never recorded its end (its cron worker died).
    pub fn interrupted(&self) -> bool {
        match (self.last_start_ms, self.last_end_ms) {
            (Some(start), Some(end)) => start > end,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// The directory of job states and locks.
#[derive(Clone, Debug)]
pub struct JobStore {
    dir: PathBuf,
}

/// The exclusive right to run one job, until dropped (or the process dies).
pub struct JobLock {
    _lock: Flock<File>,
}

impl JobStore {
    /// The store under `data_dir`, created if needed.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join("cron");
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn state_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.state.toml"))
    }

    /// The job's state; a job never seen has the default state. An unreadable or corrupt
    /// state file is an error, which the caller logs (and then starts the job afresh).
    pub fn load(&self, name: &str) -> io::Result<JobState> {
        match fs::read_to_string(self.state_path(name)) {
            Ok(text) => toml::from_str(&text).map_err(io::Error::other),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(JobState::default()),
            Err(error) => Err(error),
        }
    }

    /// Writes the job's state atomically.
    pub fn save(&self, name: &str, state: &JobState) -> io::Result<()> {
        let path = self.state_path(name);
        let temporary = self
            .dir
            .join(format!(".{name}.state.{}.tmp", std::process::id()));
        let text = toml::to_string(state).map_err(io::Error::other)?;
        let written = (|| {
            let mut file = File::create(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&temporary, &path)?;
            // The rename itself must reach the disk too.
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        written
    }

    /// Takes the job's lock if no one holds it; None when another process runs the job.
    pub fn try_lock(&self, name: &str) -> io::Result<Option<JobLock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(format!("{name}.lock")))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(JobLock { _lock: lock })),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(errno.into()),
        }
    }
}

pub fn to_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub fn from_ms(ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_missing_one_is_default() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        assert_eq!(store.load("report").unwrap(), JobState::default());
        let state = JobState {
            next_run_ms: Some(1_764_115_200_000),
            last_start_ms: Some(1_764_100_000_000),
            last_end_ms: Some(1_764_100_001_500),
            last_result: Some("exited with status 0".into()),
            last_succeeded: Some(true),
            consecutive_failures: 0,
            runs: 3,
        };
        store.save("report", &state).unwrap();
        assert_eq!(store.load("report").unwrap(), state);
        assert!(!state.interrupted());
    }

    #[test]
    fn a_run_without_an_end_was_interrupted() {
        let state = JobState {
            last_start_ms: Some(2_000),
            last_end_ms: Some(1_000),
            ..JobState::default()
        };
        assert!(state.interrupted());
    }

    #[test]
    fn the_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let held = store.try_lock("report").unwrap().expect("free at first");
        assert!(
            store.try_lock("report").unwrap().is_none(),
            "second holder refused"
        );
        assert!(
            store.try_lock("other").unwrap().is_some(),
            "locks are per job"
        );
        drop(held);
        assert!(store.try_lock("report").unwrap().is_some());
    }

    #[test]
    fn times_convert_both_ways() {
        let now = SystemTime::now();
        let back = from_ms(to_ms(now));
        assert!(now.duration_since(back).unwrap() < Duration::from_millis(1));
    }
}
