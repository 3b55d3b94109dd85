//! `[app] preload = true`: the WSGI runner as a template that loads tests/apps/preload_app.py
//! once and forks every HTTP worker when the master asks.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{
    SOON, Server, children_of, http_get, is_alive, pid_after, python_runner_path, wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A config preloading the test app from `code` (a directory holding its `version.py`):
/// top-level `settings`, the `[app]` table, then `cron` (`[[cron]]` tables, which come last).
fn preload_config(code: &Path, settings: &str, cron: &str) -> String {
    format!(
        "{settings}\n[app]\n\
         command = [\"python3\", \"-m\", \"forkwarden_wsgi\", \"--preload\", \
         \"--post-fork\", \"preload_app:post_fork\", \"preload_app:app\"]\n\
         cwd = \"{}\"\nenv = {{ PYTHONPATH = \"{}:{REPO}/tests/apps\" }}\n\
         preload = true\nnonblocking = true\nready_timeout = \"20s\"\n{cron}",
        code.display(),
        python_runner_path()
    )
}

/// A server preloading the test app from `code`, with `workers` HTTP workers running.
fn preload_server(code: &Path, settings: &str, workers: usize) -> Server {
    let server = Server::start(&preload_config(
        code,
        &format!("workers = {workers}\n{settings}"),
        "",
    ));
    server.wait_for_log("loaded the application in");
    assert!(
        wait_until(SOON, || workers_of(&server).len() == workers),
        "{}",
        server.log_text()
    );
    server
}

/// A directory with `version.py` saying `VERSION = version`.
fn code(version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), version);
    dir
}

fn write_version(dir: &Path, version: &str) {
    std::fs::write(dir.join("version.py"), format!("VERSION = {version:?}\n")).unwrap();
}

/// Breaks the code in `code` (its import fails) and reloads; returns the line saying the new
/// template failed to load it.
fn deploy_broken_code(server: &Server, code: &Path) -> String {
    std::fs::write(
        code.join("version.py"),
        "raise ImportError('a broken deploy')\n",
    )
    .unwrap();
    server.signal(Signal::SIGHUP);
    server.wait_for_log("failed to load the application: exited with status 1")
}

/// Fixes the code in `code` (version 3) and waits until the reload retried with backoff
/// completes: version 3 answers.
fn deploy_fixed_code(server: &Server, code: &Path) {
    write_version(code, "3");
    assert!(
        wait_until(Duration::from_secs(20), || http_get(server.port, "/info")
            .body
            .contains("version=3 ")),
        "{}",
        server.log_text()
    );
}

/// The pid of the template now serving, from the latest "started" line.
fn template_of(server: &Server) -> i32 {
    let line = server
        .log_matching("app template started as pid ")
        .pop()
        .expect("a template started");
    pid_after(&line, "started as pid ")
}

/// The master's live children that are its HTTP workers: those whose process title says
/// so (a worker sets it as it starts to serve). Not "every child but the templates the log
/// named": a template just forked is a child before its line reaches the log.
fn workers_of(server: &Server) -> Vec<i32> {
    children_of(server.pid())
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.starts_with(b"forkwarden: http worker"))
        })
        .collect()
}

/// Field `key` of an /info answer (`version=2 loaded_by=...`).
fn info_field(info: &str, key: &str) -> String {
    info.split_whitespace()
        .find_map(|pair| pair.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {info:?}"))
        .to_string()
}

/// Process group of `pid`, from /proc.
fn process_group(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[2].parse().unwrap()
}

#[test]
fn workers_are_forked_from_the_loaded_template_as_the_masters_own_children() {
    let code = code("1");
    let server = preload_server(code.path(), "limit_memory_hard = \"3GiB\"", 2);
    let template = template_of(&server);
    let workers = workers_of(&server);
    for worker in &workers {
        assert_eq!(process_group(*worker), *worker, "its own process group");
        let limits = std::fs::read_to_string(format!("/proc/{worker}/limits")).unwrap();
        let address_space = limits
            .lines()
            .find(|line| line.starts_with("Max address space"))
            .unwrap();
        assert!(address_space.contains("3221225472"), "{address_space}");
    }
    // Two slow requests at once: both workers answer, each loaded by the template, each
    // having run the post-fork hook itself, each knowing its slot and socket.
    let infos: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let _ = http_get(server.port, "/sleep?ms=500");
                })
            })
            .collect();
        let infos = (0..20)
            .map(|_| http_get(server.port, "/info").body)
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        infos
    });
    for info in &infos {
        assert_eq!(
            info_field(info, "loaded_by"),
            template.to_string(),
            "{info}"
        );
        let pid: i32 = info_field(info, "post_fork").parse().unwrap();
        assert!(
            workers.contains(&pid),
            "post-fork ran in {pid}, not a worker: {info}"
        );
        assert_eq!(info_field(info, "listen_pid_is_mine"), "True", "{info}");
        assert_eq!(info_field(info, "generation"), "1", "{info}");
        assert!(
            ["0", "1"].contains(&info_field(info, "slot").as_str()),
            "{info}"
        );
    }
    // A killed worker comes back from the template, not from a cold start.
    let victim = workers[0];
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let line = server.wait_for_log(&format!("(pid {victim}) died: killed by SIGKILL"));
    let replacement = pid_after(&line, "respawned as pid ");
    assert!(wait_until(SOON, || workers_of(&server).contains(&replacement)));
    assert_eq!(server.log_matching("app template started as pid ").len(), 1);
    assert!(is_alive(template));
    // The status shows the template's spare pair (forked in advance for the next worker):
    // its middle process, a child of the template, and the spare worker below it.
    let spares = || {
        server.status_json()["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|row| row["role"] == "spare" && row["rss_bytes"].as_u64().is_some())
            .filter_map(|row| row["pid"].as_i64().and_then(|pid| i32::try_from(pid).ok()))
            .collect::<Vec<i32>>()
    };
    assert!(wait_until(SOON, || spares().len() == 2), "{:?}", spares());
    let pair = spares();
    let parent = |pid: i32| {
        common::status_field(pid, "PPid:")
            .and_then(|ppid| ppid.trim().parse::<i32>().ok())
            .unwrap_or(0)
    };
    assert!(
        pair.len() == 2 && parent(pair[0]) == template && parent(pair[1]) == pair[0],
        "spare pair {pair:?} below template {template}"
    );
}

#[test]
fn the_templates_death_leaves_the_workers_serving_and_a_new_template_starts() {
    let code = code("1");
    let server = preload_server(code.path(), "", 2);
    let template = template_of(&server);
    let workers = workers_of(&server);
    kill(Pid::from_raw(template), Signal::SIGKILL).unwrap();
    server.wait_for_log(&format!("app template (pid {template}) died after"));
    assert!(wait_until(SOON, || server
        .log_matching("app template started as pid ")
        .len()
        == 2));
    server.wait_for_log_count("loaded the application in", 2);
    for worker in &workers {
        assert!(is_alive(*worker), "worker {worker} went with the template");
    }
    // Workers killed now are forked by the new template (both: an idle worker is not
    // bound to get the next connection).
    let new_template = template_of(&server);
    let mut replacements = BTreeSet::new();
    for worker in &workers {
        kill(Pid::from_raw(*worker), Signal::SIGKILL).unwrap();
        let line = server.wait_for_log(&format!("(pid {worker}) died: killed by SIGKILL"));
        replacements.insert(pid_after(&line, "respawned as pid "));
    }
    let loaded_by = wait_until(SOON, || {
        let info = http_get(server.port, "/info").body;
        replacements.contains(&info_field(&info, "post_fork").parse().unwrap_or(0))
            && info_field(&info, "loaded_by") == new_template.to_string()
    });
    assert!(loaded_by, "{}", server.log_text());
}

#[test]
fn sighup_loads_the_new_code_in_a_new_template_without_a_failed_request() {
    let code = code("1");
    let server = preload_server(code.path(), "", 2);
    let old_template = template_of(&server);
    write_version(code.path(), "2");
    let failures = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let mut failures = Vec::new();
            for _ in 0..400 {
                let reply = http_get(server.port, "/info");
                if reply.status != 200 {
                    failures.push(reply.status);
                }
                if reply.body.contains("version=2") {
                    break;
                }
            }
            failures
        });
        server.signal(Signal::SIGHUP);
        load.join().unwrap()
    });
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(wait_until(SOON, || {
        (0..4).all(|_| http_get(server.port, "/info").body.contains("version=2 "))
    }));
    server.wait_for_log(&format!(
        "app template (pid {old_template}) (generation 1) is told to leave"
    ));
    server.wait_for_log(&format!("app template (pid {old_template}) left"));
    assert!(wait_until(SOON, || !is_alive(old_template)));
    assert!(wait_until(SOON, || workers_of(&server).len() == 2));
}

#[test]
fn a_template_that_cannot_load_at_the_first_start_stops_the_server() {
    let code = code("1");
    std::fs::write(
        code.path().join("version.py"),
        "raise ImportError('a broken first deploy')\n",
    )
    .unwrap();
    let mut server = Server::spawn(&preload_config(code.path(), "workers = 2", ""));
    let line = server.wait_start_failure();
    assert!(
        line.contains("app template") && line.contains("ImportError: a broken first deploy"),
        "{line}"
    );
    // Loaded three times, never forked a worker.
    assert_eq!(
        server.log_matching("failed to load the application").len(),
        3,
        "{}",
        server.log_text()
    );
}

#[test]
fn a_template_that_fails_to_load_keeps_the_old_generation_serving() {
    let code = code("1");
    let server = preload_server(code.path(), "", 2);
    let workers = workers_of(&server);
    let line = deploy_broken_code(&server, code.path());
    assert!(line.contains("2 http workers go on serving"), "{line}");
    server.wait_for_log("[stderr]: ImportError: a broken deploy");
    for _ in 0..10 {
        assert!(http_get(server.port, "/info").body.contains("version=1 "));
    }
    // It is retried with backoff; once the code is fixed, the reload completes.
    server.wait_for_log("failed loads in a row");
    deploy_fixed_code(&server, code.path());
    assert!(wait_until(SOON, || workers
        .iter()
        .all(|pid| !is_alive(*pid))));
}

#[test]
fn workers_that_die_while_a_broken_deploy_fails_to_load_are_forked_by_the_old_template() {
    // Before: until the new template loaded, no worker was replaced: a broken deploy and a
    // few ordinary deaths left nobody serving, while the old template sat loaded.
    let code = code("1");
    let server = preload_server(code.path(), "", 2);
    let old_template = template_of(&server);
    deploy_broken_code(&server, code.path());
    for worker in workers_of(&server) {
        kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
        let line = server.wait_for_log(&format!("(pid {worker}) died: killed by SIGKILL"));
        let replacement = pid_after(&line, "respawned as pid ");
        assert!(wait_until(SOON, || workers_of(&server).contains(&replacement)));
    }
    server.wait_for_log(&format!(
        "is forked by the app template of generation 1 (pid {old_template}) until \
         generation 2's has loaded"
    ));
    for _ in 0..10 {
        let info = http_get(server.port, "/info").body;
        assert!(info.contains("version=1 "), "{info}");
        assert_eq!(info_field(&info, "loaded_by"), old_template.to_string());
    }
    // Fixed, the reload completes: new workers from the new template replace them.
    deploy_fixed_code(&server, code.path());
}

#[test]
fn limits_reach_forked_workers_and_stopping_leaves_nothing_behind() {
    let code = code("1");
    let mut server = preload_server(
        code.path(),
        "limit_request = 3\nlimit_memory_soft = 0\nlimit_memory_hard = \"400MiB\"\n\
         limit_memory_hard_rlimit = false\nlimit_time_real = 3",
        1,
    );
    let first: i32 = server.get("/pid").body.parse().unwrap();
    let _ = server.get("/pid");
    let _ = server.get("/pid");
    let line = server.wait_for_log("exited: limit_request reached");
    let second = pid_after(&line, "respawned as pid ");
    assert_ne!(first, second);
    assert!(wait_until(SOON, || server.get("/pid").body == second.to_string()));
    let _ = server.get("/sleep?ms=9000");
    let line = server.wait_for_log("killed: limit_time_real exceeded");
    assert!(line.contains("while serving GET /sleep?ms=9000"), "{line}");
    // (Allocating takes well under limit_time_real, even on a loaded machine.)
    let _ = server.get("/alloc?mb=500");
    server.wait_for_log("killed: limit_memory_hard exceeded (rss ");
    let template = template_of(&server);
    let everyone: Vec<i32> = children_of(server.pid());
    assert!(everyone.contains(&template));
    server.signal(Signal::SIGTERM);
    assert!(
        server
            .wait_exit(SOON)
            .is_some_and(|status| status.success())
    );
    assert!(
        wait_until(SOON, || everyone.iter().all(|pid| !is_alive(*pid))),
        "left behind: {everyone:?}"
    );
}

#[test]
fn preload_needs_a_program_that_reports_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr, _) = common::run_binary(
        dir.path(),
        "[app]\ncommand = [\"true\"]\npreload = true\nready_timeout = 0\n",
        &["check"],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("app.ready_timeout") && stderr.contains("preload"),
        "{stderr}"
    );
}

/// Whether python3 can reach the test database with pg8000 (scripts/ensure-postgres.sh, which
/// .ci/run runs, sets both up).
fn database_available() -> bool {
    std::process::Command::new("python3")
        .args([
            "-c",
            "import getpass, pg8000.native; pg8000.native.Connection(getpass.getuser(), \
             database='forkwarden_test', unix_sock='/var/run/postgresql/.s.PGSQL.5432')",
        ])
        .output()
        .is_ok_and(|output| output.status.success())
}

#[test]
fn the_post_fork_hook_gives_each_worker_a_database_connection_of_its_own() {
    if !database_available() {
        common::cannot_check(
            "no PostgreSQL database forkwarden_test reachable with pg8000 \
             (scripts/ensure-postgres.sh sets it up; .ci/run runs it)",
        );
        return;
    }
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    // The stand-in opens a connection while loading, as Odoo reads its registry.
    let server = Server::start(&format!(
        "workers = 3\n[app]\n\
         command = [\"python3\", \"-m\", \"forkwarden_wsgi\", \"--preload\", \
         \"--post-fork\", \"standin_app:post_fork\", \"standin_app:app\"]\n\
         cwd = \"{REPO}/scripts\"\n\
         env = {{ STANDIN_DSN = \"{user}@/forkwarden_test\", STANDIN_MB = \"5\", \
         STANDIN_LOAD_S = \"0\", PYTHONPATH = \"{}\" }}\npreload = true\nnonblocking = true\n\
         ready_timeout = \"20s\"\n",
        python_runner_path()
    ));
    server.wait_for_log("loaded the application in");
    let loaded = server.get("/loaded").body;
    let template_backend: i32 = loaded.rsplit(' ').next().unwrap().parse().unwrap();
    // Each worker's own connection: one backend per worker, none of them the template's.
    // Three requests at once, each holding its worker for a while, reach the three workers
    // (one request after another would all go to the same idle worker).
    let mut backends = std::collections::BTreeMap::new();
    let all_seen = wait_until(SOON, || {
        let answers: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..3)
                .map(|_| scope.spawn(|| http_get(server.port, "/db?hold_ms=300").body))
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect()
        });
        for answer in answers {
            let (pid, backend) = answer.split_once(' ').expect("pid and backend");
            backends.insert(pid.to_string(), backend.to_string());
        }
        backends.len() == 3
    });
    assert!(all_seen, "{backends:?}; {}", server.log_text());
    let distinct: BTreeSet<&String> = backends.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "a connection shared by two workers: {backends:?}"
    );
    assert!(
        !distinct.contains(&template_backend.to_string()),
        "{backends:?}"
    );
    // The hook dropped the inherited socket without ending the template's session.
    let alive = std::process::Command::new("psql")
        .args(["-d", "forkwarden_test", "-tAc"])
        .arg(format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {template_backend}"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&alive.stdout).trim(), "1");
}

#[test]
fn a_template_that_never_loads_or_never_forks_is_killed_and_started_again() {
    let server = Server::spawn(
        "workers = 1\n[app]\ncommand = [\"sleep\", \"60\"]\npreload = true\nready_timeout = \"1s\"\n",
    );
    let line = server.wait_for_log("killed: did not report READY=1 within ready_timeout (1s)");
    assert!(line.contains("app template (pid "), "{line}");
    server.wait_for_log("failed to load the application: killed by SIGKILL");
    assert!(wait_until(SOON, || server
        .log_matching("app template started as pid ")
        .len()
        >= 2));
    // Ready, but deaf to fork requests: each one times out and the template is replaced.
    let deaf = "import os, socket, time; \
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); \
                s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET']); time.sleep(60)";
    let server = Server::spawn(&format!(
        "workers = 1\n[app]\ncommand = [\"python3\", \"-c\", \"{deaf}\"]\npreload = true\n\
         ready_timeout = \"1s\"\n"
    ));
    let line = server.wait_for_log("killed: no worker said FORKWARDEN_FORK within ready_timeout");
    assert!(
        line.contains("after it was asked for http worker 0"),
        "{line}"
    );
    server.wait_for_log("died after");
}

#[test]
fn a_cron_job_can_call_a_function_of_the_preloaded_application() {
    let code = code("1");
    let server = Server::start(&preload_config(
        code.path(),
        "workers = 1\nmax_cron_threads = 1",
        "[[cron]]\nname = \"ticker\"\ninterval = \"1s\"\ncall = \"preload_app:tick\"\n\
         env = { TICK_ENV = \"given\" }\n\
         [[cron]]\nname = \"failing\"\ninterval = \"1h\"\ncall = \"preload_app:fail\"\n\
         [[cron]]\nname = \"hanging\"\ninterval = \"1h\"\ncall = \"preload_app:hang\"\n\
         timeout = \"1s\"\n",
    ));
    server.wait_for_log("loaded the application in");
    let template = template_of(&server);
    let line = server.wait_for_log("cron job ticker: tick in ");
    let job_pid = pid_after(&line, "tick in ");
    assert!(
        line.contains(&format!(
            "parent {template} loaded_by {template} post_fork {job_pid} job ticker env given \
             nice 10"
        )),
        "forked from the template, post-fork hook run, environment given, at the cron \
         worker's niceness: {line}"
    );
    // It runs again, each time in a new process.
    let second = server.wait_for_log_count("cron job ticker: tick in ", 2)[1].clone();
    assert_ne!(pid_after(&second, "tick in "), job_pid);
    server.wait_for_log("cron job failing [stderr]: RuntimeError: a job that fails");
    server.wait_for_log("cron job failing (pid ");
    let failed = server.wait_for_log("failed: exited with status 1");
    assert!(failed.contains("cron job failing"), "{failed}");
    let hung = server.wait_for_log("killed with its process group: timeout exceeded");
    assert!(hung.contains("cron job hanging"), "{hung}");
}

#[test]
fn a_call_job_needs_a_preloaded_application_and_no_command() {
    let dir = tempfile::tempdir().unwrap();
    for (config, message) in [
        (
            "[[cron]]\nname = \"a\"\ninterval = \"1m\"\ncall = \"mymod:run\"\n",
            "call needs the application preloaded",
        ),
        (
            "[app]\ncommand = [\"true\"]\npreload = true\n\
             [[cron]]\nname = \"a\"\ninterval = \"1m\"\ncall = \"mymod:run\"\ncommand = [\"true\"]\n",
            "either command or call, not both",
        ),
        (
            "[app]\ncommand = [\"true\"]\npreload = true\n\
             [[cron]]\nname = \"a\"\ninterval = \"1m\"\ncall = \"mymod\"\n",
            "expected module:function",
        ),
    ] {
        let (status, stderr, _) = common::run_binary(dir.path(), config, &["check"]);
        assert_eq!(status.code(), Some(2), "{config}: {stderr}");
        assert!(
            stderr.contains("cron[0].call") && stderr.contains(message),
            "{config}: {stderr}"
        );
    }
}

#[test]
fn a_cron_worker_killed_during_a_call_job_takes_the_job_and_not_the_template() {
    let code = code("1");
    let server = Server::start(&preload_config(
        code.path(),
        "workers = 1\nmax_cron_threads = 1",
        "[[cron]]\nname = \"hanging\"\ninterval = \"1h\"\ncall = \"preload_app:hang\"\n",
    ));
    server.wait_for_log("loaded the application in");
    let template = template_of(&server);
    let line = server.wait_for_log("cron job hanging started as pid ");
    let job = pid_after(&line, "started as pid ");
    let cron_worker = pid_after(&line, "by cron worker 0 (pid ");
    kill(Pid::from_raw(cron_worker), Signal::SIGKILL).unwrap();
    // Killed by whichever comes first: the template, once the cron worker's connection
    // closed, or the master, which kills the job's process group as it reaps the worker.
    assert!(
        wait_until(SOON, || !is_alive(job)),
        "the job outlived its cron worker"
    );
    // The template reaps it and cannot tell the cron worker: it says so and carries on.
    server.wait_for_log(&format!(
        "[stderr]: forkwarden_wsgi: template: call job pid {job} ended (SIGNAL=9) after its \
         cron worker was gone"
    ));
    server.wait_for_workers("cron worker", 1);
    assert_eq!(server.get("/pid").status, 200);
    assert!(is_alive(template));
    assert!(
        server
            .log_matching("app template (pid")
            .iter()
            .all(|line| !line.contains("died"))
    );
}

#[test]
fn call_jobs_alone_get_a_template_without_any_port() {
    let code = code("1");
    let server = Server::spawn(&preload_config(
        code.path(),
        "workers = 0\nmax_cron_threads = 1",
        "[[cron]]\nname = \"ticker\"\ninterval = \"1h\"\ncall = \"preload_app:tick\"\n",
    ));
    server.wait_for_log("loaded the application in");
    let template = template_of(&server);
    let line = server.wait_for_log("cron job ticker: tick in ");
    assert!(line.contains(&format!("parent {template} ")), "{line}");
    assert!(
        server.log_matching("listening on").is_empty(),
        "{}",
        server.log_text()
    );
}

#[test]
fn a_storm_of_reloads_loads_one_template_at_a_time() {
    // Before: 50 SIGHUPs with preload left 33 templates loading the application at once (an
    // Odoo registry each: out of memory).
    let code = code("1");
    let server = preload_server(code.path(), "", 1);
    let live_templates = || {
        server
            .log_matching("app template started as pid ")
            .iter()
            .map(|line| pid_after(line, "started as pid "))
            .filter(|pid| is_alive(*pid))
            .count()
    };
    let mut most = 0;
    for _ in 0..15 {
        server.signal(Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(30));
        most = most.max(live_templates());
    }
    // The loaded one, the newest loading, one being killed.
    assert!(most <= 3, "{most} templates at once");
    server.wait_for_log("superseded by generation");
    assert!(
        wait_until(Duration::from_secs(20), || http_get(server.port, "/info")
            .body
            .contains("generation=16")),
        "{}",
        server.log_text()
    );
}

#[test]
fn what_the_application_forks_while_it_loads_is_reaped_by_the_template() {
    // Before: a helper the application forked while loading, and never waited for, stayed a
    // zombie under the template for its whole life.
    let code = code("1");
    let server = preload_server(code.path(), "", 1);
    let template = template_of(&server);
    let zombies = || {
        let tasks = std::fs::read_dir(format!("/proc/{template}/task")).unwrap();
        let mut found = Vec::new();
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap();
            for child in children.split_whitespace() {
                let stat =
                    std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
                if stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
                {
                    found.push(child.to_string());
                }
            }
        }
        found
    };
    assert!(wait_until(SOON, || zombies().is_empty()), "{:?}", zombies());
}
