//! Shared memory that the master and its workers see: built-in workers by inheriting the
//! mapping across fork, programs (the Python runner) by mapping its descriptor.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{self, MapFlags, ProtFlags};

/// The seals that make a mapping of the file safe to use: its size can never change, so no
/// access through the mapping can fault (SIGBUS) because another process shrank it.
const SIZE_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// A zero-filled array of atomic words, in a `MAP_SHARED` mapping of a sealed memfd.
///
/// Map it before forking: parent and child then share the same physical pages, so stores
/// by one are seen by the other without a system call. A program started by exec maps the
/// same pages from the descriptor ([`SharedWords::from_fd`]). Only atomics are exposed,
/// which is what makes concurrent access from two processes well defined.
pub struct SharedWords {
    ptr: NonNull<AtomicU64>,
    len: usize,
    /// The memfd behind the mapping (close-on-exec), for a program to map; closed once
    /// handed over (see [`SharedWords::close_descriptor`]), so that the master does not hold
    /// one descriptor per worker.
    file: Option<OwnedFd>,
}

impl SharedWords {
    /// Maps `len` zeroed words.
    pub fn new(len: usize) -> io::Result<Self> {
        let file = memfd_create(
            c"forkwarden-scoreboard",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let bytes = byte_len(len)?;
        nix::unistd::ftruncate(&file, i64::try_from(bytes.get()).map_err(io::Error::other)?)?;
        fcntl(&file, FcntlArg::F_ADD_SEALS(SIZE_SEALS))?;
        Self::map(file, len)
    }

    /// Maps the `len` words of `file`, a descriptor a program was given. Refused unless the
    /// file is sealed (see [`SIZE_SEALS`]) at exactly that size: one of another size was
    /// made by a master of another layout.
    pub fn from_fd(file: OwnedFd, len: usize) -> io::Result<Self> {
        let seals = SealFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GET_SEALS)?);
        if !seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW) {
            return Err(io::Error::other("the shared memory's size is not sealed"));
        }
        let size = nix::sys::stat::fstat(&file)?.st_size;
        if u64::try_from(size).unwrap_or(0) != byte_len(len)?.get() as u64 {
            return Err(io::Error::other(format!(
                "the shared memory is {size} bytes, not the {len} words of this worker's layout \
                 (a master of another version made it)"
            )));
        }
        Self::map(file, len)
    }

    fn map(file: OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping at an address the kernel picks cannot overlap any memory
        // Rust already owns; the file's size is sealed at least `len` words (checked or set
        // by the caller), so no access within the mapping can fault.
        let ptr = unsafe {
            mman::mmap(
                None,
                byte_len(len)?,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
            file: Some(file),
        })
    }

    /// Keeps processes forked from now on from inheriting this mapping (MADV_DONTFORK): a
    /// worker's row is shared with that worker, not with the workers forked after it.
    pub fn exclude_from_future_forks(&self) -> io::Result<()> {
        let bytes = byte_len(self.len)?;
        // SAFETY: this is exactly the mapping created in `map`; MADV_DONTFORK only changes
        // what a later fork copies, never the contents or validity of the memory here.
        unsafe {
            mman::madvise(
                self.ptr.cast(),
                bytes.get(),
                mman::MmapAdvise::MADV_DONTFORK,
            )
        }
        .map_err(io::Error::from)
    }

    /// The memfd behind the mapping, until it is closed.
    pub fn descriptor(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().map(AsFd::as_fd)
    }

    /// Closes the memfd; the mapping stays.
    pub fn close_descriptor(&mut self) {
        self.file = None;
    }

    /// The shared words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned (so aligned for AtomicU64), `len` words long,
        // backed by a file sealed at that size or more, zero-filled when created (any bit
        // pattern is a valid AtomicU64), and stays mapped until `self` is dropped, which
        // the returned borrow cannot outlive.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

fn byte_len(len: usize) -> io::Result<NonZeroUsize> {
    len.max(1)
        .checked_mul(size_of::<AtomicU64>())
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| io::Error::other("shared mapping too large"))
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        let Ok(bytes) = byte_len(self.len) else {
            return;
        };
        // SAFETY: this is exactly the mapping created in `map`, and no borrow of it can
        // outlive `self`. An error (impossible for a valid mapping) only leaks it.
        let _ = unsafe { mman::munmap(self.ptr.cast(), bytes.get()) };
    }
}

/// A read-only memfd holding `text` (sealed: no one can change it), for a program to read
/// what the master had in memory when it started it (the config of its generation).
pub fn sealed_text_file(name: &std::ffi::CStr, text: &str) -> io::Result<OwnedFd> {
    let file = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut writer = std::fs::File::from(file);
    std::io::Write::write_all(&mut writer, text.as_bytes())?;
    let file = OwnedFd::from(writer);
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(SIZE_SEALS.union(SealFlag::F_SEAL_WRITE)),
    )?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_second_mapping_of_the_descriptor_sees_the_same_words() {
        let first = SharedWords::new(4).unwrap();
        let file = || first.descriptor().unwrap().try_clone_to_owned().unwrap();
        let second = SharedWords::from_fd(file(), 4).unwrap();
        first.words()[3].store(42, Ordering::SeqCst);
        assert_eq!(second.words()[3].load(Ordering::SeqCst), 42);
        assert!(SharedWords::from_fd(file(), 5000).is_err());
    }

    #[test]
    fn a_file_whose_size_is_not_sealed_is_refused() {
        let file = memfd_create(c"unsealed", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&file, 4096).unwrap();
        assert!(SharedWords::from_fd(file, 4).is_err());
    }
}
