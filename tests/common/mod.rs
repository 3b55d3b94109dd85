//! Shared harness for the integration tests: start the real binary on 127.0.0.1:0 with a
//! temporary config, talk HTTP to it over loopback, send it signals, and read its log.
//!
//! Every wait is a bounded poll of a condition; every process killed is one the test
//! started (the master) or one the master reported as its worker.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod postgres;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const BINARY: &str = env!("CARGO_BIN_EXE_forkwarden");

/// Generous bound for things that normally take milliseconds (CI machines can be slow).
pub const SOON: Duration = Duration::from_secs(10);

/// Settings every test server starts from; a test overrides any of them by key.
const BASE_CONFIG: &[(&str, &str)] = &[
    ("http_port", "0"),
    ("workers", "2"),
    ("max_cron_threads", "0"),
    ("demo_fault_endpoints", "true"),
    ("graceful_timeout", "\"10s\""),
];

/// For a test that cannot do its check because a tool or a privilege (`what`) is missing:
/// under CI (`CI=true`, where .ci/run installs every tool the tests use) that fails the
/// test; elsewhere the test passes having checked nothing, and says so where `cargo test`
/// shows it (straight to standard error: libtest captures only the print macros).
pub fn cannot_check(what: &str) {
    let name = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if std::env::var("CI").is_ok_and(|value| value == "true" || value == "1") {
        panic!("{name}: cannot check: {what}; under CI every tool the tests need is there");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {name}: {what} (checked nothing; CI=true makes this a failure)"
    );
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Builds a config file text from the base settings overridden by `overrides` (`key = value`
/// lines; other TOML, such as tables, is appended as is).
pub fn config_text(overrides: &str) -> String {
    let mut keys: BTreeMap<String, String> = BASE_CONFIG
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let mut tail = String::new();
    for line in overrides.lines() {
        match line.split_once('=') {
            Some((key, value)) if !line.trim_start().starts_with('[') && tail.is_empty() => {
                keys.insert(key.trim().to_string(), value.trim().to_string());
            }
            _ => {
                tail.push_str(line);
                tail.push('\n');
            }
        }
    }
    let mut text: String = keys
        .iter()
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
    text.push_str(&tail);
    text
}

/// A running forkwarden master started by a test.
pub struct Server {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Server {
    /// Starts a server with the base config and `overrides`; waits until it listens.
    pub fn start(overrides: &str) -> Server {
        let server = Self::spawn(overrides);
        server.wait_for_log("listening on http://");
        server
    }

    /// Starts a server without waiting for anything (for cron-only or failing configs).
    /// `{dir}` in `overrides` stands for the server's own temporary directory.
    pub fn spawn(overrides: &str) -> Server {
        Self::spawn_with_env(overrides, &[])
    }

    /// [`Server::spawn`], with extra environment variables for the master.
    pub fn spawn_with_env(overrides: &str, env: &[(&str, String)]) -> Server {
        let (dir, config_path) = Self::write_config(overrides);
        Self::spawn_in(dir, config_path, env)
    }

    /// [`Server::spawn`] through `sh -c "{shell}; exec forkwarden ..."`, for a master started
    /// under a umask or a resource limit (`umask 000`, `ulimit -n 64`); the master keeps the
    /// shell's pid.
    pub fn spawn_after_shell(overrides: &str, shell: &str) -> Server {
        let (dir, config_path) = Self::write_config(overrides);
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{shell}; exec \"$0\" \"$@\""))
            .arg(BINARY);
        Self::spawn_command(dir, config_path, command)
    }

    fn write_config(overrides: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("forkwarden.toml");
        let text = config_text(overrides).replace("{dir}", &dir.path().display().to_string());
        std::fs::write(&config_path, text).expect("write config");
        (dir, config_path)
    }

    /// Stops this server (SIGTERM, waiting for it) and starts a new one on the same
    /// directory and config: what a restart leaves on disk is what the new one finds.
    pub fn restart(mut self) -> Server {
        self.signal(Signal::SIGTERM);
        assert!(self.wait_exit(SOON).is_some_and(|status| status.success()));
        let placeholder = tempfile::tempdir().expect("temp dir");
        let dir = std::mem::replace(&mut self.dir, placeholder);
        let config_path = self.config_path.clone();
        drop(self);
        Self::spawn_in(dir, config_path, &[])
    }

    fn spawn_in(dir: tempfile::TempDir, config_path: PathBuf, env: &[(&str, String)]) -> Server {
        let mut command = Command::new(BINARY);
        command.envs(env.iter().map(|(key, value)| (*key, value.as_str())));
        Self::spawn_command(dir, config_path, command)
    }

    /// Starts `forkwarden serve` with `args` (a config file only if they name one), in a
    /// temporary directory that `files` (name, text) are written to first, with `env` added;
    /// does not wait for anything.
    pub fn serve(args: &[&str], files: &[(&str, &str)], env: &[(&str, String)]) -> Server {
        Self::serve_with(Path::new(BINARY), args, files, env)
    }

    /// [`Server::serve`] with the `forkwarden` at `binary` (one a wheel installed).
    pub fn serve_with(
        binary: &Path,
        args: &[&str],
        files: &[(&str, &str)],
        env: &[(&str, String)],
    ) -> Server {
        let mut line = vec!["serve"];
        line.extend_from_slice(args);
        Self::spawn_line(binary, &line, files, env)
    }

    /// Starts `binary` with `args` (its whole command line: a subcommand and its flags) in
    /// a temporary directory that `files` (name, text; `{dir}` in a text stands for that
    /// directory) are written to first, with `env` added; does not wait for anything.
    pub fn spawn_line(
        binary: &Path,
        args: &[&str],
        files: &[(&str, &str)],
        env: &[(&str, String)],
    ) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let here = dir.path().display().to_string();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text.replace("{dir}", &here))
                .expect("write a file of the test");
        }
        let mut command = Command::new(binary);
        command
            .args(args.iter().map(|arg| arg.replace("{dir}", &here)))
            .current_dir(dir.path())
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())));
        let config_path = dir.path().join("forkwarden.toml");
        Self::spawn_configured(dir, config_path, command)
    }

    fn spawn_command(dir: tempfile::TempDir, config_path: PathBuf, mut command: Command) -> Server {
        command.arg("--config").arg(&config_path);
        Self::spawn_configured(dir, config_path, command)
    }

    fn spawn_configured(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        mut command: Command,
    ) -> Server {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start forkwarden");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr pipe");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = Server {
            child,
            port: 0,
            log,
            dir,
            config_path,
            exit: None,
        };
        if let Some(line) = server.find_log_within("listening on http://", Duration::from_secs(5)) {
            // `...:PORT` at the end of a text line, or `...:PORT"` inside a JSON one.
            let port = line
                .split("listening on http://")
                .nth(1)
                .and_then(|address| address.split(':').nth(1))
                .and_then(|rest| {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().ok()
                });
            server.port = port.expect("port in the listening line");
        }
        server
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Rewrites the config file (for SIGHUP tests).
    pub fn rewrite_config(&self, overrides: &str) {
        std::fs::write(&self.config_path, config_text(overrides)).expect("rewrite config");
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signal the master");
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// Lines containing `needle`.
    pub fn log_matching(&self, needle: &str) -> Vec<String> {
        self.log_lines()
            .into_iter()
            .filter(|line| line.contains(needle))
            .collect()
    }

    fn find_log_within(&self, needle: &str, timeout: Duration) -> Option<String> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.log_matching(needle).into_iter().next();
            found.is_some()
        });
        found
    }

    /// Waits for a log line containing `needle` and returns it; panics (showing the log)
    /// when none comes.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.find_log_within(needle, SOON).unwrap_or_else(|| {
            panic!(
                "no log line containing {needle:?} within {SOON:?}; log:\n{}",
                self.log_text()
            )
        })
    }

    /// Waits until `count` log lines contain `needle`; returns them.
    pub fn wait_for_log_count(&self, needle: &str, count: usize) -> Vec<String> {
        let mut found = Vec::new();
        let reached = wait_until(SOON, || {
            found = self.log_matching(needle);
            found.len() >= count
        });
        assert!(
            reached,
            "{} of {count} log lines containing {needle:?}; log:\n{}",
            found.len(),
            self.log_text()
        );
        found
    }

    /// Waits for a log line containing every one of `needles`.
    pub fn wait_for_log_all(&self, needles: &[&str]) -> String {
        let mut found = None;
        wait_until(SOON, || {
            found = self
                .log_lines()
                .into_iter()
                .find(|line| needles.iter().all(|needle| line.contains(needle)));
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no log line containing all of {needles:?}; log:\n{}",
                self.log_text()
            )
        })
    }

    /// Live (non-zombie) children of the master whose title contains `role`
    /// (`"http worker"`, `"cron worker"`).
    /// `forkwarden status --json` on this server's config.
    pub fn status_json(&self) -> serde_json::Value {
        let output = Command::new(BINARY)
            .args(["status", "--json", "--config"])
            .arg(&self.config_path)
            .output()
            .expect("forkwarden status");
        serde_json::from_slice(&output.stdout).expect("status as JSON")
    }

    pub fn workers(&self, role: &str) -> Vec<i32> {
        children_of(self.pid())
            .into_iter()
            .filter(|pid| process_title(*pid).is_some_and(|title| title.contains(role)))
            .collect()
    }

    /// SIGKILLs worker `pid` and asserts the master's line about it says it was replaced
    /// at once; returns that line.
    pub fn kill_worker_expecting_respawn(&self, pid: i32) -> String {
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill the worker");
        let line = self.wait_for_log(&format!("(pid {pid}) died: killed by SIGKILL"));
        assert!(
            line.contains("respawned as pid"),
            "replaced at once: {line}"
        );
        line
    }

    /// Waits until exactly `count` workers of `role` run; returns their pids.
    pub fn wait_for_workers(&self, role: &str, count: usize) -> Vec<i32> {
        let mut pids = Vec::new();
        let reached = wait_until(SOON, || {
            pids = self.workers(role);
            pids.len() == count
        });
        assert!(
            reached,
            "expected {count} {role}s, have {pids:?}; log:\n{}",
            self.log_text()
        );
        pids
    }

    /// Asks for status snapshots (SIGQUIT) until one shows `request` (`GET /path`) in
    /// flight: the way to know a request has reached a worker.
    pub fn wait_until_busy_with(&self, request: &str) {
        let needle = format!("on {request}");
        let before = self.log_matching(&needle).len();
        let busy = wait_until(SOON, || {
            self.signal(Signal::SIGQUIT);
            wait_until(Duration::from_millis(200), || {
                self.log_matching(&needle).len() > before
            })
        });
        assert!(
            busy,
            "{request} never showed as in flight; log:\n{}",
            self.log_text()
        );
    }

    /// Asks for status snapshots until one shows every worker of `role` idle.
    pub fn wait_until_idle(&self, role: &str) {
        let prefix = format!("status: {role} ");
        let idle = wait_until(SOON, || {
            let before = self.log_matching(&prefix).len();
            self.signal(Signal::SIGQUIT);
            let mut fresh = Vec::new();
            wait_until(Duration::from_millis(200), || {
                fresh = self.log_matching(&prefix).split_off(before);
                !fresh.is_empty()
            }) && fresh.iter().all(|line| line.contains("): idle"))
        });
        assert!(idle, "{role}s never all idle; log:\n{}", self.log_text());
    }

    /// Waits for the master to exit; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let child = &mut self.child;
            let mut status = None;
            wait_until(timeout, || {
                status = child.try_wait().ok().flatten();
                status.is_some()
            });
            self.exit = status;
        }
        self.exit
    }

    pub fn get(&self, path: &str) -> Reply {
        http_get(self.port, path)
    }

    /// Asserts that the server stops as a first start that cannot succeed does: status 1
    /// within 30 s. Returns the line that says why.
    pub fn wait_start_failure(&mut self) -> String {
        let status = self.wait_exit(Duration::from_secs(30));
        assert_eq!(
            status.and_then(|status| status.code()),
            Some(1),
            "{}",
            self.log_text()
        );
        self.wait_for_log("the application cannot start")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- forkwarden log ----\n{}", self.log_text());
        }
    }
}

/// The pid written right after `marker` in a log line (`respawned as pid 4390`,
/// `(pid 4312)`); panics, showing the line, when there is none.
pub fn pid_after(line: &str, marker: &str) -> i32 {
    line.split(marker)
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no pid after {marker:?} in {line:?}"))
}

/// Time between two log lines, by the server's own timestamps (across midnight too).
pub fn log_interval(earlier: &str, later: &str) -> Duration {
    const DAY: Duration = Duration::from_secs(86_400);
    let (start, end) = (time_of_day(earlier), time_of_day(later));
    end.checked_sub(start).unwrap_or(end + DAY - start)
}

/// The time of day a log line was written (`2026-11-25T19:20:29.830323Z INFO ...`), as a
/// duration since midnight UTC.
fn time_of_day(line: &str) -> Duration {
    let time = line
        .split_whitespace()
        .next()
        .and_then(|stamp| stamp.split_once('T'))
        .map(|(_, time)| time.trim_end_matches('Z'))
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let parts: Vec<f64> = time.split(':').map(|part| part.parse().unwrap()).collect();
    Duration::from_secs_f64(parts[0] * 3600.0 + parts[1] * 60.0 + parts[2])
}

/// An HTTP response as the test client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends raw bytes, reads until the server closes, returns what came back.
pub fn send_raw(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(SOON)).unwrap();
    stream.write_all(request).expect("send");
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// A whole response as text (head, and a body that ends with the connection); a chunked
/// body is decoded (as far as it goes: a body cut short keeps what came).
pub fn parse_reply(text: &str) -> Reply {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = if is_chunked(head) {
        let mut reader = body.as_bytes();
        let mut decoded = Vec::new();
        let _ = read_chunks(&mut reader, &mut decoded);
        String::from_utf8_lossy(&decoded).into_owned()
    } else {
        body.to_string()
    };
    Reply {
        status,
        head: head.to_string(),
        body,
    }
}

fn is_chunked(head: &str) -> bool {
    head.lines()
        .any(|line| line.eq_ignore_ascii_case("transfer-encoding: chunked"))
}

/// Reads a chunked body from `reader` into `body`; Ok once its last chunk came.
pub fn read_chunks(reader: &mut impl BufRead, body: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let size = usize::from_str_radix(size.trim_end(), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        if !chunk.ends_with(b"\r\n") {
            return Err(std::io::Error::other("chunk without CRLF"));
        }
        if size == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

pub fn http_get(port: u16, path: &str) -> Reply {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    parse_reply(&send_raw(port, request.as_bytes()))
}

/// A keep-alive connection for sending several requests in a row. Like any correct HTTP/1.1
/// client, it opens a new connection after a response that said `Connection: close`, and
/// after a request that failed. By default it never retries a failed request; made with
/// [`KeepAlive::retrying`], it retries, once, a request that failed on a reused connection
/// before any byte of response came, as RFC 9112 (9.3.1) has clients do for idempotent
/// requests, since the server may close an idle connection just as a request is sent.
pub struct KeepAlive {
    port: u16,
    stream: BufReader<TcpStream>,
    closed_by_server: bool,
    /// Requests sent on this connection so far.
    sent: u64,
    retry: bool,
    /// Requests retried on a new connection.
    pub retried: u64,
}

impl KeepAlive {
    pub fn connect(port: u16) -> KeepAlive {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(SOON)).unwrap();
        KeepAlive {
            port,
            stream: BufReader::new(stream),
            closed_by_server: false,
            sent: 0,
            retry: false,
            retried: 0,
        }
    }

    /// A connection whose client retries as RFC 9112 allows (see the type's doc).
    pub fn retrying(port: u16) -> KeepAlive {
        KeepAlive {
            retry: true,
            ..KeepAlive::connect(port)
        }
    }

    /// Sends `GET path` and reads the response (framed by Content-Length); status 0 when
    /// the server closed the connection without answering.
    pub fn get(&mut self, path: &str) -> Reply {
        let reused = self.sent > 0 && !self.closed_by_server;
        let (reply, any_byte) = self.send(path);
        if reply.status == 0 && !any_byte && reused && self.retry {
            self.retried += 1;
            return self.send(path).0;
        }
        reply
    }

    /// One attempt: the reply, and whether any byte of it came.
    fn send(&mut self, path: &str) -> (Reply, bool) {
        if self.closed_by_server {
            let (retry, retried) = (self.retry, self.retried);
            *self = KeepAlive::connect(self.port);
            (self.retry, self.retried) = (retry, retried);
        }
        self.sent += 1;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        if self.stream.get_mut().write_all(request.as_bytes()).is_err() {
            self.closed_by_server = true;
            return (parse_reply(""), false);
        }
        match read_response(&mut self.stream) {
            Ok(reply) => {
                self.closed_by_server = reply.head.contains("Connection: close");
                (reply, true)
            }
            Err(any_byte) => {
                // No (whole) response: the connection is dead; the next request reconnects.
                self.closed_by_server = true;
                (parse_reply(""), any_byte)
            }
        }
    }
}

/// Reads one response, framed by Content-Length or chunked, from `reader`; when the
/// connection ends first, `Err` says whether any of it came.
pub fn read_response(reader: &mut impl BufRead) -> Result<Reply, bool> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if head.is_empty() {
        return Err(false);
    }
    let read = if is_chunked(&head) {
        body.clear();
        read_chunks(reader, &mut body)
    } else {
        reader.read_exact(&mut body)
    };
    if read.is_err() {
        return Err(true);
    }
    let mut reply = parse_reply(&head);
    reply.body = String::from_utf8_lossy(&body).into_owned();
    Ok(reply)
}

/// How many descriptors process `pid` has open.
pub fn descriptor_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// A line of /proc/PID/status (`Uid:`, `Gid:`, `Groups:`), without its name.
pub fn status_field(pid: i32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .map(|value| value.trim().to_string())
}

/// Pids of the live children of `parent`, from /proc.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat_fields(*pid).is_some_and(|(state, ppid)| ppid == parent && state != 'Z'))
        .collect()
}

/// Whether `pid` names a live process (not gone, not a zombie).
pub fn is_alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|(state, _)| state != 'Z')
}

/// (state, parent pid) of `pid`.
fn stat_fields(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The title `ps` shows for `pid` (its /proc cmdline, NULs as spaces, trimmed).
pub fn process_title(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&raw).replace('\0', " ");
    Some(text.trim().to_string())
}

/// Runs the binary with `args` and `config` as its config file, for at most [`SOON`] (it is
/// killed after that); returns (exit status, stderr, stdout).
pub fn run_binary(dir: &Path, config: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let path = dir.join("forkwarden.toml");
    std::fs::write(&path, config).expect("write config");
    let (stdout_path, stderr_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(BINARY)
        .args(args)
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("run forkwarden");
    let mut status = None;
    if !wait_until(SOON, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    }) {
        let _ = child.kill();
        status = child.wait().ok();
    }
    (
        status.expect("exit status"),
        std::fs::read_to_string(stderr_path).unwrap_or_default(),
        std::fs::read_to_string(stdout_path).unwrap_or_default(),
    )
}

/// Runs `forkwarden cron list` on `config`; returns (exit status, stdout).
pub fn cron_list(config: &Path) -> (ExitStatus, String) {
    let output = Command::new(BINARY)
        .args(["cron", "list", "--config"])
        .arg(config)
        .output()
        .expect("run forkwarden cron list");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The directory to put on PYTHONPATH for `python3 -m forkwarden_wsgi`: the runner with its
/// Rust core built (scripts/build-python-core.sh), once per test binary.
pub fn python_runner_path() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-python-core.sh");
        let output = Command::new(script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/build-python-core.sh");
        assert!(
            output.status.success(),
            "building the Python runner's core failed"
        );
        String::from_utf8(output.stdout)
            .expect("a path")
            .trim()
            .to_string()
    })
}

/// Which HTTP workers a test runs against: the same behaviour is expected of both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// forkwarden's built-in workers and demo app.
    BuiltIn,
    /// The Python runner (forkwarden's worker loop in the `_core` extension, through the
    /// worker kit) serving scripts/compare_app.py, which has the demo app's endpoints.
    Python,
}

impl Flavour {
    /// `settings` (top-level `key = value` lines) with what this flavour needs added.
    pub fn config(self, settings: &str) -> String {
        match self {
            Flavour::BuiltIn => settings.to_string(),
            Flavour::Python => format!(
                "{settings}\n[app]\ncommand = [\"python3\", \"-m\", \"forkwarden_wsgi\", \
                 \"compare_app:app\"]\ncwd = \"{}/scripts\"\nready_timeout = \"20s\"\nnonblocking = true\n\
                 env = {{ PYTHONPATH = \"{}\" }}\n",
                env!("CARGO_MANIFEST_DIR"),
                python_runner_path()
            ),
        }
    }

    /// What the process titles of its HTTP workers contain: a kit worker's names its slot
    /// and application (`forkwarden: http worker 0 (compare_app:app)`).
    pub fn title(self) -> &'static str {
        match self {
            Flavour::BuiltIn => "http worker",
            Flavour::Python => "(compare_app:app)",
        }
    }

    /// A server of this flavour with `settings`, its `workers` HTTP workers ready.
    pub fn server(self, settings: &str, workers: usize) -> Server {
        let server = Server::start(&self.config(&format!("workers = {workers}\n{settings}")));
        server.wait_for_workers(self.title(), workers);
        // Ready, without a request (which would count towards limit_request).
        server.wait_until_idle("http worker");
        server
    }
}

/// Defines, for each `name(flavour: Flavour)` given, the tests `name::built_in` and
/// `name::python`: the same test against both kinds of HTTP worker.
#[macro_export]
macro_rules! against_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn built_in() {
                super::$name(super::common::Flavour::BuiltIn)
            }
            #[test]
            fn python() {
                super::$name(super::common::Flavour::Python)
            }
        }
    )*};
}
