//! `restore`: write an etcd data directory from the latest (or the named)
//! snapshot chain on either endpoint.

use crate::flags::hiargs::RestoreConfig;
use crate::restore::{self, Failure};

pub fn run(cfg: &RestoreConfig) -> i32 {
    let endpoints = match super::open(&cfg.endpoints) {
        Ok(e) => e,
        Err(code) => return code,
    };
    match restore::run(&cfg.options, &endpoints) {
        Ok(()) => crate::exit::OK,
        Err(Failure::Usage(msg)) => {
            log::error!("{msg}");
            crate::exit::USAGE
        }
        Err(Failure::Failed(e)) => {
            log::error!("Failed to restore: {e:#}");
            crate::exit::FAILED
        }
    }
}
