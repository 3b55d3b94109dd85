//! Signal handling on the worker side, and the signal-aware waits a worker sleeps in.
//!
//! The master takes its signals through signal-hook's self-pipe; a forked worker must not
//! (those handlers write to the master's pipe), so [`super::fork_process`] resets them and
//! the worker installs the tiny handlers below.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
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

    /// Waits that do not touch the signal mask, for unit tests (no handlers installed).
    #[cfg(test)]
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

/// Answer to a request whose worker ran past `limit_time_cpu` (precomposed: a signal handler
/// may not allocate or format).
const ANSWER_CPU: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 32\r\nConnection: close\r\n\r\nrequest exceeded limit_time_cpu\n";
/// Answer to a request that ran past `limit_time_real`.
const ANSWER_REAL: &[u8] = b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\n\
Content-Length: 33\r\nConnection: close\r\n\r\nrequest exceeded limit_time_real\n";

/// Client to answer when a limit signal arrives; -1 while no request is in the application.
static ANSWER_FD: AtomicI32 = AtomicI32::new(-1);
/// Scoreboard word that records why the worker left; null when not installed.
static REASON_WORD: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
static CPU_REASON: AtomicU64 = AtomicU64::new(0);
static REAL_REASON: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_request_limit(signal: libc::c_int) {
    let fd = ANSWER_FD.load(Ordering::SeqCst);
    if signal == libc::SIGXCPU && fd < 0 {
        // The CPU budget belongs to a request; between requests it is stale (the next
        // request re-arms it). SIGUSR2 always ends the worker: the master decided.
        return;
    }
    let (reason, answer) = if signal == libc::SIGXCPU {
        (CPU_REASON.load(Ordering::SeqCst), ANSWER_CPU)
    } else {
        (REAL_REASON.load(Ordering::SeqCst), ANSWER_REAL)
    };
    let word = REASON_WORD.load(Ordering::SeqCst);
    if !word.is_null() {
        // SAFETY: a non-null pointer comes from `RequestLimitSignals::install`, whose contract
        // keeps the word alive until `Drop` nulls it (after uninstalling this handler).
        unsafe { (*word).store(reason, Ordering::SeqCst) };
    }
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe and reads only the static answer; a failed or
        // short write (client gone, buffer full) only means the client gets less.
        let _ = unsafe { libc::write(fd, answer.as_ptr().cast(), answer.len()) };
    }
    // SAFETY: _exit(2) is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(0) }
}

/// The per-request limits a worker enforces through signals: SIGXCPU, from its CPU-time
/// timer or RLIMIT_CPU (`limit_time_cpu`), and SIGUSR2, sent by the master past
/// `limit_time_real`. Either handler records why in the worker's scoreboard word, answers the
/// request in flight (503 or 504) if there is one, and ends the worker at once: its state is
/// mid-request and cannot be trusted any further. SIGXCPU is ignored outside a request.
pub struct RequestLimitSignals<'a> {
    reason: PhantomData<&'a AtomicU64>,
}

impl<'a> RequestLimitSignals<'a> {
    /// Installs both handlers; `cpu_reason` or `real_reason` is stored into `reason` when
    /// the matching signal arrives. One instance per process at a time.
    ///
    /// # Safety
    ///
    /// The handlers keep a pointer to `reason` until the returned value is dropped, which
    /// uninstalls them. The caller must let it drop normally (never `mem::forget` it, nor
    /// leak it in a cycle) or ensure `reason` outlives the process, as a forked worker's
    /// scoreboard row does: it is unmapped only when the worker exits.
    pub unsafe fn install(
        reason: &'a AtomicU64,
        cpu_reason: u64,
        real_reason: u64,
    ) -> nix::Result<Self> {
        CPU_REASON.store(cpu_reason, Ordering::SeqCst);
        REAL_REASON.store(real_reason, Ordering::SeqCst);
        REASON_WORD.store(std::ptr::from_ref(reason).cast_mut(), Ordering::SeqCst);
        let action = SigAction::new(
            SigHandler::Handler(on_request_limit),
            SaFlags::empty(),
            SigSet::all(),
        );
        for signal in [Signal::SIGXCPU, Signal::SIGUSR2] {
            // SAFETY: the handler only performs atomic operations, write(2) and _exit(2), all
            // async-signal-safe; every signal is blocked while it runs.
            unsafe { sigaction(signal, &action) }?;
        }
        Ok(Self {
            reason: PhantomData,
        })
    }

    /// While `client` is set, a limit signal answers it before the worker exits. Set it only
    /// while the application handles a request (before anything of the response is written).
    pub fn answer_to(&self, client: Option<BorrowedFd<'_>>) {
        let fd = client.map_or(-1, |fd| fd.as_raw_fd());
        ANSWER_FD.store(fd, Ordering::SeqCst);
    }
}

impl Drop for RequestLimitSignals<'_> {
    fn drop(&mut self) {
        let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        // SAFETY: SIG_DFL and SIG_IGN run no code of ours in signal context.
        unsafe {
            let _ = sigaction(Signal::SIGXCPU, &default);
            let _ = sigaction(Signal::SIGUSR2, &ignore);
        }
        ANSWER_FD.store(-1, Ordering::SeqCst);
        REASON_WORD.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

/// How long a request may run before the idle kept-alive connections of its worker that
/// have a request waiting are handed to the other workers, so that their next requests do
/// not wait behind it; then how often it looks again while the request runs.
pub const HANDOFF_FIRST: Duration = Duration::from_millis(5);
pub const HANDOFF_AFTER: Duration = Duration::from_millis(20);

/// The board's counts the hand-off alarm reads (see `scoreboard::Board`).
pub struct HandoffCounts<'a> {
    /// HTTP workers waiting for work.
    pub idle_workers: &'a AtomicU64,
    /// HTTP workers serving.
    pub workers: &'a AtomicU64,
    /// HTTP workers inside a long request.
    pub long_requests: &'a AtomicU64,
    /// Connections waiting in the hand-off channel's waiting lane.
    pub handed_waiting: &'a AtomicU64,
}

/// Most idle connections a worker hands over from inside a long request.
const MAX_ALARM_CONNECTIONS: usize = 256;
/// A slot of [`IDLE_CONNECTIONS`] whose connection was handed over.
const HANDED: i32 = -2;

/// The hand-off channel's sending end; -1 while no alarm is installed.
static HANDOFF_CHANNEL: AtomicI32 = AtomicI32::new(-1);
/// The board's counts of idle and of serving HTTP workers, and of those inside a long
/// request, and this worker's row flag saying it counts itself there; null while no alarm
/// is installed.
static IDLE_WORKERS: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
static HTTP_WORKERS: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
static LONG_REQUESTS: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
static LONG_COUNTED: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
static HANDED_WAITING: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
/// The alarm's timer (a `timer_t`), for the handler to re-arm.
static ALARM_TIMER: AtomicPtr<libc::c_void> = AtomicPtr::new(std::ptr::null_mut());
/// The application runs a request now: the alarm may act.
static APP_RUNNING: AtomicBool = AtomicBool::new(false);
static IDLE_CONNECTIONS: [AtomicI32; MAX_ALARM_CONNECTIONS] =
    [const { AtomicI32::new(-1) }; MAX_ALARM_CONNECTIONS];
static IDLE_COUNT: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_handoff_alarm(_: libc::c_int) {
    // SAFETY: errno is thread-local and always valid; it is restored before returning, so
    // the application code this interrupts sees its own errno.
    let saved_errno = unsafe { *libc::__errno_location() };
    if APP_RUNNING.load(Ordering::SeqCst) {
        hand_over_idle_connections();
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
}

/// The word `pointer` names, if an alarm is installed.
fn word(pointer: &AtomicPtr<AtomicU64>) -> Option<&'static AtomicU64> {
    let word = pointer.load(Ordering::SeqCst);
    // SAFETY: a non-null pointer comes from `HandoffAlarm::install`, whose contract keeps the
    // word alive while the alarm is installed; the pointers are nulled when it is dropped,
    // after the handler is uninstalled.
    (!word.is_null()).then(|| unsafe { &*word })
}

/// In the signal handler: this request runs long. It counts itself on the board among
/// the workers inside a long request (once per request), then sends registered idle
/// connections that have a request waiting (readable) to the hand-off channel: all of them
/// while some other worker is not inside a long request (it takes them between two of its
/// short requests, or at once if it waits), else one per idle worker. Looks again after
/// [`HANDOFF_AFTER`] while the request runs and a registered connection is left. Only
/// atomics and async-signal-safe system calls (poll, sendmsg, timer_settime), no
/// allocation.
fn hand_over_idle_connections() {
    if let (Some(counted), Some(long)) = (word(&LONG_COUNTED), word(&LONG_REQUESTS))
        && counted.swap(1, Ordering::SeqCst) == 0
    {
        long.fetch_add(1, Ordering::SeqCst);
    }
    let load = |pointer| word(pointer).map_or(0, |word| word.load(Ordering::SeqCst));
    let others_free = load(&HTTP_WORKERS) > load(&LONG_REQUESTS);
    let mut budget = if others_free {
        u64::MAX
    } else {
        load(&IDLE_WORKERS)
    };
    let channel = HANDOFF_CHANNEL.load(Ordering::SeqCst);
    let count = IDLE_COUNT.load(Ordering::SeqCst).min(MAX_ALARM_CONNECTIONS);
    let mut left = 0;
    for slot in &IDLE_CONNECTIONS[..count] {
        let fd = slot.load(Ordering::SeqCst);
        if fd < 0 {
            continue;
        }
        if budget > 0 && is_readable(fd) && send_descriptor(channel, fd) {
            slot.store(HANDED, Ordering::SeqCst);
            if let Some(handed) = word(&HANDED_WAITING) {
                handed.fetch_add(1, Ordering::SeqCst);
            }
            budget -= 1;
        } else {
            left += 1;
        }
    }
    // Armed again only while a connection is left that may still need it.
    if left > 0 {
        arm_timer(ALARM_TIMER.load(Ordering::SeqCst), HANDOFF_AFTER);
    }
}

/// The request is over: the worker no longer counts among those inside a long request.
fn uncount_long_request() {
    if let (Some(counted), Some(long)) = (word(&LONG_COUNTED), word(&LONG_REQUESTS))
        && counted.swap(0, Ordering::SeqCst) != 0
    {
        let _ = long.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |count| {
            Some(count.saturating_sub(1))
        });
    }
}

/// Whether `fd` has bytes to read now (poll with no wait; async-signal-safe).
fn is_readable(fd: RawFd) -> bool {
    let mut entry = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `entry` is a live local pollfd, and the count passed is 1.
    let ready = unsafe { libc::poll(&mut entry, 1, 0) };
    ready == 1 && entry.revents & libc::POLLIN != 0
}

/// Sends `fd` on `channel` with SCM_RIGHTS and one byte of payload, without allocating
/// (usable in a signal handler); whether it went.
fn send_descriptor(channel: RawFd, fd: RawFd) -> bool {
    const SPACE: usize = 64;
    #[repr(C, align(8))]
    struct ControlBuffer([u8; SPACE]);
    let mut control = ControlBuffer([0; SPACE]);
    let mut byte = *b"c";
    let mut payload = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
    let (space, length) = unsafe {
        let int = std::mem::size_of::<libc::c_int>() as u32;
        (libc::CMSG_SPACE(int) as usize, libc::CMSG_LEN(int) as usize)
    };
    if space > SPACE {
        return false;
    }
    // SAFETY: zeroed msghdr is valid; every pointer set below points to a live local
    // (`payload`, `byte`, `control`) for the duration of the sendmsg call; CMSG_FIRSTHDR on
    // a buffer of `space` bytes returns a pointer inside it, aligned for cmsghdr (the buffer
    // is 8-aligned), with room for one descriptor (space >= CMSG_SPACE(sizeof(int))).
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut payload;
        message.msg_iovlen = 1;
        message.msg_control = control.0.as_mut_ptr().cast();
        message.msg_controllen = space;
        let header = libc::CMSG_FIRSTHDR(&message);
        if header.is_null() {
            return false;
        }
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = length;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>(), fd);
        libc::sendmsg(channel, &message, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) == 1
    }
}

/// Arms `timer` to fire once `after` from now (async-signal-safe).
fn arm_timer(timer: *mut libc::c_void, after: Duration) {
    if !timer.is_null() {
        set_timer(timer, after);
    }
}

/// Sets `timer` (a live POSIX timer of this process) to fire once `after` from now; zero
/// disarms it. Async-signal-safe (timer_settime only).
fn set_timer(timer: *mut libc::c_void, after: Duration) {
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

/// The signal the hand-off alarm fires with, in an HTTP worker (a program's too: the kit's
/// own). A real-time signal, which no application or library uses by itself, unlike
/// SIGALRM (Python's `signal.alarm`, `time.sleep` based timeouts...).
pub fn handoff_signal() -> libc::c_int {
    libc::SIGRTMIN() + 6
}

/// A POSIX timer on CLOCK_MONOTONIC that delivers `signal` when it fires, with `handler`
/// installed for it (run with every signal blocked, and restarting interrupted calls).
///
/// # Safety
///
/// `handler` must be async-signal-safe and keep errno as it found it.
unsafe fn signal_timer(
    signal: libc::c_int,
    handler: extern "C" fn(libc::c_int),
) -> io::Result<*mut libc::c_void> {
    // SAFETY: sigevent is a plain C struct, for which all-zero bytes are a valid value.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_SIGNAL;
    event.sigev_signo = signal;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: `event` and `timer` are live locals of the types timer_create expects.
    if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) } != 0 {
        return Err(io::Error::last_os_error());
    }
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
    if installed != 0 {
        let error = io::Error::last_os_error();
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
unsafe fn remove_signal_timer(timer: *mut libc::c_void, signal: libc::c_int) {
    // SAFETY: SIG_IGN runs no code; the timer is ours (the caller's contract).
    unsafe {
        libc::signal(signal, libc::SIG_IGN);
        libc::timer_delete(timer);
    }
}

/// Keeps a worker's idle kept-alive connections from waiting behind a long request: armed
/// before the application runs, it hands those that have a request waiting to idle workers
/// (one each) once the request has run [`HANDOFF_AFTER`], and again every
/// [`HANDOFF_AFTER`] while it runs (a real-time signal, [`handoff_signal`], since the worker is busy in the
/// application meanwhile). One system call per request, and only for a worker that holds
/// other connections.
pub struct HandoffAlarm {
    timer: *mut libc::c_void,
}

impl HandoffAlarm {
    /// Installs the alarm for `channel` (the hand-off channel's sending end), with the
    /// board's `counts` and this worker's row flag `long_counted`. One instance per process.
    ///
    /// # Safety
    ///
    /// The handler keeps the words of `counts`, `long_counted` and the descriptor `channel`
    /// until the returned value is dropped: all must stay valid until then, and the value
    /// must be dropped normally (never leaked), as in a forked worker, whose board, row and
    /// channel live as long as the process.
    pub unsafe fn install(
        channel: BorrowedFd<'_>,
        counts: HandoffCounts<'_>,
        long_counted: &AtomicU64,
    ) -> io::Result<Self> {
        HANDOFF_CHANNEL.store(channel.as_raw_fd(), Ordering::SeqCst);
        for (pointer, word) in [
            (&IDLE_WORKERS, counts.idle_workers),
            (&HTTP_WORKERS, counts.workers),
            (&LONG_REQUESTS, counts.long_requests),
            (&LONG_COUNTED, long_counted),
            (&HANDED_WAITING, counts.handed_waiting),
        ] {
            pointer.store(std::ptr::from_ref(word).cast_mut(), Ordering::SeqCst);
        }
        // SAFETY: the handler only uses atomics and async-signal-safe system calls, and saves
        // and restores errno.
        let timer = unsafe { signal_timer(handoff_signal(), on_handoff_alarm) }?;
        ALARM_TIMER.store(timer, Ordering::SeqCst);
        Ok(Self { timer })
    }

    /// Before the application runs a request: `idle` (the worker's idle kept-alive
    /// connections, at most 256 of them) may be handed over if it runs long.
    pub fn arm(&self, idle: &[RawFd]) {
        let count = idle.len().min(MAX_ALARM_CONNECTIONS);
        for (slot, fd) in IDLE_CONNECTIONS.iter().zip(&idle[..count]) {
            slot.store(*fd, Ordering::SeqCst);
        }
        IDLE_COUNT.store(count, Ordering::SeqCst);
        APP_RUNNING.store(true, Ordering::SeqCst);
        arm_timer(self.timer, HANDOFF_FIRST);
    }

    /// After the request: the positions (in the slice given to `arm`) of the connections
    /// handed over meanwhile, which the worker must now let go of.
    pub fn disarm(&self) -> Vec<usize> {
        APP_RUNNING.store(false, Ordering::SeqCst);
        uncount_long_request();
        let count = IDLE_COUNT.swap(0, Ordering::SeqCst);
        IDLE_CONNECTIONS[..count]
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                (slot.swap(-1, Ordering::SeqCst) == HANDED).then_some(index)
            })
            .collect()
    }
}

impl Drop for HandoffAlarm {
    fn drop(&mut self) {
        APP_RUNNING.store(false, Ordering::SeqCst);
        // SAFETY: the timer `install` made for this signal, deleted once (here).
        unsafe { remove_signal_timer(self.timer, handoff_signal()) };
        uncount_long_request();
        ALARM_TIMER.store(std::ptr::null_mut(), Ordering::SeqCst);
        for pointer in [
            &IDLE_WORKERS,
            &HTTP_WORKERS,
            &LONG_REQUESTS,
            &LONG_COUNTED,
            &HANDED_WAITING,
        ] {
            pointer.store(std::ptr::null_mut(), Ordering::SeqCst);
        }
        HANDOFF_CHANNEL.store(-1, Ordering::SeqCst);
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precomposed_answers_have_correct_lengths() {
        for answer in [ANSWER_CPU, ANSWER_REAL] {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let declared: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(declared, body.len(), "{text}");
        }
    }
}
