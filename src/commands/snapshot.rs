//! `snapshot`: one full snapshot with `--once`, else the long-running
//! snapshotter (full snapshots on a schedule, deltas, garbage collection).

use crate::continuous;
use crate::flags::hiargs::SnapshotConfig;

pub fn run(cfg: &SnapshotConfig) -> i32 {
    let endpoints = match super::open(&cfg.endpoints) {
        Ok(e) => e,
        Err(code) => return code,
    };
    match &cfg.scheduled {
        Some(settings) => continuous::run(&cfg.job, &endpoints, settings),
        None => cfg.job.take(&endpoints, cfg.require_all_endpoints).0,
    }
}
