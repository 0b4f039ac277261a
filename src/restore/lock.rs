//! The exclusive lock a restore holds on its target for its whole run, so
//! that two restores into one `--data-dir` cannot remove each other's
//! staging directory: the second one stops at once, naming the first.
//!
//! The lock is `flock(2)` on `<parent>/.<name>.restore.lock`, which holds
//! the owner's pid for that message. The kernel drops the lock when its
//! owner dies, however it dies, so a lock file left behind (a SIGKILL) is
//! harmless: the next restore simply takes it. A restore that ends removes
//! the file itself, while still holding the lock; a restore that opened
//! the old file just before it went re-checks after locking that the path
//! is still the file it locked, so it never holds a lock nobody else sees.
//!
//! Holding the lock is also what makes leftovers safe to judge: only
//! `.<name>.restore-<pid>` directories whose process is gone, owned by us
//! and holding nothing a restore does not make are removed.

use crate::signals;
use log::warn;
use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A held lock on one restore target, and the names derived from it.
pub struct TargetLock {
    file: File,
    path: PathBuf,
    parent: PathBuf,
    /// `.<name>.restore-`: a staging directory is this and a pid.
    stem: String,
}

/// What a staging directory may hold: the data directory being built and
/// the downloads.
const STAGING_ENTRIES: [&str; 2] = ["member", "fetch"];

impl TargetLock {
    /// Take the lock for `target` (creating its parent), or say which
    /// restore holds it. Every error is the caller's input: one line
    /// naming the data directory.
    pub fn acquire(target: &Path) -> Result<TargetLock, String> {
        let shown = target.display();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = target.file_name().ok_or_else(|| format!("--data-dir {shown} has no name"))?;
        let base = base.to_string_lossy();
        fs::create_dir_all(&parent).map_err(|e| format!("--data-dir {shown}: creating {}: {e}", parent.display()))?;
        let path = parent.join(format!(".{base}.restore.lock"));
        let lock_err = |e: std::io::Error| format!("--data-dir {shown}: lock file {}: {e}", path.display());
        // Bounded: each retry means another restore removed the file in between.
        for _ in 0..100 {
            let mut file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                // A symlink planted at the lock's name is not followed.
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(lock_err)?;
            // SAFETY: flock on a descriptor we own; LOCK_NB never blocks.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(lock_err(e));
                }
                let owner = match holder(&mut file) {
                    Some(pid) => format!("another restore (pid {pid})"),
                    None => "another restore".to_string(),
                };
                return Err(format!(
                    "--data-dir {shown}: {owner} is writing it (it holds {}); wait for it to end or stop it",
                    path.display()
                ));
            }
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0).map_err(lock_err)?;
            file.write_all(std::process::id().to_string().as_bytes()).map_err(lock_err)?;
            signals::remove_on_signal(&path);
            return Ok(TargetLock { file, path, parent, stem: format!(".{base}.restore-") });
        }
        Err(format!("--data-dir {shown}: lock file {} keeps being replaced", path.display()))
    }

    /// `<parent>/.<name>.restore-<our pid>`.
    pub fn staging_path(&self) -> PathBuf {
        self.parent.join(format!("{}{}", self.stem, std::process::id()))
    }

    /// Remove the staging directories of restores that died, and only
    /// those: see [`abandoned`]. Anything else with a similar name stays,
    /// with a WARN when it looked like one of ours.
    pub fn remove_leftovers(&self) -> anyhow::Result<()> {
        let entries = fs::read_dir(&self.parent)
            .map_err(|e| anyhow::anyhow!("listing {} for leftovers: {e}", self.parent.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&self.stem)).and_then(canonical_pid) else {
                continue;
            };
            let path = entry.path();
            match abandoned(&path, pid) {
                Ok(()) => {
                    warn!("Removing {}, left over from an interrupted restore (pid {pid})", path.display());
                    if let Err(e) = fs::remove_dir_all(&path) {
                        warn!("Could not remove {}: {e}", path.display());
                    }
                }
                Err(why) => warn!("Leaving {} alone: {why}", path.display()),
            }
        }
        Ok(())
    }
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        // Removed while still locked, and only if it is still our file (a
        // user may have deleted it and another restore made a new one).
        if same_file(&self.file, &self.path) {
            let _ = fs::remove_file(&self.path);
        }
        signals::cleanup_list().retain(|p| p != &self.path);
    }
}

/// The pid written in the lock file by its holder, which writes it right
/// after locking: a moment's wait covers a holder that just started.
fn holder(file: &mut File) -> Option<u32> {
    for _ in 0..20 {
        let mut text = String::new();
        if file.rewind().is_ok()
            && file.read_to_string(&mut text).is_ok()
            && let Some(pid) = canonical_pid(text.trim())
        {
            return Some(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

/// Whether `path` still names the file `file` has open.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A pid as `format!` writes one: digits without a leading zero, and a
/// value `kill(2)` takes as one process (0 and negative ones mean groups).
fn canonical_pid(s: &str) -> Option<u32> {
    let pid: u32 = s.parse().ok()?;
    (pid >= 1 && pid <= i32::MAX as u32 && pid.to_string() == s).then_some(pid)
}

/// `Ok` when the directory at `path`, named for `pid`, is provably a dead
/// restore's staging directory: a real directory (not a symlink) of ours,
/// holding only what a restore makes, and no process `pid` is running
/// (or it is us, and we have not made ours yet).
fn abandoned(path: &Path, pid: u32) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_dir() {
        return Err("not a directory".into());
    }
    // SAFETY: geteuid has no preconditions.
    if meta.uid() != unsafe { libc::geteuid() } {
        return Err(format!("owned by uid {}, not us", meta.uid()));
    }
    if pid != std::process::id() && alive(pid) {
        return Err(format!("process {pid} is still running"));
    }
    let entries = fs::read_dir(path).map_err(|e| e.to_string())?;
    for entry in entries {
        let name = entry.map_err(|e| e.to_string())?.file_name();
        if !STAGING_ENTRIES.iter().any(|s| name == *s) {
            return Err(format!("it holds {}, which a restore does not make", name.to_string_lossy()));
        }
    }
    Ok(())
}

/// Whether process `pid` exists (EPERM: it does, as another user's).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks; canonical_pid keeps pid in 1..=i32::MAX.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_canonical_and_single_processes() {
        assert_eq!(canonical_pid("123"), Some(123));
        for bad in ["", "0", "0123", "+5", "-1", "notes", "2147483648", "12 ", "١٢"] {
            assert_eq!(canonical_pid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_second_lock_names_the_holder_and_the_file_goes_with_the_lock() {
        let d = crate::test_scratch::dir("lock");
        let target = d.join("data");
        let held = TargetLock::acquire(&target).unwrap();
        let lock_file = d.join(".data.restore.lock");
        assert_eq!(fs::read_to_string(&lock_file).unwrap(), std::process::id().to_string());
        // flock conflicts between two open files even within one process.
        let e = TargetLock::acquire(&target).err().unwrap();
        assert!(e.contains(&format!("another restore (pid {})", std::process::id())), "{e}");
        assert!(e.starts_with(&format!("--data-dir {}: ", target.display())) && !e.contains('\n'), "{e}");
        drop(held);
        assert!(!lock_file.exists());
        // A lock file left by a killed restore is simply taken over.
        fs::write(&lock_file, "999999").unwrap();
        let again = TargetLock::acquire(&target).unwrap();
        assert_eq!(fs::read_to_string(&lock_file).unwrap(), std::process::id().to_string());
        assert_eq!(again.staging_path(), d.join(format!(".data.restore-{}", std::process::id())));
    }

    #[test]
    fn only_provable_leftovers_are_removed() {
        let d = crate::test_scratch::dir("leftovers");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let staged = |name: &str, entries: &[&str]| {
            let p = d.join(name);
            fs::create_dir_all(&p).unwrap();
            for e in entries {
                fs::create_dir_all(p.join(e)).unwrap();
            }
            p
        };
        let gone = staged(&format!(".data.restore-{dead}"), &["member", "fetch"]);
        let empty = staged(&format!(".data.restore-{}", std::process::id()), &[]);
        let kept = [
            staged(".data.restore-notes", &["member"]),
            staged(&format!(".data.restore-0{dead}"), &[]),
            staged(&format!(".data.restore-{}", std::os::unix::process::parent_id()), &["member"]),
            staged(&format!(".data.restore-{}", dead + 1_000_000), &["member", "notes.txt"]),
            staged(&format!(".other.restore-{dead}"), &[]),
        ];
        std::os::unix::fs::symlink(&kept[0], d.join(format!(".data.restore-{}", dead + 2_000_000))).unwrap();
        let lock = TargetLock::acquire(&d.join("data")).unwrap();
        lock.remove_leftovers().unwrap();
        assert!(!gone.exists() && !empty.exists());
        for k in &kept {
            assert!(k.is_dir(), "{} must stay", k.display());
        }
        assert!(d.join(format!(".data.restore-{}", dead + 2_000_000)).is_symlink());
    }
}
