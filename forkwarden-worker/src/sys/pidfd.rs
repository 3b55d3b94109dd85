//! Process file descriptors (`pidfd_open(2)`, `pidfd_send_signal(2)`): a reference to one
//! process that a recycled pid number can never redirect.
//!
//! The master signals only processes it can prove are its own descendants (see
//! docs/trust-boundary.md). A pid is such a proof only while the process it names has not
//! been reaped: past that, the number may name any process on the host. A [`ProcessHandle`]
//! keeps naming the process it was opened on, so a check made through it ("is this still the
//! process I looked at in /proc?") and the signal sent after it are about the same process.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::errno_result;

/// `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9): signal the process group the pidfd's process
/// leads, by its kernel identity rather than by number.
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

/// A descriptor that becomes readable when process `pid` exits (`pidfd_open(2)`, Linux
/// 5.3+), so a wait for a child can sit in `poll` with a timeout, beside other descriptors.
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no
    // memory is passed.
    let fd = errno_result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) })?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One process, held by a pidfd: signals sent through it reach that process or nothing.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: Pid,
    pidfd: OwnedFd,
}

impl ProcessHandle {
    /// A handle on the process that has pid `pid` now. Whether it is the process the caller
    /// means is for the caller to check after this (then [`ProcessHandle::is_alive`] tells
    /// that the check was about this very process).
    pub fn open(pid: Pid) -> io::Result<Self> {
        if pid.as_raw() <= 0 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(Self {
            pid,
            pidfd: pidfd_open(pid)?,
        })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Whether the process has not been reaped yet (a zombie counts): while it has not, its
    /// pid names it and nothing else.
    pub fn is_alive(&self) -> bool {
        self.send(0, 0).is_ok()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        self.send(signal as libc::c_int, 0)
    }

    /// Sends `signal` to the process group this process leads (its pid as a group id).
    ///
    /// From Linux 6.9 the kernel does it through the pidfd: the group is the one this very
    /// process leads, even after it was reaped. On older kernels it falls back to
    /// `killpg(pid)` while the process is still unreaped (so its pid, hence the group id, is
    /// still its own); for a reaped process it signals nothing and says so (ESRCH).
    pub fn signal_group(&self, signal: Signal) -> io::Result<()> {
        match self.send(signal as libc::c_int, PIDFD_SIGNAL_PROCESS_GROUP) {
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                if !self.is_alive() {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                nix::sys::signal::killpg(self.pid, signal).map_err(io::Error::from)
            }
            other => other,
        }
    }

    fn send(&self, signal: libc::c_int, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: pidfd_send_signal takes a descriptor we own (borrowed for the call), a
        // signal number, a null siginfo (the kernel fills in one as kill(2) would) and
        // flags; no memory of ours is written.
        let result = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                flags,
            )
        };
        errno_result(result).map(drop)
    }
}

impl AsFd for ProcessHandle {
    /// Readable once the process has exited.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_handle_signals_its_own_process_and_group_and_nothing_after_the_reap() {
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(leader.id() as i32);
        let handle = ProcessHandle::open(pid).unwrap();
        assert!(handle.is_alive());
        assert_eq!(handle.pid(), pid);
        handle.signal_group(Signal::SIGKILL).unwrap();
        let status = leader.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(!handle.is_alive(), "reaped");
        assert!(handle.signal(Signal::SIGKILL).is_err());
        assert!(ProcessHandle::open(Pid::from_raw(0)).is_err());
        assert!(ProcessHandle::open(Pid::from_raw(-1)).is_err());
    }
}
