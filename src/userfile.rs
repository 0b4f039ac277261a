//! Reading a small file the user named (credentials, keys, certificates,
//! CA bundles): only a regular file, at most a bound, never blocking.
//!
//! `/dev/zero` as a credentials path used to be read until memory ran out,
//! and a fifo hung the process before anything was logged. Every such file
//! goes through [`read`], so one place decides what is acceptable.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Credentials JSON, per-field secret files, client certificates and keys:
/// a real one is a few KiB.
pub const SMALL: u64 = 1 << 20;

/// CA bundles (a distribution's whole bundle is about 200 KiB).
pub const CA_BUNDLE: u64 = 16 << 20;

/// The whole file at `path` if it is a regular file of at most `limit`
/// bytes. The error says why (kind of file, size), not what it holds.
pub fn read(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a fifo with no writer would otherwise wait
    // forever; the type is checked on the open descriptor (no race).
    let file = File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a fifo"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a regular file ({what})")));
    }
    let too_big = || io::Error::new(io::ErrorKind::InvalidData, format!("larger than the limit of {limit} bytes"));
    if meta.len() > limit {
        return Err(too_big());
    }
    // The file may grow after the stat: read one byte past the limit.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read(path, limit)?).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files() {
        let d = crate::test_scratch::dir("userfile");
        let ok = d.join("ok");
        std::fs::write(&ok, b"12345").unwrap();
        assert_eq!(read(&ok, 5).unwrap(), b"12345");
        assert!(read(&ok, 4).unwrap_err().to_string().contains("limit of 4 bytes"));
        assert!(read(&d, SMALL).unwrap_err().to_string().contains("a directory"));
        assert!(read(Path::new("/dev/zero"), SMALL).unwrap_err().to_string().contains("a device"));
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        assert!(read(&fifo, SMALL).unwrap_err().to_string().contains("a fifo"));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(read(&d.join("missing"), SMALL).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
