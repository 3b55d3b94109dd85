//! The listening socket, bound by the master before any worker is forked.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

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
