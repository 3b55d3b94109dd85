//! POSIX timers that fire a signal: the hand-off alarm's and the claim deadline's.

use std::io;
use std::time::Duration;

use super::errno_result;

/// Arms `timer` to fire once `after` from now (async-signal-safe).
pub(super) fn arm_timer(timer: *mut libc::c_void, after: Duration) {
    if !timer.is_null() {
        set_timer(timer, after);
    }
}

/// Sets `timer` (a live POSIX timer of this process) to fire once `after` from now; zero
/// disarms it. Async-signal-safe (timer_settime only).
pub(super) fn set_timer(timer: *mut libc::c_void, after: Duration) {
    let when = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(after.subsec_nanos()),
        },
    };
    // SAFETY: `timer` is a live timer this process created (the callers' contract: each
    // keeps the one it made until it deletes it), `when` is a live local; timer_settime is
    // async-signal-safe.
    unsafe { libc::timer_settime(timer, 0, &when, std::ptr::null_mut()) };
}

/// A POSIX timer on CLOCK_MONOTONIC that delivers `signal` when it fires, with `handler`
/// installed for it (run with every signal blocked, and restarting interrupted calls).
///
/// # Safety
///
/// `handler` must be async-signal-safe and keep errno as it found it.
pub(super) unsafe fn signal_timer(
    signal: libc::c_int,
    handler: extern "C" fn(libc::c_int),
) -> io::Result<*mut libc::c_void> {
    // SAFETY: sigevent is a plain C struct, for which all-zero bytes are a valid value.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_SIGNAL;
    event.sigev_signo = signal;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: `event` and `timer` are live locals of the types timer_create expects.
    errno_result(unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) })?;
    // SAFETY: sigaction is a plain C struct, for which all-zero bytes are a valid value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action.sa_mask` is a live sigset_t of ours; sigfillset only writes it. Then
    // the caller's contract: the handler is async-signal-safe; `action` is a live local.
    let installed = unsafe {
        libc::sigfillset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if let Err(error) = errno_result(installed) {
        // SAFETY: the timer was just created, and is deleted once.
        unsafe { libc::timer_delete(timer) };
        return Err(error);
    }
    Ok(timer)
}

/// Stops the timer made by [`signal_timer`] and lets its signal be ignored from now on.
///
/// # Safety
///
/// `timer` is the live timer `signal_timer` returned for `signal`, deleted only here.
pub(super) unsafe fn remove_signal_timer(timer: *mut libc::c_void, signal: libc::c_int) {
    // SAFETY: SIG_IGN runs no code; the timer is ours (the caller's contract).
    unsafe {
        libc::signal(signal, libc::SIG_IGN);
        libc::timer_delete(timer);
    }
}
