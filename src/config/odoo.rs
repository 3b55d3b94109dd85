//! `forkwarden odoo -c odoo.conf`: a whole Odoo deployment from Odoo's own config file.
//!
//! Odoo's `[options]` that forkwarden shares (workers, limits, the HTTP address, proxy_mode)
//! set forkwarden's keys of the same names; the rest of odoo.conf stays Odoo's, read by Odoo
//! itself in each process (`python -m forkwarden_wsgi --odoo -- -c odoo.conf`). Around them
//! it writes what an admin would otherwise type: the preloaded `[app]`, a `[[cron]]` job
//! running Odoo's scheduled actions as a `call`, and the websocket server (`odoo gevent`) as
//! a `[[program]]`. A TOML file given beside it (`--config`) overrides any of these keys.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ByteSize, Config, CronJob, ExecApp, MemoryMeasure, Program, TimeSpan};

/// How long one pass of Odoo's scheduled actions listens for `cron_trigger` before the
/// next takes over (Odoo's cron workers look at least once a minute too).
const CRON_PASS: Duration = Duration::from_secs(50);

/// What `forkwarden odoo` was told besides odoo.conf.
#[derive(Clone, Debug, PartialEq)]
pub struct OdooOptions {
    /// Odoo's config file.
    pub odoo_conf: PathBuf,
    /// The Python of the environment that holds Odoo's requirements.
    pub python: PathBuf,
    /// The directory that holds the `odoo` package (a source checkout's, where odoo-bin
    /// is), when that Python cannot import it by itself.
    pub odoo_path: Option<PathBuf>,
}

/// A value of odoo.conf that forkwarden cannot take: the option and why.
#[derive(Debug, PartialEq, Eq)]
pub struct OdooConfError {
    pub option: String,
    pub message: String,
}

/// The `[options]` of an odoo.conf (Python's ConfigParser format, as Odoo reads it: `key =
/// value` or `key: value`, `;` and `#` comments, other sections ignored).
pub fn parse_options(text: &str) -> Result<BTreeMap<String, String>, OdooConfError> {
    let mut options = BTreeMap::new();
    let mut in_options = false;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(section) = line
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            in_options = section.trim() == "options";
            continue;
        }
        let Some((key, value)) = line.split_once(['=', ':']) else {
            return Err(OdooConfError {
                option: format!("line {}", index + 1),
                message: format!("{line:?} is not `key = value`"),
            });
        };
        if in_options {
            options.insert(key.trim().to_string(), value.trim().to_string());
        }
    }
    Ok(options)
}

/// odoo.conf's `False`, `None` and empty values: the option is unset.
fn is_unset(value: &str) -> bool {
    value.is_empty() || value.eq_ignore_ascii_case("false") || value.eq_ignore_ascii_case("none")
}

impl OdooOptions {
    /// Sets in `config` what odoo.conf's `options` say, except the keys `written` in a TOML
    /// file beside it (those override). Returns the keys set, each with the odoo.conf
    /// option it came from, for error messages.
    pub(super) fn apply(
        &self,
        options: &BTreeMap<String, String>,
        config: &mut Config,
        written: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<(&'static str, &'static str)>, OdooConfError> {
        let mut set = Vec::new();
        let get = |option: &str| {
            options
                .get(option)
                .map(String::as_str)
                .filter(|v| !is_unset(v))
        };
        let number = |option: &'static str| -> Result<Option<u64>, OdooConfError> {
            get(option)
                .map(|value| {
                    value.parse::<u64>().map_err(|_| OdooConfError {
                        option: option.to_string(),
                        message: format!("{value:?} is not a whole number"),
                    })
                })
                .transpose()
        };
        // Odoo's own defaults where odoo.conf says nothing: the same as forkwarden's, but
        // its HTTP interface (every one) and its cron workers (2).
        let mut take = |key: &'static str, option: &'static str| {
            let take = !written(key);
            if take {
                set.push((key, option));
            }
            take
        };
        if let Some(workers) = number("workers")?
            && workers > 0
            && take("workers", "workers")
        {
            config.workers = u32::try_from(workers).unwrap_or(u32::MAX);
        }
        if take("max_cron_threads", "max_cron_threads") {
            config.max_cron_threads =
                u32::try_from(number("max_cron_threads")?.unwrap_or(2)).unwrap_or(u32::MAX);
        }
        for (key, option) in [
            ("limit_memory_soft", "limit_memory_soft"),
            ("limit_memory_hard", "limit_memory_hard"),
        ] {
            if let Some(bytes) = number(option)?
                && take(key, option)
            {
                let size = ByteSize(bytes);
                if key == "limit_memory_soft" {
                    config.limit_memory_soft = size;
                } else {
                    config.limit_memory_hard = size;
                }
            }
        }
        // Odoo compares limit_memory_soft with the virtual size: the numbers in odoo.conf
        // were chosen for that.
        if take("limit_memory_soft_measure", "limit_memory_soft") {
            config.limit_memory_soft_measure = MemoryMeasure::Virtual;
        }
        for (key, option) in [
            ("limit_time_cpu", "limit_time_cpu"),
            ("limit_time_real", "limit_time_real"),
        ] {
            if let Some(seconds) = number(option)?
                && take(key, option)
            {
                let span = TimeSpan::secs(seconds);
                if key == "limit_time_cpu" {
                    config.limit_time_cpu = span;
                } else {
                    config.limit_time_real = span;
                }
            }
        }
        if let Some(limit) = number("limit_request")?
            && take("limit_request", "limit_request")
        {
            config.limit_request = limit;
        }
        if take("http_interface", "http_interface") {
            config.http_interface = match get("http_interface") {
                None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some(text) => text.parse().map_err(|_| OdooConfError {
                    option: "http_interface".into(),
                    message: format!("{text:?} is not an IP address"),
                })?,
            };
        }
        let http_port = number("http_port")?.or(number("xmlrpc_port")?);
        if take("http_port", "http_port") {
            config.http_port =
                u16::try_from(http_port.unwrap_or(8069)).map_err(|_| OdooConfError {
                    option: "http_port".into(),
                    message: "is not a port number".into(),
                })?;
        }
        if let Some(proxy_mode) = options.get("proxy_mode")
            && take("proxy_mode", "proxy_mode")
        {
            config.proxy_mode = proxy_mode.eq_ignore_ascii_case("true") || proxy_mode == "1";
        }
        let gevent_port = number("gevent_port")?
            .or(number("longpolling_port")?)
            .unwrap_or(8072);
        self.deployment(config, &mut set, gevent_port, get("data_dir"), written);
        Ok(set)
    }

    /// The parts of the deployment odoo.conf implies: Odoo preloaded as `[app]`, its
    /// scheduled actions as a `[[cron]]` call, its websocket server as a `[[program]]`,
    /// forkwarden's cron state beside Odoo's data.
    fn deployment(
        &self,
        config: &mut Config,
        set: &mut Vec<(&'static str, &'static str)>,
        gevent_port: u64,
        odoo_data_dir: Option<&str>,
        written: &dyn Fn(&str) -> bool,
    ) {
        let python = self.python.display().to_string();
        let odoo_conf = self.odoo_conf.display().to_string();
        let env: BTreeMap<String, String> = self
            .odoo_path
            .iter()
            .map(|path| {
                let inherited = std::env::var("PYTHONPATH").unwrap_or_default();
                let value = if inherited.is_empty() {
                    path.display().to_string()
                } else {
                    format!("{}:{inherited}", path.display())
                };
                ("PYTHONPATH".to_string(), value)
            })
            .collect();
        if !written("app") {
            set.push(("app.command", "the Odoo entry point"));
            config.app = Some(ExecApp {
                command: vec![
                    python.clone(),
                    "-m".into(),
                    "forkwarden_wsgi".into(),
                    "--odoo".into(),
                    "--preload".into(),
                    "--".into(),
                    "-c".into(),
                    odoo_conf.clone(),
                ],
                cwd: None,
                env: env.clone(),
                // Loading the registries of big databases takes time.
                ready_timeout: Some(TimeSpan::secs(300)),
                nonblocking: true,
                preload: true,
            });
        }
        if !written("cron") && config.max_cron_threads > 0 {
            // A pass listens for Odoo's cron_trigger for CRON_PASS, then ends; the next,
            // due at once, runs in a fresh process: an action triggered at any moment
            // starts within the time a notification takes. Each pass may take its whole
            // length plus the cron time limit.
            let cron_limit = config.cron_time_limit();
            let timeout = (!cron_limit.is_zero()).then(|| TimeSpan(CRON_PASS + cron_limit));
            config.cron = vec![CronJob {
                name: "odoo".into(),
                schedule: None,
                interval: Some(TimeSpan::secs(1)),
                command: Vec::new(),
                call: Some("forkwarden_wsgi.odoo:cron_pass".into()),
                cwd: None,
                env: BTreeMap::from([(
                    "FORKWARDEN_CRON_PASS_SECONDS".to_string(),
                    CRON_PASS.as_secs().to_string(),
                )]),
                timeout: timeout.or(Some(TimeSpan::secs(0))),
                catch_up: false,
            }];
        }
        if !written("program")
            && let Ok(gevent_port) = u16::try_from(gevent_port)
            && gevent_port > 0
        {
            config.program = vec![Program {
                name: "websocket".into(),
                command: vec![
                    python,
                    "-m".into(),
                    "forkwarden_wsgi.odoo_websocket".into(),
                    "--".into(),
                    "-c".into(),
                    odoo_conf,
                ],
                count: 1,
                // forkwarden binds it, on the HTTP workers' interface, and keeps it across
                // instances: a reload has the new one serve before the old one goes.
                listen: Some(SocketAddr::new(config.http_interface, gevent_port)),
                cwd: None,
                env,
                ready_timeout: Some(TimeSpan::secs(120)),
                // gevent waits for the socket in its loop.
                nonblocking: true,
            }];
        }
        if !written("data_dir")
            && let Some(data_dir) = odoo_data_dir
        {
            config.data_dir = Path::new(data_dir).join("forkwarden");
            set.push(("data_dir", "data_dir"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_read_from_their_section_only() {
        let text = "; Odoo's config\n[options]\nworkers = 4\nadmin_passwd: secret\n\
                    http_interface =\n# a comment\n[other]\nworkers = 9\n";
        let options = parse_options(text).unwrap();
        assert_eq!(options.get("workers").map(String::as_str), Some("4"));
        assert_eq!(
            options.get("admin_passwd").map(String::as_str),
            Some("secret")
        );
        assert_eq!(options.get("http_interface").map(String::as_str), Some(""));
        let error = parse_options("[options]\njust words\n").unwrap_err();
        assert_eq!(error.option, "line 2");
    }

    fn applied(text: &str, written: &[&str]) -> Result<Config, OdooConfError> {
        let options = parse_options(text).unwrap();
        let odoo = OdooOptions {
            odoo_conf: "/etc/odoo/odoo.conf".into(),
            python: "/venv/bin/python".into(),
            odoo_path: None,
        };
        let mut config = Config::default();
        odoo.apply(&options, &mut config, &|key| written.contains(&key))?;
        Ok(config)
    }

    #[test]
    fn odoo_options_set_forkwarden_keys_and_the_deployment() {
        let config = applied(
            "[options]\nworkers = 3\nmax_cron_threads = 1\nlimit_memory_soft = 671088640\n\
             limit_time_real = 5\nhttp_port = 9069\ngevent_port = 9072\nproxy_mode = True\n\
             data_dir = /var/lib/odoo\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.workers, 3);
        assert_eq!(config.max_cron_threads, 1);
        assert_eq!(config.limit_memory_soft, ByteSize(671_088_640));
        assert_eq!(config.limit_memory_soft_measure, MemoryMeasure::Virtual);
        assert_eq!(config.limit_time_real, TimeSpan::secs(5));
        assert_eq!(config.http_port, 9069);
        // Odoo's empty http_interface: every interface.
        assert_eq!(config.http_interface, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert!(config.proxy_mode);
        let app = config.app.unwrap();
        assert_eq!(
            app.command,
            [
                "/venv/bin/python",
                "-m",
                "forkwarden_wsgi",
                "--odoo",
                "--preload",
                "--",
                "-c",
                "/etc/odoo/odoo.conf"
            ]
        );
        assert!(app.preload);
        assert_eq!(config.cron.len(), 1);
        assert_eq!(
            config.cron[0].call.as_deref(),
            Some("forkwarden_wsgi.odoo:cron_pass")
        );
        // Odoo's websocket server on forkwarden's socket, on the HTTP interface.
        assert_eq!(
            config.program[0].listen,
            Some("0.0.0.0:9072".parse().unwrap())
        );
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/odoo/forkwarden"));
    }

    #[test]
    fn the_shipped_example_odoo_conf_is_read_whole() {
        let config = applied(include_str!("../../etc/odoo/odoo.conf"), &[]).unwrap();
        assert_eq!(config.workers, 4);
        assert_eq!(config.max_cron_threads, 1);
        assert_eq!(config.http_interface, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(config.proxy_mode);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/odoo/forkwarden"));
        assert_eq!(
            config.program[0].listen,
            Some("127.0.0.1:8072".parse().unwrap())
        );
    }

    #[test]
    fn keys_written_in_the_toml_override_odoo_conf() {
        let config = applied("[options]\nworkers = 3\nhttp_port = 9069\n", &["workers"]).unwrap();
        assert_eq!(config.workers, Config::default().workers);
        assert_eq!(config.http_port, 9069);
    }

    #[test]
    fn a_bad_value_names_its_option() {
        let error = applied("[options]\nlimit_time_real = soon\n", &[]).unwrap_err();
        assert_eq!(error.option, "limit_time_real");
        assert!(error.message.contains("\"soon\""), "{}", error.message);
    }
}
