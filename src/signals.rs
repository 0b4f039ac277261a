//! SIGINT/SIGTERM handling. The signals are blocked in every thread and
//! taken by one watcher thread with sigwait(2), so nothing is interrupted
//! mid-syscall. The watcher sets a flag that long loops check, so a backup
//! aborts its uploads and a restore removes its staging directory by itself.
//! If the process is still running after a grace period (a read stalled on a
//! dead connection), or on a second signal, the watcher removes the
//! registered directories itself and exits.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static CLEANUP: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
const GRACE: Duration = Duration::from_secs(10);

/// Take SIGINT and SIGTERM on a watcher thread. Call before any other
/// thread is started: threads inherit the blocked mask.
pub fn install() {
    // SAFETY: plain libc signal-set calls on a local, zeroed sigset_t.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        loop {
            let mut sig = 0;
            // SAFETY: waits for one of the signals blocked above.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            let name = if sig == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                log::error!("Second {name}: stopping now");
                clean_up_and_exit();
            }
            log::warn!("Received {name}: stopping (a second signal stops at once)");
            std::thread::spawn(|| {
                std::thread::sleep(GRACE);
                log::error!("Still running {}s after the signal: stopping now", GRACE.as_secs());
                clean_up_and_exit();
            });
        }
    });
    if let Err(e) = spawned {
        log::warn!("cannot start the signal thread ({e}); SIGINT/SIGTERM end the process at once");
        // SAFETY: undoes the block above on this thread.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

/// Sleep for `d`, waking within 200 ms of SIGINT/SIGTERM.
pub fn sleep(d: Duration) {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end && !interrupted() {
        std::thread::sleep(Duration::from_millis(200).min(end.saturating_duration_since(std::time::Instant::now())));
    }
}

fn clean_up_and_exit() -> ! {
    // Holding the lock for good: a commit in progress finishes first, and
    // none can start after.
    let dirs = cleanup_list();
    // Last registered first: a restore's lock file goes after its staging directory.
    for dir in dirs.iter().rev() {
        if std::fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
            let _ = std::fs::remove_file(dir);
            continue;
        }
        // Another thread may still be creating files in it: retry a little.
        for _ in 0..20 {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => std::thread::sleep(Duration::from_millis(10)),
                _ => break,
            }
        }
        log::warn!("Removed the unfinished {}", dir.display());
    }
    std::process::exit(crate::exit::FAILED);
}

/// A directory (or a file, such as a lock file) to remove if the process
/// is stopped by a signal.
pub fn remove_on_signal(dir: &Path) {
    cleanup_list().push(dir.to_path_buf());
}

/// The directories removed on a signal. Holding the guard keeps the
/// watcher from cleaning up (and exiting), so a rename done under it is
/// never half observed; unregister a directory by removing it from the list.
pub fn cleanup_list() -> MutexGuard<'static, Vec<PathBuf>> {
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err` once a signal asked us to stop.
pub fn check() -> anyhow::Result<()> {
    if interrupted() { Err(anyhow::anyhow!("interrupted by a signal")) } else { Ok(()) }
}
