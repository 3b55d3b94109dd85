//! An exec worker: the forked child becomes the `[app]` program, started the way systemd
//! starts a socket-activated service (descriptor 3, `LISTEN_FDS`, `NOTIFY_SOCKET`).

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;

use nix::unistd::{Pid, setpgid};

use forkwarden_worker::context::{EXIT_BOOT_FAILED, WorkerContext};

use super::ProgramSpec;
use crate::config::Config;
use crate::id::Role;
use crate::sys;

/// The descriptor a template finds its channel to the master on (`FORKWARDEN_CONTROL_FD`).
const TEMPLATE_CONTROL_FD: i32 = 4;
/// The descriptor a template accepts cron workers' `call` requests on (`FORKWARDEN_CALLS_FD`).
const TEMPLATE_CALLS_FD: i32 = 5;

/// Becomes the program; returns (an exit status) only if it could not be started. `name`
/// names this process in messages.
pub(super) fn run(
    context: &WorkerContext<'_>,
    config: &Config,
    spec: &ProgramSpec<'_>,
    name: &str,
) -> i32 {
    let (app, output) = (spec.app, &spec.output);
    let program = &app.command[0];
    let mut extra: Vec<std::os::fd::BorrowedFd<'_>> = spec
        .template
        .iter()
        .flat_map(|template| [template.control, template.calls])
        .collect();
    let kit_fd = sys::LISTEN_FD + 1 + extra.len() as i32;
    // Where the master's log goes, for the kit: standard error is about to become a pipe.
    let log = match spec
        .kit
        .as_ref()
        .map(|_| crate::log::duplicate_destination())
    {
        Some(Ok(log)) => Some(log),
        Some(Err(error)) => {
            eprintln!("forkwarden: {name}: cannot copy the log's descriptor: {error}");
            return EXIT_BOOT_FAILED;
        }
        None => None,
    };
    let kit = spec
        .kit
        .as_ref()
        .zip(log.as_ref())
        .and_then(|(kit, log)| kit.descriptors(log.as_fd()));
    extra.extend(kit.iter().flatten());
    // Its own process group, so that a kill reaches the program's children too; and the
    // reaper of whatever it starts, however that detaches itself, so that it all comes to
    // the master (and is killed) when the program ends. Not a template: the workers it
    // forks must come to the master, as its children.
    let prepared = setpgid(Pid::from_raw(0), Pid::from_raw(0))
        .map_err(|errno| format!("cannot make a process group: {errno}"))
        .and_then(|()| {
            if spec.template.is_some() {
                return Ok(());
            }
            nix::sys::prctl::set_child_subreaper(true)
                .map_err(|errno| format!("cannot become a child subreaper: {errno}"))
        })
        .and_then(|()| {
            config
                .worker_limits()
                .apply_at_start()
                .map_err(|errno| format!("cannot apply limit_memory_hard as RLIMIT_AS: {errno}"))
        })
        .and_then(|()| match &app.cwd {
            Some(cwd) => std::env::set_current_dir(cwd)
                .map_err(|error| format!("cannot enter cwd {}: {error}", cwd.display())),
            None => Ok(()),
        })
        .and_then(|()| {
            let strings = |parts: &[String]| -> Result<Vec<CString>, String> {
                parts
                    .iter()
                    .map(|part| CString::new(part.as_bytes()).map_err(|e| e.to_string()))
                    .collect()
            };
            let args = strings(&app.command)?;
            Ok((
                args,
                environment(context, config, spec, kit.is_some().then_some(kit_fd))?,
            ))
        });
    let (args, env) = match prepared {
        Ok(prepared) => prepared,
        Err(why) => {
            eprintln!("forkwarden: {name}: {why}");
            return EXIT_BOOT_FAILED;
        }
    };
    let error = sys::exec_socket_activated(
        &args[0],
        &args,
        &env,
        spec.listener.map(AsFd::as_fd),
        &extra,
        output.stdout,
        output.stderr,
    );
    // Standard error is the output pipe by now: the master logs this line.
    eprintln!("forkwarden: cannot run {program}: {error}");
    EXIT_BOOT_FAILED
}

/// The program's environment: forkwarden's own, the `[app]` additions, and the
/// socket-activation and notification variables.
fn environment(
    context: &WorkerContext<'_>,
    config: &Config,
    spec: &ProgramSpec<'_>,
    kit_fd: Option<i32>,
) -> Result<Vec<CString>, String> {
    let app = spec.app;
    let mut vars: BTreeMap<OsString, OsString> = std::env::vars_os()
        .filter(|(key, _)| crate::config::passed_to_children(key))
        .collect();
    vars.extend(super::account_variables(config));
    for (key, value) in &app.env {
        vars.insert(key.into(), value.into());
    }
    let pid = std::process::id().to_string();
    let own = [
        ("NOTIFY_SOCKET", spec.notify_path.as_os_str().to_owned()),
        (
            "FORKWARDEN_GENERATION",
            context.generation.to_string().into(),
        ),
    ];
    for (key, value) in own {
        vars.insert(key.into(), value);
    }
    if spec.listener.is_some() {
        let name = match context.id.role {
            Role::Program(name) => name,
            _ => "http",
        };
        vars.insert("LISTEN_FDS".into(), "1".into());
        vars.insert("LISTEN_PID".into(), pid.clone().into());
        vars.insert("LISTEN_FDNAMES".into(), name.into());
    }
    if let Some(kit_fd) = kit_fd {
        vars.insert("FORKWARDEN_KIT_FD".into(), kit_fd.to_string().into());
        vars.insert(
            "FORKWARDEN_KIT_VERSION".into(),
            crate::scoreboard::KIT_VERSION.to_string().into(),
        );
        vars.insert(
            "FORKWARDEN_MASTER_PID".into(),
            context.master_pid.to_string().into(),
        );
    }
    // A worker knows its slot; a template learns each worker's in the fork request.
    if spec.template.is_some() {
        vars.insert(
            "FORKWARDEN_CONTROL_FD".into(),
            TEMPLATE_CONTROL_FD.to_string().into(),
        );
        vars.insert(
            "FORKWARDEN_CALLS_FD".into(),
            TEMPLATE_CALLS_FD.to_string().into(),
        );
    } else {
        vars.insert("FORKWARDEN_SLOT".into(), context.id.slot.to_string().into());
    }
    // systemd's watchdog convention: a program that supports it sends WATCHDOG=1 at least
    // every half period; the master holds it to the period once it does.
    if let Some(period) = spec.watchdog {
        vars.insert(
            "WATCHDOG_USEC".into(),
            period.as_micros().to_string().into(),
        );
        vars.insert("WATCHDOG_PID".into(), pid.into());
    }
    vars.into_iter()
        .map(|(key, value)| {
            let mut entry = key.into_vec();
            entry.push(b'=');
            entry.extend(value.into_vec());
            CString::new(entry).map_err(|error| format!("bad environment variable: {error}"))
        })
        .collect()
}
