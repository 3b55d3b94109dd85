//! Reading HTTP/1.x requests from bytes as they arrive, one request at a time.
//!
//! The reader never blocks and never re-reads a byte: each call goes on from where the last
//! one stopped, so the work per request is linear in its size, and its size is capped (head
//! [`MAX_HEAD_BYTES`], chunk-size line [`MAX_CHUNK_LINE`], trailers, body `max_body`).
//! Framing follows RFC 9112 strictly, refusing what a proxy in front might read differently
//! (request smuggling): a bare LF ending a line, Transfer-Encoding on HTTP/1.0, a coding
//! other than a final `chunked`, Content-Length beside Transfer-Encoding or disagreeing with
//! itself, a missing or repeated Host. Every size a client sends is checked arithmetic.

use super::{Header, Request, RequestBody};

/// Largest request line plus headers; also the largest trailer section.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 64;
/// Longest chunk-size line, extensions included (Go's limit too).
pub const MAX_CHUNK_LINE: usize = 4096;
/// Most hex digits in a chunk size: 16 fill a u64.
const MAX_CHUNK_DIGITS: u32 = 16;

/// Why a request cannot be read: the status to answer with, and why; the connection is
/// then closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: &'static str,
}

/// A body that could not be written to its temporary file (disk full, no temporary
/// directory): the server's failure, not the client's.
const CANNOT_STORE: Reject = reject(500, "cannot store the request body");

const fn reject(status: u16, reason: &'static str) -> Reject {
    Reject { status, reason }
}

/// Reads requests from a connection's bytes.
#[derive(Debug)]
pub struct RequestReader {
    max_body: Option<u64>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Waiting for a whole head; the first `scanned` bytes of the buffer hold no end of it.
    Head { scanned: usize },
    /// The head is read; the body is coming.
    Body {
        request: Request,
        body: Body,
        /// `Expect: 100-continue` asked for an interim answer that is not sent yet.
        continue_wanted: bool,
    },
}

#[derive(Debug)]
enum Body {
    Sized { left: u64 },
    Chunked(Chunk),
}

/// Where a chunked body is.
#[derive(Debug)]
enum Chunk {
    /// In a chunk-size line: the size so far, its digits, the line's length, whether the
    /// digits are over (an extension or whitespace follows), a CR seen.
    Size {
        size: u64,
        digits: u32,
        length: usize,
        extension: bool,
        cr: bool,
    },
    /// In a chunk's data, `left` bytes to go.
    Data { left: u64 },
    /// After a chunk's data: its CRLF (`cr`: the CR is seen).
    DataEnd { cr: bool },
    /// In the trailer section: the current line's length, the section's, a CR seen.
    Trailers { line: usize, total: usize, cr: bool },
}

impl Chunk {
    /// A chunk-size line at its start.
    const SIZE_LINE: Chunk = Chunk::Size {
        size: 0,
        digits: 0,
        length: 0,
        extension: false,
        cr: false,
    };

    /// One byte of a chunk-size line (in state `Size`), with `body_len` bytes of body so
    /// far: the size's hex digits, an extension (skipped), then CRLF, after which the
    /// chunk's data (refused past `max_body`) or, for size 0, the trailers follow.
    fn size_line_byte(
        &mut self,
        byte: u8,
        body_len: u64,
        max_body: Option<u64>,
    ) -> Result<(), Reject> {
        let Chunk::Size {
            size,
            digits,
            length,
            extension,
            cr,
        } = self
        else {
            return Ok(());
        };
        let malformed = || reject(400, "malformed chunked body");
        *length += 1;
        if *length > MAX_CHUNK_LINE {
            return Err(reject(400, "chunk-size line too long"));
        }
        if *cr {
            if byte != b'\n' || *digits == 0 {
                return Err(malformed());
            }
            let size = *size;
            if size == 0 {
                *self = Chunk::Trailers {
                    line: 0,
                    total: 0,
                    cr: false,
                };
                return Ok(());
            }
            let total = body_len.checked_add(size);
            if total.is_none_or(|total| max_body.is_some_and(|max| total > max)) {
                return Err(reject(413, "request body too large"));
            }
            *self = Chunk::Data { left: size };
        } else if byte == b'\r' {
            *cr = true;
        } else if *extension {
            // chunk-ext: skipped, but no control character may hide in it.
            if byte != b'\t' && (byte < 0x20 || byte == 0x7f) {
                return Err(malformed());
            }
        } else if let Some(value) = (byte as char).to_digit(16) {
            *digits += 1;
            if *digits > MAX_CHUNK_DIGITS {
                return Err(reject(400, "chunk size too large"));
            }
            *size = size
                .checked_mul(16)
                .and_then(|size| size.checked_add(u64::from(value)))
                .ok_or(reject(400, "chunk size too large"))?;
        } else if matches!(byte, b';' | b' ' | b'\t') && *digits > 0 {
            *extension = true;
        } else {
            return Err(malformed());
        }
        Ok(())
    }

    /// One byte of the trailer section (in state `Trailers`); true once it has ended (an
    /// empty line).
    fn trailer_byte(&mut self, byte: u8) -> Result<bool, Reject> {
        let Chunk::Trailers { line, total, cr } = self else {
            return Ok(false);
        };
        *total += 1;
        if *total > MAX_HEAD_BYTES {
            return Err(reject(431, "trailer fields too large"));
        }
        if *cr {
            if byte != b'\n' {
                return Err(reject(400, "malformed chunked body"));
            }
            if *line == 0 {
                return Ok(true);
            }
            *line = 0;
            *cr = false;
        } else if byte == b'\r' {
            *cr = true;
        } else if byte == b'\n' {
            return Err(reject(400, "a trailer line ends in a bare LF"));
        } else {
            *line += 1;
        }
        Ok(false)
    }
}

impl RequestReader {
    /// A reader for a new connection; bodies larger than `max_body` are refused (None: no
    /// limit).
    pub fn new(max_body: Option<u64>) -> Self {
        Self {
            max_body,
            state: State::Head { scanned: 0 },
        }
    }

    /// Whether part of a request has been read (a head begun or a body coming): a silent
    /// connection can be closed quietly, one in the middle of a request gets 408.
    pub fn in_request(&self, buffer: &[u8]) -> bool {
        !buffer.is_empty() || matches!(self.state, State::Body { .. })
    }

    /// Whether the head is read and the body is coming.
    pub fn reading_body(&self) -> bool {
        matches!(self.state, State::Body { .. })
    }

    /// True once, when the request asked for `100 Continue` before sending its body and it
    /// is due: the caller writes it.
    pub fn take_continue(&mut self) -> bool {
        match &mut self.state {
            State::Body {
                continue_wanted, ..
            } => std::mem::take(continue_wanted),
            State::Head { .. } => false,
        }
    }

    /// Goes on reading from `buffer`, which holds what the connection sent and this reader
    /// has not consumed yet: consumes what it reads, and returns the request once whole.
    pub fn next(&mut self, buffer: &mut Vec<u8>) -> Result<Option<Request>, Reject> {
        if let State::Head { scanned } = &mut self.state {
            let Some(end) = find_head_end(buffer, scanned)? else {
                return Ok(None);
            };
            let (request, body) = parse_head(&buffer[..end], self.max_body)?;
            buffer.drain(..end);
            let Some(body) = body else {
                self.state = State::Head { scanned: 0 };
                return Ok(Some(request));
            };
            let continue_wanted = wants_continue(&request)? && buffer.is_empty();
            self.state = State::Body {
                request,
                body,
                continue_wanted,
            };
        }
        let State::Body { request, body, .. } = &mut self.state else {
            return Ok(None);
        };
        let (used, done) = match body {
            Body::Sized { left } => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(buffer.len());
                request
                    .body
                    .append(&buffer[..take])
                    .map_err(|_| CANNOT_STORE)?;
                *left -= take as u64;
                (take, *left == 0)
            }
            Body::Chunked(chunk) => read_chunked(chunk, buffer, &mut request.body, self.max_body)?,
        };
        buffer.drain(..used);
        if !done {
            return Ok(None);
        }
        let State::Body { request, .. } =
            std::mem::replace(&mut self.state, State::Head { scanned: 0 })
        else {
            return Ok(None);
        };
        Ok(Some(request))
    }
}

/// Where the head in `buffer` ends (after its blank line), scanning only bytes after the
/// `scanned` ones, each once; empty lines before a request line are dropped (RFC 9112 2.2).
fn find_head_end(buffer: &mut Vec<u8>, scanned: &mut usize) -> Result<Option<usize>, Reject> {
    // A request line never starts with CR: CRLFs at the start are empty lines.
    let blank = buffer.chunks(2).take_while(|pair| *pair == b"\r\n").count();
    if blank > 0 {
        buffer.drain(..blank * 2);
        *scanned = scanned.saturating_sub(blank * 2);
    }
    let from = *scanned;
    for index in from..buffer.len() {
        if buffer[index] == b'\n' {
            if index == 0 || buffer[index - 1] != b'\r' {
                return Err(reject(400, "a line of the request head ends in a bare LF"));
            }
            if index >= 3 && &buffer[index - 3..=index] == b"\r\n\r\n" {
                *scanned = 0;
                return Ok(Some(index + 1));
            }
        }
    }
    *scanned = buffer.len();
    if buffer.len() >= MAX_HEAD_BYTES {
        return Err(reject(431, "request header fields too large"));
    }
    Ok(None)
}

/// Parses a whole head; returns the request, and how its body comes (None: it has none).
fn parse_head(head: &[u8], max_body: Option<u64>) -> Result<(Request, Option<Body>), Reject> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(reject(400, "malformed request")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reject(431, "too many header fields"));
        }
        Err(_) => return Err(reject(400, "malformed request")),
    }
    let (Some(method), Some(target), Some(minor_version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Err(reject(400, "malformed request"));
    };
    // A path (origin-form) or an absolute URL, whose path is taken: the forms an
    // application could mistake for a path (`*`, `host:port`, `foo/bar`) are refused.
    let target = super::origin_form(target);
    if !target.starts_with('/') {
        return Err(reject(
            400,
            "the request target is neither a path nor an absolute http(s) URL",
        ));
    }
    let request = Request {
        method: method.to_string(),
        target: target.to_string(),
        minor_version,
        headers: parsed
            .headers
            .iter()
            .map(|field| Header {
                name: field.name.to_string(),
                value: field.value.to_vec(),
            })
            .collect(),
        body: RequestBody::default(),
        peer: None,
        local: None,
        forwarded: None,
    };
    let body = framing(&request, max_body)?;
    Ok((request, body))
}

/// How the body of `request` is delimited (RFC 9112 6), refusing every ambiguity.
fn framing(request: &Request, max_body: Option<u64>) -> Result<Option<Body>, Reject> {
    let values = |name: &str| -> Vec<&[u8]> {
        request
            .headers
            .iter()
            .filter(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value.as_slice())
            .collect()
    };
    let hosts = values("host").len();
    if hosts > 1 {
        return Err(reject(400, "more than one Host header"));
    }
    if hosts == 0 && request.minor_version == 1 {
        return Err(reject(400, "an HTTP/1.1 request without a Host header"));
    }
    let codings = values("transfer-encoding");
    let lengths = values("content-length");
    if !codings.is_empty() {
        if request.minor_version == 0 {
            return Err(reject(400, "Transfer-Encoding in an HTTP/1.0 request"));
        }
        if !lengths.is_empty() {
            return Err(reject(400, "both Content-Length and Transfer-Encoding"));
        }
        let codings: Vec<&[u8]> = codings
            .iter()
            .flat_map(|value| value.split(|byte| *byte == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|coding| !coding.is_empty())
            .collect();
        let chunked = |coding: &&[u8]| coding.eq_ignore_ascii_case(b"chunked");
        return match codings.as_slice() {
            [only] if chunked(only) => Ok(Some(Body::Chunked(Chunk::Size {
                size: 0,
                digits: 0,
                length: 0,
                extension: false,
                cr: false,
            }))),
            [] => Err(reject(400, "an empty Transfer-Encoding")),
            [.., last] if !chunked(last) && codings.iter().any(chunked) => {
                Err(reject(400, "chunked is not the last transfer coding"))
            }
            _ if codings.iter().filter(|coding| chunked(coding)).count() > 1 => {
                Err(reject(400, "chunked applied more than once"))
            }
            _ => Err(reject(501, "unsupported Transfer-Encoding")),
        };
    }
    let Some(first) = lengths.first() else {
        return Ok(None);
    };
    if lengths.iter().any(|other| other != first) {
        return Err(reject(400, "conflicting Content-Length headers"));
    }
    let length = std::str::from_utf8(first)
        .ok()
        .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or(reject(400, "invalid Content-Length"))?;
    if max_body.is_some_and(|max| length > max) {
        return Err(reject(413, "request body too large"));
    }
    Ok((length > 0).then_some(Body::Sized { left: length }))
}

/// Whether the client waits for `100 Continue` before sending the body.
fn wants_continue(request: &Request) -> Result<bool, Reject> {
    match request.header("expect") {
        None => Ok(false),
        Some(value) if value.eq_ignore_ascii_case(b"100-continue") => {
            Ok(request.minor_version == 1)
        }
        Some(_) => Err(reject(417, "unsupported Expect header")),
    }
}

/// Goes on with a chunked body from `buffer`, appending data to `body`; returns how many
/// bytes it used and whether the body (trailers included) is complete.
fn read_chunked(
    chunk: &mut Chunk,
    buffer: &[u8],
    body: &mut RequestBody,
    max_body: Option<u64>,
) -> Result<(usize, bool), Reject> {
    let malformed = reject(400, "malformed chunked body");
    let mut at = 0;
    while at < buffer.len() {
        let byte = buffer[at];
        match chunk {
            Chunk::Size { .. } => {
                at += 1;
                chunk.size_line_byte(byte, body.len(), max_body)?;
            }
            Chunk::Data { left } => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(buffer.len() - at);
                body.append(&buffer[at..at + take])
                    .map_err(|_| CANNOT_STORE)?;
                at += take;
                *left -= take as u64;
                if *left == 0 {
                    *chunk = Chunk::DataEnd { cr: false };
                }
            }
            Chunk::DataEnd { cr } => {
                at += 1;
                match (*cr, byte) {
                    (false, b'\r') => *cr = true,
                    (true, b'\n') => *chunk = Chunk::SIZE_LINE,
                    _ => return Err(malformed),
                }
            }
            Chunk::Trailers { .. } => {
                at += 1;
                if chunk.trailer_byte(byte)? {
                    return Ok((at, true));
                }
            }
        }
    }
    Ok((at, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a reader in pieces of `step` bytes; returns the requests and the
    /// rejection, if any.
    fn read_all(
        input: &[u8],
        step: usize,
        max_body: Option<u64>,
    ) -> (Vec<Request>, Option<Reject>) {
        let mut reader = RequestReader::new(max_body);
        let mut buffer = Vec::new();
        let mut requests = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buffer.extend_from_slice(piece);
            loop {
                match reader.next(&mut buffer) {
                    Ok(Some(request)) => requests.push(request),
                    Ok(None) => break,
                    Err(reject) => return (requests, Some(reject)),
                }
            }
        }
        (requests, None)
    }

    fn status(input: &[u8]) -> Option<u16> {
        read_all(input, input.len(), Some(1 << 20))
            .1
            .map(|reject| reject.status)
    }

    #[test]
    fn pipelined_requests_come_out_whole_however_the_bytes_arrive() {
        let input: &[u8] = b"GET /a?x=1&y=2 HTTP/1.1\r\nHost: h\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
            POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
        for step in [1, 2, 3, 7, 64, input.len()] {
            let (requests, rejected) = read_all(input, step, None);
            assert_eq!(rejected, None, "step {step}");
            let summary: Vec<(&str, &[u8])> = requests
                .iter()
                .map(|request| (request.path(), request.body().as_bytes().unwrap()))
                .collect();
            assert_eq!(
                summary,
                [("/a", &b""[..]), ("/b", b"hello"), ("/c", b"hello world")],
                "step {step}"
            );
        }
    }

    #[test]
    fn the_90_byte_chunk_that_crashed_a_worker_is_refused() {
        let input = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
                      2\r\nab\r\nfffffffffffffffe\r\n";
        assert_eq!(status(input), Some(413));
        let huge = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
                     10000000000000000\r\n";
        assert_eq!(status(huge), Some(400), "a 17-digit size overflows");
        let (_, rejected) = read_all(input, 1, None);
        assert_eq!(
            rejected.map(|reject| reject.status),
            Some(413),
            "without a limit too: the total would not fit in 64 bits"
        );
    }

    #[test]
    fn a_chunk_line_is_capped_and_read_once() {
        let mut input =
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        assert_eq!(status(&input), Some(400));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let cases: [(&[u8], u16); 15] = [
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET foo/bar HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nContent-Length: 40\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                  Transfer-Encoding: gzip\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
                501,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\
                  Transfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect: dance\r\nContent-Length: 1\r\n\r\n",
                417,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                status(input),
                Some(expected),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            status(b"GET / HTTP/1.0\r\n\r\n"),
            None,
            "HTTP/1.0 needs no Host"
        );
        assert_eq!(status(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
    }

    #[test]
    fn sizes_are_bounded() {
        let many: String = (0..100).map(|n| format!("X-{n}: v\r\n")).collect();
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n").as_bytes()),
            Some(431)
        );
        let huge = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(status(huge.as_bytes()), Some(431));
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n"),
            Some(413)
        );
        let chunks = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
                       80000\r\n";
        assert_eq!(status(chunks), None, "512 KiB fits under 1 MiB");
        let chunks = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
                       100001\r\n";
        assert_eq!(status(chunks), Some(413));
    }

    #[test]
    fn continue_is_wanted_once_and_only_before_the_body() {
        let mut reader = RequestReader::new(None);
        let mut buffer =
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
                .to_vec();
        assert!(matches!(reader.next(&mut buffer), Ok(None)));
        assert!(reader.take_continue());
        assert!(!reader.take_continue());
        buffer.extend_from_slice(b"hi");
        assert_eq!(
            reader.next(&mut buffer).unwrap().unwrap().body().as_bytes(),
            Some(&b"hi"[..])
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("FORKWARDEN_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000)
        ))]

        /// The fuzz target: whatever bytes arrive, in whatever pieces, the reader never
        /// panics, never grows past its caps, and reads the same requests as from one piece.
        #[test]
        fn any_bytes_in_any_pieces(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            prefix in proptest::sample::select(vec![
                &b""[..],
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: h\r\n",
            ]),
            step in 1usize..40,
        ) {
            let mut bytes = prefix.to_vec();
            bytes.extend(input);
            let whole = read_all(&bytes, bytes.len(), Some(1 << 16));
            let pieces = read_all(&bytes, step, Some(1 << 16));
            let paths = |read: &(Vec<Request>, Option<Reject>)| -> Vec<(String, Vec<u8>)> {
                read.0.iter().map(|r| (r.target().to_string(), r.body().as_bytes().unwrap().to_vec())).collect()
            };
            proptest::prop_assert_eq!(paths(&whole), paths(&pieces));
            proptest::prop_assert_eq!(whole.1, pieces.1);
        }

        /// Chunked bodies split any way come out as sent.
        #[test]
        fn chunked_bodies_round_trip(
            parts in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..50), 0..8),
            step in 1usize..30,
        ) {
            let mut bytes = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for part in &parts {
                bytes.extend(format!("{:x}\r\n", part.len()).as_bytes());
                bytes.extend(part);
                bytes.extend(b"\r\n");
            }
            bytes.extend(b"0\r\n\r\n");
            let (requests, rejected) = read_all(&bytes, step, None);
            proptest::prop_assert_eq!(rejected, None);
            proptest::prop_assert_eq!(requests.len(), 1);
            let sent = parts.concat();
            proptest::prop_assert_eq!(requests[0].body().as_bytes(), Some(sent.as_slice()));
        }
    }
}
