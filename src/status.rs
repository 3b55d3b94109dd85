//! `forkwarden status`: asks the running master over its control socket
//! (`data_dir/forkwarden.sock`, see `master::control`) and shows the answer, as a table or
//! as the JSON the master sent.

use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;
use crate::format::{columns, elapsed, mib};

/// How long the master may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest answer read.
const ANSWER_MAX: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "no forkwarden master answers on {}: {source} (is the server running with this config?)",
        path.display()
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error("reading the master's answer on {} failed: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("the master's answer is not JSON: {0}")]
    Answer(#[from] serde_json::Error),
    #[error("cannot write the status: {0}")]
    Write(io::Error),
}

/// The master's status for `config`, as it sent it.
pub fn ask(config: &Config) -> Result<Value, StatusError> {
    let path = crate::master::control_socket_path(config);
    let mut stream = UnixStream::connect(&path).map_err(|source| StatusError::Connect {
        path: path.clone(),
        source,
    })?;
    let read = |source| StatusError::Read {
        path: path.clone(),
        source,
    };
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(read)?;
    // Whatever listens there answers: a bounded read (the socket is in data_dir, which
    // may be the workers' user's).
    let mut text = Vec::new();
    (&mut stream)
        .take(ANSWER_MAX)
        .read_to_end(&mut text)
        .map_err(read)?;
    Ok(serde_json::from_slice(&text)?)
}

/// Prints the status once, or every second with `watch` (until interrupted).
pub fn run(config: &Config, json: bool, watch: bool) -> Result<(), StatusError> {
    loop {
        let status = ask(config)?;
        // What workers and programs wrote (a request line, a STATUS=) is shown, not obeyed.
        let text = if json {
            crate::format::json_for_terminal(&status)? + "\n"
        } else {
            crate::format::escape_controls(&render(&status), true).into_owned()
        };
        let mut out = io::stdout().lock();
        if watch && out.is_terminal() {
            // Clear the terminal and go home, as `watch` does; into a pipe or a file, each
            // snapshot simply follows the last one.
            out.write_all(b"\x1b[2J\x1b[H")
                .map_err(StatusError::Write)?;
        }
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(StatusError::Write)?;
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The status as a summary and a table of workers.
pub fn render(status: &Value) -> String {
    let master = &status["master"];
    let seconds = |value: &Value| elapsed(Duration::from_secs_f64(value.as_f64().unwrap_or(0.0)));
    let bytes = |value: &Value| value.as_u64().map_or_else(|| "-".to_string(), mib);
    let counts = |value: &Value| {
        value.as_object().filter(|map| !map.is_empty()).map_or_else(
            || "none".to_string(),
            |map| {
                map.iter()
                    .map(|(key, count)| format!("{key} {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        )
    };
    let mut text = format!(
        "forkwarden master pid {}, config generation {}, up {}, rss {}{}{}\n",
        master["pid"],
        master["generation"],
        seconds(&master["uptime_seconds"]),
        bytes(&master["rss_bytes"]),
        master["listening"]
            .as_str()
            .map_or_else(String::new, |address| format!(", listening on {address}")),
        if master["stopping"].as_bool() == Some(true) {
            ", stopping"
        } else {
            ""
        }
    );
    let limits = &status["limits"];
    text.push_str(&format!(
        "http workers {}/{}, cron workers {}/{}{}; requests served: {}\n\
         limits: memory soft {}, hard {}; time real {}, cpu {}\n\
         workers ended: {}\nlimits enforced: {}\n",
        status["http_workers"]["running"],
        status["http_workers"]["wanted"],
        status["cron_workers"]["running"],
        status["cron_workers"]["wanted"],
        match status["job_workers"]["wanted"].as_u64() {
            Some(wanted) if wanted > 0 => format!(
                ", job workers {}/{wanted}",
                status["job_workers"]["running"]
            ),
            _ => String::new(),
        },
        status["requests"],
        limit_bytes(&limits["limit_memory_soft"]),
        limit_bytes(&limits["limit_memory_hard"]),
        seconds(&limits["limit_time_real"]),
        seconds(&limits["limit_time_cpu"]),
        counts(&status["ends"]),
        counts(&status["limits_enforced"]),
    ));
    text.push_str(&tasks_line(status, "cron_jobs", "cron jobs"));
    text.push_str(&tasks_line(status, "job_kinds", "job kinds (attempts)"));
    text.push_str(&channels_line(status));
    text.push('\n');
    text.push_str(&worker_table(status));
    let deaths = status["recent_deaths"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !deaths.is_empty() {
        text.push_str("\nrecent ends (newest first):\n");
        for death in deaths {
            let at = death["at"]
                .as_i64()
                .and_then(|at| chrono::DateTime::from_timestamp(at, 0))
                .map_or_else(String::new, |at| {
                    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
                });
            text.push_str(&format!(
                "  {at}  {}\n",
                death["line"].as_str().unwrap_or("")
            ));
        }
    }
    text
}

/// `cron jobs: report (2 ok, 1 failed, running)` (for `key` = `cron_jobs`, said as
/// `what`), or nothing without jobs.
fn tasks_line(status: &Value, key: &str, what: &str) -> String {
    let jobs: Vec<String> = status[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|job| {
            format!(
                "{} ({} ok, {} failed{})",
                job["name"].as_str().unwrap_or("?"),
                job["succeeded"],
                job["failed"],
                if job["running"].as_bool() == Some(true) {
                    ", running"
                } else {
                    ""
                }
            )
        })
        .collect();
    if jobs.is_empty() {
        return String::new();
    }
    format!("{what}: {}\n", jobs.join(", "))
}

/// `job channels: root (4 waiting, 2 running), csv (capacity 1: 0 waiting, 1 running)`,
/// as a job worker last counted them, or nothing without job kinds.
fn channels_line(status: &Value) -> String {
    let channels: Vec<String> = status["job_channels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|channel| {
            let name = channel["name"].as_str().unwrap_or("other channels");
            let capacity = channel["capacity"]
                .as_u64()
                .map_or_else(String::new, |capacity| format!("capacity {capacity}: "));
            let jobs = match (channel["waiting"].as_u64(), channel["running"].as_u64()) {
                (Some(waiting), Some(running)) => format!("{waiting} waiting, {running} running"),
                _ => "not counted yet".to_string(),
            };
            format!("{name} ({capacity}{jobs})")
        })
        .collect();
    if channels.is_empty() {
        return String::new();
    }
    format!("job channels: {}\n", channels.join(", "))
}

/// One row per worker (and per preload template), in columns.
fn worker_table(status: &Value) -> String {
    let seconds = |value: &Value| elapsed(Duration::from_secs_f64(value.as_f64().unwrap_or(0.0)));
    let bytes = |value: &Value| value.as_u64().map_or_else(|| "-".to_string(), mib);
    let mut table = vec![
        [
            "ROLE", "SLOT", "PID", "GEN", "STATE", "FOR", "REQUEST", "RSS", "CPU", "SERVED", "UP",
        ]
        .map(String::from),
    ];
    for worker in status["workers"].as_array().into_iter().flatten() {
        let text = |key: &str| match &worker[key] {
            Value::String(text) => text.clone(),
            Value::Null => "-".to_string(),
            other => other.to_string(),
        };
        table.push([
            // A companion program by its name (`websocket`), others by their role.
            match &worker["program"] {
                Value::String(name) => name.clone(),
                _ => text("role"),
            },
            text("slot"),
            text("pid"),
            text("generation"),
            text("state"),
            worker["busy_seconds"]
                .as_f64()
                .map_or_else(|| "-".to_string(), |_| seconds(&worker["busy_seconds"])),
            // A job's progress after its name: `job export #12 (3/10)`.
            match (&worker["request"], &worker["progress"]) {
                (Value::String(request), Value::Object(progress)) => format!(
                    "{request} ({}/{})",
                    progress.get("done").unwrap_or(&Value::Null),
                    progress.get("total").unwrap_or(&Value::Null)
                ),
                _ => text("request"),
            },
            bytes(&worker["rss_bytes"]),
            worker["cpu_seconds"]
                .as_f64()
                .map_or_else(|| "-".to_string(), |cpu| format!("{cpu:.2}s")),
            text("requests"),
            seconds(&worker["uptime_seconds"]),
        ]);
    }
    columns(&table)
}

fn limit_bytes(value: &Value) -> String {
    match value.as_u64() {
        Some(0) | None => "off".to_string(),
        Some(bytes) => mib(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_worker_and_the_tallies() {
        let status = serde_json::json!({
            "master": {"pid": 10, "generation": 2, "uptime_seconds": 75.0, "stopping": false,
                       "rss_bytes": 3_670_016, "listening": "http://127.0.0.1:8069"},
            "limits": {"limit_memory_soft": 0, "limit_memory_hard": 2_684_354_560_u64,
                       "limit_time_real": 120.0, "limit_time_cpu": 60.0},
            "http_workers": {"wanted": 2, "running": 2},
            "cron_workers": {"wanted": 0, "running": 0},
            "requests": 42,
            "ends": {"replaced": 2},
            "limits_enforced": {},
            "recent_deaths": [{"at": 0, "pid": 9, "line": "http worker 1 (pid 9) died"}],
            "workers": [
                {"role": "http", "slot": 0, "pid": 11, "generation": 2, "state": "busy",
                 "request": "GET /slow", "busy_seconds": 1.5, "rss_bytes": 20_971_520,
                 "cpu_seconds": 0.25, "requests": 40, "uptime_seconds": 60.0},
                {"role": "http", "slot": 1, "pid": 12, "generation": 2, "state": "idle",
                 "request": null, "busy_seconds": null, "rss_bytes": null,
                 "cpu_seconds": null, "requests": 2, "uptime_seconds": 1.0},
                {"role": "program", "program": "websocket", "slot": 0, "pid": 13,
                 "generation": 2, "state": "idle", "request": null, "busy_seconds": null,
                 "rss_bytes": null, "cpu_seconds": null, "requests": 0, "uptime_seconds": 1.0},
                {"role": "template", "program": null, "slot": 0, "pid": 14,
                 "generation": 2, "state": "idle", "request": null, "busy_seconds": null,
                 "rss_bytes": 115_343_360, "cpu_seconds": 1.5, "requests": 0,
                 "uptime_seconds": 70.0}
            ],
            "cron_jobs": [{"name": "report", "runs": 3, "succeeded": 2, "failed": 1,
                           "running": true}]
        });
        let text = render(&status);
        assert!(
            text.contains("master pid 10, config generation 2, up 1m15s"),
            "{text}"
        );
        assert!(
            text.contains("http workers 2/2, cron workers 0/0; requests served: 42"),
            "{text}"
        );
        assert!(text.contains("memory soft off, hard 2560 MiB"), "{text}");
        assert!(text.contains("workers ended: replaced 2"), "{text}");
        assert!(text.contains("limits enforced: none"), "{text}");
        assert!(
            text.contains("busy   1.5s  GET /slow  20 MiB   0.25s  40"),
            "{text}"
        );
        assert!(text.contains("http worker 1 (pid 9) died"), "{text}");
        assert!(
            text.contains(", listening on http://127.0.0.1:8069"),
            "{text}"
        );
        assert!(text.contains("\nwebsocket  0"), "{text}");
        assert!(
            text.contains("\ntemplate   0     14   2    idle   -     -          110 MiB"),
            "{text}"
        );
        assert!(
            text.contains("cron jobs: report (2 ok, 1 failed, running)"),
            "{text}"
        );
        assert!(!text.contains("job channels"), "{text}");
    }

    #[test]
    fn job_workers_show_their_jobs_progress_and_the_channels() {
        let status = serde_json::json!({
            "workers": [
                {"role": "job", "slot": 0, "pid": 11, "generation": 1, "state": "busy",
                 "request": "job export #12", "busy_seconds": 1.5, "rss_bytes": null,
                 "cpu_seconds": null, "requests": 3, "uptime_seconds": 60.0,
                 "progress": {"done": 3, "total": 10}}
            ],
            "job_channels": [
                {"name": "csv", "capacity": 1, "waiting": 4, "running": 1},
                {"name": "root", "capacity": null, "waiting": null, "running": null},
                {"name": null, "capacity": null, "waiting": 2, "running": 0}
            ]
        });
        let text = render(&status);
        assert!(text.contains("job export #12 (3/10)"), "{text}");
        assert!(
            text.contains(
                "job channels: csv (capacity 1: 4 waiting, 1 running), root (not counted \
                 yet), other channels (2 waiting, 0 running)\n"
            ),
            "{text}"
        );
    }
}
