//! The hand-off alarm: while a worker runs a long request, a timer's signal hands its other
//! connections that have a request waiting to the other workers.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::timers::{arm_timer, remove_signal_timer, signal_timer};

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
/// For each slot of [`IDLE_CONNECTIONS`]: how long (ns) the request must have run before
/// that connection is handed over (see [`HandoffAlarm::arm`]).
static IDLE_PATIENCE_NS: [AtomicU64; MAX_ALARM_CONNECTIONS] =
    [const { AtomicU64::new(0) }; MAX_ALARM_CONNECTIONS];
/// CLOCK_MONOTONIC (ns) when the alarm was armed: the request's start.
static ARMED_AT_NS: AtomicU64 = AtomicU64::new(0);

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
    let running_ns = monotonic_ns().saturating_sub(ARMED_AT_NS.load(Ordering::SeqCst));
    // An idle worker serves a waiting connection at once, ahead of no one: those need no
    // patience (the others wait for it, see `HandoffAlarm::arm`).
    let mut idle_left = load(&IDLE_WORKERS);
    let mut left = 0;
    for (slot, patience) in IDLE_CONNECTIONS[..count].iter().zip(&IDLE_PATIENCE_NS) {
        let fd = slot.load(Ordering::SeqCst);
        if fd < 0 {
            continue;
        }
        let patient = running_ns >= patience.load(Ordering::SeqCst);
        let due = patient || idle_left > 0;
        if due && budget > 0 && is_readable(fd) && send_descriptor(channel, fd) {
            if !patient {
                idle_left -= 1;
            }
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

/// CLOCK_MONOTONIC in nanoseconds (clock_gettime is async-signal-safe); 0 if unreadable.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a live timespec the kernel writes into.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return 0;
    }
    u64::try_from(now.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(now.tv_nsec).unwrap_or(0))
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

/// The signal the hand-off alarm fires with, in an HTTP worker (a program's too: the kit's
/// own). A real-time signal, which no application or library uses by itself, unlike
/// SIGALRM (Python's `signal.alarm`, `time.sleep` based timeouts...).
pub fn handoff_signal() -> libc::c_int {
    libc::SIGRTMIN() + 6
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
    /// connections, at most 256 of them) may be handed over if it runs long: to an idle
    /// worker at the first look, to a busy one once the request has run its `patience` (the
    /// same position; none: at once). The alarm looks after [`HANDOFF_FIRST`], then every
    /// [`HANDOFF_AFTER`].
    pub fn arm(&self, idle: &[RawFd], patience: &[Duration]) {
        let count = idle.len().min(MAX_ALARM_CONNECTIONS);
        for (index, (slot, fd)) in IDLE_CONNECTIONS.iter().zip(&idle[..count]).enumerate() {
            let wait = patience.get(index).copied().unwrap_or_default();
            let wait_ns = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
            IDLE_PATIENCE_NS[index].store(wait_ns, Ordering::SeqCst);
            slot.store(*fd, Ordering::SeqCst);
        }
        ARMED_AT_NS.store(monotonic_ns(), Ordering::SeqCst);
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
