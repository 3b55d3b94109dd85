//! The scoreboard: one row of shared memory per worker (Apache httpd's prefork model).
//!
//! The master maps a row just before forking a worker. The worker writes its state into it
//! on every request with plain atomic stores (no system call on the hot path); the master
//! reads it whenever it needs to know what the worker is doing: for the status snapshot,
//! for the death report (requests served, why it exited) and for the per-request limits.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

use crate::sys::SharedWords;

/// The version of the worker kit's layout (the words below, the kit's descriptors and
/// variables): a program's worker built for another refuses to run, naming both, instead of
/// reading wrong limits. One more at every change of any of them.
pub const KIT_VERSION: u64 = 3;
/// Every board and row starts with a magic word and [`KIT_VERSION`] (`HEADER` words).
const HEADER: usize = 2;
const MAGIC: usize = 0;
const VERSION: usize = 1;
/// "fwboard" and "fwrow", so that a descriptor in the wrong place is refused too.
const BOARD_MAGIC: u64 = u64::from_be_bytes(*b"fwboard\0");
const ROW_MAGIC: u64 = u64::from_be_bytes(*b"fwrow\0\0\0");

// Word offsets of the fields in a row.
const STATE: usize = HEADER;
const EXIT_REASON: usize = HEADER + 1;
const REQUESTS: usize = HEADER + 2;
/// CLOCK_MONOTONIC nanoseconds at which the current request started; 0 when idle.
const REQUEST_STARTED_NS: usize = HEADER + 3;
const REQUEST_LINE_LEN: usize = HEADER + 4;
/// Process CPU time (ns) when the current request started, for limit_time_cpu reports.
const REQUEST_CPU_NS: usize = HEADER + 5;
/// Set by the master: finish the current request, keep no connection open, leave.
const STOP_REQUESTED: usize = HEADER + 6;
/// Process group of the cron job being run (0: none), for the master to kill or measure
/// once it has checked that the group is the job's (a row is the worker's to write).
const JOB_GROUP: usize = HEADER + 7;
/// Wall-clock limit (ms) of the current unit of work when it is not the role's default
/// (a cron job's `timeout`); 0: none.
const WORK_LIMIT_MS: usize = HEADER + 8;
/// CLOCK_MONOTONIC nanoseconds at which the worker last showed life: each turn of its loop,
/// each request start and end. The master's `heartbeat_timeout` reads it.
const HEARTBEAT_NS: usize = HEADER + 9;
/// The worker counts itself among the idle ones on the board (see [`Board::enter_idle`]).
const IDLE_COUNTED: usize = HEADER + 10;
const REQUEST_LINE: usize = HEADER + 11;
const REQUEST_LINE_WORDS: usize = 16;
/// Microseconds taken by all the requests served (the histogram's sum).
const DURATION_SUM_US: usize = REQUEST_LINE + REQUEST_LINE_WORDS;
/// Requests served, by how long they took: one word per bound of [`DURATION_BOUNDS`] (those
/// that took longer than the previous bound and at most this one); past the last bound,
/// counted only in `REQUESTS`.
const DURATION_BUCKETS: usize = DURATION_SUM_US + 1;
/// Set by a worker that leaves on its own (limit_request reached, the application asked),
/// to the word of its [`ExitReason`]: the master starts its replacement then, not when it
/// has finished its last requests and exited.
const LEAVING: usize = DURATION_BUCKETS + DURATION_BOUNDS.len();
/// The worker counts itself on the board among those inside a long request.
const LONG_COUNTED: usize = LEAVING + 1;
const ROW_WORDS: usize = LONG_COUNTED + 1;
/// A cron worker's row goes on: for each job of its config, in order, the runs that ended
/// well and those that failed. The master counts cron runs from these, in memory: it never
/// reads the job files the workers' user can write.
const JOB_COUNTS: usize = ROW_WORDS;
/// Longest `METHOD /target` kept for logs; longer ones are cut.
const REQUEST_LINE_MAX: usize = REQUEST_LINE_WORDS * 8;

/// The bounds of the request-duration histogram every row keeps: Prometheus's default
/// buckets, from 5 ms to 10 s.
pub const DURATION_BOUNDS: [Duration; 11] = [
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2500),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// Outcomes of a job attempt a job worker's row counts, one word each (the job queue's
/// `Outcome`s, in their order).
pub const JOB_OUTCOMES: usize = 8;
/// What became of the jobs whose attempts a job worker's row counts, one word each (the
/// job queue's `Fate`s, in their order: done, retried, failed, cancelled).
pub const JOB_FATES: usize = 4;
/// A histogram in a row: one word per bound of [`DURATION_BOUNDS`], the count, the sum (us).
const HISTOGRAM_WORDS: usize = DURATION_BOUNDS.len() + 2;
/// Per kind in a job worker's row: attempts by outcome, how long they waited to start and
/// how long they ran, then the jobs' fates.
const KIND_WORDS: usize = JOB_OUTCOMES + 2 * HISTOGRAM_WORDS + JOB_FATES;
/// Where the fates start among a kind's words.
const FATES_FIRST: usize = JOB_OUTCOMES + 2 * HISTOGRAM_WORDS;

/// How a job worker's row is laid out, from its config: after the words every row has, for
/// each kind the attempts it ended ([`KIND_WORDS`]); for each channel of the config plus
/// one for the channels it does not name, the jobs waiting and running over every host as
/// the worker last read them, then when it read them (Unix ms, 0: never); its job's progress
/// (done, total); the kind of its job (see [`WorkerRow::set_work_kind`]). The master knows
/// the shape from its own config: a row of another length is read as empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobRowShape {
    pub kinds: usize,
    /// The config's channels plus one (the others).
    pub channels: usize,
}

impl JobRowShape {
    fn kind_first(self, kind: usize) -> usize {
        ROW_WORDS + kind * KIND_WORDS
    }

    fn queue_first(self) -> usize {
        self.kind_first(self.kinds)
    }

    fn progress_first(self) -> usize {
        self.queue_first() + 2 * self.channels + 1
    }

    fn work_kind(self) -> usize {
        self.progress_first() + 2
    }

    pub fn words(self) -> usize {
        self.work_kind() + 1
    }
}

/// Jobs of one channel, over every host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelCount {
    pub waiting: u64,
    pub running: u64,
}

/// The queue as a job worker last read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueReading {
    pub read_at_ms: u64,
    /// In the order of [`JobRowShape`]'s channels.
    pub channels: Vec<ChannelCount>,
}

/// The attempts of one kind a job worker ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindFigures {
    pub outcomes: [u64; JOB_OUTCOMES],
    /// The fates written after those attempts (and after the deaths it recorded).
    pub fates: [u64; JOB_FATES],
    /// From due to start.
    pub waited: Durations,
    pub ran: Durations,
}

impl KindFigures {
    pub fn add(&mut self, other: &KindFigures) {
        for (mine, theirs) in self.outcomes.iter_mut().zip(other.outcomes) {
            *mine = mine.saturating_add(theirs);
        }
        for (mine, theirs) in self.fates.iter_mut().zip(other.fates) {
            *mine = mine.saturating_add(theirs);
        }
        self.waited.add(&other.waited);
        self.ran.add(&other.ran);
    }
}

/// What a job worker's row counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFigures {
    /// In the order of the config's kinds.
    pub kinds: Vec<KindFigures>,
    pub queue: Option<QueueReading>,
    pub progress: Option<(u64, u64)>,
}

/// Adds `took` to the histogram in `words` ([`HISTOGRAM_WORDS`] of them).
fn count_duration(words: &[AtomicU64], took: Duration) {
    let bounds = DURATION_BOUNDS.len();
    if let Some(bucket) = DURATION_BOUNDS.iter().position(|bound| took <= *bound) {
        words[bucket].fetch_add(1, Ordering::Relaxed);
    }
    words[bounds].fetch_add(1, Ordering::Relaxed);
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    words[bounds + 1].fetch_add(micros, Ordering::Relaxed);
}

/// The histogram in `words`, made consistent (the worker wrote it).
fn read_durations(words: &[AtomicU64]) -> Durations {
    let bounds = DURATION_BOUNDS.len();
    let mut durations = Durations {
        count: words[bounds].load(Ordering::Relaxed),
        sum_us: words[bounds + 1].load(Ordering::Relaxed),
        ..Durations::default()
    };
    for (bucket, word) in durations.buckets.iter_mut().zip(words) {
        *bucket = word.load(Ordering::Relaxed);
    }
    durations.consistent()
}

/// How long the requests (or jobs) a worker served took: a histogram over
/// [`DURATION_BOUNDS`]. The master adds up those of the workers that ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durations {
    /// Requests per bucket (not cumulative); those past the last bound are in `count` only.
    pub buckets: [u64; DURATION_BOUNDS.len()],
    pub count: u64,
    pub sum_us: u64,
}

impl Durations {
    /// The same counts, made consistent: no bucket holds more than the requests counted
    /// and not counted in an earlier one. A row is the worker's to write: what the master
    /// reads there may be anything, and a Prometheus histogram must add up.
    pub fn consistent(mut self) -> Self {
        let mut left = self.count;
        for bucket in &mut self.buckets {
            *bucket = (*bucket).min(left);
            left -= *bucket;
        }
        self
    }

    pub fn add(&mut self, other: &Durations) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine = mine.saturating_add(theirs);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }
}

/// What a worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Forked, not yet ready to serve.
    Booting,
    /// Waiting for a connection or a job.
    Idle,
    /// Serving a request or running a job.
    Busy,
}

impl WorkerState {
    fn from_word(word: u64) -> Self {
        match word {
            1 => Self::Idle,
            2 => Self::Busy,
            _ => Self::Booting,
        }
    }

    fn word(self) -> u64 {
        match self {
            Self::Booting => 0,
            Self::Idle => 1,
            Self::Busy => 2,
        }
    }
}

/// Why a worker left on its own (exit status 0); the master puts it in the exit log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// Not recorded: the worker died without saying why.
    Unknown,
    /// It was told to stop (SIGTERM) and did.
    Stopped,
    /// It served `limit_request` requests.
    LimitRequest,
    /// The application panicked; the worker answered 500 and left to start afresh.
    AppPanicked,
    /// Its master is gone.
    MasterGone,
    /// A request used more than `limit_time_cpu` (SIGXCPU); the client got 503.
    LimitTimeCpu,
    /// A request ran past `limit_time_real` and the master said so (SIGUSR2); the client
    /// got 504.
    LimitTimeReal,
    /// The application asked to be replaced after its response (it logged why).
    AppAsked,
    /// Reading a request panicked (a bug of forkwarden's): the worker answered 500 and left.
    HttpPanicked,
}

impl ExitReason {
    /// A short key for counting ends by cause (`forkwarden status`).
    pub fn as_key(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Stopped => "stopped",
            Self::LimitRequest => "limit_request",
            Self::AppPanicked => "app_panicked",
            Self::MasterGone => "master_gone",
            Self::LimitTimeCpu => "limit_time_cpu",
            Self::LimitTimeReal => "limit_time_real",
            Self::AppAsked => "app_asked",
            Self::HttpPanicked => "http_panicked",
        }
    }

    fn from_word(word: u64) -> Self {
        match word {
            1 => Self::Stopped,
            2 => Self::LimitRequest,
            3 => Self::AppPanicked,
            4 => Self::MasterGone,
            5 => Self::LimitTimeCpu,
            6 => Self::LimitTimeReal,
            7 => Self::AppAsked,
            8 => Self::HttpPanicked,
            _ => Self::Unknown,
        }
    }

    fn word(self) -> u64 {
        match self {
            Self::Unknown => 0,
            Self::Stopped => 1,
            Self::LimitRequest => 2,
            Self::AppPanicked => 3,
            Self::MasterGone => 4,
            Self::LimitTimeCpu => 5,
            Self::LimitTimeReal => 6,
            Self::AppAsked => 7,
            Self::HttpPanicked => 8,
        }
    }

    /// The word a signal handler stores to record this reason (see [`WorkerRow::exit_reason_word`]).
    pub fn as_word(self) -> u64 {
        self.word()
    }
}

/// The words every worker shares with the master (one mapping, inherited by all).
pub struct Board {
    shared: SharedWords,
}

/// Set by the master while it looks at its workers only once a second (all idle); the first
/// worker to start a request clears it and rings the master's doorbell, so that memory and
/// time limits are watched closely again from that request on.
const MASTER_RESTING: usize = HEADER;
/// How many HTTP workers wait for work right now: a worker about to be busy hands the
/// connections that wait on it to them instead of making them wait.
const IDLE_HTTP_WORKERS: usize = HEADER + 1;
/// How many HTTP workers serve (the master writes it as its pool changes).
const HTTP_WORKERS: usize = HEADER + 2;
/// How many HTTP workers are inside a long request (past the hand-off alarm's first look):
/// while fewer than all, some worker takes a connection handed over between two of its
/// short requests, even if none is idle at that instant.
const LONG_REQUESTS: usize = HEADER + 3;
/// How many connections wait in the hand-off channel's waiting lane: a worker between two
/// requests takes one first, before its own (they have waited behind a long request).
const HANDED_WAITING: usize = HEADER + 4;
const BOARD_WORDS: usize = HEADER + 5;

impl Board {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            shared: stamped(BOARD_WORDS, BOARD_MAGIC)?,
        })
    }

    /// The board of the server whose master handed a program `file`.
    pub fn from_fd(file: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            shared: checked(file, BOARD_WORDS, BOARD_MAGIC, "board")?,
        })
    }

    /// HTTP workers waiting for work now.
    pub fn idle_http_workers(&self) -> u64 {
        self.shared.words()[IDLE_HTTP_WORKERS].load(Ordering::Relaxed)
    }

    /// The words the hand-off alarm's signal handler reads and counts with.
    pub fn handoff_words(&self) -> crate::sys::HandoffCounts<'_> {
        let words = self.shared.words();
        crate::sys::HandoffCounts {
            idle_workers: &words[IDLE_HTTP_WORKERS],
            workers: &words[HTTP_WORKERS],
            long_requests: &words[LONG_REQUESTS],
            handed_waiting: &words[HANDED_WAITING],
        }
    }

    /// How many connections wait in the waiting lane now (as the workers count them).
    pub fn handed_waiting(&self) -> u64 {
        self.shared.words()[HANDED_WAITING].load(Ordering::Relaxed)
    }

    /// A worker put a connection in the waiting lane.
    pub fn count_handed(&self) {
        self.shared.words()[HANDED_WAITING].fetch_add(1, Ordering::Relaxed);
    }

    /// A worker took a connection from the waiting lane.
    pub fn count_taken(&self) {
        decrement(&self.shared.words()[HANDED_WAITING]);
    }

    /// The master: `count` HTTP workers serve now.
    pub fn set_http_workers(&self, count: u64) {
        self.shared.words()[HTTP_WORKERS].store(count, Ordering::Relaxed);
    }

    /// The master, for a worker that died inside a long request (see
    /// [`WorkerRow::counted_long`]).
    pub fn forget_long_request(&self) {
        decrement(&self.shared.words()[LONG_REQUESTS]);
    }

    /// A worker (`row`) starts waiting for work.
    pub fn enter_idle(&self, row: &WorkerRow) {
        row.word(IDLE_COUNTED).store(1, Ordering::Relaxed);
        self.shared.words()[IDLE_HTTP_WORKERS].fetch_add(1, Ordering::Relaxed);
    }

    /// A worker (`row`) stops waiting.
    pub fn leave_idle(&self, row: &WorkerRow) {
        self.forget_idle();
        row.word(IDLE_COUNTED).store(0, Ordering::Relaxed);
    }

    /// The master, for a worker that died while counted idle (see [`WorkerRow::counted_idle`]).
    pub fn forget_idle(&self) {
        decrement(&self.shared.words()[IDLE_HTTP_WORKERS]);
    }

    /// The master: whether it is resting (see [`MASTER_RESTING`]). Set before it looks at
    /// the rows, so that a request starting meanwhile is seen either in its row or here.
    pub fn set_master_resting(&self, resting: bool) {
        self.shared.words()[MASTER_RESTING].store(u64::from(resting), Ordering::SeqCst);
    }

    /// A worker that just marked itself busy: whether it must wake the master (it was
    /// resting; the caller rings the doorbell). Only the first worker to see it does.
    pub fn take_master_resting(&self) -> bool {
        let word = &self.shared.words()[MASTER_RESTING];
        word.load(Ordering::SeqCst) != 0 && word.swap(0, Ordering::SeqCst) != 0
    }
}

/// One worker's row. Created by the master before the fork; both processes then hold it.
pub struct WorkerRow {
    shared: SharedWords,
}

impl Board {
    /// Its memfd, for a program's worker kit (the master keeps it open).
    pub fn descriptor(&self) -> Option<BorrowedFd<'_>> {
        self.shared.descriptor()
    }
}

impl WorkerRow {
    /// Its memfd, for a program's worker kit, until [`WorkerRow::close_descriptor`].
    pub fn descriptor(&self) -> Option<BorrowedFd<'_>> {
        self.shared.descriptor()
    }

    /// Closes its memfd once the worker has it (or never will): the master keeps no
    /// descriptor per worker.
    pub fn close_descriptor(&mut self) {
        self.shared.close_descriptor();
    }
}

/// A consistent-enough copy of a row, read by the master.
#[derive(Clone, Debug)]
pub struct RowSnapshot {
    pub state: WorkerState,
    pub exit_reason: ExitReason,
    pub requests: u64,
    /// How long the current request has been running, if one is.
    pub busy_for: Option<Duration>,
    /// `METHOD /target` of the current (or last) request.
    pub request: String,
    /// Process CPU time when the current (or last) request started.
    pub request_cpu: Duration,
}

impl WorkerRow {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            shared: stamped(ROW_WORDS, ROW_MAGIC)?,
        })
    }

    /// A cron worker's row, with room to count the runs of `jobs` jobs.
    pub fn for_cron(jobs: usize) -> io::Result<Self> {
        Ok(Self {
            shared: stamped(JOB_COUNTS + 2 * jobs, ROW_MAGIC)?,
        })
    }

    /// A job worker's row, laid out as `shape` says (see [`JobRowShape`]).
    pub fn for_jobs(shape: JobRowShape) -> io::Result<Self> {
        Ok(Self {
            shared: stamped(shape.words(), ROW_MAGIC)?,
        })
    }

    /// The row a program was handed as `file` (see `worker::kit`).
    pub fn from_fd(file: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            shared: checked(file, ROW_WORDS, ROW_MAGIC, "scoreboard row")?,
        })
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        &self.shared.words()[index]
    }

    // ---- written by the worker ----

    pub fn set_state(&self, state: WorkerState) {
        self.beat();
        self.word(STATE).store(state.word(), Ordering::Release);
    }

    /// Records that the worker is alive now (a clock read through the vDSO and a store).
    pub fn beat(&self) {
        self.word(HEARTBEAT_NS)
            .store(monotonic_now_ns(), Ordering::Release);
    }

    pub fn set_exit_reason(&self, reason: ExitReason) {
        self.word(EXIT_REASON)
            .store(reason.word(), Ordering::Release);
    }

    /// The exit-reason word itself, for a signal handler to store an [`ExitReason::as_word`].
    pub fn exit_reason_word(&self) -> &AtomicU64 {
        self.word(EXIT_REASON)
    }

    /// Says the worker leaves on its own, for `reason`, once its last requests are done.
    pub fn set_leaving(&self, reason: ExitReason) {
        self.word(LEAVING).store(reason.word(), Ordering::Release);
    }

    /// Why the worker said it leaves on its own, if it did.
    pub fn leaving(&self) -> Option<ExitReason> {
        match ExitReason::from_word(self.word(LEAVING).load(Ordering::Acquire)) {
            ExitReason::Unknown => None,
            reason => Some(reason),
        }
    }

    /// Records the process CPU time at which the current request started.
    pub fn set_request_cpu(&self, cpu: Duration) {
        let nanos = u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
        self.word(REQUEST_CPU_NS).store(nanos, Ordering::Relaxed);
    }

    /// Records the process group of the cron job now running (None: it ended).
    pub fn set_job_group(&self, group: Option<i32>) {
        let word = group.and_then(|pgid| u64::try_from(pgid).ok()).unwrap_or(0);
        self.word(JOB_GROUP).store(word, Ordering::Release);
    }

    /// Records the wall-clock limit of the current unit of work (None: none).
    pub fn set_work_limit(&self, limit: Option<Duration>) {
        // 0 means "none", so a limit under a millisecond is stored as 1 ms.
        let ms = limit.map_or(0, |limit| {
            u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.word(WORK_LIMIT_MS).store(ms, Ordering::Release);
    }

    /// The process group of the cron job now running, as the worker claims it: a number
    /// to check (see the master's `cron_job`), not a process known to be the job.
    pub fn job_group(&self) -> Option<i32> {
        i32::try_from(self.word(JOB_GROUP).load(Ordering::Acquire))
            .ok()
            .filter(|pgid| *pgid > 0)
    }

    /// Whether the master asked this worker to leave after its current request.
    pub fn stop_requested(&self) -> bool {
        self.word(STOP_REQUESTED).load(Ordering::Acquire) != 0
    }

    /// Marks the worker busy with `method target` from now on (the caller then checks
    /// [`Board::take_master_resting`]).
    pub fn begin_request(&self, method: &str, target: &str) {
        let mut line = [0u8; REQUEST_LINE_MAX];
        let mut length = 0;
        for part in [method.as_bytes(), b" ", target.as_bytes()] {
            let take = part.len().min(REQUEST_LINE_MAX - length);
            line[length..length + take].copy_from_slice(&part[..take]);
            length += take;
        }
        for (index, chunk) in line.chunks_exact(8).enumerate() {
            let word = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
            self.word(REQUEST_LINE + index)
                .store(word, Ordering::Relaxed);
        }
        self.word(REQUEST_LINE_LEN)
            .store(length as u64, Ordering::Relaxed);
        // SeqCst: a master that sees the start time also sees the line written before it, and
        // one that set itself resting either sees this start or is woken (see Board).
        self.word(REQUEST_STARTED_NS)
            .store(monotonic_now_ns().max(1), Ordering::SeqCst);
        self.set_state(WorkerState::Busy);
    }

    /// Marks the current request served, and counts how long it took (a few atomic adds:
    /// the histogram costs no system call).
    pub fn end_request(&self) {
        let started = self.word(REQUEST_STARTED_NS).swap(0, Ordering::AcqRel);
        let took_ns = if started == 0 {
            0
        } else {
            monotonic_now_ns().saturating_sub(started)
        };
        let took = Duration::from_nanos(took_ns);
        if let Some(bucket) = DURATION_BOUNDS.iter().position(|bound| took <= *bound) {
            self.word(DURATION_BUCKETS + bucket)
                .fetch_add(1, Ordering::Relaxed);
        }
        self.word(DURATION_SUM_US)
            .fetch_add(took_ns / 1_000, Ordering::Relaxed);
        self.word(REQUESTS).fetch_add(1, Ordering::AcqRel);
        self.set_state(WorkerState::Idle);
    }

    /// Counts a run of job `index` (in the worker's config) that ended; nothing for a job
    /// the row has no room for.
    pub fn count_job_end(&self, index: usize, succeeded: bool) {
        let word = JOB_COUNTS + 2 * index + usize::from(!succeeded);
        if let Some(count) = self.shared.words().get(word) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The words of a job worker's row from `first`, `count` of them; none when the row is
    /// not laid out as `shape` says (a master reading a row of another config).
    fn job_words(&self, shape: JobRowShape, first: usize, count: usize) -> &[AtomicU64] {
        let words = self.shared.words();
        if words.len() != shape.words() {
            return &[];
        }
        words.get(first..first.saturating_add(count)).unwrap_or(&[])
    }

    /// Records the kind (its index in the config's `[[job]]`) of the job now running, in
    /// a job worker's row (None: none): the master holds the worker to that kind's limits.
    pub fn set_work_kind(&self, shape: JobRowShape, kind: Option<usize>) {
        let word = kind.map_or(0, |index| {
            u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1)
        });
        if let [slot] = self.job_words(shape, shape.work_kind(), 1) {
            slot.store(word, Ordering::Release);
        }
    }

    /// The kind a job worker says it runs now, if it is one of its config's: a claim that
    /// only ever selects among the config's own kinds.
    pub fn work_kind(&self, shape: JobRowShape) -> Option<usize> {
        let [slot] = self.job_words(shape, shape.work_kind(), 1) else {
            return None;
        };
        usize::try_from(slot.load(Ordering::Acquire).checked_sub(1)?)
            .ok()
            .filter(|index| *index < shape.kinds)
    }

    /// Counts an attempt of kind `kind` that this job worker ended: its outcome (an index
    /// below [`JOB_OUTCOMES`]), how long the job waited from due to start, and how long the
    /// attempt ran.
    pub fn count_attempt(
        &self,
        shape: JobRowShape,
        kind: usize,
        outcome: usize,
        waited: Duration,
        ran: Duration,
    ) {
        if kind >= shape.kinds || outcome >= JOB_OUTCOMES {
            return;
        }
        let words = self.job_words(shape, shape.kind_first(kind), KIND_WORDS);
        if words.len() != KIND_WORDS {
            return;
        }
        words[outcome].fetch_add(1, Ordering::Relaxed);
        count_duration(&words[JOB_OUTCOMES..JOB_OUTCOMES + HISTOGRAM_WORDS], waited);
        count_duration(&words[JOB_OUTCOMES + HISTOGRAM_WORDS..FATES_FIRST], ran);
    }

    /// Counts what became of a job of kind `kind` once this job worker recorded an
    /// attempt's end (a `fate` below [`JOB_FATES`]).
    pub fn count_fate(&self, shape: JobRowShape, kind: usize, fate: usize) {
        if kind >= shape.kinds || fate >= JOB_FATES {
            return;
        }
        let words = self.job_words(shape, shape.kind_first(kind), KIND_WORDS);
        if let Some(word) = words.get(FATES_FIRST + fate) {
            word.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the jobs waiting and running in each channel of the config (and in channels
    /// it does not name, last), as the job worker read them from the database just now.
    pub fn set_queue(&self, shape: JobRowShape, channels: &[ChannelCount], read_at_ms: u64) {
        let words = self.job_words(shape, shape.queue_first(), 2 * shape.channels + 1);
        for (pair, count) in words.chunks_exact(2).zip(channels) {
            pair[0].store(count.waiting, Ordering::Relaxed);
            pair[1].store(count.running, Ordering::Relaxed);
        }
        if let Some(at) = words.last() {
            at.store(read_at_ms, Ordering::Release);
        }
    }

    /// The progress its job last reported (done, total); None clears it.
    pub fn set_progress(&self, shape: JobRowShape, progress: Option<(u64, u64)>) {
        if let [done, total] = self.job_words(shape, shape.progress_first(), 2) {
            let (d, t) = progress.unwrap_or((0, 0));
            done.store(d, Ordering::Relaxed);
            total.store(t, Ordering::Relaxed);
        }
    }

    /// What a job worker's row counts (all zero for a row not laid out as `shape` says).
    pub fn job_figures(&self, shape: JobRowShape) -> JobFigures {
        let load = |word: &AtomicU64| word.load(Ordering::Relaxed);
        let kinds = (0..shape.kinds)
            .map(|kind| {
                let words = self.job_words(shape, shape.kind_first(kind), KIND_WORDS);
                if words.len() != KIND_WORDS {
                    return KindFigures::default();
                }
                let mut outcomes = [0; JOB_OUTCOMES];
                for (count, word) in outcomes.iter_mut().zip(words) {
                    *count = load(word);
                }
                let mut fates = [0; JOB_FATES];
                for (count, word) in fates.iter_mut().zip(&words[FATES_FIRST..]) {
                    *count = load(word);
                }
                KindFigures {
                    outcomes,
                    fates,
                    waited: read_durations(&words[JOB_OUTCOMES..JOB_OUTCOMES + HISTOGRAM_WORDS]),
                    ran: read_durations(&words[JOB_OUTCOMES + HISTOGRAM_WORDS..FATES_FIRST]),
                }
            })
            .collect();
        let queue_words = self.job_words(shape, shape.queue_first(), 2 * shape.channels + 1);
        let queue = match queue_words.split_last() {
            Some((at, pairs)) if at.load(Ordering::Acquire) != 0 => Some(QueueReading {
                read_at_ms: at.load(Ordering::Acquire),
                channels: pairs
                    .chunks_exact(2)
                    .map(|pair| ChannelCount {
                        waiting: load(&pair[0]),
                        running: load(&pair[1]),
                    })
                    .collect(),
            }),
            _ => None,
        };
        let progress = match self.job_words(shape, shape.progress_first(), 2) {
            [done, total] if load(total) > 0 => Some((load(done), load(total))),
            _ => None,
        };
        JobFigures {
            kinds,
            queue,
            progress,
        }
    }

    /// The runs of each of the first `jobs` jobs that ended: (well, failed). Zeros for a job
    /// the row has no room for.
    pub fn job_counts(&self, jobs: usize) -> Vec<(u64, u64)> {
        let words = self.shared.words();
        let count = |word: usize| words.get(word).map_or(0, |w| w.load(Ordering::Relaxed));
        (0..jobs)
            .map(|index| {
                let first = JOB_COUNTS + 2 * index;
                (count(first), count(first + 1))
            })
            .collect()
    }

    /// How long the requests served so far took.
    pub fn durations(&self) -> Durations {
        let mut durations = Durations {
            count: self.requests(),
            sum_us: self.word(DURATION_SUM_US).load(Ordering::Relaxed),
            ..Durations::default()
        };
        for (index, bucket) in durations.buckets.iter_mut().enumerate() {
            *bucket = self.word(DURATION_BUCKETS + index).load(Ordering::Relaxed);
        }
        durations.consistent()
    }

    pub fn requests(&self) -> u64 {
        self.word(REQUESTS).load(Ordering::Acquire)
    }

    /// How long ago the worker last showed life (None: it never has).
    pub fn silent_for(&self) -> Option<Duration> {
        let beat = self.word(HEARTBEAT_NS).load(Ordering::Acquire);
        (beat != 0).then(|| Duration::from_nanos(monotonic_now_ns().saturating_sub(beat)))
    }

    /// The flag the hand-off alarm sets while it counts the worker among those inside a
    /// long request.
    pub fn long_counted_word(&self) -> &AtomicU64 {
        self.word(LONG_COUNTED)
    }

    /// Whether the worker counted itself inside a long request on the board: if it dies
    /// so, the master takes it off the count.
    pub fn counted_long(&self) -> bool {
        self.word(LONG_COUNTED).load(Ordering::Relaxed) != 0
    }

    /// Whether the worker counted itself idle on the board: if it dies so, the master
    /// takes it off the count.
    pub fn counted_idle(&self) -> bool {
        self.word(IDLE_COUNTED).load(Ordering::Relaxed) != 0
    }

    /// The worker's state alone: what the master reads on every turn, without copying
    /// the request line.
    pub fn state(&self) -> WorkerState {
        WorkerState::from_word(self.word(STATE).load(Ordering::Acquire))
    }

    /// Whether a request (or job) is running now.
    pub fn is_busy(&self) -> bool {
        self.word(REQUEST_STARTED_NS).load(Ordering::SeqCst) != 0
    }

    /// How long the current request (or job) has been running, if one is.
    pub fn busy_for(&self) -> Option<Duration> {
        let started = self.word(REQUEST_STARTED_NS).load(Ordering::Acquire);
        (started != 0).then(|| Duration::from_nanos(monotonic_now_ns().saturating_sub(started)))
    }

    /// The wall-clock limit of the current unit of work, when it has its own.
    pub fn work_limit(&self) -> Option<Duration> {
        Some(self.word(WORK_LIMIT_MS).load(Ordering::Acquire))
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }

    /// Keeps workers forked from now on from inheriting this row: it is this worker's alone.
    pub fn keep_from_later_workers(&self) -> io::Result<()> {
        self.shared.exclude_from_future_forks()
    }

    // ---- written and read by the master ----

    /// Asks the worker to leave after its current request (it then keeps no connection
    /// open); the master also sends SIGTERM, which ends a wait.
    pub fn request_stop(&self) {
        self.word(STOP_REQUESTED).store(1, Ordering::Release);
    }

    pub fn snapshot(&self) -> RowSnapshot {
        let length = usize::try_from(self.word(REQUEST_LINE_LEN).load(Ordering::Relaxed))
            .unwrap_or(0)
            .min(REQUEST_LINE_MAX);
        let mut line = Vec::with_capacity(REQUEST_LINE_MAX);
        for index in 0..REQUEST_LINE_WORDS {
            line.extend_from_slice(
                &self
                    .word(REQUEST_LINE + index)
                    .load(Ordering::Relaxed)
                    .to_ne_bytes(),
            );
        }
        line.truncate(length);
        RowSnapshot {
            state: WorkerState::from_word(self.word(STATE).load(Ordering::Acquire)),
            exit_reason: ExitReason::from_word(self.word(EXIT_REASON).load(Ordering::Acquire)),
            requests: self.requests(),
            busy_for: self.busy_for(),
            request: String::from_utf8_lossy(&line).into_owned(),
            request_cpu: Duration::from_nanos(self.word(REQUEST_CPU_NS).load(Ordering::Relaxed)),
        }
    }
}

/// `len` new shared words that start with `magic` and [`KIT_VERSION`].
fn stamped(len: usize, magic: u64) -> io::Result<SharedWords> {
    let shared = SharedWords::new(len)?;
    shared.words()[MAGIC].store(magic, Ordering::Relaxed);
    shared.words()[VERSION].store(KIT_VERSION, Ordering::Release);
    Ok(shared)
}

/// The shared words of `file` (`what`, handed to a program), if they are exactly `len`
/// words that start with `magic` and this build's [`KIT_VERSION`]; else why not, naming both
/// versions when they differ.
fn checked(file: OwnedFd, len: usize, magic: u64, what: &str) -> io::Result<SharedWords> {
    let shared = SharedWords::from_fd(file, len)?;
    let words = shared.words();
    if words[MAGIC].load(Ordering::Relaxed) != magic {
        return Err(io::Error::other(format!(
            "the descriptor handed as the {what} is not one"
        )));
    }
    let version = words[VERSION].load(Ordering::Acquire);
    if version != KIT_VERSION {
        return Err(io::Error::other(format!(
            "the {what} is of worker kit version {version}, this worker's is {KIT_VERSION}: \
             install the Python package (or the program's forkwarden library) of the same \
             forkwarden version as the server"
        )));
    }
    Ok(shared)
}

/// Takes one off a count workers keep, never below zero (a worker may have written it).
fn decrement(count: &AtomicU64) {
    let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
        Some(count.saturating_sub(1))
    });
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for all processes of the machine, read through
/// the vDSO (no system call).
fn monotonic_now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(now.tv_nsec()).unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_shows_as_busy_then_counts_as_served() {
        let row = WorkerRow::new().unwrap();
        assert_eq!(row.snapshot().state, WorkerState::Booting);
        row.begin_request("GET", "/sleep?ms=10");
        let busy = row.snapshot();
        assert_eq!(busy.state, WorkerState::Busy);
        assert_eq!(busy.request, "GET /sleep?ms=10");
        assert!(busy.busy_for.is_some());
        row.end_request();
        let idle = row.snapshot();
        assert_eq!(
            (idle.state, idle.requests, idle.busy_for),
            (WorkerState::Idle, 1, None)
        );
    }

    #[test]
    fn each_request_is_counted_in_the_bucket_of_its_duration() {
        let row = WorkerRow::new().unwrap();
        row.begin_request("GET", "/");
        row.end_request();
        row.begin_request("GET", "/sleep?ms=30");
        std::thread::sleep(Duration::from_millis(30));
        row.end_request();
        let durations = row.durations();
        assert_eq!(durations.count, 2);
        assert_eq!(durations.buckets.iter().sum::<u64>(), 2);
        // The second took more than 25 ms: it is not in any bucket up to 25 ms.
        let up_to_25ms: u64 = durations.buckets[..3].iter().sum();
        assert_eq!(up_to_25ms, 1, "{durations:?}");
        assert!(durations.sum_us >= 30_000, "{durations:?}");
        let mut total = Durations::default();
        total.add(&durations);
        total.add(&durations);
        assert_eq!((total.count, total.sum_us), (4, 2 * durations.sum_us));
    }

    #[test]
    fn counts_a_worker_wrote_at_will_still_make_a_histogram() {
        let row = WorkerRow::new().unwrap();
        for index in 0..ROW_WORDS {
            row.word(index).store(u64::MAX, Ordering::Relaxed);
        }
        row.word(REQUESTS).store(5, Ordering::Relaxed);
        let durations = row.durations();
        assert_eq!(durations.count, 5);
        assert_eq!(durations.buckets[0], 5);
        assert_eq!(durations.buckets[1..].iter().sum::<u64>(), 0);
        let mut total = durations.clone();
        total.add(&durations);
        assert_eq!(total.count, 10);
        let snapshot = row.snapshot();
        assert_eq!(snapshot.request.chars().count(), REQUEST_LINE_MAX);
        assert_eq!(row.work_limit(), Some(Duration::from_millis(u64::MAX)));
    }

    #[test]
    fn the_layout_is_the_one_docs_worker_kit_md_gives_and_others_are_refused() {
        // A change here is a change of the kit: raise KIT_VERSION and the document.
        assert_eq!((KIT_VERSION, ROW_WORDS, BOARD_WORDS), (3, 43, 7));
        let row = WorkerRow::new().unwrap();
        let handed = || row.descriptor().unwrap().try_clone_to_owned().unwrap();
        assert!(WorkerRow::from_fd(handed()).is_ok());
        assert!(Board::from_fd(handed()).is_err(), "a row is no board");
        row.word(VERSION).store(1, Ordering::Relaxed);
        let refused = WorkerRow::from_fd(handed()).err().expect("another version");
        assert!(
            refused
                .to_string()
                .contains("version 1, this worker's is 3"),
            "{refused}"
        );
        let board = Board::new().unwrap();
        let board_fd = board.descriptor().unwrap().try_clone_to_owned().unwrap();
        assert!(Board::from_fd(board_fd).is_ok());
    }

    #[test]
    fn a_cron_row_counts_each_jobs_runs() {
        let row = WorkerRow::for_cron(2).unwrap();
        row.count_job_end(0, true);
        row.count_job_end(1, false);
        row.count_job_end(1, false);
        row.count_job_end(7, true);
        assert_eq!(row.job_counts(3), [(1, 0), (0, 2), (0, 0)]);
        assert_eq!(WorkerRow::new().unwrap().job_counts(1), [(0, 0)]);
    }

    #[test]
    fn a_job_row_counts_attempts_and_is_read_only_in_its_own_shape() {
        let shape = JobRowShape {
            kinds: 2,
            channels: 2,
        };
        let row = WorkerRow::for_jobs(shape).unwrap();
        row.set_work_kind(shape, Some(1));
        row.count_attempt(
            shape,
            1,
            0,
            Duration::from_millis(3),
            Duration::from_secs(2),
        );
        row.count_attempt(
            shape,
            1,
            3,
            Duration::from_millis(30),
            Duration::from_secs(20),
        );
        row.count_attempt(shape, 5, 0, Duration::ZERO, Duration::ZERO);
        row.count_attempt(shape, 0, JOB_OUTCOMES, Duration::ZERO, Duration::ZERO);
        row.count_fate(shape, 1, 2);
        row.count_fate(shape, 1, JOB_FATES);
        let queue = [
            ChannelCount {
                waiting: 7,
                running: 1,
            },
            ChannelCount::default(),
        ];
        row.set_queue(shape, &queue, 1234);
        row.set_progress(shape, Some((3, 10)));
        let figures = row.job_figures(shape);
        assert_eq!(figures.kinds[0], KindFigures::default());
        assert_eq!(figures.kinds[1].outcomes, [1, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(figures.kinds[1].waited.buckets[0], 1);
        assert_eq!(figures.kinds[1].waited.count, 2);
        assert_eq!(figures.kinds[1].ran.sum_us, 22_000_000);
        assert_eq!(figures.kinds[1].ran.count, 2);
        assert_eq!(figures.kinds[1].fates, [0, 0, 1, 0]);
        assert_eq!(figures.queue.unwrap().channels, queue);
        assert_eq!(figures.progress, Some((3, 10)));
        assert_eq!(row.work_kind(shape), Some(1));
        // Read with another config's shape: nothing, and no kind to hold it to.
        let other = JobRowShape {
            kinds: 3,
            channels: 2,
        };
        assert_eq!(row.work_kind(other), None);
        assert_eq!(
            row.job_figures(other).kinds,
            vec![KindFigures::default(); 3]
        );
        row.set_work_kind(shape, Some(9));
        assert_eq!(row.work_kind(shape), None);
    }

    #[test]
    fn long_request_lines_are_cut_not_overflowed() {
        let row = WorkerRow::new().unwrap();
        row.begin_request("GET", &"/x".repeat(500));
        assert_eq!(row.snapshot().request.len(), REQUEST_LINE_MAX);
    }

    #[test]
    fn a_heartbeat_is_recorded_with_each_state_change() {
        let row = WorkerRow::new().unwrap();
        assert_eq!(row.silent_for(), None);
        row.set_state(WorkerState::Idle);
        assert!(row.silent_for().unwrap() < Duration::from_secs(1));
        assert!(!row.is_busy());
        row.begin_request("GET", "/");
        assert!(row.is_busy());
        assert_eq!(row.state(), WorkerState::Busy);
    }
}
