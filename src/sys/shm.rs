//! Anonymous shared memory, seen by the master and the worker forked after it was mapped.

use std::io;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use nix::sys::mman::{self, MapFlags, ProtFlags};

/// A zero-filled array of atomic words in a `MAP_SHARED | MAP_ANONYMOUS` mapping.
///
/// Map it before forking: parent and child then share the same physical pages, so stores
/// by one are seen by the other without a system call. Only atomics are exposed, which is
/// what makes concurrent access from two processes well defined.
pub struct SharedWords {
    ptr: NonNull<AtomicU64>,
    len: usize,
}

impl SharedWords {
    /// Maps `len` zeroed words.
    pub fn new(len: usize) -> io::Result<Self> {
        let bytes = NonZeroUsize::new(len.max(1) * size_of::<AtomicU64>())
            .ok_or_else(|| io::Error::other("empty shared mapping"))?;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks cannot overlap
        // any memory Rust already owns.
        let ptr = unsafe {
            mman::mmap_anonymous(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Keeps processes forked from now on from inheriting this mapping (MADV_DONTFORK): a
    /// worker's row is shared with that worker, not with the workers forked after it.
    pub fn exclude_from_future_forks(&self) -> io::Result<()> {
        let bytes = self.len.max(1) * size_of::<AtomicU64>();
        // SAFETY: this is exactly the mapping created in `new`; MADV_DONTFORK only changes
        // what a later fork copies, never the contents or validity of the memory here.
        unsafe { mman::madvise(self.ptr.cast(), bytes, mman::MmapAdvise::MADV_DONTFORK) }
            .map_err(io::Error::from)
    }

    /// The shared words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned (so aligned for AtomicU64), `len` words long,
        // zero-filled by the kernel (a valid AtomicU64 bit pattern), and stays mapped until
        // `self` is dropped, which the returned borrow outlives not.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        let bytes = self.len.max(1) * size_of::<AtomicU64>();
        // SAFETY: this is exactly the mapping created in `new`, and no borrow of it can
        // outlive `self`. An error (impossible for a valid mapping) only leaks it.
        let _ = unsafe { mman::munmap(self.ptr.cast(), bytes) };
    }
}
