//! Every per-worker limit, in one place: what a worker sets up for itself, and what the
//! master checks. (The signal handlers that answer 503/504 live in `sys::signals`.)
//!
//! | key | how it is enforced |
//! |---|---|
//! | `limit_memory_hard` | RLIMIT_AS in the worker ([`apply_at_worker_start`], unless `limit_memory_hard_rlimit = false`), and the master's RSS polling: SIGKILL at once |
//! | `limit_memory_soft` | the master's RSS polling: the worker finishes its request and leaves; its replacement starts at once |
//! | `limit_time_cpu` | a per-request CPU-time timer, with RLIMIT_CPU re-armed before each request as the kernel's backstop ([`CpuBudget`]); SIGXCPU answers 503 and ends the worker |
//! | `limit_time_real` | the master, from the scoreboard's request start: SIGUSR2 (the worker answers 504 and leaves), SIGKILL after at most [`EXPIRY_GRACE`] |
//! | `limit_time_real_cron`, a job's `timeout` | the cron worker kills the job's process group at the limit; the master steps in [`CRON_BACKSTOP`] later if it has not |
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
use crate::format::{measured, mib, seconds};
use crate::master::Role;

/// How long a worker past `limit_time_real` may take to answer 504 and leave before SIGKILL.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(1);

/// How long after a cron job's own time limit the master ends its cron worker (and the job's
/// process group), should the cron worker not have stopped the job itself.
pub const CRON_BACKSTOP: Duration = Duration::from_secs(5);

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
        let soft = cpu_soft_limit(used, self.limit);
        if self.armed != Some(soft) {
            setrlimit(Resource::RLIMIT_CPU, soft, self.hard.max(soft))?;
            self.armed = Some(soft);
        }
        Ok(used)
    }
}

/// RLIMIT_CPU's soft limit for a request that starts after `used` of CPU and may use `limit`
/// more: the sum, rounded up to the whole seconds RLIMIT_CPU counts in.
fn cpu_soft_limit(used: Duration, limit: Duration) -> u64 {
    let budget = used + limit;
    budget.as_secs() + u64::from(budget.subsec_nanos() > 0)
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
    /// There are `[[cron]]` jobs, whose time limits the master backs up.
    pub cron_jobs: bool,
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
            cron_jobs: !config.cron.is_empty(),
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
            || self.cron_jobs
            || self.worker_cron_age.is_some()
    }

    /// The wall-clock limit of what `worker` is busy with.
    fn time_real_for(&self, worker: &Observation) -> Option<Duration> {
        match worker.role.unwrap_or(Role::Http) {
            Role::Http => self.time_real,
            Role::Cron => worker.work_limit.map(|limit| limit + CRON_BACKSTOP),
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
    /// The limit of its current unit of work, when it has its own (a cron job's).
    pub work_limit: Option<Duration>,
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
    if let (Some(busy), Some(limit)) = (worker.busy_for, limits.time_real_for(worker))
        && busy >= limit
    {
        return Some(Enforcement::Expire(match role {
            Role::Http => format!(
                "limit_time_real exceeded (running {} > {})",
                measured(busy),
                seconds(limit)
            ),
            Role::Cron => format!(
                "its job ran past its time limit and was not stopped (running {} > {} + {})",
                measured(busy),
                seconds(limit - CRON_BACKSTOP),
                seconds(CRON_BACKSTOP)
            ),
        }));
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

/// Resident memory of every process in each of the process groups `groups`, in one scan
/// of /proc (which is why it is done only when there are groups to measure).
pub fn process_groups_rss(groups: &[i32]) -> std::collections::HashMap<i32, u64> {
    let mut totals = std::collections::HashMap::new();
    if groups.is_empty() {
        return totals;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    let page_size = page_size();
    for pid in entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, pgrp, ...
        let fields = stat.rsplit(')').next().unwrap_or("");
        let Some(group) = fields
            .split_whitespace()
            .nth(2)
            .and_then(|g| g.parse::<i32>().ok())
        else {
            continue;
        };
        if !groups.contains(&group) {
            continue;
        }
        let pages = std::fs::read_to_string(format!("/proc/{pid}/statm"))
            .ok()
            .and_then(|statm| resident_pages(&statm))
            .unwrap_or(0);
        *totals.entry(group).or_insert(0) += pages * page_size;
    }
    totals
}

/// The resident pages in a `/proc/PID/statm` text (its second field).
fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .unwrap_or(4096)
}

/// Reads a worker's resident memory from `/proc/PID/statm`, through a descriptor opened
/// once, so each poll is a single `pread` (and can never read a recycled pid's process).
pub struct MemoryProbe {
    statm: File,
    page_size: u64,
}

impl MemoryProbe {
    pub fn open(pid: Pid) -> io::Result<Self> {
        Ok(Self {
            statm: File::open(format!("/proc/{pid}/statm"))?,
            page_size: page_size(),
        })
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> io::Result<u64> {
        let mut buffer = [0u8; 128];
        let length = self.statm.read_at(&mut buffer, 0)?;
        let text = std::str::from_utf8(&buffer[..length]).map_err(io::Error::other)?;
        let pages = resident_pages(text)
            .ok_or_else(|| io::Error::other(format!("unexpected statm: {text:?}")))?;
        Ok(pages * self.page_size)
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
            busy_for: Some(Duration::from_secs(66)),
            work_limit: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let expired = check(&limits(), &long_job);
        assert!(
            matches!(&expired, Some(Enforcement::Expire(d)) if d.contains("(running 66.00s > 60s + 5s)")),
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
    fn a_process_groups_rss_counts_every_member() {
        use std::os::unix::process::CommandExt;
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .process_group(0)
            .spawn()
            .unwrap();
        let group = i32::try_from(leader.id()).unwrap();
        let one = MemoryProbe::open(Pid::from_raw(group))
            .unwrap()
            .rss()
            .unwrap();
        let mut all = 0;
        for _ in 0..100 {
            all = process_groups_rss(&[group])
                .get(&group)
                .copied()
                .unwrap_or(0);
            if all > one {
                break;
            }
            std::thread::sleep(Duration::from_millis(10)); // the background sleep is starting
        }
        let _ = nix::sys::signal::killpg(Pid::from_raw(group), nix::sys::signal::Signal::SIGKILL);
        let _ = leader.wait();
        assert!(all > one, "group {all} vs leader {one}");
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
