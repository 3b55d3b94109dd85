//! The per-request limits a worker enforces through signals (SIGXCPU, SIGUSR2): the
//! handlers answer the request in flight and end the worker.

use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

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
