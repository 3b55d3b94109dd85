//! The application interface: what an HTTP worker runs for each request.

pub use crate::http::{
    Body, BodyStream, Header, Part, Request, RequestBody, Response, StreamError, is_header_field,
};

use crate::config::Config;

/// An application served by forkwarden's HTTP workers.
///
/// Each worker builds its own instance after it is forked (see [`AppFactory`]), so an
/// application may keep per-process state (caches, connections) without sharing it, and a
/// bug or leak in it can only ever cost the one worker it runs in.
pub trait App {
    /// Answers one request. A worker calls it for one request at a time. A panic is caught:
    /// the client gets a 500 and the worker is replaced after the response.
    fn handle(&mut self, request: &Request) -> Response;
}

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
