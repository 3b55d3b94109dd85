//! The preload template (`[app] preload = true`): the program started once to load the
//! application, which then forks every HTTP worker when the master asks, so a respawn costs
//! a fork, not a cold start, and the loaded memory is shared copy-on-write. The master never
//! runs application code: it only asks, and supervises what comes back.
//!
//! The protocol (docs/programs.md, "The template protocol"), in the order things happen:
//! 1. The master starts the program as for an exec worker (the listening socket on fd 3,
//!    `NOTIFY_SOCKET`, its output logged), plus its end of a SEQPACKET channel on fd 4
//!    (`FORKWARDEN_CONTROL_FD=4`), and not as a child subreaper. It loads the application
//!    and says `READY=1`.
//! 2. For each worker, the master sends one message on the channel: `KEY=VALUE` lines to put
//!    in the worker's environment (`FORKWARDEN_FORK=<n>`, `FORKWARDEN_SLOT`,
//!    `FORKWARDEN_GENERATION`, `WATCHDOG_USEC`), with two descriptors attached: the worker's
//!    stdout and stderr.
//! 3. The template forks, and the child forks the worker and waits until the worker has
//!    sent `FORKWARDEN_FORK=<n>` to `NOTIFY_SOCKET`; then that child exits, so the worker
//!    comes to the master (a child subreaper) as its own child, already known by its pid.
//! 4. The worker makes its own process group, puts the descriptors on 1 and 2, sets
//!    `LISTEN_PID` (and `WATCHDOG_PID`) to its pid, sets its parent-death signal once its
//!    parent is the master, and from then on is an exec worker like any other (`READY=1`,
//!    `BUSY=1`/`IDLE=1`, `WATCHDOG=1`). The master applies RLIMIT_AS to it from outside.
//!
//! 5. For cron jobs that `call` a function, the template also gets a listening socket on fd 5
//!    (`FORKWARDEN_CALLS_FD`), which cron workers connect to (see `cron/runner.rs`): the
//!    template forks the job's process as its own child and reports its pid and its end.
//!    The master only binds that socket, in its private directory.
//!
//! A worker's death never touches the template; the template's death never touches the
//! workers (each is in its own process group); a template that dies is started again, with
//! the same backoff as a worker. On SIGHUP a new template loads the code from disk; workers
//! are forked from it once it is ready, and the old template then leaves.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use super::exec::{ExecPipes, ExecState};
use super::pool::{Worker, WorkerKind, WorkerProcess, backoff, ready_timeout_given};
use super::report::Exit;
use super::{Master, Spawned};
use crate::format::{elapsed, seconds};
use crate::id::{Role, TEMPLATE, WorkerId, template_name};
use crate::notify::Notification;
use crate::scoreboard::WorkerRow;
use crate::sys::{self, ProcessHandle};
use crate::worker::{ProgramSpec, TemplateChannels, WorkerRun, WorkerSpec};
use forkwarden_worker::kit::KitParts;

/// The notification by which a worker forked by a template says which request it answers.
pub const FORK_KEY: &str = "FORKWARDEN_FORK";

/// One running template.
pub struct Template {
    /// A child of the master: its pid is its own until the master reaps it.
    pub pid: Pid,
    pub generation: u64,
    pub started: Instant,
    pub state: TemplateState,
    /// The master's end of the channel fork requests go on.
    control: OwnedFd,
    /// Its output pipes and sd_notify state, as for an exec worker.
    pub exec: ExecState,
}

/// Where a template is in its life.
#[derive(Clone, Debug)]
pub enum TemplateState {
    /// Loading the application; killed as a failed start if not ready by `ready_by`.
    Loading { ready_by: Option<Instant> },
    /// Loaded: forks workers when asked.
    Ready,
    /// Told to go (SIGTERM); killed at `kill_at` if still there (None: SIGKILL sent).
    Leaving { kill_at: Option<Instant> },
}

impl Template {
    /// `app template (pid 4312)`.
    pub fn name(&self) -> String {
        template_name(self.pid)
    }

    fn is_leaving(&self) -> bool {
        matches!(self.state, TemplateState::Leaving { .. })
    }

    /// Asks it to go (SIGTERM to its process group, which holds no worker), and to be
    /// killed if it has not after `grace`.
    fn leave(&mut self, grace: Duration) {
        if !self.is_leaving() {
            self.state = TemplateState::Leaving {
                kill_at: Some(Instant::now() + grace),
            };
            let _ = killpg(self.pid, Signal::SIGTERM);
        }
    }

    /// Kills it at once.
    fn kill(&mut self) {
        self.state = TemplateState::Leaving { kill_at: None };
        let _ = killpg(self.pid, Signal::SIGKILL);
    }

    /// The next moment the master must act on it by itself.
    fn deadline(&self) -> Option<Instant> {
        match self.state {
            TemplateState::Loading { ready_by } => ready_by,
            TemplateState::Ready => self.exec.watchdog_deadline(),
            TemplateState::Leaving { kill_at } => kill_at,
        }
    }
}

/// A worker asked of a template and not heard from yet.
struct ForkRequest {
    /// Counts the requests, for log lines.
    number: u64,
    /// What the worker must answer (`FORKWARDEN_FORK=<token>`): random, so that no other
    /// process that reaches the notification socket can pass for it.
    token: String,
    id: WorkerId,
    generation: u64,
    template: Pid,
    asked_at: Instant,
    answer_by: Instant,
    /// The worker's output pipes; the template got copies of the write ends.
    pipes: ExecPipes,
    /// The worker's scoreboard row; the template got its descriptor (for the worker kit).
    row: WorkerRow,
}

/// The templates (the current generation's, and older ones on their way out), the fork
/// requests in flight, the current template's crash-loop backoff, and the socket cron
/// workers' `call` jobs reach the templates on.
pub struct Templates {
    running: Vec<Template>,
    /// Where preload templates take cron workers' `call` jobs (bound with the first
    /// template; cron workers connect to it by path).
    calls_path: PathBuf,
    calls: Option<OwnedFd>,
    requests: Vec<ForkRequest>,
    next_request: u64,
    /// Templates in a row that ended before they were ready.
    failures_in_a_row: u32,
    /// Not before this instant is a template started again.
    start_at: Option<Instant>,
}

impl Templates {
    /// No template yet; `calls_path`: where the `call` socket is to be bound.
    pub fn new(calls_path: PathBuf) -> Self {
        Self {
            running: Vec::new(),
            calls_path,
            calls: None,
            requests: Vec::new(),
            next_request: 0,
            failures_in_a_row: 0,
            start_at: None,
        }
    }

    /// Where cron workers reach the templates for `call` jobs.
    pub fn calls_path(&self) -> &Path {
        &self.calls_path
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    pub fn pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.running.iter().map(|template| template.pid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Template> {
        self.running.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Template> {
        self.running.iter_mut()
    }

    /// Whether a worker for slot `id` has been asked of a template and not heard from.
    pub fn requested(&self, id: WorkerId) -> bool {
        self.requests.iter().any(|request| request.id == id)
    }

    /// The template of `generation` that is not leaving, if any.
    fn of_generation(&self, generation: u64) -> Option<&Template> {
        self.running
            .iter()
            .find(|template| template.generation == generation && !template.is_leaving())
    }

    /// The loaded template of the newest generation, leaving or not.
    fn newest_ready(&self) -> Option<&Template> {
        self.running
            .iter()
            .filter(|template| matches!(template.state, TemplateState::Ready))
            .max_by_key(|template| template.generation)
    }

    /// The earliest moment the master must act on a template or a request.
    pub fn next_deadline(&self, include_start: bool) -> Option<Instant> {
        let requests = self.requests.iter().map(|request| request.answer_by);
        let start = self.start_at.filter(|_| include_start);
        self.running
            .iter()
            .filter_map(Template::deadline)
            .chain(requests)
            .chain(start)
            .min()
    }
}

impl Master {
    /// Whether HTTP workers are forked from a template.
    pub(super) fn preloads(&self) -> bool {
        self.config.app.as_ref().is_some_and(|app| app.preload)
    }

    /// Starts the template of the current generation when there is none (not while
    /// stopping, and not before the backoff after failed loads allows).
    pub(super) fn ensure_template(&mut self) {
        let generation = self.pool.generation();
        let needed = self.pool.wanted(Role::Http) > 0
            || (self.pool.wanted(Role::Cron) > 0
                && self.config.cron.iter().any(|job| job.call.is_some()))
            || (self.pool.wanted(Role::Job) > 0
                && self.config.job.iter().any(|kind| kind.call.is_some()));
        if !self.preloads()
            || !needed
            || self.phase.is_stopping()
            || self.templates.of_generation(generation).is_some()
            || self
                .templates
                .start_at
                .is_some_and(|at| at > Instant::now())
        {
            return;
        }
        self.templates.start_at = None;
        match self.start_template(generation) {
            Ok(pid) => info!(
                event = "template_started",
                pid = pid.as_raw(),
                generation,
                "{TEMPLATE} started as pid {pid} (generation {generation}): it loads the \
                 application once, then forks the http workers"
            ),
            Err(error) => {
                warn!(
                    event = "template_start_failed",
                    "cannot start the {TEMPLATE}: {error}; trying again in {}",
                    elapsed(super::SPAWN_RETRY)
                );
                self.templates.start_at = Some(Instant::now() + super::SPAWN_RETRY);
            }
        }
    }

    fn start_template(&mut self, generation: u64) -> io::Result<Pid> {
        // Without HTTP workers (a template for cron jobs only) no port is bound for it.
        if self.pool.wanted(Role::Http) > 0 {
            self.http_listener()?;
        }
        let Some(app) = self.config.app.as_ref() else {
            return Err(io::Error::other("no [app] to preload"));
        };
        let listener = self.sockets.http();
        if let Some(listener) = listener {
            listener.set_nonblocking(app.nonblocking)?;
        }
        if self.templates.calls.is_none() {
            let calls = sys::calls_listener(&self.templates.calls_path)?;
            super::give_to_workers_user(&self.config, &self.templates.calls_path)?;
            self.templates.calls = Some(calls);
        }
        let pipes = ExecPipes::new()?;
        let (control, template_end) = sys::template_channel()?;
        let Some(calls) = self.templates.calls.as_ref() else {
            return Err(io::Error::other("no socket for call jobs"));
        };
        // Never read: a template has no scoreboard row, but a spec lends one (the workers
        // it forks put theirs in its place in the kit).
        let row = WorkerRow::new()?;
        let spec = WorkerSpec {
            context: self.worker_context(
                WorkerId {
                    role: Role::Http,
                    slot: 0,
                },
                generation,
                &row,
            ),
            config: &self.config,
            run: WorkerRun::Program(ProgramSpec {
                app,
                output: pipes.for_child(),
                listener,
                notify_path: self.notifications.path(),
                watchdog: self.enforcer.limits().heartbeat,
                kit: Some(KitParts {
                    settings: self.handed_settings.as_fd(),
                    board: &self.board,
                    doorbell: &self.doorbell,
                    handoff: self.sockets.handoff(),
                    row: &row,
                }),
                template: Some(TemplateChannels {
                    control: template_end.as_fd(),
                    calls: calls.as_fd(),
                }),
            }),
        };
        let keep = spec.inherited_descriptors();
        let started = Instant::now();
        #[allow(unsafe_code)]
        // SAFETY: as in `spawn`: the child uses only what `spec` lends it, all listed by
        // `inherited_descriptors` (now with the template's end of the channel), and ends in
        // exec or `exit_now`.
        let pid = unsafe { sys::fork_process(&keep, || crate::worker::run(spec)) }?;
        drop(template_end);
        let ready_timeout = self.config.program_ready_timeout(app);
        let tokens = self.output_tokens.pair();
        let exec = ExecState::new(
            pipes,
            tokens,
            self.poll.registry(),
            0,
            self.enforcer.limits().heartbeat,
        )?;
        self.templates.running.push(Template {
            pid,
            generation,
            started,
            state: TemplateState::Loading {
                ready_by: Some(started + ready_timeout).filter(|_| !ready_timeout.is_zero()),
            },
            control,
            exec,
        });
        Ok(pid)
    }

    /// Asks the current generation's template for a worker in slot `id`; `Waiting` while
    /// that template is not ready yet (its READY=1 wakes the master, which asks then).
    /// Meanwhile (a reload loading, or failing to: a broken deploy), a slot left with no
    /// worker at all gets one of the older generation, from its template, still loaded: a
    /// failed deploy and a few ordinary deaths must not leave nobody serving.
    pub(super) fn request_fork(&mut self, id: WorkerId) -> io::Result<Spawned> {
        let current = self
            .templates
            .of_generation(self.pool.generation())
            .filter(|template| matches!(template.state, TemplateState::Ready));
        let template = match current {
            Some(template) => template,
            None if self.pool.serving_in(id) => return Ok(Spawned::Waiting),
            None => match self.templates.newest_ready() {
                Some(older) => {
                    info!(
                        pid = older.pid.as_raw(),
                        slot = id.slot,
                        "{id} is forked by the {TEMPLATE} of generation {} (pid {}) until \
                         generation {}'s has loaded: no other worker serves its slot",
                        older.generation,
                        older.pid,
                        self.pool.generation()
                    );
                    older
                }
                None => return Ok(Spawned::Waiting),
            },
        };
        // The worker is of its template's generation (the code it runs).
        let generation = template.generation;
        let template_pid = template.pid;
        let pipes = ExecPipes::new()?;
        let number = self.templates.next_request;
        let token = fork_token()?;
        let mut text = format!(
            "{FORK_KEY}={token}\nFORKWARDEN_SLOT={}\nFORKWARDEN_GENERATION={generation}\n",
            id.slot
        );
        if let Some(period) = self.enforcer.limits().heartbeat {
            text.push_str(&format!("WATCHDOG_USEC={}\n", period.as_micros()));
        }
        let output = pipes.for_child();
        let mut row = WorkerRow::new()?;
        let row_file = row
            .descriptor()
            .ok_or_else(|| io::Error::other("a new row has its descriptor"))?;
        sys::send_with_descriptors(
            template.control.as_fd(),
            text.as_bytes(),
            &[output.stdout, output.stderr, row_file],
        )
        .map_err(|error| io::Error::new(error.kind(), format!("asking the template: {error}")))?;
        // The template has its copy (the message is queued with it).
        row.close_descriptor();
        self.templates.next_request += 1;
        let now = Instant::now();
        let answer_by = now + self.fork_answer_timeout();
        debug!(
            pid = template_pid.as_raw(),
            slot = id.slot,
            "asked the {TEMPLATE} (pid {template_pid}) for {id} (fork request {number})"
        );
        self.templates.requests.push(ForkRequest {
            number,
            token,
            id,
            generation,
            template: template_pid,
            asked_at: now,
            answer_by,
            pipes,
            row,
        });
        Ok(Spawned::Requested)
    }

    /// How long a template may take to fork a worker that says `FORKWARDEN_FORK`.
    fn fork_answer_timeout(&self) -> Duration {
        self.config
            .app
            .as_ref()
            .map_or(self.config.ready_timeout.duration(), |app| {
                self.config.program_ready_timeout(app)
            })
    }

    /// Handles `FORKWARDEN_FORK=<token>` from a worker a template forked: it joins the
    /// pool, as an exec worker of the slot it was asked for. Returns false if
    /// `notification` is not such a message.
    ///
    /// Anything that reaches the notification socket may send this, so the master adopts
    /// only a sender that knows a waiting request's token and that is the template's
    /// grandchild (through the middle process) or, the middle process gone, the master's
    /// own child. Any other sender is ignored, never signalled: it is not known to be ours.
    pub(super) fn adopt_forked(&mut self, notification: &Notification) -> bool {
        let Some(answer) = notification.get(FORK_KEY) else {
            return false;
        };
        let pid = notification.pid;
        if self.pool.get_mut(pid).is_some() {
            return false;
        }
        let Some(index) = self
            .templates
            .requests
            .iter()
            .position(|request| request.token == answer)
        else {
            // A request given up on (its template was killed), or a guess. A worker that
            // nobody wants comes to the master once its middle process has gone, and is
            // killed then as a left-behind process.
            warn!(
                event = "fork_answer_unexpected",
                pid = pid.as_raw(),
                "pid {pid} says it answers a fork request that is not waiting; ignored"
            );
            return true;
        };
        let template = self.templates.requests[index].template;
        match self.forked_by(pid, template) {
            Ok(process) => {
                let request = self.templates.requests.swap_remove(index);
                if let Err(error) = self.adopt(process, request) {
                    warn!(
                        event = "forked_worker_refused",
                        pid = pid.as_raw(),
                        "cannot take on forked worker pid {pid}: {error}"
                    );
                }
            }
            Err(why) => warn!(
                event = "fork_answer_refused",
                pid = pid.as_raw(),
                "pid {pid} answers fork request {} but {why}; ignored",
                self.templates.requests[index].number
            ),
        }
        true
    }

    /// A handle on `pid` if it descends from template `template` as a forked worker does:
    /// the child of a child of the template (its middle process), or of the master once that
    /// middle process has exited. Why not, otherwise.
    fn forked_by(&self, pid: Pid, template: Pid) -> Result<ProcessHandle, String> {
        let process = ProcessHandle::open(pid).map_err(|error| format!("is gone ({error})"))?;
        // Twice at most: the middle process may exit between the two reads, which makes
        // the master the parent.
        for _ in 0..2 {
            let Some(lineage) = crate::proctree::lineage(pid) else {
                return Err("is gone".into());
            };
            let through_middle =
                || crate::proctree::lineage(lineage.parent).map(|middle| middle.parent == template);
            let ours = if lineage.parent == self.pid {
                Some(true)
            } else {
                through_middle()
            };
            match ours {
                // What /proc said was about this very process: it has not been reaped since
                // the handle was opened, so its pid is still its own.
                Some(true) if process.is_alive() => return Ok(process),
                Some(true) => return Err("is gone".into()),
                Some(false) => {
                    return Err(format!(
                        "is not a process the {TEMPLATE} (pid {template}) forked: its parent \
                         is pid {}",
                        lineage.parent
                    ));
                }
                None => continue,
            }
        }
        Err("its parent went away while it was looked at".into())
    }

    fn adopt(&mut self, process: ProcessHandle, request: ForkRequest) -> io::Result<()> {
        let pid = process.pid();
        let ready_timeout = self.fork_answer_timeout();
        let ready_by = Some(request.asked_at + ready_timeout).filter(|_| !ready_timeout.is_zero());
        let tokens = self.output_tokens.pair();
        let limit_request = crate::limits::request_limit_for_worker(&self.config);
        let program = ExecState::new(
            request.pipes,
            tokens,
            self.poll.registry(),
            limit_request,
            self.enforcer.limits().heartbeat,
        )?;
        let worker = Worker::new(
            WorkerProcess::Adopted(process),
            request.id,
            WorkerKind::Program(Box::new(program)),
            request.generation,
            request.asked_at,
            request.row,
            ready_by,
        );
        let hard = self.config.limit_memory_hard.bytes();
        if hard > 0
            && self.config.limit_memory_hard_rlimit
            && let Err(error) = sys::set_address_space_limit_of(pid, hard)
                .and_then(|()| own_still(worker.process()))
        {
            warn!(
                pid = pid.as_raw(),
                "{}: cannot apply limit_memory_hard as RLIMIT_AS: {error}",
                worker.name()
            );
        }
        debug!(
            pid = pid.as_raw(),
            "{} forked by the {TEMPLATE} (pid {}) in {}",
            worker.name(),
            request.template,
            elapsed(request.asked_at.elapsed())
        );
        self.pool.add(worker);
        self.log_spawned(request.id, pid);
        Ok(())
    }

    /// Handles a template's message; false if `notification` is not from a template.
    pub(super) fn on_template_notification(&mut self, notification: &Notification) -> bool {
        let Some(template) = self
            .templates
            .running
            .iter_mut()
            .find(|template| template.pid == notification.pid)
        else {
            return false;
        };
        template.exec.heard(notification);
        if let Some(status) = notification.get("STATUS") {
            template.exec.status = Some(status.to_string());
        }
        if notification.get("READY") == Some("1")
            && matches!(template.state, TemplateState::Loading { .. })
        {
            template.state = TemplateState::Ready;
            self.templates.failures_in_a_row = 0;
            info!(
                event = "template_ready",
                pid = template.pid.as_raw(),
                generation = template.generation,
                "{} loaded the application in {}; http workers are forked from it",
                template.name(),
                elapsed(template.started.elapsed())
            );
        }
        true
    }

    /// Handles the end of process `pid` if it was a template; false if it was not.
    pub(super) fn on_template_exit(&mut self, pid: Pid, exit: &Exit) -> bool {
        let Some(index) = self.templates.running.iter().position(|t| t.pid == pid) else {
            return false;
        };
        let mut template = self.templates.running.swap_remove(index);
        let name = template.name();
        template.exec.close(&name, self.poll.registry());
        let dropped = self.drop_requests_to(pid);
        let dropped = if dropped > 0 {
            format!("; {dropped} fork requests to it will be asked again")
        } else {
            String::new()
        };
        let ending = exit.ending;
        let current = template.generation == self.pool.generation();
        match template.state {
            TemplateState::Leaving { .. } if !current || self.phase.is_stopping() => {
                info!(
                    event = "template_ended",
                    pid = pid.as_raw(),
                    "{name} left: {ending}{dropped}"
                );
            }
            _ if !current => {
                info!(
                    event = "template_ended",
                    pid = pid.as_raw(),
                    "{name} of generation {} ended: {ending}; generation {} replaces it",
                    template.generation,
                    self.pool.generation()
                );
            }
            TemplateState::Loading { .. }
                if self.cannot_start(
                    Role::Http,
                    self.templates.failures_in_a_row.saturating_add(1),
                ) =>
            {
                let line = format!(
                    "{name} failed to load the application: {ending} before it said READY=1"
                );
                self.give_up_starting(Role::Http, &line, None, &template.exec.last_lines());
            }
            TemplateState::Loading { .. } => {
                self.templates.failures_in_a_row += 1;
                let failures = self.templates.failures_in_a_row;
                let delay = backoff(failures);
                self.templates.start_at = Some(Instant::now() + delay);
                let serving = self.pool.count(Role::Http);
                warn!(
                    event = "template_load_failed",
                    pid = pid.as_raw(),
                    failures_in_a_row = failures,
                    "{name} failed to load the application: {ending} before it said READY=1 \
                     (its output is above); {serving} http workers go on serving; starting \
                     another in {} ({failures} failed loads in a row){dropped}",
                    elapsed(delay)
                );
            }
            TemplateState::Ready | TemplateState::Leaving { .. } => {
                warn!(
                    event = "template_died",
                    pid = pid.as_raw(),
                    "{name} died after {}: {ending}; the http workers it forked go on \
                     serving; starting another{dropped}",
                    elapsed(template.started.elapsed())
                );
            }
        }
        true
    }

    /// Forgets the fork requests sent to template `pid`; returns how many there were.
    fn drop_requests_to(&mut self, pid: Pid) -> usize {
        let before = self.templates.requests.len();
        self.templates
            .requests
            .retain(|request| request.template != pid);
        before - self.templates.requests.len()
    }

    /// Acts on the templates' deadlines: not ready within ready_timeout, silent past their
    /// watchdog, no worker for a request within ready_timeout, not gone after SIGTERM.
    pub(super) fn enforce_template_deadlines(&mut self, now: Instant) {
        let answer_timeout = self.fork_answer_timeout();
        let late: Vec<(Pid, WorkerId)> = self
            .templates
            .requests
            .iter()
            .filter(|request| request.answer_by <= now)
            .map(|request| (request.template, request.id))
            .collect();
        for (pid, id) in late {
            self.drop_requests_to(pid);
            if let Some(template) = self.templates.running.iter_mut().find(|t| t.pid == pid) {
                warn!(
                    event = "template_killed",
                    pid = pid.as_raw(),
                    "{} killed: no worker said {FORK_KEY} within ready_timeout ({}) after it \
                     was asked for {id}",
                    template.name(),
                    seconds(answer_timeout)
                );
                template.kill();
            }
        }
        for template in &mut self.templates.running {
            if template.deadline().is_none_or(|at| at > now) {
                continue;
            }
            let why = match template.state {
                TemplateState::Loading { ready_by } => format!(
                    "did not report READY=1 within ready_timeout ({})",
                    seconds(ready_timeout_given(template.started, ready_by))
                ),
                TemplateState::Ready => format!(
                    "watchdog: no WATCHDOG=1 for {}",
                    crate::format::measured(
                        now.saturating_duration_since(template.exec.last_alive)
                    )
                ),
                TemplateState::Leaving { .. } => "did not leave within graceful_timeout".into(),
            };
            warn!(
                event = "template_killed",
                pid = template.pid.as_raw(),
                "{} killed: {why}",
                template.name()
            );
            let loading = matches!(template.state, TemplateState::Loading { .. });
            template.kill();
            if loading {
                // Its end is then a failed load, with backoff.
                template.state = TemplateState::Loading { ready_by: None };
            }
        }
    }

    /// Sends away the templates no longer needed: older generations once the current
    /// one is ready, and all of them once preloading is off and the workers are ready.
    pub(super) fn retire_old_templates(&mut self) {
        let grace = self.config.graceful_timeout.duration();
        let newest_ready = self
            .templates
            .running
            .iter()
            .filter(|template| matches!(template.state, TemplateState::Ready))
            .map(|template| template.generation)
            .max();
        let preloads = self.preloads();
        let all_ready = self.pool.all_ready();
        for template in &mut self.templates.running {
            let replaced = newest_ready.is_some_and(|newest| template.generation < newest);
            if !template.is_leaving() && (replaced || (!preloads && all_ready)) {
                info!(
                    event = "template_leaving",
                    pid = template.pid.as_raw(),
                    "{} (generation {}) is told to leave: {}",
                    template.name(),
                    template.generation,
                    if replaced {
                        "the new generation's template is ready"
                    } else {
                        "preload is off since the reload"
                    }
                );
                template.leave(grace);
            }
        }
    }

    /// A reload to `generation` supersedes the templates of older ones still loading: they
    /// are killed (their workers would be replaced as soon as they came).
    pub(super) fn cancel_loading_templates(&mut self, generation: u64) {
        for template in &mut self.templates.running {
            if template.generation < generation
                && matches!(template.state, TemplateState::Loading { .. })
            {
                info!(
                    event = "template_superseded",
                    pid = template.pid.as_raw(),
                    "{} (generation {}) killed: superseded by generation {generation} before \
                     it had loaded",
                    template.name(),
                    template.generation
                );
                template.kill();
            }
        }
    }

    /// On the way down: every template is told to leave.
    pub(super) fn stop_templates(&mut self) {
        let grace = self.config.graceful_timeout.duration();
        self.templates.requests.clear();
        for template in &mut self.templates.running {
            template.leave(grace);
        }
    }

    /// Kills every template at once (a forced stop, or the loop failing).
    pub(super) fn kill_templates(&mut self) {
        for template in &mut self.templates.running {
            template.kill();
        }
    }
}

/// A fork request's token: 128 random bits, in hex.
fn fork_token() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| io::Error::other(error.to_string()))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Whether what was just done to `process` by its pid reached it: it was still unreaped
/// afterwards, so the pid was its own.
fn own_still(process: &WorkerProcess) -> io::Result<()> {
    match process {
        WorkerProcess::Adopted(handle) if !handle.is_alive() => {
            Err(io::Error::other("it was gone by then"))
        }
        _ => Ok(()),
    }
}
