//! `forkwarden_wsgi._core`: a WSGI application (PEP 3333) served by forkwarden's own HTTP
//! worker.
//!
//! The worker loop, the HTTP reading and writing, keep-alive, the deadlines, the limits and
//! the scoreboard row are forkwarden's, the very code its built-in workers run
//! (`forkwarden::program::serve`). This module only turns a request into a WSGI environ,
//! calls the application, and turns what it returns into a response. The GIL is held for
//! that alone: the worker waits for connections, reads and writes without it.
//!
//! ASGI would be a second [`App`] beside [`Wsgi`], running the coroutine of each request to
//! its end on an event loop kept by the worker; the worker loop would not change.

use std::collections::HashMap;

use std::os::fd::AsRawFd;

use forkwarden::{App, BodyStream, Part, Request, RequestBody, Response, StreamError};
use percent_encoding::percent_decode_str;
use pyo3::exceptions::{
    PyKeyboardInterrupt, PyMemoryError, PyRuntimeError, PySystemExit, PyTypeError, PyValueError,
};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyIterator, PyList, PyString, PyTuple};

/// Most distinct header names whose environ keys are kept (`User-Agent` -> `HTTP_USER_AGENT`):
/// a client sending new names at every request cannot grow the worker's memory past it.
const KEY_CACHE: usize = 256;

/// Serves `app`, the WSGI callable named `describe`, until the worker is told to leave;
/// returns the exit status for the process.
#[pyfunction]
fn serve(py: Python<'_>, app: Py<PyAny>, describe: String) -> PyResult<i32> {
    let wsgi = Wsgi::new(py, app)?;
    py.detach(move || forkwarden::program::serve(Box::new(wsgi), &describe))
        .map_err(|error| PyRuntimeError::new_err(error.to_string()))
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(serve, module)?)?;
    // Where the kit's descriptors are, as the worker this module runs reads them: the
    // template puts a forked worker's row there.
    module.add("KIT_ROW", forkwarden::program::KIT_ROW)?;
    module.add("KIT_VERSION", forkwarden::program::KIT_VERSION)?;
    module.add_class::<FileWrapper>()?;
    Ok(())
}

/// A WSGI application as forkwarden's [`App`].
struct Wsgi {
    app: Py<PyAny>,
    /// What every environ holds, whatever the request (copied for each).
    base: Py<PyDict>,
    /// `io.BytesIO`, the type of `wsgi.input` for a body in memory.
    bytes_io: Py<PyAny>,
    /// `open`, for `wsgi.input` of a body in a temporary file.
    open: Py<PyAny>,
    /// The environ key of each header name seen (see [`KEY_CACHE`]).
    keys: HashMap<String, Py<PyString>>,
}

impl Wsgi {
    fn new(py: Python<'_>, app: Py<PyAny>) -> PyResult<Self> {
        let base = PyDict::new(py);
        base.set_item("wsgi.version", (1, 0))?;
        base.set_item("wsgi.url_scheme", "http")?;
        base.set_item("wsgi.errors", py.import("sys")?.getattr("stderr")?)?;
        base.set_item("wsgi.multithread", false)?;
        // Several processes serve the application at once.
        base.set_item("wsgi.multiprocess", true)?;
        base.set_item("wsgi.run_once", false)?;
        // The body is whole (a chunked one decoded): reading to its end is safe.
        base.set_item("wsgi.input_terminated", true)?;
        base.set_item("wsgi.file_wrapper", py.get_type::<FileWrapper>())?;
        base.set_item("SCRIPT_NAME", "")?;
        base.set_item("SERVER_SOFTWARE", "forkwarden")?;
        Ok(Self {
            app,
            base: base.unbind(),
            bytes_io: py.import("io")?.getattr("BytesIO")?.unbind(),
            open: py.import("io")?.getattr("open")?.unbind(),
            keys: HashMap::new(),
        })
    }

    /// Calls the application on `request`; an error is the application's (or its answer
    /// is not WSGI). Its body is sent as it comes: what is known when the application
    /// returns (a list, a body of its stated length) at once, the rest (a generator) part by
    /// part, a file by sendfile.
    fn call(&mut self, py: Python<'_>, request: &Request) -> PyResult<Response> {
        let environ = self.environ(py, request)?;
        let start = Bound::new(py, StartResponse::default())?;
        let result = self.app.bind(py).call1((environ, &start))?;
        let body = match first_parts(&result) {
            Ok(body) => body,
            Err(error) => {
                close(&result)?;
                return Err(error);
            }
        };
        let mut start = start.borrow_mut();
        let Some(status) = start.status else {
            close(&result)?;
            return Err(PyRuntimeError::new_err(
                "the application returned without calling start_response",
            ));
        };
        let written = std::mem::take(&mut start.written);
        let headers = std::mem::take(&mut start.headers);
        let declared = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<u64>().ok());
        let mut response = match body {
            FirstParts::All(mut bytes) => {
                close(&result)?;
                prepend(&mut bytes, written);
                Response::new(status, bytes)
            }
            // As long as stated: the rest is not asked for (PEP 3333 lets a server stop
            // iterating; close() tells the application).
            FirstParts::First(mut bytes, _)
                if declared
                    .is_some_and(|length| (bytes.len() + written.len()) as u64 >= length) =>
            {
                close(&result)?;
                prepend(&mut bytes, written);
                // Never more than stated.
                bytes.truncate(
                    declared
                        .and_then(|length| usize::try_from(length).ok())
                        .unwrap_or(bytes.len()),
                );
                Response::new(status, bytes)
            }
            FirstParts::First(first, rest) => {
                start.headers_sent = true;
                let mut first = first;
                prepend(&mut first, written);
                WsgiBody::response(status, [Part::Bytes(first)], Some(rest), result)
            }
            FirstParts::File(file) => {
                start.headers_sent = true;
                // Its length is known: no need for chunks.
                let length = file.known_len().filter(|_| declared.is_none());
                let length = length.map(|length| length + written.len() as u64);
                let response =
                    WsgiBody::response(status, [Part::Bytes(written), file], None, result);
                match length {
                    Some(length) => response.header("Content-Length", &length.to_string()),
                    None => response,
                }
            }
        };
        for (name, value) in &headers {
            response = response.header_bytes(name, &latin1_bytes(value));
        }
        Ok(response)
    }

    fn environ<'py>(&mut self, py: Python<'py>, request: &Request) -> PyResult<Bound<'py, PyDict>> {
        let environ = self.base.bind(py).copy()?;
        environ.set_item(intern!(py, "REQUEST_METHOD"), request.method())?;
        // PEP 3333: the path decoded, as bytes in a latin-1 str; the query as sent.
        let path: Vec<u8> = percent_decode_str(request.path()).collect();
        environ.set_item(intern!(py, "PATH_INFO"), latin1(&path))?;
        environ.set_item(intern!(py, "QUERY_STRING"), request.query().unwrap_or(""))?;
        let protocol = if request.is_http10() {
            intern!(py, "HTTP/1.0")
        } else {
            intern!(py, "HTTP/1.1")
        };
        environ.set_item(intern!(py, "SERVER_PROTOCOL"), protocol)?;
        if let Some(client) = request.client_ip() {
            environ.set_item(intern!(py, "REMOTE_ADDR"), client.to_string())?;
        }
        if let Some(peer) = request.peer() {
            environ.set_item(intern!(py, "REMOTE_PORT"), peer.port().to_string())?;
        }
        if let Some(local) = request.local() {
            environ.set_item(intern!(py, "SERVER_NAME"), local.ip().to_string())?;
            environ.set_item(intern!(py, "SERVER_PORT"), local.port().to_string())?;
        }
        let body = request.body();
        let input = match body {
            RequestBody::Memory(bytes) => {
                self.bytes_io.bind(py).call1((PyBytes::new(py, bytes),))?
            }
            // A large body is in an unnamed temporary file: the application reads it from
            // there (its own open file, from the start), not from a copy in memory.
            RequestBody::File { file, .. } => self.open.bind(py).call1((
                format!("/proc/self/fd/{}", file.as_raw_fd()),
                intern!(py, "rb"),
            ))?,
        };
        environ.set_item(intern!(py, "wsgi.input"), input)?;
        // The length of the body as read (a chunked one, decoded), so that an application
        // that reads CONTENT_LENGTH bytes gets all of it.
        if !body.is_empty() || request.header("content-length").is_some() {
            environ.set_item(intern!(py, "CONTENT_LENGTH"), body.len().to_string())?;
        }
        for header in request.headers() {
            let name = header.name.as_str();
            if name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
                // `X_Forwarded_For` would land on the same key as `X-Forwarded-For`: such
                // names are dropped, as gunicorn and nginx do, so none can be forged.
                || name.contains('_')
            {
                continue;
            }
            let key = self.key_of(py, name);
            let value = latin1(&header.value);
            match environ.get_item(&key)? {
                // Repeated fields are one, joined (RFC 9110 5.3); cookies with `; `.
                Some(earlier) => {
                    let separator = if key.to_cow()? == "HTTP_COOKIE" {
                        "; "
                    } else {
                        ","
                    };
                    let earlier: String = earlier.extract()?;
                    environ.set_item(&key, format!("{earlier}{separator}{value}"))?;
                }
                None => environ.set_item(&key, value)?,
            }
        }
        if let Some(forwarded) = request.forwarded() {
            // `proxy_mode`: as werkzeug's ProxyFix (one proxy) would set them.
            environ.set_item(intern!(py, "wsgi.url_scheme"), request.scheme())?;
            if let Some(host) = &forwarded.host {
                environ.set_item(intern!(py, "HTTP_HOST"), host)?;
                let (name, port) = match host.rsplit_once(':') {
                    Some((name, port)) if !host.ends_with(']') => (name, Some(port)),
                    _ => (host.as_str(), None),
                };
                environ.set_item(intern!(py, "SERVER_NAME"), name)?;
                if let Some(port) = port {
                    environ.set_item(intern!(py, "SERVER_PORT"), port)?;
                }
            }
        }
        Ok(environ)
    }

    /// The environ key of header `name`: `CONTENT_TYPE`, or `HTTP_` and the name in capitals
    /// with `-` as `_`; kept for the next request (up to [`KEY_CACHE`] names).
    fn key_of<'py>(&mut self, py: Python<'py>, name: &str) -> Bound<'py, PyString> {
        if let Some(key) = self.keys.get(name) {
            return key.bind(py).clone();
        }
        let key = if name.eq_ignore_ascii_case("content-type") {
            PyString::new(py, "CONTENT_TYPE")
        } else {
            let mut key = String::with_capacity(5 + name.len());
            key.push_str("HTTP_");
            key.extend(name.chars().map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_uppercase()
                }
            }));
            PyString::new(py, &key)
        };
        if self.keys.len() < KEY_CACHE {
            self.keys.insert(name.to_string(), key.clone().unbind());
        }
        key
    }

    /// The answer when the application failed: 500, its traceback in the log; a worker
    /// that ran out of memory is replaced after it.
    fn failed(py: Python<'_>, request: &Request, error: PyErr) -> Response {
        let what = format!("{} {}", request.method(), request.target());
        if error.is_instance_of::<PyMemoryError>(py) {
            let limit = address_space_limit().map_or_else(
                || "the system is out of memory".to_string(),
                |limit| {
                    format!(
                        "limit_memory_hard caps the address space at {} MiB (RLIMIT_AS)",
                        limit >> 20
                    )
                },
            );
            tracing::error!(
                "forkwarden_wsgi: MemoryError serving {what}: an allocation was refused: \
                 {limit}; this worker leaves to be replaced"
            );
            return Response::text(500, "internal server error\n").and_replace_worker();
        }
        if error.is_instance_of::<PySystemExit>(py)
            || error.is_instance_of::<PyKeyboardInterrupt>(py)
        {
            // sys.exit() in one request ends that request, not the server: the worker's exit
            // status is its own (3 would stop the whole server, which is for failures at
            // start), so it answers 500 and is replaced.
            tracing::error!(
                "forkwarden_wsgi: the application raised {} serving {what}; answered 500; \
                 this worker leaves to be replaced",
                describe_exception(py, &error)
            );
            print_traceback(py, &error);
            return Response::text(500, "internal server error\n").and_replace_worker();
        }
        tracing::error!("forkwarden_wsgi: the application failed serving {what}; answered 500:");
        print_traceback(py, &error);
        Response::text(500, "internal server error\n")
    }
}

impl App for Wsgi {
    fn handle(&mut self, request: &Request) -> Response {
        Python::attach(|py| {
            self.call(py, request)
                .unwrap_or_else(|error| Self::failed(py, request, error))
        })
    }
}

/// What a WSGI application's result holds before anything is sent.
enum FirstParts<'py> {
    /// All of its body (a list or a tuple, or an iterable that ended at once or after its
    /// first part).
    All(Vec<u8>),
    /// Its first part, and the iterator for the rest (which may take its time: a
    /// generator).
    First(Vec<u8>, Bound<'py, PyIterator>),
    /// A `wsgi.file_wrapper` of a regular file: sent by sendfile.
    File(Part),
}

/// The parts of `result` that are there without waiting: all of a list or tuple, the first
/// part of anything else (asking for a second could wait on the application, and the first
/// must not wait for it: PEP 3333).
fn first_parts<'py>(result: &Bound<'py, PyAny>) -> PyResult<FirstParts<'py>> {
    let mut body = Vec::new();
    // The common case, a list, without an iterator object.
    if let Ok(list) = result.cast::<PyList>() {
        for item in list.iter() {
            body.extend_from_slice(bytes_of(&item)?);
        }
        return Ok(FirstParts::All(body));
    }
    if let Ok(wrapper) = result.cast::<FileWrapper>()
        && let Some(file) = wrapper.borrow().sendable(result.py())?
    {
        return Ok(FirstParts::File(file));
    }
    let mut parts = result.try_iter()?;
    match parts.next() {
        None => Ok(FirstParts::All(body)),
        Some(first) => {
            body.extend_from_slice(bytes_of(&first?)?);
            if result.is_exact_instance_of::<PyTuple>() {
                for item in parts {
                    body.extend_from_slice(bytes_of(&item?)?);
                }
                return Ok(FirstParts::All(body));
            }
            Ok(FirstParts::First(body, parts))
        }
    }
}

/// The bytes of an item the application yielded; a TypeError if it is not bytes.
fn bytes_of<'a>(item: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
    item.cast::<PyBytes>()
        .map(|bytes| bytes.as_bytes())
        .map_err(|_| {
            PyTypeError::new_err(format!(
                "the application yielded {}, not bytes",
                item.get_type()
                    .name()
                    .map_or_else(|_| "?".to_string(), |name| name.to_string())
            ))
        })
}

/// Calls the result's `close()`, as PEP 3333 asks whatever happened (a list or a tuple,
/// the common answers, has none to look for).
fn close(result: &Bound<'_, PyAny>) -> PyResult<()> {
    if result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>() {
        return Ok(());
    }
    match result.getattr_opt(intern!(result.py(), "close"))? {
        Some(close) => close.call0().map(drop),
        None => Ok(()),
    }
}

/// Puts what the application gave the legacy `write()` before `body`.
fn prepend(body: &mut Vec<u8>, mut written: Vec<u8>) {
    if !written.is_empty() {
        written.append(body);
        *body = written;
    }
}

/// The rest of a WSGI response body, sent part by part: what was already taken from the
/// result, then what its iterator yields; `close()` at the end.
struct WsgiBody {
    ahead: std::collections::VecDeque<Part>,
    rest: Option<Py<PyIterator>>,
    result: Py<PyAny>,
}

impl WsgiBody {
    fn response<const N: usize>(
        status: u16,
        ahead: [Part; N],
        rest: Option<Bound<'_, PyIterator>>,
        result: Bound<'_, PyAny>,
    ) -> Response {
        let ahead = ahead
            .into_iter()
            .filter(|part| !matches!(part, Part::Bytes(bytes) if bytes.is_empty()))
            .collect();
        Response::streaming(
            status,
            Box::new(Self {
                ahead,
                rest: rest.map(Bound::unbind),
                result: result.unbind(),
            }),
        )
    }
}

impl BodyStream for WsgiBody {
    fn next_part(&mut self) -> Result<Option<Part>, StreamError> {
        if let Some(part) = self.ahead.pop_front() {
            return Ok(Some(part));
        }
        let Some(rest) = &self.rest else {
            return Ok(None);
        };
        Python::attach(|py| {
            let failed = |error: PyErr| {
                tracing::error!(
                    "forkwarden_wsgi: the application failed while its response was being \
                     sent; the connection is closed:"
                );
                print_traceback(py, &error);
                StreamError(error.to_string())
            };
            loop {
                let Some(item) = rest.bind(py).clone().next() else {
                    return Ok(None);
                };
                let item = item.map_err(failed)?;
                let bytes = bytes_of(&item).map_err(failed)?;
                // An empty part is no part (and would end a chunked body).
                if !bytes.is_empty() {
                    return Ok(Some(Part::Bytes(bytes.to_vec())));
                }
            }
        })
    }

    fn finish(&mut self) {
        Python::attach(|py| {
            if let Err(error) = close(self.result.bind(py)) {
                tracing::error!("forkwarden_wsgi: the response's close() failed:");
                print_traceback(py, &error);
            }
        });
    }
}

/// Writes `error`'s traceback to standard error, as Python does for an uncaught exception,
/// but never exits: `PyErr::print` ends the process on `SystemExit`, with its code.
fn print_traceback(py: Python<'_>, error: &PyErr) {
    let printed = py
        .import("traceback")
        .and_then(|traceback| traceback.call_method1("print_exception", (error.value(py),)));
    if printed.is_err() {
        eprintln!("{}", describe_exception(py, error));
    }
}

/// `SystemExit(3)`: the exception's type and arguments.
fn describe_exception(py: Python<'_>, error: &PyErr) -> String {
    error
        .value(py)
        .repr()
        .map_or_else(|_| error.to_string(), |text| text.to_string())
}

/// A str of the code points of `bytes` (latin-1), as PEP 3333 has bytes carried in str.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&byte| char::from(byte)).collect()
}

/// RLIMIT_AS in bytes, None when unlimited.
fn address_space_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max address space"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The `start_response` callable of one request.
#[pyclass]
#[derive(Default)]
struct StartResponse {
    status: Option<u16>,
    headers: Vec<(String, String)>,
    /// What the application gave the legacy `write` callable.
    written: Vec<u8>,
    /// The head has gone (or is going) out: status and headers can no longer change.
    headers_sent: bool,
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &str,
        headers: Vec<(String, String)>,
        exc_info: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        {
            let mut this = slf.borrow_mut();
            let exc_info = exc_info.filter(|info| !info.is_none());
            // Called again only with exc_info (PEP 3333): before the head is sent, the new
            // status replaces the old; after, the error is raised again.
            if let Some(info) = &exc_info
                && this.headers_sent
            {
                return Err(PyErr::from_value(info.get_item(1)?));
            }
            if this.status.is_some() && exc_info.is_none() {
                return Err(PyRuntimeError::new_err(
                    "start_response called a second time without exc_info",
                ));
            }
            this.status = Some(status_code(status)?);
            for (name, value) in &headers {
                check_header(name, value)?;
            }
            this.headers = headers;
        }
        slf.getattr("write")
    }

    /// The legacy `write(data)` callable that `start_response` returns: what it is given
    /// goes out before the result's body.
    fn write(&mut self, data: &[u8]) -> PyResult<()> {
        if self.headers_sent {
            return Err(PyRuntimeError::new_err(
                "write() called while the result is being iterated: forkwarden sends what \
                 write() was given before the result's body; yield those bytes instead",
            ));
        }
        self.written.extend_from_slice(data);
        Ok(())
    }
}

/// The code of a WSGI status line (`"200 OK"`).
fn status_code(status: &str) -> PyResult<u16> {
    let code = status
        .get(..3)
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()));
    let valid = status.len() == 3 || status.as_bytes().get(3) == Some(&b' ');
    match code.and_then(|code| code.parse::<u16>().ok()) {
        Some(code) if valid && code >= 100 => Ok(code),
        _ => Err(PyValueError::new_err(format!(
            "invalid status {status:?} from the application (expected \"200 OK\")"
        ))),
    }
}

/// Refuses a header that would break the response's framing (CR, LF), whose name is not a
/// token, or whose value is not ISO-8859-1 text (PEP 3333: header strings are latin-1).
fn check_header(name: &str, value: &str) -> PyResult<()> {
    if !forkwarden::is_header_field(name, value.as_bytes()) {
        return Err(PyValueError::new_err(format!(
            "invalid response header {name:?}: {value:?}"
        )));
    }
    if let Some(wide) = value.chars().find(|c| u32::from(*c) > 0xff) {
        return Err(PyValueError::new_err(format!(
            "response header {name:?} holds {wide:?}, not in ISO-8859-1: encode the value \
             first (RFC 8187, percent-encoding) (PEP 3333: header strings are latin-1)"
        )));
    }
    Ok(())
}

/// The ISO-8859-1 bytes of `text`, whose code points [`check_header`] checked.
fn latin1_bytes(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// `wsgi.file_wrapper`: an application's file, sent in blocks.
#[pyclass]
struct FileWrapper {
    file: Py<PyAny>,
    block_size: usize,
}

impl FileWrapper {
    /// The wrapped file as a part for sendfile, from where the application left it: None
    /// unless it is a regular file with a descriptor (a BytesIO, a pipe, a socket are read
    /// in blocks instead).
    fn sendable(&self, py: Python<'_>) -> PyResult<Option<Part>> {
        let file = self.file.bind(py);
        let Some(fileno) = file.getattr_opt(intern!(py, "fileno"))? else {
            return Ok(None);
        };
        let Ok(fd) = fileno.call0().and_then(|fd| fd.extract::<i32>()) else {
            return Ok(None);
        };
        // Where the application's reads left it (its buffer included), not the
        // descriptor's offset.
        let offset = match file.getattr_opt(intern!(py, "tell"))? {
            Some(tell) => match tell.call0().and_then(|at| at.extract::<u64>()) {
                Ok(offset) => offset,
                Err(_) => return Ok(None),
            },
            None => 0,
        };
        Ok(Part::file_at(fd, offset).ok().flatten())
    }
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (file, block_size = 65536))]
    fn new(file: Py<PyAny>, block_size: usize) -> Self {
        Self {
            file,
            block_size: block_size.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let block = self
            .file
            .bind(py)
            .call_method1("read", (self.block_size,))?;
        Ok((!block.is_empty()?).then_some(block))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(close) = self.file.bind(py).getattr_opt("close")? {
            close.call0()?;
        }
        Ok(())
    }
}
