//! The control socket: `forkwarden status` connects, the master writes what it knows (one
//! JSON object: the server, each worker, the tallies; see survey.rs) and closes the
//! connection. It never waits on a reader (see answers.rs). The socket is owner-only
//! (0600), at `data_dir/forkwarden.sock`.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;

use nix::errno::Errno;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry};
use tracing::{debug, warn};

use super::Master;
use super::answers::Conversations;
use super::tokens::EventSource;
use crate::data_dir::DataDir;

/// The control socket's path for a config: `data_dir/forkwarden.sock`.
pub fn socket_path(config: &crate::config::Config) -> PathBuf {
    config.data_dir.join(NAME)
}

pub(super) struct ControlSocket {
    listener: UnixListener,
    /// data_dir, where the socket is: removed through it on exit.
    dir: OwnedFd,
    readers: Conversations<UnixStream>,
}

/// The socket's name in data_dir.
const NAME: &str = "forkwarden.sock";

impl ControlSocket {
    /// Listens in `data_dir`; None (and a warning) if another live master listens there, or
    /// the socket cannot be made: the server runs on without it.
    pub(super) fn bind(data_dir: &DataDir, registry: &Registry) -> Option<Self> {
        match Self::try_bind(data_dir, registry) {
            Ok(control) => control,
            Err(error) => {
                let path = data_dir.path().join(NAME);
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

    /// Everything through the open data_dir, never by its path, which the workers' user
    /// may control (see data_dir.rs).
    fn try_bind(data_dir: &DataDir, registry: &Registry) -> io::Result<Option<Self>> {
        let at = data_dir.entry(NAME);
        // Without waiting: a listener that never accepts must not hold the master up.
        match mio::net::UnixStream::connect(&at) {
            Err(error) if error.raw_os_error() != Some(libc::EAGAIN) => {}
            _ => {
                let path = data_dir.path().join(NAME);
                warn!(
                    path = %path.display(),
                    "another forkwarden master answers on {}: `forkwarden status` reaches that \
                     one, not this one (give each server its own data_dir)",
                    path.display()
                );
                return Ok(None);
            }
        }
        let dir = data_dir.descriptor().try_clone_to_owned()?;
        // Left behind by a master that was killed.
        match nix::unistd::unlinkat(&dir, NAME, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(errno.into()),
        }
        // Created 0600 at once (no chmod by path afterwards, which a link swapped in at the
        // name would redirect). The master is single-threaded: the umask is its own.
        let umask = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&at);
        nix::sys::stat::umask(umask);
        let mut listener = bound?;
        registry.register(
            &mut listener,
            EventSource::ControlListener.token(),
            Interest::READABLE,
        )?;
        Ok(Some(Self {
            listener,
            dir,
            readers: Conversations::new(EventSource::ControlReader),
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

    /// Reader `key`'s socket has room: sends it more of its answer.
    pub(super) fn write_to(&mut self, key: usize, registry: &Registry) {
        self.readers
            .progress(key, registry, |_| super::answers::Reply::NeedMore);
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
        let _ = nix::unistd::unlinkat(&self.dir, NAME, UnlinkatFlags::NoRemoveDir);
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
        let config = crate::config::Config {
            data_dir: dir.path().to_path_buf(),
            ..crate::config::Config::default()
        };
        let path = socket_path(&config);
        let data_dir = DataDir::open(&config.data_dir, None).unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let mut control = ControlSocket::bind(&data_dir, poll.registry()).expect("bound");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
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
                if let EventSource::ControlReader(key) = EventSource::of(event.token()) {
                    control.write_to(key, poll.registry());
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
