//! The `forkwarden` command: run the server, or check a config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use forkwarden::Config;

/// Exit status for a config that cannot be used.
const EXIT_CONFIG: u8 = 2;
/// Exit status when the server could not start for another reason.
const EXIT_START: u8 = 1;

/// A pre-fork multi-process worker supervisor with Odoo-style per-worker limits.
///
/// Without a command, runs the server in the foreground with the given config.
#[derive(Parser)]
#[command(name = "forkwarden", version, about, long_about)]
struct Cli {
    /// Config file (TOML, Odoo option names).
    #[arg(
        short,
        long,
        global = true,
        value_name = "PATH",
        default_value = "forkwarden.toml"
    )]
    config: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config, and that this machine can run it (programs found, places
    /// writable, the workers' user usable, the `cron_store` database reachable); print the
    /// effective settings, defaults filled in (exit status 0 when the server would start
    /// and run its jobs, 2 when not).
    Check,
    /// Show the running server: each worker (state, request in progress, memory, CPU,
    /// requests served) and what happened since the start, as its master tells.
    Status {
        /// Print the master's answer as JSON.
        #[arg(long)]
        json: bool,
        /// Show it again every second, until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Scheduled jobs.
    Cron {
        #[command(subcommand)]
        command: CronCommand,
    },
}

#[derive(Subcommand)]
enum CronCommand {
    /// Print every job with its schedule, next run and last result.
    List,
    /// Print a job's last runs: when, how long, on which host, how each ended, and the
    /// last lines the last one wrote.
    History {
        /// The job's name.
        name: String,
        /// How many runs.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// One JSON object per run.
        #[arg(long)]
        json: bool,
    },
    /// Ask for a run of a job now, besides its schedule (its next due time stays): a cron
    /// worker of the running server takes it within a second.
    Run {
        /// The job's name.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(&cli.config),
        Some(Command::Check) => check(&cli.config),
        Some(Command::Status { json, watch }) => status(&cli.config, json, watch),
        Some(Command::Cron {
            command: CronCommand::List,
        }) => cron_list(&cli.config),
        Some(Command::Cron {
            command: CronCommand::History { name, last, json },
        }) => cron_history(&cli.config, &name, last, json),
        Some(Command::Cron {
            command: CronCommand::Run { name },
        }) => cron_show(&cli.config, |config| {
            forkwarden::cron::command::ask_run(config, &name)
        }),
    }
}

/// The config at `path`; `checked`: also what it needs from this machine (programs, writable
/// places, the workers' user), as a start would find it.
fn load(path: &Path, checked: bool) -> Result<Config, ExitCode> {
    let loaded = if checked {
        Config::load_checked(path)
    } else {
        Config::load(path)
    };
    loaded.map_err(|error| {
        eprintln!("forkwarden: invalid configuration: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn run(path: &Path) -> ExitCode {
    let config = match load(path, true) {
        Ok(config) => config,
        Err(status) => return status,
    };
    match forkwarden::serve(config, path, Box::new(forkwarden::demo::factory)) {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            eprintln!("forkwarden: {error}");
            ExitCode::from(EXIT_START)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match load(path, true) {
        Ok(config) => {
            let store = forkwarden::cron::command::check_store(&config);
            if let Some(Err(problem)) = &store {
                eprintln!("forkwarden: {problem}");
                return ExitCode::from(EXIT_CONFIG);
            }
            println!("# {}: valid; effective settings:", path.display());
            if let Some(Ok(found)) = &store {
                println!("# {found}");
            }
            print!("{}", config.effective_toml());
            ExitCode::SUCCESS
        }
        Err(status) => status,
    }
}

fn status(path: &Path, json: bool, watch: bool) -> ExitCode {
    let config = match load(path, false) {
        Ok(config) => config,
        Err(status) => return status,
    };
    match forkwarden::status::run(&config, json, watch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("forkwarden: {error}");
            ExitCode::from(EXIT_START)
        }
    }
}

fn cron_list(path: &Path) -> ExitCode {
    cron_show(path, forkwarden::cron::command::list)
}

fn cron_history(path: &Path, name: &str, last: usize, json: bool) -> ExitCode {
    cron_show(path, |config| {
        forkwarden::cron::command::history(config, name, last, json)
    })
}

/// Prints what `show` makes of the config at `path`.
fn cron_show(
    path: &Path,
    show: impl FnOnce(&Config) -> Result<String, forkwarden::cron::command::CommandError>,
) -> ExitCode {
    let config = match load(path, false) {
        Ok(config) => config,
        Err(status) => return status,
    };
    match show(&config) {
        Ok(text) => {
            // What jobs wrote (their last lines) is shown, not obeyed by the terminal.
            print!("{}", forkwarden::format::escape_controls(&text, true));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("forkwarden: {error}");
            ExitCode::from(EXIT_START)
        }
    }
}
