//! Running one task (a cron run, or an attempt of a job from the queue): its own process
//! group, its output logged line by line, a wall-clock limit that kills the whole group, a
//! claim kept while it runs (a lost claim kills it; a stop asked through the claim ends it
//! with SIGTERM, then SIGKILL after a grace), and at the end, whatever it ended or not,
//! every process it left behind killed and reaped (the worker is their subreaper), so that
//! no part of a run outlives it and the next run starts alone.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::warn;

use crate::output::{LineSplitter, Stream, log_program_line};
use crate::sys::{self, WorkerSignals};

mod call;

pub use call::{Executor, RunNotes, run_in_executor};

use crate::notify::NotifyReceiver;

/// The last lines a job wrote (both streams, in the order they came), for its run history.
#[derive(Debug, Default)]
pub struct OutputTail {
    lines: std::cell::RefCell<std::collections::VecDeque<String>>,
}

impl OutputTail {
    /// Lines kept: what a run's history shows of its output.
    const LINES: usize = 20;
    /// Longest line kept (cut at a character boundary).
    const LINE_BYTES: usize = 512;

    fn push(&self, stream: Stream, line: &str) {
        let mut end = line.len().min(Self::LINE_BYTES);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        let mut lines = self.lines.borrow_mut();
        if lines.len() == Self::LINES {
            lines.pop_front();
        }
        let tag = match stream {
            Stream::Stdout => "",
            Stream::Stderr => "[stderr] ",
        };
        lines.push_back(format!("{tag}{}", &line[..end]));
    }

    pub fn take(&self) -> Vec<String> {
        self.lines.borrow_mut().drain(..).collect()
    }
}

/// What one run runs.
pub struct Task<'a> {
    /// How its log lines name it: `cron job nightly`, `job send_mail #12`.
    pub label: String,
    /// Its name in the template's request (`JOB=`).
    pub name: &'a str,
    pub action: TaskAction<'a>,
    /// A command's working directory.
    pub cwd: Option<&'a Path>,
    /// Variables added to its environment (after the account's).
    pub env: Vec<(String, String)>,
    /// Bytes given on a command's standard input, or to a `call` as its arguments (a job's
    /// args, as JSON); a command without gets /dev/null.
    pub input: Option<&'a [u8]>,
    /// Where a command's notes go (a job's `PROGRESS=`, `RETRY_AFTER=` on the
    /// `NOTIFY_SOCKET` it gets); None: it gets no socket.
    pub notes: Option<&'a RunNotes>,
}

/// What runs a task: a program, or a function of the preloaded application.
#[derive(Clone, Copy, Debug)]
pub enum TaskAction<'a> {
    Command(&'a [String]),
    Call(&'a str),
}

/// How long a task asked to stop (SIGTERM) has before its process group is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How a run ended.
#[derive(Debug)]
pub enum RunEnding {
    Exited(i32),
    Signaled(i32),
    /// Past its wall-clock limit: the whole process group was killed.
    TimedOut {
        ran: Duration,
        limit: Duration,
        key: &'static str,
    },
    CouldNotStart(io::Error),
    /// A `call` job whose template went away before it said how the run ended.
    Lost,
    /// Its claim no longer held (why): the whole process group was killed, so that it does
    /// not run beside the run another host may start.
    ClaimLost(String),
    /// Asked to stop through its claim (why: cancelled): SIGTERM, then SIGKILL after
    /// [`STOP_GRACE`]; `signal` is what ended it, if a signal did.
    Stopped {
        why: String,
        signal: Option<i32>,
    },
}

/// Keeping a run's claim while it runs: `renew` is called every `every`, and says what
/// became of the claim ([`Renewal`]). The claim holds for `holds_for` past its last
/// renewal: `deadline` kills the run then, whatever `renew` is doing (waiting on a cut link).
pub struct Upkeep<'a> {
    pub every: Duration,
    pub holds_for: Duration,
    pub deadline: &'a sys::ClaimDeadline,
    pub renew: &'a mut dyn FnMut() -> Renewal,
}

/// What one renewal of a run's claim found.
#[derive(Debug)]
pub enum Renewal {
    /// Renewed by a request sent at this instant.
    Renewed(Instant),
    /// Not renewed this time, but it still holds.
    Holds,
    /// Lost (why): the run is killed at once.
    Lost(String),
    /// Renewed, but whoever owns the claim asks the run to stop (why): SIGTERM, then
    /// SIGKILL after a grace.
    StopAsked(String),
}

impl RunEnding {
    pub fn succeeded(&self) -> bool {
        matches!(self, Self::Exited(0))
    }

    /// The exit status, when the job exited.
    pub fn exit_status(&self) -> Option<i32> {
        match self {
            Self::Exited(status) => Some(*status),
            _ => None,
        }
    }

    /// The signal that ended it, when one did (a timeout's is SIGKILL).
    pub fn signal(&self) -> Option<i32> {
        match self {
            Self::Signaled(signal) => Some(*signal),
            Self::TimedOut { .. } | Self::ClaimLost(_) => Some(Signal::SIGKILL as i32),
            Self::Stopped { signal, .. } => *signal,
            _ => None,
        }
    }
}

impl fmt::Display for RunEnding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(status) => write!(f, "exited with status {status}"),
            Self::Signaled(signal) => {
                let name = Signal::try_from(*signal).map_or("a signal", Signal::as_str);
                write!(f, "killed by {name}")
            }
            Self::TimedOut { ran, limit, key } => write!(
                f,
                "killed with its process group: {key} exceeded (running {:.2}s > {}s)",
                ran.as_secs_f64(),
                limit.as_secs_f64()
            ),
            Self::CouldNotStart(error) => write!(f, "could not start: {error}"),
            Self::Lost => f.write_str(
                "ended without a word from the app template, which went away during the run",
            ),
            Self::ClaimLost(why) => write!(f, "killed with its process group: {why}"),
            Self::Stopped { why, signal } => {
                let how = match signal.and_then(|signal| Signal::try_from(signal).ok()) {
                    Some(Signal::SIGKILL) => "killed with SIGKILL after the grace",
                    Some(signal) => signal.as_str(),
                    None => "it exited",
                };
                write!(f, "stopped ({why}; SIGTERM, then {how})")
            }
        }
    }
}

/// Runs `task` to its end. `limit` is its wall-clock limit (`key` names the setting);
/// `account` are the variables of the user it runs as (`USER`, `HOME`...; the task's own
/// `env` wins); `calls` is where the preload template takes `call` tasks; `started` learns
/// the task's pid (which is also its process group) as soon as it runs; `tail` keeps the
/// last lines it writes; `upkeep` keeps the run's claim meanwhile (a lost claim kills it).
#[allow(clippy::too_many_arguments)]
pub fn run(
    task: &Task<'_>,
    limit: Option<(Duration, &'static str)>,
    upkeep: Option<Upkeep<'_>>,
    account: &[(OsString, OsString)],
    calls: &Path,
    signals: &WorkerSignals,
    tail: &OutputTail,
    started: impl FnOnce(Pid),
) -> RunEnding {
    let program = match task.action {
        TaskAction::Call(call) => {
            return call::run_call(
                task, call, limit, upkeep, account, calls, signals, tail, started,
            );
        }
        TaskAction::Command(program) => program,
    };
    let Some((first, arguments)) = program.split_first() else {
        return RunEnding::CouldNotStart(io::Error::other("an empty command"));
    };
    let mut command = Command::new(first);
    for (variable, _) in std::env::vars_os() {
        if !crate::config::passed_to_children(&variable) {
            command.env_remove(variable);
        }
    }
    let stdin = match task.input.map(input_file).transpose() {
        Ok(Some(file)) => Stdio::from(file),
        Ok(None) => Stdio::null(),
        Err(error) => return RunEnding::CouldNotStart(error),
    };
    command
        .args(arguments)
        .envs(account.iter().map(|(key, value)| (key, value)))
        .envs(task.env.iter().map(|(key, value)| (key, value)))
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = task.cwd {
        command.current_dir(cwd);
    }
    let notes = match task.notes.map(|_| notes_socket()).transpose() {
        Ok(socket) => socket.zip(task.notes),
        Err(error) => return RunEnding::CouldNotStart(error),
    };
    if let Some((socket, _)) = &notes {
        command.env("NOTIFY_SOCKET", socket.path());
    }
    sys::supervise_job(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return RunEnding::CouldNotStart(error),
    };
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    started(pid);
    let ending = match Watch::new(task, &mut child, tail, notes) {
        Ok(mut watch) => watch.until_exit(&mut child, pid, limit, upkeep, signals),
        Err(error) => {
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = child.wait();
            RunEnding::CouldNotStart(error)
        }
    };
    let left_behind = end_of_run(pid);
    if !left_behind.is_empty() {
        warn!(
            task = task.name,
            count = left_behind.len(),
            "{}: {} process(es) it left behind were killed: {}",
            task.label,
            left_behind.len(),
            left_behind.join(", ")
        );
    }
    ending
}

/// `input` in a sealed memory file, read from its start: a task's standard input (or a
/// call's arguments), which never blocks the worker however large it is and whenever the
/// task reads it.
fn input_file(input: &[u8]) -> io::Result<OwnedFd> {
    let text = std::str::from_utf8(input).map_err(io::Error::other)?;
    let file = sys::sealed_text_file(c"forkwarden-task-input", text)?;
    nix::unistd::lseek(&file, 0, nix::unistd::Whence::SeekSet)?;
    Ok(file)
}

/// How long the end of a run waits for the processes it killed to be gone.
const LEFT_BEHIND_WAIT: Duration = Duration::from_secs(5);

/// Kills what is left of a run whose main process `job` has been reaped: its process group,
/// and every process that came to the cron worker (its subreaper) when its parent ended,
/// however it detached itself; reaps them all. Returns them as `pid (command)`.
fn end_of_run(job: Pid) -> Vec<String> {
    let _ = killpg(job, Signal::SIGKILL);
    // Only the process the run's orphans come to (the cron worker) may take its children
    // for the run's: any other caller may have children of its own.
    if !nix::sys::prctl::get_child_subreaper().unwrap_or(false) {
        return Vec::new();
    }
    let me = nix::unistd::getpid();
    let deadline = Instant::now() + LEFT_BEHIND_WAIT;
    let mut killed: Vec<(Pid, String)> = Vec::new();
    loop {
        let children = crate::proctree::children(me);
        if children.is_empty() {
            break;
        }
        for child in &children {
            if !killed.iter().any(|(pid, _)| pid == child) {
                let name = crate::proctree::command_name(*child).unwrap_or_else(|| "?".into());
                killed.push((*child, name));
            }
            let _ = nix::sys::signal::kill(*child, Signal::SIGKILL);
        }
        // Reap each; those below it come to the cron worker meanwhile, for the next round.
        for child in children {
            if let Ok(exited) = sys::pidfd_open(child) {
                let mut fds = [PollFd::new(exited.as_fd(), PollFlags::POLLIN)];
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = nix::poll::poll(
                    &mut fds,
                    nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX),
                );
            }
            let _ = nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
        if Instant::now() >= deadline {
            warn!("left-behind processes did not die within {LEFT_BEHIND_WAIT:?}");
            break;
        }
    }
    killed
        .into_iter()
        .map(|(pid, name)| format!("{pid} ({name})"))
        .collect()
}

/// A running job: the descriptor that tells when it exits, and its two output pipes.
struct Watch<'a> {
    exited: OwnedFd,
    output: [Output; 2],
    tail: &'a OutputTail,
    /// A command job's notification socket, and where its notes go.
    notes: Option<(NotifyReceiver, &'a RunNotes)>,
}

/// A socket of its own for a command job's notes, at an abstract address (nothing left
/// on disk): `@forkwarden-job/<job worker pid>/<n>`.
fn notes_socket() -> io::Result<NotifyReceiver> {
    static SOCKETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SOCKETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    NotifyReceiver::bind_abstract(&format!("forkwarden-job/{}/{n}", std::process::id()))
}

impl<'a> Watch<'a> {
    fn new(
        task: &Task<'_>,
        child: &mut Child,
        tail: &'a OutputTail,
        notes: Option<(NotifyReceiver, &'a RunNotes)>,
    ) -> io::Result<Self> {
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            return Err(io::Error::other("the job's output pipes are missing"));
        };
        Ok(Self {
            exited: sys::pidfd_open(pid)?,
            output: [
                Output::new(&task.label, Stream::Stdout, stdout)?,
                Output::new(&task.label, Stream::Stderr, stderr)?,
            ],
            tail,
            notes,
        })
    }

    /// Keeps the notes waiting on the socket: those of a process of the job's user (the
    /// address is visible to every local user; the job's own processes are its user's).
    fn read_notes(&self) {
        let Some((socket, notes)) = &self.notes else {
            return;
        };
        let own = nix::unistd::getuid().as_raw();
        while let Ok(Some(message)) = socket.recv() {
            if message.uid == Some(own) {
                message.text.lines().for_each(|line| notes.note(line));
            }
        }
    }

    fn until_exit(
        &mut self,
        child: &mut Child,
        pid: Pid,
        limit: Option<(Duration, &'static str)>,
        upkeep: Option<Upkeep<'_>>,
        signals: &WorkerSignals,
    ) -> RunEnding {
        let mut bounds = Bounds::new(limit, upkeep, pid);
        loop {
            if let Some(stop) = bounds.reached(pid) {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = child.wait();
                self.drain();
                return stop;
            }
            let mut fds = vec![PollFd::new(self.exited.as_fd(), PollFlags::POLLIN)];
            fds.extend(
                self.output
                    .iter()
                    .filter_map(|output| output.pipe.as_ref())
                    .map(|pipe| PollFd::new(pipe.as_fd(), PollFlags::POLLIN)),
            );
            fds.extend(
                self.notes
                    .as_ref()
                    .map(|(socket, _)| PollFd::new(socket.descriptor(), PollFlags::POLLIN)),
            );
            // A stop request (SIGTERM) only ends this wait: the job is let finish, and the
            // master kills what is left after graceful_timeout.
            let _ = signals.poll(&mut fds, bounds.next_wake());
            let has_exited = fds[0].any().unwrap_or(false);
            drop(fds);
            self.drain();
            // Before its end is read: a note sent just before it exited counts.
            self.read_notes();
            if has_exited {
                // Killed by its claim's deadline: that is how it ended.
                if let Some(expired) = bounds.expired() {
                    let _ = child.wait();
                    return expired;
                }
                let ending = match child.wait() {
                    Ok(status) => match (status.code(), status.signal()) {
                        (Some(code), _) => RunEnding::Exited(code),
                        (None, Some(signal)) => RunEnding::Signaled(signal),
                        (None, None) => RunEnding::Exited(-1),
                    },
                    Err(error) => RunEnding::CouldNotStart(error),
                };
                return bounds.ended(ending);
            }
        }
    }

    fn drain(&mut self) {
        drain(&mut self.output, self.tail);
    }
}

/// What may end a running job early: its wall-clock limit, the loss of its claim, and a
/// stop asked through the claim.
struct Bounds<'a> {
    limit: Option<(Duration, &'static str)>,
    upkeep: Option<Upkeep<'a>>,
    start: Instant,
    /// When a renewal was last tried (or the run started).
    tried: Instant,
    /// Why it was asked to stop, and when SIGTERM was sent.
    stopping: Option<(String, Instant)>,
}

impl<'a> Bounds<'a> {
    /// The bounds of the run whose process group is `group`; its claim's deadline is set
    /// from now (the claim was made just before).
    fn new(
        limit: Option<(Duration, &'static str)>,
        upkeep: Option<Upkeep<'a>>,
        group: Pid,
    ) -> Self {
        let start = Instant::now();
        if let Some(upkeep) = &upkeep {
            upkeep.deadline.set(group, upkeep.holds_for);
        }
        Self {
            limit,
            upkeep,
            start,
            tried: start,
            stopping: None,
        }
    }

    /// How a run that ended by itself (`ending`) is told: as stopped, if it was asked to.
    fn ended(&self, ending: RunEnding) -> RunEnding {
        match &self.stopping {
            Some((why, _)) => RunEnding::Stopped {
                why: why.clone(),
                signal: ending.signal(),
            },
            None => ending,
        }
    }

    /// Renews the claim when a renewal is due; how the run must end now, if it must: past
    /// its limit, or its claim lost (or past its deadline, which killed it already).
    fn reached(&mut self, group: Pid) -> Option<RunEnding> {
        if let Some(expired) = self.expired() {
            return Some(expired);
        }
        let ran = self.start.elapsed();
        if let Some((limit, key)) = self.limit
            && ran >= limit
        {
            return Some(RunEnding::TimedOut { ran, limit, key });
        }
        if let Some((why, since)) = &self.stopping
            && since.elapsed() >= STOP_GRACE
        {
            return Some(RunEnding::Stopped {
                why: why.clone(),
                signal: Some(Signal::SIGKILL as i32),
            });
        }
        let renewed = {
            let upkeep = self.upkeep.as_mut()?;
            if !upkeep.every.saturating_sub(self.tried.elapsed()).is_zero() {
                return None;
            }
            self.tried = Instant::now();
            (upkeep.renew)()
        };
        if let Some(expired) = self.expired() {
            return Some(expired);
        }
        match renewed {
            Renewal::Renewed(at) => {
                self.extend_deadline(group, at);
                None
            }
            Renewal::StopAsked(why) => {
                self.extend_deadline(group, Instant::now());
                if self.stopping.is_none() {
                    let _ = killpg(group, Signal::SIGTERM);
                    self.stopping = Some((why, Instant::now()));
                }
                None
            }
            Renewal::Holds => None,
            Renewal::Lost(why) => Some(RunEnding::ClaimLost(why)),
        }
    }

    /// The claim was renewed by a request sent at `at`: its deadline moves.
    fn extend_deadline(&self, group: Pid, at: Instant) {
        if let Some(upkeep) = &self.upkeep {
            upkeep
                .deadline
                .set(group, upkeep.holds_for.saturating_sub(at.elapsed()));
        }
    }

    /// The run's end if its claim's deadline passed (the kernel's timer killed its group).
    fn expired(&self) -> Option<RunEnding> {
        let upkeep = self.upkeep.as_ref()?;
        upkeep.deadline.expired().then(|| {
            RunEnding::ClaimLost(format!(
                "its claim was not renewed within {} (three quarters of cron_lease): it was \
                 stopped then, before another host may take the job over",
                crate::format::elapsed(upkeep.holds_for)
            ))
        })
    }

    /// How long the watch may wait: until the limit, or the next renewal.
    fn next_wake(&self) -> Option<Duration> {
        let to_limit = self
            .limit
            .map(|(limit, _)| limit.saturating_sub(self.start.elapsed()));
        let to_renewal = self
            .upkeep
            .as_ref()
            .map(|upkeep| upkeep.every.saturating_sub(self.tried.elapsed()));
        let to_kill = self
            .stopping
            .as_ref()
            .map(|(_, since)| STOP_GRACE.saturating_sub(since.elapsed()));
        [to_limit, to_renewal, to_kill].into_iter().flatten().min()
    }
}

impl Drop for Bounds<'_> {
    fn drop(&mut self) {
        if let Some(upkeep) = &self.upkeep {
            upkeep.deadline.clear();
        }
    }
}

/// Logs what a task's pipes hold now, without waiting.
fn drain(output: &mut [Output], tail: &OutputTail) {
    for pipe in output {
        pipe.read_available(tail);
    }
}

/// One output pipe of a task (or of an executor, task after task), logged line by line as
/// it arrives, each line named by the task's label.
struct Output {
    label: String,
    stream: Stream,
    /// None once the process closed it.
    pipe: Option<File>,
    lines: LineSplitter,
}

impl Output {
    fn new(label: &str, stream: Stream, pipe: OwnedFd) -> io::Result<Self> {
        fcntl(&pipe, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(Self {
            label: label.to_string(),
            stream,
            pipe: Some(File::from(pipe)),
            lines: LineSplitter::default(),
        })
    }

    /// Reads what was written so far and logs each complete line (kept in `tail` too);
    /// never blocks.
    fn read_available(&mut self, tail: &OutputTail) {
        let mut chunk = [0u8; 8192];
        while let Some(pipe) = self.pipe.as_mut() {
            match pipe.read(&mut chunk) {
                Ok(0) => {
                    self.pipe = None;
                    if let Some(line) = self.lines.finish() {
                        self.log(&line, tail);
                    }
                }
                Ok(read) => {
                    for line in self.lines.push(&chunk[..read]) {
                        self.log(&line, tail);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    warn!("{}: reading its output failed: {error}", self.label);
                    self.pipe = None;
                }
            }
        }
    }

    fn log(&self, line: &str, tail: &OutputTail) {
        log_program_line(&self.label, self.stream, line);
        tail.push(self.stream, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job<'a>(command: &'a [String]) -> Task<'a> {
        Task {
            label: "cron job test".into(),
            name: "test",
            action: TaskAction::Command(command),
            cwd: None,
            env: vec![("FW_TEST".to_string(), "yes".to_string())],
            input: None,
            notes: None,
        }
    }

    fn words(command: &[&str]) -> Vec<String> {
        command.iter().map(|part| part.to_string()).collect()
    }

    #[test]
    fn endings_read_naturally() {
        assert_eq!(RunEnding::Exited(0).to_string(), "exited with status 0");
        assert!(RunEnding::Exited(0).succeeded());
        assert_eq!(RunEnding::Signaled(9).to_string(), "killed by SIGKILL");
        let timed_out = RunEnding::TimedOut {
            ran: Duration::from_millis(1004),
            limit: Duration::from_secs(1),
            key: "timeout",
        };
        assert_eq!(
            timed_out.to_string(),
            "killed with its process group: timeout exceeded (running 1.00s > 1s)"
        );
    }

    #[test]
    fn a_missing_program_cannot_start() {
        let signals = WorkerSignals::for_tests();
        let ending = run(
            &job(&words(&["/nonexistent/program"])),
            None,
            None,
            &[],
            Path::new("/nonexistent"),
            &signals,
            &OutputTail::default(),
            |_| {},
        );
        assert!(matches!(ending, RunEnding::CouldNotStart(_)), "{ending:?}");
    }

    #[test]
    fn the_exit_status_and_environment_reach_the_caller() {
        let signals = WorkerSignals::for_tests();
        let mut pid = None;
        let ending = run(
            &job(&words(&["sh", "-c", "test \"$FW_TEST\" = yes && exit 7"])),
            None,
            None,
            &[],
            Path::new("/nonexistent"),
            &signals,
            &OutputTail::default(),
            |started| pid = Some(started),
        );
        assert!(matches!(ending, RunEnding::Exited(7)), "{ending:?}");
        assert!(pid.is_some());
    }

    #[test]
    fn the_last_lines_of_both_streams_are_kept_in_order() {
        let signals = WorkerSignals::for_tests();
        let tail = OutputTail::default();
        let script = "for i in $(seq 1 30); do echo line $i; done; echo oops >&2";
        let ending = run(
            &job(&words(&["sh", "-c", script])),
            None,
            None,
            &[],
            Path::new("/nonexistent"),
            &signals,
            &tail,
            |_| {},
        );
        assert!(matches!(ending, RunEnding::Exited(0)), "{ending:?}");
        let lines = tail.take();
        assert_eq!(lines.len(), OutputTail::LINES, "{lines:?}");
        assert_eq!(lines.first().map(String::as_str), Some("line 12"));
        assert_eq!(lines.last().map(String::as_str), Some("[stderr] oops"));
    }

    /// The claim deadline is the process's one SIGALRM timer: one test at a time uses it.
    static CLAIM_DEADLINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_run_whose_claim_is_lost_is_killed_and_says_why() {
        let _alone = CLAIM_DEADLINE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let deadline = sys::ClaimDeadline::install().unwrap();
        let signals = WorkerSignals::for_tests();
        let mut renewals = 0;
        let mut renew = || {
            renewals += 1;
            if renewals < 3 {
                Renewal::Renewed(Instant::now())
            } else {
                Renewal::Lost("lost for the test".to_string())
            }
        };
        let upkeep = Upkeep {
            every: Duration::from_millis(50),
            holds_for: Duration::from_secs(5),
            deadline: &deadline,
            renew: &mut renew,
        };
        let started = Instant::now();
        let ending = run(
            &job(&words(&["sleep", "30"])),
            Some((Duration::from_secs(20), "timeout")),
            Some(upkeep),
            &[],
            Path::new("/nonexistent"),
            &signals,
            &OutputTail::default(),
            |_| {},
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not left to run"
        );
        assert_eq!(renewals, 3);
        assert_eq!(
            ending.to_string(),
            "killed with its process group: lost for the test"
        );
        assert_eq!(ending.signal(), Some(Signal::SIGKILL as i32));
    }

    #[test]
    fn a_renewal_that_hangs_does_not_keep_the_run_past_its_claim() {
        // Before: the stop at three quarters of the lease waited for the renewal to return:
        // on a link cut without a word, past the lease, while another host took over.
        let _alone = CLAIM_DEADLINE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let deadline = sys::ClaimDeadline::install().unwrap();
        let signals = WorkerSignals::for_tests();
        let job_pid = std::cell::Cell::new(None);
        let gone_when_renewal_returned = std::cell::Cell::new(None);
        let mut renew = || {
            // A renewal that hangs for a second, as on a cut link.
            std::thread::sleep(Duration::from_secs(1));
            let gone = job_pid.get().is_some_and(|pid: Pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
                    stat.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
            });
            gone_when_renewal_returned.set(Some(gone));
            Renewal::Renewed(Instant::now())
        };
        let upkeep = Upkeep {
            every: Duration::from_millis(50),
            holds_for: Duration::from_millis(300),
            deadline: &deadline,
            renew: &mut renew,
        };
        let ending = run(
            &job(&words(&["sleep", "30"])),
            None,
            Some(upkeep),
            &[],
            Path::new("/nonexistent"),
            &signals,
            &OutputTail::default(),
            |pid| job_pid.set(Some(pid)),
        );
        assert_eq!(gone_when_renewal_returned.get(), Some(true), "{ending:?}");
        assert!(
            ending
                .to_string()
                .contains("its claim was not renewed within 0.30s"),
            "{ending}"
        );
        assert_eq!(ending.signal(), Some(Signal::SIGKILL as i32));
    }

    #[test]
    fn past_its_limit_the_whole_group_is_killed() {
        let signals = WorkerSignals::for_tests();
        let dir = tempfile::tempdir().unwrap();
        let child_pid = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", child_pid.display());
        let limit = Some((Duration::from_millis(300), "timeout"));
        let ending = run(
            &job(&words(&["sh", "-c", &script])),
            limit,
            None,
            &[],
            Path::new("/nonexistent"),
            &signals,
            &OutputTail::default(),
            |_| {},
        );
        assert!(matches!(ending, RunEnding::TimedOut { .. }), "{ending:?}");
        let sleeper: i32 = std::fs::read_to_string(&child_pid)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background child was in the job's group: SIGKILL reaches it too. Delivery is
        // asynchronous, so poll (bounded) until it is gone or a zombie awaiting its reaper.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{sleeper}/stat")).is_ok_and(|stat| {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z')
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(), "the job's child survived the timeout");
    }
}
