//! The `forkwarden` command: run the server, or check a config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use forkwarden::config::{OdooOptions, ServeOptions, TimeSpan};
use forkwarden::{Config, ConfigSource};

/// The config file read when `--config` is not given.
const DEFAULT_CONFIG: &str = "forkwarden.toml";
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
    /// Config file (TOML, Odoo option names) [default: forkwarden.toml; `serve` needs
    /// none].
    #[arg(short, long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a Python WSGI application (`module:callable`, imported from the current
    /// directory) with the Python of the environment forkwarden was installed in, no config
    /// file needed; the flags are gunicorn's. With `--config`, start from that file: the
    /// flags override it.
    Serve(ServeArgs),
    /// Run a whole Odoo deployment from Odoo's own config file, given with -c/--config as
    /// to odoo-bin: preloaded HTTP workers, cron workers running its scheduled actions, its
    /// websocket server, each held to odoo.conf's limits (docs/odoo.md).
    Odoo(OdooArgs),
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
    /// The job queue in the `cron_store` database (`[[job]]` kinds; docs/jobs.md).
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Enqueue a job of a `[[job]]` kind; prints its id.
    Enqueue {
        /// The kind's name.
        kind: String,
        /// Its args, as JSON.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Lower runs first [default: 10].
        #[arg(long)]
        priority: Option<i32>,
        /// Not before this long from now (`90s`, `5m`).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        delay: Option<TimeSpan>,
        /// Another channel than the kind's.
        #[arg(long)]
        channel: Option<String>,
        /// Not enqueued again while a job with this key is pending or running: its id is
        /// printed instead.
        #[arg(long)]
        identity_key: Option<String>,
        /// Another number of attempts than the kind's.
        #[arg(long)]
        max_attempts: Option<i32>,
    },
    /// Print the newest jobs (100 at most).
    List {
        /// Only jobs in this state: pending, running, done, failed, cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this channel.
        #[arg(long)]
        channel: Option<String>,
        /// One JSON object per job.
        #[arg(long)]
        json: bool,
    },
    /// Print a job: its args, and each attempt with how it ended and its last lines.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Make a done, failed or cancelled job pending again, with one more attempt.
    Retry { id: i64 },
    /// Cancel a pending job, or stop a running one (SIGTERM, then SIGKILL after 5 s).
    Cancel { id: i64 },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The WSGI application: `module:callable`, e.g. `myproject.wsgi:application`.
    #[arg(value_name = "MODULE:APP")]
    app: String,
    /// HTTP workers (`workers`) [default: 2].
    #[arg(short, long, value_name = "N")]
    workers: Option<u32>,
    /// Where to listen: HOST:PORT, [IPv6]:PORT, or a PORT on 127.0.0.1 (`http_interface`,
    /// `http_port`) [default: 127.0.0.1:8000].
    #[arg(short, long, value_name = "ADDRESS", value_parser = parse_bind)]
    bind: Option<SocketAddr>,
    /// Load the application once and fork the workers from it (`[app] preload`).
    #[arg(long)]
    preload: bool,
    /// Wall-clock time a request may take before its worker answers 504 and is replaced
    /// (`limit_time_real`): seconds, or a duration such as "2m" [default: 120].
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<TimeSpan>,
    /// Requests a worker serves before it is replaced (`limit_request`) [default: 65536].
    #[arg(long, value_name = "N")]
    max_requests: Option<u64>,
    /// The Python to run the application with [default: the python3 beside forkwarden,
    /// else python3 from PATH].
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// Load the application as a worker would, print the effective settings, and exit.
    #[arg(long)]
    check: bool,
}

impl ServeArgs {
    fn source(self, file: Option<PathBuf>) -> (ConfigSource, bool) {
        let options = ServeOptions {
            app: self.app,
            workers: self.workers,
            bind: self.bind,
            preload: self.preload,
            timeout: self.timeout,
            max_requests: self.max_requests,
            python: self
                .python
                .unwrap_or_else(forkwarden::config::default_python),
        };
        (ConfigSource::Serve { file, options }, self.check)
    }
}

/// `--bind`: HOST:PORT (`localhost` is 127.0.0.1), [IPv6]:PORT, or a port alone.
fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let text_with_ip = match text.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => text.to_string(),
    };
    text_with_ip.parse().map_err(|_| {
        format!(
            "{text:?} is not an address to listen on; expected HOST:PORT with an IP address \
             (\"127.0.0.1:8000\", \"0.0.0.0:8000\", \"[::]:8000\") or a port alone"
        )
    })
}

/// `--timeout`: whole seconds, as gunicorn takes, or a duration with a unit.
fn parse_duration(text: &str) -> Result<TimeSpan, String> {
    match text.parse::<u64>() {
        Ok(seconds) => Ok(TimeSpan::secs(seconds)),
        Err(_) => TimeSpan::parse(text),
    }
}

#[derive(clap::Args)]
struct OdooArgs {
    /// forkwarden's own TOML, whose keys override what odoo.conf implies.
    #[arg(long, value_name = "PATH")]
    overrides: Option<PathBuf>,
    /// The Python of the environment that holds Odoo's requirements [default: the python3
    /// beside forkwarden, else python3 from PATH].
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// The directory that holds the `odoo` package (a source checkout, where odoo-bin is),
    /// when that Python cannot import it by itself.
    #[arg(long, value_name = "DIR")]
    odoo_path: Option<PathBuf>,
    /// Load Odoo as a worker would, print the effective settings (the TOML to take over
    /// from), and exit.
    #[arg(long)]
    check: bool,
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
    let file = cli.config.clone();
    let path = cli.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let from_file = || ConfigSource::File(path.clone());
    match cli.command {
        None => run(from_file()),
        Some(Command::Serve(args)) => match args.source(file) {
            (source, true) => check(&source),
            (source, false) => run(source),
        },
        Some(Command::Odoo(args)) => {
            let Some(odoo_conf) = file else {
                eprintln!("forkwarden: odoo: name Odoo's config file with -c/--config");
                return ExitCode::from(EXIT_CONFIG);
            };
            let source = ConfigSource::Odoo {
                file: args.overrides,
                options: OdooOptions {
                    odoo_conf,
                    python: args
                        .python
                        .unwrap_or_else(forkwarden::config::default_python),
                    odoo_path: args.odoo_path,
                },
            };
            if args.check {
                check(&source)
            } else {
                run(source)
            }
        }
        Some(Command::Check) => check(&from_file()),
        Some(Command::Status { json, watch }) => status(&path, json, watch),
        Some(Command::Cron {
            command: CronCommand::List,
        }) => cron_list(&path),
        Some(Command::Cron {
            command: CronCommand::History { name, last, json },
        }) => cron_history(&path, &name, last, json),
        Some(Command::Cron {
            command: CronCommand::Run { name },
        }) => cron_show(&path, |config| {
            forkwarden::cron::command::ask_run(config, &name)
        }),
        Some(Command::Job { command }) => job(&path, command),
    }
}

/// Runs a `forkwarden job` command on the queue of the config at `path`.
fn job(path: &Path, command: JobCommand) -> ExitCode {
    use forkwarden::jobs::command as jobs;
    let config = match load(path, false) {
        Ok(config) => config,
        Err(status) => return status,
    };
    let done = match command {
        JobCommand::Enqueue {
            kind,
            args,
            priority,
            delay,
            channel,
            identity_key,
            max_attempts,
        } => jobs::enqueue(
            &config,
            &jobs::EnqueueRequest {
                kind,
                args,
                priority,
                delay: delay.map(TimeSpan::duration),
                channel,
                identity_key,
                max_attempts,
            },
        ),
        JobCommand::List {
            state,
            channel,
            json,
        } => jobs::list(&config, state.as_deref(), channel.as_deref(), json),
        JobCommand::Show { id, json } => jobs::show(&config, id, json),
        JobCommand::Retry { id } => jobs::retry(&config, id),
        JobCommand::Cancel { id } => jobs::cancel(&config, id),
    };
    match done {
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

/// The config at `path`; `checked`: also what it needs from this machine (programs, writable
/// places, the workers' user), as a start would find it.
fn load(path: &Path, checked: bool) -> Result<Config, ExitCode> {
    load_from(&ConfigSource::File(path.to_path_buf()), checked)
}

fn load_from(source: &ConfigSource, checked: bool) -> Result<Config, ExitCode> {
    let loaded = if checked {
        source.load_checked()
    } else {
        source.load()
    };
    loaded.map_err(|error| {
        eprintln!("forkwarden: invalid configuration: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn run(source: ConfigSource) -> ExitCode {
    let config = match load_from(&source, true) {
        Ok(config) => config,
        Err(status) => return status,
    };
    match forkwarden::serve(config, source, Box::new(forkwarden::demo::factory)) {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            eprintln!("forkwarden: {error}");
            ExitCode::from(EXIT_START)
        }
    }
}

fn check(source: &ConfigSource) -> ExitCode {
    match load_from(source, true) {
        Ok(config) => {
            let store = forkwarden::cron::command::check_store(&config);
            if let Some(Err(problem)) = &store {
                eprintln!("forkwarden: {problem}");
                return ExitCode::from(EXIT_CONFIG);
            }
            let loaded = match forkwarden::app_check::check_app(&config) {
                Ok(loaded) => loaded,
                Err(problem) => {
                    eprintln!("forkwarden: {problem}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            println!("# {}: valid; effective settings:", source.describe());
            if let Some(Ok(found)) = &store {
                println!("# {found}");
            }
            if let Some(loaded) = &loaded {
                println!("# {loaded}");
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
