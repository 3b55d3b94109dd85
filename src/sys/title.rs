//! The process title that `ps` shows (`forkwarden: http worker 2`).
//!
//! Linux has no setproctitle(3): `ps` reads the memory that held the program's argument
//! strings, `/proc/PID/cmdline`. We overwrite that memory, and extend it over the
//! environment strings that follow it, after moving the environment to the heap (the
//! technique of PostgreSQL, nginx and libbsd's setproctitle).

use std::ffi::{CString, c_char};
use std::os::unix::ffi::OsStringExt;
use std::sync::OnceLock;
use std::{fs, io};

/// The writable argv (+ environ) string area of this process: `[start, start + len)`.
#[derive(Clone, Copy)]
struct TitleArea {
    start: usize,
    len: usize,
}

static AREA: OnceLock<TitleArea> = OnceLock::new();

unsafe extern "C" {
    /// The C library's environment table, which std's env functions also read.
    static mut environ: *mut *mut c_char;
}

/// Prepares [`set_process_title`]; returns how many bytes a title may have.
///
/// Call once at start, while the process is still single-threaded and before anything
/// keeps a pointer into the environment.
pub fn init_process_title() -> io::Result<usize> {
    if let Some(area) = AREA.get() {
        return Ok(area.len - 1);
    }
    let stat = fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after_name = stat
        .rfind(')')
        .map(|end| &stat[end + 1..])
        .ok_or_else(|| io::Error::other("unexpected /proc/self/stat format"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // proc(5) numbers fields from 1; the first one after the name is field 3.
    let field = |number: usize| -> io::Result<usize> {
        fields
            .get(number - 3)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no field {number} in /proc/self/stat")))
    };
    let (arg_start, arg_end) = (field(48)?, field(49)?);
    let (env_start, env_end) = (field(50)?, field(51)?);
    if arg_end <= arg_start {
        return Err(io::Error::other("empty argument area"));
    }
    let end = if env_start == arg_end && env_end > env_start {
        move_environment_to_heap()?;
        env_end
    } else {
        arg_end
    };
    let area = *AREA.get_or_init(|| TitleArea {
        start: arg_start,
        len: end - arg_start,
    });
    Ok(area.len - 1)
}

/// Copies the environment into leaked heap strings and points `environ` at the copy, so
/// that the original environment strings may be overwritten by the title.
fn move_environment_to_heap() -> io::Result<()> {
    let mut table: Vec<*mut c_char> = Vec::new();
    for (key, value) in std::env::vars_os() {
        let mut entry = key.into_vec();
        entry.push(b'=');
        entry.extend(value.into_vec());
        let entry = CString::new(entry).map_err(io::Error::other)?;
        table.push(entry.into_raw());
    }
    table.push(std::ptr::null_mut());
    let table: &'static mut [*mut c_char] = Box::leak(table.into_boxed_slice());
    // SAFETY: called once, while the process is single-threaded (before any fork and before
    // any thread exists), so no one reads `environ` concurrently; the new table and its
    // strings are leaked, hence valid for the rest of the process's life, and
    // NULL-terminated as C requires.
    unsafe {
        environ = table.as_mut_ptr();
    }
    Ok(())
}

/// Sets the title `ps` shows for this process, truncated to what the area holds.
/// Does nothing when [`init_process_title`] did not succeed.
pub fn set_process_title(title: &str) {
    let Some(area) = AREA.get().copied() else {
        return;
    };
    let length = title.len().min(area.len - 1);
    let start = area.start as *mut u8;
    // SAFETY: `[start, start + len)` is this process's argument and environment string area,
    // as the kernel reports it in /proc/self/stat: mapped and writable (it lies in the
    // initial stack) for the life of the process. Since `init_process_title`, no code reads
    // environment strings from it (environ points to heap copies). std's saved argv pointers
    // still point into it; they stay valid C strings because the area always ends in NUL.
    unsafe {
        std::ptr::copy_nonoverlapping(title.as_ptr(), start, length);
        std::ptr::write_bytes(start.add(length), 0, area.len - length);
    }
}
