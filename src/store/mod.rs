//! Object storage: one small interface (begin/put_part/complete, load, list,
//! delete) with one implementation per provider. Every implementation must
//! pass the conformance suite in `tests/store_conformance.rs`.
//!
//! A store is bound to one location (`<container>/<prefix>/v2/`); callers
//! speak in object *names* (`Full-00000000-00000010-1640995200`), never keys.

use std::fmt;
use std::io::Read;
use std::time::Duration;

pub mod local;
pub mod s3;

/// One object under the store's `v2/` directory, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key with the store's `<prefix>/v2/` removed.
    pub name: String,
    pub size: u64,
}

/// What the caller should do about a failed store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object (or upload) does not exist.
    NotFound,
    /// Worth retrying: connection refused/reset, timeout, 5xx, SlowDown.
    Transient,
    /// Retrying will not help: bad credentials, missing bucket, 4xx.
    Permanent,
    /// A delete refused because object lock still retains the object
    /// (`Error::retain_until` says until when, when the server told).
    Locked,
}

/// A store error. `msg` says what was attempted, where (bucket/key or path,
/// endpoint URL) and what came back; it never contains credentials.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub msg: String,
    /// For [`ErrorKind::Locked`]: the retain-until date (RFC 3339), if known.
    pub retain_until: Option<String>,
}

impl Error {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Error {
        Error { kind, msg: msg.into(), retain_until: None }
    }
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

pub trait Store: Send + Sync {
    /// Where this store writes, for logs and errors, e.g.
    /// `s3://bucket/prefix/v2/ at http://127.0.0.1:19000`. No credentials.
    fn location(&self) -> String;

    /// Start writing object `name`. Nothing becomes visible under `name`
    /// until [`Upload::complete`] succeeds.
    fn begin(&self, name: &str) -> Result<Box<dyn Upload>>;

    /// Stream object `name` from byte `offset`: `length` bytes, or to its
    /// end when `None`. The reader may end early if the object is shorter.
    fn load(&self, name: &str, offset: u64, length: Option<u64>) -> Result<Box<dyn Read + Send>>;

    /// Every object directly under `<prefix>/v2/`, in no particular order.
    fn list(&self) -> Result<Vec<ObjectInfo>>;

    /// Remove object `name`. Removing a missing object succeeds, as on S3.
    fn delete(&self, name: &str) -> Result<()>;

    /// The same store bound to `<prefix>/<dir>/` instead of `<prefix>/v2/`
    /// (same endpoint, credentials and connections), for what is kept
    /// beside the snapshots. `dir` is one path segment.
    fn sibling(&self, dir: &str) -> std::sync::Arc<dyn Store>;

    /// The same store seen through every object version (a versioned S3
    /// bucket): `list` also returns snapshots hidden by a delete marker, each
    /// as its newest version that is not one, and `load` reads that version.
    /// `None` where the store has no versions (Local).
    fn all_versions(&self) -> Option<std::sync::Arc<dyn Store>> {
        None
    }

    /// Checks to run once before writing, e.g. that a bucket written with
    /// object lock has object lock enabled. Nothing to check by default.
    fn preflight(&self) -> Result<()> {
        Ok(())
    }
}

/// An object being written in parts. Parts may be stored concurrently from
/// several threads and in any order.
pub trait Upload: Send + Sync {
    /// Store part `number` (1-based; parts are contiguous, every part but the
    /// last is at least the provider's minimum part size) holding the bytes
    /// at `offset..offset+len` of the object. `data` is the part's bytes as a
    /// list of slices, in order. Storing the same part again with the same
    /// bytes (a retry) is allowed; some servers refuse different bytes.
    fn put_part(&self, number: u32, offset: u64, data: &[&[u8]]) -> Result<()>;

    /// Make the object visible, built from parts `1..=n`, where `n` is the
    /// highest part number stored.
    fn complete(&self) -> Result<()>;

    /// Discard every stored part; nothing becomes visible.
    fn abort(&self) -> Result<()>;
}

/// Write a small object in one part.
pub fn save(store: &dyn Store, name: &str, data: &[u8]) -> Result<()> {
    let upload = store.begin(name)?;
    let result = upload.put_part(1, 0, &[data]).and_then(|()| upload.complete());
    if result.is_err() {
        let _ = upload.abort();
    }
    result
}

/// How often and how patiently a store call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second try; doubled before each following one.
    pub initial_backoff: Duration,
    /// Upper bound for one wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Upstream's part retry: 6 tries, waiting 1, 2, 4, 8 and 16 s.
    fn default() -> RetryPolicy {
        RetryPolicy { attempts: 6, initial_backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(16) }
    }
}

impl RetryPolicy {
    /// Run `op` until it succeeds, fails with a non-transient error, or the
    /// tries run out. `on_retry(attempt, &err, wait)` is told before each wait.
    pub fn run<T>(
        &self,
        mut op: impl FnMut() -> Result<T>,
        mut on_retry: impl FnMut(u32, &Error, Duration),
    ) -> Result<T> {
        let mut wait = self.initial_backoff;
        let mut attempt = 1;
        loop {
            match op() {
                Err(e) if e.is_transient() && attempt < self.attempts.max(1) && !crate::signals::interrupted() => {
                    on_retry(attempt, &e, wait);
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(self.max_backoff);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(attempts: u32) -> RetryPolicy {
        RetryPolicy { attempts, initial_backoff: Duration::from_millis(1), max_backoff: Duration::from_millis(2) }
    }

    #[test]
    fn retry_stops_at_first_success() {
        let mut calls = 0;
        let r = fast(5).run(
            || {
                calls += 1;
                if calls < 3 { Err(Error::new(ErrorKind::Transient, "reset")) } else { Ok(calls) }
            },
            |_, _, _| {},
        );
        assert_eq!(r.unwrap(), 3);
    }

    #[test]
    fn retry_gives_up_after_attempts_and_reports_each_wait() {
        let mut calls = 0;
        let mut waits = Vec::new();
        let r: Result<()> = fast(4).run(
            || {
                calls += 1;
                Err(Error::new(ErrorKind::Transient, "503"))
            },
            |n, _, w| waits.push((n, w)),
        );
        assert_eq!(r.unwrap_err().msg, "503");
        assert_eq!(calls, 4);
        let ms: Vec<_> = waits.iter().map(|(n, w)| (*n, w.as_millis())).collect();
        assert_eq!(ms, vec![(1, 1), (2, 2), (3, 2)]);
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let mut calls = 0;
        let r: Result<()> = fast(6).run(
            || {
                calls += 1;
                Err(Error::new(ErrorKind::Permanent, "403 SignatureDoesNotMatch"))
            },
            |_, _, _| panic!("must not retry"),
        );
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
