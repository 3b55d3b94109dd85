//! The control socket: `forkwarden status` connects, the master writes what it knows (one
//! JSON object: the server, each worker, the tallies) and closes the connection.
//!
//! The master never waits on a reader: the answer is written without blocking; what does
//! not fit in the socket is sent when the socket has room (poll), and a reader that takes
//! more than [`READER_DEADLINE`] to take it, or one past [`MAX_READERS`] at once, is
//! dropped. A hundred stuck readers cost a hundred descriptors and buffers, never a delay
//! of a respawn or a limit. The socket is owner-only (0600), at `data_dir/forkwarden.sock`.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use serde_json::{Value, json};
use slab::Slab;
use tracing::{debug, warn};

use super::Master;
use super::pool::{Departure, Lifecycle};
use crate::id::Role;
use crate::scoreboard::WorkerState;

/// The listening socket's poll token.
pub(super) const CONTROL: Token = Token(3);
/// Readers' poll tokens, from here on (far above the output pipes' tokens).
const FIRST_READER: usize = usize::MAX / 2;
/// Most readers served at once; more are closed at once.
const MAX_READERS: usize = 64;
/// How long a reader has to take its answer.
const READER_DEADLINE: Duration = Duration::from_secs(2);

/// The control socket's path for a config: `data_dir/forkwarden.sock`.
pub fn socket_path(config: &crate::config::Config) -> PathBuf {
    config.data_dir.join("forkwarden.sock")
}

pub(super) struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    readers: Slab<Reader>,
}

/// A `forkwarden status` whose answer is not all written yet.
struct Reader {
    stream: UnixStream,
    answer: std::rc::Rc<[u8]>,
    written: usize,
    deadline: Instant,
}

impl ControlSocket {
    /// Listens at `path`; None (and a warning) if another live master listens there, or the
    /// socket cannot be made: the server runs on without it.
    pub(super) fn bind(path: &Path, registry: &Registry) -> Option<Self> {
        match Self::try_bind(path, registry) {
            Ok(control) => control,
            Err(error) => {
                warn!(
                    path = %path.display(),
                    "cannot listen on the control socket {}: {error}; `forkwarden status` \
                     will not reach this server",
                    path.display()
                );
                None
            }
        }
    }

    fn try_bind(path: &Path, registry: &Registry) -> io::Result<Option<Self>> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            warn!(
                path = %path.display(),
                "another forkwarden master answers on {}: `forkwarden status` reaches that \
                 one, not this one (give each server its own data_dir)",
                path.display()
            );
            return Ok(None);
        }
        // Left behind by a master that was killed.
        match std::fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let mut listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        registry.register(&mut listener, CONTROL, Interest::READABLE)?;
        Ok(Some(Self {
            listener,
            path: path.to_path_buf(),
            readers: Slab::new(),
        }))
    }

    /// Takes the readers waiting to connect; each gets `answer()` (made once for all).
    pub(super) fn accept(&mut self, registry: &Registry, answer: impl FnOnce() -> Vec<u8>) {
        let mut answer = Some(answer);
        let mut made: Option<std::rc::Rc<[u8]>> = None;
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    debug!("accepting on the control socket failed: {error}");
                    return;
                }
            };
            if self.readers.len() >= MAX_READERS {
                // Closed at once: too many readers are already waiting.
                continue;
            }
            let answer = made
                .get_or_insert_with(|| answer.take().map_or_else(Vec::new, |make| make()).into())
                .clone();
            let entry = self.readers.vacant_entry();
            let token = Token(FIRST_READER + entry.key());
            let mut reader = Reader {
                stream,
                answer,
                written: 0,
                deadline: Instant::now() + READER_DEADLINE,
            };
            if reader.write() {
                continue;
            }
            if registry
                .register(&mut reader.stream, token, Interest::WRITABLE)
                .is_ok()
            {
                entry.insert(reader);
            }
        }
    }

    /// Whether `token` is a reader's.
    pub(super) fn is_reader(token: Token) -> bool {
        token.0 >= FIRST_READER
    }

    /// Reader `token`'s socket has room: sends it more of its answer.
    pub(super) fn write_to(&mut self, token: Token, registry: &Registry) {
        let key = token.0 - FIRST_READER;
        if self.readers.get_mut(key).is_some_and(Reader::write) {
            self.drop_reader(key, registry);
        }
    }

    /// Drops the readers past their deadline.
    pub(super) fn expire(&mut self, now: Instant, registry: &Registry) {
        let late: Vec<usize> = self
            .readers
            .iter()
            .filter(|(_, reader)| reader.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        for key in late {
            self.drop_reader(key, registry);
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.readers.iter().map(|(_, reader)| reader.deadline).min()
    }

    fn drop_reader(&mut self, key: usize, registry: &Registry) {
        if let Some(mut reader) = self.readers.try_remove(key) {
            let _ = registry.deregister(&mut reader.stream);
        }
    }
}

impl Reader {
    /// Writes what the socket takes; true once the answer is all written (or the reader
    /// is gone).
    fn write(&mut self) -> bool {
        while self.written < self.answer.len() {
            match self.stream.write(&self.answer[self.written..]) {
                Ok(0) => return true,
                Ok(count) => self.written += count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        true
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Master {
    /// A `forkwarden status` connected.
    pub(super) fn answer_status(&mut self) {
        let Some(mut control) = self.control.take() else {
            return;
        };
        control.accept(self.poll.registry(), || {
            let mut text = self.status().to_string();
            text.push('\n');
            text.into_bytes()
        });
        self.control = Some(control);
    }

    /// What `forkwarden status` shows, as JSON.
    fn status(&self) -> Value {
        let now = Instant::now();
        let config = &self.config;
        let uptime = SystemTime::now()
            .duration_since(self.started_at)
            .unwrap_or_default();
        let mut workers: Vec<&super::pool::Worker> = self.pool.workers().collect();
        workers.sort_by_key(|worker| (worker.id, worker.generation));
        let live_requests: u64 = workers.iter().map(|worker| worker.row.requests()).sum();
        let rows: Vec<Value> = workers
            .iter()
            .map(|worker| {
                let row = worker.row.snapshot();
                let state = match (&worker.lifecycle, row.state) {
                    (Lifecycle::Leaving(leaving), _) => match leaving.departure {
                        Departure::Kill { .. } => "killed",
                        Departure::Retire { .. } => "retiring",
                    },
                    (_, WorkerState::Booting) => "booting",
                    (_, WorkerState::Busy) => "busy",
                    (_, _) => "idle",
                };
                let busy = row.busy_for.filter(|_| row.state == WorkerState::Busy);
                json!({
                    "role": worker.id.role.as_str(),
                    "slot": worker.id.slot,
                    "pid": worker.pid.as_raw(),
                    "generation": worker.generation,
                    "state": state,
                    "request": busy.map(|_| row.request.clone()),
                    "busy_seconds": busy.map(|busy| busy.as_secs_f64()),
                    // Read now: the master reads idle workers' memory seldom.
                    "rss_bytes": crate::proctree::memory(worker.pid, worker.exec.is_some())
                        .map(|memory| memory.rss)
                        .or(worker.memory.rss),
                    "cpu_seconds": cpu_seconds(worker.pid.as_raw()),
                    "requests": row.requests,
                    "uptime_seconds": now.saturating_duration_since(worker.started).as_secs_f64(),
                    "status": worker.exec.as_ref().and_then(|exec| exec.status.clone()),
                })
            })
            .collect();
        let tally = &self.tally;
        let deaths: Vec<Value> = tally
            .recent
            .iter()
            .rev()
            .map(|death| {
                json!({
                    "at": death.at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |at| at.as_secs()),
                    "pid": death.pid,
                    "line": death.line,
                })
            })
            .collect();
        let count =
            |role| json!({"wanted": self.pool.wanted(role), "running": self.pool.count(role)});
        json!({
            "master": {
                "pid": self.pid.as_raw(),
                "generation": self.pool.generation(),
                "config": self.config_path.display().to_string(),
                "uptime_seconds": uptime.as_secs_f64(),
                "stopping": self.stopping.is_some(),
                "rss_bytes": crate::proctree::memory(self.pid, false).map(|memory| memory.rss),
            },
            "limits": {
                "limit_memory_soft": config.limit_memory_soft.bytes(),
                "limit_memory_hard": config.limit_memory_hard.bytes(),
                "limit_time_real": config.limit_time_real.duration().as_secs_f64(),
                "limit_time_cpu": config.limit_time_cpu.duration().as_secs_f64(),
                "limit_request": config.limit_request,
            },
            "http_workers": count(Role::Http),
            "cron_workers": count(Role::Cron),
            "requests": tally.requests_of_ended.saturating_add(live_requests),
            "ends": tally.ends,
            "limits_enforced": tally.limits,
            "recent_deaths": deaths,
            "workers": rows,
        })
    }
}

/// CPU seconds (user + system) process `pid` has used, from /proc.
fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    Some((stat.utime + stat.stime) as f64 / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_reader_too_slow_for_its_answer_is_served_as_it_reads_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let mut poll = mio::Poll::new().unwrap();
        let mut control = ControlSocket::bind(&path, poll.registry()).expect("bound");
        let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        // Far more than a socket buffer holds: the master cannot write it all at once.
        let answer: Vec<u8> = (0..8 << 20).map(|index| (index % 251) as u8).collect();
        let started = Instant::now();
        control.accept(poll.registry(), || answer.clone());
        assert!(started.elapsed() < READER_DEADLINE, "accept did not wait");
        assert_eq!(control.readers.len(), 1, "the rest waits for room");
        let reader = std::thread::spawn(move || {
            let mut received = Vec::new();
            client.read_to_end(&mut received).unwrap();
            received
        });
        let mut events = mio::Events::with_capacity(8);
        while !control.readers.is_empty() {
            poll.poll(&mut events, Some(READER_DEADLINE)).unwrap();
            for event in &events {
                if ControlSocket::is_reader(event.token()) {
                    control.write_to(event.token(), poll.registry());
                }
            }
        }
        assert_eq!(reader.join().unwrap(), answer);
        // A reader that never reads is dropped at its deadline.
        let _stuck = std::os::unix::net::UnixStream::connect(&path).unwrap();
        control.accept(poll.registry(), || answer.clone());
        assert_eq!(control.readers.len(), 1);
        control.expire(Instant::now() + READER_DEADLINE, poll.registry());
        assert!(control.readers.is_empty());
    }
}
