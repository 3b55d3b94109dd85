//! Real Odoo 17 (../shared/odoo17) under `forkwarden odoo -c odoo.conf`: no glue, Odoo's own
//! config file. scripts/ensure-odoo.sh (run by .ci/run) makes its venv and database.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    BINARY, SOON, Server, cannot_check, http_get, pid_after, python_runner_path, wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const DATABASE: &str = "forkwarden_odoo";

/// Odoo's source and the venv with its requirements; None (said why) when they are not set
/// up on this machine.
fn odoo() -> Option<(PathBuf, PathBuf)> {
    // Where scripts/ensure-odoo.sh found it.
    let source = std::env::var_os("FORKWARDEN_ODOO")
        .map_or_else(|| Path::new(REPO).join("../shared/odoo17"), PathBuf::from);
    let python = Path::new(REPO).join("target/odoo-venv/bin/python");
    if !source.join("odoo-bin").is_file() || !python.is_file() {
        cannot_check("real Odoo is not set up (scripts/ensure-odoo.sh; .ci/run runs it)");
        return None;
    }
    let source = source.canonicalize().expect("odoo17's path");
    Some((source, python))
}

/// A free loopback port (held until the caller binds it: a small window).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}

/// An odoo.conf serving the test database on `http` and `gevent`, with `extra` options.
fn odoo_conf(source: &Path, http: u16, gevent: u16, extra: &str) -> String {
    format!(
        "[options]\naddons_path = {}/odoo/addons\ndb_name = {DATABASE}\n\
         dbfilter = ^{DATABASE}$\nhttp_interface = 127.0.0.1\nhttp_port = {http}\n\
         gevent_port = {gevent}\nworkers = 2\nmax_cron_threads = 1\nlog_level = warn\n{extra}",
        source.display()
    )
}

/// `forkwarden odoo -c odoo.conf` with the test's venv and Odoo's source.
fn odoo_server(source: &Path, python: &Path, conf: &str) -> Server {
    let source = source.display().to_string();
    let python = python.display().to_string();
    Server::spawn_line(
        Path::new(BINARY),
        &[
            "odoo",
            "-c",
            "{dir}/odoo.conf",
            "--python",
            &python,
            "--odoo-path",
            &source,
        ],
        &[("odoo.conf", conf)],
        &[("PYTHONPATH", python_runner_path().to_string())],
    )
}

/// The status line of a websocket handshake with Odoo's server on `port`.
fn websocket_handshake(port: u16) -> String {
    let mut stream = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(stream) => stream,
        Err(error) => return format!("connect: {error}"),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let request = format!(
        "GET /websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    if let Err(error) = stream.write_all(request.as_bytes()) {
        return format!("write: {error}");
    }
    let mut head = [0u8; 64];
    let read = match stream.read(&mut head) {
        Ok(0) => return "closed without an answer".to_string(),
        Ok(read) => read,
        Err(error) => return format!("read: {error}"),
    };
    String::from_utf8_lossy(&head[..read])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn odoo_runs_from_its_own_config_with_workers_cron_and_websocket() {
    let Some((source, python)) = odoo() else {
        return;
    };
    let (http, gevent) = (free_port(), free_port());
    let server = odoo_server(
        &source,
        &python,
        &odoo_conf(&source, http, gevent, "log_handler = werkzeug:INFO\n"),
    );
    server.wait_for_log("listening on http://127.0.0.1:");
    // Loaded once in the template (its registry, a warm-up of /web/login), then forked.
    server.wait_for_log("loaded the application in");
    let login = wait_until(Duration::from_secs(60), || {
        http_get(server.port, "/web/login").status == 200
    });
    assert!(login, "{}", server.log_text());
    // Odoo's own line per request, with its query count and times.
    let line = server.wait_for_log("\"GET /web/login HTTP/1.1\" 200 - ");
    assert!(line.contains("werkzeug: 127.0.0.1 - - ["), "{line}");
    // The websocket server, supervised as a program on odoo.conf's gevent_port.
    assert!(
        wait_until(Duration::from_secs(30), || websocket_handshake(gevent)
            .contains(" 101 ")),
        "{}",
        server.log_text()
    );
    // Odoo's scheduled actions, a `call` into the preloaded Odoo, listening for triggers
    // (a_triggered_scheduled_action_runs_without_waiting_for_the_next_pass).
    server.wait_for_log("cron job odoo started as pid ");

    // A worker killed: replaced, and the new one serves.
    let line = server.wait_for_log("http worker 0 started as pid ");
    let worker = pid_after(&line, "started as pid ");
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    let died = server.wait_for_log(&format!("(pid {worker}) died: killed by SIGKILL"));
    let replacement = pid_after(&died, "respawned as pid ");
    assert_ne!(replacement, worker);
    assert!(wait_until(SOON, || {
        http_get(server.port, "/web/login").status == 200
    }));
}

/// Copies directory `from` into `to` (files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("make the copy's directory");
    for entry in std::fs::read_dir(from).expect("read the directory") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("its type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// PostgreSQL sessions on the test database whose application name starts with `prefix`.
fn sessions(prefix: &str) -> Option<i64> {
    let output = Command::new("psql")
        .args(["-d", DATABASE, "-tAc"])
        .arg(format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '{prefix}%'"
        ))
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

#[test]
fn odoo_is_held_to_its_limits_reloads_new_code_under_load_and_leaks_no_session() {
    let Some((source, python)) = odoo() else {
        return;
    };
    // tests/apps/odoo_addons/forkwarden_test, copied so that the test can change its code:
    // a slow route and one that says which code is loaded, as a server-wide module.
    let addons = tempfile::tempdir().expect("temp dir");
    copy_tree(
        &Path::new(REPO).join("tests/apps/odoo_addons"),
        addons.path(),
    );
    let (http, gevent) = (free_port(), free_port());
    let conf = odoo_conf(
        &source,
        http,
        gevent,
        "limit_time_real = 5
",
    )
    .replace(
        "/odoo/addons\n",
        &format!(
            "/odoo/addons,{}\nserver_wide_modules = base,web,forkwarden_test\n",
            addons.path().display()
        ),
    );
    // Every PostgreSQL session of this server's Odoo processes carries this prefix.
    let prefix = format!("fwtest-{}-", std::process::id());
    let source_text = source.display().to_string();
    let python_text = python.display().to_string();
    let server = Server::spawn_line(
        Path::new(BINARY),
        &[
            "odoo",
            "-c",
            "{dir}/odoo.conf",
            "--python",
            &python_text,
            "--odoo-path",
            &source_text,
        ],
        &[("odoo.conf", &conf)],
        &[
            ("PYTHONPATH", python_runner_path().to_string()),
            ("ODOO_PGAPPNAME", format!("{prefix}{{pid}}")),
        ],
    );
    server.wait_for_log("loaded the application in");
    let version = |server: &Server| http_get(server.port, "/forkwarden_test/version");
    assert!(
        wait_until(Duration::from_secs(60), || version(&server).body == "1"),
        "{}",
        server.log_text()
    );

    // An 8 s request past limit_time_real = 5: answered 504 before it would have ended.
    let started = std::time::Instant::now();
    let slow = http_get(server.port, "/forkwarden_test/sleep?seconds=8");
    assert_eq!(slow.status, 504, "{}", server.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // New code on disk and SIGHUP while clients keep asking: every request answered,
    // by the old code, then by the new.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut seen = Vec::new();
                    let deadline = std::time::Instant::now() + Duration::from_secs(90);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && std::time::Instant::now() < deadline
                    {
                        let reply = version(&server);
                        seen.push((reply.status, reply.body));
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        std::fs::write(
            addons.path().join("forkwarden_test/version.py"),
            "VERSION = \"2\"\n",
        )
        .expect("change the code");
        kill(Pid::from_raw(server.pid()), Signal::SIGHUP).expect("SIGHUP");
        let reloaded = wait_until(Duration::from_secs(60), || version(&server).body == "2");
        // A little more load on the new generation, then the clients stop.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let answers = clients
            .into_iter()
            .flat_map(|client| client.join().expect("a client"))
            .collect();
        assert!(reloaded, "{}", server.log_text());
        answers
    });
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, body)| *status != 200 || !["1", "2"].contains(&body.as_str()))
        .collect();
    assert!(
        failed.is_empty() && answers.len() > 20,
        "{} of {} requests failed through the reload: {:?}",
        failed.len(),
        answers.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(answers.last().map(|(_, body)| body.as_str()), Some("2"));

    // 20 workers killed and replaced: their sessions go with them, none is left behind.
    let settle = |server: &Server| {
        for _ in 0..4 {
            assert_eq!(http_get(server.port, "/web/login").status, 200);
        }
    };
    settle(&server);
    let before = sessions(&prefix).expect("count the sessions");
    assert!(
        before > 0,
        "no session named {prefix}...: the count would prove nothing"
    );
    for _ in 0..20 {
        let workers = server.wait_for_workers("http worker", 2);
        let victim = workers[0];
        kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill a worker");
        server.wait_for_log(&format!("(pid {victim}) died: killed by SIGKILL"));
        assert!(wait_until(SOON, || http_get(server.port, "/web/login")
            .status
            == 200));
    }
    settle(&server);
    let mut after = None;
    let settled = wait_until(SOON, || {
        after = sessions(&prefix);
        after.is_some_and(|after| after <= before + 2)
    });
    assert!(
        settled,
        "{before} sessions before 20 respawns, {after:?} after: sessions leaked"
    );
}

#[test]
fn odoo_check_prints_the_deployment_it_infers() {
    let Some((source, python)) = odoo() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("odoo.conf");
    std::fs::write(
        &conf,
        odoo_conf(
            &source,
            8069,
            8072,
            "limit_time_real = 5\nproxy_mode = True\n",
        ),
    )
    .unwrap();
    let output = Command::new(BINARY)
        .arg("odoo")
        .arg("-c")
        .arg(&conf)
        .arg("--python")
        .arg(&python)
        .arg("--odoo-path")
        .arg(&source)
        .arg("--check")
        .env("PYTHONPATH", python_runner_path())
        .stdin(Stdio::null())
        .output()
        .expect("forkwarden odoo --check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    for expected in [
        "# the application loads",
        "limit_time_real = \"5s\"",
        "proxy_mode = true",
        "\"--odoo\", \"--preload\", \"--\", \"-c\"",
        "name = \"websocket\"",
        "call = \"forkwarden_wsgi.odoo:cron_pass\"",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }

    // A value forkwarden cannot take is named as odoo.conf's option.
    std::fs::write(
        &conf,
        odoo_conf(&source, 8069, 8072, "limit_time_cpu = soon\n"),
    )
    .unwrap();
    let output = Command::new(BINARY)
        .arg("odoo")
        .arg("-c")
        .arg(&conf)
        .arg("--check")
        .stdin(Stdio::null())
        .output()
        .expect("forkwarden odoo --check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("odoo.conf: [options] limit_time_cpu: \"soon\" is not a whole number"),
        "{stderr}"
    );
}

#[test]
fn the_websocket_server_answers_through_a_reload() {
    // Odoo's own gevent server binds its port itself: every reload refused clients for
    // seconds. On forkwarden's socket, the new instance serves before the old one goes.
    let Some((source, python)) = odoo() else {
        return;
    };
    let (http, gevent) = (free_port(), free_port());
    let server = odoo_server(&source, &python, &odoo_conf(&source, http, gevent, ""));
    assert!(
        wait_until(Duration::from_secs(60), || websocket_handshake(gevent)
            .contains(" 101 ")),
        "{}",
        server.log_text()
    );
    let first = server.wait_for_log("websocket program 0 started as pid ");
    let old = pid_after(&first, "started as pid ");
    server.signal(Signal::SIGHUP);
    let mut failures = Vec::new();
    let mut handshakes = 0;
    // Bounded: until the old instance is gone (then a few more), or 2000 handshakes.
    let mut after_gone = 0;
    while handshakes < 2000 && after_gone < 20 {
        let status = websocket_handshake(gevent);
        handshakes += 1;
        if !status.contains(" 101 ") {
            failures.push(status);
        }
        if !server
            .log_matching(&format!("(pid {old}) stopped"))
            .is_empty()
        {
            after_gone += 1;
        }
    }
    assert!(
        after_gone > 0,
        "the old instance never left: {}",
        server.log_text()
    );
    assert!(
        failures.is_empty(),
        "{} of {handshakes} handshakes failed during the reload: {failures:?}",
        failures.len()
    );
}

/// The value of Odoo's system parameter `key` in the test database, if set.
fn parameter(key: &str) -> Option<String> {
    let output = Command::new("psql")
        .args(["-d", DATABASE, "-tAc"])
        .arg(format!(
            "SELECT value FROM ir_config_parameter WHERE key = '{key}'"
        ))
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let value = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (!value.is_empty()).then_some(value)
}

#[test]
fn a_triggered_scheduled_action_runs_without_waiting_for_the_next_pass() {
    // Odoo's cron workers wake on NOTIFY cron_trigger (a mail queued, an action
    // triggered); a pass of forkwarden's cron job listens for it too.
    let Some((source, python)) = odoo() else {
        return;
    };
    let (http, gevent) = (free_port(), free_port());
    let server = odoo_server(&source, &python, &odoo_conf(&source, http, gevent, ""));
    server.wait_for_log_all(&["cron job odoo started as pid"]);
    let key = format!("forkwarden.test.triggered.{}", std::process::id());
    let conf = server.dir.path().join("odoo.conf");
    let created = Command::new(&python)
        .arg(Path::new(REPO).join("tests/apps/odoo_trigger.py"))
        .arg(&conf)
        .arg(DATABASE)
        .arg(&key)
        .env("PYTHONPATH", &source)
        .stdin(Stdio::null())
        .output()
        .expect("run odoo_trigger.py");
    let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    // Well before the pass ends (50 s) and the next starts: the notification woke it.
    let ran = wait_until(SOON, || parameter(&key).is_some());
    let _ = Command::new("psql")
        .args(["-d", DATABASE, "-qc"])
        .arg(format!(
            "DELETE FROM ir_cron WHERE id = {id}; DELETE FROM ir_config_parameter WHERE key = '{key}'"
        ))
        .stdin(Stdio::null())
        .output();
    assert!(
        ran,
        "the triggered action did not run: {}",
        server.log_text()
    );
}

#[test]
fn a_job_runs_in_the_preloaded_odoo_and_enqueues_more_with_env_cr() {
    // A deployment file naming odoo.conf (`odoo_config`), whose keys add job workers: what
    // docs/jobs.md shows; the `forkwarden job` commands read the same file.
    let Some((source, python)) = odoo() else {
        return;
    };
    let (http, gevent) = (free_port(), free_port());
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| "root".to_string(), |user| user.name);
    let deployment = format!(
        "odoo_config = \"odoo.conf\"\nodoo_python = \"{}\"\nodoo_path = \"{}\"\n\
         job_workers = 1\n\
         cron_store = \"postgresql://{user}@%2Fvar%2Frun%2Fpostgresql/{DATABASE}\"\n\
         [[job]]\nname = \"fan_out\"\ncall = \"odoo_jobs:fan_out\"\n\
         [[job]]\nname = \"set_parameter\"\ncall = \"odoo_jobs:set_parameter\"\n",
        python.display(),
        source.display()
    );
    let server = Server::spawn_line(
        Path::new(BINARY),
        &["--config", "{dir}/deploy.toml"],
        &[
            ("odoo.conf", &odoo_conf(&source, http, gevent, "")),
            ("deploy.toml", &deployment),
        ],
        &[(
            "PYTHONPATH",
            format!("{}:{REPO}/tests/apps", python_runner_path()),
        )],
    );
    server.wait_for_log("loaded the application in");
    server.wait_for_log("job worker 0 started as pid");
    let key = format!("forkwarden.test.job.{}", std::process::id());
    let args = format!("{{\"db\": \"{DATABASE}\", \"key\": \"{key}\", \"count\": 3}}");
    let job = |arguments: &[&str]| {
        let output = Command::new(BINARY)
            .arg("job")
            .args(arguments)
            .arg("--config")
            .arg(server.dir.path().join("deploy.toml"))
            .stdin(Stdio::null())
            .output()
            .expect("forkwarden job");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let fan_out = job(&["enqueue", "fan_out", "--args", &args]);
    let psql = |sql: &str| {
        let output = Command::new("psql")
            .args(["-d", DATABASE, "-tAc", sql])
            .stdin(Stdio::null())
            .output()
            .expect("psql");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let done = wait_until(Duration::from_secs(30), || {
        psql(&format!(
            "SELECT count(*) FROM ir_config_parameter WHERE key LIKE '{key}.%'"
        )) == "3"
    });
    let this_run = format!("args::text LIKE '%{key}%'");
    let jobs = psql(&format!(
        "SELECT kind, state, result FROM forkwarden.job WHERE {this_run} ORDER BY id"
    ));
    let shown = job(&["show", &fan_out]);
    psql(&format!(
        "DELETE FROM ir_config_parameter WHERE key LIKE '{key}.%'; \
         DELETE FROM forkwarden.job WHERE {this_run}"
    ));
    assert!(done, "jobs: {jobs}\n{}", server.log_text());
    assert_eq!(
        jobs.lines().filter(|line| line.contains("|done|")).count(),
        4,
        "{jobs}"
    );
    assert!(shown.contains("fan_out (done)"), "{shown}");
}
