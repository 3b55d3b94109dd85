//! The master's doorbell: how a built-in worker (or a program running forkwarden's worker)
//! tells the master its scoreboard row has news.
//!
//! The worker writes its state into its row and rings the bell (an eventfd): the row is the
//! truth, the bell only wakes the master up to read it. A ring cannot be lost, whatever the
//! number of workers ringing at once (an eventfd is a counter, not a queue).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::eventfd::{EfdFlags, EventFd};

/// Rung by workers when their scoreboard row has news for the master (they are ready, or
/// start work while it rests); the master reads the rows when it hears it. An eventfd.
pub struct Doorbell {
    bell: OwnedFd,
}

impl Doorbell {
    pub fn new() -> io::Result<Self> {
        let bell = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Self { bell: bell.into() })
    }

    /// The master's doorbell, handed to a program as `bell`.
    pub fn from_fd(bell: OwnedFd) -> Self {
        Self { bell }
    }

    /// Wakes the master. Never blocks and cannot be lost: the count saturates only after
    /// 2^64 - 2 rings that the master has not read.
    pub fn ring(&self) {
        let _ = nix::unistd::write(&self.bell, &1u64.to_ne_bytes());
    }

    /// Resets the bell (the master, before it reads the rows).
    pub fn silence(&self) {
        let mut count = [0u8; 8];
        let _ = nix::unistd::read(&self.bell, &mut count);
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_add_up_until_the_bell_is_silenced() {
        let bell = Doorbell::new().unwrap();
        for _ in 0..1000 {
            bell.ring();
        }
        let mut count = [0u8; 8];
        assert_eq!(nix::unistd::read(&bell.bell, &mut count), Ok(8));
        assert_eq!(u64::from_ne_bytes(count), 1000);
        assert!(
            nix::unistd::read(&bell.bell, &mut count).is_err(),
            "silent after a read"
        );
    }
}
