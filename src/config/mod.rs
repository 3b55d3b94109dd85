//! The configuration file: schema, defaults, units and validation, in one place.
//!
//! Keys are top-level and use Odoo's option names, so each field below is named exactly as
//! it is written in the TOML file and documented in docs/configuration.md. A config that fails to parse
//! or to validate is reported with the file, line, key, bad value and what is accepted, and
//! nothing is bound or forked.

mod account;
mod environment;
mod jobs;
mod odoo;
mod schedule;
mod source;
mod store_url;
mod units;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_path_to_error::Segment;

pub use account::RunAs;
use forkwarden_worker::limits::WorkerLimits;
pub use forkwarden_worker::log::{LogFormat, LogLevel};
use forkwarden_worker::log::{LogOwner, LogSettings};
use forkwarden_worker::settings::HttpSettings;
pub use jobs::{JobAction, JobChannel, JobKind, ROOT_CHANNEL, default_retry_delay};
pub use odoo::OdooOptions;
pub use schedule::CronExpression;
pub use source::{ConfigSource, SERVE_PORT, ServeOptions, default_python};
pub use store_url::{CronStoreUrl, PASSWORD_VARIABLES};
pub use units::{ByteSize, CronTimeLimit, TimeSpan};

/// What a memory limit is compared with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryMeasure {
    /// Resident memory (RSS): what the worker really uses.
    #[default]
    Rss,
    /// The virtual size (address space), as Odoo measures `limit_memory_soft`.
    Virtual,
}

/// Everything forkwarden reads from its config file, with Odoo's defaults filled in.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP socket binds to (`0.0.0.0` or `::` for every interface).
    #[serde(deserialize_with = "ip_address")]
    pub http_interface: IpAddr,
    /// Port the HTTP socket binds to; 0 picks a free port (logged at start).
    pub http_port: u16,
    /// Number of HTTP worker processes (0: no HTTP, cron workers only).
    pub workers: u32,
    /// Number of cron worker processes.
    pub max_cron_threads: u32,
    /// Requests a worker serves before it is recycled (0: no limit).
    pub limit_request: u64,
    /// A random 0..=N added to each worker's `limit_request`, so that workers started
    /// together are not all recycled at the same moment.
    pub limit_request_jitter: u64,
    /// Resident memory past which a worker finishes its request and is recycled (0: off).
    pub limit_memory_soft: ByteSize,
    /// What `limit_memory_soft` is compared with: resident memory (`"rss"`, forkwarden's
    /// default), or the virtual size (`"virtual"`, Odoo's: the same number recycles a worker
    /// much sooner).
    pub limit_memory_soft_measure: MemoryMeasure,
    /// Memory past which a worker is killed at once (0: off).
    pub limit_memory_hard: ByteSize,
    /// Also cap each worker's address space at `limit_memory_hard` (RLIMIT_AS, as Odoo does).
    /// Turn off for runtimes that reserve much more virtual memory than they use; the master's
    /// RSS polling still enforces the limit.
    pub limit_memory_hard_rlimit: bool,
    /// How often the master reads each worker's RSS and checks the time limits.
    pub memory_poll_interval: TimeSpan,
    /// CPU time a single request may use (whole seconds; 0: off).
    pub limit_time_cpu: TimeSpan,
    /// Wall-clock time a single request may take (0: off).
    pub limit_time_real: TimeSpan,
    /// Wall-clock time a cron job may take (-1: same as `limit_time_real`; 0: off).
    pub limit_time_real_cron: CronTimeLimit,
    /// Age past which a cron worker finishes its job and is replaced (0: never).
    pub limit_time_worker_cron: TimeSpan,
    /// Length of the kernel's queue of connections not yet accepted.
    pub listen_backlog: u32,
    /// How long a client may keep the server waiting (0: for ever): for the whole request
    /// head, between two pieces of a body, for a write of the response to progress, and
    /// on an idle kept-alive connection.
    pub http_socket_timeout: TimeSpan,
    /// How long a whole request, head and body, may take to arrive (0: no bound).
    pub http_request_timeout: TimeSpan,
    /// Largest request body accepted; larger ones get 413 (0: no limit).
    pub http_max_body_size: ByteSize,
    /// How long workers may take to finish their current request when told to stop.
    pub graceful_timeout: TimeSpan,
    /// How long a new worker may take to be ready (its application built, or a program's
    /// `READY=1`); past it, it is killed as a failed start (0: no bound).
    pub ready_timeout: TimeSpan,
    /// How long a worker that is not serving a request may show no sign of life (a stopped
    /// or hung worker) before it is killed and replaced (0: never).
    pub heartbeat_timeout: TimeSpan,
    /// Run every worker, program and cron job as this user (the master binds as root first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Their group (default: the user's primary group); needs `user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `user` and `group` as the system knows them, resolved when the config is read.
    #[serde(skip)]
    pub run_as: Option<RunAs>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: LogLevel,
    /// One line per request from the HTTP workers (a program's too, with the worker kit):
    /// the combined log format, or a JSON object with `log_format = "json"`.
    pub access_log: bool,
    /// Take the `X-Forwarded-For`, `-Proto` and `-Host` headers as true (Odoo's option): for
    /// a server behind a proxy that sets them, never for one clients reach directly.
    pub proxy_mode: bool,
    /// Address of the master's metrics listener: Prometheus metrics at `/metrics`, a live
    /// status page at `/status` (its data at `/status.json`). Unset: none. It shows what
    /// the workers are serving (request lines included): keep it on loopback or behind a
    /// proxy that guards it.
    #[serde(
        default,
        deserialize_with = "socket_address",
        skip_serializing_if = "Option::is_none"
    )]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log file (relative to the config file's directory); unset: standard error.
    pub logfile: Option<PathBuf>,
    /// File the master writes its pid to (relative to the config file's directory).
    pub pidfile: Option<PathBuf>,
    /// Serve the built-in app's fault endpoints (`/sleep`, `/burn`, `/alloc`, `/crash`).
    pub demo_fault_endpoints: bool,
    /// Make every built-in app worker fail during boot (to see crash-loop protection).
    pub demo_crash_at_boot: bool,
    /// Make every built-in app worker take this long to boot (to see `ready_timeout`).
    pub demo_boot_delay: TimeSpan,
    /// Where cron job state and locks are kept (relative to the config file's directory).
    pub data_dir: PathBuf,
    /// An Odoo deployment: Odoo's config file (relative to this file's directory), read as
    /// `forkwarden odoo -c` reads it; the other keys of this file override what it implies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub odoo_config: Option<PathBuf>,
    /// With `odoo_config`: the directory that holds the `odoo` package (a source checkout's),
    /// when the Python cannot import it by itself (`forkwarden odoo --odoo-path`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub odoo_path: Option<PathBuf>,
    /// With `odoo_config`: the Python of the environment that holds Odoo's requirements
    /// (`forkwarden odoo --python`; default: the one beside forkwarden, else `python3`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub odoo_python: Option<PathBuf>,
    /// Where cron runs are claimed and recorded. Unset: files under `data_dir` (shared by the
    /// servers that share it). `postgresql://USER@HOST:PORT/DBNAME`: a PostgreSQL database
    /// shared by every host that runs these jobs, so each due run runs once across them all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron_store: Option<CronStoreUrl>,
    /// How long a run claimed in a PostgreSQL `cron_store` stays claimed unless its cron
    /// worker renews it (it does every quarter of this): after a host dies, its runs are
    /// recorded as interrupted, and the jobs taken over, this long after its last renewal.
    pub cron_lease: TimeSpan,
    /// A program each HTTP worker slot runs instead of the built-in app (`[app]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<ExecApp>,
    /// Companion programs supervised beside the HTTP workers (`[[program]]` tables).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub program: Vec<Program>,
    /// Scheduled jobs, run by the cron workers (`[[cron]]` tables).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cron: Vec<CronJob>,
    /// Job worker processes on this host, when `[[job]]` kinds are declared (queue_job's
    /// job runner; the channels bound how many run at once across hosts).
    pub job_workers: u32,
    /// How long done, failed and cancelled jobs are kept in the queue.
    pub job_retention: TimeSpan,
    /// Kinds of job run from the queue in `cron_store` (`[[job]]` tables).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub job: Vec<JobKind>,
    /// Channels with a capacity across hosts (`[[channel]]` tables).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channel: Vec<JobChannel>,
}

/// `[app]`: the program every HTTP worker slot runs. It gets the listening socket by
/// systemd's socket-activation convention (fd 3, `LISTEN_FDS=1`) and reports through
/// `NOTIFY_SOCKET` (sd_notify).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecApp {
    /// Program and arguments; run directly, never through a shell.
    pub command: Vec<String>,
    /// Working directory (relative to the config file's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Variables added to the program's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// How long a new program may take to send `READY=1` (default: the top-level
    /// `ready_timeout`); 0: the program does not speak sd_notify and counts as ready as
    /// soon as it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<TimeSpan>,
    /// Hand descriptor 3 over with O_NONBLOCK set (systemd's `NonBlocking=`). Off, as under
    /// systemd: a program that does a plain blocking `accept()` must not get EAGAIN.
    #[serde(default)]
    pub nonblocking: bool,
    /// Start the program once as a template that loads the application and forks every
    /// worker on the master's request (see docs/programs.md, "Preloading").
    #[serde(default)]
    pub preload: bool,
}

impl ExecApp {
    /// Whether the program is forkwarden's Python runner (`python3 -m forkwarden_wsgi`),
    /// which needs `nonblocking = true`.
    pub fn runs_forkwarden_wsgi(&self) -> bool {
        self.command
            .windows(2)
            .any(|pair| pair[0] == "-m" && pair[1] == "forkwarden_wsgi")
    }

    /// Whether the program reports `READY=1` (`ready_timeout` is not set to 0).
    pub fn notifies(&self) -> bool {
        self.ready_timeout.is_none_or(|timeout| !timeout.is_zero())
    }
}

/// One `[[program]]`: a program run in `count` instances beside the HTTP workers (Odoo's
/// websocket server, a queue consumer), with the same supervision as `[app]` programs.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    /// Names it in log lines (`websocket program 0 (pid 4312)`).
    pub name: String,
    /// Program and arguments; run directly, never through a shell.
    pub command: Vec<String>,
    /// How many instances run.
    #[serde(default = "one")]
    pub count: u32,
    /// An address to listen on, handed to each instance as descriptor 3 (as `[app]` gets
    /// the HTTP socket); none: it gets no socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// As in `[app]`: how long it may take to send READY=1; 0: it does not speak sd_notify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<TimeSpan>,
    /// As in `[app]`: O_NONBLOCK on its socket.
    #[serde(default)]
    pub nonblocking: bool,
}

fn one() -> u32 {
    1
}

impl Program {
    /// How it is started: exactly as an `[app]` program with the same settings.
    pub fn exec_app(&self) -> ExecApp {
        ExecApp {
            command: self.command.clone(),
            cwd: self.cwd.clone(),
            env: self.env.clone(),
            ready_timeout: self.ready_timeout,
            nonblocking: self.nonblocking,
            preload: false,
        }
    }
}

/// One `[[cron]]` job.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CronJob {
    /// Unique; names the job in logs and its files under `data_dir`.
    pub name: String,
    /// A 5-field cron expression (`"0 2 * * *"`), in the server's local time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<CronExpression>,
    /// Or: run every this long, counted from the start of the previous run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<TimeSpan>,
    /// Program and arguments; run directly, never through a shell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Or: a function of the preloaded application (`module:function`), called in a process
    /// forked from the template (`[app] preload = true`), without a cold start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// Working directory (relative to the config file's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Variables added to the job's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit of one run; overrides `limit_time_real_cron` (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeSpan>,
    /// Run once at start a run that fell due while the server was down (Odoo's behaviour).
    #[serde(default = "catch_up_default")]
    pub catch_up: bool,
}

fn catch_up_default() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_interface: IpAddr::V4(Ipv4Addr::LOCALHOST),
            http_port: 8069,
            workers: 2,
            max_cron_threads: 1,
            limit_request: 65536,
            limit_request_jitter: 0,
            limit_memory_soft: ByteSize::mib(2048),
            limit_memory_hard: ByteSize::mib(2560),
            limit_memory_hard_rlimit: true,
            limit_memory_soft_measure: MemoryMeasure::Rss,
            memory_poll_interval: TimeSpan(Duration::from_millis(100)),
            limit_time_cpu: TimeSpan::secs(60),
            limit_time_real: TimeSpan::secs(120),
            limit_time_real_cron: CronTimeLimit::SameAsHttp,
            limit_time_worker_cron: TimeSpan::secs(0),
            listen_backlog: 1024,
            http_socket_timeout: TimeSpan::secs(2),
            http_request_timeout: TimeSpan::secs(60),
            http_max_body_size: ByteSize::mib(64),
            graceful_timeout: TimeSpan::secs(30),
            ready_timeout: TimeSpan::secs(60),
            heartbeat_timeout: TimeSpan::secs(10),
            user: None,
            group: None,
            run_as: None,
            log_format: LogFormat::Text,
            log_level: LogLevel::Info,
            access_log: false,
            proxy_mode: false,
            metrics_listen: None,
            logfile: None,
            pidfile: None,
            demo_fault_endpoints: false,
            demo_crash_at_boot: false,
            demo_boot_delay: TimeSpan::secs(0),
            data_dir: PathBuf::from("forkwarden-data"),
            odoo_config: None,
            odoo_path: None,
            odoo_python: None,
            cron_store: None,
            cron_lease: TimeSpan::secs(60),
            job_workers: 1,
            job_retention: TimeSpan::secs(7 * 86_400),
            job: Vec::new(),
            channel: Vec::new(),
            app: None,
            program: Vec::new(),
            cron: Vec::new(),
        }
    }
}

/// Longest cron job name: it names files (`NAME.state.toml`, and a temporary file beside it
/// with a random suffix) that must fit the 255 bytes a file name may have.
const MAX_JOB_NAME: usize = 100;
/// Most instances of one `[[program]]`.
const MAX_PROGRAM_COUNT: u32 = 1024;

/// Shortest `cron_lease`: renewed every quarter of it, each renewal a round trip to the
/// database.
const MIN_CRON_LEASE: Duration = Duration::from_secs(2);

/// Shortest `heartbeat_timeout`: idle workers show life once a second.
const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a variable of forkwarden's own environment passes on to the programs, templates
/// and cron jobs it starts: not the service manager's (socket activation and notification,
/// meant for the master) nor the cron store's password. An `env` table may set any of them.
pub fn passed_to_children(name: &std::ffi::OsStr) -> bool {
    !crate::notify::SERVICE_MANAGER_VARIABLES
        .iter()
        .chain(&PASSWORD_VARIABLES)
        .any(|own| name == *own)
}

/// The most HTTP (or cron) workers one master supervises: each is a process, a scoreboard
/// row and a few descriptors of the master's; a typo (`workers = 40000`) must not fork a host
/// to death.
const MAX_WORKERS: u32 = 1024;

/// Keys whose new value a SIGHUP cannot apply to a running server.
pub const RESTART_ONLY_KEYS: &[&str] = &[
    "http_interface",
    "http_port",
    "listen_backlog",
    "log_format",
    "metrics_listen",
    "pidfile",
    "user",
    "group",
];

/// A config file that cannot be used; the server does not start (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A value given on `forkwarden serve`'s command line that the config cannot take.
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    /// An option of Odoo's config file (`forkwarden odoo`) that forkwarden cannot take.
    #[error("{}: [options] {option}: {message}", path.display())]
    Odoo {
        path: PathBuf,
        option: String,
        message: String,
    },
    #[error("{}", describe_invalid(path, *line, key, message, excerpt))]
    Invalid {
        path: PathBuf,
        /// 1-based line of the offending key or value; 0 when the file does not set the key
        /// (its default is at fault).
        line: usize,
        /// The offending key's path, e.g. `limit_memory_soft` (empty for syntax errors).
        key: String,
        message: String,
        /// The offending line as written.
        excerpt: String,
    },
}

fn describe_invalid(path: &Path, line: usize, key: &str, message: &str, excerpt: &str) -> String {
    if line == 0 {
        return format!(
            "{}: {key} (not set in this file: its default): {message}",
            path.display()
        );
    }
    let location = format!("{}:{line}", path.display());
    let head = if key.is_empty() {
        format!("{location}: {message}")
    } else {
        format!("{location}: {key}: {message}")
    };
    format!("{head}\n  {line:>4} | {excerpt}")
}

impl Config {
    /// What an HTTP worker needs of this config: a built-in worker's, and what the master
    /// hands a program that runs forkwarden's HTTP worker (`kit`), validated and with its
    /// paths resolved, whatever the file on disk says by now.
    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            socket_timeout: self.socket_timeout(),
            request_timeout: self.request_timeout(),
            max_body_size: Some(self.http_max_body_size.bytes()).filter(|max| *max > 0),
            proxy_mode: self.proxy_mode,
            access_log: self.access_log,
            limits: self.worker_limits(),
            log: self.log_settings(),
        }
    }

    /// The limits every worker applies to itself.
    pub fn worker_limits(&self) -> WorkerLimits {
        WorkerLimits {
            address_space: Some(self.limit_memory_hard.bytes())
                .filter(|bytes| *bytes > 0 && self.limit_memory_hard_rlimit),
            requests: self.limit_request,
            requests_jitter: self.limit_request_jitter,
            cpu_per_request: Some(self.limit_time_cpu.duration()).filter(|limit| !limit.is_zero()),
        }
    }

    /// A job worker's limits: a worker's, but room in its address space for the largest
    /// `limit_memory_hard` of a `[[job]]` kind (the master holds each job to its own).
    pub fn job_worker_limits(&self) -> WorkerLimits {
        let largest = self
            .job
            .iter()
            .filter_map(|kind| kind.limit_memory_hard)
            .map(ByteSize::bytes)
            .max()
            .unwrap_or(0);
        let mut limits = self.worker_limits();
        limits.address_space = limits.address_space.map(|bytes| bytes.max(largest));
        limits
    }

    /// The channels a job worker's row counts the jobs of (see [`jobs::channel_names`]).
    pub fn job_channels(&self) -> Vec<&str> {
        jobs::channel_names(&self.job, &self.channel)
    }

    /// How a job worker's row is laid out: its kinds, its channels and one for the others.
    pub fn job_row_shape(&self) -> crate::scoreboard::JobRowShape {
        crate::scoreboard::JobRowShape {
            kinds: self.job.len(),
            channels: self.job_channels().len() + 1,
        }
    }

    /// `logfile`, `log_format` and `log_level`.
    pub fn log_settings(&self) -> LogSettings {
        LogSettings {
            format: self.log_format,
            level: self.log_level,
            file: self.logfile.clone(),
        }
    }

    /// Who opens the log file: the workers' user when the master runs as root (None: this
    /// process, as it is).
    pub fn log_owner(&self) -> Option<LogOwner> {
        let run_as = self.run_as.as_ref()?;
        Some(LogOwner {
            user: run_as.user.clone(),
            identity: run_as.fs_identity()?,
        })
    }

    /// Parses and validates `source`, read from `path` (used in messages and to resolve
    /// relative file names).
    pub fn parse(source: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_with(source, path, |_, _| Ok(Vec::new()))
    }

    /// [`Config::parse`], with `adjust` changing what was read before it is validated
    /// (`forkwarden serve`'s flags, odoo.conf's options), told which keys `source` writes;
    /// `adjust` returns the keys it set, each with the flag or option that set it, so that
    /// an error about one of them names that instead.
    pub(crate) fn parse_with(
        source: &str,
        path: &Path,
        adjust: impl FnOnce(
            &mut Config,
            &dyn Fn(&str) -> bool,
        ) -> Result<Vec<(&'static str, &'static str)>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let invalid = |span: Option<std::ops::Range<usize>>, key: String, message: String| {
            error_at(source, path, span, key, message)
        };
        let document = toml::Deserializer::parse(source)
            .map_err(|error| invalid(error.span(), String::new(), error.message().to_string()))?;
        let mut config: Config = serde_path_to_error::deserialize(document).map_err(|error| {
            let key = key_path(error.path());
            let inner = error.into_inner();
            let message = match job_name_in(source, &key) {
                Some(name) => format!("cron job {name:?}: {}", friendly(inner.message())),
                None => friendly(inner.message()),
            };
            invalid(inner.span(), key, message)
        })?;
        let written = |key: &str| is_written(source, key);
        config.follow_written_memory_limits(
            written("limit_memory_soft"),
            written("limit_memory_hard"),
        );
        if let Some(app) = &mut config.app
            && app.runs_forkwarden_wsgi()
            && !written("app.nonblocking")
        {
            // The runner waits for the socket in epoll: it needs it, so it is the default.
            app.nonblocking = true;
        }
        if !written("data_dir")
            && let Some(state) = systemd_state_directory()
        {
            config.data_dir = state;
        }
        let set_by_flags = adjust(&mut config, &written)?;
        if let Err((key, message)) = config.validate() {
            if let Some((_, flag)) = set_by_flags.iter().find(|(set, _)| *set == key) {
                return Err(ConfigError::Flag { flag, message });
            }
            return Err(invalid(span_of_path(source, &key), key, message));
        }
        config.run_as = RunAs::resolve(config.user.as_deref(), config.group.as_deref())
            .map_err(|(key, message)| invalid(span_of_path(source, key), key.into(), message))?;
        // `forkwarden --config x.toml`: the parent of `x.toml` is empty, meaning here.
        let base = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let relative_paths = [&mut config.logfile, &mut config.pidfile]
            .into_iter()
            .flatten()
            .chain([&mut config.data_dir])
            .chain(config.app.iter_mut().filter_map(|app| app.cwd.as_mut()))
            .chain(
                config
                    .program
                    .iter_mut()
                    .filter_map(|program| program.cwd.as_mut()),
            )
            .chain(config.cron.iter_mut().filter_map(|job| job.cwd.as_mut()));
        for file in relative_paths {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        // A program without `cwd` runs in the config file's directory, so that the names
        // in its command (`./run.sh`, `myapp:app`) mean what they mean beside the config,
        // wherever the server was started from.
        let here = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        let unset_cwds = config
            .app
            .iter_mut()
            .map(|app| &mut app.cwd)
            .chain(config.program.iter_mut().map(|program| &mut program.cwd))
            .chain(
                config
                    .cron
                    .iter_mut()
                    .filter(|job| job.call.is_none())
                    .map(|job| &mut job.cwd),
            )
            .filter(|cwd| cwd.is_none());
        for cwd in unset_cwds {
            *cwd = Some(here.clone());
        }
        Ok(config)
    }

    /// Odoo's defaults keep `limit_memory_soft` at 4/5 of `limit_memory_hard`. A memory
    /// limit the user left out follows the one they set, so that setting one never makes
    /// the pair invalid: `limit_memory_hard = "1GiB"` alone brings the soft default down to
    /// 819MiB; `limit_memory_soft = "3GiB"` alone brings the hard one up to 3.75GiB.
    fn follow_written_memory_limits(&mut self, soft_written: bool, hard_written: bool) {
        let (soft, hard) = (
            self.limit_memory_soft.bytes(),
            self.limit_memory_hard.bytes(),
        );
        if soft == 0 || hard == 0 || soft <= hard {
            return;
        }
        match (soft_written, hard_written) {
            (false, true) => self.limit_memory_soft = ByteSize(hard / 5 * 4),
            (true, false) => {
                self.limit_memory_hard = ByteSize(soft.saturating_add(soft / 4));
            }
            _ => {}
        }
    }

    /// Checks what each value alone cannot: combinations and the meaning of values.
    /// Returns the key to blame and what is wrong with it.
    fn validate(&self) -> Result<(), (String, String)> {
        for (key, count) in [
            ("workers", self.workers),
            ("max_cron_threads", self.max_cron_threads),
            ("job_workers", self.job_workers),
        ] {
            if count > MAX_WORKERS {
                return Err((
                    key.into(),
                    format!(
                        "{count} is more workers than one master supervises (at most \
                         {MAX_WORKERS}); a machine this large runs several servers"
                    ),
                ));
            }
        }
        if self.workers == 0
            && (self.max_cron_threads == 0 || self.cron.is_empty())
            && self.wanted_job_workers() == 0
        {
            return Err((
                "workers".into(),
                "workers = 0 leaves nothing to run without cron workers and [[cron]] jobs (or \
                 job workers and [[job]] kinds); set workers to 1 or more (or declare jobs \
                 and set max_cron_threads)"
                    .into(),
            ));
        }
        self.validate_limits()
            .map_err(|(key, message)| (key.to_string(), message))?;
        if self.cron_lease.duration() < MIN_CRON_LEASE {
            return Err((
                "cron_lease".into(),
                format!(
                    "\"{}\" is too short: a cron worker renews its lease every quarter of it, \
                     over the network; expected {}s or more (default \"60s\")",
                    self.cron_lease,
                    MIN_CRON_LEASE.as_secs()
                ),
            ));
        }
        if let Some(address) = self.metrics_listen
            && address.port() != 0
            && self.workers > 0
            && address == std::net::SocketAddr::new(self.http_interface, self.http_port)
        {
            return Err((
                "metrics_listen".into(),
                format!(
                    "{address} is the HTTP workers' address; give the metrics listener a \
                     port of its own (e.g. \"127.0.0.1:9169\")"
                ),
            ));
        }
        if let Some(app) = &self.app
            && app.runs_forkwarden_wsgi()
            && !app.nonblocking
        {
            return Err((
                "app.nonblocking".into(),
                "forkwarden_wsgi waits for the listening socket in epoll and needs \
                 nonblocking = true, its default: remove this line or set it to true"
                    .into(),
            ));
        }
        if let Some(app) = &self.app
            && app.command.first().is_none_or(|program| program.is_empty())
        {
            return Err((
                "app.command".into(),
                "command is empty; expected the program and its arguments, e.g. \
                 [\"python3\", \"-m\", \"forkwarden_wsgi\", \"myproject.wsgi:application\"]"
                    .into(),
            ));
        }
        if let Some(app) = &self.app
            && app.preload
            && !app.notifies()
        {
            return Err((
                "app.ready_timeout".into(),
                "0 cannot be used with preload = true: a template must say READY=1 once it \
                 has loaded the application, and its workers must say it too"
                    .into(),
            ));
        }
        self.validate_programs()?;
        self.validate_cron()?;
        let preloads = self.app.as_ref().is_some_and(|app| app.preload);
        jobs::validate(
            &self.job,
            &self.channel,
            preloads,
            self.cron_store.is_some(),
        )
    }

    /// Job workers to run: `job_workers`, when any `[[job]]` kind is declared.
    pub fn wanted_job_workers(&self) -> u32 {
        if self.job.is_empty() {
            0
        } else {
            self.job_workers
        }
    }

    /// Each `[[program]]`: a usable, unique name, a command, a count, its own address.
    fn validate_programs(&self) -> Result<(), (String, String)> {
        let mut names = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for (index, program) in self.program.iter().enumerate() {
            let at = |key: &str| format!("program[{index}].{key}");
            let name = &program.name;
            let valid_name = !name.is_empty()
                && name.len() <= MAX_JOB_NAME
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
            if !valid_name {
                return Err((
                    at("name"),
                    format!(
                        "program name {name:?} is not usable: expected 1 to {MAX_JOB_NAME} \
                         letters, digits, '_' or '-'"
                    ),
                ));
            }
            if !names.insert(name.as_str()) {
                return Err((at("name"), format!("program {name:?} is declared twice")));
            }
            if program.command.first().is_none_or(|part| part.is_empty()) {
                return Err((
                    at("command"),
                    format!(
                        "program {name:?}: command is empty; expected the program and its \
                         arguments, e.g. [\"odoo-bin\", \"gevent\", \"-c\", \"/etc/odoo.conf\"]"
                    ),
                ));
            }
            if program.count == 0 || program.count > MAX_PROGRAM_COUNT {
                return Err((
                    at("count"),
                    format!(
                        "program {name:?}: count {} is not usable; expected 1 to \
                         {MAX_PROGRAM_COUNT} (remove the table to run none)",
                        program.count
                    ),
                ));
            }
            if let Some(address) = program.listen {
                let http = std::net::SocketAddr::new(self.http_interface, self.http_port);
                let taken = (address.port() != 0 && address == http)
                    || (address.port() != 0 && !addresses.insert(address));
                if taken {
                    return Err((
                        at("listen"),
                        format!(
                            "program {name:?}: {address} is already the address of the HTTP \
                             workers or of another program"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), (&'static str, String)> {
        let (soft, hard) = (self.limit_memory_soft, self.limit_memory_hard);
        if !soft.is_zero() && !hard.is_zero() && soft > hard {
            return Err((
                "limit_memory_soft",
                format!(
                    "limit_memory_soft = \"{soft}\" is larger than limit_memory_hard = \"{hard}\"; \
                     the soft limit must not exceed the hard one (0 turns a limit off)"
                ),
            ));
        }
        if self.limit_time_cpu.duration().subsec_nanos() != 0 {
            return Err((
                "limit_time_cpu",
                format!(
                    "\"{}\" is not a whole number of seconds; RLIMIT_CPU counts whole seconds",
                    self.limit_time_cpu
                ),
            ));
        }
        if self.memory_poll_interval.is_zero() {
            return Err((
                "memory_poll_interval",
                "0 would stop the master from checking memory and time limits; expected a \
                 duration such as \"100ms\" (turn a limit off by setting that limit to 0)"
                    .into(),
            ));
        }
        let heartbeat = self.heartbeat_timeout.duration();
        if !heartbeat.is_zero() && heartbeat < MIN_HEARTBEAT_TIMEOUT {
            return Err((
                "heartbeat_timeout",
                format!(
                    "\"{}\" is too short: an idle worker shows life once a second; expected at \
                     least \"2s\" (0 turns the check off)",
                    self.heartbeat_timeout
                ),
            ));
        }
        if self.listen_backlog == 0 {
            return Err((
                "listen_backlog",
                "0 is not allowed; expected a queue length of 1 or more (e.g. 1024)".into(),
            ));
        }
        Ok(())
    }

    /// Each `[[cron]]` job: a usable name, a command, exactly one of schedule and interval.
    fn validate_cron(&self) -> Result<(), (String, String)> {
        let mut names = BTreeSet::new();
        let preloads = self.app.as_ref().is_some_and(|app| app.preload);
        for (index, job) in self.cron.iter().enumerate() {
            let at = |(key, message): (&str, String)| (format!("cron[{index}].{key}"), message);
            validate_job_name(&job.name).map_err(at)?;
            if !names.insert(job.name.as_str()) {
                return Err(at((
                    "name",
                    format!("cron job {:?} is declared twice", job.name),
                )));
            }
            validate_job_action(job, preloads).map_err(at)?;
            validate_job_timing(job).map_err(at)?;
        }
        Ok(())
    }

    /// The settings as TOML, every default filled in: what `forkwarden check` prints.
    pub fn effective_toml(&self) -> String {
        let mut text = String::new();
        if self.logfile.is_none() {
            text.push_str("# logfile is not set: logs go to standard error\n");
        }
        if self.pidfile.is_none() {
            text.push_str("# pidfile is not set: no pid file is written\n");
        }
        text.push_str(&toml::to_string(self).unwrap_or_else(|error| format!("# {error}\n")));
        text
    }

    /// The keys whose value differs between `self` and `newer`, with both values as TOML.
    pub fn changes(&self, newer: &Config) -> Vec<Change> {
        let (Ok(old), Ok(new)) = (toml::Table::try_from(self), toml::Table::try_from(newer)) else {
            return Vec::new();
        };
        let show =
            |value: Option<&toml::Value>| value.map_or("(unset)".to_string(), |v| v.to_string());
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|key| old.get(*key) != new.get(*key))
            .map(|key| Change {
                key: key.clone(),
                old: show(old.get(key)),
                new: show(new.get(key)),
            })
            .collect()
    }

    /// Takes over from `running` the values of [`RESTART_ONLY_KEYS`], which a reload cannot
    /// apply, so that `self` describes the server as it will really run.
    pub fn keep_restart_only_values(&mut self, running: &Config) {
        self.http_interface = running.http_interface;
        self.http_port = running.http_port;
        self.listen_backlog = running.listen_backlog;
        self.log_format = running.log_format;
        self.metrics_listen = running.metrics_listen;
        self.pidfile.clone_from(&running.pidfile);
        self.user.clone_from(&running.user);
        self.group.clone_from(&running.group);
        self.run_as.clone_from(&running.run_as);
    }

    /// `http_socket_timeout`, None when it is 0 (no timeout).
    pub fn socket_timeout(&self) -> Option<Duration> {
        Some(self.http_socket_timeout.duration()).filter(|timeout| !timeout.is_zero())
    }

    /// `http_request_timeout`, None when it is 0 (no bound).
    pub fn request_timeout(&self) -> Option<Duration> {
        Some(self.http_request_timeout.duration()).filter(|timeout| !timeout.is_zero())
    }

    /// How long a new program may take to send `READY=1` (zero: no bound, or it does not
    /// notify: see [`ExecApp::notifies`]).
    pub fn program_ready_timeout(&self, app: &ExecApp) -> Duration {
        app.ready_timeout.unwrap_or(self.ready_timeout).duration()
    }

    /// Who data_dir is for: the workers' user when its cron workers write their job files
    /// there and the master runs as root (see `data_dir`); None when data_dir is this
    /// process's own.
    pub fn data_dir_owner(&self) -> Option<crate::sys::FsIdentity> {
        self.run_as
            .as_ref()
            .filter(|_| !self.cron.is_empty())
            .and_then(RunAs::fs_identity)
    }

    /// The wall-clock limit of one cron job (zero: none).
    pub fn cron_time_limit(&self) -> Duration {
        match self.limit_time_real_cron {
            CronTimeLimit::SameAsHttp => self.limit_time_real.duration(),
            CronTimeLimit::Limit(limit) => limit.duration(),
        }
    }
}

/// One key changed by a reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub old: String,
    pub new: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.old, self.new)
    }
}

/// `limit_memory_soft`, `cron[2].schedule`: the path serde was at, without the private
/// segments that span tracking adds.
fn key_path(path: &serde_path_to_error::Path) -> String {
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key: name } if name.starts_with("$__") => {}
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Unknown => {}
        }
    }
    key
}

/// serde's messages name Rust types ("expected u32"); say what an admin may write instead.
/// A job's name names its files: a few plain characters, no leading dot.
fn validate_job_name(name: &str) -> Result<(), (&'static str, String)> {
    let usable = !name.is_empty()
        && name.len() <= MAX_JOB_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !name.starts_with('.');
    if usable {
        return Ok(());
    }
    Err((
        "name",
        format!(
            "cron job name {name:?} is not usable: expected 1 to {MAX_JOB_NAME} letters, \
             digits, '.', '_' or '-' (it names the job's files), not starting with '.'"
        ),
    ))
}

/// What a cron job runs: a command, or (`preloads`: the application is preloaded) a call.
fn validate_job_action(job: &CronJob, preloads: bool) -> Result<(), (&'static str, String)> {
    let action = Action {
        command: &job.command,
        call: job.call.as_deref(),
        has_cwd: job.cwd.is_some(),
    };
    action.validate(&format!("cron job {:?}", job.name), preloads)
}

/// What a cron job or a job kind runs, as written: `command` or `call` (and `cwd`).
pub(crate) struct Action<'a> {
    pub command: &'a [String],
    pub call: Option<&'a str>,
    pub has_cwd: bool,
}

impl Action<'_> {
    /// Exactly one of a command and a usable `module:function` call, the call only with
    /// the application preloaded (`preloads`) and without `cwd`; `what` names the job in
    /// the message (`cron job "report"`).
    pub(crate) fn validate(
        &self,
        what: &str,
        preloads: bool,
    ) -> Result<(), (&'static str, String)> {
        match (self.call, self.command.is_empty()) {
            (Some(_), false) => Err((
                "call",
                format!("{what}: give either command or call, not both"),
            )),
            (Some(call), true) => {
                let usable = call
                    .split_once(':')
                    .is_some_and(|(module, function)| !module.is_empty() && !function.is_empty());
                if !usable {
                    return Err((
                        "call",
                        format!(
                            "{what}: call {call:?} is not usable; expected module:function, \
                             e.g. \"myapp.tasks:nightly\""
                        ),
                    ));
                }
                if self.has_cwd {
                    return Err((
                        "cwd",
                        format!(
                            "{what}: cwd cannot be used with call: the function runs in the \
                             preloaded application, in its directory"
                        ),
                    ));
                }
                if !preloads {
                    return Err((
                        "call",
                        format!(
                            "{what}: call needs the application preloaded ([app] with \
                             preload = true): the function runs in a process forked from it"
                        ),
                    ));
                }
                Ok(())
            }
            (None, _)
                if self
                    .command
                    .first()
                    .is_none_or(|program| program.is_empty()) =>
            {
                Err((
                    "command",
                    format!(
                        "{what}: command is empty; expected the program and its arguments, e.g. \
                     [\"/usr/local/bin/report\", \"--yesterday\"], or call = \
                     \"module:function\" with a preloaded [app]"
                    ),
                ))
            }
            (None, _) => Ok(()),
        }
    }
}

/// When a job runs: exactly one of a usable schedule and an interval longer than 0.
fn validate_job_timing(job: &CronJob) -> Result<(), (&'static str, String)> {
    let name = &job.name;
    match (&job.schedule, &job.interval) {
        (Some(_), Some(_)) | (None, None) => Err((
            if job.schedule.is_some() {
                "schedule"
            } else {
                "name"
            },
            format!(
                "cron job {name:?}: give exactly one of schedule (e.g. \"0 2 * * *\") and \
                 interval (e.g. \"15m\")"
            ),
        )),
        (Some(expression), None) => expression
            .cron()
            .map(|_| ())
            .map_err(|why| ("schedule", format!("cron job {name:?}: {why}"))),
        (None, Some(interval)) if interval.is_zero() => Err((
            "interval",
            format!("cron job {name:?}: interval must be longer than 0"),
        )),
        (None, Some(_)) => Ok(()),
    }
}

fn friendly(message: &str) -> String {
    if let Some(unknown) = unknown_key(message) {
        return unknown;
    }
    message
        .replace("expected u16", "expected a port number from 0 to 65535")
        .replace("expected u32", "expected a whole number, 0 or more")
        .replace("expected u64", "expected a whole number, 0 or more")
}

/// serde's "unknown field `wrkers`, expected one of `http_interface`, ... " (every key of
/// the table) as "unknown key `wrkers`; did you mean `workers`?", or without the
/// suggestion when no key is close.
fn unknown_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let known = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|key| !key.is_empty());
    let closest = known
        .map(|key| (strsim::jaro_winkler(name, key), key))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    Some(match closest {
        Some((_, key)) => format!("unknown key `{name}`; did you mean `{key}`?"),
        None => {
            format!("unknown key `{name}`; see docs/configuration.md for the keys this table takes")
        }
    })
}

/// An IP address, with an error that shows the value and what is accepted.
fn ip_address<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP address; expected one such as \"127.0.0.1\", \"0.0.0.0\" or \"::\""
        ))
    })
}

fn socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP address with a port; expected one such as \"127.0.0.1:9169\" \
             or \"[::1]:9169\""
        ))
    })
}

/// The error for `key` with `message`, pointing at the line of `source` where the key is.
fn invalid_at(source: &str, path: &Path, key: &str, message: String) -> ConfigError {
    error_at(
        source,
        path,
        span_of_path(source, key),
        key.to_string(),
        message,
    )
}

/// The error for `key` with `message`, pointing at the line of `source` that `span` is on.
fn error_at(
    source: &str,
    path: &Path,
    span: Option<std::ops::Range<usize>>,
    key: String,
    message: String,
) -> ConfigError {
    // A key the file does not set is its default (line 0): no line of the file is to blame.
    let defaulted = span.is_none() && !key.is_empty() && !key.contains('[');
    let defaulted = defaulted && !is_written(source, &key);
    let line = match span {
        Some(span) => line_of(source, span.start),
        None if defaulted => 0,
        None => 1,
    };
    // A refused `cron_store` may hold a password: its line is not echoed.
    let excerpt = if line == 0 {
        String::new()
    } else if key == "cron_store" {
        "cron_store = (not shown: it may hold a password)".to_string()
    } else {
        source
            .lines()
            .nth(line - 1)
            .unwrap_or("")
            .trim_end()
            .to_string()
    };
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        key,
        message,
        excerpt,
    }
}

/// 1-based line number of byte `offset` in `source`.
fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

/// Where the key at `path` (`workers`, `app.command`, `cron[2].schedule`) is written in
/// `source`, if it is; for a missing key inside a table, where that table starts.
/// The directory systemd made for the service's state (`StateDirectory=`, given as
/// `$STATE_DIRECTORY`; the first one if several), the default data_dir under systemd: the
/// directory beside the config file (/etc) is not the service's to write.
fn systemd_state_directory() -> Option<PathBuf> {
    let value = std::env::var_os("STATE_DIRECTORY")?;
    let first = value.to_str()?.split(':').next()?;
    let path = PathBuf::from(first);
    path.is_absolute().then_some(path)
}

/// Whether `source` sets the key at dotted `path` (`limit_memory_soft`, `app.nonblocking`),
/// rather than leaving it to its default.
fn is_written(source: &str, path: &str) -> bool {
    locate(source, path).is_some_and(|(_, whole)| whole)
}

/// The span of `source` an error about the key at `path` points at: the key, or the part
/// of its path that is there (the enclosing table of a missing key, e.g. a required one).
fn span_of_path(source: &str, path: &str) -> Option<std::ops::Range<usize>> {
    locate(source, path).map(|(span, _)| span)
}

/// Where the key at dotted `path` (`cron[2].schedule`) is in `source`: its span, and
/// whether the whole path is there (else the span of the deepest part that is).
fn locate(source: &str, path: &str) -> Option<(std::ops::Range<usize>, bool)> {
    let document = toml::de::DeTable::parse(source).ok()?;
    let mut table = document.get_ref();
    let mut found = None;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (key, index) = match segment.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some((name, value)) = table.iter().find(|(name, _)| name.get_ref() == key) else {
            return found.map(|span| (span, false));
        };
        found = Some(name.span());
        let value = match index {
            Some(index) => {
                let item = value.get_ref().as_array()?.get(index)?;
                found = Some(item.span());
                item
            }
            None => value,
        };
        if segments.peek().is_none() {
            return found.map(|span| (span, true));
        }
        match value.get_ref().as_table() {
            Some(inner) => table = inner,
            None => return found.map(|span| (span, false)),
        }
    }
    found.map(|span| (span, false))
}

/// The name of the `[[cron]]` job a key path such as `cron[2].comand` points into.
fn job_name_in(source: &str, key: &str) -> Option<String> {
    let index: usize = key.strip_prefix("cron[")?.split(']').next()?.parse().ok()?;
    let document = toml::de::DeTable::parse(source).ok()?;
    let jobs = document
        .get_ref()
        .iter()
        .find(|(name, _)| name.get_ref() == "cron")?
        .1;
    let job = jobs.get_ref().as_array()?.get(index)?;
    let name = job
        .get_ref()
        .as_table()?
        .iter()
        .find(|(key, _)| key.get_ref() == "name")?
        .1;
    name.get_ref().as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_settings_handed_to_a_program_are_those_in_memory() {
        let config = Config {
            http_socket_timeout: TimeSpan::secs(7),
            http_max_body_size: ByteSize::mib(3),
            limit_memory_hard: ByteSize::mib(512),
            limit_time_cpu: TimeSpan::secs(60),
            limit_request: 100,
            limit_request_jitter: 10,
            access_log: true,
            logfile: Some(PathBuf::from("/var/log/forkwarden.log")),
            log_format: LogFormat::Json,
            ..Config::default()
        };
        let settings = config.http_settings();
        assert_eq!(settings.socket_timeout, Some(Duration::from_secs(7)));
        assert_eq!(settings.max_body_size, Some(3 << 20));
        assert_eq!(settings.limits.address_space, Some(512 << 20));
        assert_eq!(
            settings.limits.cpu_per_request,
            Some(Duration::from_secs(60))
        );
        let handed = HttpSettings::from_json(&settings.to_json().unwrap()).unwrap();
        assert_eq!(handed, settings);
        // Off is None, not zero.
        let off = Config {
            limit_memory_hard_rlimit: false,
            ..config
        }
        .http_settings();
        assert_eq!(off.limits.address_space, None);
        let unbounded = Config {
            http_request_timeout: TimeSpan::secs(0),
            ..Config::default()
        };
        assert_eq!(unbounded.http_settings().request_timeout, None);
    }

    use super::*;

    fn parse(source: &str) -> Result<Config, ConfigError> {
        Config::parse(source, Path::new("/etc/fw/test.toml"))
    }

    fn error_text(source: &str) -> String {
        parse(source)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn empty_file_gives_odoo_defaults() {
        let config = parse("").unwrap();
        let expected = Config {
            data_dir: PathBuf::from("/etc/fw/forkwarden-data"),
            ..Config::default()
        };
        assert_eq!(config, expected);
        assert_eq!(config.limit_memory_hard, ByteSize(2560 << 20));
        assert_eq!(config.cron_time_limit(), Duration::from_secs(120));
    }

    #[test]
    fn units_and_relative_paths_are_resolved() {
        let config = parse(
            "workers = 4\nlimit_memory_soft = \"512MiB\"\nlimit_memory_hard = 1073741824\n\
             limit_time_real = \"2m\"\nlimit_time_real_cron = 0\nlogfile = \"fw.log\"\n",
        )
        .unwrap();
        assert_eq!(config.workers, 4);
        assert_eq!(config.limit_memory_soft, ByteSize(512 << 20));
        assert_eq!(config.limit_memory_hard, ByteSize(1 << 30));
        assert_eq!(config.limit_time_real, TimeSpan::secs(120));
        assert_eq!(config.cron_time_limit(), Duration::ZERO);
        assert_eq!(config.logfile, Some(PathBuf::from("/etc/fw/fw.log")));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = error_text("workers = 2\nwrkers = 3\n");
        assert!(
            text.starts_with(
                "/etc/fw/test.toml:2: wrkers: unknown key `wrkers`; did you mean `workers`?"
            ),
            "{text}"
        );
        // Not the list of every key.
        assert!(!text.contains("http_interface"), "{text}");
        let far = error_text("[app]\ncommand = [\"x\"]\nzzz = 1\n");
        assert!(
            far.contains("unknown key `zzz`; see docs/configuration.md"),
            "{far}"
        );
    }

    #[test]
    fn a_memory_limit_left_out_follows_the_one_written() {
        let config = parse("limit_memory_hard = \"1GiB\"\n").unwrap();
        assert_eq!(config.limit_memory_hard, ByteSize(1 << 30));
        assert_eq!(config.limit_memory_soft, ByteSize((1 << 30) / 5 * 4));
        let config = parse("limit_memory_soft = \"4GiB\"\n").unwrap();
        assert_eq!(config.limit_memory_hard, ByteSize(5 << 30));
        // Below the other default: nothing moves.
        let config = parse("limit_memory_hard = \"3GiB\"\n").unwrap();
        assert_eq!(config.limit_memory_soft, ByteSize::mib(2048));
        // Both written and at odds: refused, naming the user's two values.
        let text = error_text("limit_memory_soft = \"2GiB\"\nlimit_memory_hard = \"1GiB\"\n");
        assert!(
            text.contains(
                "limit_memory_soft = \"2GiB\" is larger than limit_memory_hard = \"1GiB\""
            ),
            "{text}"
        );
    }

    #[test]
    fn a_program_without_cwd_runs_beside_the_config_file() {
        let config = parse("[app]\ncommand = [\"./run.sh\"]\n").unwrap();
        let app = config.app.unwrap();
        assert_eq!(app.cwd, Some(PathBuf::from("/etc/fw")));
    }

    #[test]
    fn wrong_type_names_key_value_and_what_is_accepted() {
        let text = error_text("\nworkers = \"four\"\n");
        assert!(text.starts_with("/etc/fw/test.toml:2: workers:"), "{text}");
        assert!(text.contains("\"four\""), "{text}");
        assert!(text.contains("expected a whole number"), "{text}");
    }

    #[test]
    fn a_worker_count_no_master_should_fork_is_refused() {
        let text = error_text("workers = 40000\n");
        assert!(text.contains("workers: 40000 is more workers"), "{text}");
        let text = error_text("max_cron_threads = 5000\n");
        assert!(text.contains("max_cron_threads: 5000"), "{text}");
    }

    #[test]
    fn bad_unit_and_negative_size_are_rejected() {
        let text = error_text("limit_memory_hard = \"2 lots\"\n");
        assert!(text.contains("limit_memory_hard:"), "{text}");
        assert!(text.contains("\"512MiB\""), "{text}");
        let text = error_text("limit_memory_soft = -5\n");
        assert!(
            text.contains("limit_memory_soft: negative size -5"),
            "{text}"
        );
    }

    #[test]
    fn impossible_combinations_blame_the_right_line() {
        let text =
            error_text("workers = 1\nlimit_memory_hard = \"1GiB\"\nlimit_memory_soft = \"2GiB\"\n");
        assert!(
            text.starts_with("/etc/fw/test.toml:3: limit_memory_soft:"),
            "{text}"
        );
        let text = error_text("max_cron_threads = 0\nworkers = 0\n");
        assert!(text.starts_with("/etc/fw/test.toml:2: workers:"), "{text}");
        assert!(text.contains("nothing to run"), "{text}");
    }

    #[test]
    fn syntax_error_gives_the_line() {
        let text = error_text("workers = 2\nhttp_port = \n");
        assert!(text.starts_with("/etc/fw/test.toml:2:"), "{text}");
    }

    #[test]
    fn a_cron_store_is_checked_and_names_its_key() {
        let config =
            parse("cron_store = \"postgresql://fw@db.internal/odoo\"\ncron_lease = \"30s\"\n")
                .unwrap();
        assert_eq!(
            config.cron_store.as_ref().map(CronStoreUrl::as_str),
            Some("postgresql://fw@db.internal/odoo")
        );
        assert_eq!(config.cron_lease, TimeSpan::secs(30));
        let text = error_text("cron_store = \"postgresql://fw:hunter2@db/odoo\"\n");
        assert!(
            text.contains("cron_store") && text.contains("PGPASSWORD"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let text = error_text("cron_lease = \"1s\"\n");
        assert!(
            text.contains("cron_lease") && text.contains("too short"),
            "{text}"
        );
    }

    #[test]
    fn effective_toml_round_trips() {
        let config = parse(
            "workers = 3\nlimit_time_cpu = \"90s\"\nmetrics_listen = \"[::1]:9169\"\n\
             cron_store = \"postgresql://fw@db/odoo\"\n",
        )
        .unwrap();
        let again = parse(&config.effective_toml()).unwrap();
        assert_eq!(config, again);
    }

    #[test]
    fn restart_only_keys_are_all_kept_from_the_running_config() {
        let running = parse("").unwrap();
        let mut new = parse(
            "http_interface = \"::1\"\nhttp_port = 1\nlisten_backlog = 7\n\
             log_format = \"json\"\npidfile = \"x.pid\"\nworkers = 5\n\
             user = \"nobody\"\ngroup = \"nogroup\"\nmetrics_listen = \"127.0.0.1:9169\"\n",
        )
        .unwrap();
        let changed: Vec<String> = running.changes(&new).into_iter().map(|c| c.key).collect();
        for key in RESTART_ONLY_KEYS {
            assert!(
                changed.contains(&key.to_string()),
                "test does not change {key}"
            );
        }
        new.keep_restart_only_values(&running);
        let left: Vec<String> = running.changes(&new).into_iter().map(|c| c.key).collect();
        assert_eq!(left, ["workers"]);
    }

    #[test]
    fn changes_list_only_differing_keys() {
        let old = parse("workers = 2\n").unwrap();
        let new = parse("workers = 4\nlimit_time_real = 60\n").unwrap();
        let changes: Vec<String> = old.changes(&new).iter().map(ToString::to_string).collect();
        assert_eq!(
            changes,
            ["limit_time_real: \"2m\" -> \"1m\"", "workers: 2 -> 4"]
        );
    }
}
