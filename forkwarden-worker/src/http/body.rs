//! A request's body as the worker receives it: in memory while small, in an unnamed
//! temporary file past [`IN_MEMORY`], so that an upload of `http_max_body_size` costs the
//! worker disk, not memory (nor a share of `limit_memory_soft`).
//!
//! The body is whole before the application runs: a slow client holds a descriptor, never a
//! worker (see `worker::http`). The application reads it from the start, from memory or from
//! the file, as a stream (WSGI's `wsgi.input`).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// Largest body kept in memory; a larger one goes to a temporary file (the same order as
/// Werkzeug's and Django's spooling thresholds).
pub const IN_MEMORY: usize = 1024 * 1024;

/// A request's body.
#[derive(Debug)]
pub enum RequestBody {
    Memory(Vec<u8>),
    /// In an unnamed temporary file (removed when closed), `len` bytes from its start.
    File {
        file: File,
        len: u64,
    },
}

impl Default for RequestBody {
    fn default() -> Self {
        Self::Memory(Vec::new())
    }
}

impl RequestBody {
    pub fn len(&self) -> u64 {
        match self {
            Self::Memory(bytes) => bytes.len() as u64,
            Self::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body, if it is in memory.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Memory(bytes) => Some(bytes),
            Self::File { .. } => None,
        }
    }

    /// The temporary file holding the body, if it is in one (read it from offset 0, up to
    /// [`len`](Self::len)).
    pub fn file(&self) -> Option<&File> {
        match self {
            Self::Memory(_) => None,
            Self::File { file, .. } => Some(file),
        }
    }

    /// Reads up to `buffer.len()` bytes of the body from `offset`; 0 at its end.
    pub fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            Self::Memory(bytes) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let count = buffer.len().min(bytes.len() - start);
                buffer[..count].copy_from_slice(&bytes[start..start + count]);
                Ok(count)
            }
            Self::File { file, len } => {
                let left = len.saturating_sub(offset);
                let count = buffer
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                file.read_at(&mut buffer[..count], offset)
            }
        }
    }

    /// Appends bytes received; past [`IN_MEMORY`] the body moves to a temporary file.
    pub(crate) fn append(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Memory(bytes) if bytes.len() + data.len() <= IN_MEMORY => {
                bytes.extend_from_slice(data);
                Ok(())
            }
            Self::Memory(bytes) => {
                let mut file = tempfile::tempfile()?;
                file.write_all(bytes)?;
                file.write_all(data)?;
                let len = (bytes.len() + data.len()) as u64;
                *self = Self::File { file, len };
                Ok(())
            }
            Self::File { file, len } => {
                file.write_all(data)?;
                *len += data.len() as u64;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_body_moves_to_a_file_and_reads_back_whole() {
        let mut body = RequestBody::default();
        let piece: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
        for _ in 0..(IN_MEMORY / piece.len()) {
            body.append(&piece).unwrap();
        }
        assert!(body.as_bytes().is_some(), "up to IN_MEMORY stays in memory");
        body.append(&piece).unwrap();
        assert!(body.file().is_some(), "past it, a file");
        assert_eq!(body.len(), (IN_MEMORY + piece.len()) as u64);
        let mut read = Vec::new();
        let mut buffer = [0u8; 10_000];
        loop {
            let count = body.read_at(&mut buffer, read.len() as u64).unwrap();
            if count == 0 {
                break;
            }
            read.extend_from_slice(&buffer[..count]);
        }
        assert_eq!(read.len() as u64, body.len());
        assert!(
            read.chunks(piece.len())
                .all(|chunk| chunk == piece.as_slice())
        );
    }
}
