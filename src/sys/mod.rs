//! The one place where forkwarden talks to the kernel through `unsafe` code.
//!
//! Every other module is compiled with `unsafe_code = "deny"`; what they need from the
//! system that neither `std` nor a safe `nix` call offers lives here, behind a safe API,
//! with a `SAFETY:` comment on every `unsafe` block saying why it is sound.
//!
//! - [`process`]: fork (with signals blocked across it), immediate exit, reaping with CPU
//!   usage, pidfds, preparing a job for exec, single-thread check.
//! - [`signals`]: the worker's signal handlers (stop, log reopen, request limits) and the
//!   signal-mask-aware waits built on them.
//! - [`shm`]: anonymous shared memory that the master and one worker both see.
//! - [`title`]: the process title shown by `ps`.
#![allow(unsafe_code)]

mod process;
mod shm;
mod signals;
mod title;

pub use process::{
    ensure_standard_fds, exec_socket_activated, fork_process, lower_priority, pidfd_open,
    reap_child, set_cpu_limit_of, supervise_job, thread_count,
};
pub use shm::SharedWords;
pub use signals::{MASTER_SIGNALS, RequestLimitSignals, WorkerSignals};
pub use title::{init_process_title, set_process_title};
