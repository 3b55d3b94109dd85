//! Every per-worker limit, in one place: what the master checks, and where each limit a
//! worker holds itself to is (`forkwarden_worker::limits`; the signal handlers that answer
//! 503/504 live in `forkwarden_worker::sys::limit_signals`).
//!
//! | key | how it is enforced |
//! |---|---|
//! | `limit_memory_hard` | RLIMIT_AS in the worker ([`forkwarden_worker::limits::WorkerLimits::apply_at_start`], unless `limit_memory_hard_rlimit = false`), and the master's RSS polling ([`memory_due`]): SIGKILL at once |
//! | `limit_memory_soft` | the master's RSS polling: the worker finishes its request and leaves; its replacement starts at once |
//! | `limit_time_cpu` | a per-request CPU-time timer, with RLIMIT_CPU re-armed before each request as the kernel's backstop ([`forkwarden_worker::limits::CpuBudget`]); SIGXCPU answers 503 and ends the worker |
//! | `limit_time_real` | the master, from the scoreboard's request start: SIGUSR2 (the worker answers 504 and leaves), SIGKILL after at most [`EXPIRY_GRACE`] |
//! | `limit_time_real_cron`, a job's `timeout` | the cron worker kills the job's process group at the limit; the master steps in [`CRON_BACKSTOP`] later if it has not |
//! | `limit_request`, `limit_request_jitter` | the worker counts its requests and leaves ([`request_limit_for_worker`]) |
//! | `limit_time_worker_cron` | the master: a cron worker older than this finishes its job and is replaced |
//! | `heartbeat_timeout` | the master: a worker not serving a request that shows no sign of life (scoreboard heartbeat; a program's `WATCHDOG=1`; a program seen stopped) is killed |
//! | `ready_timeout` | the master: a worker not ready in time is killed as a failed start |
//!
//! The master's checks ([`check`]) are pure: given what it observed of a worker, they say
//! what to do and how to log it. The master looks at its workers' scoreboard rows on every
//! turn of its loop (memory reads, no system call) and sleeps exactly until the earliest
//! request deadline. It reads memory from /proc only where it can have changed: every
//! `memory_poll_interval` while a worker is busy or has served since the last reading (or
//! is a program that does not say when it is busy), otherwise once a second (see
//! [`memory_due`] and [`IDLE_SCAN`]), so that an idle server costs next to nothing.

use std::io;
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;

use forkwarden_worker::limits::cpu_soft_limit;

use crate::config::Config;
use crate::format::{measured, mib, seconds};
use crate::id::Role;

/// How long a worker past `limit_time_real` may take to answer 504 and leave before SIGKILL.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(1);

/// How long after a cron job's own time limit the master ends its cron worker (and the job's
/// process group), should the cron worker not have stopped the job itself.
pub const CRON_BACKSTOP: Duration = Duration::from_secs(5);

/// How often the master looks at its workers when none is busy (heartbeats, stopped
/// programs; see [`memory_due`] for memory).
pub const IDLE_SCAN: Duration = Duration::from_secs(1);

/// How often the master reads the memory of a program that says it is idle: it may grow in
/// background threads, rarely fast (RLIMIT_AS stays the backstop meanwhile).
pub const IDLE_PROGRAM_MEMORY: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// For the worker
// ---------------------------------------------------------------------------------------

/// This worker's `limit_request`, with its share of `limit_request_jitter` (0: no limit);
/// see [`forkwarden_worker::limits::WorkerLimits::request_limit`].
pub fn request_limit_for_worker(config: &Config) -> u64 {
    config.worker_limits().request_limit()
}

/// `limit_time_cpu` for an exec worker's program, from outside it, at each `BUSY=1`: its
/// RLIMIT_CPU is moved to the CPU it has used plus `limit` (`prlimit(2)`), and the request's
/// start recorded in its scoreboard row. `hard` is the hard limit it inherited.
pub fn arm_program_cpu_limit(
    pid: Pid,
    row: &crate::scoreboard::WorkerRow,
    limit: Duration,
    hard: u64,
) -> io::Result<()> {
    let used = Duration::from(clock_gettime(ClockId::pid_cpu_clock_id(pid)?)?);
    row.set_request_cpu(used);
    crate::sys::set_cpu_limit_of(pid, cpu_soft_limit(used, limit), hard)
}

// ---------------------------------------------------------------------------------------
// In the master
// ---------------------------------------------------------------------------------------

/// The limits the master checks, from the config (None: off).
#[derive(Clone, Debug, PartialEq)]
pub struct MasterLimits {
    pub memory_soft: Option<u64>,
    /// What `memory_soft` is compared with.
    pub memory_soft_measure: crate::config::MemoryMeasure,
    pub memory_hard: Option<u64>,
    pub time_real: Option<Duration>,
    /// There are `[[cron]]` jobs or `[[job]]` kinds, whose time limits the master backs up.
    pub cron_jobs: bool,
    /// Each `[[job]]` kind's own `limit_memory_hard`, in order (None: the top-level one).
    pub job_memory_hard: Vec<Option<u64>>,
    /// The same for `limit_memory_soft`.
    pub job_memory_soft: Vec<Option<u64>>,
    pub worker_cron_age: Option<Duration>,
    pub time_cpu: Duration,
    pub poll_interval: Duration,
    /// `heartbeat_timeout`.
    pub heartbeat: Option<Duration>,
    /// The address space RLIMIT_AS gives each worker (`limit_memory_hard`, unless
    /// `limit_memory_hard_rlimit = false`).
    pub address_space_cap: Option<u64>,
}

impl MasterLimits {
    pub fn from_config(config: &Config) -> Self {
        let bytes = |size: crate::config::ByteSize| Some(size.bytes()).filter(|b| *b > 0);
        let span = |time: Duration| Some(time).filter(|t| !t.is_zero());
        Self {
            memory_soft: bytes(config.limit_memory_soft),
            memory_soft_measure: config.limit_memory_soft_measure,
            memory_hard: bytes(config.limit_memory_hard),
            time_real: span(config.limit_time_real.duration()),
            cron_jobs: !config.cron.is_empty() || !config.job.is_empty(),
            job_memory_hard: config
                .job
                .iter()
                .map(|kind| kind.limit_memory_hard.and_then(bytes))
                .collect(),
            job_memory_soft: config
                .job
                .iter()
                .map(|kind| kind.limit_memory_soft.and_then(bytes))
                .collect(),
            worker_cron_age: span(config.limit_time_worker_cron.duration()),
            time_cpu: config.limit_time_cpu.duration(),
            poll_interval: config.memory_poll_interval.duration(),
            heartbeat: span(config.heartbeat_timeout.duration()),
            address_space_cap: bytes(config.limit_memory_hard)
                .filter(|_| config.limit_memory_hard_rlimit),
        }
    }

    /// Whether the master must poll RSS.
    pub fn watches_memory(&self) -> bool {
        self.memory_soft.is_some()
            || self.memory_hard.is_some()
            || self.job_memory_hard.iter().any(Option::is_some)
            || self.job_memory_soft.iter().any(Option::is_some)
    }

    /// The soft memory limit of `worker`: its job kind's, when it runs one that has its own.
    fn memory_soft_for(&self, worker: &Observation) -> Option<u64> {
        job_kind_value(&self.job_memory_soft, worker).or(self.memory_soft)
    }

    /// The hard memory limit of `worker`: its job kind's, when it runs one that has its own.
    fn memory_hard_for(&self, worker: &Observation) -> Option<u64> {
        job_kind_value(&self.job_memory_hard, worker).or(self.memory_hard)
    }

    /// Whether the master must look at its workers periodically at all.
    pub fn needs_polling(&self) -> bool {
        self.watches_memory()
            || self.time_real.is_some()
            || self.cron_jobs
            || self.worker_cron_age.is_some()
            || self.heartbeat.is_some()
    }

    /// The wall-clock limit of what `worker` is busy with.
    fn time_real_for(&self, worker: &Observation) -> Option<Duration> {
        match worker.role.unwrap_or(Role::Http) {
            // A companion program is held to limit_time_real if it marks its requests.
            Role::Http | Role::Program(_) => self.time_real,
            Role::Cron | Role::Job => worker
                .work_limit
                .map(|limit| limit.saturating_add(CRON_BACKSTOP)),
        }
    }
}

/// The value `per_kind` gives the `[[job]]` kind `worker` runs now, if it runs one that has
/// its own.
fn job_kind_value(per_kind: &[Option<u64>], worker: &Observation) -> Option<u64> {
    worker
        .work_kind
        .and_then(|kind| per_kind.get(kind).copied().flatten())
}

/// What tells the master whether a worker's memory may have changed since its last reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryActivity {
    /// It says when it serves (a built-in worker; a program that marks its requests): busy
    /// now, its count of requests (or cron jobs) now, and whether it may also grow while
    /// idle (a program may have background work; a built-in worker runs nothing then).
    Marked {
        busy: bool,
        requests: u64,
        grows_when_idle: bool,
    },
    /// A program that does not say when it is busy: it may grow at any time.
    Opaque,
}

impl MemoryActivity {
    /// Whether its memory may change before the next look: the master watches closely.
    pub fn is_active(self, read_requests: u64) -> bool {
        match self {
            Self::Marked { busy, requests, .. } => busy || requests != read_requests,
            Self::Opaque => true,
        }
    }
}

/// Whether the master should read a worker's memory now, given its `activity` and the last
/// reading (`since` ago, at `read_requests` requests): always the first time; every
/// `poll_interval` while it starts, is busy, has served since the last reading, or does not
/// say; an idle program (which may have background work) every [`IDLE_PROGRAM_MEMORY`]; an
/// idle built-in worker that served nothing since, never.
pub fn memory_due(
    activity: MemoryActivity,
    starting: bool,
    last: Option<(Duration, u64)>,
    poll_interval: Duration,
) -> bool {
    let Some((since, read_requests)) = last else {
        return true;
    };
    let every = match activity {
        _ if starting || activity.is_active(read_requests) => Some(poll_interval),
        MemoryActivity::Marked {
            grows_when_idle: true,
            ..
        } => Some(IDLE_PROGRAM_MEMORY),
        MemoryActivity::Marked { .. } | MemoryActivity::Opaque => None,
    };
    every.is_some_and(|every| since >= every)
}

/// What the master saw of one worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observation {
    pub role: Option<Role>,
    /// Time since the worker was started.
    pub age: Duration,
    /// How long its current request (or job) has run, if it is busy.
    pub busy_for: Option<Duration>,
    /// The limit of its current unit of work, when it has its own (a cron job's).
    pub work_limit: Option<Duration>,
    /// The `[[job]]` kind (its index) of the job a job worker runs now.
    pub work_kind: Option<usize>,
    /// Resident memory, when it was read this time.
    pub rss: Option<u64>,
    /// Virtual size (address space), when it was read this time.
    pub virtual_size: Option<u64>,
    /// The worker is already leaving gracefully (no point recycling it again).
    pub leaving: bool,
}

/// What the master must do about a worker over a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Kill it now (SIGKILL).
    Kill(Breach),
    /// Tell it to answer 504 and leave (SIGUSR2); SIGKILL after [`EXPIRY_GRACE`].
    Expire(Breach),
    /// Let it finish its current request, then leave; start its replacement now.
    Recycle(Breach),
}

impl Enforcement {
    pub fn breach(&self) -> &Breach {
        match self {
            Self::Kill(breach) | Self::Expire(breach) | Self::Recycle(breach) => breach,
        }
    }
}

/// A limit a worker crossed, as facts for the log's fields: the config key, what was
/// measured and the limit (bytes for memory, milliseconds for time); and the sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breach {
    pub limit: &'static str,
    pub value: u64,
    pub limit_value: u64,
    /// `limit_memory_hard exceeded (rss 612 MiB > 512 MiB)`.
    pub detail: String,
}

impl Breach {
    pub fn memory(limit: &'static str, value: u64, limit_value: u64, detail: String) -> Self {
        Self {
            limit,
            value,
            limit_value,
            detail,
        }
    }

    pub fn time(
        limit: &'static str,
        value: Duration,
        limit_value: Duration,
        detail: String,
    ) -> Self {
        let millis = |time: Duration| u64::try_from(time.as_millis()).unwrap_or(u64::MAX);
        Self {
            limit,
            value: millis(value),
            limit_value: millis(limit_value),
            detail,
        }
    }
}

/// Decides whether a worker is over one of its limits. The most urgent limit wins: hard
/// memory, then wall-clock time, then the graceful ones.
pub fn check(limits: &MasterLimits, worker: &Observation) -> Option<Enforcement> {
    let role = worker.role.unwrap_or(Role::Http);
    if let (Some(rss), Some(hard)) = (worker.rss, limits.memory_hard_for(worker))
        && rss > hard
    {
        return Some(Enforcement::Kill(Breach::memory(
            "limit_memory_hard",
            rss,
            hard,
            format!(
                "limit_memory_hard exceeded (rss {} > {})",
                mib(rss),
                mib(hard)
            ),
        )));
    }
    if let (Some(busy), Some(limit)) = (worker.busy_for, limits.time_real_for(worker))
        && busy >= limit
    {
        let detail = match role {
            Role::Http | Role::Program(_) => format!(
                "limit_time_real exceeded (running {} > {})",
                measured(busy),
                seconds(limit)
            ),
            Role::Cron | Role::Job => format!(
                "its job ran past its time limit and was not stopped (running {} > {} + {})",
                measured(busy),
                seconds(limit - CRON_BACKSTOP),
                seconds(CRON_BACKSTOP)
            ),
        };
        let key = match role {
            Role::Cron => "limit_time_real_cron",
            Role::Job => "limit_time_real",
            Role::Http | Role::Program(_) => "limit_time_real",
        };
        return Some(Enforcement::Expire(Breach::time(key, busy, limit, detail)));
    }
    if worker.leaving {
        return None;
    }
    let (soft_measured, measure) = match limits.memory_soft_measure {
        crate::config::MemoryMeasure::Rss => (worker.rss, "rss"),
        crate::config::MemoryMeasure::Virtual => (worker.virtual_size, "virtual size"),
    };
    if let (Some(measured), Some(soft)) = (soft_measured, limits.memory_soft_for(worker))
        && measured > soft
    {
        return Some(Enforcement::Recycle(Breach::memory(
            "limit_memory_soft",
            measured,
            soft,
            format!(
                "limit_memory_soft exceeded ({measure} {} > {})",
                mib(measured),
                mib(soft)
            ),
        )));
    }
    if let (Role::Cron, Some(limit)) = (role, limits.worker_cron_age)
        && worker.age >= limit
    {
        return Some(Enforcement::Recycle(Breach::time(
            "limit_time_worker_cron",
            worker.age,
            limit,
            format!(
                "limit_time_worker_cron reached (age {} >= {})",
                measured(worker.age),
                seconds(limit)
            ),
        )));
    }
    None
}

/// Whether a worker that serves no request has been silent (no heartbeat, or seen stopped)
/// for `silent` past `heartbeat_timeout`: the start of the line that says so.
pub fn silence_exceeded(limits: &MasterLimits, silent: Duration) -> Option<String> {
    let limit = limits.heartbeat?;
    (silent >= limit).then(|| {
        format!(
            "no sign of life for {} while not serving a request (heartbeat_timeout {})",
            measured(silent),
            seconds(limit)
        )
    })
}

/// When the worker's current request (or job) will cross its wall-clock limit, counted from
/// now; None if it is idle or the limit is off.
pub fn time_to_deadline(limits: &MasterLimits, worker: &Observation) -> Option<Duration> {
    let limit = limits.time_real_for(worker)?;
    Some(limit.saturating_sub(worker.busy_for?))
}

/// The log detail of a worker that hit `limit_time_cpu`: `cpu 60.3s > 60s` when the
/// request's CPU time is known.
pub fn describe_cpu_exceeded(limits: &MasterLimits, request_cpu: Option<Duration>) -> String {
    match request_cpu {
        Some(used) => format!(
            "limit_time_cpu exceeded (cpu {} > {})",
            measured(used),
            seconds(limits.time_cpu)
        ),
        None => format!("limit_time_cpu exceeded (> {})", seconds(limits.time_cpu)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MasterLimits {
        MasterLimits::from_config(&Config {
            limit_memory_soft: crate::config::ByteSize::mib(256),
            limit_memory_hard: crate::config::ByteSize::mib(512),
            limit_time_real: crate::config::TimeSpan::secs(120),
            limit_time_worker_cron: crate::config::TimeSpan::secs(3600),
            ..Config::default()
        })
    }

    fn http(rss_mib: Option<u64>, busy_secs: Option<u64>) -> Observation {
        Observation {
            role: Some(Role::Http),
            age: Duration::from_secs(10),
            busy_for: busy_secs.map(Duration::from_secs),
            work_limit: None,
            work_kind: None,
            rss: rss_mib.map(|m| m << 20),
            // Python's address space is several times what it uses.
            virtual_size: rss_mib.map(|m| (m * 4) << 20),
            leaving: false,
        }
    }

    #[test]
    fn the_soft_limit_can_compare_the_virtual_size_as_odoo_does() {
        let odoo_like = MasterLimits {
            memory_soft_measure: crate::config::MemoryMeasure::Virtual,
            ..limits()
        };
        // 100 MiB resident is under 256 MiB; its 400 MiB of address space is not.
        assert_eq!(check(&limits(), &http(Some(100), None)), None);
        assert_eq!(
            check(&odoo_like, &http(Some(100), None)),
            Some(Enforcement::Recycle(Breach::memory(
                "limit_memory_soft",
                400 << 20,
                256 << 20,
                "limit_memory_soft exceeded (virtual size 400 MiB > 256 MiB)".into()
            )))
        );
    }

    #[test]
    fn a_job_is_held_to_its_kinds_memory_limits_while_it_runs() {
        let limits = MasterLimits {
            job_memory_soft: vec![None, Some(1024 << 20)],
            job_memory_hard: vec![None, Some(2048 << 20)],
            ..limits()
        };
        let job_worker = |rss_mib: u64, kind: Option<usize>| Observation {
            role: Some(Role::Job),
            work_kind: kind,
            ..http(Some(rss_mib), None)
        };
        // Past the top-level soft limit, within the kind's: left to run.
        assert_eq!(check(&limits, &job_worker(700, Some(1))), None);
        let breach = |enforcement: Option<Enforcement>| enforcement.map(|e| e.breach().clone());
        assert_eq!(
            breach(check(&limits, &job_worker(1100, Some(1)))).map(|b| (b.limit, b.limit_value)),
            Some(("limit_memory_soft", 1024 << 20))
        );
        // The same worker between jobs, or running a kind without its own: the top level's.
        assert!(matches!(
            check(&limits, &job_worker(700, None)),
            Some(Enforcement::Kill(_))
        ));
        assert!(matches!(
            check(&limits, &job_worker(300, Some(0))),
            Some(Enforcement::Recycle(_))
        ));
    }

    #[test]
    fn memory_over_hard_kills_and_over_soft_recycles() {
        assert_eq!(
            check(&limits(), &http(Some(612), None)),
            Some(Enforcement::Kill(Breach::memory(
                "limit_memory_hard",
                612 << 20,
                512 << 20,
                "limit_memory_hard exceeded (rss 612 MiB > 512 MiB)".into()
            )))
        );
        assert_eq!(
            check(&limits(), &http(Some(300), None)),
            Some(Enforcement::Recycle(Breach::memory(
                "limit_memory_soft",
                300 << 20,
                256 << 20,
                "limit_memory_soft exceeded (rss 300 MiB > 256 MiB)".into()
            )))
        );
        assert_eq!(check(&limits(), &http(Some(100), None)), None);
        let leaving = Observation {
            leaving: true,
            ..http(Some(300), None)
        };
        assert_eq!(check(&limits(), &leaving), None, "already recycling");
    }

    #[test]
    fn a_request_past_limit_time_real_expires_and_an_idle_worker_never_does() {
        assert_eq!(
            check(&limits(), &http(None, Some(121))),
            Some(Enforcement::Expire(Breach {
                limit: "limit_time_real",
                value: 121_000,
                limit_value: 120_000,
                detail: "limit_time_real exceeded (running 121.00s > 120s)".into()
            }))
        );
        assert_eq!(check(&limits(), &http(None, Some(119))), None);
        let idle_for_ages = Observation {
            age: Duration::from_secs(100_000),
            ..http(None, None)
        };
        assert_eq!(check(&limits(), &idle_for_ages), None);
        assert_eq!(
            time_to_deadline(&limits(), &http(None, Some(100))),
            Some(Duration::from_secs(20))
        );
        assert_eq!(time_to_deadline(&limits(), &http(None, None)), None);
    }

    #[test]
    fn cron_workers_have_their_own_time_limits() {
        let old_cron = Observation {
            role: Some(Role::Cron),
            age: Duration::from_secs(4000),
            ..Default::default()
        };
        assert!(
            matches!(check(&limits(), &old_cron), Some(Enforcement::Recycle(b)) if b.limit == "limit_time_worker_cron" && b.value == 4_000_000)
        );
        let long_job = Observation {
            role: Some(Role::Cron),
            busy_for: Some(Duration::from_secs(66)),
            work_limit: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let expired = check(&limits(), &long_job);
        assert!(
            matches!(&expired, Some(Enforcement::Expire(b)) if b.detail.contains("(running 66.00s > 60s + 5s)")),
            "{expired:?}"
        );
        let within_backstop = Observation {
            busy_for: Some(Duration::from_secs(64)),
            ..long_job
        };
        assert_eq!(
            check(&limits(), &within_backstop),
            None,
            "the cron worker acts first"
        );
    }

    #[test]
    fn a_silent_worker_past_heartbeat_timeout_is_killed() {
        let limits = MasterLimits::from_config(&Config {
            heartbeat_timeout: crate::config::TimeSpan::secs(10),
            ..Config::default()
        });
        assert_eq!(
            silence_exceeded(&limits, Duration::from_millis(10_500)).as_deref(),
            Some("no sign of life for 10.50s while not serving a request (heartbeat_timeout 10s)")
        );
        assert_eq!(silence_exceeded(&limits, Duration::from_secs(2)), None);
    }

    #[test]
    fn zero_turns_limits_off() {
        let off = MasterLimits::from_config(&Config {
            limit_memory_soft: crate::config::ByteSize(0),
            limit_memory_hard: crate::config::ByteSize(0),
            limit_time_real: crate::config::TimeSpan::secs(0),
            limit_time_real_cron: crate::config::CronTimeLimit::SameAsHttp,
            heartbeat_timeout: crate::config::TimeSpan::secs(0),
            ..Config::default()
        });
        assert!(!off.needs_polling());
        assert_eq!(check(&off, &http(Some(100_000), Some(100_000))), None);
    }

    #[test]
    fn jitter_stays_within_its_range() {
        let config = Config {
            limit_request: 100,
            limit_request_jitter: 10,
            ..Config::default()
        };
        for _ in 0..50 {
            assert!((100..=110).contains(&request_limit_for_worker(&config)));
        }
    }

    #[test]
    fn memory_is_read_only_where_it_can_have_changed() {
        let poll = Duration::from_millis(100);
        let marked = |busy, grows_when_idle| MemoryActivity::Marked {
            busy,
            requests: 5,
            grows_when_idle,
        };
        let idle = marked(false, false);
        let long_ago = Some((Duration::from_secs(60), 5));
        assert!(memory_due(idle, false, None, poll), "first reading");
        assert!(
            !memory_due(idle, false, long_ago, poll),
            "idle, served nothing"
        );
        assert!(
            memory_due(idle, false, Some((poll, 4)), poll),
            "served since"
        );
        assert!(
            !memory_due(idle, false, Some((poll / 2, 4)), poll),
            "not yet"
        );
        assert!(memory_due(
            marked(true, false),
            false,
            Some((poll, 5)),
            poll
        ));
        assert!(memory_due(idle, true, Some((poll, 5)), poll), "starting");
        assert!(memory_due(
            MemoryActivity::Opaque,
            false,
            Some((poll, 0)),
            poll
        ));
        let idle_program = marked(false, true);
        assert!(!memory_due(idle_program, false, Some((IDLE_SCAN, 5)), poll));
        assert!(memory_due(
            idle_program,
            false,
            Some((IDLE_PROGRAM_MEMORY, 5)),
            poll
        ));
        assert!(
            memory_due(idle_program, false, Some((poll, 4)), poll),
            "a program that served since its last reading is read at the short interval"
        );
    }
}
