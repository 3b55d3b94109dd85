//! Processes that workers left behind, and their end.
//!
//! The master is a child subreaper, and so are the processes that own a run (each `[app]`
//! program and each cron worker): whatever a program or a job starts stays below its owner
//! while the owner lives, however it detaches itself (`setsid`, a double fork), and comes to
//! the master when the owner ends. So any child of the master that is not one of its workers
//! was left behind by a worker that ended: the master kills it on sight. A job or a program
//! never outlives its run, and a stopping server waits for them too.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::Master;
use super::report::Ending;
use crate::proctree;

/// How long a stopping master waits for left-behind processes it killed to be gone (one in
/// uninterruptible sleep cannot be hurried) before it exits anyway.
const STOP_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Strays {
    /// Killed, not reaped yet.
    killed: HashSet<Pid>,
    /// Names of the workers that ended in this turn, to say whose a stray was.
    ended: Vec<String>,
    /// The last reap found no child at all.
    no_children: bool,
    /// While stopping: when the master stops waiting for them.
    give_up_at: Option<Instant>,
}

impl Strays {
    /// Workers `names` ended in this turn.
    pub fn ended(&mut self, names: Vec<String>) {
        self.ended = names;
    }

    /// What the last reap found: whether the master has any child left at all.
    pub fn children_left(&mut self, any: bool) {
        if !any {
            self.killed.clear();
        }
        self.no_children = !any;
    }

    /// Process `pid`, not a worker, was reaped.
    pub fn reaped(&mut self, pid: Pid, ending: Ending) {
        self.killed.remove(&pid);
        debug!(
            pid = pid.as_raw(),
            "left-behind process {pid} reaped: {ending}"
        );
    }

    /// While stopping with no worker left: whether the master may exit, the left-behind
    /// processes being gone (or not worth waiting for any longer).
    pub fn all_gone(&mut self) -> bool {
        if self.no_children {
            return true;
        }
        let now = Instant::now();
        let give_up_at = *self.give_up_at.get_or_insert(now + STOP_WAIT);
        if now < give_up_at {
            return false;
        }
        warn!(
            "processes left behind by workers are still there {} after being killed: {:?}; exiting anyway",
            crate::format::elapsed(STOP_WAIT),
            self.killed
        );
        true
    }

    /// When a stopping master stops waiting for them.
    pub fn deadline(&self) -> Option<Instant> {
        self.give_up_at
    }
}

impl Master {
    /// Kills every child of the master that is not a worker (see the module doc).
    pub(super) fn kill_strays(&mut self) {
        // A worker forked by a preload template said who it is before it became our child
        // (see template.rs): what is queued is read first, so it is known by now.
        self.read_notifications();
        let workers: HashSet<Pid> = self.pool.workers().map(|w| w.pid).collect();
        let templates: HashSet<Pid> = self.templates.pids().collect();
        let whose = match self.strays.ended.as_slice() {
            [one] => one.clone(),
            _ => "a worker that ended".to_string(),
        };
        for pid in proctree::children(self.pid) {
            if workers.contains(&pid)
                || templates.contains(&pid)
                || self.strays.killed.contains(&pid)
            {
                continue;
            }
            let command = proctree::command_name(pid).unwrap_or_else(|| "?".into());
            match kill(pid, Signal::SIGKILL) {
                Ok(()) => {
                    self.strays.killed.insert(pid);
                    self.strays.no_children = false;
                    warn!(
                        event = "stray_killed",
                        pid = pid.as_raw(),
                        command = command.as_str(),
                        "pid {pid} ({command}) was left behind by {whose}; killed"
                    );
                }
                Err(errno) => debug!("cannot kill left-behind pid {pid}: {errno}"),
            }
        }
    }
}
