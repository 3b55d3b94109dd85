//! What every forked worker has from its master, whatever its kind: who it is, its row on
//! the scoreboard, the master's doorbell, and the checks it makes between two units of work
//! (told to stop? master gone? log to reopen?).

use std::cell::Cell;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};
use tracing::error;

use crate::doorbell::Doorbell;
use crate::id::WorkerId;
use crate::scoreboard::{Board, ExitReason, WorkerRow, WorkerState};
use crate::sys::{self, WorkerSignals};

/// Exit status of a worker that left normally (the reason is in its scoreboard row).
pub const EXIT_OK: i32 = 0;
/// Exit status of a worker that could not boot (its application failed to start).
pub const EXIT_BOOT_FAILED: i32 = 1;
/// Exit status by which a worker reports a critical error: the server stops (Odoo's rule).
pub const EXIT_CRITICAL: i32 = 3;

/// How often an idle worker wakes to show it is alive (its heartbeat, which
/// `heartbeat_timeout` watches) and to check that its master is still there, in case the
/// death signal did not arrive; the longest any wait of a worker lasts.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How a worker's loop ended.
pub enum Outcome {
    /// Left on purpose, for this reason.
    Left(ExitReason),
    /// Could not start; the master will retry with backoff.
    BootFailed,
}

impl Outcome {
    /// The exit status the process ends with, the reason written in its row first.
    pub fn exit_status(self, row: &WorkerRow) -> i32 {
        match self {
            Self::Left(reason) => {
                row.set_exit_reason(reason);
                EXIT_OK
            }
            Self::BootFailed => EXIT_BOOT_FAILED,
        }
    }
}

/// What ties a forked worker to its master.
pub struct WorkerContext<'a> {
    pub id: WorkerId,
    /// The config generation the worker belongs to.
    pub generation: u64,
    pub master_pid: Pid,
    /// Rung once the worker's row says it is ready, and when it starts work while the
    /// master rests.
    pub doorbell: &'a Doorbell,
    pub row: &'a WorkerRow,
    /// What all workers share with the master.
    pub board: &'a Board,
    /// A worker forked by a preload template starts as the child of a middle process that
    /// is exiting (see `kit`): that process while it lives, whose exit makes the master the
    /// parent. The worker serves meanwhile, and binds its parent-death signal once it is.
    pub middle_parent: Cell<Option<Pid>>,
}

impl WorkerContext<'_> {
    /// Marks the worker ready in its row and wakes the master to read it.
    pub fn report_ready(&self) {
        self.row.set_state(WorkerState::Idle);
        self.doorbell.ring();
    }

    /// Marks the worker busy with `method target`, waking the master if it rests (one
    /// atomic load on the per-request path; a system call only for the first request after
    /// a quiet spell).
    pub fn begin_work(&self, method: &str, target: &str) {
        self.row.begin_request(method, target);
        if self.board.take_master_resting() {
            self.doorbell.ring();
        }
    }

    /// `http worker 2 (pid 4312)`, the worker's name in its own log lines.
    pub fn name(&self) -> String {
        crate::id::worker_name(self.id, std::process::id())
    }

    /// Whether the master that forked this worker is gone.
    pub fn orphaned(&self) -> bool {
        let parent = getppid();
        parent != self.master_pid && Some(parent) != self.middle_parent.get()
    }

    /// Once a worker forked by a template is the master's child, binds its parent-death
    /// signal to the master (a system call per turn of its loop until then, none after).
    pub fn bind_to_master_once_adopted(&self) {
        if self.middle_parent.get().is_none() || getppid() != self.master_pid {
            return;
        }
        if let Err(errno) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
            error!(
                "{}: cannot set the parent-death signal: {errno}",
                self.name()
            );
        }
        // The master may have died between the two calls: `orphaned` then says so.
        self.middle_parent.set(None);
    }

    /// Common checks between two units of work: should this worker leave now, and why?
    pub fn stop_reason(&self, signals: &WorkerSignals) -> Option<ExitReason> {
        if self.told_to_stop(signals) {
            Some(ExitReason::Stopped)
        } else if self.orphaned() {
            Some(ExitReason::MasterGone)
        } else {
            None
        }
    }

    /// Whether the master told this worker to leave (SIGTERM, or its scoreboard flag). Only
    /// memory reads: cheap enough for the per-request path, unlike the parent check.
    pub fn told_to_stop(&self, signals: &WorkerSignals) -> bool {
        signals.stop_requested() || self.row.stop_requested()
    }

    /// Reopens the log file if the master asked (SIGUSR1).
    pub fn reopen_log_if_asked(&self, signals: &WorkerSignals) {
        if signals.take_reopen_log()
            && let Err(error) = crate::log::reopen()
        {
            error!("{}: {error}", self.name());
        }
    }
}

/// Where HTTP workers pass client connections to one another (see `sys::send_connection`):
/// two lanes, each a channel a worker sends on and an idle one takes from. `waiting`:
/// connections with a request waiting, which idle workers take first; `returning`: idle
/// ones, and clients whose last request ran long, which take their turn behind. The master
/// creates them and keeps every end for the server's life, reading none.
pub struct HandoffChannel {
    pub waiting: Lane,
    pub returning: Lane,
}

/// Which lane of the hand-off channel a connection goes to.
#[derive(Clone, Copy)]
pub(crate) enum HandoffLane {
    /// It has a request waiting: idle workers take it first.
    Waiting,
    /// It is idle, or its last request ran long: it takes its turn behind.
    Returning,
}

/// One lane of the hand-off channel: connections are sent on `send`, taken from `receive`.
pub struct Lane {
    pub send: OwnedFd,
    pub receive: OwnedFd,
}

impl HandoffChannel {
    pub fn new() -> std::io::Result<Self> {
        let lane = || -> std::io::Result<Lane> {
            let (send, receive) = sys::handoff_channel()?;
            Ok(Lane { send, receive })
        };
        Ok(Self {
            waiting: lane()?,
            returning: lane()?,
        })
    }

    pub(crate) fn lane(&self, lane: HandoffLane) -> &Lane {
        match lane {
            HandoffLane::Waiting => &self.waiting,
            HandoffLane::Returning => &self.returning,
        }
    }

    /// The channel's four descriptors, which a forked HTTP worker keeps.
    pub fn descriptors(&self) -> [RawFd; 4] {
        [
            self.waiting.send.as_raw_fd(),
            self.waiting.receive.as_raw_fd(),
            self.returning.send.as_raw_fd(),
            self.returning.receive.as_raw_fd(),
        ]
    }
}
