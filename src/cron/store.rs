//! What is remembered about each job across runs and restarts, and the lock that makes a
//! run exclusive: both files under `data_dir/cron/`.
//!
//! `NAME.state.toml` holds the job's next due time and last result; it is rewritten
//! atomically (temporary file, fsync, rename), so a crash leaves the old or the new state,
//! never half of one. `NAME.lock` is held with `flock(2)` by the cron worker running the
//! job; the kernel releases it when that process dies, so a crash never leaves a job stuck
//! as running, and two cron workers (or hosts sharing the directory) never run it at once.
//!
//! Nothing here can be turned against the server, whatever the umask: the directories are
//! 0700 and the files 0600, owned by the workers' user; temporary files have unpredictable
//! names and are created exclusively, and no file is opened through a symbolic link.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Mode of data_dir and its `cron` directory: the server's alone.
const PRIVATE_DIR: u32 = 0o700;
/// Mode of state and lock files: no other user may read, replace or lock them.
const PRIVATE_FILE: u32 = 0o600;
/// The largest state file read (one is a few hundred bytes).
const STATE_MAX: usize = 64 << 10;
/// The largest history file read: 2 x `HISTORY_RUNS` runs of 20 lines of 512 bytes at most,
/// and some.
const HISTORY_MAX: usize = 64 << 20;

/// Narrows `dir`, if others may use it, to 0700 (on the directory itself, opened without
/// following a link).
fn narrow(dir: &Path) -> io::Result<()> {
    use nix::fcntl::OFlag;
    let opened = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mode = nix::sys::stat::fstat(&opened)?.st_mode & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "{} was open to other users (mode {mode:o}); made 0700",
            dir.display()
        );
        nix::sys::stat::fchmod(
            &opened,
            nix::sys::stat::Mode::from_bits_truncate(PRIVATE_DIR),
        )?;
    }
    Ok(())
}

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
    /// Runs that ended well, and runs that failed (interrupted ones included), since the
    /// state was created (states written before these were counted start at 0).
    pub succeeded: u64,
    pub failed: u64,
    /// Where the last run was claimed: the host and the cron worker's pid (what an
    /// interrupted run's record names).
    pub last_host: Option<String>,
    pub last_worker_pid: Option<i32>,
}

/// One run of a job, as its history keeps it (`forkwarden cron history NAME`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct RunRecord {
    /// The host the run was on.
    pub host: String,
    /// The job's process (its process group); for an interrupted run, the cron worker's.
    pub pid: Option<i32>,
    pub start_ms: i64,
    /// When it ended; for an interrupted run, when that was noticed; for a run in progress
    /// (in PostgreSQL's history), when it was read.
    pub end_ms: i64,
    /// `exited with status 0`, `killed by SIGTERM`, `interrupted: ...`.
    pub result: String,
    pub succeeded: bool,
    pub exit_status: Option<i32>,
    pub signal: Option<i32>,
    /// The last lines it wrote.
    pub output_tail: Vec<String>,
}

/// Runs kept in a job's history: past twice as many, the oldest go.
pub const HISTORY_RUNS: usize = 100;

impl JobState {
    pub fn next_run(&self) -> Option<SystemTime> {
        self.next_run_ms.map(from_ms)
    }

    /// Counts a run that ended: its result, and the failures in a row.
    pub fn count_end(&mut self, succeeded: bool) {
        self.last_succeeded = Some(succeeded);
        if succeeded {
            self.consecutive_failures = 0;
            self.succeeded = self.succeeded.saturating_add(1);
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.failed = self.failed.saturating_add(1);
        }
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
        DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(&dir)?;
        narrow(&dir)?;
        Ok(Self { dir })
    }

    fn state_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.state.toml"))
    }

    /// The job's state; a job never seen has the default state. An unreadable or corrupt
    /// state file (or anything but a small regular file planted at its name) is an error,
    /// which the caller logs (and then starts the job afresh).
    pub fn load(&self, name: &str) -> io::Result<JobState> {
        match crate::sys::read_small_file(&self.state_path(name), STATE_MAX) {
            Ok(text) => toml::from_str(&String::from_utf8_lossy(&text)).map_err(io::Error::other),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(JobState::default()),
            Err(error) => Err(error),
        }
    }

    /// Writes the job's state atomically, through a temporary file with an unpredictable
    /// name, created exclusively with mode 0600 (nothing planted in its place can be written
    /// through), renamed over the state file.
    pub fn save(&self, name: &str, state: &JobState) -> io::Result<()> {
        let text = toml::to_string(state).map_err(io::Error::other)?;
        let mut file = tempfile::Builder::new()
            .prefix(&format!(".{name}.state."))
            .suffix(".tmp")
            .permissions(fs::Permissions::from_mode(PRIVATE_FILE))
            .tempfile_in(&self.dir)?;
        file.write_all(text.as_bytes())?;
        file.as_file().sync_all()?;
        file.persist(self.state_path(name))
            .map_err(|error| error.error)?;
        // The rename itself must reach the disk too.
        File::open(&self.dir)?.sync_all()
    }

    fn history_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.history.jsonl"))
    }

    /// Adds `record` to the job's history (one JSON line, appended under the job's lock);
    /// past 2 x `HISTORY_RUNS` runs, the file is rewritten with the last ones.
    pub fn append_run(&self, name: &str, record: &RunRecord) -> io::Result<()> {
        let mut line = serde_json::to_string(record).map_err(io::Error::other)?;
        line.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(PRIVATE_FILE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.history_path(name))?;
        file.write_all(line.as_bytes())?;
        let runs = self.history(name, usize::MAX)?;
        if runs.len() > 2 * HISTORY_RUNS {
            let mut text = String::new();
            for run in &runs[runs.len() - HISTORY_RUNS..] {
                text.push_str(&serde_json::to_string(run).map_err(io::Error::other)?);
                text.push('\n');
            }
            let mut file = tempfile::Builder::new()
                .prefix(&format!(".{name}.history."))
                .suffix(".tmp")
                .permissions(fs::Permissions::from_mode(PRIVATE_FILE))
                .tempfile_in(&self.dir)?;
            file.write_all(text.as_bytes())?;
            file.persist(self.history_path(name))
                .map_err(|error| error.error)?;
        }
        Ok(())
    }

    /// The job's last `count` runs, oldest first (lines that do not parse are skipped).
    pub fn history(&self, name: &str, count: usize) -> io::Result<Vec<RunRecord>> {
        let text = match crate::sys::read_small_file(&self.history_path(name), HISTORY_MAX) {
            Ok(text) => String::from_utf8_lossy(&text).into_owned(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let runs: Vec<RunRecord> = text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let skip = runs.len().saturating_sub(count);
        Ok(runs.into_iter().skip(skip).collect())
    }

    fn asked_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.run-asked"))
    }

    /// Asks for a run of the job now (`forkwarden cron run`): a file the cron workers look
    /// for each second, and the one that claims the run removes.
    pub fn ask_run(&self, name: &str) -> io::Result<()> {
        // Never through a link, never waiting on a FIFO planted at its name.
        OpenOptions::new()
            .create(true)
            .write(true)
            .mode(PRIVATE_FILE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(self.asked_path(name))
            .map(drop)
    }

    /// Whether a run of the job was asked for and not yet claimed.
    pub fn run_asked(&self, name: &str) -> bool {
        fs::symlink_metadata(self.asked_path(name)).is_ok()
    }

    /// The asked-for run is claimed (under the job's lock).
    pub fn clear_asked(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.asked_path(name)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.lock"))
    }

    /// Takes the job's lock if no one holds it; None when another process runs the job.
    pub fn try_lock(&self, name: &str) -> io::Result<Option<JobLock>> {
        match Flock::lock(self.lock_file(name)?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(JobLock { _lock: lock })),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(errno.into()),
        }
    }

    /// The job's lock file, opened (created 0600 if absent, never through a symbolic link).
    fn lock_file(&self, name: &str) -> io::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(PRIVATE_FILE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.lock_path(name))?;
        // One created by an older version, or under another umask, is narrowed.
        if file.metadata()?.mode() & 0o077 != 0 {
            file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))?;
        }
        Ok(file)
    }

    /// The pid holding the job's lock, as /proc/locks tells (None: unknown or not held).
    pub fn lock_holder(&self, name: &str) -> Option<i32> {
        let inode = fs::symlink_metadata(self.lock_path(name)).ok()?.ino();
        procfs::locks()
            .ok()?
            .into_iter()
            .find(|lock| lock.inode == inode)
            .and_then(|lock| lock.pid)
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
            succeeded: 2,
            failed: 1,
            last_host: Some("app1".into()),
            last_worker_pid: Some(42),
        };
        store.save("report", &state).unwrap();
        assert_eq!(store.load("report").unwrap(), state);
        assert!(!state.interrupted());
    }

    #[test]
    fn a_history_keeps_the_last_runs_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        assert!(store.history("report", 5).unwrap().is_empty());
        for start in 0..(2 * HISTORY_RUNS as i64 + 1) {
            let record = RunRecord {
                start_ms: start,
                ..RunRecord::default()
            };
            store.append_run("report", &record).unwrap();
        }
        // Past twice the runs kept, only the last ones are left.
        let all = store.history("report", usize::MAX).unwrap();
        assert_eq!(all.len(), HISTORY_RUNS);
        let last: Vec<i64> = store
            .history("report", 3)
            .unwrap()
            .iter()
            .map(|run| run.start_ms)
            .collect();
        let end = 2 * HISTORY_RUNS as i64;
        assert_eq!(last, [end - 2, end - 1, end]);
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
    fn files_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let made = JobStore::open(&data_dir).and_then(|store| {
            store.save("report", &JobState::default())?;
            let lock = store.try_lock("report")?;
            assert!(lock.is_some());
            assert_eq!(store.lock_holder("report"), Some(std::process::id() as i32));
            Ok(store)
        });
        nix::sys::stat::umask(old);
        let store = made.unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data_dir), 0o700);
        assert_eq!(mode(&store.dir), 0o700);
        assert_eq!(mode(&store.state_path("report")), 0o600);
        assert_eq!(mode(&store.lock_path("report")), 0o600);
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, store.lock_path("report")).unwrap();
        assert!(store.try_lock("report").is_err());
        std::os::unix::fs::symlink(&victim, store.state_path("other")).unwrap();
        assert!(store.load("other").is_err());
        // Saving replaces the link itself, never writes through it.
        store.save("other", &JobState::default()).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn times_convert_both_ways() {
        let now = SystemTime::now();
        let back = from_ms(to_ms(now));
        assert!(now.duration_since(back).unwrap() < Duration::from_millis(1));
    }
}
