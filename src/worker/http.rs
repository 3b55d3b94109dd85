//! The HTTP worker's loop: accept a connection on the shared socket, serve its requests one
//! at a time with the application, repeat until told to stop or a limit says to leave.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use tracing::{debug, error, warn};

use super::{BEAT_INTERVAL, Outcome, WorkerSpec, reopen_log_if_asked, told_to_stop};
use crate::app::{App, Request, Response, WorkerInfo};
use crate::http::{Connection, ReadError, is_disconnect};
use crate::limits::{self, CpuBudget};
use crate::scoreboard::ExitReason;
use crate::sys::{RequestLimitSignals, WorkerSignals};

/// How long a worker pauses accepting after the process or system ran out of descriptors or
/// memory for a new connection, instead of spinning on a listener that stays readable.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How long a kept-alive client may take to send its next request when other connections
/// are waiting for this worker: an active client sends at once; past this it is idle.
const KEEP_ALIVE_YIELD_GRACE: Duration = Duration::from_millis(50);

/// What came of waiting on a kept-alive connection.
enum NextRequest {
    /// The client sent another request; `last`: answer it with `Connection: close`.
    Arrived { last: bool },
    /// Nothing to serve: close the connection.
    None,
}

/// A poll(2) timeout: `None` waits for ever; longer waits are capped (poll takes an i32 of ms).
fn poll_timeout(wait: Option<Duration>) -> nix::poll::PollTimeout {
    wait.map_or(nix::poll::PollTimeout::NONE, |wait| {
        nix::poll::PollTimeout::try_from(wait).unwrap_or(nix::poll::PollTimeout::MAX)
    })
}

pub(super) fn run(
    spec: &WorkerSpec<'_>,
    signals: &WorkerSignals,
    limit_signals: &RequestLimitSignals<'_>,
) -> Outcome {
    let Some(listener) = spec.listener else {
        error!("{}: no listening socket", spec.name());
        return Outcome::BootFailed;
    };
    let cpu_budget = match CpuBudget::new(spec.config) {
        Ok(budget) => budget,
        Err(errno) => {
            error!("{}: cannot read RLIMIT_CPU: {errno}", spec.name());
            return Outcome::BootFailed;
        }
    };
    let Some(app) = build_app(spec) else {
        return Outcome::BootFailed;
    };
    let epoll = match watch_listener(listener) {
        Ok(epoll) => epoll,
        Err(errno) => {
            error!(
                "{}: cannot watch the listening socket: {errno}",
                spec.name()
            );
            return Outcome::BootFailed;
        }
    };
    let mut worker = HttpWorker {
        spec,
        signals,
        limit_signals,
        listener,
        app,
        cpu_budget,
        limit_request: limits::request_limit_for_worker(spec.config),
        leave_after: None,
    };
    spec.report_ready();
    Outcome::Left(worker.serve(&epoll))
}

/// Builds the application; logs why not when it cannot.
fn build_app(spec: &WorkerSpec<'_>) -> Option<Box<dyn App>> {
    let info = WorkerInfo {
        slot: spec.id.slot,
        generation: spec.generation,
        config: spec.config,
    };
    match panic::catch_unwind(AssertUnwindSafe(|| (spec.app)(&info))) {
        Ok(Ok(app)) => Some(app),
        Ok(Err(why)) => {
            error!("{}: the application failed to start: {why:#}", spec.name());
            None
        }
        Err(_) => {
            error!("{}: the application panicked while starting", spec.name());
            None
        }
    }
}

/// An epoll set in which this worker waits for connections. EPOLLEXCLUSIVE makes the kernel
/// wake one idle worker per incoming connection, not all of them (no thundering herd).
fn watch_listener(listener: &TcpListener) -> nix::Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        listener.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, 0),
    )?;
    Ok(epoll)
}

struct HttpWorker<'a> {
    spec: &'a WorkerSpec<'a>,
    signals: &'a WorkerSignals,
    limit_signals: &'a RequestLimitSignals<'a>,
    listener: &'a TcpListener,
    app: Box<dyn App>,
    /// `limit_time_cpu`, re-armed before each request (None: off).
    cpu_budget: Option<CpuBudget>,
    /// This worker's `limit_request`, jitter included (0: none).
    limit_request: u64,
    /// Leave after the current response, for this reason: the application panicked (its
    /// state may be broken) or asked to be replaced.
    leave_after: Option<ExitReason>,
}

impl HttpWorker<'_> {
    /// Serves connections until it is time to leave; returns why.
    fn serve(&mut self, epoll: &Epoll) -> ExitReason {
        let mut events = [EpollEvent::empty()];
        loop {
            if let Some(reason) = self.exit_reason() {
                return reason;
            }
            reopen_log_if_asked(self.spec, self.signals);
            self.spec.row.beat();
            match self.signals.epoll_wait(epoll, &mut events, BEAT_INTERVAL) {
                // Idle: the time to check that the master is still there.
                Ok(0) if self.spec.orphaned() => return ExitReason::MasterGone,
                Ok(0) => continue,
                Ok(_) => {}
                Err(errno) => {
                    error!(
                        "{}: waiting for connections failed: {errno}",
                        self.spec.name()
                    );
                    return ExitReason::Unknown;
                }
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.serve_connection(stream),
                // Another worker took it, or the client gave up before we got to it.
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) if is_disconnect(&error) => {}
                Err(error) => {
                    warn!("{}: accept failed: {error}", self.spec.name());
                    let _ = self.signals.poll(&mut [], Some(ACCEPT_ERROR_PAUSE));
                }
            }
        }
    }

    /// Why this worker must leave now, if it must.
    fn exit_reason(&self) -> Option<ExitReason> {
        if let Some(reason) = self.leave_after {
            return Some(reason);
        }
        if self.limit_request > 0 && self.spec.row.requests() >= self.limit_request {
            return Some(ExitReason::LimitRequest);
        }
        // The parent check (a system call) is left to idle wake-ups, see `serve`.
        told_to_stop(self.spec, self.signals).then_some(ExitReason::Stopped)
    }

    fn serve_connection(&mut self, stream: TcpStream) {
        let config = self.spec.config;
        let max_body = Some(config.http_max_body_size.bytes()).filter(|max| *max > 0);
        let row = self.spec.row;
        let alive = || row.beat();
        let mut connection = Connection::new(stream, config.socket_timeout(), max_body, &alive);
        // Set when the next request on this connection must be its last (see below).
        let mut last_on_connection = false;
        loop {
            let request = match connection.read_request() {
                Ok(request) => request,
                Err(ReadError::Closed) => return,
                Err(ReadError::Reject(status, reason)) => {
                    debug!(
                        "{}: rejected a request with {status}: {reason}",
                        self.spec.name()
                    );
                    let _ = connection.write_error(status, reason);
                    return;
                }
                Err(ReadError::Io(error)) => {
                    debug!(
                        "{}: connection broke mid-request: {error}",
                        self.spec.name()
                    );
                    return;
                }
            };
            self.spec.begin_work(request.method(), request.target());
            self.arm_cpu_limit();
            self.limit_signals
                .answer_to(Some(connection.stream().as_fd()));
            let response = self.call_app(&request);
            self.limit_signals.answer_to(None);
            let keep_alive =
                request.wants_keep_alive() && !last_on_connection && self.will_serve_another();
            let written = connection.write_response(&request, &response, keep_alive);
            self.spec.row.end_request();
            if let Err(error) = written {
                if !is_disconnect(&error) && !crate::http::is_timeout(&error) {
                    debug!("{}: writing a response failed: {error}", self.spec.name());
                }
                return;
            }
            if !keep_alive {
                return;
            }
            match self.await_next_request(&connection) {
                NextRequest::Arrived { last } => last_on_connection = last,
                NextRequest::None => return,
            }
        }
    }

    /// Whether this worker will serve another request after the current one.
    /// No system call: this runs on every request.
    fn will_serve_another(&self) -> bool {
        let last = self.limit_request > 0 && self.spec.row.requests() + 1 >= self.limit_request;
        !last && self.leave_after.is_none() && !told_to_stop(self.spec, self.signals)
    }

    /// Gives the request about to run its `limit_time_cpu` budget.
    fn arm_cpu_limit(&mut self) {
        let Some(budget) = &mut self.cpu_budget else {
            return;
        };
        match budget.arm() {
            Ok(used) => self.spec.row.set_request_cpu(used),
            Err(errno) => warn!("{}: cannot arm limit_time_cpu: {errno}", self.spec.name()),
        }
    }

    fn call_app(&mut self, request: &Request) -> Response {
        match panic::catch_unwind(AssertUnwindSafe(|| self.app.handle(request))) {
            Ok(response) => {
                if response.replaces_worker() {
                    self.leave_after = Some(ExitReason::AppAsked);
                }
                response
            }
            Err(_) => {
                error!(
                    "{}: the application panicked serving {} {}; this worker will be replaced",
                    self.spec.name(),
                    request.method(),
                    request.target()
                );
                self.leave_after = Some(ExitReason::AppPanicked);
                Response::text(500, "internal server error\n")
            }
        }
    }

    /// Waits for the next request on a kept-alive connection.
    ///
    /// The client was told the connection stays open, so closing it while it may be sending
    /// would fail that request. Instead, when this worker is needed elsewhere (connections
    /// wait on the listener) or must leave (it was told to stop), the client's next request
    /// is still served, as the connection's last (`Connection: close`): an active client
    /// sends it at once; one silent past [`KEEP_ALIVE_YIELD_GRACE`] (or the socket timeout,
    /// when stopping) is idle, and an idle connection may be closed (RFC 9112, 9.3.1).
    fn await_next_request(&self, connection: &Connection<'_>) -> NextRequest {
        if connection.has_buffered_input() {
            return NextRequest::Arrived { last: false };
        }
        let timeout = self.spec.config.socket_timeout();
        let started = Instant::now();
        let (client_sent, others_waiting) = loop {
            let left = timeout.map(|timeout| timeout.saturating_sub(started.elapsed()));
            let slice = left.map_or(BEAT_INTERVAL, |left| left.min(BEAT_INTERVAL));
            let mut fds = [
                PollFd::new(connection.stream().as_fd(), PollFlags::POLLIN),
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
            ];
            let ready = self.signals.poll(&mut fds, Some(slice));
            let client_sent = fds[0].any().unwrap_or(false);
            let others_waiting = fds[1].any().unwrap_or(false);
            self.spec.row.beat();
            let waited_enough = left.is_some_and(|left| left <= slice);
            match ready {
                Ok(0) if !waited_enough && !told_to_stop(self.spec, self.signals) => {}
                Ok(_) => break (client_sent, others_waiting),
                // Polling failed: close.
                Err(_) => return NextRequest::None,
            }
        };
        if told_to_stop(self.spec, self.signals) {
            let left = timeout.map(|timeout| timeout.saturating_sub(started.elapsed()));
            return self.last_request_within(connection, client_sent, left);
        }
        if others_waiting {
            self.last_request_within(connection, client_sent, Some(KEEP_ALIVE_YIELD_GRACE))
        } else if client_sent {
            NextRequest::Arrived { last: false }
        } else {
            // The client stayed silent for the socket timeout.
            NextRequest::None
        }
    }

    /// The connection's last request, if the client sends it within `wait` (None: forever).
    fn last_request_within(
        &self,
        connection: &Connection<'_>,
        already_sent: bool,
        wait: Option<Duration>,
    ) -> NextRequest {
        if already_sent {
            return NextRequest::Arrived { last: true };
        }
        let started = Instant::now();
        loop {
            let left = wait.map(|wait| wait.saturating_sub(started.elapsed()));
            let slice = left.map_or(BEAT_INTERVAL, |left| left.min(BEAT_INTERVAL));
            let mut fds = [PollFd::new(connection.stream().as_fd(), PollFlags::POLLIN)];
            // Deferred signals are already noted; a plain poll keeps them from cutting this wait.
            let ready = nix::poll::poll(&mut fds, poll_timeout(Some(slice)));
            self.spec.row.beat();
            match ready {
                Ok(ready) if ready > 0 => return NextRequest::Arrived { last: true },
                Ok(_) if left.is_none_or(|left| left > slice) => {}
                _ => return NextRequest::None,
            }
        }
    }
}
