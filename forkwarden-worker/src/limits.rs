//! The limits a worker holds itself to, inside its own process: RLIMIT_AS for
//! `limit_memory_hard`, its `limit_request` count, and the per-request CPU budget of
//! `limit_time_cpu`. (What the master checks from outside is the supervisor's `limits`;
//! the signal handlers that answer 503/504 live in `sys::limit_signals`.)

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigEvent, SigevNotify, Signal};
use nix::sys::time::TimeSpec;
use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
use nix::time::{ClockId, clock_gettime};
use serde::{Deserialize, Serialize};

/// The limits a worker applies to itself, from the config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerLimits {
    /// `limit_memory_hard` as RLIMIT_AS, in bytes (None: off, or
    /// `limit_memory_hard_rlimit = false`).
    pub address_space: Option<u64>,
    /// `limit_request` (0: no limit).
    pub requests: u64,
    /// `limit_request_jitter`: a random 0..=N added to `requests` per worker.
    pub requests_jitter: u64,
    /// `limit_time_cpu` (None: off).
    pub cpu_per_request: Option<Duration>,
}

impl WorkerLimits {
    /// Limits a worker sets on itself once, before its application starts: RLIMIT_AS for
    /// `limit_memory_hard` (Odoo's mechanism: past it, allocations fail inside the worker).
    pub fn apply_at_start(&self) -> nix::Result<()> {
        if let Some(bytes) = self.address_space {
            setrlimit(Resource::RLIMIT_AS, bytes, bytes)?;
        }
        Ok(())
    }

    /// This worker's `limit_request`, with its share of `limit_request_jitter` so that
    /// workers started together do not all recycle at once (0: no limit).
    pub fn request_limit(&self) -> u64 {
        if self.requests == 0 || self.requests_jitter == 0 {
            return self.requests;
        }
        // RandomState is seeded from the OS once per process and varies per instance.
        let random = RandomState::new().hash_one(std::process::id());
        self.requests
            .saturating_add(random % self.requests_jitter.saturating_add(1))
    }
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
    /// The budget of `limit` CPU time per request.
    pub fn new(limit: Duration) -> nix::Result<Self> {
        let (_, hard) = getrlimit(Resource::RLIMIT_CPU)?;
        let timer = Timer::new(
            ClockId::CLOCK_PROCESS_CPUTIME_ID,
            SigEvent::new(SigevNotify::SigevSignal {
                signal: Signal::SIGXCPU,
                si_value: 0,
            }),
        )?;
        Ok(Self {
            limit,
            hard,
            armed: None,
            timer,
        })
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
pub fn cpu_soft_limit(used: Duration, limit: Duration) -> u64 {
    let budget = used.saturating_add(limit);
    budget.as_secs() + u64::from(budget.subsec_nanos() > 0)
}

/// CPU time this process has used.
fn process_cpu_time() -> nix::Result<Duration> {
    let now = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)?;
    Ok(Duration::from(now))
}
