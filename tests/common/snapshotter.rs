//! The long-running `snapshot` as a child process for the tests: started
//! with both endpoints' flags, its log in a file, waited on with bounds,
//! stopped by SIGTERM.

use super::cli::{binary, store_args};
use super::restore::scratch;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The snapshotter running in the background, its log in a file.
pub struct Snapshotter {
    pub child: Child,
    log: std::path::PathBuf,
}

pub fn start(etcd: &str, prefix: &str, extra: &[&str]) -> Snapshotter {
    let mut args = vec![
        "snapshot".to_string(),
        format!("--endpoints={etcd}"),
        "--delta-snapshot-period=1s".into(),
        "--garbage-collection-period=0".into(),
    ];
    args.extend(store_args(prefix));
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = scratch("snapshotter").join("log");
    let child = binary(&args).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    Snapshotter { child, log }
}

impl Snapshotter {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (bounded) until the log has `line`.
    pub fn wait_for(&self, line: &str) {
        self.wait_for_lines(&[line], 1);
    }

    /// Wait (bounded) until `n` log lines contain all of `parts`.
    pub fn wait_for_lines(&self, parts: &[&str], n: usize) {
        let end = Instant::now() + Duration::from_secs(60);
        while self.log().lines().filter(|l| parts.iter().all(|p| l.contains(p))).count() < n {
            assert!(Instant::now() < end, "not {n} lines with {parts:?} within 60s; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit code (bounded) and the whole log.
    pub fn stop(mut self) -> String {
        let status = super::terminate(&mut self.child, "the snapshotter");
        let log = self.log();
        eprintln!("{log}");
        assert_eq!(status.code(), Some(0), "SIGTERM must end the snapshotter with 0");
        assert!(log.contains("INFO Snapshotter stopped"), "{log}");
        log
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
