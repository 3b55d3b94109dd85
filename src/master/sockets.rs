//! The sockets the master binds for its workers and never reads: the HTTP listening
//! socket, companion programs' listening sockets, and the channel HTTP workers hand client
//! connections over on. One part owns them, so that binding, rebinding after a reload and
//! closing at a stop happen in one place.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::info;

use forkwarden_worker::context::HandoffChannel;

pub struct Sockets {
    /// The HTTP workers' listening socket (None: no HTTP worker wanted, or closed at stop).
    http: Option<TcpListener>,
    /// The sockets of companion programs that listen (`[[program]]` with `listen`), with
    /// the address each was bound for.
    programs: BTreeMap<&'static str, (SocketAddr, TcpListener)>,
    /// Where HTTP workers pass client connections to one another; never read here.
    handoff: HandoffChannel,
}

impl Sockets {
    /// `http`: the HTTP socket if it was bound at start.
    pub fn new(http: Option<TcpListener>) -> io::Result<Self> {
        Ok(Self {
            http,
            programs: BTreeMap::new(),
            handoff: HandoffChannel::new()?,
        })
    }

    pub fn http(&self) -> Option<&TcpListener> {
        self.http.as_ref()
    }

    /// The HTTP socket, bound by `bind` if there is none yet (a scale-down to no HTTP
    /// worker closed it); true if it was bound now.
    pub fn http_or_bind(
        &mut self,
        bind: impl FnOnce() -> io::Result<TcpListener>,
    ) -> io::Result<(&TcpListener, bool)> {
        let bound_now = self.http.is_none();
        if bound_now {
            self.http = Some(bind()?);
        }
        let listener = self
            .http
            .as_ref()
            .ok_or_else(|| io::Error::other("no listening socket"))?;
        Ok((listener, bound_now))
    }

    /// Binds the socket of companion program `name` on first use, and again when a reload
    /// gave it another address.
    pub fn bind_program(
        &mut self,
        name: &'static str,
        address: SocketAddr,
        backlog: u32,
    ) -> io::Result<()> {
        if self
            .programs
            .get(name)
            .is_some_and(|(bound, _)| *bound == address)
        {
            return Ok(());
        }
        let listener = bind(address, backlog)?;
        if let Ok(actual) = listener.local_addr() {
            info!(
                program = name,
                address = %actual,
                "{name} programs listen on {actual}"
            );
        }
        self.programs.insert(name, (address, listener));
        Ok(())
    }

    /// The socket of companion program `name`, if it listens.
    pub fn program(&self, name: &str) -> Option<&TcpListener> {
        self.programs.get(name).map(|(_, listener)| listener)
    }

    pub fn handoff(&self) -> &HandoffChannel {
        &self.handoff
    }

    /// Closes the master's copies of the listening sockets (each worker closes its own on
    /// exit): a stopping server takes no new connection.
    pub fn close_listeners(&mut self) {
        self.http = None;
        self.programs.clear();
    }
}

/// Binds `address` with SO_REUSEADDR (a restart need not wait for TIME_WAIT to clear) and
/// starts listening with `backlog`. The socket is close-on-exec and non-blocking: workers
/// wait for it in epoll and must not block in accept() when another worker won the race
/// (a program of `[app]` gets it blocking, as systemd hands sockets over: see `spawn`).
pub fn bind(address: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
