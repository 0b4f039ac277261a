//! What became of one snapshot on each endpoint, and how it is told: the
//! per-endpoint log lines the spec shows, the exit code, and the
//! `--metrics-file` record.

use crate::endpoint::Role;
use crate::snapshot::{Kind, SnapshotName};
use log::{error, info, warn};
use std::path::PathBuf;
use std::time::Instant;

/// What became of one snapshot on each endpoint.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub results: Vec<(Role, Result<(), String>)>,
    pub bytes: u64,
}

impl Outcome {
    pub fn stored_on(&self, role: Role) -> bool {
        self.results.iter().any(|(r, res)| *r == role && res.is_ok())
    }

    pub fn stored_anywhere(&self) -> bool {
        self.results.iter().any(|(_, res)| res.is_ok())
    }
}

pub use crate::time::unix_now;

/// Log what happened on each endpoint and pick the exit code.
pub fn report(o: &Outcome, require_all_endpoints: bool) -> i32 {
    let name = &o.name;
    for (role, r) in &o.results {
        match r {
            Ok(()) => info!("Successfully saved snapshot {name} to {} endpoint", role.name()),
            Err(e) => error!("Failed to save snapshot {name} to {} endpoint: {e}", role.name()),
        }
    }
    let ok = o.results.iter().filter(|(_, r)| r.is_ok()).count();
    if ok == o.results.len() {
        if ok > 1 {
            info!("Snapshot {name} successfully saved to both endpoints");
        }
        crate::exit::OK
    } else if ok > 0 {
        warn!(
            "Snapshot {name} saved to only one endpoint - Primary: {}, Secondary: {}",
            o.stored_on(Role::Primary),
            o.stored_on(Role::Secondary)
        );
        if require_all_endpoints { crate::exit::DEGRADED } else { crate::exit::OK }
    } else {
        let causes: Vec<String> = o
            .results
            .iter()
            .filter_map(|(role, r)| r.as_ref().err().map(|e| format!("{}: {e}", role.name())))
            .collect();
        error!("Snapshot {name} was not saved to any endpoint - {}", causes.join("; "));
        crate::exit::FAILED
    }
}

/// Reply with an endpoint's `result` for `name` on `reply`; when nobody
/// waits for it any more (the endpoint was detached for lagging), log it.
pub fn reply_or_log<T>(
    reply: &crossbeam_channel::Sender<(T, Result<(), String>)>,
    key: T,
    name: &str,
    role: Role,
    result: Result<(), String>,
) {
    if let Err(crossbeam_channel::SendError((_, result))) = reply.send((key, result)) {
        match result {
            Ok(()) => info!("Saved snapshot {name} to {} endpoint after all (late)", role.name()),
            Err(e) => warn!("Failed to save snapshot {name} to {} endpoint (late): {e}", role.name()),
        }
    }
}

/// The process's metrics (one model, `crate::metrics::Model`), for the
/// endpoints in `roles`; written to `--metrics-file` when given.
#[derive(Debug, Clone, Default)]
pub struct MetricsFile {
    pub model: std::sync::Arc<crate::metrics::Model>,
    pub roles: Vec<Role>,
}

impl MetricsFile {
    pub fn new(path: Option<PathBuf>, roles: Vec<Role>) -> MetricsFile {
        MetricsFile { model: std::sync::Arc::new(crate::metrics::Model::new(path)), roles }
    }

    fn failed(&self, e: std::io::Error) {
        let path = self.model.path().map(|p| p.display().to_string()).unwrap_or_default();
        error!("Cannot write the metrics file {path}: {e}");
    }

    /// Record one attempt; `outcome` is `None` when nothing could be tried
    /// (etcd unreachable). A failure to write is logged; the backup's own
    /// result stands.
    pub fn record(&self, kind: Kind, outcome: Option<&Outcome>, started: Instant) {
        let stored: Vec<(Role, bool)> =
            self.roles.iter().map(|&r| (r, outcome.is_some_and(|o| o.stored_on(r)))).collect();
        let snapshot = outcome.and_then(|o| SnapshotName::parse(&o.name).map(|n| (n, o.bytes)));
        let secs = started.elapsed().as_secs_f64();
        if let Err(e) = self.model.record(&stored, kind, snapshot.as_ref(), secs, unix_now()) {
            self.failed(e);
        }
    }

    /// Record what one verify found of each endpoint.
    pub fn record_verified(&self, verified: &[(Role, Option<u64>, bool)]) {
        if let Err(e) = self.model.record_verified(verified, unix_now()) {
            self.failed(e);
        }
    }

    /// Record each member's defragmentation time.
    pub fn record_defragmented(&self, members: &[(String, f64)]) {
        if let Err(e) = self.model.record_defragmented(members) {
            self.failed(e);
        }
    }

    /// Count the snapshots one reconcile cycle copied to each endpoint.
    pub fn record_reconciled(&self, copied: &[(Role, u64)]) {
        if let Err(e) = self.model.record_reconciled(copied) {
            self.failed(e);
        }
    }
}
