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
    /// Validate the config and print the effective settings, defaults filled in
    /// (exit status 0 when valid, 2 when not).
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(&cli.config),
        Some(Command::Check) => check(&cli.config),
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        eprintln!("forkwarden: invalid configuration: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn run(path: &Path) -> ExitCode {
    let config = match load(path) {
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
    match load(path) {
        Ok(config) => {
            println!("# {}: valid; effective settings:", path.display());
            print!("{}", config.effective_toml());
            ExitCode::SUCCESS
        }
        Err(status) => status,
    }
}
