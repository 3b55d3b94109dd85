//! Log output: text or JSON lines on standard error or in a file, reopened on SIGUSR1.
//!
//! Master and workers share the destination. Each event is formatted in memory and written
//! with one `write` on an `O_APPEND` file (or on stderr), so lines from different processes
//! never interleave mid-line.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::{FormatFields, format};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

use serde::{Deserialize, Serialize};

use crate::sys::FsIdentity;

/// Where log lines go and which: the config's `logfile`, `log_format` and `log_level`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: LogLevel,
    /// None: standard error.
    pub file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Who opens the log file when the master runs as root: the workers' user (`user`), by
/// name for messages and as the identity file operations take.
#[derive(Clone)]
pub struct LogOwner {
    pub user: String,
    pub identity: FsIdentity,
}

/// Where log lines go. A process-wide static so that the subscriber's writer, the master's
/// SIGUSR1 handling and the workers' reopen all reach the same place. The master is
/// single-threaded and never forks while holding the lock, so a worker never inherits it held.
static SINK: Mutex<Sink> = Mutex::new(Sink::Stderr);

/// Who the log file is opened as: the workers' user (`user`), when the master runs as root.
/// The file is then that user's, so that workers can reopen it after a rotation, and no
/// symbolic link or file planted where that user can write can make root open, create or
/// own a file that user could not.
static OPENED_AS: Mutex<Option<LogOwner>> = Mutex::new(None);

enum Sink {
    Stderr,
    File {
        path: PathBuf,
        file: File,
    },
    /// The master's standard error, handed to a program's worker (see `worker::kit`): not
    /// reopened.
    Handed(File),
}

fn sink() -> MutexGuard<'static, Sink> {
    SINK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open logfile {} (it must be a regular file): {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "cannot open logfile {} as user {user} (it must be a regular file that user can \
         write, or create in its directory: workers reopen it after a rotation, and the \
         master opens it as that user so that nothing planted there is opened as root): \
         {source}",
        path.display()
    )]
    OpenAsUser {
        path: PathBuf,
        user: String,
        source: io::Error,
    },
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
}

/// The installed logger; lets the master reopen the file and apply a reloaded config.
pub struct Logging {
    level: reload::Handle<LevelFilter, Registry>,
}

/// Installs the global subscriber for `settings`, the file opened by `owner` (see
/// [`LogOwner`]): call once, before the first fork.
pub fn init(settings: &LogSettings, owner: Option<LogOwner>) -> Result<Logging, LogError> {
    set_owner(owner);
    point_sink_at(settings.file.as_deref())?;
    let level = install(settings)?;
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    Ok(Logging { level })
}

/// Logging for forkwarden's worker inside a program (see `worker::kit`): its lines go
/// where the master's go, `destination` (the log file, reopened at its path after a
/// rotation, or the master's standard error), formatted as a built-in worker's. A program
/// that set up its own subscriber keeps it.
pub fn init_for_program(settings: &LogSettings, destination: File) {
    *sink() = match &settings.file {
        Some(path) => Sink::File {
            path: path.clone(),
            file: destination,
        },
        None => Sink::Handed(destination),
    };
    let _ = install(settings);
}

/// Installs the subscriber that writes `settings`' format to the sink, at its level (which
/// the handle changes).
fn install(settings: &LogSettings) -> Result<reload::Handle<LevelFilter, Registry>, LogError> {
    let (level, handle) = reload::Layer::new(level_filter(settings.level));
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(|| SinkWriter)
        .with_ansi(false)
        .with_target(false);
    let installed = match settings.format {
        // A line of text says everything in its sentence; the fields are for JSON.
        LogFormat::Text => tracing_subscriber::registry()
            .with(level)
            .with(lines.fmt_fields(MessageOnly))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(level)
            .with(lines.json().flatten_event(true))
            .try_init(),
    };
    installed.map_err(|error| LogError::Subscriber(error.to_string()))?;
    Ok(handle)
}

/// A descriptor of where log lines go now (the log file, or standard error), for a
/// program's worker to write its own (see [`init_for_program`]).
pub fn duplicate_destination() -> io::Result<std::os::fd::OwnedFd> {
    match &*sink() {
        Sink::Stderr => crate::sys::duplicate_descriptor(libc::STDERR_FILENO),
        Sink::File { file, .. } | Sink::Handed(file) => {
            crate::sys::duplicate_descriptor(file.as_raw_fd())
        }
    }
}

/// Writes `line` (a whole line, newline included) to the log as it is: one `write`, so it
/// never interleaves with another process's line.
pub fn write_line(line: &[u8]) {
    let _ = SinkWriter.write_all(line);
}

impl Logging {
    /// Applies a reloaded config's `log_level` and `logfile` (opened by `owner`).
    pub fn apply(&self, settings: &LogSettings, owner: Option<LogOwner>) -> Result<(), LogError> {
        set_owner(owner);
        let _ = self
            .level
            .modify(|filter| *filter = level_filter(settings.level));
        let unchanged = match (&*sink(), settings.file.as_deref()) {
            (Sink::Stderr, None) => true,
            (Sink::File { path, .. }, Some(new)) => path == new,
            _ => false,
        };
        if unchanged {
            Ok(())
        } else {
            point_sink_at(settings.file.as_deref())
        }
    }
}

/// Reopens the log file at its path (after logrotate moved it); no-op for stderr.
pub fn reopen() -> Result<(), LogError> {
    let path = match &*sink() {
        Sink::Stderr | Sink::Handed(_) => return Ok(()),
        Sink::File { path, .. } => path.clone(),
    };
    point_sink_at(Some(&path))
}

/// The log file's descriptor, if the log goes to a file: a forked worker keeps it.
pub fn descriptor() -> Option<RawFd> {
    match &*sink() {
        Sink::Stderr => None,
        Sink::File { file, .. } | Sink::Handed(file) => Some(file.as_raw_fd()),
    }
}

fn set_owner(owner: Option<LogOwner>) {
    *OPENED_AS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = owner;
}

fn point_sink_at(path: Option<&Path>) -> Result<(), LogError> {
    let new = match path {
        None => Sink::Stderr,
        Some(path) => Sink::File {
            path: path.to_path_buf(),
            file: File::from(open_log(path)?),
        },
    };
    *sink() = new;
    Ok(())
}

/// Opens the log file at `path`: as the workers' user when the master runs as root (see
/// [`OPENED_AS`]), as this process otherwise (a worker reopening it is that user already).
pub fn open_log(path: &Path) -> Result<std::os::fd::OwnedFd, LogError> {
    let opener = OPENED_AS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let open = || crate::sys::open_append(path, 0o640);
    match opener {
        None => open().map_err(|source| LogError::Open {
            path: path.to_path_buf(),
            source,
        }),
        Some(owner) => crate::sys::as_user(&owner.identity, open)
            .and_then(|opened| opened)
            .map_err(|source| LogError::OpenAsUser {
                path: path.to_path_buf(),
                user: owner.user,
                source,
            }),
    }
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

/// Text lines show an event's message only: its facts are in the sentence already, and
/// stay available as fields in JSON. Control characters are written as `\xNN`, so that no
/// message (a program's output, a client's request line) can forge or hide part of a line.
struct MessageOnly;

impl<'writer> FormatFields<'writer> for MessageOnly {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = MessageVisitor {
            writer: &mut writer,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct MessageVisitor<'a, 'writer> {
    writer: &'a mut format::Writer<'writer>,
    result: std::fmt::Result,
}

impl Visit for MessageVisitor<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() != "message" || self.result.is_err() {
            return;
        }
        let text = format!("{value:?}");
        self.result = self
            .writer
            .write_str(&crate::format::escape_controls(&text, false));
    }
}

/// The subscriber's writer: one formatted event per `write_all`, under the sink's lock.
struct SinkWriter;

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut *sink() {
            Sink::Stderr => io::stderr().lock().write_all(buf),
            Sink::File { file, .. } | Sink::Handed(file) => file.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
