//! The access log (`access_log = true`): one line per request, written by the HTTP worker
//! that served it straight to the log's destination (one `write`, so lines of different
//! workers never mix), never through the master.
//!
//! In text, the combined log format that log tools read (Apache's and nginx's), followed by
//! the time the request took and the worker that served it:
//!
//! ```text
//! 127.0.0.1 - - [29/Nov/2026:03:01:18 +0000] "GET /page?q=1 HTTP/1.1" 200 5120 "-" "curl/8.5.0" 1843us http-0 pid=4312
//! ```
//!
//! With `log_format = "json"`, an object with the same facts as fields (`event` is
//! `"access"`), beside the other JSON log lines.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use crate::http::Request;
use crate::id::WorkerId;
use crate::settings::HttpSettings;

/// Writes the access lines of one worker.
pub(super) struct AccessLog {
    json: bool,
    /// `http-0`: the worker's slot, as the line shows it.
    worker: String,
    pid: u32,
}

/// A request as it was served.
pub(super) struct Served<'a> {
    /// None: it could not be read (answered 400, 408, 413... and closed).
    pub request: Option<&'a Request>,
    /// The client's address (the proxy's word for it with `proxy_mode`).
    pub remote: Option<IpAddr>,
    pub status: u16,
    /// Bytes of the response's body sent.
    pub bytes: u64,
    /// From the request's whole arrival to the end of its response.
    pub duration: Duration,
}

impl AccessLog {
    /// The access log of worker `id`, if `access_log` is on.
    pub(super) fn new(settings: &HttpSettings, id: WorkerId) -> Option<Self> {
        settings.access_log.then(|| Self {
            json: settings.json_log(),
            worker: format!("{}-{}", id.role.as_str(), id.slot),
            pid: std::process::id(),
        })
    }

    pub(super) fn record(&self, served: &Served<'_>) {
        let now = chrono::Utc::now();
        let line = if self.json {
            self.json_line(served, now)
        } else {
            self.text_line(served, now)
        };
        crate::log::write_line(line.as_bytes());
    }

    fn text_line(&self, served: &Served<'_>, now: chrono::DateTime<chrono::Utc>) -> String {
        let mut line = String::with_capacity(256);
        let remote = served
            .remote
            .map_or_else(|| "-".to_string(), |remote| remote.to_string());
        let request_line = served.request.map_or_else(
            || "-".to_string(),
            |request| {
                format!(
                    "{} {} {}",
                    request.method(),
                    request.target(),
                    protocol(request)
                )
            },
        );
        let header = |name| {
            served
                .request
                .and_then(|request| request.header(name))
                .map_or_else(|| "-".to_string(), escaped)
        };
        let _ = writeln!(
            line,
            "{remote} - - [{}] \"{}\" {} {} \"{}\" \"{}\" {}us {} pid={}",
            now.format("%d/%b/%Y:%H:%M:%S %z"),
            escaped(request_line.as_bytes()),
            served.status,
            served.bytes,
            header("referer"),
            header("user-agent"),
            served.duration.as_micros(),
            self.worker,
            self.pid,
        );
        line
    }

    fn json_line(&self, served: &Served<'_>, now: chrono::DateTime<chrono::Utc>) -> String {
        let request = served.request;
        let header = |name| {
            request
                .and_then(|request| request.header(name))
                .map(|value| String::from_utf8_lossy(value).into_owned())
        };
        let object = serde_json::json!({
            "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "INFO",
            "event": "access",
            "remote_addr": served.remote.map(|remote| remote.to_string()),
            "method": request.map(Request::method),
            "path": request.map(Request::path),
            "query": request.and_then(Request::query),
            "protocol": request.map(protocol),
            "status": served.status,
            "bytes": served.bytes,
            "duration_us": u64::try_from(served.duration.as_micros()).unwrap_or(u64::MAX),
            "referer": header("referer"),
            "user_agent": header("user-agent"),
            "worker": self.worker,
            "pid": self.pid,
        });
        let mut line = object.to_string();
        line.push('\n');
        line
    }
}

fn protocol(request: &Request) -> &'static str {
    if request.is_http10() {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    }
}

/// `bytes` as text fit to sit between quotes in a line: `"`, `\` and anything not printable
/// ASCII written as `\xNN`, as nginx does, so that no client can forge or break a line.
fn escaped(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &byte in bytes {
        if byte.is_ascii_graphic() && byte != b'"' && byte != b'\\' || byte == b' ' {
            text.push(char::from(byte));
        } else {
            let _ = write!(text, "\\x{byte:02X}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::RequestReader;
    use crate::id::Role;

    fn served(request: &Request) -> Served<'_> {
        Served {
            request: Some(request),
            remote: "127.0.0.1".parse().ok(),
            status: 200,
            bytes: 12,
            duration: Duration::from_micros(1843),
        }
    }

    fn log(json: bool) -> AccessLog {
        let settings = HttpSettings {
            socket_timeout: None,
            request_timeout: None,
            max_body_size: None,
            proxy_mode: false,
            access_log: true,
            limits: crate::limits::WorkerLimits {
                address_space: None,
                requests: 0,
                requests_jitter: 0,
                cpu_per_request: None,
            },
            log: crate::log::LogSettings {
                format: if json {
                    crate::log::LogFormat::Json
                } else {
                    crate::log::LogFormat::Text
                },
                level: crate::log::LogLevel::Info,
                file: None,
            },
        };
        AccessLog::new(
            &settings,
            WorkerId {
                role: Role::Http,
                slot: 3,
            },
        )
        .unwrap()
    }

    fn request(input: &[u8]) -> Request {
        let mut buffer = input.to_vec();
        RequestReader::new(None).next(&mut buffer).unwrap().unwrap()
    }

    #[test]
    fn text_lines_are_combined_format_with_the_time_taken_and_the_worker() {
        let request =
            request(b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: say \"hi\"\\\xe9\r\n\r\n");
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T03:01:18Z")
            .unwrap()
            .to_utc();
        let line = log(false).text_line(&served(&request), now);
        let pid = std::process::id();
        assert_eq!(
            line,
            format!(
                "127.0.0.1 - - [29/Nov/2026:03:01:18 +0000] \"GET /a?b=1 HTTP/1.1\" 200 12 \"-\" \
                 \"say \\x22hi\\x22\\x5C\\xE9\" 1843us http-3 pid={pid}\n"
            )
        );
    }

    #[test]
    fn json_lines_carry_the_facts_as_fields() {
        let request = request(b"POST /x?y HTTP/1.0\r\nReferer: http://r/\r\n\r\n");
        let line = log(true).json_line(&served(&request), chrono::Utc::now());
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["event"], "access");
        assert_eq!(value["method"], "POST");
        assert_eq!(value["path"], "/x");
        assert_eq!(value["query"], "y");
        assert_eq!(value["protocol"], "HTTP/1.0");
        assert_eq!(value["status"], 200);
        assert_eq!(value["bytes"], 12);
        assert_eq!(value["duration_us"], 1843);
        assert_eq!(value["referer"], "http://r/");
        assert_eq!(value["user_agent"], serde_json::Value::Null);
        assert_eq!(value["worker"], "http-3");
        assert_eq!(value["remote_addr"], "127.0.0.1");
        assert!(line.ends_with("}\n"));
    }
}
