//! The pid file: written once the socket is bound, removed when the master exits.

use std::fs;
use std::io;
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
    pid: u32,
}

impl Pidfile {
    /// Writes this process's pid to `path` (atomically: temp file, then rename). Refuses when
    /// the file names another live process.
    pub fn create(path: &Path) -> Result<Self, PidfileError> {
        let pid = std::process::id();
        if let Some(other) = read_pid(path)
            && other != pid
            // EPERM also means the process exists (it belongs to someone else).
            && kill(Pid::from_raw(other as i32), None) != Err(Errno::ESRCH)
        {
            return Err(PidfileError::AlreadyRunning {
                path: path.to_path_buf(),
                pid: other as i32,
            });
        }
        let temporary = path.with_extension(format!("tmp.{pid}"));
        let written =
            fs::write(&temporary, format!("{pid}\n")).and_then(|()| fs::rename(&temporary, path));
        if let Err(source) = written {
            let _ = fs::remove_file(&temporary);
            return Err(PidfileError::Write {
                path: path.to_path_buf(),
                source,
            });
        }
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

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_removed_and_a_live_owner_is_respected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fw.pid");
        let pidfile = Pidfile::create(&path).unwrap();
        assert_eq!(read_pid(&path), Some(std::process::id()));
        drop(pidfile);
        assert!(!path.exists());

        // pid 1 is always alive.
        fs::write(&path, "1\n").unwrap();
        assert!(matches!(
            Pidfile::create(&path),
            Err(PidfileError::AlreadyRunning { pid: 1, .. })
        ));
    }
}
