//! `copy`: the snapshots of a source location that the primary (and the
//! secondary) lack, copied to them once, now; the exit code says how many
//! destinations hold every snapshot selected.

use crate::flags::hiargs::CopyConfig;
use log::{error, info};

pub fn run(cfg: &CopyConfig) -> i32 {
    let source = match cfg.source.open() {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return crate::exit::USAGE;
        }
    };
    let destinations = match super::open(&cfg.destinations) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let summaries = match crate::copy::run(&source, &destinations, crate::report::unix_now(), &cfg.options) {
        Ok(s) => s,
        Err(e) => {
            error!("Copy failed: {e}");
            return crate::exit::FAILED;
        }
    };
    let complete = summaries.iter().filter(|s| s.complete()).count();
    let copied: usize = summaries.iter().map(|s| s.copied).sum();
    if complete == summaries.len() {
        info!("Copy done: {copied} copied; every destination holds every snapshot selected");
        return crate::exit::OK;
    }
    let short: Vec<&str> = summaries.iter().filter(|s| !s.complete()).map(|s| s.role.name()).collect();
    error!("Copy incomplete: {copied} copied; the {} endpoint lacks snapshots selected", short.join(" and "));
    if complete > 0 { crate::exit::DEGRADED } else { crate::exit::FAILED }
}
