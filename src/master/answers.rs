//! Short conversations on the master's own sockets (the control socket, the metrics
//! listener): a connection asks one thing (or nothing: the control socket answers on
//! connect), gets one answer, and is closed.
//!
//! The master never waits on one. It reads what a connection sent when the poll says it
//! is readable, writes what the socket takes, and the rest when the poll says there is
//! room. A connection that has not asked and taken its answer within [`DEADLINE`] is
//! dropped, and past [`MAX_OPEN`] at once new ones are closed at once: a hundred stuck
//! readers cost descriptors and buffers, never a delay of a respawn or a limit.

use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::{Interest, Registry, Token};

use super::tokens::EventSource;
use slab::Slab;

/// How long a connection has to ask and take its answer.
pub(super) const DEADLINE: Duration = Duration::from_secs(2);
/// Most connections served at once (per socket); more are closed at once.
pub(super) const MAX_OPEN: usize = 64;
/// Longest request read; a longer one gets what the asker makes of it (HTTP: 431).
pub(super) const MAX_REQUEST: usize = 8 * 1024;

/// What the asker makes of the bytes a connection sent so far.
pub(super) enum Reply {
    /// Not a whole request yet.
    NeedMore,
    Answer(Vec<u8>),
}

/// The open connections of one socket; each one's poll token is `source(key)`'s.
pub(super) struct Conversations<S> {
    source: fn(usize) -> EventSource,
    open: Slab<Conversation<S>>,
}

struct Conversation<S> {
    stream: S,
    stage: Stage,
    deadline: Instant,
}

enum Stage {
    /// Reading the request.
    Asking(Vec<u8>),
    /// Writing the answer (shared: every `forkwarden status` connected at once gets the
    /// same one).
    Answering { answer: Rc<[u8]>, written: usize },
}

/// What became of a connection after some progress.
enum Progress {
    Waiting,
    Done,
}

impl<S: Source + Read + Write> Conversations<S> {
    /// No connection yet; `source` names a connection's event source from its key.
    pub(super) fn new(source: fn(usize) -> EventSource) -> Self {
        Self {
            source,
            open: Slab::new(),
        }
    }

    /// Whether another connection may be taken.
    pub(super) fn has_room(&self) -> bool {
        self.open.len() < MAX_OPEN
    }

    /// A new connection that gets `answer` without asking.
    pub(super) fn answer(&mut self, stream: S, answer: Rc<[u8]>, registry: &Registry) {
        let written = 0;
        self.start(stream, Stage::Answering { answer, written }, registry);
    }

    /// A new connection that asks first.
    pub(super) fn listen(&mut self, stream: S, registry: &Registry) {
        self.start(stream, Stage::Asking(Vec::new()), registry);
    }

    fn start(&mut self, stream: S, stage: Stage, registry: &Registry) {
        if !self.has_room() {
            return;
        }
        let entry = self.open.vacant_entry();
        let key = entry.key();
        let token = (self.source)(key).token();
        let interest = match stage {
            Stage::Asking(_) => Interest::READABLE,
            Stage::Answering { .. } => Interest::WRITABLE,
        };
        let mut conversation = Conversation {
            stream,
            stage,
            deadline: Instant::now() + DEADLINE,
        };
        if registry
            .register(&mut conversation.stream, token, interest)
            .is_err()
        {
            return;
        }
        let answering = matches!(conversation.stage, Stage::Answering { .. });
        entry.insert(conversation);
        if answering {
            // What the socket takes now needs no wait for the poll. (An asking one is read
            // when the poll says so: registering a socket that holds bytes already makes
            // it readable.)
            self.progress(key, registry, |_| Reply::NeedMore);
        }
    }

    /// The poll says connection `key` is ready: reads its request (`ask` makes the answer
    /// once it is whole) or writes more of its answer.
    pub(super) fn progress(
        &mut self,
        key: usize,
        registry: &Registry,
        ask: impl FnOnce(&[u8]) -> Reply,
    ) {
        let token = (self.source)(key).token();
        let Some(conversation) = self.open.get_mut(key) else {
            return;
        };
        if let Progress::Done = conversation.progress(token, registry, ask) {
            self.drop_conversation(key, registry);
        }
    }

    /// Drops the connections past their deadline.
    pub(super) fn expire(&mut self, now: Instant, registry: &Registry) {
        let late: Vec<usize> = self
            .open
            .iter()
            .filter(|(_, conversation)| conversation.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        for key in late {
            self.drop_conversation(key, registry);
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.open
            .iter()
            .map(|(_, conversation)| conversation.deadline)
            .min()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.open.len()
    }

    fn drop_conversation(&mut self, key: usize, registry: &Registry) {
        if let Some(mut conversation) = self.open.try_remove(key) {
            let _ = registry.deregister(&mut conversation.stream);
        }
    }
}

impl<S: Source + Read + Write> Conversation<S> {
    fn progress(
        &mut self,
        token: Token,
        registry: &Registry,
        ask: impl FnOnce(&[u8]) -> Reply,
    ) -> Progress {
        if let Stage::Asking(request) = &mut self.stage {
            match read_available(&mut self.stream, request) {
                Ok(closed) => match ask(request) {
                    Reply::Answer(answer) => {
                        self.stage = Stage::Answering {
                            answer: answer.into(),
                            written: 0,
                        };
                        if registry
                            .reregister(&mut self.stream, token, Interest::WRITABLE)
                            .is_err()
                        {
                            return Progress::Done;
                        }
                    }
                    Reply::NeedMore if closed => return Progress::Done,
                    Reply::NeedMore => return Progress::Waiting,
                },
                Err(_) => return Progress::Done,
            }
        }
        match &mut self.stage {
            Stage::Answering { answer, written } => {
                write_available(&mut self.stream, answer, written)
            }
            Stage::Asking(_) => Progress::Waiting,
        }
    }
}

/// Reads what `stream` holds into `request`, up to [`MAX_REQUEST`]; Ok(true) if the peer
/// closed its side.
fn read_available(stream: &mut impl Read, request: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    while request.len() < MAX_REQUEST {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(count) => request.extend_from_slice(&chunk[..count]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(error) => return Err(error),
        }
    }
    Ok(false)
}

/// Writes what `stream` takes of `answer` from `written` on.
fn write_available(stream: &mut impl Write, answer: &[u8], written: &mut usize) -> Progress {
    while *written < answer.len() {
        match stream.write(&answer[*written..]) {
            Ok(0) => return Progress::Done,
            Ok(count) => *written += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
            Err(_) => return Progress::Done,
        }
    }
    Progress::Done
}
