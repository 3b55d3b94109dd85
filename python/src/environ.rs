//! The WSGI environ of a request (PEP 3333).

use std::os::fd::AsRawFd;

use forkwarden_worker::app::{Request, RequestBody};
use percent_encoding::percent_decode_str;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::{KEY_CACHE, Wsgi};

impl Wsgi {
    pub(crate) fn environ<'py>(
        &mut self,
        py: Python<'py>,
        request: &Request,
    ) -> PyResult<Bound<'py, PyDict>> {
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
}

/// A str of the code points of `bytes` (latin-1), as PEP 3333 has bytes carried in str.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&byte| char::from(byte)).collect()
}
