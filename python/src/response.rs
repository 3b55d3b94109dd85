//! What a WSGI application returns, turned into a response: `start_response`, the body's
//! first parts, and the rest of it sent part by part.

use forkwarden_worker::app::{BodyStream, Part, Response, StreamError};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyList, PyTuple};

use super::print_traceback;
use crate::file_wrapper::FileWrapper;

/// What a WSGI application's result holds before anything is sent.
pub(crate) enum FirstParts<'py> {
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
pub(crate) fn first_parts<'py>(result: &Bound<'py, PyAny>) -> PyResult<FirstParts<'py>> {
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
pub(crate) fn bytes_of<'a>(item: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
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
pub(crate) fn close(result: &Bound<'_, PyAny>) -> PyResult<()> {
    if result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>() {
        return Ok(());
    }
    match result.getattr_opt(intern!(result.py(), "close"))? {
        Some(close) => close.call0().map(drop),
        None => Ok(()),
    }
}

/// Puts what the application gave the legacy `write()` before `body`.
pub(crate) fn prepend(body: &mut Vec<u8>, mut written: Vec<u8>) {
    if !written.is_empty() {
        written.append(body);
        *body = written;
    }
}

/// The rest of a WSGI response body, sent part by part: what was already taken from the
/// result, then what its iterator yields; `close()` at the end.
pub(crate) struct WsgiBody {
    ahead: std::collections::VecDeque<Part>,
    rest: Option<Py<PyIterator>>,
    result: Py<PyAny>,
}

impl WsgiBody {
    pub(crate) fn response<const N: usize>(
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

/// The `start_response` callable of one request.
#[pyclass]
#[derive(Default)]
pub(crate) struct StartResponse {
    pub(crate) status: Option<u16>,
    pub(crate) headers: Vec<(String, String)>,
    /// What the application gave the legacy `write` callable.
    pub(crate) written: Vec<u8>,
    /// The head has gone (or is going) out: status and headers can no longer change.
    pub(crate) headers_sent: bool,
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
pub(crate) fn status_code(status: &str) -> PyResult<u16> {
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
pub(crate) fn check_header(name: &str, value: &str) -> PyResult<()> {
    if !forkwarden_worker::app::is_header_field(name, value.as_bytes()) {
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
pub(crate) fn latin1_bytes(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}
