//! Files in places the workers' user can write: opened so that nothing planted there (a
//! symbolic link, a FIFO, a hard link to a file of root's, a FUSE mount) can make the root
//! master act on a file it did not mean, or wait for ever.
//!
//! Two tools: [`read_small_file`] opens without following a final symbolic link and without
//! waiting (O_NONBLOCK), and takes only a regular file of bounded size; [`as_user`] runs a
//! file operation with the workers' user's file-system identity, so that the kernel checks
//! it, and owns what it creates, exactly as it would for that user: the master cannot be made
//! to do there what the user could not do alone.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

/// Who a file operation is done as: the workers' user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsIdentity {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

/// Runs `operation` with this process's file-system identity (fsuid, fsgid, supplementary
/// groups) switched to `identity`, then switches back. Only root may switch; only a
/// single-threaded process may (the groups are the whole process's for that moment).
pub fn as_user<T>(identity: &FsIdentity, operation: impl FnOnce() -> T) -> io::Result<T> {
    if super::process::thread_count()? != 1 {
        return Err(io::Error::other(
            "the file-system identity is switched only in a single-threaded process",
        ));
    }
    let groups = nix::unistd::getgroups()?;
    nix::unistd::setgroups(&identity.groups)?;
    let gid = nix::unistd::setfsgid(identity.gid);
    let uid = nix::unistd::setfsuid(identity.uid);
    // setfsuid(2) returns the previous value whether it worked or not: asking again tells.
    let switched = nix::unistd::setfsuid(identity.uid) == identity.uid
        && nix::unistd::setfsgid(identity.gid) == identity.gid;
    let result = switched.then(operation);
    nix::unistd::setfsuid(uid);
    nix::unistd::setfsgid(gid);
    nix::unistd::setgroups(&groups)?;
    result.ok_or_else(|| {
        io::Error::other(format!(
            "cannot take the file-system identity of uid {} (gid {})",
            identity.uid, identity.gid
        ))
    })
}

/// Opens `path` for appending (created with `mode` if absent), as a log is written: never
/// through a FIFO, a device or a socket planted at its name (the master would wait on
/// them), nor on a FUSE file system (whose owner decides when a write returns). The
/// descriptor is blocking, close-on-exec.
pub fn open_append(path: &Path, mode: u32) -> io::Result<OwnedFd> {
    let flags = OFlag::O_WRONLY
        | OFlag::O_APPEND
        | OFlag::O_CREAT
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY
        | OFlag::O_NONBLOCK;
    let file = nix::fcntl::open(path, flags, Mode::from_bits_truncate(mode))?;
    regular_file(&file)?;
    nix::fcntl::fcntl(&file, FcntlArg::F_SETFL(OFlag::O_APPEND))?;
    Ok(file)
}

/// The contents of the small regular file at `path`, at most `max` bytes: never through a
/// symbolic link at its name, never waiting (a FIFO planted there is refused, not opened for
/// a writer that never comes). Larger files are refused.
pub fn read_small_file(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY;
    let file = nix::fcntl::open(path, flags, Mode::empty())?;
    let size = regular_file(&file)?;
    if size > max as u64 {
        return Err(io::Error::other(format!("larger than {max} bytes")));
    }
    let mut contents = Vec::new();
    std::fs::File::from(file)
        .take(max as u64)
        .read_to_end(&mut contents)?;
    Ok(contents)
}

/// Checks that `file` is a regular file on a file system that answers by itself (not FUSE);
/// returns its size.
fn regular_file(file: &OwnedFd) -> io::Result<u64> {
    let stat = nix::sys::stat::fstat(file.as_fd())?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(io::Error::other("not a regular file"));
    }
    let filesystem = nix::sys::statfs::fstatfs(file.as_fd())?;
    if filesystem.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC {
        return Err(io::Error::other("on a FUSE file system"));
    }
    Ok(u64::try_from(stat.st_size).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read_and_nothing_through_a_link_or_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        std::fs::write(&file, "4242\n").unwrap();
        assert_eq!(read_small_file(&file, 64).unwrap(), b"4242\n");
        assert!(read_small_file(&file, 2).is_err(), "too large");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(read_small_file(&link, 64).is_err(), "a symbolic link");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let started = std::time::Instant::now();
        assert!(read_small_file(&fifo, 64).is_err(), "a FIFO");
        assert!(open_append(&fifo, 0o600).is_err(), "a FIFO");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(
            open_append(Path::new("/dev/null"), 0o600).is_err(),
            "a device"
        );
        let log = dir.path().join("log");
        let appended = open_append(&log, 0o640).unwrap();
        nix::unistd::write(&appended, b"line\n").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"line\n");
    }
}
