//! The worker population: who is running, where each worker is in its life, which slots
//! want a worker, and crash-loop backoff.
//!
//! Bookkeeping, and no system call but the signals a worker is sent: the master asks the
//! pool what to do (which slots to fill, which workers to retire, when the next deadline is)
//! and does it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tracing::warn;

use super::exec::{ExecState, Markers};
use super::lifecycle::{Departure, Leaving, Lifecycle, RetireReason};
use crate::config::Program;
use crate::id::{Role, WorkerId, worker_name};
use crate::scoreboard::{RowSnapshot, WorkerRow, WorkerState};
use crate::sys::ProcessHandle;

/// Delay before the second consecutive failed start is retried; doubled at each further one.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between two starts of a slot that keeps failing.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Runs of one cron job (or attempts of one job kind) that ended: well, or not (an
/// interrupted one included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub succeeded: u64,
    pub failed: u64,
}

impl RunCounts {
    pub fn add(&mut self, other: RunCounts) {
        self.succeeded = self.succeeded.saturating_add(other.succeeded);
        self.failed = self.failed.saturating_add(other.failed);
    }
}

/// What the master last measured of a worker's memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryReading {
    /// Resident memory of the worker (with its program's or job's processes).
    pub rss: Option<u64>,
    /// Its own address space (VmSize), which RLIMIT_AS caps.
    pub address_space: Option<u64>,
    /// When it was read; None: never.
    pub at: Option<Instant>,
    /// The worker's request count then: a built-in worker's memory only grows in requests.
    pub requests: u64,
}

/// How the master reaches a worker's process. It signals only processes it can prove are
/// its own: a pid is such a proof only while the process has not been reaped.
pub enum WorkerProcess {
    /// A child the master forked. Only the master reaps it, and it leaves the pool when it
    /// is reaped: while it is in the pool, its pid (and the process group id it leads) is
    /// its own.
    Child(Pid),
    /// A worker a preload template forked: it is not the master's child until its middle
    /// process has gone, and that process could reap it first. A handle names it whatever
    /// becomes of its pid (one descriptor for each such worker).
    Adopted(ProcessHandle),
}

impl WorkerProcess {
    pub fn pid(&self) -> Pid {
        match self {
            Self::Child(pid) => *pid,
            Self::Adopted(handle) => handle.pid(),
        }
    }

    /// Sends `signal` to the process, or (`group`) to the process group it leads.
    pub fn signal(&self, signal: Signal, group: bool) -> std::io::Result<()> {
        match (self, group) {
            (Self::Child(pid), false) => kill(*pid, signal).map_err(Into::into),
            (Self::Child(pid), true) => killpg(*pid, signal).map_err(Into::into),
            (Self::Adopted(handle), false) => handle.signal(signal),
            (Self::Adopted(handle), true) => handle.signal_group(signal),
        }
    }
}

/// A live worker process.
pub struct Worker {
    pub pid: Pid,
    /// How it is reached to be signalled.
    process: WorkerProcess,
    pub id: WorkerId,
    pub generation: u64,
    pub started: Instant,
    pub lifecycle: Lifecycle,
    pub row: WorkerRow,
    pub memory: MemoryReading,
    /// What kind of worker it is, with what the master keeps for that kind.
    pub kind: WorkerKind,
}

/// The kinds of worker, and how each is watched: whether its row tells its readiness, who
/// answers the per-request limits, what its memory counts, how it is signalled.
pub enum WorkerKind {
    /// forkwarden's own HTTP worker, forked by the master: its row tells everything, and it
    /// answers the per-request limits itself.
    Http,
    /// A cron worker, forked by the master: its row also counts the runs of each job of its
    /// config (`jobs`, in order).
    Cron { jobs: Vec<String> },
    /// A job worker, forked by the master: its row counts the attempts of each kind of its
    /// config (`kinds`, in order), says which it runs now and how far it is, and carries the
    /// jobs of each channel of the config (`channels`, then the others) as it last read them.
    Job {
        kinds: Vec<String>,
        channels: Vec<String>,
    },
    /// A program (`[app]`, `[[program]]`, or a worker a template forked): its output pipes
    /// and what it says over sd_notify.
    Program(Box<ExecState>),
}

impl WorkerKind {
    /// A program's state, for what only programs have (output, notifications).
    pub fn program(&self) -> Option<&ExecState> {
        match self {
            Self::Program(exec) => Some(exec),
            Self::Http | Self::Cron { .. } | Self::Job { .. } => None,
        }
    }

    pub fn program_mut(&mut self) -> Option<&mut ExecState> {
        match self {
            Self::Program(exec) => Some(exec),
            Self::Http | Self::Cron { .. } | Self::Job { .. } => None,
        }
    }

    /// Whether it says it is ready in its row (a forked worker), rather than with READY=1.
    pub fn ready_in_row(&self) -> bool {
        self.program().is_none()
    }

    /// Whether it keeps its own scoreboard row and answers the per-request limits itself
    /// (504 on SIGUSR2, 503 past RLIMIT_CPU): a built-in worker, or a program running
    /// forkwarden's HTTP worker (the Python runner).
    pub fn answers_limits(&self) -> bool {
        match self {
            // Its job cannot be answered for: a limit kills it with its job.
            Self::Job { .. } => false,
            _ => self
                .program()
                .is_none_or(|exec| exec.markers == Markers::Scoreboard),
        }
    }

    /// Whether its row counts its requests (a program that says nothing of them: no).
    pub fn counts_requests(&self) -> bool {
        self.program().is_none_or(ExecState::counts_requests)
    }

    /// Whether it leads a process group of its own, which goes with it (a program, whose
    /// children may be anywhere below it).
    pub fn has_process_group(&self) -> bool {
        self.program().is_some()
    }

    /// Whether its memory is that of its whole process tree (a program's, with its
    /// children), not its own process's.
    pub fn measured_with_children(&self) -> bool {
        self.program().is_some()
    }

    /// What a worker of this kind does to show it is ready, for the line that kills it for
    /// not doing so in time.
    pub fn readiness(&self) -> &'static str {
        match self {
            Self::Program(_) => "report READY=1",
            Self::Http | Self::Cron { .. } | Self::Job { .. } => "become ready",
        }
    }
}

impl Worker {
    /// A worker just forked in slot `id`, to be ready by `ready_by`.
    pub fn new(
        process: WorkerProcess,
        id: WorkerId,
        kind: WorkerKind,
        generation: u64,
        started: Instant,
        row: WorkerRow,
        ready_by: Option<Instant>,
    ) -> Self {
        Self {
            pid: process.pid(),
            process,
            id,
            generation,
            started,
            lifecycle: Lifecycle::Starting { ready_by },
            row,
            memory: MemoryReading::default(),
            kind,
        }
    }

    /// The runs of each cron job of its config that its row says ended (a cron worker's).
    pub fn run_counts(&self) -> impl Iterator<Item = (&str, RunCounts)> + '_ {
        let jobs: &[String] = match &self.kind {
            WorkerKind::Cron { jobs } => jobs,
            _ => &[],
        };
        let counts = self.row.job_counts(jobs.len());
        jobs.iter()
            .zip(counts)
            .map(|(job, (succeeded, failed))| (job.as_str(), RunCounts { succeeded, failed }))
    }

    /// How its row is laid out, if it is a job worker.
    pub fn job_shape(&self) -> Option<crate::scoreboard::JobRowShape> {
        match &self.kind {
            WorkerKind::Job { kinds, channels } => Some(crate::scoreboard::JobRowShape {
                kinds: kinds.len(),
                channels: channels.len() + 1,
            }),
            _ => None,
        }
    }

    /// What a job worker's row counts: the attempts of each kind of its config (named), the
    /// queue as it last read it, its job's progress.
    pub fn job_figures(&self) -> Option<(&[String], crate::scoreboard::JobFigures)> {
        let WorkerKind::Job { kinds, .. } = &self.kind else {
            return None;
        };
        let shape = self.job_shape()?;
        Some((kinds, self.row.job_figures(shape)))
    }

    /// The cron jobs (or job kinds) of its config, if it is a cron (or job) worker.
    fn task_names(&self) -> &[String] {
        match &self.kind {
            WorkerKind::Cron { jobs } => jobs,
            WorkerKind::Job { kinds, .. } => kinds,
            WorkerKind::Http | WorkerKind::Program(_) => &[],
        }
    }

    /// The cron job (or job kind) it is running now, as its row says (`job NAME`, `job
    /// KIND #ID`).
    pub fn running_job(&self, row: &RowSnapshot) -> Option<String> {
        let busy = row.busy_for.is_some() && row.state == WorkerState::Busy;
        let work = row.request.strip_prefix("job ")?;
        let job = work.split(" #").next().unwrap_or(work);
        // Only a job of its config: the row is the worker's to write.
        (busy && self.task_names().iter().any(|name| name == job)).then(|| job.to_string())
    }

    /// `http worker 2 (pid 4312)`, the worker's name in log lines.
    pub fn name(&self) -> String {
        worker_name(self.id, self.pid)
    }

    /// The process, for what is done to it besides the signals above.
    pub fn process(&self) -> &WorkerProcess {
        &self.process
    }

    /// See [`WorkerKind::answers_limits`].
    pub fn answers_limits(&self) -> bool {
        self.kind.answers_limits()
    }

    /// Sends `signal` to the worker: to its whole process group for an exec worker, whose
    /// program may have children of its own (only SIGKILL, for one that answers the limits
    /// itself: the others are requests to its worker loop). One that is already gone will
    /// be reaped anyway.
    pub fn signal(&self, signal: Signal) {
        let group =
            self.kind.has_process_group() && (signal == Signal::SIGKILL || !self.answers_limits());
        let sent = self.process.signal(signal, group);
        if let Err(error) = sent
            && error.raw_os_error() != Some(libc::ESRCH)
        {
            warn!(
                pid = self.pid.as_raw(),
                signal = signal.as_str(),
                "cannot send {} to pid {}: {error}",
                signal.as_str(),
                self.pid
            );
        }
    }

    /// It has become ready (and serves, or did before it was told to go).
    pub fn is_ready(&self) -> bool {
        match &self.lifecycle {
            Lifecycle::Starting { .. } => false,
            Lifecycle::Serving => true,
            Lifecycle::Leaving(leaving) => leaving.was_ready,
        }
    }

    /// Still meant to serve: neither told to stop nor being killed.
    pub fn is_serving(&self) -> bool {
        !matches!(self.lifecycle, Lifecycle::Leaving(_))
    }

    pub fn leaving(&self) -> Option<&Leaving> {
        match &self.lifecycle {
            Lifecycle::Leaving(leaving) => Some(leaving),
            _ => None,
        }
    }

    /// How it is being made to go, if it is.
    pub fn departure_mut(&mut self) -> Option<&mut Departure> {
        match &mut self.lifecycle {
            Lifecycle::Leaving(leaving) => Some(&mut leaving.departure),
            _ => None,
        }
    }

    /// Records that it is ready; false if it already was (or is leaving).
    pub fn mark_ready(&mut self) -> bool {
        if matches!(self.lifecycle, Lifecycle::Starting { .. }) {
            self.lifecycle = Lifecycle::Serving;
            return true;
        }
        false
    }

    /// Decides that it is to go; `reported`: the caller logs its end now.
    pub fn depart(&mut self, departure: Departure, reported: bool) {
        self.lifecycle = Lifecycle::Leaving(Leaving {
            departure,
            was_ready: self.is_ready(),
            reported,
        });
    }

    /// The next moment the master must act on this worker by itself: a ready deadline, a
    /// graceful deadline, a SIGKILL after a gentler signal, a program's watchdog.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.lifecycle {
            Lifecycle::Starting { ready_by } => *ready_by,
            Lifecycle::Serving => self.kind.program().and_then(ExecState::watchdog_deadline),
            Lifecycle::Leaving(leaving) => match &leaving.departure {
                Departure::Retire { deadline, .. } => Some(*deadline),
                Departure::Kill { sigkill_at, .. } => *sigkill_at,
            },
        }
    }
}

/// What the pool remembers about a slot across its workers.
#[derive(Default)]
struct SlotHistory {
    /// Failed starts in a row (the report says how many).
    failures_in_a_row: u32,
    /// Not before this instant is the slot started again.
    respawn_at: Option<Instant>,
}

pub struct Pool {
    workers: Vec<Worker>,
    slots: HashMap<WorkerId, SlotHistory>,
    /// How many workers each role wants (a role absent wants none).
    wanted: BTreeMap<Role, u32>,
    generation: u64,
    /// The roles of which a worker of this server has been ready once (one that is gone
    /// included).
    served: BTreeSet<Role>,
    /// Job workers that ended, whose job's end the next job worker started records.
    job_deaths: Vec<crate::jobs::JobDeath>,
    /// Job workers whose end was noted when the master killed them, not to be noted again
    /// when they are reaped.
    job_deaths_noted: BTreeSet<i32>,
}

impl Pool {
    pub fn new(wanted_http: u32, wanted_cron: u32, wanted_job: u32, programs: &[Program]) -> Self {
        let mut pool = Self {
            workers: Vec::new(),
            slots: HashMap::new(),
            wanted: BTreeMap::from([
                (Role::Http, wanted_http),
                (Role::Cron, wanted_cron),
                (Role::Job, wanted_job),
            ]),
            generation: 1,
            served: BTreeSet::new(),
            job_deaths: Vec::new(),
            job_deaths_noted: BTreeSet::new(),
        };
        pool.set_programs(programs);
        pool
    }

    /// Wants `count` instances of each of `programs`, and none of any other program.
    pub fn set_programs(&mut self, programs: &[Program]) {
        for (role, count) in &mut self.wanted {
            if matches!(role, Role::Program(_)) {
                *count = 0;
            }
        }
        for program in programs {
            self.wanted
                .insert(Role::program(&program.name), program.count);
        }
    }

    pub fn wanted(&self, role: Role) -> u32 {
        self.wanted.get(&role).copied().unwrap_or(0)
    }

    pub fn set_wanted(&mut self, role: Role, count: u32) {
        self.wanted.insert(role, count);
    }

    /// Every role that wants workers, or did.
    fn roles(&self) -> impl Iterator<Item = Role> + '_ {
        self.wanted.keys().copied()
    }

    pub fn is_wanted(&self, id: WorkerId) -> bool {
        id.slot < self.wanted(id.role)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Starts a new config generation: every slot is to be filled by a new worker.
    pub fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter()
    }

    pub fn workers_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        self.workers.iter_mut()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Workers of `role` that are ready and not leaving.
    pub fn serving(&self, role: Role) -> usize {
        self.workers
            .iter()
            .filter(|worker| worker.id.role == role && worker.is_ready() && worker.is_serving())
            .count()
    }

    pub fn count(&self, role: Role) -> usize {
        self.workers.iter().filter(|w| w.id.role == role).count()
    }

    pub fn add(&mut self, worker: Worker) {
        self.workers.push(worker);
    }

    pub fn get_mut(&mut self, pid: Pid) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|worker| worker.pid == pid)
    }

    /// Removes and returns the worker with `pid` (after it was reaped).
    pub fn take(&mut self, pid: Pid) -> Option<Worker> {
        let index = self.workers.iter().position(|worker| worker.pid == pid)?;
        Some(self.workers.swap_remove(index))
    }

    /// Remembers a job worker that ended, for the next one started to record its job's end.
    /// Once per worker: noted when the master kills it (its replacement starts at once),
    /// else when it is reaped.
    pub fn note_job_death(&mut self, death: crate::jobs::JobDeath) {
        if self.job_deaths_noted.insert(death.worker_pid) {
            self.job_deaths.push(death);
        }
    }

    /// Job worker `pid` is reaped: its end is noted for good.
    pub fn forget_job_death(&mut self, pid: i32) {
        self.job_deaths_noted.remove(&pid);
    }

    /// The job workers that ended since the last job worker was started.
    pub fn take_job_deaths(&mut self) -> Vec<crate::jobs::JobDeath> {
        std::mem::take(&mut self.job_deaths)
    }

    /// Remembers that a worker taken out had become ready (see [`Pool::has_served`]).
    pub fn note_ended(&mut self, worker: &Worker) {
        if worker.is_ready() {
            self.served.insert(worker.id.role);
        }
    }

    /// Whether a worker of `role` has ever become ready on this server: until then, a
    /// failed start may mean that its program or application cannot start at all (cron
    /// workers that start say nothing of an HTTP application that cannot be imported).
    pub fn has_served(&self, role: Role) -> bool {
        self.served.contains(&role)
            || self
                .workers
                .iter()
                .any(|worker| worker.id.role == role && worker.is_ready())
    }

    /// The running worker of the current generation in slot `id`, if any.
    pub fn current(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.iter().find(|worker| {
            worker.id == id && worker.generation == self.generation && worker.is_serving()
        })
    }

    /// Whether some worker, of any generation, serves slot `id` (is not leaving).
    pub fn serving_in(&self, id: WorkerId) -> bool {
        self.workers
            .iter()
            .any(|worker| worker.id == id && worker.is_serving())
    }

    /// Whether every wanted slot has a ready worker of the current generation.
    pub fn all_ready(&self) -> bool {
        self.roles().all(|role| {
            (0..self.wanted(role)).all(|slot| {
                self.current(WorkerId { role, slot })
                    .is_some_and(Worker::is_ready)
            })
        })
    }

    /// Slots that want a worker of the current generation and may get one now.
    pub fn slots_to_fill(&self, now: Instant) -> Vec<WorkerId> {
        let mut ids = Vec::new();
        for role in self.roles() {
            for slot in 0..self.wanted(role) {
                let id = WorkerId { role, slot };
                let backing_off = self
                    .slots
                    .get(&id)
                    .and_then(|history| history.respawn_at)
                    .is_some_and(|at| at > now);
                if !backing_off && self.current(id).is_none() {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// Workers to stop now: those whose slot is no longer wanted, and those of an older
    /// generation whose replacement is ready (a slot is never left without a ready worker).
    pub fn to_retire(&self) -> Vec<(Pid, RetireReason)> {
        self.workers
            .iter()
            .filter(|worker| worker.is_serving())
            .filter_map(|worker| {
                if !self.is_wanted(worker.id) {
                    Some((worker.pid, RetireReason::ScaledDown))
                } else if worker.generation < self.generation
                    && self.current(worker.id).is_some_and(Worker::is_ready)
                {
                    Some((worker.pid, RetireReason::Replaced))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Records how a worker of slot `id` ended and returns how long to wait before starting
    /// the slot again: at once, unless it keeps failing right after start (crash loop).
    pub fn record_exit(&mut self, id: WorkerId, failed_start: bool, now: Instant) -> Duration {
        let history = self.slots.entry(id).or_default();
        if !failed_start {
            history.failures_in_a_row = 0;
            history.respawn_at = None;
            return Duration::ZERO;
        }
        history.failures_in_a_row += 1;
        let delay = backoff(history.failures_in_a_row);
        history.respawn_at = Some(now + delay);
        delay
    }

    pub fn failures_in_a_row(&self, id: WorkerId) -> u32 {
        self.slots
            .get(&id)
            .map_or(0, |history| history.failures_in_a_row)
    }

    /// Keeps slot `id` from being started before `at` (e.g. after fork failed).
    pub fn delay_slot(&mut self, id: WorkerId, at: Instant) {
        self.slots.entry(id).or_default().respawn_at = Some(at);
    }

    /// The earliest instant at which the pool has something to do: a worker's own deadline
    /// (see [`Worker::deadline`]), or (with `include_respawns`; not while stopping) a
    /// backed-off slot to start.
    pub fn next_deadline(&self, include_respawns: bool) -> Option<Instant> {
        let respawns = self
            .slots
            .iter()
            .filter(|(id, _)| {
                include_respawns && self.is_wanted(**id) && self.current(**id).is_none()
            })
            .filter_map(|(_, history)| history.respawn_at);
        let workers = self.workers.iter().filter_map(Worker::deadline);
        respawns.chain(workers).min()
    }
}

/// The `ready_timeout` a start was given, for the line that kills it past it (the master
/// may look a little later than `ready_by`).
pub(super) fn ready_timeout_given(started: Instant, ready_by: Option<Instant>) -> Duration {
    ready_by.map_or(started.elapsed(), |at| {
        at.saturating_duration_since(started)
    })
}

/// No delay for a first failed start; then 100 ms, doubling up to [`BACKOFF_MAX`].
pub(super) fn backoff(failures_in_a_row: u32) -> Duration {
    if failures_in_a_row <= 1 {
        return Duration::ZERO;
    }
    let doublings = (failures_in_a_row - 2).min(16);
    (BACKOFF_FIRST * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(slot: u32) -> WorkerId {
        WorkerId {
            role: Role::Http,
            slot,
        }
    }

    fn worker(pool: &Pool, pid: i32, id: WorkerId, ready: bool) -> Worker {
        let mut worker = Worker::new(
            WorkerProcess::Child(Pid::from_raw(pid)),
            id,
            WorkerKind::Http,
            pool.generation(),
            Instant::now(),
            WorkerRow::new().unwrap(),
            None,
        );
        if ready {
            worker.mark_ready();
        }
        worker
    }

    #[test]
    fn backoff_starts_at_once_then_doubles_up_to_the_cap() {
        let delays: Vec<u128> = (1..=10).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]
        );
    }

    #[test]
    fn a_failing_slot_backs_off_and_a_healthy_exit_resets_it() {
        let mut pool = Pool::new(1, 0, 0, &[]);
        let now = Instant::now();
        assert_eq!(pool.record_exit(http(0), true, now), Duration::ZERO);
        assert_eq!(
            pool.record_exit(http(0), true, now),
            Duration::from_millis(100)
        );
        assert!(pool.slots_to_fill(now).is_empty());
        assert_eq!(
            pool.next_deadline(true),
            Some(now + Duration::from_millis(100))
        );
        assert_eq!(
            pool.next_deadline(false),
            None,
            "no respawn deadline while stopping"
        );
        assert_eq!(
            pool.slots_to_fill(now + Duration::from_millis(100)),
            [http(0)]
        );
        assert_eq!(pool.record_exit(http(0), false, now), Duration::ZERO);
        assert_eq!(pool.failures_in_a_row(http(0)), 0);
        assert_eq!(pool.slots_to_fill(now), [http(0)]);
    }

    #[test]
    fn old_generation_is_retired_only_once_its_replacement_is_ready() {
        let mut pool = Pool::new(2, 0, 0, &[]);
        let old = worker(&pool, 10, http(0), true);
        pool.add(old);
        let old1 = worker(&pool, 11, http(1), true);
        pool.add(old1);
        assert!(pool.to_retire().is_empty());
        pool.next_generation();
        assert_eq!(pool.slots_to_fill(Instant::now()), [http(0), http(1)]);
        let new = worker(&pool, 20, http(0), false);
        pool.add(new);
        assert!(pool.to_retire().is_empty(), "replacement not ready yet");
        assert!(pool.get_mut(Pid::from_raw(20)).unwrap().mark_ready());
        assert_eq!(
            pool.to_retire(),
            [(Pid::from_raw(10), RetireReason::Replaced)]
        );
    }

    #[test]
    fn scaling_down_retires_the_highest_slots() {
        let mut pool = Pool::new(3, 0, 0, &[]);
        for slot in 0..3 {
            let added = worker(&pool, 10 + slot as i32, http(slot), true);
            pool.add(added);
        }
        pool.set_wanted(Role::Http, 1);
        let mut retired = pool.to_retire();
        retired.sort_by_key(|(pid, _)| pid.as_raw());
        assert_eq!(
            retired,
            [
                (Pid::from_raw(11), RetireReason::ScaledDown),
                (Pid::from_raw(12), RetireReason::ScaledDown)
            ]
        );
    }
}
