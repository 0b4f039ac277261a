//! The Local store: snapshots as files under `<container>/<prefix>/v2/`,
//! e.g. an NFS mount at an air-gapped site. An upload is a hidden temporary
//! file written in place part by part; `complete` fsyncs it and renames it
//! to its name, so a snapshot is either whole or absent.
//!
//! Unlike upstream (which roots everything under `$HOME`), the container is
//! a directory path used as given, and it must already exist: a missing
//! mount point is an error, not a directory silently created on local disk.

use super::{Error, ErrorKind, ObjectInfo, Result, Store, Upload};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct LocalStore {
    container: PathBuf,
    dir: PathBuf,
}

impl LocalStore {
    /// A store in `<container>/<prefix>/v2/`. `container` must exist; the
    /// directories below it are created on first write.
    pub fn new(container: &Path, prefix: &str) -> Result<LocalStore> {
        match fs::metadata(container) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(permanent(format!("store container {} is not a directory", container.display()))),
            Err(e) => return Err(io_error(&format!("store container {}", container.display()), e)),
        }
        let mut dir = container.to_path_buf();
        for part in prefix.split('/').filter(|p| !p.is_empty()) {
            if part == ".." || part == "." {
                return Err(permanent(format!("store prefix {prefix:?} must not contain . or ..")));
            }
            dir.push(part);
        }
        dir.push("v2");
        Ok(LocalStore { container: container.to_path_buf(), dir })
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') {
            return Err(permanent(format!("invalid object name {name:?}")));
        }
        Ok(self.dir.join(name))
    }
}

impl Store for LocalStore {
    fn sibling(&self, dir: &str) -> std::sync::Arc<dyn Store> {
        let dir = self.dir.parent().unwrap_or(&self.container).join(dir);
        std::sync::Arc::new(LocalStore { container: self.container.clone(), dir })
    }

    fn location(&self) -> String {
        format!("file://{}/", self.dir.display())
    }

    fn begin(&self, name: &str) -> Result<Box<dyn Upload>> {
        let target = self.path(name)?;
        // The container must still be there (an unmounted NFS share).
        if !self.container.is_dir() {
            return Err(permanent(format!("store container {} is gone", self.container.display())));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&self.dir)
            .map_err(|e| io_error(&format!("creating {}", self.dir.display()), e))?;
        static N: AtomicU64 = AtomicU64::new(0);
        let temp =
            self.dir.join(format!(".{name}.upload-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io_error(&format!("creating {}", temp.display()), e))?;
        Ok(Box::new(LocalUpload {
            file,
            temp,
            target,
            parts: Mutex::new(BTreeMap::new()),
            finished: Mutex::new(false),
        }))
    }

    fn load(&self, name: &str, offset: u64, length: Option<u64>) -> Result<Box<dyn Read + Send>> {
        let path = self.path(name)?;
        let mut file = File::open(&path).map_err(|e| io_error(&format!("opening {}", path.display()), e))?;
        file.seek(SeekFrom::Start(offset)).map_err(|e| io_error(&format!("seeking in {}", path.display()), e))?;
        Ok(match length {
            Some(n) => Box::new(file.take(n)),
            None => Box::new(file),
        })
    }

    fn list(&self) -> Result<Vec<ObjectInfo>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.container.is_dir() => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&format!("listing {}", self.dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&format!("listing {}", self.dir.display()), e))?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            // Uploads in progress are hidden files; directories are other prefixes.
            if name.starts_with('.') {
                continue;
            }
            match entry.metadata() {
                Ok(m) if m.is_file() => out.push(ObjectInfo { name, size: m.len() }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&format!("reading {}", entry.path().display()), e)),
            }
        }
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&format!("deleting {}", path.display()), e)),
            _ => Ok(()),
        }
    }
}

struct LocalUpload {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    /// Part number → (offset, length), to check contiguity at completion.
    parts: Mutex<BTreeMap<u32, (u64, u64)>>,
    finished: Mutex<bool>,
}

impl Upload for LocalUpload {
    fn put_part(&self, number: u32, offset: u64, data: &[&[u8]]) -> Result<()> {
        let mut at = offset;
        for slice in data {
            self.file.write_all_at(slice, at).map_err(|e| io_error(&format!("writing {}", self.temp.display()), e))?;
            at += slice.len() as u64;
        }
        self.parts.lock().unwrap_or_else(|e| e.into_inner()).insert(number, (offset, at - offset));
        Ok(())
    }

    fn complete(&self) -> Result<()> {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let mut end = 0;
        for (i, (&number, &(offset, len))) in parts.iter().enumerate() {
            if number as usize != i + 1 || offset != end {
                return Err(permanent(format!(
                    "{}: part {number} at byte {offset} does not follow the parts before it (expected part {} at byte {end})",
                    self.target.display(),
                    i + 1
                )));
            }
            end += len;
        }
        let ctx = |what: &str| format!("{what} {}", self.temp.display());
        self.file.set_len(end).map_err(|e| io_error(&ctx("truncating"), e))?;
        self.file.sync_all().map_err(|e| io_error(&ctx("syncing"), e))?;
        fs::rename(&self.temp, &self.target)
            .map_err(|e| io_error(&format!("renaming {} to {}", self.temp.display(), self.target.display()), e))?;
        *self.finished.lock().unwrap_or_else(|e| e.into_inner()) = true;
        if let Some(dir) = self.target.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error(&format!("syncing {}", dir.display()), e))?;
        }
        Ok(())
    }

    fn abort(&self) -> Result<()> {
        *self.finished.lock().unwrap_or_else(|e| e.into_inner()) = true;
        match fs::remove_file(&self.temp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_error(&format!("removing {}", self.temp.display()), e))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for LocalUpload {
    /// An upload dropped without complete or abort leaves nothing behind.
    fn drop(&mut self) {
        if !*self.finished.get_mut().unwrap_or_else(|e| e.into_inner()) {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

fn permanent(msg: String) -> Error {
    Error::new(ErrorKind::Permanent, msg)
}

/// Local I/O errors are not worth retrying, except a missing object.
fn io_error(what: &str, e: io::Error) -> Error {
    let kind = if e.kind() == io::ErrorKind::NotFound { ErrorKind::NotFound } else { ErrorKind::Permanent };
    Error::new(kind, format!("{what}: {e}"))
}
