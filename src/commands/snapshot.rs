//! `snapshot`: one full snapshot with `--once`, else the long-running
//! snapshotter (full snapshots on a schedule, deltas, garbage collection).

use crate::flags::hiargs::SnapshotConfig;
use crate::record::Recorder;
use crate::{backup, continuous};
use std::time::Duration;

pub fn run(cfg: &SnapshotConfig) -> i32 {
    let endpoints = match super::open(&cfg.endpoints) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let recorder = Recorder::start(&cfg.job.etcd, &endpoints);
    let code = match &cfg.scheduled {
        Some(settings) => continuous::run(&cfg.job, &endpoints, settings, &recorder),
        None => {
            let code = cfg.job.take(&endpoints, cfg.require_all_endpoints, &recorder).0;
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
    };
    // Bounded like one etcd call: a record is worth a short wait, not a hang.
    recorder.finish(cfg.job.etcd.snapshot_timeout.min(Duration::from_secs(60)));
    code
}
