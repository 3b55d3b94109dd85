//! The process title that `ps` shows (`forkwarden: http worker 2`).
//!
//! Linux has no setproctitle(3): `ps` reads the memory that held the program's argument
//! strings, `/proc/PID/cmdline`. We overwrite that memory, and extend it over the
//! environment strings that follow it, after moving both the arguments and the environment
//! to the heap (the technique of PostgreSQL, nginx and libbsd's setproctitle). Moving the
//! arguments keeps `std::env::args()` true after a title is set: std reads the same
//! argument vector, whose entries then point at the heap copies.

use std::ffi::{CStr, CString, c_char, c_int};
use std::os::unix::ffi::OsStringExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};
use std::{fs, io};

/// The writable argv (+ environ) string area of this process: `[start, start + len)`.
#[derive(Clone, Copy)]
struct TitleArea {
    start: usize,
    len: usize,
}

static AREA: OnceLock<TitleArea> = OnceLock::new();

/// The argument vector as the C runtime handed it to the program (see [`capture_arguments`]).
static ARGC: AtomicI32 = AtomicI32::new(0);
static ARGV: AtomicPtr<*mut c_char> = AtomicPtr::new(std::ptr::null_mut());

/// glibc calls the functions of `.init_array` with `(argc, argv, envp)` before `main`, which
/// is how std itself learns the arguments on Linux with glibc; we keep the same pointer. Only
/// glibc passes those arguments (musl calls them with none: reading them would be undefined
/// behaviour), so, as in std, this is compiled for glibc alone; elsewhere the argument vector
/// stays unknown and no title is set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" fn capture_arguments(argc: c_int, argv: *mut *mut c_char, _envp: *mut *mut c_char) {
    ARGC.store(argc, Ordering::Relaxed);
    ARGV.store(argv, Ordering::Relaxed);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
// SAFETY: glibc calls `.init_array` entries once before `main`, with the signature above;
// `capture_arguments` only stores two atomics.
#[unsafe(link_section = ".init_array.00099")]
static CAPTURE_ARGUMENTS: extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) =
    capture_arguments;

unsafe extern "C" {
    /// The C library's environment table, which std's env functions also read.
    static mut environ: *mut *mut c_char;
}

/// Prepares [`set_process_title`]; returns how many bytes a title may have.
///
/// Refuses when the process has more than one thread (it rewrites `environ` and the argument
/// vector, which no other thread may read meanwhile) or when the argument vector is not
/// where the kernel says its strings are.
pub fn init_process_title() -> io::Result<usize> {
    if let Some(area) = AREA.get() {
        return Ok(area.len - 1);
    }
    let threads = super::process::thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot prepare process titles with {threads} threads"
        )));
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
    move_arguments_to_heap(arg_start, arg_end)?;
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

/// Points every entry of the argument vector at a leaked heap copy of its string, so that
/// the strings area `[start, end)` may be overwritten by the title.
fn move_arguments_to_heap(start: usize, end: usize) -> io::Result<()> {
    let argv = ARGV.load(Ordering::Relaxed);
    let argc = usize::try_from(ARGC.load(Ordering::Relaxed)).unwrap_or(0);
    if argv.is_null() || argc == 0 {
        return Err(io::Error::other("the argument vector is unknown"));
    }
    for index in 0..argc {
        // SAFETY: `argv` is the C runtime's argument vector of `argc` valid entries (see
        // `capture_arguments`), and the process is single-threaded (checked by the caller),
        // so nothing writes it concurrently.
        let entry = unsafe { *argv.add(index) };
        let address = entry as usize;
        if entry.is_null() || address < start || address >= end {
            return Err(io::Error::other(
                "the arguments are not in the argument area",
            ));
        }
        // SAFETY: `entry` points into the kernel's argument area, NUL-terminated within it.
        let copy = CString::from(unsafe { CStr::from_ptr(entry) });
        // SAFETY: as above; the vector lies on the initial stack, writable, and the new entry
        // is leaked, hence valid for the rest of the process's life.
        unsafe { *argv.add(index) = copy.into_raw() };
    }
    Ok(())
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
    // SAFETY: the process is single-threaded (checked by the caller), so no one reads
    // `environ` concurrently; the new table and its strings are leaked, hence valid for the
    // rest of the process's life, and NULL-terminated as C requires.
    unsafe {
        environ = table.as_mut_ptr();
    }
    Ok(())
}

/// Sets the title `ps` shows for this process, cut (at a character boundary) to what the
/// area holds. Does nothing when [`init_process_title`] did not succeed.
pub fn set_process_title(title: &str) {
    let Some(area) = AREA.get().copied() else {
        return;
    };
    let mut length = title.len().min(area.len - 1);
    while !title.is_char_boundary(length) {
        length -= 1;
    }
    let start = area.start as *mut u8;
    // SAFETY: `[start, start + len)` is this process's argument and environment string area,
    // as the kernel reports it in /proc/self/stat: mapped and writable (it lies in the
    // initial stack) for the life of the process. Since `init_process_title`, no code reads
    // strings from it: the argument vector and `environ` point to heap copies.
    unsafe {
        std::ptr::copy_nonoverlapping(title.as_ptr(), start, length);
        std::ptr::write_bytes(start.add(length), 0, area.len - length);
    }
}
