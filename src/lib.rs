//! etcd-backup-restore: back up etcd to two S3-compatible endpoints in one
//! streaming pass, and restore from whichever endpoint has the data.

pub mod backup;
pub mod catalog;
pub mod commands;
pub mod compression;
pub mod continuous;
pub mod copy;
pub mod credentials;
pub mod cron;
pub mod datadir;
pub mod defrag;
pub mod delta;
pub mod encryption;
pub mod endpoint;
pub mod etcd;
pub mod flags;
pub mod gc;
pub mod logging;
pub mod metrics;
pub mod reconcile;
pub mod record;
pub mod report;
pub mod restore;
pub mod server;
pub mod signals;
pub mod snapshot;
pub mod store;
pub mod time;
pub mod userfile;
pub mod verify;
pub mod xml;

#[cfg(test)]
pub(crate) mod test_scratch;

/// Process exit codes, distinct so that systemd units and scripts can tell
/// a degraded backup from a failed one.
pub mod exit {
    pub const OK: i32 = 0;
    /// Nothing usable was stored (or etcd could not be read).
    pub const FAILED: i32 = 1;
    /// Bad flags or configuration; nothing was attempted.
    pub const USAGE: i32 = 2;
    /// Stored on one endpoint only, with `--require-all-endpoints`.
    pub const DEGRADED: i32 = 3;
}
