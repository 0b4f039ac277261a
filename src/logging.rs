//! Log lines as the spec shows them: `<UTC time> INFO <message>`, with the
//! upstream (logrus) four-letter level tags, on standard error.

use log::{Level, LevelFilter};
use std::io::Write;

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

/// `2026-11-28T17:30:35Z`, without a date crate.
pub fn utc_rfc3339(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_utc() {
        let at = |s| utc_rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_640_995_200), "2022-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_887_035), "2026-11-28T17:30:35Z");
    }
}
