//! One module per command: its configuration (from `flags::hiargs`) in, its
//! exit code out. Commands open the endpoints and call the domain modules;
//! nothing below this layer imports `flags`.

pub mod copy;
pub mod gc;
pub mod list;
pub mod reconcile;
pub mod restore;
pub mod server;
pub mod snapshot;
pub mod verify;

use crate::endpoint::{Configs, Endpoints};

/// Open every endpoint; a failure is logged and gives the usage exit code.
fn open(configs: &Configs) -> Result<Endpoints, i32> {
    configs.open().map_err(|e| {
        log::error!("{e}");
        crate::exit::USAGE
    })
}
