//! The application interface: what an HTTP worker runs for each request, and how each
//! worker builds its application.

pub use forkwarden_worker::app::{
    App, Body, BodyStream, Header, Part, Request, RequestBody, Response, StreamError,
    is_header_field,
};

use crate::config::Config;

/// What a worker tells the application factory about itself.
#[derive(Clone, Copy, Debug)]
pub struct WorkerInfo<'a> {
    /// The worker's stable slot number (0-based), kept by its replacements.
    pub slot: u32,
    /// The config generation the worker belongs to (incremented on each reload).
    pub generation: u64,
    /// The config the worker was started with.
    pub config: &'a Config,
}

/// Builds the application in each new HTTP worker. An error fails the worker's boot: the
/// master logs it and starts the worker again, backing off if it keeps failing.
pub type AppFactory = dyn Fn(&WorkerInfo<'_>) -> anyhow::Result<Box<dyn App>>;
