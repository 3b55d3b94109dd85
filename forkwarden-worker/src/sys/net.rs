//! Sockets beyond what std offers: accepting straight into non-blocking mode, and handing a
//! client connection from one worker to another.
//!
//! The hand-off channel is a SEQPACKET socket pair the master creates and every HTTP worker
//! inherits: a worker sends a connection's descriptor (SCM_RIGHTS) on one end, and whichever
//! idle worker reads the other end first takes it over. The master holds both ends and never
//! reads them, so a connection in the channel outlives any worker.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};

use super::handoff_alarm::HANDOFF_AFTER;

/// Accepts a connection from `listener` already non-blocking and close-on-exec (accept4(2),
/// one system call instead of two), with the peer's address as accept4 reports it (no
/// getpeername). `Ok(None)`: none is waiting.
pub fn accept_nonblocking(
    listener: &TcpListener,
) -> io::Result<Option<(TcpStream, Option<SocketAddr>)>> {
    loop {
        match socket2::SockRef::from(listener).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) {
            Ok((socket, peer)) => return Ok(Some((TcpStream::from(socket), peer.as_socket()))),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(error) => return Err(error),
        }
    }
}

/// Sends up to `count` bytes of `file` from `offset` (which it moves past them; the file's
/// own offset stays) to `socket`, without copying them through this process (sendfile(2)).
/// Returns how many went out: 0 at the file's end; `WouldBlock` when the socket is full.
pub fn send_file(
    socket: &TcpStream,
    file: &std::fs::File,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    let mut position = libc::off_t::try_from(*offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    loop {
        match nix::sys::sendfile::sendfile(socket, file, Some(&mut position), count) {
            Ok(sent) => {
                *offset = u64::try_from(position).unwrap_or(*offset);
                return Ok(sent);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Makes `listener` hold back each new connection until its first bytes arrive, for up to
/// `seconds` (TCP_DEFER_ACCEPT): a client that connects and says nothing never wakes a worker.
pub fn defer_accept(listener: &TcpListener, seconds: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(seconds).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` is a live c_int and its size is passed with it; setsockopt reads it
    // only during the call.
    let result = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    nix::errno::Errno::result(result)
        .map(drop)
        .map_err(Into::into)
}

/// The two ends of the hand-off channel: connections are sent on the first, received on the
/// second. Both are non-blocking and close-on-exec.
pub fn handoff_channel() -> io::Result<(OwnedFd, OwnedFd)> {
    let (send, receive) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )?;
    // Only one direction is used: the receiving end never sends, the sending end never reads.
    socket::shutdown(receive.as_raw_fd(), socket::Shutdown::Write)?;
    socket::shutdown(send.as_raw_fd(), socket::Shutdown::Read)?;
    Ok((send, receive))
}

/// The byte that goes with a connection whose last request ran long (else `c`).
const RAN_LONG: u8 = b'l';

/// A connection taken from the hand-off channel.
pub struct Handed {
    pub stream: TcpStream,
    /// How long its last request took, to the millisecond, as its sender said (zero: none
    /// said; [`HANDOFF_AFTER`] from a sender that only said it ran long).
    pub took: Duration,
}

/// Sends `connection` on the hand-off channel `to`, saying how long its last request
/// `took`. Fails with `WouldBlock` when the channel is full: the caller keeps it.
pub fn send_connection(
    to: BorrowedFd<'_>,
    connection: BorrowedFd<'_>,
    took: Duration,
) -> io::Result<()> {
    // A message that carries descriptors must carry data too: a byte that says whether the
    // last request ran long (past HANDOFF_AFTER; all a worker of an earlier version reads: a
    // sequenced packet cut short loses its tail, nothing else), then its length in
    // milliseconds.
    let mut payload = [0u8; 5];
    payload[0] = if took >= HANDOFF_AFTER {
        RAN_LONG
    } else {
        b'c'
    };
    let millis = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
    payload[1..].copy_from_slice(&millis.to_le_bytes());
    send_with_descriptors(to, &payload, &[connection])
}

/// Takes a connection from the hand-off channel `from`, if one is waiting.
pub fn receive_connection(from: BorrowedFd<'_>) -> io::Result<Option<Handed>> {
    let mut byte = [0u8; 5];
    let mut payload = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (received, length) = loop {
        match socket::recvmsg::<()>(
            from.as_raw_fd(),
            &mut payload,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => {
                let fds: Vec<RawFd> = message
                    .cmsgs()
                    .map_err(io::Error::from)?
                    .filter_map(|cmsg| match cmsg {
                        ControlMessageOwned::ScmRights(fds) => Some(fds),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                break (fds, message.bytes);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(errno) => return Err(errno.into()),
        }
    };
    // SAFETY: descriptors received with SCM_RIGHTS are new entries in our table, owned by
    // no one else; each is wrapped exactly once.
    let mut owned = received
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let connection = owned.next();
    // Never more than one is sent; any other is dropped (closed) here.
    drop(owned);
    let Some(connection) = connection else {
        return Ok(None);
    };
    let stream = TcpStream::from(connection);
    stream.set_nonblocking(true)?;
    // From a sender of an earlier version (or the hand-off alarm): one byte, no length.
    let took = match byte {
        [_, a, b, c, d] if length == byte.len() => {
            Duration::from_millis(u64::from(u32::from_le_bytes([a, b, c, d])))
        }
        [RAN_LONG, ..] => HANDOFF_AFTER,
        _ => Duration::ZERO,
    };
    Ok(Some(Handed { stream, took }))
}

/// The channel between the master and a preload template (`[app] preload = true`): a
/// SEQPACKET socket pair, one message per fork request, each carrying descriptors. Returns
/// (the master's end, non-blocking; the template's end, blocking, as a program expects).
/// Both are close-on-exec; the template's is put on descriptor 4 when it is started.
pub fn template_channel() -> io::Result<(OwnedFd, OwnedFd)> {
    let (master, template) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_GETFL,
    )?);
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(flags | nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((master, template))
}

/// Sends one message `text` with descriptors `fds` on `to` without waiting (`WouldBlock`
/// when the peer's queue is full, `BrokenPipe` when it is gone).
pub fn send_with_descriptors(
    to: BorrowedFd<'_>,
    text: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let payload = [IoSlice::new(text)];
    socket::sendmsg::<()>(
        to.as_raw_fd(),
        &payload,
        &rights,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// The socket cron workers ask a preload template for `call` jobs on: SEQPACKET, bound at
/// `path` (in the master's private directory) and listening; close-on-exec, blocking (the
/// template accepts from it).
pub fn calls_listener(path: &std::path::Path) -> io::Result<OwnedFd> {
    let socket = seqpacket_socket()?;
    socket::bind(socket.as_raw_fd(), &socket::UnixAddr::new(path)?)?;
    socket::listen(&socket, socket::Backlog::new(64)?)?;
    Ok(socket)
}

/// A connection to the `call` socket at `path` (blocking, close-on-exec).
pub fn connect_calls(path: &std::path::Path) -> io::Result<OwnedFd> {
    let socket = seqpacket_socket()?;
    socket::connect(socket.as_raw_fd(), &socket::UnixAddr::new(path)?)?;
    Ok(socket)
}

/// A new Unix SEQPACKET socket, blocking and close-on-exec.
fn seqpacket_socket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// Reads one message from `from` (SEQPACKET) without waiting: `Ok(None)` when none is
/// waiting, an empty string at the end of the connection.
pub fn receive_message(from: BorrowedFd<'_>) -> io::Result<Option<String>> {
    let mut buffer = [0u8; 1024];
    match socket::recv(from.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT) {
        Ok(read) => Ok(Some(String::from_utf8_lossy(&buffer[..read]).into_owned())),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_connection_crosses_the_channel_and_still_works() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let accepted = loop {
            if let Some((stream, peer)) = accept_nonblocking(&listener).unwrap() {
                assert_eq!(peer, Some(client.local_addr().unwrap()));
                break stream;
            }
        };
        let (send, receive) = handoff_channel().unwrap();
        assert!(receive_connection(receive.as_fd()).unwrap().is_none());
        send_connection(send.as_fd(), accepted.as_fd(), Duration::from_millis(1250)).unwrap();
        drop(accepted);
        let handed = receive_connection(receive.as_fd()).unwrap().unwrap();
        assert_eq!(handed.took, Duration::from_millis(1250));
        let mut taken = handed.stream;
        client.write_all(b"ping").unwrap();
        taken.set_nonblocking(false).unwrap();
        let mut word = [0u8; 4];
        taken.read_exact(&mut word).unwrap();
        assert_eq!(&word, b"ping");
        // A worker of an earlier version says only whether the request ran long.
        for (said, took) in [(b"l", HANDOFF_AFTER), (b"c", Duration::ZERO)] {
            send_with_descriptors(send.as_fd(), said, &[taken.as_fd()]).unwrap();
            let handed = receive_connection(receive.as_fd()).unwrap().unwrap();
            assert_eq!(handed.took, took);
        }
    }
}
