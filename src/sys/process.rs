//! Forking a worker, and leaving a process without running its parent's exit code.

use std::io;
use std::panic::{self, AssertUnwindSafe};

use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow};
use nix::unistd::{ForkResult, Pid};

use super::signals::MASTER_SIGNALS;

/// Exit status of a forked child whose closure panicked instead of returning (EX_SOFTWARE).
const EXIT_CHILD_PANICKED: i32 = 70;

/// Forks the calling process; the child runs `child` and exits with the status it returns.
///
/// The caller must be single-threaded (the master checks [`thread_count`] before its first
/// fork): the child of a single-threaded process is a complete copy with no lock held by a
/// vanished thread, so it may run ordinary Rust code, not only async-signal-safe calls.
///
/// Every signal is blocked across the fork, so none reaches the child while it still has
/// the master's handlers. The child resets the master's handlers to their defaults and
/// starts `child` with all signals still blocked: `child` installs its own handlers and
/// mask (see [`super::WorkerSignals::install`]). `child` never returns into the caller's
/// code: the child process ends in [`exit_now`], so none of the master's state is dropped
/// (or its descriptors closed) a second time from the child.
pub fn fork_process(child: impl FnOnce() -> i32) -> nix::Result<Pid> {
    let mut previous = SigSet::empty();
    signal::pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut previous),
    )?;
    // SAFETY: the caller is single-threaded (see above), so the child is a consistent copy
    // of the only thread and may go on running any code.
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Ok(ForkResult::Parent { child }) => {
            signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
            Ok(child)
        }
        Ok(ForkResult::Child) => {
            reset_master_handlers();
            let status =
                panic::catch_unwind(AssertUnwindSafe(child)).unwrap_or(EXIT_CHILD_PANICKED);
            exit_now(status)
        }
        Err(errno) => {
            signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
            Err(errno)
        }
    }
}

/// Puts the signals the master handles back to their default action in a new child.
fn reset_master_handlers() {
    for signal in MASTER_SIGNALS {
        // SAFETY: installing SIG_DFL runs no code of ours in signal context, so there is no
        // handler whose async-signal-safety could be in question.
        // Failure is impossible for these valid, catchable signals; ignoring it is safe.
        let _ = unsafe { signal::signal(signal, SigHandler::SigDfl) };
    }
}

/// Ends the process at once with `status`, without atexit handlers or stdio flushing.
///
/// A forked worker must leave this way: the atexit handlers and buffers it inherited
/// belong to the master, and running them twice would duplicate the master's output.
pub fn exit_now(status: i32) -> ! {
    // SAFETY: _exit(2) takes no pointers and cannot fail; it ends the process without
    // touching any Rust state, so no invariant can be observed broken afterwards.
    unsafe { libc::_exit(status) }
}

/// Number of threads in this process, from `/proc/self/status`.
///
/// The master refuses to fork from a threaded process (see [`fork_process`]).
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// A child that has exited: its status as waitpid(2) gives it, and the CPU it used.
pub struct Reaped {
    pub status: nix::sys::wait::WaitStatus,
    /// User plus system CPU time of the child over its life.
    pub cpu: std::time::Duration,
}

/// Reaps one exited child without blocking, with its CPU usage (`wait4(2)`, which nix does
/// not offer). `Ok(None)`: no child has exited (or there are no children).
pub fn reap_child() -> nix::Result<Option<Reaped>> {
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `status` and `usage` are live, writable locals of the types wait4 expects; it
    // writes them only when it returns a pid.
    let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, usage.as_mut_ptr()) };
    match nix::errno::Errno::result(pid) {
        Ok(0) | Err(nix::errno::Errno::ECHILD) => Ok(None),
        Ok(pid) => {
            // SAFETY: rusage is plain integers, valid when zeroed, and wait4 filled it in.
            let usage = unsafe { usage.assume_init() };
            let time = |value: libc::timeval| {
                std::time::Duration::new(
                    value.tv_sec.max(0) as u64,
                    value.tv_usec.max(0) as u32 * 1000,
                )
            };
            Ok(Some(Reaped {
                status: nix::sys::wait::WaitStatus::from_raw(Pid::from_raw(pid), status)?,
                cpu: time(usage.ru_utime) + time(usage.ru_stime),
            }))
        }
        Err(errno) => Err(errno),
    }
}
