//! Log lines as the spec shows them: `<UTC time> INFO <message>`, with the
//! upstream (logrus) four-letter level tags, on standard error.

use log::{Level, LevelFilter};
use std::io::Write;

use crate::time::utc_rfc3339;

pub fn init(level: LevelFilter) {
    let mut b = env_logger::Builder::new();
    // Our own lines at the chosen level; the libraries' only when tracing.
    let deps = if level == LevelFilter::Trace { LevelFilter::Debug } else { LevelFilter::Warn };
    b.filter_level(deps).filter_module("etcd_backup_restore", level);
    b.format(|buf, r| {
        let tag = match r.level() {
            Level::Error => "ERRO",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBU",
            Level::Trace => "TRAC",
        };
        writeln!(buf, "{} {tag} {}", utc_rfc3339(std::time::SystemTime::now()), r.args())
    });
    b.target(env_logger::Target::Stderr);
    let _ = b.try_init();
}
