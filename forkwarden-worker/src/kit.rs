//! forkwarden's HTTP worker inside a program the master started (the Python runner).
//!
//! A program started for an HTTP worker slot (`[app]`, directly or forked by a preload
//! template) gets, besides the listening socket on descriptor 3, the *worker kit*: nine
//! descriptors from `FORKWARDEN_KIT_FD` on, in the order of [`KitFd`]. With them it runs the
//! very loop built-in workers run (`worker::http`), with its own application in place of the
//! built-in one: the same request reading, keep-alive, pipelining, hand-off of idle
//! connections between workers, deadlines, `limit_request`, `limit_time_cpu` (503) and
//! `limit_time_real` (504), and a scoreboard row it writes itself, with no message per
//! request. It says so once, with `READY=1` and `SCOREBOARD=1`, and the master then treats it
//! as a built-in worker (see `master::exec::Markers`).
//!
//! A program that does not know the kit ignores those descriptors, as it would any it did
//! not ask for.

use std::cell::{Cell, RefCell};
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};

use crate::app::App;
use crate::context::{EXIT_OK, HandoffChannel, Lane, WorkerContext};
use crate::doorbell::Doorbell;
use crate::http_worker::HttpSpec;
use crate::id::{Role, WorkerId};
use crate::scoreboard::{Board, ExitReason, KIT_VERSION, WorkerRow};
use crate::settings::HttpSettings;
use crate::sys::{self, RequestLimitSignals, WorkerSignals};

/// The kit's descriptors, from `FORKWARDEN_KIT_FD` on, in this order.
#[derive(Clone, Copy)]
enum KitFd {
    /// A sealed memfd: the HTTP worker's settings for the program's generation (JSON,
    /// [`HttpSettings`]).
    Settings,
    /// The board all workers share (shared memory).
    Board,
    /// The master's doorbell (eventfd).
    Doorbell,
    /// The hand-off channel's four ends: waiting (send, receive), returning (send, receive).
    WaitingSend,
    WaitingReceive,
    ReturningSend,
    ReturningReceive,
    /// This worker's scoreboard row (shared memory). A template's is a placeholder: each
    /// worker it forks puts the row that came with its fork request here.
    Row,
    /// Where the master's log lines go (the log file, or its standard error): the worker
    /// writes its own lines there, access lines included, as a built-in worker does.
    Log,
}

/// How many descriptors the kit takes.
pub const KIT_LEN: usize = 9;
/// Where the scoreboard row is, counted from `FORKWARDEN_KIT_FD` (a template's worker puts
/// the row of its fork request there: the Python runner reads this from its core).
pub const KIT_ROW: usize = KitFd::Row as usize;

/// What the master lends a program started for an HTTP worker slot, to run forkwarden's
/// worker with.
pub struct KitParts<'a> {
    /// The generation's settings (see [`settings_file`]).
    pub settings: BorrowedFd<'a>,
    pub board: &'a Board,
    pub doorbell: &'a Doorbell,
    pub handoff: &'a HandoffChannel,
    pub row: &'a WorkerRow,
}

impl<'a> KitParts<'a> {
    /// The kit's descriptors (in [`KitFd`] order), `log` being a copy of the log's
    /// destination; None if the board or the row has no descriptor to lend.
    pub fn descriptors(&self, log: BorrowedFd<'a>) -> Option<[BorrowedFd<'a>; KIT_LEN]> {
        let handoff = self.handoff;
        Some([
            self.settings,
            self.board.descriptor()?,
            self.doorbell.as_fd(),
            handoff.waiting.send.as_fd(),
            handoff.waiting.receive.as_fd(),
            handoff.returning.send.as_fd(),
            handoff.returning.receive.as_fd(),
            self.row.descriptor()?,
            log,
        ])
    }
}

/// A generation's HTTP worker settings for the programs' kits, as a sealed memfd.
pub fn settings_file(settings: &HttpSettings) -> std::io::Result<OwnedFd> {
    let text = settings.to_json().map_err(std::io::Error::other)?;
    sys::sealed_text_file(c"forkwarden-settings", &text)
}

/// Why a program cannot run forkwarden's worker.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("{0} is not set: this runs as an HTTP worker started by forkwarden ([app] command)")]
    Missing(&'static str),
    #[error("{name}={value:?} is not valid")]
    Invalid { name: &'static str, value: String },
    #[error("cannot take the worker kit's {what}: {error}")]
    Descriptor {
        what: &'static str,
        error: std::io::Error,
    },
    #[error("the settings handed over cannot be read: {0}")]
    Settings(String),
    #[error(
        "descriptor 3 is blocking: forkwarden's worker waits for connections in epoll, as all \
         workers do, so set `nonblocking = true` in [app]"
    )]
    Blocking,
    #[error("cannot install the worker's signal handlers: {0}")]
    Signals(nix::errno::Errno),
    #[error(
        "the server hands worker kit version {server}, this worker speaks version {worker}: \
         install the Python package (or the program's forkwarden library) of the same \
         forkwarden version as the server"
    )]
    Version { server: String, worker: u64 },
}

/// A worker's identity and surroundings, from its environment.
struct Surroundings {
    kit_fd: i32,
    master: Pid,
    /// The middle process a template forked this worker through (`FORKWARDEN_MIDDLE_PID`),
    /// its parent until the master adopts it.
    middle: Option<Pid>,
    slot: u32,
    generation: u64,
    notify_path: PathBuf,
}

impl Surroundings {
    fn from_environment() -> Result<Self, KitError> {
        fn var(name: &'static str) -> Result<String, KitError> {
            std::env::var(name).map_err(|_| KitError::Missing(name))
        }
        fn number<T: std::str::FromStr>(name: &'static str) -> Result<T, KitError> {
            let value = var(name)?;
            value.parse().map_err(|_| KitError::Invalid { name, value })
        }
        let version = std::env::var("FORKWARDEN_KIT_VERSION")
            .unwrap_or_else(|_| "1 or none (a server older than this worker)".to_string());
        if version != KIT_VERSION.to_string() {
            return Err(KitError::Version {
                server: version,
                worker: KIT_VERSION,
            });
        }
        if var("LISTEN_FDS")? != "1" {
            return Err(KitError::Invalid {
                name: "LISTEN_FDS",
                value: var("LISTEN_FDS")?,
            });
        }
        Ok(Self {
            kit_fd: number("FORKWARDEN_KIT_FD")?,
            master: Pid::from_raw(number("FORKWARDEN_MASTER_PID")?),
            middle: match std::env::var("FORKWARDEN_MIDDLE_PID") {
                Ok(_) => Some(Pid::from_raw(number("FORKWARDEN_MIDDLE_PID")?)),
                Err(_) => None,
            },
            slot: number("FORKWARDEN_SLOT")?,
            generation: number("FORKWARDEN_GENERATION")?,
            notify_path: PathBuf::from(var("NOTIFY_SOCKET")?),
        })
    }

    fn take(&self, which: KitFd, what: &'static str) -> Result<OwnedFd, KitError> {
        self.take_as(which, what, Ok)
    }

    /// The hand-off channel's four ends.
    fn take_handoff(&self) -> Result<HandoffChannel, KitError> {
        let lane = |send, receive| -> Result<Lane, KitError> {
            Ok(Lane {
                send: self.take(send, "hand-off channel")?,
                receive: self.take(receive, "hand-off channel")?,
            })
        };
        Ok(HandoffChannel {
            waiting: lane(KitFd::WaitingSend, KitFd::WaitingReceive)?,
            returning: lane(KitFd::ReturningSend, KitFd::ReturningReceive)?,
        })
    }

    /// The kit's descriptor `which` made into what `make` makes of it (a mapping).
    fn take_as<T>(
        &self,
        which: KitFd,
        what: &'static str,
        make: impl FnOnce(OwnedFd) -> std::io::Result<T>,
    ) -> Result<T, KitError> {
        sys::adopt_inherited(self.kit_fd + which as i32)
            .and_then(make)
            .map_err(|error| KitError::Descriptor { what, error })
    }
}

/// Serves HTTP with forkwarden's worker loop and `app`, in a program started by forkwarden
/// for an HTTP worker slot; `describe` names the application in its status. Returns the
/// exit status the process should end with once it is done (told to stop, recycled...).
///
/// Call it from the process's only thread, once: it installs process-wide signal handlers
/// and signal mask, and the scoreboard it maps stays mapped until the process exits.
pub fn serve(app: Box<dyn App>, describe: &str) -> Result<i32, KitError> {
    let here = Surroundings::from_environment()?;
    // `ps` then tells the workers apart as it does built-in ones (a program that cannot
    // have its title set, e.g. one with threads already, keeps its command line).
    if sys::init_process_title().is_ok() {
        sys::set_process_title(&format!(
            "forkwarden: http worker {} ({describe})",
            here.slot
        ));
    }
    let listener = TcpListener::from(sys::adopt_inherited(sys::LISTEN_FD).map_err(|error| {
        KitError::Descriptor {
            what: "listening socket",
            error,
        }
    })?);
    let text = read_settings(here.take(KitFd::Settings, "settings")?)?;
    let settings =
        HttpSettings::from_json(&text).map_err(|error| KitError::Settings(error.to_string()))?;
    // Mapped for the rest of the process's life: signal handlers point into them.
    let board: &'static Board = Box::leak(Box::new(here.take_as(
        KitFd::Board,
        "board",
        Board::from_fd,
    )?));
    let row: &'static WorkerRow = Box::leak(Box::new(here.take_as(
        KitFd::Row,
        "scoreboard row",
        WorkerRow::from_fd,
    )?));
    let doorbell = Doorbell::from_fd(here.take(KitFd::Doorbell, "doorbell")?);
    let handoff = here.take_handoff()?;
    // Exec'd by a forked child of the master, or forked by a template through a middle
    // process that is exiting: then the worker serves at once and binds its parent-death
    // signal once the master is its parent (`WorkerContext::middle_parent`).
    let middle_parent = middle_parent(getppid(), here.master, here.middle);
    if middle_parent.is_none() {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        if getppid() != here.master {
            return Ok(EXIT_OK);
        }
    }
    check_nonblocking(&listener)?;
    let log = here.take(KitFd::Log, "log destination")?;
    crate::log::init_for_program(&settings.log, std::fs::File::from(log));
    let signals = WorkerSignals::install().map_err(KitError::Signals)?;
    #[allow(unsafe_code)]
    // SAFETY: `row` is leaked above: it stays mapped until the process exits, so the
    // handlers' pointer to its exit-reason word can never dangle.
    let limit_signals = unsafe {
        RequestLimitSignals::install(
            row.exit_reason_word(),
            ExitReason::LimitTimeCpu.as_word(),
            ExitReason::LimitTimeReal.as_word(),
        )
    }
    .map_err(KitError::Signals)?;
    // The one application is handed over once: `http_worker::run` builds it once.
    let app = RefCell::new(Some(app));
    let build_app = move || -> anyhow::Result<Box<dyn App>> {
        app.borrow_mut()
            .take()
            .ok_or_else(|| anyhow::anyhow!("the application was already taken"))
    };
    let spec = HttpSpec {
        context: WorkerContext {
            id: WorkerId {
                role: Role::Http,
                slot: here.slot,
            },
            generation: here.generation,
            master_pid: here.master,
            doorbell: &doorbell,
            row,
            board,
            middle_parent: Cell::new(middle_parent),
        },
        listener: &listener,
        handoff: &handoff,
        settings: &settings,
        build_app: &build_app,
    };
    // Ready as soon as the loop runs; the master reads the row from then on.
    say(
        &here.notify_path,
        &format!("READY=1\nSCOREBOARD=1\nKIT_VERSION={KIT_VERSION}\nSTATUS=serving {describe}"),
    );
    let outcome = crate::http_worker::run(&spec, &signals, &limit_signals);
    say(&here.notify_path, "STOPPING=1");
    Ok(outcome.exit_status(row))
}

/// Refuses a blocking listening socket. O_NONBLOCK belongs to the file description every
/// worker shares, and the master sets it at each spawn as `[app] nonblocking` says: a worker
/// that set it for itself would find it cleared by the next spawn, and block in accept()
/// after losing a race.
fn check_nonblocking(listener: &TcpListener) -> Result<(), KitError> {
    let flags = nix::fcntl::fcntl(listener, nix::fcntl::FcntlArg::F_GETFL).map_err(|errno| {
        KitError::Descriptor {
            what: "listening socket",
            error: errno.into(),
        }
    })?;
    if nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK) {
        Ok(())
    } else {
        Err(KitError::Blocking)
    }
}

/// The worker's parent while it waits to be adopted by the master: its middle process, when
/// the template forked it through one (`middle`) and that process is still its parent. Any
/// other parent that is not the master adopted an orphan (the master died first): None,
/// and the caller, finding its parent is not the master, leaves.
fn middle_parent(parent: Pid, master: Pid, middle: Option<Pid>) -> Option<Pid> {
    middle.filter(|middle| *middle == parent && parent != master)
}

/// The text of the settings memfd, read from its start whatever its offset (the master
/// wrote it through the same file description; a template's workers share theirs).
fn read_settings(file: OwnedFd) -> Result<String, KitError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::from(file);
    let unreadable = |error: std::io::Error| KitError::Settings(error.to_string());
    let length = usize::try_from(file.metadata().map_err(unreadable)?.len())
        .map_err(|_| KitError::Settings("too large".to_string()))?;
    let mut text = vec![0; length];
    file.read_exact_at(&mut text, 0).map_err(unreadable)?;
    String::from_utf8(text).map_err(|error| KitError::Settings(error.to_string()))
}

/// Sends one sd_notify message to the master; a lost one costs nothing worse than its
/// effect (the master times the worker out if READY=1 never comes).
fn say(path: &Path, message: &str) {
    if let Ok(socket) = UnixDatagram::unbound() {
        let _ = socket.send_to(message.as_bytes(), path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_middle_process_counts_as_a_parent_to_wait_for() {
        let (master, middle) = (Pid::from_raw(100), Pid::from_raw(200));
        // Forked by a template, not yet adopted: wait for the master.
        assert_eq!(middle_parent(middle, master, Some(middle)), Some(middle));
        // Adopted already, or exec'd by the master's child: the master is the parent.
        assert_eq!(middle_parent(master, master, Some(middle)), None);
        assert_eq!(middle_parent(master, master, None), None);
        // The master died before the worker started: whoever adopted it (init, a
        // subreaper) is no middle process, and the worker must leave, not wait forever.
        assert_eq!(middle_parent(Pid::from_raw(1), master, Some(middle)), None);
        assert_eq!(middle_parent(Pid::from_raw(1), master, None), None);
    }
}
