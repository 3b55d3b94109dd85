//! The application interface: what an HTTP worker runs for each request.

pub use crate::http::{
    Body, BodyStream, Header, Part, Request, RequestBody, Response, StreamError, is_header_field,
};

/// An application served by forkwarden's HTTP workers.
///
/// Each worker builds its own instance after it is forked, so an application may keep
/// per-process state (caches, connections) without sharing it, and a bug or leak in it can
/// only ever cost the one worker it runs in.
pub trait App {
    /// Answers one request. A worker calls it for one request at a time. A panic is caught:
    /// the client gets a 500 and the worker is replaced after the response.
    fn handle(&mut self, request: &Request) -> Response;
}

/// Builds a worker's application, once, when the worker starts: an error (or a panic)
/// fails the worker's boot, and the master starts it again, backing off if it keeps
/// failing.
pub type BuildApp<'a> = dyn Fn() -> anyhow::Result<Box<dyn App>> + 'a;
