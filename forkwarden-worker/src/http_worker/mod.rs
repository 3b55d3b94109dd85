//! The HTTP worker: one event loop over the client connections it holds.
//!
//! A worker waits, in one epoll set, on the shared listening socket, on the hand-off channel
//! and on each connection it holds. It reads every connection's bytes as they come (a
//! [`RequestReader`] each: no connection gets the worker's attention before it has sent a
//! whole request, so idle and slow clients cost a descriptor, not a worker) and runs the
//! application on one request at a time, as Odoo's workers do, in turns: connections take
//! their turn in the order their requests came, and between two requests the worker looks
//! (without waiting) for what came meanwhile, which queues behind the turns already taken.
//! A served connection's next request waits for its turn too, so a client that always has
//! one ready by the time its answer leaves cannot hold the worker while the others wait.
//!
//! While it runs one, it is not waiting: new connections go to other workers
//! (EPOLLEXCLUSIVE). Its own idle kept-alive connections must not wait behind that request
//! either: if it is still running after 5 ms (`HANDOFF_FIRST`, then every `HANDOFF_AFTER`),
//! and after twice the client's own last request (where every request takes about as long,
//! moving clients between equally busy workers would only reorder them, unfairly), an alarm
//! hands those with a request waiting to the other workers through the hand-off
//! channel (see `sys::HandoffAlarm`): to any while some worker is not inside a long request
//! itself (a worker takes from the channel between two of its requests), else to idle ones
//! only. When it wakes with requests already queued, a kept-alive connection that has a new
//! one goes to an idle worker the same way; one taken from the channel is read only if
//! nothing waits ahead of it here (a request read here can go nowhere else). When it leaves (a
//! reload, a recycle), its idle kept-alive connections go to the other workers too, so that
//! no client loses its connection with a worker.
//!
//! Every connection has a deadline: `http_socket_timeout` for a whole head, between two
//! pieces of a body, and on an idle kept-alive connection; `http_request_timeout` for a whole
//! request. Past it, a client in the middle of a request gets 408; a silent one is closed.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use slab::Slab;
use tracing::{debug, error, warn};

use self::access::{AccessLog, Served};
use self::send::Sending;
use crate::app::{App, BuildApp, Request, Response};
use crate::context::{BEAT_INTERVAL, HandoffChannel, HandoffLane, Outcome, WorkerContext};
use crate::http::{self, Body, BodyStream, Framing, Part, Reject, RequestReader, is_disconnect};
use crate::limits::CpuBudget;
use crate::scoreboard::ExitReason;
use crate::settings::HttpSettings;
use crate::sys::{self, HandoffAlarm, RequestLimitSignals, WorkerSignals};

mod access;
mod send;

/// Everything an HTTP worker gets: from the master that forked it, or from the kit.
pub struct HttpSpec<'a> {
    pub context: WorkerContext<'a>,
    /// The listening socket all HTTP workers share.
    pub listener: &'a TcpListener,
    /// Where HTTP workers pass client connections to one another.
    pub handoff: &'a HandoffChannel,
    pub settings: &'a HttpSettings,
    /// Builds the application, once, when the worker starts.
    pub build_app: &'a BuildApp<'a>,
}

/// Epoll keys of the listening socket and the hand-off lanes; clients use their slab key.
const LISTENER: u64 = u64::MAX;
const HANDOFF: u64 = u64::MAX - 1;
const RETURNING: u64 = u64::MAX - 2;
/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Connections accepted (or taken from the hand-off channel) per wake-up: one. The kernel
/// wakes one waiting worker per new connection (EPOLLEXCLUSIVE), and the next connection
/// goes to the next worker waiting, not behind this one's request.
const ACCEPT_BATCH: usize = 1;
/// Most connections a leaving worker takes out of a hand-off lane to send them again.
const MAX_PASSED_ON: usize = 1024;
/// How long a worker stops accepting when the process or the system is out of descriptors
/// or memory; it says so once per pause.
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// How often a worker with turns waiting looks for connections that became readable.
const POLL_WHILE_BUSY: Duration = Duration::from_millis(1);
/// How often a worker with turns waiting checks its connections' deadlines.
const EXPIRY_CHECK_WHILE_BUSY: Duration = Duration::from_millis(100);
/// Most turns in a row a client whose last request ran long lets others take ahead of it.
const MAX_SLOW_SKIPS: u32 = 64;
/// Descriptors a worker keeps for itself (log, epoll, timers, the application's files).
const RESERVED_DESCRIPTORS: u64 = 64;

/// Runs the HTTP worker's loop until it leaves (told to stop, recycled, its master gone)
/// or cannot start; `signals` and `limit_signals` are its installed handlers.
pub fn run(
    spec: &HttpSpec<'_>,
    signals: &WorkerSignals,
    limit_signals: &RequestLimitSignals<'_>,
) -> Outcome {
    let (listener, handoff) = (spec.listener, spec.handoff);
    let cpu_budget = match spec
        .settings
        .limits
        .cpu_per_request
        .map(CpuBudget::new)
        .transpose()
    {
        Ok(budget) => budget,
        Err(errno) => {
            error!("{}: cannot read RLIMIT_CPU: {errno}", spec.context.name());
            return Outcome::BootFailed;
        }
    };
    let Some(app) = build_app(spec) else {
        return Outcome::BootFailed;
    };
    #[allow(unsafe_code)]
    // SAFETY: the alarm keeps the board's idle count and the hand-off channel's descriptor,
    // both inherited from the master and kept for this worker's whole life (it never unmaps
    // or closes them: it ends in `exit_now`); `alarm` is dropped normally when `run` returns.
    let installed = unsafe {
        HandoffAlarm::install(
            handoff.waiting.send.as_fd(),
            spec.context.board.handoff_words(),
            spec.context.row.long_counted_word(),
        )
    };
    let alarm = match installed {
        Ok(alarm) => alarm,
        Err(error) => {
            error!(
                "{}: cannot set up its hand-off alarm: {error}",
                spec.context.name()
            );
            return Outcome::BootFailed;
        }
    };
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(epoll) => epoll,
        Err(errno) => {
            error!(
                "{}: cannot create its epoll set: {errno}",
                spec.context.name()
            );
            return Outcome::BootFailed;
        }
    };
    let mut worker = HttpWorker {
        spec,
        signals,
        limit_signals,
        listener,
        handoff,
        alarm,
        epoll,
        app,
        cpu_budget,
        limit_request: spec.settings.limits.request_limit(),
        access_log: AccessLog::new(spec.settings, spec.context.id),
        leave_after: None,
        clients: Slab::new(),
        turns: VecDeque::new(),
        accepting: Accepting::Yes,
        max_clients: max_clients(),
        local_address: listener
            .local_addr()
            .ok()
            .filter(|address| !address.ip().is_unspecified()),
        paused_said: None,
        next_expiry_check: Instant::now(),
        next_busy_poll: Instant::now(),
        spare: 0,
        alarm_keys: Vec::new(),
        alarm_fds: Vec::new(),
        alarm_patience: Vec::new(),
        slow_skips: 0,
        slow_skipped: Duration::ZERO,
    };
    if let Err(errno) = worker.watch_shared_sockets() {
        error!(
            "{}: cannot watch the listening socket: {errno}",
            spec.context.name()
        );
        return Outcome::BootFailed;
    }
    spec.context.report_ready();
    Outcome::Left(worker.serve())
}

/// Builds the application; logs why not when it cannot.
fn build_app(spec: &HttpSpec<'_>) -> Option<Box<dyn App>> {
    match panic::catch_unwind(AssertUnwindSafe(|| (spec.build_app)())) {
        Ok(Ok(app)) => Some(app),
        Ok(Err(why)) => {
            error!(
                "{}: the application failed to start: {why:#}",
                spec.context.name()
            );
            None
        }
        Err(_) => {
            error!(
                "{}: the application panicked while starting",
                spec.context.name()
            );
            None
        }
    }
}

/// How many connections a worker holds at most: what its descriptors allow.
fn max_clients() -> usize {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap_or((1024, 1024));
    usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS).max(16)).unwrap_or(usize::MAX)
}

/// A client connection held by the worker.
struct Client {
    stream: TcpStream,
    /// Bytes read and not yet consumed by the reader.
    buffer: Vec<u8>,
    reader: RequestReader,
    /// A whole request, waiting for the application.
    ready: Option<Request>,
    /// In the worker's `turns`. A key left there by a client since gone (its key maybe
    /// taken by a new one) is skipped when this is false.
    queued: bool,
    /// Past this, the client has taken too long (see the module doc); None: it waits for us.
    deadline: Option<Instant>,
    /// When the request being read must be whole (`http_request_timeout`).
    request_deadline: Option<Instant>,
    /// The client's and the server's address, for the application.
    addresses: (Option<SocketAddr>, Option<SocketAddr>),
    /// How long its last request took (here or in the worker that handed it over; zero:
    /// none yet).
    last_took: Duration,
}

impl Client {
    /// Its last request ran long: its next one probably will too, so it is not handed ahead
    /// of others to a worker between requests.
    fn ran_long(&self) -> bool {
        self.last_took >= sys::HANDOFF_AFTER
    }

    fn expires(&self) -> Option<Instant> {
        self.deadline.into_iter().chain(self.request_deadline).min()
    }

    /// Idle between requests, nothing read: it can go to another worker as it is.
    fn is_idle(&self) -> bool {
        self.ready.is_none() && !self.reader.in_request(&self.buffer)
    }
}

/// How sending a response went.
struct Sent {
    /// Whether the connection can carry another response (an error: it is done).
    reusable: io::Result<bool>,
    /// Bytes of the body sent.
    bytes: u64,
    /// The application panicked producing the body: the worker leaves after it.
    app_panicked: bool,
}

/// Why a streamed body stopped before its end.
enum StreamStop {
    /// Writing to the client failed (it left, or read too slowly).
    Client(io::Error),
    /// The application reported an error producing it.
    AppFailed,
    AppPanicked,
}

/// Whether the worker takes new connections.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Accepting {
    /// The listener is in its epoll set.
    Yes,
    /// Paused (out of descriptors or memory) until then; None: until it holds fewer.
    PausedUntil(Option<Instant>),
    /// Leaving, for good: no new connection, idle ones handed over, the rest finished.
    Draining,
}

struct HttpWorker<'a> {
    spec: &'a HttpSpec<'a>,
    signals: &'a WorkerSignals,
    limit_signals: &'a RequestLimitSignals<'a>,
    listener: &'a TcpListener,
    handoff: &'a HandoffChannel,
    /// Hands the idle connections over if a request runs long.
    alarm: HandoffAlarm,
    epoll: Epoll,
    app: Box<dyn App>,
    /// `limit_time_cpu`, re-armed before each request (None: off).
    cpu_budget: Option<CpuBudget>,
    /// This worker's `limit_request`, jitter included (0: none).
    limit_request: u64,
    /// One line per request, when `access_log` is on.
    access_log: Option<AccessLog>,
    /// Leave once the current work is done, for this reason: the application panicked (its
    /// state may be broken) or asked to be replaced, or reading a request panicked.
    leave_after: Option<ExitReason>,
    clients: Slab<Client>,
    /// Clients waiting for their turn, in the order they came: those with a whole request,
    /// and idle ones that sent something while others waited (left unread, so that they can
    /// still go to an idle worker; read in their turn). See [`Client::queued`].
    turns: VecDeque<usize>,
    accepting: Accepting,
    max_clients: usize,
    /// The address every connection comes in on, when the listener has one (None: it
    /// listens on every interface, so each connection says which).
    local_address: Option<SocketAddr>,
    /// When the last "not accepting" line was logged.
    paused_said: Option<Instant>,
    /// While turns are waiting, deadlines are checked no sooner than this (not between every
    /// two requests: it looks at every connection held).
    next_expiry_check: Instant,
    /// While turns are waiting, the next look for what became readable (see `serve`).
    next_busy_poll: Instant,
    /// Idle workers that may still take a connection off this one's hands this turn.
    spare: u64,
    /// The idle clients (and their descriptors) given to the alarm for the current request.
    alarm_keys: Vec<usize>,
    alarm_fds: Vec<RawFd>,
    alarm_patience: Vec<Duration>,
    /// Turns given in a row to others ahead of a client whose last request ran long, and
    /// how long those others' last requests took, together.
    slow_skips: u32,
    slow_skipped: Duration,
}

impl HttpWorker<'_> {
    fn watch_shared_sockets(&mut self) -> nix::Result<()> {
        let shared = EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE;
        self.epoll.add(
            self.handoff.waiting.receive.as_fd(),
            EpollEvent::new(shared, HANDOFF),
        )?;
        self.epoll.add(
            self.handoff.returning.receive.as_fd(),
            EpollEvent::new(shared, RETURNING),
        )?;
        self.watch_listener()
    }

    fn watch_listener(&self) -> nix::Result<()> {
        self.epoll.add(
            self.listener.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, LISTENER),
        )
    }

    fn is_draining(&self) -> bool {
        self.accepting == Accepting::Draining
    }

    fn stop_accepting(&mut self, until: Accepting) {
        if self.accepting == Accepting::Yes {
            let _ = self.epoll.delete(self.listener.as_fd());
        }
        self.accepting = until;
    }

    /// Serves until it is time to leave; returns why.
    fn serve(&mut self) -> ExitReason {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            if let Some(reason) = self.exit_reason() {
                if !self.is_draining() {
                    if !matches!(reason, ExitReason::Stopped | ExitReason::MasterGone) {
                        // Its replacement may start now: what is left here may take a while
                        // (a long last request, a thread of the application's at exit).
                        self.spec.context.row.set_leaving(reason);
                        self.spec.context.doorbell.ring();
                    }
                    self.drain();
                }
                if self.clients.is_empty() {
                    return reason;
                }
            }
            self.spec.context.reopen_log_if_asked(self.signals);
            self.spec.context.bind_to_master_once_adopted();
            self.spec.context.row.beat();
            if !self.turns.is_empty() {
                // What became readable meanwhile queues behind the turns already here, in
                // order: a client whose next request is always there by the time its answer
                // leaves must not hold the worker while the others wait (it did, for
                // seconds, under load in a CPU-starved group). Looked at every
                // POLL_WHILE_BUSY, not between every two short requests (a system call).
                let now = Instant::now();
                if now >= self.next_busy_poll {
                    self.next_busy_poll = now + POLL_WHILE_BUSY;
                    if let Err(errno) = self.take_events(&mut events, Duration::ZERO) {
                        error!(
                            "{}: polling its connections failed: {errno}",
                            self.spec.context.name()
                        );
                        return ExitReason::Unknown;
                    }
                }
                if now >= self.next_expiry_check {
                    self.expire(now);
                }
                // A connection that waited behind another worker's long request goes first
                // (to an idle worker, if there is one: the kernel wakes it for it).
                let board = self.spec.context.board;
                if board.handed_waiting() > 0 && board.idle_http_workers() == 0 {
                    self.take_handed_client(HandoffLane::Waiting);
                }
                if let Some(key) = self.next_turn() {
                    self.take_turn(key);
                }
                continue;
            }
            let now = Instant::now();
            self.resume_accepting(now);
            let wait = self
                .clients
                .iter()
                .filter_map(|(_, client)| client.expires())
                .chain(match self.accepting {
                    Accepting::PausedUntil(until) => until,
                    _ => None,
                })
                .min()
                .map_or(BEAT_INTERVAL, |at| {
                    at.saturating_duration_since(now).min(BEAT_INTERVAL)
                });
            let idle = !self.is_draining();
            if idle {
                self.spec.context.board.enter_idle(self.spec.context.row);
            }
            let woken = self.take_events(&mut events, wait);
            if idle {
                self.spec.context.board.leave_idle(self.spec.context.row);
            }
            match woken {
                Ok(0) if self.clients.is_empty() && self.spec.context.orphaned() => {
                    return ExitReason::MasterGone;
                }
                Ok(_) => self.expire(Instant::now()),
                Err(errno) => {
                    error!(
                        "{}: waiting for connections failed: {errno}",
                        self.spec.context.name()
                    );
                    return ExitReason::Unknown;
                }
            }
        }
    }

    /// Waits up to `wait` for events and acts on them; returns how many came.
    fn take_events(&mut self, events: &mut [EpollEvent], wait: Duration) -> nix::Result<usize> {
        let count = self.signals.epoll_wait(&self.epoll, events, wait)?;
        // Idle workers that may take a new request off this one's hands this turn.
        self.spare = self.spec.context.board.idle_http_workers();
        // With turns waiting here, shared connections are left to the idle workers the
        // kernel woke for them, if there are any.
        let take_shared = self.turns.is_empty() || self.spare == 0;
        // In order: this worker's own clients, connections with a request waiting, new
        // connections, clients back from a long request. Each is taken when the kernel
        // wakes this worker for it (EPOLLEXCLUSIVE wakes one worker per connection), and its
        // request queues behind those already here.
        let (mut waiting, mut new, mut returning) = (false, false, false);
        for event in &events[..count] {
            match event.data() {
                LISTENER => new = take_shared,
                HANDOFF => waiting = take_shared,
                RETURNING => returning = take_shared,
                key => self.on_readable(usize::try_from(key).unwrap_or(usize::MAX)),
            }
        }
        if waiting {
            self.take_handed_client(HandoffLane::Waiting);
        }
        if new {
            self.accept_clients();
        }
        if returning {
            self.take_handed_client(HandoffLane::Returning);
        }
        Ok(count)
    }

    /// Why this worker must leave once its connections are done, if it must.
    fn exit_reason(&self) -> Option<ExitReason> {
        if let Some(reason) = self.leave_after {
            return Some(reason);
        }
        if self.limit_request > 0 && self.committed_requests() >= self.limit_request {
            return Some(ExitReason::LimitRequest);
        }
        // The parent check (a system call) is left to idle wake-ups, see `serve`.
        self.spec
            .context
            .told_to_stop(self.signals)
            .then_some(ExitReason::Stopped)
    }

    /// Whether this worker begins no new request: it leaves, or has begun all that
    /// `limit_request` lets it serve.
    fn begins_no_request(&self) -> bool {
        self.is_draining()
            || (self.limit_request > 0 && self.committed_requests() >= self.limit_request)
    }

    /// The requests this worker has served, and those it has begun to read (whole or not):
    /// it serves each of them, and begins no other past `limit_request`, so that it serves
    /// exactly that many (but for requests a client pipelined in one packet). Counting the
    /// connections is enough while they are fewer than what is left.
    fn committed_requests(&self) -> u64 {
        let served = self.spec.context.row.requests();
        if served.saturating_add(self.clients.len() as u64) < self.limit_request {
            return served;
        }
        let begun = self
            .clients
            .iter()
            .filter(|(_, client)| !client.is_idle())
            .count();
        served.saturating_add(begun as u64)
    }

    /// Begins leaving: no new connection; idle kept-alive ones go to the other workers (a
    /// reload or a recycle costs their clients nothing); the others are finished here.
    fn drain(&mut self) {
        self.stop_accepting(Accepting::Draining);
        let _ = self.epoll.delete(self.handoff.waiting.receive.as_fd());
        let _ = self.epoll.delete(self.handoff.returning.receive.as_fd());
        self.pass_on_waiting_connections();
        let idle: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, client)| client.is_idle())
            .map(|(key, _)| key)
            .collect();
        for key in idle {
            self.hand_off(key, HandoffLane::Returning);
        }
    }

    /// Sends again the connections waiting in the hand-off lanes, once this worker no longer
    /// waits on them: EPOLLEXCLUSIVE woke one worker per connection sent, and if that was
    /// this one (busy then, now leaving), no other worker would be woken for it until the
    /// next connection came. Sending it again wakes one that stays.
    fn pass_on_waiting_connections(&mut self) {
        for lane in [HandoffLane::Waiting, HandoffLane::Returning] {
            let channel = self.handoff.lane(lane);
            let mut pending = Vec::new();
            let waiting = matches!(lane, HandoffLane::Waiting);
            while pending.len() < MAX_PASSED_ON {
                match sys::receive_connection(channel.receive.as_fd()) {
                    Ok(Some(handed)) => pending.push(handed),
                    Ok(None) | Err(_) => break,
                }
            }
            for sys::Handed { stream, took } in pending {
                let sent = sys::send_connection(channel.send.as_fd(), stream.as_fd(), took);
                if waiting && sent.is_err() {
                    self.spec.context.board.count_taken();
                }
                if sent.is_err() {
                    // The lane is full: this worker answers its next request, then closes.
                    let peer = stream.peer_addr().ok();
                    if let Some(key) = self.add_client(stream, peer) {
                        self.read_client(key);
                    }
                }
            }
        }
    }

    fn resume_accepting(&mut self, now: Instant) {
        let resume = match self.accepting {
            Accepting::PausedUntil(Some(until)) => until <= now,
            Accepting::PausedUntil(None) => self.clients.len() < self.max_clients,
            Accepting::Yes | Accepting::Draining => false,
        };
        if !resume {
            return;
        }
        self.accepting = match self.watch_listener() {
            Ok(()) => Accepting::Yes,
            Err(errno) => {
                warn!(
                    "{}: cannot watch the listening socket: {errno}",
                    self.spec.context.name()
                );
                Accepting::PausedUntil(Some(now + ACCEPT_PAUSE))
            }
        };
    }

    fn accept_clients(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            if self.clients.len() >= self.max_clients {
                self.say_paused(&format!(
                    "holds {} connections, all its descriptors allow (RLIMIT_NOFILE); not \
                     accepting until one closes",
                    self.clients.len()
                ));
                self.stop_accepting(Accepting::PausedUntil(None));
                return;
            }
            match sys::accept_nonblocking(self.listener) {
                Ok(Some((stream, peer))) => {
                    if let Some(key) = self.add_client(stream, peer) {
                        // With TCP_DEFER_ACCEPT its first bytes are usually here already.
                        self.on_readable(key);
                    }
                }
                Ok(None) => return,
                Err(error) if is_disconnect(&error) => {}
                Err(error) => {
                    self.say_paused(&format!(
                        "accept failed: {error}; not accepting until {}s have passed ({} \
                         connections held)",
                        ACCEPT_PAUSE.as_secs(),
                        self.clients.len()
                    ));
                    self.stop_accepting(Accepting::PausedUntil(Some(
                        Instant::now() + ACCEPT_PAUSE,
                    )));
                    return;
                }
            }
        }
    }

    /// Logs why accepting paused, at most once per [`ACCEPT_PAUSE`].
    fn say_paused(&mut self, why: &str) {
        let now = Instant::now();
        if self
            .paused_said
            .is_none_or(|said| now.saturating_duration_since(said) >= ACCEPT_PAUSE)
        {
            self.paused_said = Some(now);
            warn!(
                pid = std::process::id(),
                "{}: {why}",
                self.spec.context.name()
            );
        }
    }

    /// Takes a connection another worker handed over in `lane`.
    fn take_handed_client(&mut self, lane: HandoffLane) {
        if self.begins_no_request() {
            // Left in the lane: this worker leaves, and passes what waits there on.
            return;
        }
        let channel = self.handoff.lane(lane);
        for _ in 0..ACCEPT_BATCH {
            if self.clients.len() >= self.max_clients {
                return;
            }
            match sys::receive_connection(channel.receive.as_fd()) {
                Ok(Some(sys::Handed { stream, took })) => {
                    let peer = stream.peer_addr().ok();
                    let Some(key) = self.add_client(stream, peer) else {
                        continue;
                    };
                    if let Some(client) = self.clients.get_mut(key) {
                        client.last_took = took;
                    }
                    let ran_long = took >= sys::HANDOFF_AFTER;
                    match lane {
                        // It waited behind another worker's long request: read, and served
                        // before this worker's own (unless its own last request ran long:
                        // then it takes its turn behind them). Not before a request already
                        // read of a client whose last one was short: that one can only be
                        // served here, and if this request is slow (a new client's first
                        // one may be), it would wait for all of it.
                        HandoffLane::Waiting => {
                            self.spec.context.board.count_taken();
                            self.read_client(key);
                            if !ran_long && self.turns.back() == Some(&key) {
                                self.turns.pop_back();
                                let clients = &self.clients;
                                let after_read_fast = self
                                    .turns
                                    .iter()
                                    .rposition(|turn| {
                                        clients
                                            .get(*turn)
                                            .is_some_and(|c| c.ready.is_some() && !c.ran_long())
                                    })
                                    .map_or(0, |last| last + 1);
                                self.turns.insert(after_read_fast, key);
                            }
                        }
                        // An idle connection, or one whose last request ran long: read now
                        // if nothing waits here, else left unread in its turn.
                        HandoffLane::Returning if self.turns.is_empty() => self.read_client(key),
                        HandoffLane::Returning => self.queue(key),
                    }
                }
                Ok(None) => return,
                Err(error) => {
                    debug!(
                        "{}: taking a handed-over connection failed: {error}",
                        self.spec.context.name()
                    );
                    return;
                }
            }
        }
    }

    /// Holds `stream`, connected from `peer`; returns its key, None if it cannot be watched
    /// (it is closed).
    fn add_client(&mut self, stream: TcpStream, peer: Option<SocketAddr>) -> Option<usize> {
        let settings = self.spec.settings;
        let max_body = settings.max_body_size;
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        if let Err(errno) = self
            .epoll
            .add(stream.as_fd(), EpollEvent::new(flags, key as u64))
        {
            debug!(
                "{}: cannot watch a connection: {errno}",
                self.spec.context.name()
            );
            return None;
        }
        // The listener's own address, unless it listens on every interface (no system call
        // per connection then).
        let local = self.local_address.or_else(|| stream.local_addr().ok());
        let addresses = (peer, local);
        entry.insert(Client {
            addresses,
            stream,
            buffer: Vec::new(),
            reader: RequestReader::new(max_body),
            ready: None,
            queued: false,
            deadline: settings
                .socket_timeout
                .map(|timeout| Instant::now() + timeout),
            request_deadline: None,
            last_took: Duration::ZERO,
        });
        Some(key)
    }

    /// Stops holding client `key` (closing it).
    fn remove(&mut self, key: usize) -> Option<Client> {
        let client = self.clients.try_remove(key)?;
        // Explicitly: a descriptor in flight elsewhere would keep the registration alive.
        let _ = self.epoll.delete(client.stream.as_fd());
        Some(client)
    }

    /// Gives idle client `key` to another worker through the hand-off `lane`; keeps it if
    /// the lane is full.
    fn hand_off(&mut self, key: usize, lane: HandoffLane) {
        let Some(client) = self.remove(key) else {
            return;
        };
        let channel = self.handoff.lane(lane);
        match sys::send_connection(
            channel.send.as_fd(),
            client.stream.as_fd(),
            client.last_took,
        ) {
            Ok(()) => {
                if matches!(lane, HandoffLane::Waiting) {
                    self.spec.context.board.count_handed();
                }
            }
            Err(error) => {
                debug!(
                    "{}: cannot hand a connection over: {error}",
                    self.spec.context.name()
                );
                if let Some(key) = self.add_client(client.stream, client.addresses.0) {
                    if let Some(kept) = self.clients.get_mut(key) {
                        kept.last_took = client.last_took;
                    }
                    self.read_client(key);
                }
            }
        }
    }

    /// Client `key` has bytes to read. While a request already waits here, a new request on
    /// an idle connection would wait behind it: it goes to an idle worker if there is one,
    /// else it is left in the socket, where the alarm may still hand it over.
    fn on_readable(&mut self, key: usize) {
        let Some(client) = self.clients.get(key) else {
            return;
        };
        if client.queued {
            // Read in its turn.
            return;
        }
        let busy_ahead = !self.turns.is_empty();
        let idle = client.is_idle();
        if idle && self.begins_no_request() {
            // A new request on a connection of a worker that leaves: another serves it.
            self.hand_off(key, HandoffLane::Waiting);
        } else if !(busy_ahead && idle) {
            self.read_client(key);
        } else if self.spare > 0 && !self.is_draining() {
            self.spare -= 1;
            self.hand_off(key, HandoffLane::Waiting);
        } else {
            self.queue(key);
        }
    }

    /// Gives client `key` a turn, behind those already waiting.
    fn queue(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key)
            && !client.queued
        {
            client.queued = true;
            self.turns.push_back(key);
        }
    }

    /// Whose turn it is: the first in line, unless that client's last request ran long and
    /// one whose did not, and took less than half as long, waits behind it: that one goes
    /// first (a fast request does not wait for a slow one that merely came before it). The
    /// slow client lets others go first for about as long as its own last request took (by
    /// their last requests), and at most [`MAX_SLOW_SKIPS`] times in a row: a 1 s request
    /// may wait for a few hundred 1 ms ones, a 25 ms one for one or two of 10 ms, never
    /// for seconds of requests as long as its own.
    fn next_turn(&mut self) -> Option<usize> {
        let front = *self.turns.front()?;
        let slow = self
            .clients
            .get(front)
            .filter(|client| client.ran_long())
            .map(|client| client.last_took);
        if let Some(slow_took) = slow {
            let passer = self.turns.iter().position(|key| {
                self.clients.get(*key).is_some_and(|client| {
                    !client.ran_long() && client.last_took.saturating_mul(2) <= slow_took
                })
            });
            let budget_left = self.slow_skips < MAX_SLOW_SKIPS && self.slow_skipped < slow_took;
            if let Some(position) = passer.filter(|_| budget_left) {
                self.slow_skips += 1;
                let key = self.turns.remove(position)?;
                if let Some(client) = self.clients.get(key) {
                    self.slow_skipped = self.slow_skipped.saturating_add(client.last_took);
                }
                return Some(key);
            }
            self.slow_skips = 0;
            self.slow_skipped = Duration::ZERO;
        }
        self.turns.pop_front()
    }

    /// Client `key`'s turn: its request is served, read first if it was left unread.
    fn take_turn(&mut self, key: usize) {
        let Some(client) = self.clients.get(key).filter(|client| client.queued) else {
            // Gone since (handed over or closed).
            return;
        };
        if client.is_idle() && self.begins_no_request() {
            // Not begun here, and this worker leaves: another one serves it.
            if let Some(client) = self.clients.get_mut(key) {
                client.queued = false;
            }
            self.hand_off(key, HandoffLane::Waiting);
            return;
        }
        if client.ready.is_none() {
            self.read_client(key);
        }
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        client.queued = false;
        if client.ready.is_some() {
            self.serve_request(key);
        }
    }

    /// Reads what client `key` sent, until it has nothing more or a whole request is read.
    fn read_client(&mut self, key: usize) {
        let socket_timeout = self.spec.settings.socket_timeout;
        let request_timeout = self.spec.settings.request_timeout;
        let mut chunk = [0u8; READ_CHUNK];
        // What is buffered first (a pipelined request), then what the socket has.
        while self.parse(key) {
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            let read = match client.stream.read(&mut chunk) {
                Ok(0) => {
                    // The client closed: nothing to answer, whatever was under way.
                    self.remove(key);
                    return;
                }
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.remove(key);
                    return;
                }
            };
            let now = Instant::now();
            if !client.reader.in_request(&client.buffer) {
                // The first bytes of a request: the whole of it is due by then.
                client.request_deadline = request_timeout.map(|timeout| now + timeout);
            }
            client.buffer.extend_from_slice(&chunk[..read]);
            if client.reader.reading_body() {
                // A body may take its time, as long as it keeps coming.
                client.deadline = socket_timeout.map(|timeout| now + timeout);
            }
            if read < chunk.len() {
                // A short read took all there was: parse it, then wait for the next edge.
                self.parse(key);
                return;
            }
        }
    }

    /// Goes on reading client `key`'s buffered bytes; returns whether it needs more. A whole
    /// request is queued for the application; an unreadable one is answered and closed.
    fn parse(&mut self, key: usize) -> bool {
        let Some(client) = self.clients.get_mut(key) else {
            return false;
        };
        if client.ready.is_some() {
            return false;
        }
        let parsed =
            panic::catch_unwind(AssertUnwindSafe(|| client.reader.next(&mut client.buffer)));
        let reject = match parsed {
            Ok(Ok(Some(request))) => {
                client.ready = Some(request);
                client.deadline = None;
                client.request_deadline = None;
                self.queue(key);
                return false;
            }
            Ok(Ok(None)) => {
                if client.reader.take_continue() {
                    // Best effort: a client that misses it sends its body after its own wait.
                    let _ = (&client.stream).write(http::CONTINUE);
                }
                return true;
            }
            Ok(Err(reject)) => reject,
            Err(_) => {
                error!(
                    "{}: reading a request panicked; this worker will be replaced",
                    self.spec.context.name()
                );
                self.leave_after = Some(ExitReason::HttpPanicked);
                Reject {
                    status: 500,
                    reason: "internal server error",
                }
            }
        };
        self.reject(key, reject);
        false
    }

    /// Answers client `key`'s unreadable request with `reject`, and closes it.
    fn reject(&mut self, key: usize, reject: Reject) {
        let Some(client) = self.remove(key) else {
            return;
        };
        debug!(
            "{}: rejected a request with {}: {}",
            self.spec.context.name(),
            reject.status,
            reject.reason
        );
        let mut response = http::rejection(reject);
        let (head, framing) = http::response_head(None, &response, false);
        let started = Instant::now();
        let sent = self.send(&client.stream, head, framing, response.take_body(), None);
        let peer = client.addresses.0.map(|peer| peer.ip());
        self.log_access(None, peer, reject.status, sent.bytes, started);
    }

    /// Closes the clients that took too long: 408 to one in the middle of a request. One
    /// waiting for its turn has sent something: it is read, not expired.
    fn expire(&mut self, now: Instant) {
        self.next_expiry_check = now + EXPIRY_CHECK_WHILE_BUSY;
        let expired: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, client)| client.expires().is_some_and(|at| at <= now) && !client.queued)
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            let in_request = self
                .clients
                .get(key)
                .is_some_and(|client| client.reader.in_request(&client.buffer));
            if in_request {
                self.reject(
                    key,
                    Reject {
                        status: 408,
                        reason: "request not received in time",
                    },
                );
            } else {
                self.remove(key);
            }
        }
    }

    /// Runs the application on client `key`'s request and answers it.
    fn serve_request(&mut self, key: usize) {
        let Some((mut request, (peer, local))) = self
            .clients
            .get_mut(key)
            .and_then(|client| Some((client.ready.take()?, client.addresses)))
        else {
            return;
        };
        request.set_addresses(peer, local);
        if self.spec.settings.proxy_mode {
            request.trust_forwarded_headers();
        }
        let idle = self.arm_handoff(key);
        let started = Instant::now();
        self.spec
            .context
            .begin_work(request.method(), request.target());
        self.arm_cpu_limit();
        let fd = self.clients.get(key).map(|client| client.stream.as_fd());
        self.limit_signals.answer_to(fd);
        let mut response = self.call_app(&request);
        let keep_alive = request.wants_keep_alive() && self.will_serve_another();
        let (head, framing) = http::response_head(Some(&request), &response, keep_alive);
        let body = response.take_body();
        // Until the first byte of the response leaves, a limit can still answer instead.
        let limit_signals = self.limit_signals;
        let stop_answering = move || limit_signals.answer_to(None);
        let sent = match self.clients.get(key) {
            Some(client) => self.send(&client.stream, head, framing, body, Some(&stop_answering)),
            None => {
                if let Body::Stream(mut stream) = body {
                    stream.finish();
                }
                Sent {
                    reusable: Err(io::ErrorKind::NotConnected.into()),
                    bytes: 0,
                    app_panicked: false,
                }
            }
        };
        if sent.app_panicked {
            self.leave_after = Some(ExitReason::AppPanicked);
        }
        let client = request.client_ip();
        self.log_access(
            Some(&request),
            client,
            response.status(),
            sent.bytes,
            started,
        );
        self.limit_signals.answer_to(None);
        self.disarm_handoff(idle);
        self.spec.context.row.end_request();
        let keep_alive = match sent.reusable {
            Ok(reusable) => keep_alive && reusable,
            Err(error) => {
                if !is_disconnect(&error) && !http::is_timeout(&error) {
                    debug!(
                        "{}: writing a response failed: {error}",
                        self.spec.context.name()
                    );
                }
                false
            }
        };
        self.after_response(key, keep_alive, started.elapsed());
    }

    /// Arms the hand-off alarm over the other connections this worker holds idle while
    /// client `key`'s request runs; returns their keys (buffers kept across requests:
    /// nothing allocated per request).
    fn arm_handoff(&mut self, key: usize) -> Vec<usize> {
        let mut idle = std::mem::take(&mut self.alarm_keys);
        let mut fds = std::mem::take(&mut self.alarm_fds);
        let mut patience = std::mem::take(&mut self.alarm_patience);
        idle.clear();
        fds.clear();
        patience.clear();
        for (other, client) in &self.clients {
            // Not those whose last request ran long: another worker would serve their next
            // (probably long) one first, ahead of fast ones.
            if other != key && client.is_idle() && !client.ran_long() {
                idle.push(other);
                fds.push(client.stream.as_raw_fd());
                // Handed over once this request has run twice as long as the client's own
                // last one: a fast client does not wait behind a slow request, but where
                // requests all take about as long (15 ms each), handing waiting clients
                // back and forth between equally busy workers would only reorder them,
                // some waiting several turns longer than their fair share.
                patience.push(client.last_took.saturating_mul(2));
            }
        }
        if !fds.is_empty() {
            self.alarm.arm(&fds, &patience);
        }
        self.alarm_fds = fds;
        self.alarm_patience = patience;
        idle
    }

    /// After the request: the connections handed over while it ran (of `idle`) belong to
    /// other workers now.
    fn disarm_handoff(&mut self, idle: Vec<usize>) {
        if !idle.is_empty() {
            for handed in self.alarm.disarm() {
                self.remove(idle[handed]);
            }
        }
        self.alarm_keys = idle;
    }

    /// What becomes of client `key`'s connection after a response that took `took`:
    /// closed, handed to another worker, or kept for its next request.
    fn after_response(&mut self, key: usize, keep_alive: bool, took: Duration) {
        if !keep_alive {
            self.remove(key);
            return;
        }
        let long = took >= sys::HANDOFF_AFTER;
        if let Some(client) = self.clients.get_mut(key) {
            client.last_took = took;
        }
        let idle = self.clients.get(key).is_some_and(Client::is_idle);
        if idle && (self.begins_no_request() || self.exit_reason().is_some()) {
            // Its next request is for a worker that stays.
            self.hand_off(key, HandoffLane::Returning);
            return;
        }
        if long && !self.is_draining() && idle {
            // A long request's client goes back to the shared queue for its next one, as it
            // would come through the accept queue to a prefork server that does not keep
            // connections: it does not take this worker again ahead of the clients waiting
            // on it, nor pile up here with other slow clients.
            self.hand_off(key, HandoffLane::Returning);
            return;
        }
        if let Some(client) = self.clients.get_mut(key) {
            client.deadline = self
                .spec
                .settings
                .socket_timeout
                .map(|timeout| Instant::now() + timeout);
        }
        // A pipelined request may be buffered, or waiting in the socket: read now if no
        // one else waits, else in its turn, behind them.
        if self.turns.is_empty() {
            self.read_client(key);
        } else {
            self.queue(key);
        }
    }

    /// The access line of a request (None: one that could not be read), if `access_log` is
    /// on.
    fn log_access(
        &self,
        request: Option<&Request>,
        remote: Option<IpAddr>,
        status: u16,
        bytes: u64,
        started: Instant,
    ) {
        if let Some(access_log) = &self.access_log {
            access_log.record(&Served {
                request,
                remote,
                status,
                bytes,
                duration: started.elapsed(),
            });
        }
    }

    /// Sends a response's `head` and `body` on `stream` as `framing` says, pulling a
    /// streamed body's parts one at a time; `first` is called before its first byte leaves.
    /// Says whether the connection can carry another response, and whether the application
    /// panicked producing the body (then this worker must leave after it).
    fn send(
        &self,
        stream: &TcpStream,
        head: Vec<u8>,
        framing: Framing,
        body: Body,
        first: Option<&dyn Fn()>,
    ) -> Sent {
        let mut sending = Sending::new(
            stream,
            self.spec.settings.socket_timeout,
            self.spec.context.row,
            head,
            framing,
        );
        if let Some(first) = first {
            sending = sending.before_first_write(first);
        }
        let mut parts = match body {
            Body::Bytes(bytes) => {
                let written = sending.bytes(&bytes);
                let bytes = sending.sent();
                return Sent {
                    reusable: written.and_then(|()| sending.end()),
                    bytes,
                    app_panicked: false,
                };
            }
            Body::Stream(parts) => parts,
        };
        let mut app_panicked = false;
        let streamed = if sending.framing() == Framing::Empty {
            Ok(())
        } else {
            match self.stream_parts(&mut sending, parts.as_mut()) {
                Ok(()) => Ok(()),
                Err(StreamStop::Client(error)) => Err(error),
                Err(StreamStop::AppFailed) => Err(io::Error::other("the application failed")),
                Err(StreamStop::AppPanicked) => {
                    app_panicked = true;
                    Err(io::Error::other("the application panicked"))
                }
            }
        };
        // Once, whatever happened (the client left, the application failed).
        if panic::catch_unwind(AssertUnwindSafe(|| parts.finish())).is_err() {
            error!(
                "{}: the application panicked closing a response; this worker will be replaced",
                self.spec.context.name()
            );
            app_panicked = true;
        }
        let bytes = sending.sent();
        Sent {
            reusable: streamed.and_then(|()| sending.end()),
            bytes,
            app_panicked,
        }
    }

    /// Sends each part `parts` produces, as it comes.
    fn stream_parts(
        &self,
        sending: &mut Sending<'_>,
        parts: &mut dyn BodyStream,
    ) -> Result<(), StreamStop> {
        loop {
            let part = match panic::catch_unwind(AssertUnwindSafe(|| parts.next_part())) {
                Ok(Ok(Some(part))) => part,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(error)) => {
                    debug!(
                        "{}: a response body ended early after {} bytes: {error}",
                        self.spec.context.name(),
                        sending.sent()
                    );
                    return Err(StreamStop::AppFailed);
                }
                Err(_) => {
                    error!(
                        "{}: the application panicked producing a response body; this \
                         worker will be replaced",
                        self.spec.context.name()
                    );
                    return Err(StreamStop::AppPanicked);
                }
            };
            match part {
                Part::Bytes(bytes) => sending.bytes(&bytes),
                Part::File { file, offset, len } => sending.file(&file, offset, len),
            }
            .map_err(StreamStop::Client)?;
        }
    }

    /// Whether this worker will serve another request after the current one.
    /// No system call: this runs on every request.
    fn will_serve_another(&self) -> bool {
        let last =
            self.limit_request > 0 && self.spec.context.row.requests() + 1 >= self.limit_request;
        !last && self.leave_after.is_none() && !self.spec.context.told_to_stop(self.signals)
    }

    /// Gives the request about to run its `limit_time_cpu` budget.
    fn arm_cpu_limit(&mut self) {
        let Some(budget) = &mut self.cpu_budget else {
            return;
        };
        match budget.arm() {
            Ok(used) => self.spec.context.row.set_request_cpu(used),
            Err(errno) => warn!(
                "{}: cannot arm limit_time_cpu: {errno}",
                self.spec.context.name()
            ),
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
                    self.spec.context.name(),
                    request.method(),
                    request.target()
                );
                self.leave_after = Some(ExitReason::AppPanicked);
                Response::text(500, "internal server error\n")
            }
        }
    }
}
