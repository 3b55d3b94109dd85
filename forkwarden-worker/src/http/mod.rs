//! HTTP/1.x: requests (read by [`parse::RequestReader`]) and the bytes of responses.
//!
//! One request at a time per connection, as in Odoo's workers. Every way a client can be
//! wrong ends in a clear status code rather than an error in the worker: malformed 400,
//! too slow 408, body too large 413, head too large 431, unsupported framing 501. The
//! worker's event loop (`worker/http.rs`) owns the sockets.

pub mod body;
pub mod parse;

use std::cell::RefCell;
use std::io;
use std::net::TcpListener;
use std::time::{Duration, SystemTime};

pub use body::RequestBody;
pub use parse::{Reject, RequestReader};

/// One header field of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// A complete request: head and body.
#[derive(Debug)]
pub struct Request {
    method: String,
    target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    minor_version: u8,
    headers: Vec<Header>,
    body: RequestBody,
    /// The client's address, as the connection says (not a proxy's header).
    peer: Option<std::net::SocketAddr>,
    /// The server's address the client connected to.
    local: Option<std::net::SocketAddr>,
    /// What the proxy in front said of the original request, with `proxy_mode` on (boxed:
    /// most servers never have one).
    forwarded: Option<Box<Forwarded>>,
}

/// What a trusted proxy in front said about the original request (`proxy_mode`, Odoo's
/// option): the last value of each `X-Forwarded-*` header, the one the proxy next to us
/// wrote or appended (werkzeug's ProxyFix with one proxy, as Odoo's proxy_mode does). A
/// value that is not well formed is left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The client's address (`X-Forwarded-For`).
    pub client: Option<std::net::IpAddr>,
    /// `http` or `https` (`X-Forwarded-Proto`).
    pub scheme: Option<&'static str>,
    /// The host (and port) the client asked for (`X-Forwarded-Host`).
    pub host: Option<String>,
}

impl Forwarded {
    fn of(headers: &[Header]) -> Self {
        let last = |name: &str| -> Option<String> {
            let header = headers
                .iter()
                .rev()
                .find(|header| header.name.eq_ignore_ascii_case(name))?;
            let value = std::str::from_utf8(&header.value).ok()?;
            let last = value.rsplit(',').next()?.trim();
            (!last.is_empty()).then(|| last.to_string())
        };
        let client = last("x-forwarded-for").and_then(|value| {
            value
                .parse()
                .ok()
                .or_else(|| value.parse::<std::net::SocketAddr>().ok().map(|at| at.ip()))
        });
        let scheme = last("x-forwarded-proto").and_then(|value| {
            if value.eq_ignore_ascii_case("https") {
                Some("https")
            } else if value.eq_ignore_ascii_case("http") {
                Some("http")
            } else {
                None
            }
        });
        let host = last("x-forwarded-host").filter(|host| {
            host.len() <= 255
                && host
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b".-:[]_".contains(&byte))
        });
        Self {
            client,
            scheme,
            host,
        }
    }
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

    /// Takes the `X-Forwarded-*` headers as true (`proxy_mode`: a proxy in front sets them).
    pub(crate) fn trust_forwarded_headers(&mut self) {
        self.forwarded = Some(Box::new(Forwarded::of(&self.headers)));
    }

    /// What the proxy in front said of the original request, with `proxy_mode` on.
    pub fn forwarded(&self) -> Option<&Forwarded> {
        self.forwarded.as_deref()
    }

    /// The client's address: the one the proxy in front gives with `proxy_mode`, else the
    /// connection's.
    pub fn client_ip(&self) -> Option<std::net::IpAddr> {
        self.forwarded
            .as_ref()
            .and_then(|forwarded| forwarded.client)
            .or(self.peer.map(|peer| peer.ip()))
    }

    /// `https` when the proxy in front says so (`proxy_mode`), else `http`.
    pub fn scheme(&self) -> &'static str {
        self.forwarded
            .as_ref()
            .and_then(|forwarded| forwarded.scheme)
            .unwrap_or("http")
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

    /// The body, whole (in memory, or in a temporary file when large).
    pub fn body(&self) -> &RequestBody {
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
#[derive(Debug)]
pub struct Response {
    status: u16,
    /// Names and values; a value is bytes (ISO-8859-1 text from a WSGI application).
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
    /// The worker leaves after sending it, and a fresh one takes its place.
    replace_worker: bool,
}

/// What follows a response's head.
pub enum Body {
    /// All of it, known when the application returns.
    Bytes(Vec<u8>),
    /// Produced while it is sent: an application's generator, a file.
    Stream(Box<dyn BodyStream>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(bytes) => write!(formatter, "Bytes({} bytes)", bytes.len()),
            Self::Stream(_) => formatter.write_str("Stream"),
        }
    }
}

/// A response body produced while it is sent. The worker asks for each part once the one
/// before it is sent (nothing is held back waiting for the next), and calls `finish` once
/// at the end, whether the body went out whole or not.
pub trait BodyStream {
    /// The next part, None at the end. An error ends the response where it stands: the
    /// connection is closed, so the client sees a body cut short, not a complete one.
    fn next_part(&mut self) -> Result<Option<Part>, StreamError>;

    /// The response is over (WSGI's `close()`): sent whole, cut short or not sent at all.
    fn finish(&mut self) {}
}

/// A body of one part known in advance.
struct OnePart(Option<Part>);

impl BodyStream for OnePart {
    fn next_part(&mut self) -> Result<Option<Part>, StreamError> {
        Ok(self.0.take())
    }
}

/// A part of a streamed body.
pub enum Part {
    Bytes(Vec<u8>),
    /// A file's bytes from `offset` to its end (at most `len` of them): sent by the kernel
    /// (sendfile), never read into the worker; the file's own offset does not move.
    File {
        file: std::fs::File,
        offset: u64,
        len: Option<u64>,
    },
}

impl Part {
    /// How many bytes it holds, when known.
    pub fn known_len(&self) -> Option<u64> {
        match self {
            Part::Bytes(bytes) => Some(bytes.len() as u64),
            Part::File { len, .. } => *len,
        }
    }

    /// The regular file open on descriptor number `fd` (which stays its owner's), from
    /// `offset` to its end as it is now; None if `fd` is not a regular file (a pipe, a
    /// socket: read it instead).
    pub fn file_at(fd: std::os::fd::RawFd, offset: u64) -> io::Result<Option<Part>> {
        let file = std::fs::File::from(crate::sys::duplicate_descriptor(fd)?);
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Ok(None);
        }
        Ok(Some(Part::File {
            file,
            offset,
            len: Some(metadata.len().saturating_sub(offset)),
        }))
    }
}

/// Why a streamed body stopped before its end (the application's error, already logged or
/// to be logged by the worker).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StreamError(pub String);

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Bytes(body.into()),
            replace_worker: false,
        }
    }

    /// A response whose body is sent as `stream` produces it: with the application's
    /// `Content-Length` if it gave one, else chunked (to HTTP/1.0 clients: until the
    /// connection closes).
    pub fn streaming(status: u16, stream: Box<dyn BodyStream>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Stream(stream),
            replace_worker: false,
        }
    }

    /// A response whose body is `len` bytes of `file` from `offset`, sent by sendfile.
    pub fn file(status: u16, file: std::fs::File, offset: u64, len: u64) -> Self {
        let part = Part::File {
            file,
            offset,
            len: Some(len),
        };
        Self::streaming(status, Box::new(OnePart(Some(part))))
            .header("Content-Length", &len.to_string())
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

    /// Adds a header. Framing headers (`Transfer-Encoding`, `Connection`) are set by
    /// forkwarden and ignored here, and so is `Content-Length` but on a streamed body.
    /// A header that would break the response's framing (a name that is not a token, a
    /// value with CR, LF or NUL) is not sent.
    pub fn header(self, name: &str, value: &str) -> Self {
        self.header_bytes(name, value.as_bytes())
    }

    /// Adds a header whose value is bytes as they go on the wire (HTTP field values are
    /// ISO-8859-1, as a WSGI application gives them), under the same rules as
    /// [`header`](Self::header).
    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.headers.push((name.to_string(), value.to_vec()));
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn body(&self) -> &Body {
        &self.body
    }

    /// The body, for the worker to send.
    pub(crate) fn take_body(&mut self) -> Body {
        std::mem::replace(&mut self.body, Body::Bytes(Vec::new()))
    }

    /// The `Content-Length` the application gave, if valid.
    fn declared_length(&self) -> Option<u64> {
        self.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| std::str::from_utf8(value).ok()?.trim().parse().ok())
    }
}

/// How a response's body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body follows the head (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (a streamed body of unknown length to HTTP/1.0).
    UntilClose,
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

/// The head of `response` to `request` (None: a request that could not be read), and how
/// its body follows it. `keep_alive` says whether the connection may stay open after it;
/// the head says it will only if the framing allows (a body delimited by the connection's
/// end does not), and the framing returned says which.
pub fn response_head(
    request: Option<&Request>,
    response: &Response,
    keep_alive: bool,
) -> (Vec<u8>, Framing) {
    let head_only = request.is_some_and(|request| request.method.eq_ignore_ascii_case("HEAD"));
    let minor_version = request.map_or(1, |request| request.minor_version);
    let status = response.status;
    let has_body = !(status < 200 || status == 204 || status == 304);
    // The length the head states, and how the body is sent.
    let (stated, framing) = match (&response.body, response.declared_length()) {
        _ if !has_body => (None, Framing::Empty),
        (Body::Bytes(bytes), _) => (
            Some(bytes.len() as u64),
            Framing::Length(bytes.len() as u64),
        ),
        (Body::Stream(_), Some(length)) => (Some(length), Framing::Length(length)),
        (Body::Stream(_), None) if minor_version == 0 => (None, Framing::UntilClose),
        (Body::Stream(_), None) => (None, Framing::Chunked),
    };
    let framing = if head_only { Framing::Empty } else { framing };
    let keep_alive = keep_alive && framing != Framing::UntilClose;
    let connection = match (keep_alive, minor_version) {
        (false, _) => Some("close"),
        (true, 0) => Some("keep-alive"),
        (true, _) => None,
    };
    let mut head = Vec::with_capacity(256);
    let mut line = |text: &str| head.extend_from_slice(text.as_bytes());
    line(&format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)));
    line("Server: forkwarden\r\nDate: ");
    line(&http_date());
    line("\r\n");
    if let Some(length) = stated {
        line(&format!("Content-Length: {length}\r\n"));
    } else if has_body && matches!(response.body, Body::Stream(_)) && minor_version > 0 {
        // Stated for HEAD too: the same head as GET's.
        line("Transfer-Encoding: chunked\r\n");
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
        if !reserved && is_header_field(name, value) {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
    }
    let mut line = |text: &str| head.extend_from_slice(text.as_bytes());
    if let Some(connection) = connection {
        line(&format!("Connection: {connection}\r\n"));
    }
    line("\r\n");
    (head, framing)
}

/// Whether `name: value` can go in a head as it is: a token name, no CR, LF or NUL in the
/// value (which would end the field, or the head, where the application did not mean to).
pub fn is_header_field(name: &str, value: &[u8]) -> bool {
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    name_ok && !value.iter().any(|b| matches!(b, b'\r' | b'\n' | b'\0'))
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

    fn head_text(head: (Vec<u8>, Framing)) -> (String, Framing) {
        (String::from_utf8(head.0).unwrap(), head.1)
    }

    fn request(input: &[u8]) -> Request {
        let mut buffer = input.to_vec();
        RequestReader::new(None).next(&mut buffer).unwrap().unwrap()
    }

    #[test]
    fn forwarded_headers_count_only_when_trusted_and_well_formed() {
        let mut proxied = request(
            b"GET / HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 203.0.113.9, 198.51.100.7\r\n\
              X-Forwarded-Proto: HTTPS\r\nX-Forwarded-Host: shop.example:8443\r\n\r\n",
        );
        proxied.set_addresses("127.0.0.1:5000".parse().ok(), None);
        assert_eq!(
            (proxied.client_ip(), proxied.scheme()),
            ("127.0.0.1".parse().ok(), "http")
        );
        proxied.trust_forwarded_headers();
        // The last address: the one the proxy next to us appended.
        assert_eq!(proxied.client_ip(), "198.51.100.7".parse().ok());
        assert_eq!(proxied.scheme(), "https");
        let host = proxied
            .forwarded()
            .and_then(|forwarded| forwarded.host.as_deref());
        assert_eq!(host, Some("shop.example:8443"));
        let mut forged = request(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: not-an-address\r\nX-Forwarded-Proto: gopher\r\n\
              X-Forwarded-Host: evil.example/path\r\n\r\n",
        );
        forged.set_addresses("[::1]:5000".parse().ok(), None);
        forged.trust_forwarded_headers();
        assert_eq!(forged.forwarded(), Some(&Forwarded::default()));
        assert_eq!(
            (forged.client_ip(), forged.scheme()),
            ("::1".parse().ok(), "http")
        );
    }

    struct Nothing;

    impl BodyStream for Nothing {
        fn next_part(&mut self) -> Result<Option<Part>, StreamError> {
            Ok(None)
        }
    }

    #[test]
    fn responses_carry_framing_and_head_has_no_body() {
        let head = request(b"HEAD / HTTP/1.0\r\n\r\n");
        assert!(!head.wants_keep_alive());
        let response = Response::text(200, "hello\n").header("Content-Length", "999");
        let (text, framing) = head_text(response_head(Some(&head), &response, false));
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 6\r\n"), "{text}");
        assert!(!text.contains("999"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert_eq!(framing, Framing::Empty);
        let get = request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(get.wants_keep_alive());
        let (text, framing) = head_text(response_head(Some(&get), &response, true));
        assert!(!text.contains("Connection:"), "{text}");
        assert_eq!(framing, Framing::Length(6));
    }

    #[test]
    fn streamed_bodies_are_chunked_or_keep_their_length() {
        let get = request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let response = Response::streaming(200, Box::new(Nothing));
        let (text, framing) = head_text(response_head(Some(&get), &response, true));
        assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
        assert!(!text.contains("Content-Length"), "{text}");
        assert_eq!(framing, Framing::Chunked);
        let response = Response::streaming(200, Box::new(Nothing)).header("Content-Length", "12");
        let (text, framing) = head_text(response_head(Some(&get), &response, true));
        assert!(text.contains("Content-Length: 12\r\n"), "{text}");
        assert!(!text.contains("chunked"), "{text}");
        assert_eq!(framing, Framing::Length(12));
        // HTTP/1.0 knows no chunks: the body ends with the connection.
        let old = request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let response = Response::streaming(200, Box::new(Nothing));
        let (text, framing) = head_text(response_head(Some(&old), &response, true));
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(!text.contains("chunked"), "{text}");
        assert_eq!(framing, Framing::UntilClose);
        let response = Response::streaming(204, Box::new(Nothing));
        let (text, framing) = head_text(response_head(Some(&get), &response, true));
        assert!(
            !text.contains("chunked") && !text.contains("Length"),
            "{text}"
        );
        assert_eq!(framing, Framing::Empty);
    }

    #[test]
    fn header_values_go_out_as_bytes_and_broken_fields_not_at_all() {
        let get = request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let response = Response::new(200, "")
            .header_bytes("X-Name", b"caf\xe9")
            .header("X-Injected", "a\r\nSet-Cookie: x=1")
            .header("Bad Name", "v");
        let (head, _) = response_head(Some(&get), &response, true);
        let has = |needle: &[u8]| head.windows(needle.len()).any(|window| window == needle);
        assert!(has(b"\r\nX-Name: caf\xe9\r\n"));
        assert!(!has(b"Set-Cookie") && !has(b"Bad Name"));
    }

    #[test]
    fn absolute_form_targets_become_paths() {
        assert_eq!(origin_form("http://example.com/a?b"), "/a?b");
        assert_eq!(origin_form("http://example.com"), "/");
        assert_eq!(origin_form("/plain"), "/plain");
    }
}
