//! Step 1 of the master's loop: what each signal does (see the table in docs/operations.md, "Signals").

use std::time::Instant;

use forkwarden_worker::kit::settings_file;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::lifecycle::{Departure, Lifecycle, RetireReason};
use super::pool::Worker;
use super::template::TemplateState;
use super::{Master, Phase, signal_name};
use crate::config::RESTART_ONLY_KEYS;
use crate::format::elapsed;
use crate::id::Role;
use crate::limits::MasterLimits;
use crate::scoreboard::WorkerState;

impl Master {
    pub(super) fn handle_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for signal in pending {
            match Signal::try_from(signal) {
                Ok(Signal::SIGTERM | Signal::SIGINT) => {
                    let name = signal_name(signal);
                    self.begin_stop(&format!("{name} received"), 0);
                }
                Ok(Signal::SIGHUP) => self.reload(),
                Ok(Signal::SIGTTIN) => self.scale_http(1),
                Ok(Signal::SIGTTOU) => self.scale_http(-1),
                Ok(Signal::SIGUSR1) => self.reopen_logs(),
                Ok(Signal::SIGQUIT) => self.log_status(),
                // SIGCHLD: children are reaped on every turn.
                _ => {}
            }
        }
    }

    /// SIGTERM/SIGINT: stop accepting, let workers finish, kill what remains after
    /// `graceful_timeout`. A second stop signal kills every worker at once.
    pub(super) fn begin_stop(&mut self, why: &str, exit_status: u8) {
        match &mut self.phase {
            Phase::Starting | Phase::Serving => {
                info!(
                    event = "stopping",
                    workers = self.pool.workers().count(),
                    "{why}: stopping gracefully; {} workers finish their current work (graceful_timeout {})",
                    self.pool.workers().count(),
                    self.config.graceful_timeout
                );
                self.phase = Phase::Stopping {
                    exit_status,
                    forced: false,
                };
                if let Some(manager) = &self.service_manager {
                    manager.send("STOPPING=1");
                }
                self.sockets.close_listeners();
                let running: Vec<Pid> = self
                    .pool
                    .workers()
                    .filter(|worker| worker.is_serving())
                    .map(|worker| worker.pid)
                    .collect();
                for pid in running {
                    self.retire(pid, RetireReason::Shutdown);
                }
                self.stop_templates();
                // Nothing a worker left behind outlives the server either.
                self.kill_strays();
            }
            Phase::Stopping { forced, .. } if !*forced => {
                *forced = true;
                warn!(
                    event = "stopping_now",
                    workers = self.pool.workers().count(),
                    "{why} while stopping: killing the {} remaining workers now",
                    self.pool.workers().count()
                );
                for worker in self.pool.workers_mut() {
                    worker.depart(
                        Departure::Kill {
                            reason: "the server was told to stop at once".into(),
                            sigkill_at: None,
                        },
                        false,
                    );
                    worker.signal(Signal::SIGKILL);
                }
                self.kill_templates();
            }
            Phase::Stopping { .. } => {}
        }
    }

    /// SIGHUP: re-read the config; if it is valid, replace every worker by one of a new
    /// generation, gracefully; if not, say why and keep running as before.
    fn reload(&mut self) {
        if self.phase.is_stopping() {
            info!(
                event = "signal_ignored",
                signal = "SIGHUP",
                "SIGHUP ignored: the server is stopping"
            );
            return;
        }
        let mut new = match self.source.load_checked() {
            Ok(config) => config,
            Err(error) => {
                error!(
                    event = "reload_refused",
                    "SIGHUP: the config was not reloaded; the running config stays in force: {error}"
                );
                return;
            }
        };
        for change in self.config.changes(&new) {
            if RESTART_ONLY_KEYS.contains(&change.key.as_str()) {
                warn!(
                    event = "config_change",
                    key = change.key.as_str(),
                    applied = false,
                    "SIGHUP: {change}: takes effect only after a restart"
                );
            } else {
                info!(
                    event = "config_change",
                    key = change.key.as_str(),
                    applied = true,
                    "SIGHUP: {change}"
                );
            }
        }
        new.keep_restart_only_values(&self.config);
        let refused = |error: std::io::Error| {
            error!(
                event = "reload_refused",
                "SIGHUP: the config was not reloaded: its HTTP worker settings cannot be \
                 handed to the programs ({error}); the running config stays in force"
            );
        };
        if let Err(error) = settings_file(&new.http_settings()) {
            return refused(error);
        }
        if let Err(error) = self.logging.apply(&new.log_settings(), new.log_owner()) {
            error!("SIGHUP: {error}; logging goes on as before");
            new.logfile.clone_from(&self.config.logfile);
        }
        // Made again: the log file may be the old one.
        let handed_settings = match settings_file(&new.http_settings()) {
            Ok(file) => file,
            Err(error) => return refused(error),
        };
        self.config = new;
        self.handed_settings = handed_settings;
        self.enforcer
            .reload(MasterLimits::from_config(&self.config));
        if let Some(listener) = self.sockets.http()
            && let Err(error) =
                forkwarden_worker::http::configure_listener(listener, self.config.socket_timeout())
        {
            error!("SIGHUP: cannot apply http_socket_timeout to the listening socket: {error}");
        }
        let generation = self.pool.next_generation();
        self.cancel_superseded(generation);
        self.pool.set_wanted(Role::Http, self.config.workers);
        self.pool
            .set_wanted(Role::Cron, self.config.max_cron_threads);
        self.pool
            .set_wanted(Role::Job, self.config.wanted_job_workers());
        self.pool.set_programs(&self.config.program);
        info!(
            event = "reloaded",
            generation,
            http_workers = self.config.workers,
            cron_workers = self.config.max_cron_threads,
            job_workers = self.config.wanted_job_workers(),
            "SIGHUP: config reloaded; starting generation {generation} ({} http, {} cron workers{}) to replace the running workers",
            self.config.workers,
            self.config.max_cron_threads,
            match self.config.wanted_job_workers() {
                0 => String::new(),
                count => format!(", {count} job workers"),
            }
        );
    }

    /// A reload supersedes what older ones started and is not ready yet: such workers and
    /// templates would only be replaced once ready, so they are killed now. A storm of
    /// reloads thus keeps one population starting (and one template loading), not one per
    /// SIGHUP; workers that serve go on until their replacements are ready.
    fn cancel_superseded(&mut self, generation: u64) {
        let reason = format!("superseded by generation {generation} before it was ready");
        for worker in self.pool.workers_mut() {
            if worker.generation < generation
                && matches!(worker.lifecycle, Lifecycle::Starting { .. })
            {
                worker.depart(
                    Departure::Kill {
                        reason: reason.clone(),
                        sigkill_at: None,
                    },
                    false,
                );
                worker.signal(Signal::SIGKILL);
            }
        }
        self.cancel_loading_templates(generation);
    }

    /// SIGTTIN/SIGTTOU: one HTTP worker more or fewer, never fewer than one.
    fn scale_http(&mut self, delta: i32) {
        let signal = if delta > 0 { "SIGTTIN" } else { "SIGTTOU" };
        if self.phase.is_stopping() {
            info!(
                event = "signal_ignored",
                signal, "{signal} ignored: the server is stopping"
            );
            return;
        }
        let old = self.pool.wanted(Role::Http);
        let new = old.saturating_add_signed(delta).max(1);
        if new == old {
            info!(
                event = "signal_ignored",
                signal, "{signal} ignored: already at {old} http worker, the minimum"
            );
            return;
        }
        self.pool.set_wanted(Role::Http, new);
        info!(
            event = "scaled",
            role = "http",
            from = old,
            to = new,
            "{signal}: http workers {old} -> {new}"
        );
    }

    /// SIGUSR1: reopen the log file, and have every worker reopen it too.
    fn reopen_logs(&mut self) {
        match crate::log::reopen() {
            Ok(()) => info!(event = "log_reopened", "SIGUSR1: log file reopened"),
            Err(error) => error!(event = "log_reopen_failed", "SIGUSR1: {error}"),
        }
        // Exec workers write to the master's pipes, and SIGUSR1 would kill a program that
        // does not expect it.
        for worker in self
            .pool
            .workers()
            .filter(|worker| worker.kind.program().is_none())
        {
            worker.signal(Signal::SIGUSR1);
        }
    }

    /// SIGQUIT: one line for the server, one per worker.
    fn log_status(&self) {
        let role_line = |role| format!("{}/{}", self.pool.count(role), self.pool.wanted(role));
        info!(
            "status: master pid {}, config generation {}, http workers {} wanted, cron workers {} wanted{}",
            self.pid,
            self.pool.generation(),
            role_line(Role::Http),
            role_line(Role::Cron),
            if self.phase.is_stopping() {
                ", stopping"
            } else {
                ""
            }
        );
        for template in self.templates.iter() {
            let state = match template.state {
                TemplateState::Loading { .. } => "loading the application",
                TemplateState::Ready => "ready to fork workers",
                TemplateState::Leaving { .. } => "leaving",
            };
            info!(
                "status: {} (generation {}): {state}, up {}",
                template.name(),
                template.generation,
                elapsed(template.started.elapsed())
            );
        }
        let mut workers: Vec<&Worker> = self.pool.workers().collect();
        workers.sort_by_key(|worker| (worker.id, worker.generation));
        let now = Instant::now();
        for worker in workers {
            let row = worker.row.snapshot();
            let state = match (row.state, row.busy_for) {
                (WorkerState::Busy, Some(busy)) => {
                    format!("busy for {} on {}", elapsed(busy), row.request)
                }
                (WorkerState::Booting, _) => "booting".to_string(),
                _ => "idle".to_string(),
            };
            let leaving = match &worker.lifecycle {
                Lifecycle::Leaving(leaving) => match &leaving.departure {
                    Departure::Kill { reason, .. } => format!(", being killed ({reason})"),
                    Departure::Retire { reason, .. } => format!(", stopping ({reason})"),
                },
                Lifecycle::Starting { .. } | Lifecycle::Serving => String::new(),
            };
            let rss = worker
                .memory
                .rss
                .map(|rss| format!(", rss {}", crate::format::mib(rss)))
                .unwrap_or_default();
            let status = worker
                .kind
                .program()
                .and_then(|exec| exec.status.as_deref())
                .map(|status| format!(", status {status:?}"))
                .unwrap_or_default();
            info!(
                event = "status",
                role = worker.id.role.as_str(),
                slot = worker.id.slot,
                pid = worker.pid.as_raw(),
                generation = worker.generation,
                busy = row.busy_for.is_some(),
                requests = row.requests,
                rss = worker.memory.rss,
                "status: {} (pid {}, generation {}): {state}{leaving}, up {}, {} served{rss}{status}",
                worker.id,
                worker.pid,
                worker.generation,
                elapsed(now.saturating_duration_since(worker.started)),
                row.requests
            );
        }
    }
}
