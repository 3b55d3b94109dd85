//! Who a worker is: its role and its stable slot. A leaf module, so that the master, the
//! workers and the limits all name workers the same way without importing one another.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Mutex, PoisonError};

/// What a worker does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Http,
    Cron,
    /// A job worker: runs jobs from the queue (`[[job]]`).
    Job,
    /// An instance of the companion program of this name (`[[program]]`).
    Program(&'static str),
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Cron => "cron",
            Self::Job => "job",
            Self::Program(_) => "program",
        }
    }

    /// Whether its work is a task in a process group of its own, with its own time limit
    /// (a cron run, a job's attempt), which goes with the worker when it dies.
    pub fn runs_tasks(self) -> bool {
        matches!(self, Self::Cron | Self::Job)
    }

    /// The role of the companion program named `name`. Names are interned, so that a role
    /// stays a small `Copy` value: each distinct name is kept for the life of the process (a
    /// reload that renames programs keeps the old names, a few bytes each).
    pub fn program(name: &str) -> Self {
        static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
        let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = names.get(name) {
            return Self::Program(known);
        }
        let kept: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.insert(kept);
        Self::Program(kept)
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
        match self.role {
            Role::Program(name) => write!(f, "{name} program {}", self.slot),
            role => write!(f, "{} worker {}", role.as_str(), self.slot),
        }
    }
}

/// `http worker 2 (pid 4312)`: a worker's name in log lines.
pub fn worker_name(id: WorkerId, pid: impl fmt::Display) -> String {
    format!("{id} (pid {pid})")
}

/// What the preload template is called in log lines (`app template (pid 4312)`).
pub const TEMPLATE: &str = "app template";

/// `app template (pid 4312)`: a template's name in log lines.
pub fn template_name(pid: impl fmt::Display) -> String {
    format!("{TEMPLATE} (pid {pid})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_role_names_its_workers_and_is_the_same_value_for_the_same_name() {
        let role = Role::program("websocket");
        assert_eq!(role, Role::program(&String::from("websocket")));
        assert_ne!(role, Role::program("events"));
        assert_eq!(role.as_str(), "program");
        let id = WorkerId { role, slot: 1 };
        assert_eq!(worker_name(id, 42), "websocket program 1 (pid 42)");
        let http = WorkerId {
            role: Role::Http,
            slot: 0,
        };
        assert_eq!(http.to_string(), "http worker 0");
    }
}
