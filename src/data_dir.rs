//! data_dir: the master's control socket, and the cron workers' job files (state, locks,
//! history) when the server has cron jobs.
//!
//! With cron jobs and `user`, data_dir belongs to the workers' user, who writes the job files
//! there: for the root master it is a place a worker can write. So the master does nothing
//! there by path with root's privilege. It creates data_dir as that user (or, when only root
//! may create it, in a parent that no other user can write, whose path it has checked has no
//! symbolic link a user could have planted), opens it once without following a link, and
//! from then on acts on the open directory alone: ownership and mode are set on the
//! descriptor, the control socket is bound through it (`/proc/self/fd/N/forkwarden.sock`).
//! Files an older root-run version left inside are given to the user only if they are plain
//! files with no other name (a hard link to a file of root's is left alone).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use tracing::warn;

use crate::sys::{self, FsIdentity};

/// Mode of data_dir: the server's alone.
const PRIVATE_DIR: u32 = 0o700;

/// data_dir, open.
pub struct DataDir {
    path: PathBuf,
    dir: OwnedFd,
}

impl DataDir {
    /// Opens data_dir at `path`, made if missing (mode 0700), and given to the workers' user
    /// `workers` when they write the cron jobs' files there (see the module doc).
    pub fn open(path: &Path, workers: Option<&FsIdentity>) -> io::Result<Self> {
        let dir = match workers {
            // This process's own (root's, with no cron jobs; or the user's, run as it).
            None => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(PRIVATE_DIR)
                    .create(path)?;
                open_directory(path)?
            }
            Some(identity) => {
                let dir = for_workers(path, identity)?;
                migrate_cron_files(&dir, identity);
                dir
            }
        };
        narrow(&dir, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            dir,
        })
    }

    /// The path by which `name` in data_dir is reached through the open directory, whatever
    /// happened to data_dir's path since (for a socket, which is bound by path).
    pub fn entry(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn descriptor(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

/// Whether data_dir at `path` can be made ready for the workers' user `workers` (for
/// `forkwarden check`): why not, otherwise.
pub fn check(path: &Path, workers: &FsIdentity) -> Result<(), String> {
    let usable_as_user = sys::as_user(workers, || {
        let existing = path.ancestors().find(|dir| dir.exists()).unwrap_or(path);
        nix::unistd::faccessat(
            nix::fcntl::AT_FDCWD,
            existing,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            AtFlags::AT_EACCESS,
        )
        .is_ok()
    })
    .unwrap_or(false);
    if usable_as_user || trusted_parent(path).is_ok() {
        return Ok(());
    }
    Err(refusal(
        path,
        workers,
        "that user cannot create or write it",
    ))
}

/// data_dir for the workers' user `identity`: made and opened as that user if it can; else
/// made by root in a trusted parent and given to it. Refused when it belongs to another.
fn for_workers(path: &Path, identity: &FsIdentity) -> io::Result<OwnedFd> {
    let as_user = sys::as_user(identity, || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(path)
            .and_then(|()| open_directory(path))
    })?;
    let dir = match as_user {
        Ok(dir) => dir,
        Err(error) if error.raw_os_error() == Some(libc::EACCES) => {
            let parent = trusted_parent(path).map_err(|why| {
                io::Error::other(refusal(path, identity, &format!("{error}; {why}")))
            })?;
            let name = path.file_name().unwrap_or(path.as_os_str());
            match nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(PRIVATE_DIR)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(errno) => return Err(errno.into()),
            }
            nix::fcntl::openat(&parent, name, directory_flags(), Mode::empty())?
        }
        Err(error) => return Err(error),
    };
    let owner = nix::sys::stat::fstat(&dir)?.st_uid;
    if owner != identity.uid.as_raw() {
        // One made by root (systemd's StateDirectory=, an older version) in a parent no
        // user can write: nobody else could have put it there.
        if owner != 0 || trusted_parent(path).is_err() {
            return Err(io::Error::other(refusal(
                path,
                identity,
                &format!("it belongs to uid {owner}"),
            )));
        }
        nix::unistd::fchown(&dir, Some(identity.uid), Some(identity.gid))?;
    }
    Ok(dir)
}

fn refusal(path: &Path, identity: &FsIdentity, why: &str) -> String {
    format!(
        "data_dir {} must belong to the workers' user (uid {}), who writes the cron jobs' \
         files there, and the master does nothing there as root: {why}; create it for them \
         (install -d -o {} -g {} -m 700 {})",
        path.display(),
        identity.uid,
        identity.uid,
        identity.gid,
        path.display()
    )
}

/// The parent of `path`, open, if only root can have put anything in it: owned by root,
/// writable by no one else, and reached by exactly the path the config names (no symbolic
/// link on the way, which a user could have planted in a directory of theirs).
fn trusted_parent(path: &Path) -> Result<OwnedFd, String> {
    let absolute = std::path::absolute(path).map_err(|error| error.to_string())?;
    let parent = absolute
        .parent()
        .ok_or_else(|| "it has no parent directory".to_string())?;
    let dir = open_directory(parent).map_err(|error| format!("{}: {error}", parent.display()))?;
    let stat = nix::sys::stat::fstat(&dir).map_err(|errno| errno.to_string())?;
    if stat.st_uid != 0 || stat.st_mode & 0o022 != 0 {
        return Err(format!(
            "its parent {} is not root's alone (uid {}, mode {:o})",
            parent.display(),
            stat.st_uid,
            stat.st_mode & 0o777
        ));
    }
    let reached = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|error| error.to_string())?;
    if reached != parent {
        return Err(format!(
            "its parent {} is reached through a symbolic link (it is {})",
            parent.display(),
            reached.display()
        ));
    }
    Ok(dir)
}

/// `cron/` and the files in it that root owns (left by a version that ran the cron workers
/// as root) are given to the workers' user; each through a descriptor, and a file only if
/// it is a regular file with no other name.
fn migrate_cron_files(data_dir: &OwnedFd, identity: &FsIdentity) {
    let Ok(cron) = nix::fcntl::openat(data_dir, "cron", directory_flags(), Mode::empty()) else {
        return;
    };
    let give = |file: BorrowedFd<'_>, stat: &FileStat| {
        if stat.st_uid != 0 {
            return;
        }
        let given = nix::unistd::fchownat(
            file,
            "",
            Some(identity.uid),
            Some(identity.gid),
            AtFlags::AT_EMPTY_PATH,
        );
        if let Err(errno) = given {
            warn!("cannot give a cron file of data_dir to the workers' user: {errno}");
        }
    };
    if let Ok(stat) = nix::sys::stat::fstat(&cron) {
        give(cron.as_fd(), &stat);
    }
    let Ok(entries) = nix::dir::Dir::openat(&cron, ".", directory_flags(), Mode::empty()) else {
        return;
    };
    for entry in entries.into_iter().flatten() {
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let Ok(file) = nix::fcntl::openat(
            &cron,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        let Ok(stat) = nix::sys::stat::fstat(&file) else {
            continue;
        };
        let regular = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
        if regular && stat.st_nlink == 1 {
            give(file.as_fd(), &stat);
        }
    }
}

/// Narrows an existing data_dir open to other users to 0700 (on the descriptor).
fn narrow(dir: &OwnedFd, path: &Path) -> io::Result<()> {
    let mode = nix::sys::stat::fstat(dir)?.st_mode & 0o777;
    if mode & 0o077 != 0 {
        warn!(
            "{} was open to other users (mode {mode:o}); made 0700",
            path.display()
        );
        nix::sys::stat::fchmod(dir, Mode::from_bits_truncate(PRIVATE_DIR))?;
    }
    Ok(())
}

fn open_directory(path: &Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(path, directory_flags(), Mode::empty())?)
}

fn directory_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}
