//! Forking a worker, and leaving a process without running its parent's exit code.

use std::io;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
#[cfg(test)]
use std::time::Duration;

use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow};
use nix::unistd::{ForkResult, Pid};

use super::signals::MASTER_SIGNALS;

/// Exit status of a forked child whose closure panicked instead of returning (EX_SOFTWARE).
const EXIT_CHILD_PANICKED: i32 = 70;

/// Forks the calling process; the child closes every descriptor but 0-2 and `keep`, then
/// runs `child` and exits with the status it returns.
///
/// Refuses (with an error) when the process has more than one thread: the child of a
/// single-threaded process is a complete copy with no lock held by a vanished thread, so it
/// may run ordinary Rust code, not only async-signal-safe calls. The count is read at each
/// call; it cannot change before the fork, since only this thread could start another.
///
/// Every signal is blocked across the fork, so none reaches the child while it still has
/// the master's handlers. The child resets the master's handlers to their defaults and
/// starts `child` with all signals still blocked: `child` installs its own handlers and
/// mask (see [`super::WorkerSignals::install`]). `child` never returns into the caller's
/// code: the child process ends in [`exit_now`], so none of the master's state is dropped
/// (or its descriptors closed) a second time from the child.
///
/// # Safety
///
/// In the child, every descriptor other than 0, 1, 2 and those in `keep` is closed before
/// `child` runs, whoever owns it. `child` must therefore use no descriptor it can reach
/// except those in `keep` (and the standard streams); it may open new ones.
pub unsafe fn fork_process(keep: &[RawFd], child: impl FnOnce() -> i32) -> io::Result<Pid> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot fork safely: this process has {threads} threads"
        )));
    }
    let keep = keep.to_vec();
    let mut previous = SigSet::empty();
    signal::pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut previous),
    )?;
    // SAFETY: the process is single-threaded (checked above, and only this thread could
    // have started another since), so the child is a consistent copy of the only thread and
    // may go on running any code.
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Ok(ForkResult::Parent { child }) => {
            signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
            Ok(child)
        }
        Ok(ForkResult::Child) => {
            reset_master_handlers();
            close_descriptors_except(keep);
            let status =
                panic::catch_unwind(AssertUnwindSafe(child)).unwrap_or(EXIT_CHILD_PANICKED);
            exit_now(status)
        }
        Err(errno) => {
            signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
            Err(errno.into())
        }
    }
}

/// Closes every descriptor from 3 up except those in `keep`: a forked worker keeps only what
/// it needs (not the master's sockets, pipes of other workers, or the listener in a cron
/// worker). Only `fork_process` calls it, in the child, under that function's contract.
fn close_descriptors_except(keep: Vec<RawFd>) {
    for (first, last) in ranges_to_close(keep) {
        close_range(first, last);
    }
}

/// The ranges of descriptor numbers from 3 up that are not in `keep`.
fn ranges_to_close(mut keep: Vec<RawFd>) -> Vec<(u32, u32)> {
    keep.retain(|fd| *fd > 2);
    keep.sort_unstable();
    keep.dedup();
    let mut ranges = Vec::new();
    let mut first: u32 = 3;
    for fd in keep {
        let Ok(kept) = u32::try_from(fd) else {
            continue;
        };
        if kept > first {
            ranges.push((first, kept - 1));
        }
        first = kept.saturating_add(1);
    }
    ranges.push((first, u32::MAX));
    ranges
}

/// Closes descriptors `first..=last` (close_range(2); one close(2) per number before 5.9).
fn close_range(first: u32, last: u32) {
    // SAFETY: close_range takes numbers, no memory; the descriptors it closes belong to
    // objects the caller of `fork_process` promised the child never uses.
    if unsafe { libc::close_range(first, last, 0) } == 0 {
        return;
    }
    let open_max = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1 << 20, |(soft, _)| soft.min(1 << 20));
    let last = u64::from(last).min(open_max.saturating_sub(1));
    for fd in u64::from(first)..=last {
        if let Ok(fd) = i32::try_from(fd) {
            // SAFETY: as above; numbers that are not open give EBADF, which is ignored.
            unsafe { libc::close(fd) };
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

/// What a look for an exited child found.
pub enum Exited {
    /// Child `pid` has exited, and is not reaped yet: its pid, and the process group id it
    /// leads, are still its own until [`reap`] is called.
    Child(Pid),
    /// Children exist, none has exited.
    None,
    /// This process has no children at all.
    NoChildren,
}

/// Finds a child that has exited, without waiting and without reaping it (`waitid` with
/// `WNOWAIT`): what must be done by its pid (kill its process group) is done before [`reap`]
/// lets the kernel give the number to another process.
pub fn exited_child() -> nix::Result<Exited> {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match nix::sys::wait::waitid(Id::All, flags) {
        Ok(WaitStatus::StillAlive) => Ok(Exited::None),
        Ok(status) => match status.pid() {
            Some(pid) => Ok(Exited::Child(pid)),
            None => Ok(Exited::None),
        },
        Err(nix::errno::Errno::ECHILD) => Ok(Exited::NoChildren),
        Err(errno) => Err(errno),
    }
}

/// Reaps exited child `pid` without blocking, with its CPU usage (`wait4(2)`, which nix does
/// not offer).
pub fn reap(pid: Pid) -> nix::Result<Reaped> {
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `status` and `usage` are live, writable locals of the types wait4 expects; it
    // writes them only when it returns a pid.
    let reaped =
        unsafe { libc::wait4(pid.as_raw(), &mut status, libc::WNOHANG, usage.as_mut_ptr()) };
    match nix::errno::Errno::result(reaped)? {
        0 => Err(nix::errno::Errno::EAGAIN),
        reaped => {
            // SAFETY: rusage is plain integers, valid when zeroed, and wait4 filled it in.
            let usage = unsafe { usage.assume_init() };
            let time = |value: libc::timeval| {
                std::time::Duration::new(
                    u64::try_from(value.tv_sec).unwrap_or(0),
                    u32::try_from(value.tv_usec)
                        .unwrap_or(0)
                        .saturating_mul(1000),
                )
            };
            Ok(Reaped {
                status: nix::sys::wait::WaitStatus::from_raw(Pid::from_raw(reaped), status)?,
                cpu: time(usage.ru_utime) + time(usage.ru_stime),
            })
        }
    }
}

/// Signals a forked worker may have set to "ignore", which exec would otherwise pass on.
const IGNORED_IN_WORKERS: [libc::c_int; 6] = [
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR2,
    libc::SIGPIPE,
];

/// Prepares `command` to run as a supervised job: between fork and exec the child sets its
/// parent-death signal to SIGKILL (it must not outlive the cron worker that waits for it),
/// checks that the cron worker is still there, and puts every signal back to its default
/// action (std resets only the mask and SIGPIPE), and lets no descriptor beyond 0-2 through.
/// Use it with `process_group(0)`, so that a kill of the group reaches the job's children too.
pub fn supervise_job(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid().as_raw();
    let hook = move || -> std::io::Result<()> {
        // SAFETY: only async-signal-safe calls (prctl, getppid, signal), as required
        // between fork and exec; no allocation (io::Error from an errno number allocates
        // nothing), no lock.
        unsafe {
            super::errno_result(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            if libc::getppid() != parent {
                // The cron worker is gone: as if the job had been killed with it.
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            for signal in IGNORED_IN_WORKERS {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        // Nothing beyond stdin, stdout and stderr (the job's pipes) reaches the job, not even
        // what forkwarden inherited without close-on-exec.
        mark_close_on_exec_from(3)?;
        Ok(())
    };
    // SAFETY: the hook above only makes async-signal-safe calls.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Prepares `command` to run as another account (`forkwarden check` loading the
/// application as its workers would): between fork and exec the child takes `groups` as
/// its supplementary groups, then `gid`, then `uid`, so that nothing of root is left, and
/// dies with its parent. Only for a process that runs as root; the calls fail otherwise.
pub fn run_as_account(
    command: &mut std::process::Command,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
    groups: &[nix::unistd::Gid],
) {
    use std::os::unix::process::CommandExt;
    // Made before the fork: the hook must not allocate.
    let groups: Vec<libc::gid_t> = groups.iter().map(|group| group.as_raw()).collect();
    let (uid, gid) = (uid.as_raw(), gid.as_raw());
    let hook = move || -> std::io::Result<()> {
        // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid, prctl) on values
        // made before the fork, as required between fork and exec; `groups` outlives the
        // call and its length is the number of entries passed.
        unsafe {
            super::errno_result(libc::setgroups(groups.len(), groups.as_ptr()))?;
            super::errno_result(libc::setgid(gid))?;
            super::errno_result(libc::setuid(uid))?;
            super::errno_result(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
        }
        Ok(())
    };
    // SAFETY: the hook above only makes async-signal-safe calls.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Lowers this process's scheduling priority by `increment` (`nice(2)`); its future
/// children inherit the new value.
pub fn lower_priority(increment: i32) -> nix::Result<()> {
    nix::errno::Errno::clear();
    // SAFETY: nice(2) takes an integer and returns one; -1 is a valid result, so errno
    // (cleared just before) tells a failure apart.
    let result = unsafe { libc::nice(increment) };
    match nix::errno::Errno::last() {
        nix::errno::Errno::UnknownErrno => Ok(()),
        errno if result == -1 => Err(errno),
        _ => Ok(()),
    }
}

/// Makes sure descriptors 0, 1 and 2 are open (on /dev/null when they were closed), so that
/// no socket or pipe of ours can land on them and be clobbered when a program's standard
/// streams are set up.
pub fn ensure_standard_fds() -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the flags of a descriptor number; no memory is passed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags == -1 && nix::errno::Errno::last() == nix::errno::Errno::EBADF {
            // open(2) returns the lowest free descriptor: this one. It stays open for good.
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            let _ = null.into_raw_fd();
        }
    }
    Ok(())
}

/// The descriptor a socket-activated program finds its listening socket on (systemd's
/// `SD_LISTEN_FDS_START`); the others a program is given follow it.
pub const LISTEN_FD: i32 = 3;

/// Replaces this (forked) process with `program`, the way systemd starts a socket-activated
/// service: `listener` (if any) on descriptor 3 (and, like stdout/stderr, kept across exec),
/// the output pipes on 1 and 2, `extra` (a template's channels, the worker kit) on 4, 5...,
/// no other descriptor (not even one forkwarden inherited without close-on-exec from
/// whoever started it), no signal blocked and none ignored. Returns only on failure.
pub fn exec_socket_activated(
    program: &std::ffi::CStr,
    args: &[std::ffi::CString],
    env: &[std::ffi::CString],
    listener: Option<std::os::fd::BorrowedFd<'_>>,
    extra: &[std::os::fd::BorrowedFd<'_>],
    stdout: std::os::fd::BorrowedFd<'_>,
    stderr: std::os::fd::BorrowedFd<'_>,
) -> std::io::Error {
    use std::os::fd::AsRawFd;
    /// At most this many extra descriptors (no allocation between fork and exec).
    const MAX_EXTRA: usize = 12;
    let prepared = (|| -> nix::Result<()> {
        if extra.len() > MAX_EXTRA {
            return Err(nix::errno::Errno::EINVAL);
        }
        nix::unistd::dup2_stdout(stdout)?;
        nix::unistd::dup2_stderr(stderr)?;
        // Where each goes: the listener on 3, the extras from 4 on.
        let first_free = LISTEN_FD + 1 + extra.len() as i32;
        let mut sources = [-1; 1 + MAX_EXTRA];
        sources[0] = listener.map_or(-1, |fd| fd.as_raw_fd());
        for (slot, fd) in sources[1..].iter_mut().zip(extra) {
            *slot = fd.as_raw_fd();
        }
        // A source sitting where another one goes is moved out of the way first.
        for (index, source) in sources.iter_mut().enumerate() {
            let target = LISTEN_FD + index as i32;
            if *source >= LISTEN_FD && *source < first_free && *source != target {
                // SAFETY: the descriptor number is open (it was lent to us), and
                // F_DUPFD_CLOEXEC only makes a new descriptor for it.
                *source = nix::errno::Errno::result(unsafe {
                    libc::fcntl(*source, libc::F_DUPFD_CLOEXEC, first_free)
                })?;
            }
        }
        for (index, source) in sources.iter().enumerate() {
            if *source >= 0 {
                place_descriptor(*source, LISTEN_FD + index as i32)?;
            }
        }
        if listener.is_none() && !extra.is_empty() {
            // SAFETY: F_SETFD only changes the flags of a descriptor number; no memory is
            // passed. EBADF (nothing on 3) is fine.
            unsafe { libc::fcntl(LISTEN_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        let first_closed = if extra.is_empty() && listener.is_none() {
            LISTEN_FD
        } else {
            first_free
        };
        mark_close_on_exec_from(first_closed)?;
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        )?;
        // SAFETY: SIG_DFL runs no code of ours in signal context. (Rust ignores SIGPIPE; a
        // program expects the default, as exec would give it had we not ignored it.)
        unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, SigHandler::SigDfl) }?;
        Ok(())
    })();
    if let Err(errno) = prepared {
        return errno.into();
    }
    match nix::unistd::execvpe(program, args, env) {
        Ok(never) => match never {},
        Err(errno) => errno.into(),
    }
}

/// Makes descriptor `target` a copy of `fd` that exec keeps (between fork and exec: system
/// calls only).
fn place_descriptor(fd: i32, target: i32) -> nix::Result<()> {
    if fd == target {
        // SAFETY: F_SETFD only changes the flags of a descriptor number; no memory is passed.
        return nix::errno::Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop);
    }
    // SAFETY: dup2 takes two descriptor numbers; whatever descriptor `target` held is closed
    // by it, which is intended: every descriptor of ours is close-on-exec anyway, and this
    // process is about to become the program. The copy dup2 makes has close-on-exec clear.
    nix::errno::Errno::result(unsafe { libc::dup2(fd, target) }).map(drop)
}

/// A new descriptor (close-on-exec) for the open file description behind descriptor number
/// `fd`, which stays as it is: for taking a file some other part of the process (Python)
/// owns, without touching its owner's descriptor. EBADF if `fd` is not open.
pub fn duplicate_descriptor(fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl with F_DUPFD_CLOEXEC takes a descriptor number and returns a new one;
    // no memory is passed, and `fd` is left as it was.
    let copy = super::errno_result(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `copy` was just created by fcntl and is owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(copy) })
}

/// A descriptor of our own for `fd`, a descriptor number this process was started with
/// (the worker kit, the listening socket), which is marked close-on-exec so that nothing
/// the program starts inherits it. The number itself is left open: something else in the
/// process (the interpreter) may hold it, and closing it under that owner would be wrong.
pub fn adopt_inherited(fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl with F_DUPFD_CLOEXEC takes a descriptor number and returns a new one;
    // no memory is passed, and the number's owner (if any) keeps its descriptor as it was.
    let copy = super::errno_result(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: as above; F_SETFD changes only the close-on-exec flag of the number.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the kernel just made this descriptor for us; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(copy) })
}

/// Marks every descriptor from `first` up close-on-exec, so that exec leaves none of them to
/// the program. Nothing is closed in this process, so nothing it holds becomes invalid.
/// Only system calls, no allocation: usable between fork and exec.
fn mark_close_on_exec_from(first: i32) -> nix::Result<()> {
    let first = u32::try_from(first).unwrap_or(u32::MAX);
    // SAFETY: with CLOSE_RANGE_CLOEXEC, close_range only sets the close-on-exec flag of
    // descriptors; it takes no pointer and closes nothing.
    let marked = unsafe { libc::close_range(first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
    if marked == 0 {
        return Ok(());
    }
    // Kernels before 5.11: every descriptor number this process may have open.
    let (open_max, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    let last = i32::try_from(open_max.min(1 << 20)).unwrap_or(1 << 20);
    for fd in i32::try_from(first).unwrap_or(i32::MAX)..last {
        // SAFETY: F_SETFD only changes the flags of a descriptor number; no memory is passed.
        // Numbers that are not open give EBADF, which is ignored.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Sets the soft RLIMIT_CPU of another process to `soft` seconds of CPU, with `hard` as its
/// hard limit (`prlimit(2)`): how `limit_time_cpu` reaches a program we exec.
pub fn set_cpu_limit_of(pid: Pid, soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard.max(soft),
    };
    // SAFETY: `limit` is a live, initialised rlimit; the old-value pointer is null, which
    // prlimit accepts.
    let result =
        unsafe { libc::prlimit(pid.as_raw(), libc::RLIMIT_CPU, &limit, std::ptr::null_mut()) };
    nix::errno::Errno::result(result)
        .map(drop)
        .map_err(Into::into)
}

/// Caps the address space of another process at `bytes` (soft and hard RLIMIT_AS, with
/// `prlimit(2)`): how `limit_memory_hard` reaches a worker forked by a preload template,
/// which the master does not start itself.
pub fn set_address_space_limit_of(pid: Pid, bytes: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: `limit` is a live, initialised rlimit; the old-value pointer is null, which
    // prlimit accepts.
    let result =
        unsafe { libc::prlimit(pid.as_raw(), libc::RLIMIT_AS, &limit, std::ptr::null_mut()) };
    nix::errno::Errno::result(result)
        .map(drop)
        .map_err(Into::into)
}

/// A limit [`set_job_limit_of`] moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobLimit {
    /// RLIMIT_CPU, in seconds of CPU time.
    Cpu,
    /// RLIMIT_AS, in bytes of address space.
    AddressSpace,
}

/// Moves the soft `limit` of another process (a job's, run by this job worker as the same
/// user) to `soft`, and its hard limit down to `hard` when given (a fresh process of its
/// own), else keeps the hard limit, which an unprivileged caller could not raise back: the
/// soft limit is then capped at it. `prlimit(2)`.
pub fn set_job_limit_of(
    pid: Pid,
    limit: JobLimit,
    soft: u64,
    hard: Option<u64>,
) -> std::io::Result<()> {
    let resource = match limit {
        JobLimit::Cpu => libc::RLIMIT_CPU,
        JobLimit::AddressSpace => libc::RLIMIT_AS,
    };
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: no new value (null), and `old` is a live rlimit the kernel writes into.
    let read = unsafe { libc::prlimit(pid.as_raw(), resource, std::ptr::null(), &mut old) };
    nix::errno::Errno::result(read)?;
    let hard = hard.map_or(old.rlim_max, |hard| hard.min(old.rlim_max));
    let new = libc::rlimit {
        rlim_cur: soft.min(hard),
        rlim_max: hard,
    };
    // SAFETY: `new` is a live, initialised rlimit; the old-value pointer is null.
    let written = unsafe { libc::prlimit(pid.as_raw(), resource, &new, std::ptr::null_mut()) };
    nix::errno::Errno::result(written)
        .map(drop)
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft and hard RLIMIT_CPU of a fresh process after `set` moved its limits.
    fn cpu_limits_after(set: impl FnOnce(Pid)) -> [String; 2] {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        set(pid);
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let cpu = limits
            .lines()
            .find(|line| line.starts_with("Max cpu time"))
            .unwrap();
        let words: Vec<&str> = cpu.split_whitespace().collect();
        [words[3].to_string(), words[4].to_string()]
    }

    #[test]
    fn a_job_limit_moves_the_soft_limit_under_the_hard_one() {
        let limits = cpu_limits_after(|pid| {
            set_job_limit_of(pid, JobLimit::Cpu, 7, Some(9)).unwrap();
            set_job_limit_of(pid, JobLimit::AddressSpace, 1 << 40, None).unwrap();
        });
        assert_eq!(limits, ["7", "9"]);
        // A soft limit above the hard one is capped, never an error.
        let limits = cpu_limits_after(|pid| {
            set_job_limit_of(pid, JobLimit::Cpu, 20, Some(3)).unwrap();
        });
        assert_eq!(limits, ["3", "3"]);
    }

    /// The test harness runs tests on threads: the very case `fork_process` must refuse.
    #[test]
    fn forking_or_retitling_a_threaded_process_is_refused() {
        let helper = std::thread::spawn(|| std::thread::park_timeout(Duration::from_secs(5)));
        // SAFETY: the child would run nothing; the call refuses before it forks.
        let forked = unsafe { fork_process(&[], || 0) };
        assert!(forked.is_err_and(|error| error.to_string().contains("threads")));
        assert!(super::super::init_process_title().is_err());
        helper.thread().unpark();
        helper.join().unwrap();
    }

    #[test]
    fn everything_between_the_kept_descriptors_is_closed() {
        assert_eq!(
            ranges_to_close(vec![9, 4, 4, 2, 12]),
            [(3, 3), (5, 8), (10, 11), (13, u32::MAX)]
        );
        assert_eq!(ranges_to_close(vec![]), [(3, u32::MAX)]);
    }
}
