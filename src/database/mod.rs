//! The PostgreSQL database that hosts share (`cron_store`): one connection per worker that
//! uses it, its lifecycle (connected, down and retried with a growing delay), its bounds,
//! and forkwarden's versioned tables ([`schema`]).
//!
//! - **Bounded waits.** A connection attempt and each statement are bounded (a third of
//!   `heartbeat_timeout` when that is shorter than [`IO_TIMEOUT`]), so that a worker never
//!   hangs on an unreachable database and misses its heartbeat.
//! - **The database going away** is logged once; every use then waits for a retry time that
//!   doubles up to [`RETRY_MAX`], and its return is logged once.
//! - **Who connects:** cron workers, job workers and the `forkwarden cron` / `forkwarden job`
//!   commands; never the master, never an HTTP worker.

mod pgpass;
pub mod schema;

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls, Statement};
use tracing::{debug, info, warn};

use crate::config::CronStoreUrl;
pub use schema::{SCHEMA_VERSION, SchemaStatus};

/// Bounds on one connection attempt and on one statement.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT_LEAST: Duration = Duration::from_millis(500);
/// The first retry after the database went away, doubled on each failure up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(15);

/// What a connection is for: named in its log lines and errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreUse {
    /// Cron runs (`[[cron]]`).
    Cron,
    /// The job queue (`[[job]]`).
    Jobs,
}

impl StoreUse {
    /// `cron store`, `job store`: what the log lines call the database.
    pub fn label(self) -> &'static str {
        match self {
            Self::Cron => "cron store",
            Self::Jobs => "job store",
        }
    }

    fn unreachable_event(self) -> &'static str {
        match self {
            Self::Cron => "cron_store_unreachable",
            Self::Jobs => "job_store_unreachable",
        }
    }

    fn back_event(self) -> &'static str {
        match self {
            Self::Cron => "cron_store_back",
            Self::Jobs => "job_store_back",
        }
    }

    /// What waits while the database is away.
    fn waiting(self) -> &'static str {
        match self {
            Self::Cron => "cron jobs wait (a run in progress goes on)",
            Self::Jobs => "no job is claimed (a job in progress goes on)",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not connected; the next attempt is at `retry_at` (the outage is already logged).
    #[error("cannot reach the {store} {url}: {reason}")]
    Unreachable {
        store: &'static str,
        url: String,
        reason: String,
        retry_at: Instant,
    },
    #[error("the {store} {url} refused: {reason}")]
    Refused {
        store: &'static str,
        url: String,
        reason: String,
    },
}

/// The state of the connection: a lifecycle, one at a time.
enum Link {
    /// Never tried.
    Idle,
    Up(Box<Session>),
    /// Lost or never reached: tried again at `retry_at`.
    Down {
        since: Instant,
        retry_at: Instant,
        backoff: Duration,
        reason: String,
    },
}

/// One connection to the shared database, made when first used.
pub struct Database {
    url: CronStoreUrl,
    used_for: StoreUse,
    /// The bound on one connection attempt and on one statement.
    io_timeout: Duration,
    /// The notification channels this connection listens on once connected.
    listen: &'static [&'static str],
    link: RefCell<Link>,
}

impl Database {
    /// A connection to `url` for `used_for`, whose waits stay well inside `heartbeat` (None:
    /// no heartbeat is watched), listening on `listen`; nothing is connected until used.
    pub fn new(
        url: &CronStoreUrl,
        used_for: StoreUse,
        heartbeat: Option<Duration>,
        listen: &'static [&'static str],
    ) -> Self {
        let io_timeout = heartbeat.map_or(IO_TIMEOUT, |heartbeat| {
            (heartbeat / 3).clamp(IO_TIMEOUT_LEAST, IO_TIMEOUT)
        });
        Self {
            url: url.clone(),
            used_for,
            io_timeout,
            listen,
            link: RefCell::new(Link::Idle),
        }
    }

    /// Runs `operation` on the connection, connecting first if needed (and it is time to
    /// try). A lost connection is logged once, when it goes, and once when it is back.
    pub fn with<T>(
        &self,
        operation: impl FnOnce(&mut Session) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut link = self.link.borrow_mut();
        if let Link::Down {
            retry_at, reason, ..
        } = &*link
            && Instant::now() < *retry_at
        {
            return Err(self.unreachable(reason.clone(), *retry_at));
        }
        if !matches!(*link, Link::Up(_)) {
            match self.connect(true) {
                Ok(client) => {
                    if let Link::Down { since, .. } = &*link {
                        info!(
                            event = self.used_for.back_event(),
                            store = self.url.as_str(),
                            "the {} {} is reachable again after {}",
                            self.used_for.label(),
                            self.url,
                            crate::format::elapsed(since.elapsed())
                        );
                    }
                    *link = Link::Up(Box::new(Session {
                        client,
                        statements: HashMap::new(),
                    }));
                }
                Err(error) => return Err(self.went_down(&mut link, error)),
            }
        }
        let Link::Up(client) = &mut *link else {
            unreachable!("connected just above");
        };
        match operation(client) {
            Err(StoreError::Refused { reason, .. }) if client.is_closed() => {
                Err(self.went_down(&mut link, reason))
            }
            Err(StoreError::Unreachable { reason, .. }) => Err(self.went_down(&mut link, reason)),
            result => result,
        }
    }

    fn unreachable(&self, reason: String, retry_at: Instant) -> StoreError {
        StoreError::Unreachable {
            store: self.used_for.label(),
            url: self.url.to_string(),
            reason,
            retry_at,
        }
    }

    /// The error a statement ended with: refused by the database (or by the driver, a
    /// value it cannot send), or the connection lost.
    pub fn refused(&self, error: &postgres::Error) -> StoreError {
        let lost = error.is_closed()
            || std::error::Error::source(error).is_some_and(|cause| cause.is::<std::io::Error>());
        if error.as_db_error().is_none() && lost {
            return self.unreachable(describe(error), Instant::now());
        }
        StoreError::Refused {
            store: self.used_for.label(),
            url: self.url.to_string(),
            reason: describe(error),
        }
    }

    /// The connection is gone (or never came): the next try waits, longer each time.
    fn went_down(&self, link: &mut Link, reason: String) -> StoreError {
        let now = Instant::now();
        let (since, backoff) = match &*link {
            Link::Down { since, backoff, .. } => (*since, (*backoff * 2).min(RETRY_MAX)),
            _ => {
                warn!(
                    event = self.used_for.unreachable_event(),
                    store = self.url.as_str(),
                    reason = reason.as_str(),
                    "cannot reach the {} {}: {reason}; {}, trying again every {}s at most",
                    self.used_for.label(),
                    self.url,
                    self.used_for.waiting(),
                    RETRY_MAX.as_secs()
                );
                (now, RETRY_FIRST)
            }
        };
        debug!(
            "{} {}: next try in {:?} ({reason})",
            self.used_for.label(),
            self.url,
            backoff
        );
        let retry_at = now + backoff;
        *link = Link::Down {
            since,
            retry_at,
            backoff,
            reason: reason.clone(),
        };
        self.unreachable(reason, retry_at)
    }

    /// Opens a connection with bounded waits and the password from the environment or the
    /// password file; `prepare`: brings the tables to this version and listens.
    fn connect(&self, prepare: bool) -> Result<Client, String> {
        let mut settings = self.url.settings().clone();
        let bounds = format!(
            "-c statement_timeout={ms} -c lock_timeout={ms}",
            ms = self.io_timeout.as_millis()
        );
        let options = match settings.get_options() {
            Some(own) => format!("{own} {bounds}"),
            None => bounds,
        };
        settings
            .options(&options)
            .connect_timeout(self.io_timeout)
            .tcp_user_timeout(self.io_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            // The server's notices ("schema already exists, skipping") are not news.
            .notice_callback(|notice| debug!("store notice: {notice}"));
        if settings.get_application_name().is_none() {
            settings.application_name("forkwarden");
        }
        if let Some(password) = pgpass::password_for(&settings) {
            settings.password(password);
        }
        let mut client = settings.connect(NoTls).map_err(|error| describe(&error))?;
        if prepare {
            schema::bring_up_to_date(&mut client)?;
            for channel in self.listen {
                client
                    .batch_execute(&format!("LISTEN {channel}"))
                    .map_err(|error| describe(&error))?;
            }
        }
        Ok(client)
    }

    /// Whether the tables are there and of this version, without creating them.
    pub fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        let mut client = self
            .connect(false)
            .map_err(|reason| self.unreachable(reason, Instant::now()))?;
        schema::status(&mut client).map_err(|error| self.refused(&error))
    }

    /// Waits up to `wait` for a notification on the channels listened to; true when one
    /// came (all waiting are taken), and also when the connection closed (the database
    /// restarted), so that the caller looks at once and learns, once reconnected, what was
    /// announced meanwhile. False at once when not connected.
    pub fn notified(&self, wait: Duration) -> bool {
        let mut link = self.link.borrow_mut();
        let Link::Up(client) = &mut *link else {
            return false;
        };
        if client.is_closed() {
            return true;
        }
        // A wait, however short, and not a bare poll: only while the driver's runtime waits
        // does it learn that the socket has something to read.
        use postgres::fallible_iterator::FallibleIterator;
        let mut notifications = client.notifications();
        let first = notifications.timeout_iter(wait).next();
        if !matches!(first, Ok(Some(_))) {
            return false;
        }
        // Take what else came with it, without waiting again.
        let mut rest = notifications.iter();
        while let Ok(Some(_)) = rest.next() {}
        true
    }
}

/// A connection, with the statements prepared on it: a statement run often (a claim, a
/// renewal) is prepared once per connection, then each run is one round trip.
pub struct Session {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Session {
    /// `sql`, prepared on this connection the first time it is asked for.
    pub fn prepared(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

impl std::ops::Deref for Session {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Session {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// An error with its causes (the driver's own text says only "db error", "error connecting
/// to server").
pub fn describe(error: &postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
