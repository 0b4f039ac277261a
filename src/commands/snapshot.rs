//! `snapshot`: one full snapshot with `--once`, else the long-running
//! snapshotter (full snapshots on a schedule, deltas, garbage collection).

use crate::flags::hiargs::SnapshotConfig;
use crate::{backup, continuous};

pub fn run(cfg: &SnapshotConfig) -> i32 {
    let endpoints = match super::open(&cfg.endpoints) {
        Ok(e) => e,
        Err(code) => return code,
    };
    match &cfg.scheduled {
        Some(settings) => continuous::run(&cfg.job, &endpoints, settings),
        None => {
            let code = cfg.job.take(&endpoints, cfg.require_all_endpoints).0;
            // An endpoint detached from the snapshot may still be finishing
            // or aborting its upload: give it the same grace once more.
            let left = backup::wait_for_background_uploads(endpoints.max_lag);
            if left > 0 {
                log::warn!(
                    "{left} detached upload(s) still running at exit: an incomplete multipart upload (never visible) \
                     may remain on that endpoint"
                );
            }
            code
        }
    }
}
