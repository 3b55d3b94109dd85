//! Tasks that call a function of the preloaded application (`call = "module:function"`): the
//! preload template forks the process that calls it.
//!
//! - **A cron run** asks for a process of its own ([`run_call`]): forked, it calls the
//!   function and exits; the template answers its pid, then how it ended.
//! - **A job worker** keeps one process, its [`Executor`], for attempt after attempt
//!   ([`run_in_executor`]): forked once (`SERVE=1`), it answers `DONE=<status>` after each
//!   call and waits for the next on the same connection, so a job costs no fork. It goes
//!   when a limit, a cancel or a lost claim kills it (the next attempt gets a new one), or
//!   with its job worker: the template kills it once the job worker's lifeline closes.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{Signal, killpg};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::Pid;

use super::{Bounds, Output, OutputTail, RunEnding, Task, Upkeep, drain, input_file};

/// The longest retry delay a job may ask for (`jobs.Retry(after=...)`).
const RETRY_AFTER_MAX: Duration = Duration::from_secs(30 * 86_400);

/// What a job said of itself while it ran (a call, through `forkwarden_wsgi.jobs` on its
/// executor's connection; a command, on `NOTIFY_SOCKET`): read by its job worker, which
/// writes it to the job's row. Words of the job's code, checked and bounded.
#[derive(Debug, Default)]
pub struct RunNotes {
    /// `PROGRESS=<done>/<total>`: the last progress it reported.
    pub progress: std::cell::Cell<Option<(i64, i64)>>,
    /// `RETRY_AFTER=<seconds>`: the delay it asked for before its next attempt.
    pub retry_after: std::cell::Cell<Option<Duration>>,
}

impl RunNotes {
    /// Keeps `KEY=value` if it is a note a job may send: `PROGRESS=<done>/<total>` (counts
    /// with 0 <= done <= total), `RETRY_AFTER=<seconds>` (finite, not negative, at most
    /// [`RETRY_AFTER_MAX`]). Anything else is ignored.
    pub fn note(&self, line: &str) {
        match line.split_once('=') {
            Some(("PROGRESS", value)) => {
                let parsed = value.trim().split_once('/').and_then(|(done, total)| {
                    Some((done.parse::<i64>().ok()?, total.parse::<i64>().ok()?))
                });
                if let Some(progress) = parsed.filter(|(done, total)| (0..=*total).contains(done)) {
                    self.progress.set(Some(progress));
                }
            }
            Some(("RETRY_AFTER", value)) => {
                if let Ok(seconds) = value.trim().parse::<f64>()
                    && let Ok(after) = Duration::try_from_secs_f64(seconds)
                {
                    self.retry_after.set(Some(after.min(RETRY_AFTER_MAX)));
                }
            }
            _ => {}
        }
    }
}
use crate::output::Stream;
use crate::sys::{self, WorkerSignals};

/// How long a `call` task waits for the template to say it started it.
const CALL_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a killed `call` task's template has to say how it ended.
const CALL_END_WAIT: Duration = Duration::from_secs(5);

/// Runs a `call` task in a process of its own: asks the preload template (on `calls`) to
/// fork a process that calls `call`, with the task's output pipes and environment; the
/// template answers the process's pid (its process group), then how it ended. The time
/// limit kills the process group, as for a command; what the process leaves behind comes to
/// the master, which kills it.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_call(
    task: &Task<'_>,
    call: &str,
    limit: Option<(Duration, &'static str)>,
    upkeep: Option<Upkeep<'_>>,
    account: &[(OsString, OsString)],
    calls: &Path,
    signals: &WorkerSignals,
    tail: &OutputTail,
    started: impl FnOnce(Pid),
) -> RunEnding {
    let asked = match ask_template(task, call, account, calls, false) {
        Ok(asked) => asked,
        Err(error) => return RunEnding::CouldNotStart(error),
    };
    let (connection, mut output) = (asked.connection, asked.output);
    let mut report = TemplateReport::default();
    let pid = match wait_for_pid(&connection, &mut report, signals) {
        Ok(pid) => pid,
        Err(ending) => return ending,
    };
    started(pid);
    let (ending, _) = follow(
        &connection,
        pid,
        &mut output,
        &mut report,
        limit,
        upkeep,
        signals,
        tail,
    );
    let _ = killpg(pid, Signal::SIGKILL);
    drain(&mut output, tail);
    ending
}

/// A job worker's long-lived process for `call` tasks, forked from the preload template.
pub struct Executor {
    connection: OwnedFd,
    /// Held open for the executor's life: when it closes (the job worker let the executor
    /// go, or died), the template kills the executor's process group.
    _lifeline: OwnedFd,
    pid: Pid,
    output: [Output; 2],
}

/// Runs a `call` task in the job worker's executor (`executor`, made when there is none):
/// the same bounds as [`run_call`]; an executor that a limit, a cancel or a lost claim
/// ended, or that died, is let go (`executor` is then None).
#[allow(clippy::too_many_arguments)]
pub fn run_in_executor(
    task: &Task<'_>,
    call: &str,
    executor: &mut Option<Executor>,
    notes: &RunNotes,
    limit: Option<(Duration, &'static str)>,
    upkeep: Option<Upkeep<'_>>,
    account: &[(OsString, OsString)],
    calls: &Path,
    signals: &WorkerSignals,
    tail: &OutputTail,
    started: impl FnOnce(Pid),
) -> RunEnding {
    let mut report = TemplateReport::default();
    // One that died since its last task (its template said so) is let go first.
    if let Some(current) = executor.as_ref() {
        report.read(current.connection.as_fd());
        if report.ending.is_some() || report.gone {
            *executor = None;
            report = TemplateReport::default();
        }
    }
    let sent = match executor.as_mut() {
        Some(current) => send_task(task, call, current),
        None => start_executor(task, call, account, calls, &mut report, signals).map(|new| {
            *executor = Some(new);
        }),
    };
    let Some(current) = executor.as_mut().filter(|_| sent.is_ok()) else {
        *executor = None;
        return match sent {
            Err(ending) => ending,
            Ok(()) => RunEnding::Lost,
        };
    };
    for output in &mut current.output {
        output.label.clone_from(&task.label);
    }
    let pid = current.pid;
    started(pid);
    report.notes = Some(notes);
    let (ending, alive) = follow(
        &current.connection,
        pid,
        &mut current.output,
        &mut report,
        limit,
        upkeep,
        signals,
        tail,
    );
    drain(&mut current.output, tail);
    if !alive {
        let _ = killpg(pid, Signal::SIGKILL);
        *executor = None;
    }
    ending
}

/// Forks a new executor for `task`'s first call.
fn start_executor(
    task: &Task<'_>,
    call: &str,
    account: &[(OsString, OsString)],
    calls: &Path,
    report: &mut TemplateReport,
    signals: &WorkerSignals,
) -> Result<Executor, RunEnding> {
    let asked = ask_template(task, call, account, calls, true).map_err(RunEnding::CouldNotStart)?;
    let pid = wait_for_pid(&asked.connection, report, signals)?;
    let lifeline = asked
        .lifeline
        .ok_or_else(|| RunEnding::CouldNotStart(io::Error::other("no lifeline")))?;
    Ok(Executor {
        connection: asked.connection,
        _lifeline: lifeline,
        pid,
        output: asked.output,
    })
}

/// Hands `task` to a running executor: its call, job name and environment, and its args.
fn send_task(task: &Task<'_>, call: &str, executor: &mut Executor) -> Result<(), RunEnding> {
    let mut text = format!("CALL={call}\nJOB={}\n", task.name);
    push_variables(
        &mut text,
        task.env.iter().map(|(k, v)| (k.into(), v.into())),
    );
    let input = task
        .input
        .map(input_file)
        .transpose()
        .map_err(RunEnding::CouldNotStart)?;
    let lent: Vec<BorrowedFd<'_>> = input.iter().map(AsFd::as_fd).collect();
    sys::send_with_descriptors(executor.connection.as_fd(), text.as_bytes(), &lent)
        .map_err(RunEnding::CouldNotStart)
}

/// Waits for the template to say the pid of the process it forked for a call.
fn wait_for_pid(
    connection: &OwnedFd,
    report: &mut TemplateReport,
    signals: &WorkerSignals,
) -> Result<Pid, RunEnding> {
    let asked = Instant::now();
    while report.pid.is_none() && report.ending.is_none() && !report.gone {
        let left = CALL_START_TIMEOUT.saturating_sub(asked.elapsed());
        if left.is_zero() {
            return Err(RunEnding::CouldNotStart(io::Error::other(format!(
                "the app template did not start it within {}s",
                CALL_START_TIMEOUT.as_secs()
            ))));
        }
        let mut fds = [PollFd::new(connection.as_fd(), PollFlags::POLLIN)];
        let _ = signals.poll(&mut fds, Some(left));
        report.read(connection.as_fd());
    }
    report
        .pid
        .ok_or_else(|| report.ending.take().unwrap_or(RunEnding::Lost))
}

/// Follows a call running in process group `pid` until it ends (the template's `EXIT=` or
/// `SIGNAL=`, or an executor's `DONE=`) or a bound ends it (the group is killed); returns
/// how it ended and whether the process is still there to serve another (an executor that
/// said `DONE=` and was not asked to stop).
#[allow(clippy::too_many_arguments)]
fn follow(
    connection: &OwnedFd,
    pid: Pid,
    output: &mut [Output; 2],
    report: &mut TemplateReport,
    limit: Option<(Duration, &'static str)>,
    upkeep: Option<Upkeep<'_>>,
    signals: &WorkerSignals,
    tail: &OutputTail,
) -> (RunEnding, bool) {
    let mut bounds = Bounds::new(limit, upkeep, pid);
    loop {
        if let Some(ending) = report.ending.take() {
            return (
                bounds.expired().unwrap_or_else(|| bounds.ended(ending)),
                false,
            );
        }
        if report.gone {
            return (bounds.expired().unwrap_or(RunEnding::Lost), false);
        }
        if let Some(status) = report.done.take() {
            let asked_to_stop = bounds.stopping.is_some();
            let ending = bounds
                .expired()
                .unwrap_or_else(|| bounds.ended(RunEnding::Exited(status)));
            return (ending, !asked_to_stop && bounds.expired().is_none());
        }
        if let Some(stop) = bounds.reached(pid) {
            let _ = killpg(pid, Signal::SIGKILL);
            // The template reaps it and says so; the run is over either way.
            let waited = Instant::now();
            while report.ending.is_none() && !report.gone && waited.elapsed() < CALL_END_WAIT {
                let mut fds = [PollFd::new(connection.as_fd(), PollFlags::POLLIN)];
                let _ = signals.poll(&mut fds, Some(CALL_END_WAIT));
                report.read(connection.as_fd());
            }
            return (stop, false);
        }
        let mut fds = vec![PollFd::new(connection.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            output
                .iter()
                .filter_map(|output| output.pipe.as_ref())
                .map(|pipe| PollFd::new(pipe.as_fd(), PollFlags::POLLIN)),
        );
        let _ = signals.poll(&mut fds, bounds.next_wake());
        drop(fds);
        drain(output, tail);
        report.read(connection.as_fd());
    }
}

/// What asking the template gives: the connection it (and an executor) answers on, the
/// read ends of the output, and an executor's lifeline.
struct Asked {
    connection: OwnedFd,
    output: [Output; 2],
    lifeline: Option<OwnedFd>,
}

/// Asks the preload template on `calls` to fork a process that calls `call` for `task`,
/// handing it the task's output pipes, environment (`account` and the task's `env`) and
/// args; `serve`: a process that stays for the next calls (an executor), with a lifeline.
fn ask_template(
    task: &Task<'_>,
    call: &str,
    account: &[(OsString, OsString)],
    calls: &Path,
    serve: bool,
) -> io::Result<Asked> {
    let connection = sys::connect_calls(calls).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!(
                "cannot reach the app template ({}): {error}",
                calls.display()
            ),
        )
    })?;
    let (out_read, out_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (err_read, err_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // The template runs at the HTTP workers' priority; the task runs at the cron worker's.
    let mut text = format!(
        "CALL={call}\nJOB={}\nNICE={}\n",
        task.name,
        crate::cron::CRON_NICENESS
    );
    if serve {
        text.push_str("SERVE=1\n");
    }
    let variables = account
        .iter()
        .map(|(key, value)| (key.to_string_lossy(), value.to_string_lossy()))
        .chain(
            task.env
                .iter()
                .map(|(key, value)| (key.into(), value.into())),
        );
    push_variables(&mut text, variables);
    // Then a job's args, read by the template as the call's arguments (an executor always
    // gets them, and its lifeline's far end after them).
    let input = match (task.input, serve) {
        (Some(input), _) => Some(input_file(input)?),
        (None, true) => Some(input_file(b"null")?),
        (None, false) => None,
    };
    let lifeline = serve
        .then(|| {
            socketpair(
                AddressFamily::Unix,
                SockType::Stream,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
        })
        .transpose()?;
    let mut lent = vec![out_write.as_fd(), err_write.as_fd()];
    lent.extend(input.as_ref().map(AsFd::as_fd));
    lent.extend(lifeline.as_ref().map(|(_, theirs)| theirs.as_fd()));
    sys::send_with_descriptors(connection.as_fd(), text.as_bytes(), &lent)?;
    Ok(Asked {
        connection,
        output: [
            Output::new(&task.label, Stream::Stdout, out_read)?,
            Output::new(&task.label, Stream::Stderr, err_read)?,
        ],
        lifeline: lifeline.map(|(ours, _)| ours),
    })
}

/// Adds `KEY=VALUE` lines for `variables`, leaving out any that would break the format.
fn push_variables<'a>(
    text: &mut String,
    variables: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
) {
    for (key, value) in variables {
        if !key.contains(['=', '\n']) && !value.contains('\n') {
            text.push_str(&format!("{key}={value}\n"));
        }
    }
}

/// What the template (and an executor) say about a `call`: `PID=<n>` once forked,
/// `DONE=<status>` after each call an executor made, then `EXIT=<status>` or
/// `SIGNAL=<number>` once the process ended; the end of the connection before that means
/// the template went away. An executor may also say `PROGRESS=<done>/<total>` and
/// `RETRY_AFTER=<seconds>` (kept in `notes`): words of the job's code, checked and bounded.
#[derive(Default)]
struct TemplateReport<'a> {
    pid: Option<Pid>,
    done: Option<i32>,
    ending: Option<RunEnding>,
    /// The connection ended without a word of how the process ended.
    gone: bool,
    notes: Option<&'a RunNotes>,
}

impl TemplateReport<'_> {
    /// Reads every message waiting on `connection`.
    fn read(&mut self, connection: BorrowedFd<'_>) {
        loop {
            match sys::receive_message(connection) {
                Ok(Some(message)) if message.is_empty() => {
                    self.gone = self.ending.is_none();
                    return;
                }
                Ok(Some(message)) => {
                    for line in message.lines() {
                        let number = |value: &str| value.trim().parse::<i32>().ok();
                        match line.split_once('=') {
                            Some(("PID", value)) => self.pid = number(value).map(Pid::from_raw),
                            Some(("DONE", value)) => self.done = number(value),
                            Some(("PROGRESS" | "RETRY_AFTER", _)) => {
                                if let Some(notes) = self.notes {
                                    notes.note(line);
                                }
                            }
                            Some(("EXIT", value)) => {
                                self.ending = number(value).map(RunEnding::Exited);
                            }
                            Some(("SIGNAL", value)) => {
                                self.ending = number(value).map(RunEnding::Signaled);
                            }
                            Some(("ERROR", value)) => {
                                self.ending = Some(RunEnding::CouldNotStart(io::Error::other(
                                    value.to_string(),
                                )));
                            }
                            _ => {}
                        }
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    self.gone = self.ending.is_none();
                    return;
                }
            }
        }
    }
}
