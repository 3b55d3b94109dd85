//! Signal handling on the worker side (stop, log reopening), and the signal-aware waits a
//! worker sleeps in.
//!
//! The master takes its signals through signal-hook's self-pipe; a forked worker must not
//! (those handlers write to the master's pipe), so [`super::fork_process`] resets them and
//! the worker installs the tiny handlers below.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::PollFd;
use nix::sys::epoll::{Epoll, EpollEvent};
use nix::sys::signal::{
    self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction,
};
use nix::sys::time::TimeSpec;

/// Signals the master handles (through signal-hook); a new child resets them to default.
pub const MASTER_SIGNALS: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGQUIT,
    Signal::SIGCHLD,
];

/// Signals a worker acts on only between requests: blocked while application code runs,
/// unblocked inside the worker's waits. A stop request thus never cuts a request short; it
/// ends the wait the worker is in, or the next one.
const DEFERRED: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1];

/// Signals meant for the master that a worker may also get (a terminal's Ctrl-\ reaches the
/// whole process group; SIGTTIN/SIGTTOU would otherwise stop it).
const IGNORED: [Signal; 5] = [
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR2,
];

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
static REOPEN_LOG_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_deferred_signal(signal: libc::c_int) {
    // Only atomic stores: async-signal-safe, and errno is left untouched.
    match signal {
        libc::SIGTERM | libc::SIGINT => STOP_REQUESTED.store(true, Ordering::SeqCst),
        libc::SIGUSR1 => REOPEN_LOG_REQUESTED.store(true, Ordering::SeqCst),
        _ => {}
    }
}

/// A worker's signal state: handlers installed, deferred signals blocked outside waits.
pub struct WorkerSignals {
    /// The mask in force while waiting: the worker's mask without the deferred signals.
    wait_mask: SigSet,
}

impl WorkerSignals {
    /// Installs the worker's handlers and mask. Call once, early, in a freshly forked worker
    /// (which starts with every signal blocked, see [`super::fork_process`]).
    pub fn install() -> nix::Result<Self> {
        let deferred = SigAction::new(
            SigHandler::Handler(on_deferred_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        for signal in DEFERRED {
            // SAFETY: the handler only performs atomic stores, which are async-signal-safe.
            unsafe { sigaction(signal, &deferred) }?;
        }
        for signal in IGNORED {
            // SAFETY: SIG_IGN runs no code in signal context.
            unsafe { sigaction(signal, &ignore) }?;
        }
        let mut blocked = SigSet::empty();
        for signal in DEFERRED {
            blocked.add(signal);
        }
        signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&blocked), None)?;
        Ok(Self {
            wait_mask: SigSet::empty(),
        })
    }

    /// Waits that do not touch the signal mask, for unit tests (no handlers installed);
    /// the supervisor's tests get it with the `test-support` feature.
    #[cfg(any(test, feature = "test-support"))]
    pub fn for_tests() -> Self {
        Self {
            wait_mask: SigSet::thread_get_mask().unwrap_or_else(|_| SigSet::empty()),
        }
    }

    /// True once SIGTERM or SIGINT has arrived: finish the current request, then exit.
    pub fn stop_requested(&self) -> bool {
        STOP_REQUESTED.load(Ordering::SeqCst)
    }

    /// True once per SIGUSR1: reopen the log file.
    pub fn take_reopen_log(&self) -> bool {
        REOPEN_LOG_REQUESTED.swap(false, Ordering::SeqCst)
    }

    /// `ppoll(2)` with the deferred signals unblocked for the duration of the wait.
    /// Returns the number of ready descriptors; 0 on timeout or when a signal ended the wait.
    pub fn poll(&self, fds: &mut [PollFd], timeout: Option<Duration>) -> nix::Result<usize> {
        match nix::poll::ppoll(fds, timeout.map(TimeSpec::from), Some(self.wait_mask)) {
            Ok(ready) => Ok(usize::try_from(ready).unwrap_or(0)),
            Err(Errno::EINTR) => Ok(0),
            Err(errno) => Err(errno),
        }
    }

    /// `epoll_pwait(2)` with the deferred signals unblocked for the duration of the wait.
    /// Returns the number of events written to `events`; 0 on timeout or signal.
    pub fn epoll_wait(
        &self,
        epoll: &Epoll,
        events: &mut [EpollEvent],
        timeout: Duration,
    ) -> nix::Result<usize> {
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let capacity = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` is a live, writable slice of `EpollEvent`, which is
        // `repr(transparent)` over `libc::epoll_event`, and the kernel writes at most
        // `capacity` (<= its length) entries; the mask points to a live `sigset_t`.
        let ready = unsafe {
            libc::epoll_pwait(
                epoll.0.as_fd().as_raw_fd(),
                events.as_mut_ptr().cast::<libc::epoll_event>(),
                capacity,
                timeout_ms,
                self.wait_mask.as_ref(),
            )
        };
        match Errno::result(ready) {
            Ok(ready) => Ok(usize::try_from(ready).unwrap_or(0)),
            Err(Errno::EINTR) => Ok(0),
            Err(errno) => Err(errno),
        }
    }
}
