//! The control socket: `forkwarden status` connects, the master writes what it knows (one
//! JSON object: the server, each worker, the tallies; see survey.rs) and closes the
//! connection. It never waits on a reader (see answers.rs). The socket is owner-only
//! (0600), at `data_dir/forkwarden.sock`.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use tracing::{debug, warn};

use super::Master;
use super::answers::Conversations;

/// The listening socket's poll token.
pub(super) const CONTROL: Token = Token(3);
/// Readers' poll tokens, from here on (far above the output pipes' tokens).
const FIRST_READER: usize = usize::MAX / 2;

/// The control socket's path for a config: `data_dir/forkwarden.sock`.
pub fn socket_path(config: &crate::config::Config) -> PathBuf {
    config.data_dir.join("forkwarden.sock")
}

pub(super) struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    readers: Conversations<UnixStream>,
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
            readers: Conversations::new(FIRST_READER),
        }))
    }

    /// Takes the readers waiting to connect; each gets `answer()` (made once for all).
    pub(super) fn accept(&mut self, registry: &Registry, answer: impl FnOnce() -> Vec<u8>) {
        let mut answer = Some(answer);
        let mut made: Option<Rc<[u8]>> = None;
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
            if !self.readers.has_room() {
                // Closed at once: too many readers are already waiting.
                continue;
            }
            let answer = made
                .get_or_insert_with(|| answer.take().map_or_else(Vec::new, |make| make()).into())
                .clone();
            self.readers.answer(stream, answer, registry);
        }
    }

    /// Whether `token` is a reader's.
    pub(super) fn is_reader(&self, token: Token) -> bool {
        self.readers.owns(token)
    }

    /// Reader `token`'s socket has room: sends it more of its answer.
    pub(super) fn write_to(&mut self, token: Token, registry: &Registry) {
        self.readers
            .progress(token, registry, |_| super::answers::Reply::NeedMore);
    }

    /// Drops the readers past their deadline.
    pub(super) fn expire(&mut self, now: std::time::Instant, registry: &Registry) {
        self.readers.expire(now, registry);
    }

    pub(super) fn next_deadline(&self) -> Option<std::time::Instant> {
        self.readers.next_deadline()
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
        control.accept(self.poll.registry(), || self.status_json());
        self.control = Some(control);
    }

    /// What `forkwarden status --json` shows: the survey, one line of JSON.
    pub(super) fn status_json(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec(&self.survey()).unwrap_or_default();
        text.push(b'\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::answers::DEADLINE;
    use std::io::Read;
    use std::time::Instant;

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
        assert!(started.elapsed() < DEADLINE, "accept did not wait");
        assert_eq!(control.readers.len(), 1, "the rest waits for room");
        let reader = std::thread::spawn(move || {
            let mut received = Vec::new();
            client.read_to_end(&mut received).unwrap();
            received
        });
        let mut events = mio::Events::with_capacity(8);
        while control.readers.len() > 0 {
            poll.poll(&mut events, Some(DEADLINE)).unwrap();
            for event in &events {
                if control.is_reader(event.token()) {
                    control.write_to(event.token(), poll.registry());
                }
            }
        }
        assert_eq!(reader.join().unwrap(), answer);
        // A reader that never reads is dropped at its deadline.
        let _stuck = std::os::unix::net::UnixStream::connect(&path).unwrap();
        control.accept(poll.registry(), || answer.clone());
        assert_eq!(control.readers.len(), 1);
        control.expire(Instant::now() + DEADLINE, poll.registry());
        assert_eq!(control.readers.len(), 0);
    }
}
