//! Every per-worker limit, in one place: what a worker sets up for itself, and what the
//! master checks. (The signal handlers that answer 503/504 live in `sys::signals`.)
//!
//! | key | how it is enforced |
//! |---|---|
//! | `limit_memory_hard` | RLIMIT_AS in the worker ([`apply_at_worker_start`], unless `limit_memory_hard_rlimit = false`), and the master's RSS polling: SIGKILL at once |
//! | `limit_memory_soft` | the master's RSS polling: the worker finishes its request and leaves; its replacement starts at once |
//! | `limit_time_cpu` | a per-request CPU-time timer, with RLIMIT_CPU re-armed before each request as the kernel's backstop ([`CpuBudget`]); SIGXCPU answers 503 and ends the worker |
//! | `limit_time_real`, `limit_time_real_cron` | the master, from the scoreboard's request start: SIGUSR2 (the worker answers 504 and leaves), SIGKILL after at most [`EXPIRY_GRACE`] |
//! | `limit_request`, `limit_request_jitter` | the worker counts its requests and leaves ([`request_limit_for_worker`]) |
//! | `limit_time_worker_cron` | the master: a cron worker older than this finishes its job and is replaced |
//!
//! The master's checks ([`check`]) are pure: given what it observed of a worker, they say
//! what to do and how to log it. The master runs them every `memory_poll_interval`, and
//! sleeps exactly until the earliest request deadline in between.

use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigEvent, SigevNotify, Signal};
use nix::sys::time::TimeSpec;
use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;

use crate::config::Config;
use crate::master::Role;

/// How long a worker past `limit_time_real` may take to answer 504 and leave before SIGKILL.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// In the worker
// ---------------------------------------------------------------------------------------

/// Limits a worker sets on itself once, before its application starts: RLIMIT_AS for
/// `limit_memory_hard` (Odoo's mechanism: past it, allocations fail inside the worker).
pub fn apply_at_worker_start(config: &Config) -> nix::Result<()> {
    let hard = config.limit_memory_hard.bytes();
    if hard > 0 && config.limit_memory_hard_rlimit {
        setrlimit(Resource::RLIMIT_AS, hard, hard)?;
    }
    Ok(())
}

/// This worker's `limit_request`, with its share of `limit_request_jitter` so that workers
/// started together do not all recycle at once (0: no limit).
pub fn request_limit_for_worker(config: &Config) -> u64 {
    if config.limit_request == 0 || config.limit_request_jitter == 0 {
        return config.limit_request;
    }
    // RandomState is seeded from the OS once per process and varies per instance.
    let random = RandomState::new().hash_one(std::process::id());
    config.limit_request + random % (config.limit_request_jitter + 1)
}

/// `limit_time_cpu` for one worker. Before each request:
/// - a timer on the process's CPU clock is set to fire SIGXCPU after `limit_time_cpu` more
///   CPU time: precise to the scheduler tick;
/// - RLIMIT_CPU's soft limit is moved to the CPU used so far plus the limit (Odoo's
///   per-request reset), the kernel's own backstop, in whole seconds. Its hard limit is left
///   as it was: an unprivileged process could not raise it again.
pub struct CpuBudget {
    limit: Duration,
    hard: u64,
    /// The soft limit now in force, in whole seconds.
    armed: Option<u64>,
    timer: Timer,
}

impl CpuBudget {
    /// None when `limit_time_cpu` is off.
    pub fn new(config: &Config) -> nix::Result<Option<Self>> {
        let limit = config.limit_time_cpu.duration();
        if limit.is_zero() {
            return Ok(None);
        }
        let (_, hard) = getrlimit(Resource::RLIMIT_CPU)?;
        let timer = Timer::new(
            ClockId::CLOCK_PROCESS_CPUTIME_ID,
            SigEvent::new(SigevNotify::SigevSignal {
                signal: Signal::SIGXCPU,
                si_value: 0,
            }),
        )?;
        Ok(Some(Self {
            limit,
            hard,
            armed: None,
            timer,
        }))
    }

    /// Gives the next request its budget; returns the CPU time used so far.
    ///
    /// Two system calls: a clock read and the timer. RLIMIT_CPU's soft limit, rounded up to
    /// the second, only changes when the used time crosses a second. The timer is not
    /// disarmed after the request: SIGXCPU outside a request is ignored, and the next
    /// request sets it again.
    pub fn arm(&mut self) -> nix::Result<Duration> {
        let used = process_cpu_time()?;
        self.timer.set(
            Expiration::OneShot(TimeSpec::from(self.limit)),
            TimerSetTimeFlags::empty(),
        )?;
        let soft = used.as_secs() + 1 + self.limit.as_secs();
        if self.armed != Some(soft) {
            setrlimit(Resource::RLIMIT_CPU, soft, self.hard.max(soft))?;
            self.armed = Some(soft);
        }
        Ok(used)
    }
}

/// CPU time this process has used.
fn process_cpu_time() -> nix::Result<Duration> {
    let now = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)?;
    Ok(Duration::from(now))
}

// ---------------------------------------------------------------------------------------
// In the master
// ---------------------------------------------------------------------------------------

/// The limits the master checks, from the config (None: off).
#[derive(Clone, Debug, PartialEq)]
pub struct MasterLimits {
    pub memory_soft: Option<u64>,
    pub memory_hard: Option<u64>,
    pub time_real: Option<Duration>,
    pub time_real_cron: Option<Duration>,
    pub worker_cron_age: Option<Duration>,
    pub time_cpu: Duration,
    pub poll_interval: Duration,
}

impl MasterLimits {
    pub fn from_config(config: &Config) -> Self {
        let bytes = |size: crate::config::ByteSize| Some(size.bytes()).filter(|b| *b > 0);
        let span = |time: Duration| Some(time).filter(|t| !t.is_zero());
        Self {
            memory_soft: bytes(config.limit_memory_soft),
            memory_hard: bytes(config.limit_memory_hard),
            time_real: span(config.limit_time_real.duration()),
            time_real_cron: span(config.cron_time_limit()),
            worker_cron_age: span(config.limit_time_worker_cron.duration()),
            time_cpu: config.limit_time_cpu.duration(),
            poll_interval: config.memory_poll_interval.duration(),
        }
    }

    /// Whether the master must poll RSS.
    pub fn watches_memory(&self) -> bool {
        self.memory_soft.is_some() || self.memory_hard.is_some()
    }

    /// Whether the master must look at its workers periodically at all.
    pub fn needs_polling(&self) -> bool {
        self.watches_memory()
            || self.time_real.is_some()
            || self.time_real_cron.is_some()
            || self.worker_cron_age.is_some()
    }

    fn time_real_for(&self, role: Role) -> Option<Duration> {
        match role {
            Role::Http => self.time_real,
            Role::Cron => self.time_real_cron,
        }
    }
}

/// What the master saw of one worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observation {
    pub role: Option<Role>,
    /// Time since the worker was started.
    pub age: Duration,
    /// How long its current request (or job) has run, if it is busy.
    pub busy_for: Option<Duration>,
    /// Resident memory, when it was read this time.
    pub rss: Option<u64>,
    /// The worker is already leaving gracefully (no point recycling it again).
    pub leaving: bool,
}

/// What the master must do about a worker over a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Kill it now (SIGKILL).
    Kill(String),
    /// Tell it to answer 504 and leave (SIGUSR2); SIGKILL after [`EXPIRY_GRACE`].
    Expire(String),
    /// Let it finish its current request, then leave; start its replacement now.
    Recycle(String),
}

/// Decides whether a worker is over one of its limits. The most urgent limit wins: hard
/// memory, then wall-clock time, then the graceful ones.
pub fn check(limits: &MasterLimits, worker: &Observation) -> Option<Enforcement> {
    let role = worker.role.unwrap_or(Role::Http);
    if let (Some(rss), Some(hard)) = (worker.rss, limits.memory_hard)
        && rss > hard
    {
        return Some(Enforcement::Kill(format!(
            "limit_memory_hard exceeded (rss {} > {})",
            mib(rss),
            mib(hard)
        )));
    }
    if let (Some(busy), Some(limit)) = (worker.busy_for, limits.time_real_for(role))
        && busy >= limit
    {
        let key = match role {
            Role::Http => "limit_time_real",
            Role::Cron => "limit_time_real_cron",
        };
        return Some(Enforcement::Expire(format!(
            "{key} exceeded (running {} > {})",
            measured(busy),
            seconds(limit)
        )));
    }
    if worker.leaving {
        return None;
    }
    if let (Some(rss), Some(soft)) = (worker.rss, limits.memory_soft)
        && rss > soft
    {
        return Some(Enforcement::Recycle(format!(
            "limit_memory_soft exceeded (rss {} > {})",
            mib(rss),
            mib(soft)
        )));
    }
    if let (Role::Cron, Some(limit)) = (role, limits.worker_cron_age)
        && worker.age >= limit
    {
        return Some(Enforcement::Recycle(format!(
            "limit_time_worker_cron reached (age {} >= {})",
            measured(worker.age),
            seconds(limit)
        )));
    }
    None
}

/// When the worker's current request (or job) will cross its wall-clock limit, counted from
/// now; None if it is idle or the limit is off.
pub fn time_to_deadline(limits: &MasterLimits, worker: &Observation) -> Option<Duration> {
    let limit = limits.time_real_for(worker.role.unwrap_or(Role::Http))?;
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

/// Reads a worker's resident memory from `/proc/PID/statm`, through a descriptor opened
/// once, so each poll is a single `pread` (and can never read a recycled pid's process).
pub struct MemoryProbe {
    statm: File,
    page_size: u64,
}

impl MemoryProbe {
    pub fn open(pid: Pid) -> io::Result<Self> {
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|size| u64::try_from(size).ok())
            .unwrap_or(4096);
        Ok(Self {
            statm: File::open(format!("/proc/{pid}/statm"))?,
            page_size,
        })
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> io::Result<u64> {
        let mut buffer = [0u8; 128];
        let length = self.statm.read_at(&mut buffer, 0)?;
        let text = std::str::from_utf8(&buffer[..length]).map_err(io::Error::other)?;
        let pages: u64 = text
            .split_whitespace()
            .nth(1)
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| io::Error::other(format!("unexpected statm: {text:?}")))?;
        Ok(pages * self.page_size)
    }
}

/// `612 MiB`.
fn mib(bytes: u64) -> String {
    format!("{} MiB", (bytes + (1 << 19)) >> 20)
}

/// A measured time, to the hundredth: `120.07s`.
fn measured(time: Duration) -> String {
    format!("{:.2}s", time.as_secs_f64())
}

/// A configured time: `60s`, `0.5s`.
fn seconds(time: Duration) -> String {
    if time.subsec_millis() == 0 {
        format!("{}s", time.as_secs())
    } else {
        format!("{:.1}s", time.as_secs_f64())
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
            rss: rss_mib.map(|m| m << 20),
            leaving: false,
        }
    }

    #[test]
    fn memory_over_hard_kills_and_over_soft_recycles() {
        assert_eq!(
            check(&limits(), &http(Some(612), None)),
            Some(Enforcement::Kill(
                "limit_memory_hard exceeded (rss 612 MiB > 512 MiB)".into()
            ))
        );
        assert_eq!(
            check(&limits(), &http(Some(300), None)),
            Some(Enforcement::Recycle(
                "limit_memory_soft exceeded (rss 300 MiB > 256 MiB)".into()
            ))
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
            Some(Enforcement::Expire(
                "limit_time_real exceeded (running 121.00s > 120s)".into()
            ))
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
            matches!(check(&limits(), &old_cron), Some(Enforcement::Recycle(d)) if d.starts_with("limit_time_worker_cron"))
        );
        let long_job = Observation {
            role: Some(Role::Cron),
            busy_for: Some(Duration::from_secs(121)),
            ..Default::default()
        };
        assert!(
            matches!(check(&limits(), &long_job), Some(Enforcement::Expire(d)) if d.starts_with("limit_time_real_cron"))
        );
    }

    #[test]
    fn zero_turns_limits_off() {
        let off = MasterLimits::from_config(&Config {
            limit_memory_soft: crate::config::ByteSize(0),
            limit_memory_hard: crate::config::ByteSize(0),
            limit_time_real: crate::config::TimeSpan::secs(0),
            limit_time_real_cron: crate::config::CronTimeLimit::SameAsHttp,
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
    fn the_probe_reads_this_process_rss() {
        let probe = MemoryProbe::open(nix::unistd::getpid()).unwrap();
        let rss = probe.rss().unwrap();
        assert!(rss > 100 << 10, "rss {rss}");
        // Re-reads give fresh values through the same descriptor.
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        assert!(probe.rss().unwrap() >= rss + (60 << 20));
        drop(block);
    }
}
