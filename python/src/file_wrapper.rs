//! `wsgi.file_wrapper`.

use forkwarden_worker::app::Part;
use pyo3::intern;
use pyo3::prelude::*;

/// `wsgi.file_wrapper`: an application's file, sent in blocks.
#[pyclass]
pub(crate) struct FileWrapper {
    file: Py<PyAny>,
    block_size: usize,
}

impl FileWrapper {
    /// The wrapped file as a part for sendfile, from where the application left it: None
    /// unless it is a regular file with a descriptor (a BytesIO, a pipe, a socket are read
    /// in blocks instead).
    pub(crate) fn sendable(&self, py: Python<'_>) -> PyResult<Option<Part>> {
        let file = self.file.bind(py);
        let Some(fileno) = file.getattr_opt(intern!(py, "fileno"))? else {
            return Ok(None);
        };
        let Ok(fd) = fileno.call0().and_then(|fd| fd.extract::<i32>()) else {
            return Ok(None);
        };
        // Where the application's reads left it (its buffer included), not the
        // descriptor's offset.
        let offset = match file.getattr_opt(intern!(py, "tell"))? {
            Some(tell) => match tell.call0().and_then(|at| at.extract::<u64>()) {
                Ok(offset) => offset,
                Err(_) => return Ok(None),
            },
            None => 0,
        };
        Ok(Part::file_at(fd, offset).ok().flatten())
    }
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (file, block_size = 65536))]
    fn new(file: Py<PyAny>, block_size: usize) -> Self {
        Self {
            file,
            block_size: block_size.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let block = self
            .file
            .bind(py)
            .call_method1("read", (self.block_size,))?;
        Ok((!block.is_empty()?).then_some(block))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(close) = self.file.bind(py).getattr_opt("close")? {
            close.call0()?;
        }
        Ok(())
    }
}
