//! HTTP/1.x: requests (read by [`parse::RequestReader`]) and the bytes of responses.
//!
//! One request at a time per connection, as in Odoo's workers. Every way a client can be
//! wrong ends in a clear status code rather than an error in the worker: malformed 400,
//! too slow 408, body too large 413, head too large 431, unsupported framing 501. The
//! worker's event loop (`worker/http.rs`) owns the sockets.

pub mod parse;

use std::cell::RefCell;
use std::io;
use std::net::TcpListener;
use std::time::{Duration, SystemTime};

pub use parse::{Reject, RequestReader};

/// Response bodies up to this size go out in one write with their head.
const SMALL_BODY: usize = 16 * 1024;

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
    /// The client's address, as the connection says (not a proxy's header).
    peer: Option<std::net::SocketAddr>,
    /// The server's address the client connected to.
    local: Option<std::net::SocketAddr>,
}

impl Request {
    /// The address of the client on the other end of the connection (a proxy's, behind
    /// one); None if the worker could not tell.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.peer
    }

    /// Whether this is HTTP/1.0 (rather than 1.1).
    pub fn is_http10(&self) -> bool {
        self.minor_version == 0
    }

    /// The server's address this request came in on.
    pub fn local(&self) -> Option<std::net::SocketAddr> {
        self.local
    }

    pub(crate) fn set_addresses(
        &mut self,
        peer: Option<std::net::SocketAddr>,
        local: Option<std::net::SocketAddr>,
    ) {
        self.peer = peer;
        self.local = local;
    }

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

/// Sets on a listening socket the options every connection accepted from it needs: no
/// Nagle delay, and the kernel holding back connections until their first bytes arrive
/// (TCP_DEFER_ACCEPT, up to `socket_timeout`), so that a client that connects and says
/// nothing never reaches a worker. Linux copies TCP_NODELAY to every socket accepted from
/// it, so no connection pays a system call for it.
pub fn configure_listener(
    listener: &TcpListener,
    socket_timeout: Option<Duration>,
) -> io::Result<()> {
    socket2::SockRef::from(listener).set_tcp_nodelay(true)?;
    let defer = socket_timeout.map_or(2, |timeout| timeout.as_secs().max(1));
    crate::sys::defer_accept(listener, u32::try_from(defer).unwrap_or(u32::MAX))
}

/// The bytes of `response` to `request` (None: a request that could not be read):
/// the head, and the body to send after it (empty for HEAD and bodiless statuses); a small
/// body is appended to the head, so that one write sends both. `keep_alive` says whether the
/// connection stays open after it.
pub fn response_bytes<'r>(
    request: Option<&Request>,
    response: &'r Response,
    keep_alive: bool,
) -> (Vec<u8>, &'r [u8]) {
    let head_only = request.is_some_and(|request| request.method.eq_ignore_ascii_case("HEAD"));
    let minor_version = request.map_or(1, |request| request.minor_version);
    let connection = match (keep_alive, minor_version) {
        (false, _) => Some("close"),
        (true, 0) => Some("keep-alive"),
        (true, _) => None,
    };
    let status = response.status;
    let mut head = String::with_capacity(256);
    head.push_str(&format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)));
    head.push_str("Server: forkwarden\r\nDate: ");
    head.push_str(&http_date());
    head.push_str("\r\n");
    let has_body = !(status < 200 || status == 204 || status == 304);
    if has_body {
        head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    }
    for (name, value) in &response.headers {
        let reserved = [
            "content-length",
            "transfer-encoding",
            "connection",
            "date",
            "server",
        ]
        .iter()
        .any(|reserved| name.eq_ignore_ascii_case(reserved));
        if !reserved {
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
    let mut head = head.into_bytes();
    if body.len() <= SMALL_BODY {
        head.extend_from_slice(body);
        return (head, &[]);
    }
    (head, body)
}

/// The response to a request that could not be read.
pub fn rejection(reject: Reject) -> Response {
    Response::text(reject.status, format!("{}\n", reject.reason))
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

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

    fn as_text((head, body): (Vec<u8>, &[u8])) -> String {
        let mut all = head;
        all.extend_from_slice(body);
        String::from_utf8(all).unwrap()
    }

    fn request(input: &[u8]) -> Request {
        let mut buffer = input.to_vec();
        RequestReader::new(None).next(&mut buffer).unwrap().unwrap()
    }

    #[test]
    fn responses_carry_framing_and_head_has_no_body() {
        let head = request(b"HEAD / HTTP/1.0\r\n\r\n");
        assert!(!head.wants_keep_alive());
        let response = Response::text(200, "hello\n").header("Content-Length", "999");
        let text = as_text(response_bytes(Some(&head), &response, false));
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 6\r\n"), "{text}");
        assert!(!text.contains("999"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        let get = request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(get.wants_keep_alive());
        let text = as_text(response_bytes(Some(&get), &response, true));
        assert!(text.ends_with("\r\n\r\nhello\n"), "{text}");
        assert!(!text.contains("Connection:"), "{text}");
    }

    #[test]
    fn large_bodies_follow_their_head() {
        let response = Response::new(200, vec![b'x'; SMALL_BODY + 1]);
        let (head, body) = response_bytes(None, &response, false);
        assert!(head.ends_with(b"\r\n\r\n"));
        assert_eq!(body.len(), SMALL_BODY + 1);
    }

    #[test]
    fn absolute_form_targets_become_paths() {
        assert_eq!(origin_form("http://example.com/a?b"), "/a?b");
        assert_eq!(origin_form("http://example.com"), "/");
        assert_eq!(origin_form("/plain"), "/plain");
    }
}
