//! A scratch file for tests, removed when dropped (also when a test fails).
//! Compiled into the bbolt unit tests and, by path, into
//! tests/bbolt_roundtrip.rs, so both use this one definition.

use std::path::{Path, PathBuf};

pub struct TempFile(pub PathBuf);

impl std::ops::Deref for TempFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempFile {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
