//! What a config needs from the machine, checked before anything is bound or forked, so that
//! `forkwarden check` saying "valid" means the server will start: the programs exist and can
//! be run, what the server writes is writable, the workers' user can be switched to.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use nix::unistd::AccessFlags;

use super::Config;

impl Config {
    /// Checks the machine against this config; on failure, the key to blame and why.
    pub(super) fn check_environment(&self) -> Result<(), (String, String)> {
        if let Some(run_as) = &self.run_as {
            let me = nix::unistd::geteuid();
            if !me.is_root() && me != run_as.uid {
                return Err((
                    "user".into(),
                    format!(
                        "forkwarden runs as uid {me} and can switch its workers to user {:?} \
                         (uid {}) only when started as root",
                        run_as.user, run_as.uid
                    ),
                ));
            }
        }
        match self.data_dir_owner() {
            Some(workers) => crate::data_dir::check(&self.data_dir, &workers)
                .map_err(|why| ("data_dir".to_string(), why))?,
            None if !self.cron.is_empty() => writable_dir("data_dir", &self.data_dir)?,
            None => {}
        }
        if let Some(pidfile) = &self.pidfile {
            writable_file("pidfile", pidfile)?;
        }
        if let Some(logfile) = &self.logfile {
            // The master opens it as the workers' user when it runs as root (see log.rs).
            match self.run_as.as_ref().and_then(super::RunAs::fs_identity) {
                Some(workers) => {
                    crate::sys::as_user(&workers, || writable_file("logfile", logfile))
                        .map_err(|error| ("logfile".to_string(), error.to_string()))?
                        .map_err(|(key, why)| {
                            let user = self
                                .run_as
                                .as_ref()
                                .map_or("", |run_as| run_as.user.as_str());
                            (
                                key,
                                format!("{why} (as user {user}, who reopens it after a rotation)"),
                            )
                        })?
                }
                None => writable_file("logfile", logfile)?,
            }
        }
        if let Some(app) = &self.app {
            let path = app.env.get("PATH").map(OsStr::new);
            directory("app.cwd", app.cwd.as_deref())?;
            program("app.command", &app.command[0], app.cwd.as_deref(), path)?;
        }
        for (index, companion) in self.program.iter().enumerate() {
            let path = companion.env.get("PATH").map(OsStr::new);
            directory(&format!("program[{index}].cwd"), companion.cwd.as_deref())?;
            program(
                &format!("program[{index}].command"),
                &companion.command[0],
                companion.cwd.as_deref(),
                path,
            )?;
        }
        for (index, job) in self.cron.iter().enumerate() {
            let Some(first) = job.command.first() else {
                continue; // a `call` job: it runs in the preloaded application
            };
            let path = job.env.get("PATH").map(OsStr::new);
            directory(&format!("cron[{index}].cwd"), job.cwd.as_deref())?;
            program(
                &format!("cron[{index}].command"),
                first,
                job.cwd.as_deref(),
                path,
            )?;
        }
        Ok(())
    }
}

/// Whether this process may do `mode` to `path`, with its effective (and file-system)
/// identity: what an open would be checked against, not what the real user id may do.
fn access(path: &Path, mode: AccessFlags) -> nix::Result<()> {
    nix::unistd::faccessat(
        nix::fcntl::AT_FDCWD,
        path,
        mode,
        nix::fcntl::AtFlags::AT_EACCESS,
    )
}

/// `dir` can be created (its nearest existing ancestor is writable) or is a writable dir.
fn writable_dir(key: &str, dir: &Path) -> Result<(), (String, String)> {
    let existing = dir.ancestors().find(|path| path.exists()).unwrap_or(dir);
    if !existing.is_dir() {
        return Err((
            key.into(),
            format!("{} is not a directory", existing.display()),
        ));
    }
    access(existing, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|errno| {
        (
            key.into(),
            format!("{} is not writable: {errno}", existing.display()),
        )
    })
}

/// `file` can be written: it is a writable file, or can be created in its directory.
fn writable_file(key: &str, file: &Path) -> Result<(), (String, String)> {
    if file.exists() {
        if file.is_dir() {
            return Err((key.into(), format!("{} is a directory", file.display())));
        }
        return access(file, AccessFlags::W_OK).map_err(|errno| {
            (
                key.into(),
                format!("{} is not writable: {errno}", file.display()),
            )
        });
    }
    let parent = file.parent().unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err((
            key.into(),
            format!(
                "cannot create {}: its directory does not exist",
                file.display()
            ),
        ));
    }
    access(parent, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|errno| {
        (
            key.into(),
            format!(
                "cannot create {}: its directory is not writable: {errno}",
                file.display()
            ),
        )
    })
}

fn directory(key: &str, dir: Option<&Path>) -> Result<(), (String, String)> {
    match dir {
        Some(dir) if !dir.is_dir() => {
            Err((key.into(), format!("{} is not a directory", dir.display())))
        }
        _ => Ok(()),
    }
}

/// `program` as exec would find it: a path (relative to `cwd`) when it has a slash, else
/// the first match in `path` (the program's `PATH`, default this process's).
fn program(
    key: &str,
    program: &str,
    cwd: Option<&Path>,
    path: Option<&OsStr>,
) -> Result<(), (String, String)> {
    let found = find_program(program, cwd, path).ok_or_else(|| {
        let searched = path
            .map(OsStr::to_os_string)
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        let message = if program.contains('/') {
            format!("program {program:?} does not exist")
        } else {
            format!(
                "program {program:?} was not found in PATH ({})",
                searched.to_string_lossy()
            )
        };
        (key.to_string(), message)
    })?;
    if found.is_dir() {
        return Err((
            key.into(),
            format!("{} is a directory, not a program", found.display()),
        ));
    }
    access(&found, AccessFlags::X_OK).map_err(|errno| {
        (
            key.into(),
            format!("program {} cannot be run: {errno}", found.display()),
        )
    })
}

fn find_program(program: &str, cwd: Option<&Path>, path: Option<&OsStr>) -> Option<PathBuf> {
    if program.contains('/') {
        let candidate = match cwd {
            Some(cwd) => cwd.join(program),
            None => PathBuf::from(program),
        };
        return candidate.exists().then_some(candidate);
    }
    let path = path
        .map(OsStr::to_os_string)
        .or_else(|| std::env::var_os("PATH"))?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_path_or_by_their_path() {
        assert!(program("app.command", "sh", None, None).is_ok());
        let (key, message) = program("app.command", "no-such-program-fw", None, None).unwrap_err();
        assert_eq!(key, "app.command");
        assert!(message.contains("was not found in PATH"), "{message}");
        let (_, message) =
            program("app.command", "./nope", Some(Path::new("/")), None).unwrap_err();
        assert!(message.contains("does not exist"), "{message}");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.txt");
        std::fs::write(&data, "not a program").unwrap();
        let (_, message) = program("app.command", data.to_str().unwrap(), None, None).unwrap_err();
        assert!(message.contains("cannot be run"), "{message}");
    }

    #[test]
    fn unwritable_places_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(writable_dir("data_dir", &dir.path().join("a/b")).is_ok());
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let (key, _) = writable_dir("data_dir", &file.join("x")).unwrap_err();
        assert_eq!(key, "data_dir");
        let (_, message) = writable_file("pidfile", &dir.path().join("none/x.pid")).unwrap_err();
        assert!(message.contains("does not exist"), "{message}");
    }
}
