//! `snapshot reconcile`: one reconcile cycle now, so that each endpoint
//! alone holds every snapshot the garbage collection keeps.

use crate::flags::hiargs::ReconcileConfig;
use crate::{reconcile, report};
use log::{error, info};

pub fn run(cfg: &ReconcileConfig) -> i32 {
    let endpoints = match super::open(&cfg.endpoints) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let now = report::unix_now() as i64;
    let summaries = reconcile::run(&endpoints, now, &cfg.options, &|_| false, &Default::default());
    if !cfg.options.dry_run {
        cfg.metrics.record_reconciled(&reconcile::copied(&summaries));
    }
    let copied: usize = summaries.iter().map(|s| s.copied).sum();
    let verb = if cfg.options.dry_run { "would copy" } else { "copied" };
    if summaries.iter().all(reconcile::Summary::complete) {
        info!("Reconcile {verb} {copied} snapshots; both endpoints hold every snapshot garbage collection keeps");
        return crate::exit::OK;
    }
    let failed: usize = summaries.iter().map(|s| s.failed).sum();
    let skipped: Vec<&str> = summaries.iter().filter(|s| s.skipped).map(|s| s.role.name()).collect();
    let skipped =
        if skipped.is_empty() { String::new() } else { format!("; skipped: {} endpoint", skipped.join(", ")) };
    error!("Reconcile incomplete: {verb} {copied} snapshots, {failed} failed{skipped}");
    crate::exit::FAILED
}
