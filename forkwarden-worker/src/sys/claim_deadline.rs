//! A cron job's claim deadline, kept by the kernel (see [`ClaimDeadline`]).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use nix::errno::Errno;

use super::timers::{remove_signal_timer, set_timer, signal_timer};

/// The process group a cron job's claim deadline kills (0: none armed).
static CLAIMED_GROUP: AtomicI32 = AtomicI32::new(0);
/// Set by the handler once it has killed the group.
static CLAIM_EXPIRED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_claim_deadline(_: libc::c_int) {
    let group = CLAIMED_GROUP.swap(0, Ordering::SeqCst);
    if group > 0 {
        let saved = Errno::last_raw();
        // SAFETY: kill(2) is async-signal-safe and takes no memory; errno is restored.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        CLAIM_EXPIRED.store(true, Ordering::SeqCst);
        Errno::set_raw(saved);
    }
}

/// The moment a cron job's claim stops holding (its lease in a shared store, less a margin,
/// unrenewed), kept by the kernel: a timer whose signal (SIGALRM) kills the job's process
/// group then, whatever the cron worker is doing, even waiting in a renewal on a link cut
/// without a word. So a job never runs on past the moment another host may take it over.
/// One instance per process (a cron worker's, which runs no application code).
pub struct ClaimDeadline {
    timer: *mut libc::c_void,
}

impl ClaimDeadline {
    pub fn install() -> io::Result<Self> {
        // SAFETY: the handler only uses atomics and kill(2), and saves and restores errno.
        let timer = unsafe { signal_timer(libc::SIGALRM, on_claim_deadline) }?;
        Ok(Self { timer })
    }

    /// Kills process group `group` `after` from now, unless set again or cleared before.
    pub fn set(&self, group: nix::unistd::Pid, after: Duration) {
        CLAIM_EXPIRED.store(false, Ordering::SeqCst);
        CLAIMED_GROUP.store(group.as_raw(), Ordering::SeqCst);
        // A zero expiry would disarm the timer: a deadline already past fires at once.
        set_timer(self.timer, after.max(Duration::from_micros(1)));
    }

    /// No deadline any more (the job ended).
    pub fn clear(&self) {
        CLAIMED_GROUP.store(0, Ordering::SeqCst);
        set_timer(self.timer, Duration::ZERO);
    }

    /// Whether the deadline passed and the job's group was killed (since the last `set`).
    pub fn expired(&self) -> bool {
        CLAIM_EXPIRED.load(Ordering::SeqCst)
    }
}

impl Drop for ClaimDeadline {
    fn drop(&mut self) {
        self.clear();
        // SAFETY: the timer `install` made for SIGALRM, deleted once (here).
        unsafe { remove_signal_timer(self.timer, libc::SIGALRM) };
    }
}
