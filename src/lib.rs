//! forkwarden: a pre-fork multi-process worker supervisor with Odoo-style limits.
//!
//! One small master process binds the listening socket and forks N HTTP workers and M cron
//! workers, keeps that population alive, and replaces any worker that dies or crosses a
//! limit, saying why in one log line. The master is single-threaded (one `mio` loop), never
//! runs application code and never touches a client connection.
//!
//! Serve your own [`App`] with forkwarden's supervision:
//!
//! ```no_run
//! use forkwarden::{App, ConfigSource, Request, Response, WorkerInfo};
//!
//! struct Hello;
//! impl App for Hello {
//!     fn handle(&mut self, _request: &Request) -> Response {
//!         Response::text(200, "hello\n")
//!     }
//! }
//!
//! let source = ConfigSource::File("forkwarden.toml".into());
//! let config = source.load_checked().expect("valid config");
//! let factory = |_: &WorkerInfo<'_>| -> anyhow::Result<Box<dyn App>> { Ok(Box::new(Hello)) };
//! let status = forkwarden::serve(config, source, Box::new(factory)).expect("server ran");
//! std::process::exit(i32::from(status));
//! ```
//!
//! This crate is the supervisor; what runs inside a worker (the HTTP worker, the scoreboard,
//! the worker kit, every `unsafe` call) is the `forkwarden-worker` crate, which the Python
//! runner links alone. See docs/architecture.md.
//!
//! Layout: [`config`] (schema, defaults, units, validation); `limits` (every per-worker
//! limit the master checks); `master` (the loop, the pool, death reports); `worker` (what a
//! forked process runs before it serves, execs or runs cron jobs); [`cron`] (schedules,
//! claims, the store); `notify` (programs' sd_notify messages); `proctree` (what /proc says
//! about a process tree); [`status`]; [`demo`] (the built-in app).

pub mod app;
pub mod app_check;
pub mod config;
pub mod cron;
mod data_dir;
mod database;
pub mod demo;
pub mod jobs;
mod limits;
mod master;
mod notify;
mod output;
mod proctree;
pub mod status;
mod task;
mod worker;

// The worker side, shared with the programs that run forkwarden's worker (the Python
// runner's wheel links that crate alone), under the names the supervisor's modules use.
pub use forkwarden_worker::format;
use forkwarden_worker::{doorbell, id, log, scoreboard, sys};

pub use app::{
    App, AppFactory, Body, BodyStream, Header, Part, Request, RequestBody, Response, StreamError,
    WorkerInfo, is_header_field,
};

pub use config::{Config, ConfigError, ConfigSource};
pub use master::{EXIT_STATUS_CRITICAL, EXIT_STATUS_FAILURE, MasterError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Log(#[from] log::LogError),
    #[error(transparent)]
    Master(#[from] MasterError),
}

/// Runs the server described by `config` (read from `source`, which SIGHUP reads again)
/// in the foreground until it is stopped, serving the application `app` builds in each HTTP
/// worker. Returns the exit status for the process: 0 after a normal stop,
/// [`EXIT_STATUS_CRITICAL`] when a worker reported a critical error.
///
/// Call it from a single-threaded process, before starting any thread: it forks.
pub fn serve(config: Config, source: ConfigSource, app: Box<AppFactory>) -> Result<u8, ServeError> {
    // Before anything else reads the environment: the title may reuse its memory.
    let title_error = sys::init_process_title().err();
    // A master started with its standard streams closed must not hand a socket out as one.
    sys::ensure_standard_fds()
        .map_err(|error| ServeError::Master(MasterError::EventLoop(error)))?;
    let logging = log::init(&config.log_settings(), config.log_owner())?;
    if let Some(error) = title_error {
        tracing::warn!("process titles will not be set: {error}");
    }
    let master = master::Master::new(config, source, app, logging)
        .inspect_err(|error| tracing::error!("{error}"))?;
    Ok(master.run())
}
