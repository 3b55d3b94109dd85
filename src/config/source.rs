//! Where a config comes from: a file (`forkwarden --config PATH`), or `forkwarden serve
//! MODULE:APP`'s command line, over a file or over the defaults. The master keeps the
//! source, and a SIGHUP reads the config again from it, flags included, so that a reload
//! of `forkwarden serve` keeps what its command line said.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::odoo::{OdooOptions, parse_options};
use super::{Config, ConfigError, ExecApp, TimeSpan, invalid_at};

/// The port `forkwarden serve` listens on without `--bind` or a config file (gunicorn's).
pub const SERVE_PORT: u16 = 8000;

/// Where the config is read from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// A config file.
    File(PathBuf),
    /// `forkwarden serve`: its options, over `file` if one was given.
    Serve {
        file: Option<PathBuf>,
        options: ServeOptions,
    },
    /// `forkwarden odoo`: Odoo's config file, under `file` (TOML) if one was given, whose
    /// keys override what odoo.conf implies.
    Odoo {
        file: Option<PathBuf>,
        options: OdooOptions,
    },
}

/// What `forkwarden serve` was told, each already of its type (clap parsed it).
#[derive(Clone, Debug, PartialEq)]
pub struct ServeOptions {
    /// The WSGI application, `module:callable`.
    pub app: String,
    /// `--workers`: HTTP workers.
    pub workers: Option<u32>,
    /// `--bind`: where to listen.
    pub bind: Option<SocketAddr>,
    /// `--preload`: load the application once and fork the workers from it.
    pub preload: bool,
    /// `--timeout`: `limit_time_real`.
    pub timeout: Option<TimeSpan>,
    /// `--max-requests`: `limit_request`.
    pub max_requests: Option<u64>,
    /// The Python that runs the application.
    pub python: PathBuf,
}

impl ConfigSource {
    /// The config file, if there is one (relative names are relative to its directory).
    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Serve { file, .. } | Self::Odoo { file, .. } => file.as_deref(),
        }
    }

    /// How logs and `status` name it: the file, or the command line.
    pub fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Serve {
                file: Some(path),
                options,
            } => format!("serve {} over {}", options.app, path.display()),
            Self::Serve {
                file: None,
                options,
            } => format!("serve {}", options.app),
            Self::Odoo {
                file: Some(path),
                options,
            } => format!(
                "odoo {} under {}",
                options.odoo_conf.display(),
                path.display()
            ),
            Self::Odoo {
                file: None,
                options,
            } => format!("odoo {}", options.odoo_conf.display()),
        }
    }

    /// Reads, parses and validates the config.
    pub fn load(&self) -> Result<Config, ConfigError> {
        self.read().map(|(config, _)| config)
    }

    /// [`ConfigSource::load`], then checks that the server can start with it on this
    /// machine: the programs exist and can be run, the directories and files it writes are
    /// writable, the workers' user can be switched to. What `check`, a start and a reload
    /// all do.
    pub fn load_checked(&self) -> Result<Config, ConfigError> {
        let (config, source) = self.read()?;
        if let Err((key, message)) = config.check_environment() {
            return Err(match (self, key.as_str()) {
                (Self::Serve { .. }, "app.command") => ConfigError::Flag {
                    flag: "--python",
                    message,
                },
                _ => invalid_at(&source, &self.path_in_messages(), &key, message),
            });
        }
        Ok(config)
    }

    /// The config and the text it was read from.
    fn read(&self) -> Result<(Config, String), ConfigError> {
        let text = match self.file() {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let path = self.path_in_messages();
        let config = match self {
            Self::File(file) => match odoo_config_of(&text, file) {
                Some(options) => read_odoo(&options, &text, &path)?,
                None => Config::parse(&text, &path)?,
            },
            Self::Serve { file, options } => {
                let over_defaults = file.is_none();
                Config::parse_with(&text, &path, |config, _| {
                    Ok(options.apply(config, over_defaults))
                })?
            }
            Self::Odoo { options, .. } => read_odoo(options, &text, &path)?,
        };
        Ok((config, text))
    }

    /// The file, or for a command line alone a name in the current directory (relative
    /// names are then relative to it, as gunicorn's are).
    fn path_in_messages(&self) -> PathBuf {
        match (self.file(), self) {
            (Some(file), _) => file.to_path_buf(),
            // Relative names are relative to odoo.conf's directory, as Odoo's own.
            (None, Self::Odoo { options, .. }) => options
                .odoo_conf
                .parent()
                .unwrap_or(Path::new("."))
                .join("forkwarden odoo"),
            (None, _) => PathBuf::from("forkwarden serve"),
        }
    }
}

/// The Odoo deployment a config file names with `odoo_config` (with `odoo_path` and
/// `odoo_python`), relative to its directory; None when it names none (or is not TOML:
/// parsing says so).
fn odoo_config_of(text: &str, file: &Path) -> Option<OdooOptions> {
    let table: toml::Table = text.parse().ok()?;
    let here = file.parent().unwrap_or(Path::new("."));
    let path = |key: &str| table.get(key)?.as_str().map(|value| here.join(value));
    Some(OdooOptions {
        odoo_conf: path("odoo_config")?,
        // A bare name (`python3.12`) is looked up on PATH, as a command is.
        python: match table.get("odoo_python").and_then(|value| value.as_str()) {
            Some(name) if !name.contains('/') => PathBuf::from(name),
            _ => path("odoo_python").unwrap_or_else(default_python),
        },
        odoo_path: path("odoo_path"),
    })
}

/// The config of an Odoo deployment: odoo.conf's options (`options`), under `text` (the
/// TOML at `path`, whose keys override them).
fn read_odoo(options: &OdooOptions, text: &str, path: &Path) -> Result<Config, ConfigError> {
    let odoo_conf = &options.odoo_conf;
    let invalid = |option: String, message: String| ConfigError::Odoo {
        path: odoo_conf.clone(),
        option,
        message,
    };
    let odoo_text = std::fs::read_to_string(odoo_conf).map_err(|source| ConfigError::Read {
        path: odoo_conf.clone(),
        source,
    })?;
    let values = parse_options(&odoo_text).map_err(|error| invalid(error.option, error.message))?;
    Config::parse_with(text, path, |config, written| {
        options
            .apply(&values, config, written)
            .map_err(|error| invalid(error.option, error.message))
    })
    .map_err(|error| match error {
        // A value odoo.conf set: named as its option.
        ConfigError::Flag { flag, message } => invalid(flag.to_string(), message),
        other => other,
    })
}

impl ServeOptions {
    /// Sets what the options say in `config`; `over_defaults`: no config file was given.
    /// Returns the keys set, each with its flag, for error messages.
    fn apply(&self, config: &mut Config, over_defaults: bool) -> Vec<(&'static str, &'static str)> {
        let mut set = vec![("app.command", "MODULE:APP")];
        if over_defaults {
            config.http_port = SERVE_PORT;
            // No [[cron]] job can be declared without a file: no cron worker to idle.
            config.max_cron_threads = 0;
        }
        if let Some(workers) = self.workers {
            config.workers = workers;
            set.push(("workers", "--workers"));
        }
        if let Some(bind) = self.bind {
            config.http_interface = bind.ip();
            config.http_port = bind.port();
            set.extend([("http_interface", "--bind"), ("http_port", "--bind")]);
        }
        if let Some(timeout) = self.timeout {
            config.limit_time_real = timeout;
            set.push(("limit_time_real", "--timeout"));
        }
        if let Some(max_requests) = self.max_requests {
            config.limit_request = max_requests;
            set.push(("limit_request", "--max-requests"));
        }
        // What the file's [app] says besides its command (cwd, env, ready_timeout) stays.
        let app = config.app.take().unwrap_or_else(|| ExecApp {
            command: Vec::new(),
            cwd: None,
            env: Default::default(),
            ready_timeout: None,
            nonblocking: true,
            preload: false,
        });
        let preload = self.preload || app.preload;
        let mut command = vec![
            self.python.display().to_string(),
            "-m".to_string(),
            "forkwarden_wsgi".to_string(),
        ];
        if preload {
            command.push("--preload".to_string());
        }
        command.push(self.app.clone());
        config.app = Some(ExecApp {
            command,
            nonblocking: true,
            preload,
            ..app
        });
        set
    }
}

/// The Python `forkwarden serve` runs applications with: the one of the environment
/// forkwarden was installed in (`pip install` puts the binary beside that environment's
/// `python3`), else `python3` from PATH.
pub fn default_python() -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        ["python3", "python"]
            .iter()
            .map(|name| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    beside.unwrap_or_else(|| PathBuf::from("python3"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(app: &str) -> ServeOptions {
        ServeOptions {
            app: app.into(),
            workers: Some(4),
            bind: Some("127.0.0.1:9000".parse().unwrap()),
            preload: true,
            timeout: Some(TimeSpan::secs(30)),
            max_requests: Some(1000),
            python: PathBuf::from("/venv/bin/python3"),
        }
    }

    #[test]
    fn serve_options_make_a_whole_config_without_a_file() {
        let source = ConfigSource::Serve {
            file: None,
            options: options("myapp:app"),
        };
        let config = source.load().unwrap();
        assert_eq!(config.workers, 4);
        assert_eq!(config.http_port, 9000);
        assert_eq!(config.max_cron_threads, 0);
        assert_eq!(config.limit_time_real, TimeSpan::secs(30));
        assert_eq!(config.limit_request, 1000);
        let app = config.app.unwrap();
        assert_eq!(
            app.command,
            [
                "/venv/bin/python3",
                "-m",
                "forkwarden_wsgi",
                "--preload",
                "myapp:app"
            ]
        );
        assert!(app.nonblocking && app.preload);
        // Relative to where it was started, as gunicorn imports.
        assert_eq!(app.cwd, Some(std::path::absolute(".").unwrap()));
    }

    #[test]
    fn serve_options_override_a_file_and_keep_the_rest_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fw.toml");
        std::fs::write(
            &path,
            "workers = 2\nhttp_port = 8069\nmax_cron_threads = 2\n\
             [app]\ncommand = [\"x\"]\nenv = { A = \"1\" }\n",
        )
        .unwrap();
        let mut serve = options("other:app");
        serve.bind = None;
        serve.preload = false;
        let config = ConfigSource::Serve {
            file: Some(path),
            options: serve,
        }
        .load()
        .unwrap();
        assert_eq!(config.workers, 4);
        assert_eq!(config.http_port, 8069);
        assert_eq!(config.max_cron_threads, 2);
        let app = config.app.unwrap();
        assert_eq!(app.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(app.cwd.as_deref(), Some(dir.path()));
        assert_eq!(app.command.last().map(String::as_str), Some("other:app"));
    }

    #[test]
    fn an_error_in_a_flag_names_the_flag() {
        let mut serve = options("myapp:app");
        serve.workers = Some(100_000);
        let error = ConfigSource::Serve {
            file: None,
            options: serve,
        }
        .load()
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("--workers: 100000 is more workers"),
            "{error}"
        );
    }
}
