//! Workers tell the master about themselves over a datagram socket, in the sd_notify text
//! format (`READY=1`), and the kernel stamps every datagram with the sender's pid
//! (SO_PASSCRED), so a worker cannot be mistaken for another.
//!
//! This is systemd's notification protocol: the socket has an abstract address, given to
//! programs the master runs as `NOTIFY_SOCKET=@...`, so those that already speak it need no
//! change. Anyone on the host can send to an abstract address; the master only acts on
//! messages whose sender pid (set by the kernel, not by the sender) is one of its workers.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

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

/// The sending end, inherited by every worker.
pub struct Notifier {
    socket: UnixDatagram,
}

/// The master's receiving end, registered in its poll loop.
pub struct NotifyReceiver {
    socket: mio::net::UnixDatagram,
    /// `@forkwarden/...`: the `NOTIFY_SOCKET` value for programs.
    address: String,
}

/// One message from one worker.
#[derive(Debug, PartialEq, Eq)]
pub struct Notification {
    pub pid: Pid,
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

/// The master's socket, bound to a fresh abstract address, and a sender connected to it that
/// forked workers inherit. Programs the master executes open their own sender.
pub fn channel() -> io::Result<(Notifier, NotifyReceiver)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let name = format!("forkwarden/{}/{nanos}", std::process::id());
    let address = SocketAddr::from_abstract_name(name.as_bytes())?;
    let receiver = UnixDatagram::bind_addr(&address)?;
    socket::setsockopt(&receiver, sockopt::PassCred, &true).map_err(io::Error::from)?;
    let sender = UnixDatagram::unbound()?;
    sender.connect_addr(&address)?;
    // A worker must never block on a full queue; losing a notification is better.
    sender.set_nonblocking(true)?;
    receiver.set_nonblocking(true)?;
    Ok((
        Notifier { socket: sender },
        NotifyReceiver {
            socket: mio::net::UnixDatagram::from_std(receiver),
            address: format!("@{name}"),
        },
    ))
}

impl Notifier {
    /// Sends `message` (e.g. `READY=1`).
    pub fn send(&self, message: &str) -> io::Result<()> {
        self.socket.send(message.as_bytes()).map(drop)
    }
}

impl NotifyReceiver {
    /// The socket's address for `NOTIFY_SOCKET` (`@` marks the abstract namespace).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The socket to register with the poll loop.
    pub fn source(&mut self) -> &mut mio::net::UnixDatagram {
        &mut self.socket
    }

    /// The next pending notification, if any (never blocks).
    pub fn recv(&self) -> io::Result<Option<Notification>> {
        let mut buffer = [0u8; MAX_MESSAGE];
        let mut control = nix::cmsg_space!(socket::UnixCredentials);
        let (length, pid) = {
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
            let pid = message.cmsgs().ok().and_then(|mut messages| {
                messages.find_map(|control| match control {
                    ControlMessageOwned::ScmCredentials(credentials) => {
                        Some(Pid::from_raw(credentials.pid()))
                    }
                    _ => None,
                })
            });
            (message.bytes, pid)
        };
        let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
        // Without credentials (never expected with SO_PASSCRED) the sender is unknown:
        // pid 0 matches no worker, so the message is ignored.
        let pid = pid.unwrap_or(Pid::from_raw(0));
        Ok(Some(Notification { pid, text }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_reaches_the_receiver_through_its_address() {
        let (_, receiver) = channel().unwrap();
        let name = receiver.address().strip_prefix('@').unwrap();
        let own = UnixDatagram::unbound().unwrap();
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        own.send_to_addr(b"READY=1", &address).unwrap();
        let message = receiver.recv().unwrap().unwrap();
        assert_eq!(
            (message.pid, message.get("READY")),
            (nix::unistd::getpid(), Some("1"))
        );
    }

    #[test]
    fn the_receiver_learns_the_senders_pid() {
        let (sender, receiver) = channel().unwrap();
        assert_eq!(receiver.recv().unwrap(), None);
        sender.send("READY=1\nSTATUS=serving").unwrap();
        let message = receiver.recv().unwrap().unwrap();
        assert_eq!(message.pid, nix::unistd::getpid());
        assert_eq!(message.get("READY"), Some("1"));
        assert_eq!(message.get("STATUS"), Some("serving"));
        assert_eq!(message.get("WATCHDOG"), None);
    }
}
