//! Who a worker is: its role and its stable slot. A leaf module, so that the master, the
//! workers and the limits all name workers the same way without importing one another.

use std::fmt;

/// What a worker does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Http,
    Cron,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Cron => "cron",
        }
    }
}

/// A worker's place in the population: role and stable slot number. A replacement takes
/// the slot of the worker it replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId {
    pub role: Role,
    pub slot: u32,
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} worker {}", self.role.as_str(), self.slot)
    }
}

/// `http worker 2 (pid 4312)`: a worker's name in log lines.
pub fn worker_name(id: WorkerId, pid: impl fmt::Display) -> String {
    format!("{id} (pid {pid})")
}

/// What the preload template is called in log lines (`app template (pid 4312)`).
pub const TEMPLATE: &str = "app template";
