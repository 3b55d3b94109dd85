//! The one place where forkwarden talks to the kernel through `unsafe` code.
//!
//! Every other module is compiled with `unsafe_code = "deny"`; what they need from the
//! system that neither `std` nor a safe `nix` call offers lives here, with a `SAFETY:`
//! comment on every `unsafe` block saying why it is sound. Each function is safe to call
//! from any safe code, except three whose soundness depends on their caller, which are
//! `unsafe fn` with the contract in their `# Safety` section: [`fork_process`] (the child
//! closes every descriptor it was not told to keep) and [`RequestLimitSignals::install`]
//! (the handlers keep a pointer to a scoreboard word), and [`HandoffAlarm::install`] (the
//! same, for the board's counts and the worker's row).
//!
//! - [`process`]: fork (single-threaded only, signals blocked across it, closing what the
//!   child must not inherit), immediate exit, reaping with CPU usage, preparing a job for
//!   exec.
//! - [`files`]: files in places the workers' user can write, opened so that nothing planted
//!   there redirects or stalls the master (and file operations done as that user).
//! - [`pidfd`]: process descriptors, by which the master signals a process it checked and
//!   never whatever process a recycled pid names.
//! - [`signals`]: the worker's signal handlers for stop and log reopening, and the
//!   signal-mask-aware waits built on them.
//! - [`limit_signals`]: the per-request limits' signals (SIGXCPU, SIGUSR2), which answer the
//!   request in flight and end the worker.
//! - [`handoff_alarm`]: the timer that hands a busy worker's waiting connections over.
//! - [`claim_deadline`]: the timer that stops a cron job whose claim lapsed.
//! - [`timers`]: the POSIX timers behind those two.
//! - [`shm`]: anonymous shared memory that the master and one worker both see (and no
//!   worker forked later).
//! - [`title`]: the process title shown by `ps`.
//! - [`net`]: accepting straight into non-blocking mode, handing a client connection from
//!   one worker to another (SCM_RIGHTS), and the channel to a preload template.
//!
//! A raw call that fails with a negative value and errno goes through [`errno_result`]
//! (an `io::Result`), or nix's `Errno::result` where the function returns a `nix::Result`.
#![allow(unsafe_code)]

mod claim_deadline;
mod files;
mod handoff_alarm;
mod limit_signals;
mod net;
mod pidfd;
mod process;
mod shm;
mod signals;
mod timers;
mod title;

pub use claim_deadline::ClaimDeadline;
pub use files::{FsIdentity, as_user, open_append, read_small_file};
pub use handoff_alarm::{HANDOFF_AFTER, HandoffAlarm, HandoffCounts};
pub use limit_signals::RequestLimitSignals;
pub use net::{
    Handed, accept_nonblocking, calls_listener, connect_calls, defer_accept, handoff_channel,
    receive_connection, receive_message, send_connection, send_file, send_with_descriptors,
    template_channel,
};
pub use pidfd::{ProcessHandle, pidfd_open};
pub use process::{
    Exited, JobLimit, LISTEN_FD, adopt_inherited, duplicate_descriptor, ensure_standard_fds,
    exec_socket_activated, exited_child, fork_process, lower_priority, reap, run_as_account,
    set_address_space_limit_of, set_cpu_limit_of, set_job_limit_of, supervise_job,
};
pub use shm::{SharedWords, sealed_text_file};
pub use signals::{MASTER_SIGNALS, WorkerSignals};
pub use title::{init_process_title, set_process_title};

/// A raw system call's return value that is negative on failure, with errno saying why.
pub(crate) trait SyscallReturn: Copy {
    fn failed(self) -> bool;
}

impl SyscallReturn for libc::c_int {
    fn failed(self) -> bool {
        self < 0
    }
}

impl SyscallReturn for libc::c_long {
    fn failed(self) -> bool {
        self < 0
    }
}

/// `result`, or the error errno names if it says the call failed. Call it at once on the
/// call's value, before anything else can change errno. Allocates nothing: safe between
/// fork and exec.
pub(crate) fn errno_result<T: SyscallReturn>(result: T) -> std::io::Result<T> {
    if result.failed() {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result)
    }
}
