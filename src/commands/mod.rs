//! One module per command: its configuration (from `flags::hiargs`) in, its
//! exit code out. Commands open the endpoints and call the domain modules;
//! nothing below this layer imports `flags`.

pub mod gc;
pub mod list;
pub mod restore;
pub mod snapshot;

use crate::endpoint::{self, Endpoint};

/// Open every endpoint; a failure is logged and gives the usage exit code.
fn open(configs: &[endpoint::Config]) -> Result<Vec<Endpoint>, i32> {
    endpoint::open_all(configs).map_err(|e| {
        log::error!("{e}");
        crate::exit::USAGE
    })
}
