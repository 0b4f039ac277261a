//! `snapshot gc`: one garbage collection cycle on every endpoint, now.

use crate::flags::hiargs::GcOnceConfig;
use crate::{gc, report};
use log::{error, info};

pub fn run(cfg: &GcOnceConfig) -> i32 {
    let endpoints = match super::open(&cfg.endpoints) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let now = report::unix_now() as i64;
    match gc::collect(&endpoints, cfg.policy, cfg.delta_retention, now, cfg.dry_run, &|_| false) {
        Ok(deleted) => {
            let verb = if cfg.dry_run { "would delete" } else { "deleted" };
            info!("Garbage collection {verb} {} objects", deleted.len());
            crate::exit::OK
        }
        Err(e) => {
            error!("{e}");
            crate::exit::FAILED
        }
    }
}
