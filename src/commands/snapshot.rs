//! `snapshot`: one full snapshot with `--once`, else the long-running
//! snapshotter (full snapshots on a schedule, deltas, garbage collection).

use crate::flags::hiargs::SnapshotConfig;
use crate::record::Recorder;
use crate::{backup, continuous};
use std::time::{Duration, Instant};

pub fn run(cfg: &SnapshotConfig) -> i32 {
    let endpoints = match super::open(&cfg.endpoints) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let recorder = Recorder::start(&cfg.job.etcd, &endpoints);
    let started = Instant::now();
    let (code, record_grace) = match &cfg.scheduled {
        // Bounded like one etcd call: a record is worth a short wait, not a hang.
        Some(settings) => (continuous::run(&cfg.job, &endpoints, settings, &recorder), RECORD_WAIT),
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
            // etcd hashes once the snapshot is stored, its db just read into
            // the page cache (1 GB: 0.3-0.5 s; 7.9 GB: 44-81 s in the scale
            // bench): that may lengthen the run by a tenth at most.
            (code, (started.elapsed() / 10).clamp(Duration::from_secs(2), RECORD_WAIT))
        }
    };
    recorder.finish(cfg.job.etcd.snapshot_timeout.min(record_grace));
    code
}

/// The longest wait at exit for HashKV records.
pub const RECORD_WAIT: Duration = Duration::from_secs(60);
