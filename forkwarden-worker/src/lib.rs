//! forkwarden's worker side: what runs inside a worker process, and what the Python wheel
//! links.
//!
//! The supervisor (the `forkwarden` crate: the master, cron, the command line) forks its
//! built-in HTTP workers into [`http_worker::run`]; a program it starts for an HTTP worker
//! slot (the Python runner) runs the same loop through [`kit::serve`], with the descriptors
//! and settings of the worker kit (docs/worker-kit.md). Both sides of that boundary share
//! this crate's [`scoreboard`], [`doorbell`] and [`sys`], so the kit's layout is defined
//! once.
//!
//! Layout: [`http`] (the protocol: reading requests, writing responses); [`http_worker`]
//! (the worker's loop: connections, keep-alive, hand-off between workers, per-request
//! limits); [`app`] (the interface an application implements); [`settings`] (what the
//! worker knows of the config); [`limits`] (what a worker enforces on itself);
//! [`context`] (what ties any worker to its master); [`scoreboard`] (per-worker shared
//! memory); [`doorbell`]; [`id`] (who a worker is); [`log`]; [`format`]; [`kit`]; [`sys`]
//! (every `unsafe` call).

pub mod app;
pub mod context;
pub mod doorbell;
pub mod format;
pub mod http;
pub mod http_worker;
pub mod id;
pub mod kit;
pub mod limits;
pub mod log;
pub mod scoreboard;
pub mod settings;
pub mod sys;
