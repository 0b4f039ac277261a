//! Scratch space for unit tests: under the target directory, never `/tmp`,
//! each path unique to the process and call, removed when dropped (also
//! when a test fails). Integration tests use `CARGO_TARGET_TMPDIR` instead.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory removed with its contents when dropped.
pub struct ScratchDir(pub PathBuf);

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `<target>/tmp`: the test binary lives in `<target>/<profile>/deps/`.
pub fn root() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe.ancestors().nth(3).expect("the test binary is under <target>/<profile>/deps");
    target.join("tmp")
}

/// A unique path under [`root`] (which exists), not yet created itself.
pub fn path(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::fs::create_dir_all(root()).expect("creating the scratch root under the target directory");
    root().join(format!("unit-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// A new, empty directory under [`root`].
pub fn dir(tag: &str) -> ScratchDir {
    let d = path(tag);
    std::fs::create_dir_all(&d).expect("creating a scratch directory under the target directory");
    ScratchDir(d)
}
