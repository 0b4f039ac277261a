//! Time without a date crate: civil (proleptic Gregorian, UTC) dates, the
//! RFC 3339 forms logs and delta snapshots print, and Go's duration syntax,
//! which upstream's flags and robfig/cron's `@every` both accept.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-11-28T17:30:35Z`: whole seconds, as the log lines show time.
pub fn utc_rfc3339(t: SystemTime) -> String {
    unix_rfc3339(t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

/// [`utc_rfc3339`] of Unix seconds, for any value: a time from an object
/// name never becomes a `SystemTime`, whose arithmetic panics on overflow.
pub fn unix_rfc3339(secs: u64) -> String {
    let mut s = String::with_capacity(20);
    push_rfc3339_nano(&mut s, i64::try_from(secs).unwrap_or(i64::MAX), 0);
    s
}

/// Go's `time.RFC3339Nano` in UTC: fraction trimmed of trailing zeros, none when zero.
pub fn push_rfc3339_nano(buf: &mut String, unix_secs: i64, nanos: u32) {
    let secs = unix_secs.saturating_add(i64::from(nanos / 1_000_000_000));
    let nanos = nanos % 1_000_000_000;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let _ = write!(buf, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, sod / 60 % 60, sod % 60);
    if nanos != 0 {
        let _ = write!(buf, ".{nanos:09}");
        // Safe to trim: the fraction has a non-zero digit, so this stops inside it.
        while buf.ends_with('0') {
            buf.pop();
        }
    }
    buf.push('Z');
}

/// Go's `time.ParseDuration` (`30s`, `1h30m`, `.5s`, `+2m`, `3µs`, up to
/// about 292 years), except that a negative duration is an error: nothing
/// here (timeouts, periods, `@every`) has a meaning for one.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || "invalid duration".to_string();
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    // Nanoseconds, capped at Go's i64 like Go.
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(invalid());
        }
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration {s:?}")),
            _ => return Err(format!("unknown unit {unit:?} in duration {s:?}")),
        };
        let int: i128 = if int.is_empty() { 0 } else { int.parse().map_err(|_| invalid())? };
        let frac_digits = &frac[..frac.len().min(18)];
        let frac_value: i128 = if frac_digits.is_empty() { 0 } else { frac_digits.parse().map_err(|_| invalid())? };
        total +=
            int.checked_mul(scale).ok_or_else(invalid)? + frac_value * scale / 10i128.pow(frac_digits.len() as u32);
        if total > i128::from(i64::MAX) {
            return Err(invalid());
        }
        rest = tail;
    }
    if neg && total != 0 {
        return Err(format!("negative duration {s:?}"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn civil_conversions_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for z in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn formats_utc() {
        let at = |s| utc_rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_640_995_200), "2022-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_887_035), "2026-11-28T17:30:35Z");
        // Total: no value panics, the largest ones show a far year.
        assert_eq!(unix_rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert!(unix_rfc3339(u64::MAX).ends_with('Z'));
        let mut s = String::new();
        push_rfc3339_nano(&mut s, i64::MAX, u32::MAX);
        push_rfc3339_nano(&mut s, i64::MIN, u32::MAX);
        // Sub-second parts are not shown.
        assert_eq!(utc_rfc3339(UNIX_EPOCH + Duration::from_millis(1_500)), "1970-01-01T00:00:01Z");
    }

    #[test]
    fn rfc3339_nano_like_go() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00Z"),
            (0, 100_000_000, "1970-01-01T00:00:00.1Z"),
            (-1, 999_999_999, "1969-12-31T23:59:59.999999999Z"),
            (951_868_800, 0, "2000-03-01T00:00:00Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59Z"),
            (10, 2_500_000_000, "1970-01-01T00:00:12.5Z"),
        ];
        for (secs, nanos, want) in cases {
            let mut s = String::new();
            push_rfc3339_nano(&mut s, secs, nanos);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn go_duration_grammar() {
        let ns = Duration::from_nanos;
        assert_eq!(parse_duration("1h30m"), Ok(ns(5_400_000_000_000)));
        assert_eq!(parse_duration(".5s"), Ok(ns(500_000_000)));
        assert_eq!(parse_duration("1.s"), Ok(ns(1_000_000_000)));
        assert_eq!(parse_duration("+2m"), Ok(ns(120_000_000_000)));
        assert_eq!(parse_duration("3µs"), Ok(ns(3_000)));
        assert_eq!(parse_duration("3μs"), Ok(ns(3_000)));
        assert_eq!(parse_duration("1h2m3s4ms5us6ns"), Ok(ns(3_723_004_005_006)));
        assert_eq!(parse_duration("-0"), Ok(Duration::ZERO));
        assert!(parse_duration(".s").is_err());
        assert!(parse_duration("1..5s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("+").is_err());
        assert!(parse_duration("3000000h").is_err());
        // Go accepts negative durations; nothing here has a use for one.
        assert_eq!(parse_duration("-2m"), Err("negative duration \"-2m\"".into()));
    }
}
