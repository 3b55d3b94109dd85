//! The trust boundary (docs/trust-boundary.md): nothing a worker, a program or anything
//! running as `user` can write, send or create makes the root master act against the host.
//! Each test is an attack that worked before the master stopped trusting it, run as the
//! attacker would (as `nobody` where the attack needs it).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::{BINARY, SOON, Server, wait_until};
use nix::sys::signal::Signal;

/// The unprivileged account the attacks run as (Debian's `nobody`, group `nogroup`).
const NOBODY: u32 = 65534;

/// A directory `nobody` can reach (the test's own temporary directories are 0700).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A directory that belongs to `nobody`, as /var/log/odoo belongs to odoo.
fn nobodys_dir(parent: &Path, name: &str) -> std::path::PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}

/// Whether the process the test started is still running (not reaped, not killed).
fn still_running(child: &mut std::process::Child) -> bool {
    child.try_wait().expect("try_wait").is_none()
}

/// Runs the binary's `forkwarden ARGS --config PATH`, bounded by [`SOON`] (the master may
/// be the one stuck): (success, stdout, stderr).
fn command(config: &Path, args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(BINARY)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run forkwarden");
    let mut finished = false;
    wait_until(SOON, || {
        finished = child.try_wait().ok().flatten().is_some();
        finished
    });
    if !finished {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("output");
    (
        finished && output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_program_cannot_make_the_master_kill_by_writing_its_row() {
    // Before: the master killpg'd the "job process group" of word 7 of any worker's row when
    // it died; every [app] program maps its own row read-write.
    let dir = open_dir();
    let mut victim = Command::new("sleep")
        .arg("60")
        .process_group(0)
        .spawn()
        .expect("a root process in its own group");
    let script = dir.path().join("hostile.py");
    std::fs::write(
        &script,
        "import mmap, os, sys\n\
         row = mmap.mmap(int(os.environ['FORKWARDEN_KIT_FD']) + 7, 0)\n\
         words = {7: int(sys.argv[1]), 8: 2**64 - 1, 27: 2**64 - 1, 28: 2**64 - 1}\n\
         for word, value in words.items():\n\
         \x20   row[word * 8:word * 8 + 8] = value.to_bytes(8, 'little')\n\
         print('row written', flush=True)\n",
    )
    .unwrap();
    let server = Server::start(&format!(
        "workers = 1\nuser = \"nobody\"\n[app]\ncommand = [\"/usr/bin/python3\", \"{}\", \"{}\"]\n\
         ready_timeout = 0\n",
        script.display(),
        victim.id()
    ));
    // Written, and ended twice: the first end has been handled when the second start is.
    server.wait_for_log_count("row written", 2);
    assert!(still_running(&mut victim), "{}", server.log_text());
    assert!(
        server.log_matching("process group").is_empty(),
        "{}",
        server.log_text()
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
}

#[test]
fn nothing_planted_in_data_dir_or_at_the_pidfile_holds_the_master() {
    // Before: the master opened data_dir/cron/NAME.state.toml (data_dir is the workers'
    // user's) for each status: a FIFO there froze it for good.
    let dir = open_dir();
    let data_dir = dir.path().join("data");
    let pidfile = dir.path().join("forkwarden.pid");
    nix::unistd::mkfifo(&pidfile, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let mut server = Server::spawn(&format!(
        "workers = 1\nmax_cron_threads = 1\nuser = \"nobody\"\ndata_dir = \"{}\"\n\
         pidfile = \"{}\"\n\
         [[cron]]\nname = \"tick\"\ninterval = \"1h\"\ncommand = [\"true\"]\n",
        data_dir.display(),
        pidfile.display()
    ));
    server.wait_for_log("cron job tick (pid");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        server.pid().to_string()
    );
    assert_eq!(std::fs::metadata(&data_dir).unwrap().uid(), NOBODY);
    let state = data_dir.join("cron/tick.state.toml");
    assert!(wait_until(SOON, || state.exists()));
    std::fs::remove_file(&state).unwrap();
    nix::unistd::mkfifo(&state, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    let (answered, status, stderr) = command(&server.config_path, &["status", "--json"]);
    assert!(answered, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["cron_jobs"][0]["succeeded"], 1, "{status}");
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(SOON).is_some_and(|exit| exit.success()));
}

#[test]
fn the_log_is_opened_as_the_workers_user_and_a_planted_link_gives_nothing_away() {
    // Before: on start and on every SIGUSR1 the master opened the log following links and
    // gave it to `user`: a link swapped in where the log was gave root's file away.
    let dir = open_dir();
    let logs = nobodys_dir(dir.path(), "logs");
    let log = logs.join("forkwarden.log");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "precious\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut server = Server::spawn(&format!(
        "workers = 1\nuser = \"nobody\"\nlogfile = \"{}\"\n",
        log.display()
    ));
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    assert!(wait_until(SOON, || read(&log).contains("listening on")));
    assert_eq!(
        std::fs::metadata(&log).unwrap().uid(),
        NOBODY,
        "made as nobody"
    );
    // What the workers' user can do: rotate the log away and leave a link in its place.
    let rotated = logs.join("forkwarden.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    std::os::unix::fs::symlink(&secret, &log).unwrap();
    server.signal(Signal::SIGUSR1);
    assert!(
        wait_until(SOON, || read(&rotated).contains("SIGUSR1")),
        "{}",
        read(&rotated)
    );
    assert!(
        read(&rotated).contains("as user nobody"),
        "{}",
        read(&rotated)
    );
    let kept = std::fs::metadata(&secret).unwrap();
    assert_eq!((kept.uid(), kept.mode() & 0o777), (0, 0o600));
    assert_eq!(read(&secret), "precious\n");
    // The link gone, the next reopen makes a new log of nobody's.
    std::fs::remove_file(&log).unwrap();
    server.signal(Signal::SIGUSR1);
    assert!(wait_until(SOON, || read(&log).contains("log file reopened")));
    assert_eq!(std::fs::metadata(&log).unwrap().uid(), NOBODY);
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(SOON).is_some_and(|exit| exit.success()));
}

#[test]
fn the_masters_directory_lets_workers_reach_its_sockets_and_nothing_more() {
    // Before: the private directory was the workers' user's, and the master chowned the
    // `call` socket in it by path.
    let dir = open_dir();
    let data_dir = dir.path().join("data");
    let server = Server::start(&format!(
        "workers = 1\nuser = \"nobody\"\ndata_dir = \"{}\"\n[app]\n\
         command = [\"sh\", \"-c\", \"exec sleep 60\"]\nready_timeout = 0\n",
        data_dir.display()
    ));
    let line = server.wait_for_log("NOTIFY_SOCKET=");
    let notify = line
        .split("NOTIFY_SOCKET=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("the socket's path");
    let notify = Path::new(notify);
    let private = notify.parent().unwrap();
    let meta = std::fs::metadata(private).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, NOBODY, 0o710)
    );
    assert_eq!(std::fs::metadata(notify).unwrap().uid(), NOBODY);
    let planted = Command::new("touch")
        .arg(private.join("planted"))
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap();
    assert!(!planted.success(), "nobody may not create anything there");
    // The control socket: root's, 0600, in the data_dir (root's: no cron jobs).
    let control = std::fs::metadata(data_dir.join("forkwarden.sock")).unwrap();
    assert_eq!((control.uid(), control.mode() & 0o777), (0, 0o600));
}

#[test]
fn fork_answers_come_only_from_the_templates_own_workers() {
    // Before: the fork requests were numbered 0, 1, 2...; any process that reached the
    // notification socket could answer one and be taken on as a worker.
    let dir = open_dir();
    let requests = dir.path().join("requests");
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/silent_template.py");
    let server = Server::start(&format!(
        "workers = 1\nready_timeout = \"30s\"\n[app]\n\
         command = [\"python3\", \"{template}\", \"{}\"]\npreload = true\n",
        requests.display()
    ));
    let read = || std::fs::read_to_string(&requests).unwrap_or_default();
    assert!(wait_until(SOON, || read().contains("FORKWARDEN_FORK=")));
    let token = read()
        .split("FORKWARDEN_FORK=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a token")
        .to_string();
    assert!(
        token.len() == 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );
    let line = server.wait_for_log("NOTIFY_SOCKET=");
    let notify = line
        .split("NOTIFY_SOCKET=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("the socket's path")
        .to_string();
    let impostor = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let me = std::process::id();
    impostor.send_to(b"FORKWARDEN_FORK=0", &notify).unwrap();
    server.wait_for_log(&format!(
        "pid {me} says it answers a fork request that is not waiting; ignored"
    ));
    // Even with the token (a leak), a process that is not the template's is refused.
    impostor
        .send_to(format!("FORKWARDEN_FORK={token}").as_bytes(), &notify)
        .unwrap();
    let refused = server.wait_for_log(&format!("pid {me} answers fork request 0 but"));
    assert!(
        refused.contains("is not a process the app template"),
        "{refused}"
    );
    let (answered, status, stderr) = command(&server.config_path, &["status", "--json"]);
    assert!(answered, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["http_workers"]["running"], 0, "{status}");
}

#[test]
fn the_cron_stores_password_stays_with_the_master() {
    // Before: PGPASSWORD and PGPASSFILE, given to forkwarden for cron_store, reached every
    // program and job, where libpq took them for the application's own database.
    let dir = open_dir();
    let show = "echo \"seen PGPASSWORD=${PGPASSWORD-unset} PGPASSFILE=${PGPASSFILE-unset}\"";
    let server = Server::spawn_with_env(
        &format!(
            "workers = 1\nmax_cron_threads = 1\ndata_dir = \"{}\"\n\
             [app]\ncommand = [\"sh\", \"-c\", \"{}; exec sleep 60\"]\nready_timeout = 0\n\
             [[program]]\nname = \"own\"\ncommand = [\"sh\", \"-c\", \"{}; exec sleep 60\"]\n\
             ready_timeout = 0\nenv = {{ PGPASSFILE = \"/srv/own.pgpass\" }}\n\
             [[cron]]\nname = \"job\"\ninterval = \"1h\"\ncommand = [\"sh\", \"-c\", \"{}\"]\n",
            dir.path().join("data").display(),
            show.replace('"', "\\\""),
            show.replace('"', "\\\""),
            show.replace('"', "\\\"")
        ),
        &[
            ("PGPASSWORD", "s3cret".to_string()),
            ("PGPASSFILE", "/root/.pgpass".to_string()),
        ],
    );
    let lines = server.wait_for_log_count(": seen PGPASSWORD=", 3);
    let by = |who: &str| {
        lines
            .iter()
            .find(|line| line.contains(who))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        by("http worker").contains("seen PGPASSWORD=unset PGPASSFILE=unset"),
        "{lines:?}"
    );
    assert!(
        by("cron job").contains("seen PGPASSWORD=unset PGPASSFILE=unset"),
        "{lines:?}"
    );
    // What a program's own `env` sets, it gets.
    assert!(
        by("own program").contains("seen PGPASSWORD=unset PGPASSFILE=/srv/own.pgpass"),
        "{lines:?}"
    );
    assert!(!server.log_text().contains("s3cret"));
}

#[test]
fn status_shows_what_programs_say_without_obeying_it() {
    // Before: `forkwarden status` printed a program's STATUS= and REQUEST= as they came,
    // terminal escapes included.
    let dir = open_dir();
    let script = dir.path().join("loud.py");
    std::fs::write(
        &script,
        "import os, socket, time\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.sendto(b'READY=1\\nSTATUS=\\x1b]0;owned\\x07\\xc2\\x9b2J', os.environ['NOTIFY_SOCKET'])\n\
         s.sendto(b'BUSY=1\\nREQUEST=GET /\\x1b[2J\\x1b[H', os.environ['NOTIFY_SOCKET'])\n\
         time.sleep(60)\n",
    )
    .unwrap();
    let server = Server::start(&format!(
        "workers = 1\n[app]\ncommand = [\"/usr/bin/python3\", \"{}\"]\n",
        script.display()
    ));
    server.wait_until_busy_with("GET /");
    for args in [&["status"][..], &["status", "--json"][..]] {
        let (answered, text, stderr) = command(&server.config_path, args);
        assert!(answered, "{stderr}");
        assert!(
            !text.contains('\x1b') && !text.contains('\u{9b}'),
            "{args:?}: {text:?}"
        );
        assert!(text.contains("GET /"), "{args:?}: {text}");
    }
    let (_, text, _) = command(&server.config_path, &["status"]);
    assert!(text.contains("GET /\\x1b[2J\\x1b[H"), "{text}");
}

#[test]
fn the_cron_commands_work_in_data_dir_as_the_workers_user() {
    // Before: `forkwarden cron run`, run by root, opened a file in the workers' data_dir by
    // path as root: a FIFO planted there held it for good, a hard link to a file of root's
    // was truncated.
    let dir = open_dir();
    let data_dir = dir.path().join("data");
    let mut server = Server::spawn(&format!(
        "workers = 1\nmax_cron_threads = 1\nuser = \"nobody\"\ndata_dir = \"{}\"\n\
         [[cron]]\nname = \"tick\"\ninterval = \"1h\"\ncommand = [\"true\"]\n",
        data_dir.display()
    ));
    server.wait_for_log("cron job tick (pid");
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(SOON).is_some_and(|exit| exit.success()));
    let asked = data_dir.join("cron/tick.run-asked");
    nix::unistd::mkfifo(&asked, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::os::unix::fs::chown(&asked, Some(NOBODY), Some(NOBODY)).unwrap();
    let (_, _, stderr) = command(&server.config_path, &["cron", "run", "tick"]);
    assert!(
        !stderr.is_empty(),
        "it answered (the FIFO refused), not waited"
    );
    std::fs::remove_file(&asked).unwrap();
    // A link to root's file: opened as nobody, who may not write it.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "precious\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::hard_link(&secret, &asked).unwrap();
    let (asked_ok, _, _) = command(&server.config_path, &["cron", "run", "tick"]);
    assert!(!asked_ok);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "precious\n");
    std::fs::remove_file(&asked).unwrap();
    // And as it should: asked, as nobody.
    let (asked_ok, stdout, stderr) = command(&server.config_path, &["cron", "run", "tick"]);
    assert!(asked_ok, "{stdout}{stderr}");
    assert_eq!(std::fs::metadata(&asked).unwrap().uid(), NOBODY);
    let (listed, list, stderr) = command(&server.config_path, &["cron", "list"]);
    assert!(listed, "{stderr}");
    assert!(list.contains("tick"), "{list}");
}
