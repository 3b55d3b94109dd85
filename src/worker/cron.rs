//! The cron worker's loop.
//!
//! Cron workers are forked, supervised, limited and replaced exactly like HTTP workers.
//! Running scheduled jobs in them is the cron issue's work; until then a cron worker reports
//! ready and waits to be stopped, which keeps the population, signals and respawn logic
//! identical for both roles.

use tracing::warn;

use super::{Outcome, PARENT_CHECK_INTERVAL, WorkerSpec, reopen_log_if_asked, stop_reason};
use crate::scoreboard::WorkerState;
use crate::sys::WorkerSignals;

pub(super) fn run(spec: &WorkerSpec<'_>, signals: &WorkerSignals) -> Outcome {
    spec.row.set_state(WorkerState::Idle);
    if let Err(error) = spec.notifier.send("READY=1") {
        warn!(
            "{}: cannot report ready to the master: {error}",
            spec.name()
        );
    }
    loop {
        if let Some(reason) = stop_reason(spec, signals) {
            return Outcome::Left(reason);
        }
        reopen_log_if_asked(spec, signals);
        let _ = signals.poll(&mut [], Some(PARENT_CHECK_INTERVAL));
    }
}
