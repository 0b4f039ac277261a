//! bbolt (etcd backend) files: a page reader and a sequential bulk writer.
//!
//! [`Db`] reads pages with positioned reads (no mmap) and walks each
//! bucket's B+tree with an explicit stack, so memory stays bounded by the
//! tree depth times the largest page run, whatever the file size. Every
//! page id, count and offset read from the file is checked before use: a
//! corrupt file gives an [`Error`] naming the page, never a panic.
//!
//! [`Writer`] builds a fresh, defragmented file from keys supplied in
//! ascending order (like bbolt's compact/etcd's defrag): leaves are written
//! as soon as they fill, branch levels are built when a bucket ends, and the
//! two meta pages are written last.
//!
//! [`Db::check_structure`] proves a file's page accounting (every page
//! reachable once or free, keys in order) in the same bounded memory.

mod check;
mod page;
mod reader;
#[cfg(test)]
mod temp_file;
mod writer;

pub use check::Structure;
pub use reader::Db;
pub use writer::Writer;

/// Bytes of the first meta page that [`written_size`] needs.
pub const META_HEAD: usize = page::META_SIZE;

/// The size of a database as bbolt's `Tx.WriteTo` (etcd's snapshot) writes
/// it, `pgid × page size`, from the first [`META_HEAD`] bytes: WriteTo puts
/// the transaction's meta, checksummed, in both meta pages.
pub fn written_size(head: &[u8]) -> Result<u64, String> {
    let meta = page::Meta::decode(head)?;
    meta.pgid.checked_mul(u64::from(meta.page_size)).ok_or_else(|| format!("page count {} overflows", meta.pgid))
}

/// A bbolt read or write failure, or [`Error::stop`] from a callback.
pub struct Error {
    msg: String,
    io: Option<std::io::Error>,
    stop: bool,
}

impl Error {
    /// What an iteration callback returns to end the iteration early;
    /// `for_each` then returns this same error.
    pub fn stop() -> Error {
        Error { msg: "iteration stopped by the callback".into(), io: None, stop: true }
    }

    pub fn is_stop(&self) -> bool {
        self.stop
    }

    pub(crate) fn new(msg: impl Into<String>) -> Error {
        Error { msg: msg.into(), io: None, stop: false }
    }

    pub(crate) fn io(msg: impl Into<String>, e: std::io::Error) -> Error {
        Error { msg: msg.into(), io: Some(e), stop: false }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.io, self.msg.is_empty()) {
            (Some(e), true) => e.fmt(f),
            _ => f.write_str(&self.msg),
        }
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.io {
            Some(e) if !self.msg.is_empty() => write!(f, "{}: {e:?}", self.msg),
            Some(e) => write!(f, "{e:?}"),
            None => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for Error {
    // The I/O error is the source when there is a message of our own, so
    // that `{:#}` prints "context: cause" once.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.io {
            Some(e) if !self.msg.is_empty() => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error { msg: String::new(), io: Some(e), stop: false }
    }
}

/// A bucket element as [`Db::for_each`] yields it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Data(&'a [u8]),
    /// The raw bucket value: the 16-byte `InBucket { root, sequence }`
    /// header, followed by the page image when `root` is 0 (inline).
    Bucket(&'a [u8]),
}

/// A key for error messages: escaped, and cut after 64 bytes.
pub(crate) fn show_key(key: &[u8]) -> String {
    let cut = key.len().min(64);
    let mut s = format!("\"{}\"", key[..cut].escape_ascii());
    if cut < key.len() {
        s.push_str(&format!("... ({} bytes)", key.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_and_source() {
        let e = Error::io("reading page 7 of /x", std::io::Error::other("boom"));
        assert_eq!(e.to_string(), "reading page 7 of /x");
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "reading page 7 of /x: boom");
        let e: Error = std::io::Error::other("plain").into();
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "plain");
        assert!(Error::stop().is_stop());
        assert!(!Error::new("x").is_stop());
        assert_eq!(show_key(b"a\x00b"), "\"a\\x00b\"");
        assert!(show_key(&[b'k'; 100]).ends_with("... (100 bytes)"));
    }
}
