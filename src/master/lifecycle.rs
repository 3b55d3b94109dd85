//! Where a worker is in its life, as the master sees it, and how it is made to go: the
//! states the pool keeps, the enforcement decides and the report explains. A leaf module,
//! so that each of those parts can name them without importing another.

use std::fmt;
use std::time::Instant;

/// Why the master told a worker to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetireReason {
    /// The server is stopping.
    Shutdown,
    /// A worker of the new config generation is ready in its slot.
    Replaced,
    /// Its slot is no longer wanted (SIGTTOU, or fewer workers after a reload).
    ScaledDown,
    /// It crossed a graceful limit (`limit_memory_soft`, `limit_time_worker_cron`,
    /// `limit_request` of a program): what and by how much.
    Limit(String),
    /// It said it leaves on its own (`limit_request` reached, the application asked): its
    /// replacement starts at once; it finishes its last requests meanwhile.
    OnItsOwn(String),
}

impl fmt::Display for RetireReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Shutdown => "server stopping",
            Self::Replaced => "replaced after reload",
            Self::ScaledDown => "scaled down",
            Self::Limit(detail) | Self::OnItsOwn(detail) => detail,
        })
    }
}

/// Where a worker is in its life, as the master sees it.
#[derive(Clone, Debug)]
pub enum Lifecycle {
    /// Forked, not ready yet; killed as a failed start if still not ready at `ready_by`.
    Starting { ready_by: Option<Instant> },
    /// Ready: it serves.
    Serving,
    /// The master decided it is to go.
    Leaving(Leaving),
}

/// A worker on its way out.
#[derive(Clone, Debug)]
pub struct Leaving {
    pub departure: Departure,
    /// It had become ready before it was told to go.
    pub was_ready: bool,
    /// Its end was logged when the master decided it (a limit enforced, with the
    /// replacement's pid): its reaping only confirms it.
    pub reported: bool,
}

/// How a worker is made to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Departure {
    /// Told to finish its work and exit (SIGTERM; for a program in a request, deferred
    /// until it says it is idle: `signalled` false); killed at `deadline` if it has not.
    Retire {
        reason: RetireReason,
        deadline: Instant,
        signalled: bool,
    },
    /// Killed: SIGKILL sent, or due at `sigkill_at` after a gentler signal.
    Kill {
        reason: String,
        sigkill_at: Option<Instant>,
    },
}
