//! HTTP/1.x on one connection: reading requests (parsed by httparse) and writing responses.
//!
//! One request at a time per connection, as in Odoo's workers. Every way a client can be
//! wrong ends in a clear status code rather than an error in the worker: malformed 400,
//! too slow 408, body too large 413, head too large 431, unsupported framing 501.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime};

/// Largest request line plus headers.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 64;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// One header field of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// A complete request: head and body.
#[derive(Clone, Debug)]
pub struct Request {
    method: String,
    target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    minor_version: u8,
    headers: Vec<Header>,
    body: Vec<u8>,
}

impl Request {
    /// `GET`, `POST`, ...
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request target as sent: `/path?query`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The target's path, without the query.
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(&self.target, |(path, _)| path)
    }

    /// The target's query string, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// The first value of query parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value.as_slice())
    }

    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Whether the client asked to keep the connection open after this request.
    pub fn wants_keep_alive(&self) -> bool {
        let connection = self
            .header("connection")
            .map(|value| String::from_utf8_lossy(value).to_ascii_lowercase())
            .unwrap_or_default();
        let has = |token: &str| connection.split(',').any(|part| part.trim() == token);
        if self.minor_version == 0 {
            has("keep-alive")
        } else {
            !has("close")
        }
    }
}

/// A response from the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The worker leaves after sending it, and a fresh one takes its place.
    replace_worker: bool,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            replace_worker: false,
        }
    }

    /// Asks for the worker to leave once this response is sent, and a fresh one to take its
    /// place: the application's state is no longer to be trusted (it could not get memory,
    /// a cache is corrupt...). Log why: the master's line only says it was asked.
    pub fn and_replace_worker(mut self) -> Self {
        self.replace_worker = true;
        self
    }

    /// Whether the worker is to be replaced after this response.
    pub fn replaces_worker(&self) -> bool {
        self.replace_worker
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, body.into()).header("Content-Type", "text/plain; charset=utf-8")
    }

    /// Adds a header. Framing headers (`Content-Length`, `Transfer-Encoding`, `Connection`)
    /// are set by forkwarden and ignored here.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// Why no request could be read from a connection.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed, reset or stayed silent before sending a byte: close quietly.
    Closed,
    /// The request is unacceptable: answer with this status and reason, then close.
    Reject(u16, &'static str),
    /// The connection broke in the middle of a request: close.
    Io(io::Error),
}

/// How the body of a request is delimited.
enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// Longest single wait for a client's bytes: a worker waiting longer (a slow client, a
/// kept-alive connection) shows it is alive between two waits (see [`Connection::new`]).
pub const WAIT_SLICE: Duration = Duration::from_secs(1);

/// A client connection and the bytes read from it but not yet used.
pub struct Connection<'a> {
    stream: TcpStream,
    buffer: Vec<u8>,
    socket_timeout: Option<Duration>,
    max_body: Option<u64>,
    read_timeout: Option<Duration>,
    /// Called between two slices of a long wait.
    alive: &'a dyn Fn(),
}

/// Sets on a listening socket the options every connection accepted from it needs: no
/// Nagle delay, `socket_timeout` on each write, and the first slice of a read's wait (see
/// [`WAIT_SLICE`]). Linux copies them to every socket accepted from it, so no connection
/// pays a system call for them.
pub fn configure_listener(
    listener: &TcpListener,
    socket_timeout: Option<Duration>,
) -> io::Result<()> {
    let socket = socket2::SockRef::from(listener);
    socket.set_tcp_nodelay(true)?;
    socket.set_read_timeout(Some(read_slice(socket_timeout)))?;
    socket.set_write_timeout(socket_timeout)
}

/// The standing read timeout of a connection: one slice, or less when the whole socket
/// timeout is shorter.
fn read_slice(socket_timeout: Option<Duration>) -> Duration {
    socket_timeout.map_or(WAIT_SLICE, |timeout| timeout.min(WAIT_SLICE))
}

impl<'a> Connection<'a> {
    /// Wraps a stream accepted from a listener set up by [`configure_listener`] with the same
    /// `socket_timeout`, which bounds each read and write and the time to receive a request
    /// head; `max_body` bounds request bodies (None: unlimited). `alive` is called between
    /// the slices of a long wait for the client.
    pub fn new(
        stream: TcpStream,
        socket_timeout: Option<Duration>,
        max_body: Option<u64>,
        alive: &'a dyn Fn(),
    ) -> Self {
        Self {
            stream,
            buffer: Vec::with_capacity(READ_CHUNK),
            socket_timeout,
            max_body,
            read_timeout: Some(read_slice(socket_timeout)),
            alive,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Whether bytes of a next (pipelined) request are already buffered.
    pub fn has_buffered_input(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// Reads the next request.
    pub fn read_request(&mut self) -> Result<Request, ReadError> {
        let (mut request, framing) = self.read_head()?;
        if !matches!(framing, Framing::Empty) && self.expects_continue(&request)? {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(ReadError::Io)?;
        }
        request.body = match framing {
            Framing::Empty => Vec::new(),
            Framing::Length(length) => self.read_sized_body(length)?,
            Framing::Chunked => self.read_chunked_body()?,
        };
        Ok(request)
    }

    fn expects_continue(&self, request: &Request) -> Result<bool, ReadError> {
        match request.header("expect") {
            None => Ok(false),
            Some(value) if value.eq_ignore_ascii_case(b"100-continue") => {
                Ok(request.minor_version == 1 && self.buffer.is_empty())
            }
            Some(_) => Err(ReadError::Reject(417, "unsupported Expect header")),
        }
    }

    fn read_head(&mut self) -> Result<(Request, Framing), ReadError> {
        // The whole head must arrive within the socket timeout, not each piece of it:
        // otherwise a client sending a byte now and then could hold the worker forever.
        let deadline = self.socket_timeout.map(|timeout| Instant::now() + timeout);
        loop {
            if !self.buffer.is_empty()
                && let Some(parsed) = self.parse_head()?
            {
                return Ok(parsed);
            }
            if self.buffer.len() >= MAX_HEAD_BYTES {
                return Err(ReadError::Reject(431, "request header fields too large"));
            }
            let nothing_yet = self.buffer.is_empty();
            match self.fill(deadline) {
                Ok(0) if nothing_yet => return Err(ReadError::Closed),
                Ok(0) => {
                    return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(error) if is_timeout(&error) && nothing_yet => return Err(ReadError::Closed),
                Err(error) if is_timeout(&error) => {
                    return Err(ReadError::Reject(408, "request head not received in time"));
                }
                Err(error) if nothing_yet && is_disconnect(&error) => {
                    return Err(ReadError::Closed);
                }
                Err(error) => return Err(ReadError::Io(error)),
            }
        }
    }

    /// Parses a complete head from the buffer and consumes it; None if more bytes are needed.
    fn parse_head(&mut self) -> Result<Option<(Request, Framing)>, ReadError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut head = httparse::Request::new(&mut fields);
        let consumed = match head.parse(&self.buffer) {
            Ok(httparse::Status::Complete(consumed)) => consumed,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadError::Reject(431, "too many header fields"));
            }
            Err(_) => return Err(ReadError::Reject(400, "malformed request")),
        };
        let (Some(method), Some(target), Some(minor_version)) =
            (head.method, head.path, head.version)
        else {
            return Err(ReadError::Reject(400, "malformed request"));
        };
        let request = Request {
            method: method.to_string(),
            target: origin_form(target).to_string(),
            minor_version,
            headers: head
                .headers
                .iter()
                .map(|field| Header {
                    name: field.name.to_string(),
                    value: field.value.to_vec(),
                })
                .collect(),
            body: Vec::new(),
        };
        let framing = framing(&request)?;
        self.buffer.drain(..consumed);
        Ok(Some((request, framing)))
    }

    fn check_body_size(&self, length: u64) -> Result<(), ReadError> {
        match self.max_body {
            Some(max) if length > max => Err(ReadError::Reject(413, "request body too large")),
            _ => Ok(()),
        }
    }

    fn read_sized_body(&mut self, length: u64) -> Result<Vec<u8>, ReadError> {
        self.check_body_size(length)?;
        let length = usize::try_from(length)
            .map_err(|_| ReadError::Reject(413, "request body too large"))?;
        while self.buffer.len() < length {
            self.fill_body()?;
        }
        Ok(self.buffer.drain(..length).collect())
    }

    fn read_chunked_body(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let (line, size) = loop {
                match httparse::parse_chunk_size(&self.buffer) {
                    Ok(httparse::Status::Complete(parsed)) => break parsed,
                    Ok(httparse::Status::Partial) => self.fill_body()?,
                    Err(_) => return Err(ReadError::Reject(400, "malformed chunked body")),
                }
            };
            if size == 0 {
                self.buffer.drain(..line);
                return self.skip_trailers().map(|()| body);
            }
            self.check_body_size(body.len() as u64 + size)?;
            let size = usize::try_from(size)
                .map_err(|_| ReadError::Reject(413, "request body too large"))?;
            while self.buffer.len() < line + size + 2 {
                self.fill_body()?;
            }
            if &self.buffer[line + size..line + size + 2] != b"\r\n" {
                return Err(ReadError::Reject(400, "malformed chunked body"));
            }
            body.extend_from_slice(&self.buffer[line..line + size]);
            self.buffer.drain(..line + size + 2);
        }
    }

    /// Consumes the trailer section after the last chunk, up to the empty line.
    fn skip_trailers(&mut self) -> Result<(), ReadError> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\r\n") {
                self.buffer.drain(..end + 2);
                if end == 0 {
                    return Ok(());
                }
            } else if self.buffer.len() > MAX_HEAD_BYTES {
                return Err(ReadError::Reject(431, "trailer fields too large"));
            } else {
                self.fill_body()?;
            }
        }
    }

    fn fill_body(&mut self) -> Result<(), ReadError> {
        match self.fill(None) {
            Ok(0) => Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => Ok(()),
            Err(error) if is_timeout(&error) => {
                Err(ReadError::Reject(408, "request body not received in time"))
            }
            Err(error) => Err(ReadError::Io(error)),
        }
    }

    /// Reads once from the socket into the buffer, giving up at `deadline` (or after the
    /// socket timeout when there is none). The wait is cut into slices of at most
    /// [`WAIT_SLICE`], with `alive` called between two.
    fn fill(&mut self, deadline: Option<Instant>) -> io::Result<usize> {
        let deadline =
            deadline.or_else(|| self.socket_timeout.map(|timeout| Instant::now() + timeout));
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                return Err(io::ErrorKind::TimedOut.into());
            }
            // Most reads keep the standing slice (inherited from the listener): no system
            // call to set it; only the last slice before the deadline is shorter.
            let standing = read_slice(self.socket_timeout);
            let slice = Some(left.map_or(standing, |left| left.min(standing)));
            if slice != self.read_timeout {
                self.stream.set_read_timeout(slice)?;
                self.read_timeout = slice;
            }
            match self.stream.read(&mut chunk) {
                Ok(read) => {
                    self.buffer.extend_from_slice(&chunk[..read]);
                    return Ok(read);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if is_timeout(&error) => (self.alive)(),
                Err(error) => return Err(error),
            }
        }
    }

    /// Writes `response` to the request it answers; `keep_alive` says whether the
    /// connection stays open after it.
    pub fn write_response(
        &mut self,
        request: &Request,
        response: &Response,
        keep_alive: bool,
    ) -> io::Result<()> {
        let head_only = request.method.eq_ignore_ascii_case("HEAD");
        let connection = match (keep_alive, request.minor_version) {
            (false, _) => Some("close"),
            (true, 0) => Some("keep-alive"),
            (true, _) => None,
        };
        self.write(response, connection, head_only)
    }

    /// Answers a request that could not be read, and closes.
    pub fn write_error(&mut self, status: u16, reason: &str) -> io::Result<()> {
        self.write(
            &Response::text(status, format!("{reason}\n")),
            Some("close"),
            false,
        )
    }

    fn write(
        &mut self,
        response: &Response,
        connection: Option<&str>,
        head_only: bool,
    ) -> io::Result<()> {
        let mut head = String::with_capacity(256);
        let status = response.status;
        head.push_str(&format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)));
        head.push_str("Server: forkwarden\r\nDate: ");
        head.push_str(&http_date());
        head.push_str("\r\n");
        let has_body = !(status < 200 || status == 204 || status == 304);
        if has_body {
            head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
        }
        for (name, value) in &response.headers {
            let framing = [
                "content-length",
                "transfer-encoding",
                "connection",
                "date",
                "server",
            ]
            .iter()
            .any(|reserved| name.eq_ignore_ascii_case(reserved));
            if !framing {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        if let Some(connection) = connection {
            head.push_str(&format!("Connection: {connection}\r\n"));
        }
        head.push_str("\r\n");
        let body = if has_body && !head_only {
            response.body.as_slice()
        } else {
            &[]
        };
        if body.len() <= READ_CHUNK {
            let mut whole = head.into_bytes();
            whole.extend_from_slice(body);
            self.stream.write_all(&whole)
        } else {
            self.stream.write_all(head.as_bytes())?;
            self.stream.write_all(body)
        }
    }
}

/// The body framing a request declares, refusing the ambiguous combinations that enable
/// request smuggling.
fn framing(request: &Request) -> Result<Framing, ReadError> {
    let lengths: Vec<&[u8]> = request
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("content-length"))
        .map(|header| header.value.as_slice())
        .collect();
    if let Some(coding) = request.header("transfer-encoding") {
        if !lengths.is_empty() {
            return Err(ReadError::Reject(
                400,
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Err(ReadError::Reject(501, "unsupported Transfer-Encoding"));
        }
        return Ok(Framing::Chunked);
    }
    let Some(first) = lengths.first() else {
        return Ok(Framing::Empty);
    };
    if lengths.iter().any(|other| other != first) {
        return Err(ReadError::Reject(400, "conflicting Content-Length headers"));
    }
    let length = std::str::from_utf8(first)
        .ok()
        .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or(ReadError::Reject(400, "invalid Content-Length"))?;
    Ok(if length == 0 {
        Framing::Empty
    } else {
        Framing::Length(length)
    })
}

/// `/path?q` from an absolute-form target (`http://host/path?q`); other forms unchanged.
fn origin_form(target: &str) -> &str {
    let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    else {
        return target;
    };
    rest.find('/').map_or("/", |slash| &rest[slash..])
}

/// Whether an I/O error is a read or write timeout (SO_RCVTIMEO reports EAGAIN).
pub fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Whether an I/O error means the peer went away: not a server error.
pub fn is_disconnect(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// The current time as an HTTP date, formatted at most once a second per process.
fn http_date() -> String {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second || cache.1.is_empty() {
            *cache = (second, httpdate::fmt_http_date(now));
        }
        cache.1.clone()
    })
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose client side has sent `input` (and then, if `close`, closed).
    fn connection_with(
        input: &[u8],
        close: bool,
        max_body: Option<u64>,
    ) -> (Connection<'static>, TcpStream) {
        let timeout = Some(Duration::from_millis(300));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        configure_listener(&listener, timeout).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(input).unwrap();
        if close {
            client.shutdown(std::net::Shutdown::Write).unwrap();
        }
        (Connection::new(server, timeout, max_body, &|| {}), client)
    }

    fn status_of(result: Result<Request, ReadError>) -> u16 {
        match result {
            Err(ReadError::Reject(status, _)) => status,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn pipelined_requests_are_read_one_after_the_other() {
        let (mut connection, _client) = connection_with(
            b"GET /a?x=1&y=2 HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            false,
            None,
        );
        let first = connection.read_request().unwrap();
        assert_eq!((first.method(), first.path()), ("GET", "/a"));
        assert_eq!(first.query_param("y"), Some("2"));
        assert!(first.wants_keep_alive());
        let second = connection.read_request().unwrap();
        assert_eq!((second.method(), second.body()), ("POST", &b"hello"[..]));
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let (mut connection, _client) = connection_with(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            false,
            None,
        );
        assert_eq!(connection.read_request().unwrap().body(), b"hello world");
    }

    #[test]
    fn bad_requests_get_the_right_status() {
        let reject = |input: &[u8], max_body| {
            let (mut connection, _client) = connection_with(input, true, max_body);
            status_of(connection.read_request())
        };
        assert_eq!(reject(b"NOT HTTP AT ALL\r\n\r\n", None), 400);
        assert_eq!(
            reject(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", None),
            400
        );
        assert_eq!(
            reject(
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                None
            ),
            400
        );
        assert_eq!(
            reject(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n", Some(10)),
            413
        );
        assert_eq!(
            reject(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", None),
            501
        );
        let many: String = (0..100).map(|n| format!("X-{n}: v\r\n")).collect();
        assert_eq!(
            reject(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), None),
            431
        );
        let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(reject(huge.as_bytes(), None), 431);
    }

    #[test]
    fn a_silent_client_is_closed_and_a_slow_one_gets_408() {
        let (mut silent, _client) = connection_with(b"", false, None);
        assert!(matches!(silent.read_request(), Err(ReadError::Closed)));
        let (mut slow, _client) = connection_with(b"GET / HTTP/1.1\r\n", false, None);
        assert_eq!(status_of(slow.read_request()), 408);
    }

    #[test]
    fn responses_carry_framing_and_head_has_no_body() {
        let (mut connection, mut client) = connection_with(b"HEAD / HTTP/1.0\r\n\r\n", false, None);
        let request = connection.read_request().unwrap();
        assert!(!request.wants_keep_alive());
        let response = Response::text(200, "hello\n").header("Content-Length", "999");
        connection
            .write_response(&request, &response, false)
            .unwrap();
        drop(connection);
        let mut text = String::new();
        client.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 6\r\n"), "{text}");
        assert!(!text.contains("999"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn absolute_form_targets_become_paths() {
        assert_eq!(origin_form("http://example.com/a?b"), "/a?b");
        assert_eq!(origin_form("http://example.com"), "/");
        assert_eq!(origin_form("/plain"), "/plain");
    }
}
