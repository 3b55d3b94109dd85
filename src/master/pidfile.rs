//! The pid file: written once the socket is bound, removed when the master exits.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum PidfileError {
    #[error("pidfile {} names pid {pid}, which is still running: is forkwarden already running?", path.display())]
    AlreadyRunning { path: PathBuf, pid: i32 },
    #[error("cannot write pidfile {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// A written pid file; dropping it removes the file if it still holds our pid.
pub struct Pidfile {
    path: PathBuf,
    pid: i32,
}

impl Pidfile {
    /// Writes this process's pid to `path`, atomically and safely in a directory others can
    /// write to: a temporary file with an unpredictable name, created exclusively (nothing
    /// planted there is written through), renamed over `path` (a symbolic link there is
    /// replaced, not followed). Refuses when the file names another live process; a file
    /// naming no valid pid (0, negative, garbage) is simply replaced.
    pub fn create(path: &Path) -> Result<Self, PidfileError> {
        let pid = nix::unistd::getpid().as_raw();
        if let Some(other) = read_pid(path)
            && other != pid
            // EPERM also means the process exists (it belongs to someone else).
            && kill(Pid::from_raw(other), None) != Err(Errno::ESRCH)
        {
            return Err(PidfileError::AlreadyRunning {
                path: path.to_path_buf(),
                pid: other,
            });
        }
        let error = |source| PidfileError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
        let mut file = tempfile::Builder::new()
            .prefix(".forkwarden-pid.")
            .permissions(fs::Permissions::from_mode(0o644))
            .tempfile_in(dir.unwrap_or(Path::new(".")))
            .map_err(error)?;
        file.write_all(format!("{pid}\n").as_bytes())
            .map_err(error)?;
        file.persist(path).map_err(|persist| error(persist.error))?;
        Ok(Self {
            path: path.to_path_buf(),
            pid,
        })
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        if read_pid(&self.path) == Some(self.pid) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The pid a pid file names: a number from 1 up (0 and negative numbers would name process
/// groups to `kill`, and are no pid).
fn read_pid(path: &Path) -> Option<i32> {
    // Its directory may be one others write to: nothing planted there (a FIFO, a link, a
    // huge file) may hold the master up.
    let text = crate::sys::read_small_file(path, 64).ok()?;
    String::from_utf8_lossy(&text)
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_removed_and_a_live_owner_is_respected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fw.pid");
        let pidfile = Pidfile::create(&path).unwrap();
        assert_eq!(read_pid(&path), Some(std::process::id() as i32));
        drop(pidfile);
        assert!(!path.exists());

        // pid 1 is always alive.
        fs::write(&path, "1\n").unwrap();
        assert!(matches!(
            Pidfile::create(&path),
            Err(PidfileError::AlreadyRunning { pid: 1, .. })
        ));
    }

    #[test]
    fn a_pid_file_naming_no_pid_does_not_refuse_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fw.pid");
        for garbage in ["0\n", "-1\n", "-4242\n", "4294967295\n", "hello\n", ""] {
            fs::write(&path, garbage).unwrap();
            let pidfile = Pidfile::create(&path).unwrap_or_else(|e| panic!("{garbage:?}: {e}"));
            drop(pidfile);
        }
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("fw.pid");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let pidfile = Pidfile::create(&path).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!fs::symlink_metadata(&path).unwrap().is_symlink());
        drop(pidfile);
    }
}
