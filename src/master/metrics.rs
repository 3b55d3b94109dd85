//! The metrics listener (`metrics_listen`): the master's own small HTTP endpoint for
//! operators, answered from its poll loop like the control socket (never waiting on a
//! client, see answers.rs). It is not the application's socket: the master still never
//! touches a client connection of the application.
//!
//! - `/metrics`: Prometheus metrics, in the classic text format or, asked for, OpenMetrics
//!   (exposition.rs);
//! - `/status`: a self-contained HTML page that shows the workers live (status_page.html);
//! - `/status.json`: what that page reads, the same JSON as `forkwarden status --json`.

use std::io;
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};
use tracing::{debug, info};

use super::Master;
use super::answers::{self, Conversations, Reply};
use super::exposition::{Exposition, Format, Histogram, Labels};
use super::survey::{Survey, WorkerStateName};
use super::tokens::EventSource;

/// The status page: one file, no external assets; it reads `/status.json` every second.
const STATUS_PAGE: &str = include_str!("status_page.html");
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(super) struct MetricsListener {
    listener: TcpListener,
    connections: Conversations<TcpStream>,
}

impl MetricsListener {
    /// Listens on `address` (`metrics_listen`).
    pub(super) fn bind(address: SocketAddr, registry: &Registry) -> io::Result<Self> {
        let mut listener = TcpListener::bind(address)?;
        registry.register(
            &mut listener,
            EventSource::MetricsListener.token(),
            Interest::READABLE,
        )?;
        let bound = listener.local_addr()?;
        info!(
            address = %bound,
            "metrics on http://{bound}/metrics, status page on http://{bound}/status"
        );
        Ok(Self {
            listener,
            connections: Conversations::new(EventSource::MetricsConnection),
        })
    }

    /// Takes the connections waiting (past the most served at once, closed at once).
    pub(super) fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.connections.has_room() {
                        self.connections.listen(stream, registry);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    debug!("accepting on the metrics listener failed: {error}");
                    return;
                }
            }
        }
    }

    pub(super) fn expire(&mut self, now: std::time::Instant, registry: &Registry) {
        self.connections.expire(now, registry);
    }

    pub(super) fn next_deadline(&self) -> Option<std::time::Instant> {
        self.connections.next_deadline()
    }
}

impl Master {
    /// Connection `key` of the metrics listener is ready: reads its request, or writes
    /// more of its answer.
    pub(super) fn serve_metrics_connection(&mut self, key: usize) {
        let Some(mut metrics) = self.metrics.take() else {
            return;
        };
        metrics
            .connections
            .progress(key, self.poll.registry(), |request| {
                self.metrics_reply(request)
            });
        self.metrics = Some(metrics);
    }

    /// The answer to what a connection sent so far, once it is a whole request head.
    fn metrics_reply(&self, request: &[u8]) -> Reply {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        let (method, path) = match parsed.parse(request) {
            Ok(httparse::Status::Complete(_)) => (
                parsed.method.unwrap_or(""),
                parsed.path.unwrap_or("").split('?').next().unwrap_or(""),
            ),
            Ok(httparse::Status::Partial) if request.len() < answers::MAX_REQUEST => {
                return Reply::NeedMore;
            }
            Ok(httparse::Status::Partial) => {
                return Reply::Answer(plain(431, "Request Header Fields Too Large", false));
            }
            Err(_) => return Reply::Answer(plain(400, "Bad Request", false)),
        };
        let head_only = method == "HEAD";
        if method != "GET" && !head_only {
            return Reply::Answer(plain(405, "Method Not Allowed", false));
        }
        // Prometheus asks for OpenMetrics; other readers (promtool, curl) get the classic
        // text format, as the Go client does.
        let wants_openmetrics = parsed.headers.iter().any(|header| {
            header.name.eq_ignore_ascii_case("accept")
                && String::from_utf8_lossy(header.value).contains("application/openmetrics-text")
        });
        /// What the metrics port offers, for whoever opens it in a browser.
        const INDEX_PAGE: &str = "<!doctype html><title>forkwarden</title><h1>forkwarden</h1>\
            <ul><li><a href=\"/status\">/status</a>: the workers, live</li>\
            <li><a href=\"/status.json\">/status.json</a>: the same as JSON</li>\
            <li><a href=\"/metrics\">/metrics</a>: for Prometheus</li></ul>\n";
        let (content_type, body) = match path {
            "/metrics" if wants_openmetrics => (
                OPENMETRICS,
                metrics_text(&self.survey(), Format::OpenMetrics).into_bytes(),
            ),
            "/metrics" => (
                CLASSIC_TEXT,
                metrics_text(&self.survey(), Format::Classic).into_bytes(),
            ),
            "/status" => ("text/html; charset=utf-8", STATUS_PAGE.as_bytes().to_vec()),
            "/status.json" => ("application/json", self.status_json()),
            "/" => ("text/html; charset=utf-8", INDEX_PAGE.as_bytes().to_vec()),
            _ => return Reply::Answer(plain(404, "Not Found", head_only)),
        };
        Reply::Answer(response(200, "OK", content_type, &body, head_only))
    }
}

/// A whole HTTP/1.1 response that closes the connection.
fn response(
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        answer.extend_from_slice(body);
    }
    answer
}

fn plain(status: u16, reason: &str, head_only: bool) -> Vec<u8> {
    let body = format!(
        "{status} {reason}\nforkwarden's metrics listener serves /metrics, /status and \
         /status.json\n"
    );
    response(
        status,
        reason,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        head_only,
    )
}

/// `survey` as Prometheus metrics in `format` (written on each scrape; nothing is kept
/// between).
fn metrics_text(survey: &Survey, format: Format) -> String {
    let mut metrics = Exposition::new(format);
    request_metrics(&mut metrics, survey);
    worker_metrics(&mut metrics, survey);
    event_metrics(&mut metrics, survey);
    metrics.finish()
}

/// Requests served, and how long HTTP requests took.
fn request_metrics(metrics: &mut Exposition, survey: &Survey) {
    metrics.counter(
        "forkwarden_requests",
        "Requests served (by cron workers: jobs run), workers that ended included.",
        survey
            .served
            .iter()
            .map(|(role, served)| (vec![("role", role.to_string())], served.count)),
    );
    if let Some(http) = survey.served.get("http") {
        metrics.histogram(
            "forkwarden_request_duration_seconds",
            "How long HTTP requests took, from the worker taking one (read whole) to its \
                 last byte sent.",
            &[Histogram::of_durations(
                vec![("role", "http".to_string())],
                http,
            )],
        );
    }
}

/// The workers: how many by role and state, and each one's memory and CPU.
fn worker_metrics(metrics: &mut Exposition, survey: &Survey) {
    metrics.gauge(
        "forkwarden_workers",
        "Workers by role and state.",
        ["http", "cron", "job"].into_iter().flat_map(|role| {
            WorkerStateName::ALL.into_iter().map(move |state| {
                let count = survey
                    .workers
                    .iter()
                    .filter(|worker| worker.role == role && worker.state == state)
                    .count() as i64;
                (
                    vec![
                        ("role", role.to_string()),
                        ("state", state.as_str().to_string()),
                    ],
                    count,
                )
            })
        }),
    );
    metrics.gauge(
        "forkwarden_workers_wanted",
        "Workers the config asks for, by role.",
        [
            ("http", survey.http_workers.wanted),
            ("cron", survey.cron_workers.wanted),
            ("job", survey.job_workers.wanted),
        ]
        .map(|(role, wanted)| (vec![("role", role.to_string())], i64::from(wanted))),
    );
    // The pid tells apart a worker and its replacement while both are alive (a recycle).
    let worker_labels = |worker: &super::survey::WorkerSurvey| {
        let mut labels = vec![
            ("role", worker.role.to_string()),
            ("slot", worker.slot.to_string()),
            ("pid", worker.pid.to_string()),
        ];
        labels.extend(worker.program.map(|name| ("program", name.to_string())));
        labels
    };
    metrics.gauge(
        "forkwarden_worker_resident_memory_bytes",
        "Resident memory of each worker (a program's with its children).",
        survey
            .workers
            .iter()
            .filter_map(|worker| Some((worker_labels(worker), worker.rss_bytes?))),
    );
    metrics.counter(
        "forkwarden_worker_cpu_seconds",
        "CPU time (user and system) each worker has used.",
        survey
            .workers
            .iter()
            .filter_map(|worker| Some((worker_labels(worker), worker.cpu_seconds?))),
    );
}

/// The job kinds' attempts (this server's), and the queue as a job worker last read it.
fn job_metrics(metrics: &mut Exposition, survey: &Survey) {
    metrics.counter(
        "forkwarden_job_attempts",
        "Attempts of queued jobs that this server's job workers ended since it started, by \
         kind and outcome.",
        survey.job_kinds.iter().flat_map(|kind| {
            kind.outcomes.iter().map(|(outcome, count)| {
                (
                    vec![
                        ("kind", kind.name.clone()),
                        ("outcome", outcome.to_string()),
                    ],
                    *count,
                )
            })
        }),
    );
    metrics.counter(
        "forkwarden_job_fates",
        "What became of queued jobs after the attempts this server's job workers recorded, by \
         kind: done, retried, failed (no attempt left) or cancelled.",
        survey.job_kinds.iter().flat_map(|kind| {
            kind.fates.iter().map(|(fate, count)| {
                (
                    vec![("kind", kind.name.clone()), ("fate", fate.to_string())],
                    *count,
                )
            })
        }),
    );
    metrics.gauge(
        "forkwarden_job_kind_running",
        "Whether a job worker of this server runs a job of the kind now.",
        survey
            .job_kinds
            .iter()
            .map(|kind| (vec![("kind", kind.name.clone())], i64::from(kind.running))),
    );
    if survey.job_kinds.is_empty() {
        return;
    }
    let kind_label = |name: &str| vec![("kind", name.to_string())];
    metrics.histogram(
        "forkwarden_job_wait_seconds",
        "How long the jobs this server's job workers started waited, from due (enqueued, \
         their eta or their retry's time) to their start.",
        &survey
            .job_kinds
            .iter()
            .map(|kind| Histogram::of_durations(kind_label(&kind.name), &kind.waited))
            .collect::<Vec<_>>(),
    );
    metrics.histogram(
        "forkwarden_job_run_seconds",
        "How long the attempts this server's job workers ended ran.",
        &survey
            .job_kinds
            .iter()
            .map(|kind| Histogram::of_durations(kind_label(&kind.name), &kind.ran))
            .collect::<Vec<_>>(),
    );
    let channel_label =
        |name: &Option<String>| name.clone().unwrap_or_else(|| "(other)".to_string());
    metrics.gauge(
        "forkwarden_job_channel_capacity",
        "Running jobs a channel allows at once over every host ([[channel]] capacity).",
        survey.job_channels.iter().filter_map(|channel| {
            Some((
                vec![("channel", channel_label(&channel.name))],
                channel.capacity?,
            ))
        }),
    );
    let Some(read_at) = survey.job_queue_read_at else {
        return;
    };
    metrics.gauge(
        "forkwarden_jobs",
        "Jobs waiting (pending, due or not) and running over every host, by channel, as a \
         job worker of this server last counted them.",
        survey.job_channels.iter().flat_map(|channel| {
            [("pending", channel.waiting), ("running", channel.running)]
                .into_iter()
                .filter_map(move |(state, count)| {
                    Some((
                        vec![
                            ("state", state.to_string()),
                            ("channel", channel_label(&channel.name)),
                        ],
                        count?,
                    ))
                })
        }),
    );
    metrics.gauge(
        "forkwarden_jobs_counted_timestamp_seconds",
        "When a job worker of this server last counted the jobs (Unix time).",
        [(Labels::new(), read_at)],
    );
}

/// What happened since the start (ends, limits, cron runs), and the master itself.
fn event_metrics(metrics: &mut Exposition, survey: &Survey) {
    metrics.counter(
        "forkwarden_worker_ends",
        "Workers that ended since the start, by cause (each was replaced unless stopping).",
        survey
            .ends
            .iter()
            .map(|(cause, count)| (vec![("cause", cause.clone())], *count)),
    );
    metrics.counter(
        "forkwarden_limit_enforcements",
        "Limits enforced since the start, by limit (its config key).",
        survey
            .limits_enforced
            .iter()
            .map(|(limit, count)| (vec![("limit", limit.clone())], *count)),
    );
    metrics.counter(
        "forkwarden_cron_runs",
        "Cron job runs that this server's cron workers ended since it started, by job and result.",
        survey.cron_jobs.iter().flat_map(|job| {
            [("succeeded", job.succeeded), ("failed", job.failed)].map(|(result, count)| {
                (
                    vec![("job", job.name.clone()), ("result", result.to_string())],
                    count,
                )
            })
        }),
    );
    metrics.gauge(
        "forkwarden_cron_job_running",
        "Whether a cron worker of this server runs the job now.",
        survey
            .cron_jobs
            .iter()
            .map(|job| (vec![("job", job.name.clone())], i64::from(job.running))),
    );
    job_metrics(metrics, survey);
    if let Some(rss) = survey.master.rss_bytes {
        metrics.gauge(
            "forkwarden_master_resident_memory_bytes",
            "Resident memory of the master process.",
            [(Labels::new(), rss)],
        );
    }
    metrics.gauge(
        "forkwarden_config_generation",
        "Config generation (1 at start, one more per reload).",
        [(Labels::new(), survey.master.generation)],
    );
}
