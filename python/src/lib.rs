//! `forkwarden_wsgi._core`: a WSGI application (PEP 3333) served by forkwarden's own HTTP
//! worker.
//!
//! The worker loop, the HTTP reading and writing, keep-alive, the deadlines, the limits and
//! the scoreboard row are forkwarden's, the very code its built-in workers run
//! (`forkwarden_worker::kit::serve`). This module only turns a request into a WSGI environ,
//! calls the application, and turns what it returns into a response. The GIL is held for
//! that alone: the worker waits for connections, reads and writes without it.
//!
//! ASGI would be a second [`App`] beside [`Wsgi`], running the coroutine of each request to
//! its end on an event loop kept by the worker; the worker loop would not change.

mod environ;
mod file_wrapper;
mod response;

use std::collections::HashMap;

use forkwarden_worker::app::{App, Part, Request, Response};
use pyo3::exceptions::{PyKeyboardInterrupt, PyMemoryError, PyRuntimeError, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use file_wrapper::FileWrapper;
use response::{FirstParts, StartResponse, WsgiBody, close, first_parts, latin1_bytes, prepend};

/// Most distinct header names whose environ keys are kept (`User-Agent` -> `HTTP_USER_AGENT`):
/// a client sending new names at every request cannot grow the worker's memory past it.
const KEY_CACHE: usize = 256;

/// Serves `app`, the WSGI callable named `describe`, until the worker is told to leave;
/// returns the exit status for the process.
#[pyfunction]
fn serve(py: Python<'_>, app: Py<PyAny>, describe: String) -> PyResult<i32> {
    let wsgi = Wsgi::new(py, app)?;
    py.detach(move || forkwarden_worker::kit::serve(Box::new(wsgi), &describe))
        .map_err(|error| PyRuntimeError::new_err(error.to_string()))
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(serve, module)?)?;
    // Where the kit's descriptors are, as the worker this module runs reads them: the
    // template puts a forked worker's row there.
    module.add("KIT_ROW", forkwarden_worker::kit::KIT_ROW)?;
    module.add("KIT_VERSION", forkwarden_worker::scoreboard::KIT_VERSION)?;
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

/// RLIMIT_AS in bytes, None when unlimited.
fn address_space_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max address space"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
