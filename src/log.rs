//! Log output: text or JSON lines on standard error or in a file, reopened on SIGUSR1.
//!
//! Master and workers share the destination. Each event is formatted in memory and written
//! with one `write` on an `O_APPEND` file (or on stderr), so lines from different processes
//! never interleave mid-line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::{FormatFields, format};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

use nix::unistd::{Gid, Uid};

use crate::config::{Config, LogFormat, LogLevel};

/// Where log lines go. A process-wide static so that the subscriber's writer, the master's
/// SIGUSR1 handling and the workers' reopen all reach the same place. The master is
/// single-threaded and never forks while holding the lock, so a worker never inherits it held.
static SINK: Mutex<Sink> = Mutex::new(Sink::Stderr);

/// Who owns the log files the master opens: the workers' user (`user`), so that workers can
/// reopen the file too after a rotation.
static OWNER: Mutex<Option<(Uid, Gid)>> = Mutex::new(None);

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
    #[error("cannot open logfile {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
}

/// The installed logger; lets the master reopen the file and apply a reloaded config.
pub struct Logging {
    level: reload::Handle<LevelFilter, Registry>,
}

/// Installs the global subscriber for `config`: call once, before the first fork.
pub fn init(config: &Config) -> Result<Logging, LogError> {
    set_owner(config);
    point_sink_at(config.logfile.as_deref())?;
    let level = install(config)?;
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    Ok(Logging { level })
}

/// Logging for forkwarden's worker inside a program (see `worker::kit`): its lines go
/// where the master's go, `destination` (the log file, reopened at its path after a
/// rotation, or the master's standard error), formatted as a built-in worker's. A program
/// that set up its own subscriber keeps it.
pub fn init_for_program(config: &Config, destination: File) {
    *sink() = match &config.logfile {
        Some(path) => Sink::File {
            path: path.clone(),
            file: destination,
        },
        None => Sink::Handed(destination),
    };
    let _ = install(config);
}

/// Installs the subscriber that writes `config`'s format to the sink, at its level (which
/// the handle changes).
fn install(config: &Config) -> Result<reload::Handle<LevelFilter, Registry>, LogError> {
    let (level, handle) = reload::Layer::new(level_filter(config.log_level));
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(|| SinkWriter)
        .with_ansi(false)
        .with_target(false);
    let installed = match config.log_format {
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
    /// Applies a reloaded config's `log_level` and `logfile`.
    pub fn apply(&self, config: &Config) -> Result<(), LogError> {
        set_owner(config);
        let _ = self
            .level
            .modify(|filter| *filter = level_filter(config.log_level));
        let unchanged = match (&*sink(), config.logfile.as_deref()) {
            (Sink::Stderr, None) => true,
            (Sink::File { path, .. }, Some(new)) => path == new,
            _ => false,
        };
        if unchanged {
            Ok(())
        } else {
            point_sink_at(config.logfile.as_deref())
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

fn set_owner(config: &Config) {
    let owner = config
        .run_as
        .as_ref()
        .map(|run_as| (run_as.uid, run_as.gid));
    *OWNER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = owner;
}

fn point_sink_at(path: Option<&Path>) -> Result<(), LogError> {
    let new = match path {
        None => Sink::Stderr,
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(path)
                .map_err(|source| LogError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
            let owner = *OWNER
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Only root can give a file away; a worker reopening the file already is the owner.
            if let Some((uid, gid)) = owner.filter(|_| nix::unistd::geteuid().is_root()) {
                nix::unistd::fchown(&file, Some(uid), Some(gid)).map_err(|errno| {
                    LogError::Open {
                        path: path.to_path_buf(),
                        source: errno.into(),
                    }
                })?;
            }
            Sink::File {
                path: path.to_path_buf(),
                file,
            }
        }
    };
    *sink() = new;
    Ok(())
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
        self.result = text.chars().try_for_each(|character| {
            if character.is_control() && character != '\t' {
                write!(self.writer, "\\x{:02x}", u32::from(character))
            } else {
                std::fmt::Write::write_char(self.writer, character)
            }
        });
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
