//! How programs tell the master about themselves (a built-in worker rings the master's
//! doorbell instead: see `forkwarden_worker::doorbell`).
//!
//! A program run under `[app]` speaks systemd's notification protocol instead (`READY=1`,
//! sd_notify) on a datagram socket whose address it gets as `NOTIFY_SOCKET`. The kernel stamps
//! every datagram with the sender's pid (SO_PASSCRED), so a worker cannot be mistaken for
//! another. The socket is a file in a private directory (mode 0700, owned by whoever the
//! programs run as), not an abstract address that any local user could fill up.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, sockopt};
use nix::unistd::Pid;

/// Largest notification read; sd_notify messages are a few short `KEY=VALUE` lines.
const MAX_MESSAGE: usize = 4096;

/// Variables by which a service manager (systemd) talks to the process it started. They are
/// meant for the master; no worker, program or cron job inherits them.
pub const SERVICE_MANAGER_VARIABLES: [&str; 6] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
];

/// The service manager that started the master (systemd with `Type=notify`), told when the
/// server is ready and when it stops.
pub struct ServiceManager {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl ServiceManager {
    /// The one named by `NOTIFY_SOCKET`, if any (a leading `@` is the abstract namespace).
    pub fn from_environment() -> Option<Self> {
        let target = std::env::var("NOTIFY_SOCKET").ok()?;
        let address = match target.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
            None => SocketAddr::from_pathname(&target).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        socket.set_nonblocking(true).ok()?;
        Some(Self { socket, address })
    }

    /// Sends `message` (`READY=1`, `STOPPING=1`, ...); a lost message only costs a log line.
    pub fn send(&self, message: &str) {
        if let Err(error) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            tracing::warn!("cannot notify the service manager ({message:?}): {error}");
        }
    }
}

/// The master's receiving end for programs' sd_notify messages, registered in its poll loop.
pub struct NotifyReceiver {
    socket: mio::net::UnixDatagram,
    /// The socket file: the `NOTIFY_SOCKET` value for programs.
    path: PathBuf,
}

/// One message from one worker.
#[derive(Debug, PartialEq, Eq)]
pub struct Notification {
    pub pid: Pid,
    /// The sender's user id, as the kernel stamped it (None without credentials).
    pub uid: Option<u32>,
    pub text: String,
}

impl Notification {
    /// The value of `key` in the message, as in `READY=1`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|line| {
            line.split_once('=')
                .filter(|(name, _)| *name == key)
                .map(|(_, value)| value)
        })
    }
}

impl NotifyReceiver {
    /// Binds the socket as the file `notify` in `dir`, which must be private to the master
    /// (and the user its programs run as).
    pub fn bind(dir: &Path) -> io::Result<Self> {
        let path = dir.join("notify");
        let receiver = UnixDatagram::bind(&path)?;
        socket::setsockopt(&receiver, sockopt::PassCred, &true).map_err(io::Error::from)?;
        receiver.set_nonblocking(true)?;
        Ok(Self {
            socket: mio::net::UnixDatagram::from_std(receiver),
            path,
        })
    }

    /// Binds the socket at the abstract address `name` (no file to remove: it goes with
    /// the socket); `NOTIFY_SOCKET` is then `@name`. Anyone on the host can send to it:
    /// the receiver decides whom to believe by the sender's credentials.
    pub fn bind_abstract(name: &str) -> io::Result<Self> {
        let address = SocketAddr::from_abstract_name(name.as_bytes())?;
        let receiver = UnixDatagram::bind_addr(&address)?;
        socket::setsockopt(&receiver, sockopt::PassCred, &true).map_err(io::Error::from)?;
        receiver.set_nonblocking(true)?;
        Ok(Self {
            socket: mio::net::UnixDatagram::from_std(receiver),
            path: PathBuf::from(format!("@{name}")),
        })
    }

    /// The descriptor to wait on.
    pub fn descriptor(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.socket.as_fd()
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket to register with the poll loop.
    pub fn source(&mut self) -> &mut mio::net::UnixDatagram {
        &mut self.socket
    }

    /// The next pending notification, if any (never blocks).
    pub fn recv(&self) -> io::Result<Option<Notification>> {
        let mut buffer = [0u8; MAX_MESSAGE];
        let mut control = nix::cmsg_space!(socket::UnixCredentials);
        let (length, sender) = {
            let mut iov = [IoSliceMut::new(&mut buffer)];
            let message = match socket::recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(message) => message,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(errno) => return Err(errno.into()),
            };
            let mut sender = None;
            for control in message.cmsgs().into_iter().flatten() {
                match control {
                    ControlMessageOwned::ScmCredentials(credentials) => {
                        sender = Some((Pid::from_raw(credentials.pid()), credentials.uid()));
                    }
                    // Descriptors nobody asked for (the buffer has room for credentials
                    // only, so the kernel drops them; should one get through): closed, so
                    // that no sender can fill the master's descriptor table.
                    ControlMessageOwned::ScmRights(descriptors) => {
                        for descriptor in descriptors {
                            let _ = nix::unistd::close(descriptor);
                        }
                    }
                    _ => {}
                }
            }
            (message.bytes, sender)
        };
        let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
        // Without credentials (never expected with SO_PASSCRED) the sender is unknown:
        // pid 0 matches no worker, so the message is ignored.
        let pid = sender.map_or(Pid::from_raw(0), |(pid, _)| pid);
        Ok(Some(Notification {
            pid,
            uid: sender.map(|(_, uid)| uid),
            text,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_reaches_the_receiver_through_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = NotifyReceiver::bind(dir.path()).unwrap();
        assert_eq!(receiver.recv().unwrap(), None);
        let program = UnixDatagram::unbound().unwrap();
        program
            .send_to(b"READY=1\nSTATUS=serving", receiver.path())
            .unwrap();
        let message = receiver.recv().unwrap().unwrap();
        assert_eq!(message.pid, nix::unistd::getpid());
        assert_eq!(message.get("READY"), Some("1"));
        assert_eq!(message.get("STATUS"), Some("serving"));
        assert_eq!(message.get("WATCHDOG"), None);
        assert_eq!(message.uid, Some(nix::unistd::getuid().as_raw()));
    }

    #[test]
    fn an_abstract_receiver_leaves_no_file() {
        let name = format!("forkwarden-test/{}", std::process::id());
        let receiver = NotifyReceiver::bind_abstract(&name).unwrap();
        assert_eq!(receiver.path(), Path::new(&format!("@{name}")));
        let sender = UnixDatagram::unbound().unwrap();
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        sender.send_to_addr(b"PROGRESS=1/2", &address).unwrap();
        let message = receiver.recv().unwrap().unwrap();
        assert_eq!(message.get("PROGRESS"), Some("1/2"));
    }
}
