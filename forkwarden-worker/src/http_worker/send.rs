//! Sending a response on a client connection: its head, then its body as its framing says
//! (a length, chunks, or until the connection closes), the parts of a streamed body as the
//! application produces them, files by sendfile.
//!
//! The socket is non-blocking: on a client that reads slowly the worker waits for room, at
//! most `http_socket_timeout` without progress, beating its heartbeat meanwhile.

use std::io::{self, IoSlice, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::context::BEAT_INTERVAL;
use crate::http::Framing;
use crate::scoreboard::WorkerRow;

/// Bytes handed to sendfile at a time, so that the heartbeat keeps beating on a large file.
const FILE_SLICE: usize = 1 << 20;

/// One response on its way to the client.
pub(super) struct Sending<'a> {
    stream: &'a TcpStream,
    timeout: Option<Duration>,
    row: &'a WorkerRow,
    framing: Framing,
    /// The head, until it goes out with the first bytes of the body (one write for both).
    head: Vec<u8>,
    /// Called once, just before the first byte leaves (nothing can be answered instead after).
    on_first_write: Option<&'a dyn Fn()>,
    /// Bytes of the body sent (chunk framing not counted).
    sent: u64,
}

impl<'a> Sending<'a> {
    pub(super) fn new(
        stream: &'a TcpStream,
        timeout: Option<Duration>,
        row: &'a WorkerRow,
        head: Vec<u8>,
        framing: Framing,
    ) -> Self {
        Self {
            stream,
            timeout,
            row,
            framing,
            head,
            on_first_write: None,
            sent: 0,
        }
    }

    /// Calls `first` just before the first byte goes out.
    pub(super) fn before_first_write(mut self, first: &'a dyn Fn()) -> Self {
        self.on_first_write = Some(first);
        self
    }

    /// How the body is delimited.
    pub(super) fn framing(&self) -> Framing {
        self.framing
    }

    /// Bytes of the body sent so far.
    pub(super) fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends `data` as the body's next bytes, now (with the head, if it has not gone yet).
    /// Bytes past the length the head stated are not sent.
    pub(super) fn bytes(&mut self, data: &[u8]) -> io::Result<()> {
        let data = match self.framing {
            Framing::Empty => &[][..],
            Framing::Length(length) => {
                let room = length.saturating_sub(self.sent);
                &data[..data.len().min(usize::try_from(room).unwrap_or(usize::MAX))]
            }
            Framing::Chunked | Framing::UntilClose => data,
        };
        if data.is_empty() {
            // An empty chunk would end a chunked body.
            return Ok(());
        }
        let size;
        let (prefix, suffix): (&[u8], &[u8]) = if self.framing == Framing::Chunked {
            size = format!("{:x}\r\n", data.len());
            (size.as_bytes(), b"\r\n")
        } else {
            (&[], &[])
        };
        let head = std::mem::take(&mut self.head);
        self.write(&mut [
            IoSlice::new(&head),
            IoSlice::new(prefix),
            IoSlice::new(data),
            IoSlice::new(suffix),
        ])?;
        self.sent += data.len() as u64;
        Ok(())
    }

    /// Sends `file` from `offset` to its end, at most `len` bytes, as the body's next bytes;
    /// the kernel copies them (sendfile).
    pub(super) fn file(
        &mut self,
        file: &std::fs::File,
        mut offset: u64,
        len: Option<u64>,
    ) -> io::Result<()> {
        let mut left = file.metadata()?.len().saturating_sub(offset);
        if let Some(len) = len {
            left = left.min(len);
        }
        if let Framing::Length(length) = self.framing {
            left = left.min(length.saturating_sub(self.sent));
        }
        if self.framing == Framing::Empty || left == 0 {
            return Ok(());
        }
        let chunked = self.framing == Framing::Chunked;
        let head = std::mem::take(&mut self.head);
        let prefix = if chunked {
            format!("{left:x}\r\n")
        } else {
            String::new()
        };
        self.write(&mut [IoSlice::new(&head), IoSlice::new(prefix.as_bytes())])?;
        let mut stalled_since = Instant::now();
        while left > 0 {
            let slice = usize::try_from(left).unwrap_or(usize::MAX).min(FILE_SLICE);
            match crate::sys::send_file(self.stream, file, &mut offset, slice) {
                // The file is shorter than it was: a chunk already announced cannot be
                // completed, nor a stated length.
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(sent) => {
                    left -= sent as u64;
                    self.sent += sent as u64;
                    stalled_since = Instant::now();
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.wait_for_room(stalled_since)?;
                }
                Err(error) => return Err(error),
            }
        }
        if chunked {
            self.write(&mut [IoSlice::new(b"\r\n")])?;
        }
        Ok(())
    }

    /// Ends the response; returns whether the connection can carry another one (not if the
    /// body fell short of the length its head stated, or ends with the connection).
    pub(super) fn end(mut self) -> io::Result<bool> {
        let head = std::mem::take(&mut self.head);
        let last: &[u8] = if self.framing == Framing::Chunked {
            b"0\r\n\r\n"
        } else {
            &[]
        };
        self.write(&mut [IoSlice::new(&head), IoSlice::new(last)])?;
        Ok(match self.framing {
            Framing::Empty | Framing::Chunked => true,
            Framing::Length(length) => self.sent == length,
            Framing::UntilClose => false,
        })
    }

    /// Writes all of `parts`, waiting for room when the client reads slowly.
    fn write(&mut self, mut parts: &mut [IoSlice<'_>]) -> io::Result<()> {
        IoSlice::advance_slices(&mut parts, 0);
        if parts.is_empty() {
            return Ok(());
        }
        if let Some(first) = self.on_first_write.take() {
            first();
        }
        let mut stalled_since = Instant::now();
        while !parts.is_empty() {
            match self.stream.write_vectored(parts) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    IoSlice::advance_slices(&mut parts, written);
                    stalled_since = Instant::now();
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.wait_for_room(stalled_since)?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Waits for room in the socket; `TimedOut` once it has made no progress since
    /// `stalled_since` for `http_socket_timeout`.
    fn wait_for_room(&self, stalled_since: Instant) -> io::Result<()> {
        let left = self
            .timeout
            .map(|timeout| timeout.saturating_sub(stalled_since.elapsed()));
        if left.is_some_and(|left| left.is_zero()) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.row.beat();
        wait_writable(
            self.stream.as_fd(),
            left.map_or(BEAT_INTERVAL, |left| left.min(BEAT_INTERVAL)),
        );
        Ok(())
    }
}

/// Waits until `fd` can take more bytes, or `wait` passes. Deferred signals stay blocked:
/// a stop request does not cut a response short.
fn wait_writable(fd: BorrowedFd<'_>, wait: Duration) {
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    let _ = nix::poll::poll(&mut fds, timeout);
}
