//! Five-field cron schedules with the semantics of robfig/cron v3 `ParseStandard`
//! (what upstream uses for `--schedule`), evaluated in UTC.
//!
//! robfig evaluates in the process's local zone; upstream's containers run in UTC,
//! so UTC is what upstream does in practice. A `TZ=`/`CRON_TZ=` prefix is accepted
//! only when it names UTC.

use crate::time::{civil_from_days, days_from_civil, parse_duration};

const DAY: i64 = 86_400;

/// Set when a field's expression was `*` or `?` (robfig's `starBit`).
const STAR: u64 = 1 << 63;

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: Field = Field { name: "hour", min: 0, max: 23, names: &[] };
const DOM: Field = Field { name: "day-of-month", min: 1, max: 31, names: &[] };
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
};
// robfig's day-of-week bounds are 0-6: 7 is rejected, unlike Vixie cron.
const DOW: Field =
    Field { name: "day-of-week", min: 0, max: 6, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] };

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Spec { minute: u64, hour: u64, dom: u64, month: u64, dow: u64 },
    Every { secs: i64 },
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    kind: Kind,
    /// As given, for logs.
    spec: String,
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\" (UTC)", self.spec)
    }
}

impl Schedule {
    /// Parse a standard 5-field spec (minute hour day-of-month month day-of-week)
    /// or a descriptor (`@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`,
    /// `@every <Go duration>`).
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        Ok(Schedule { kind: Self::parse_kind(spec)?, spec: spec.trim().to_string() })
    }

    fn parse_kind(spec: &str) -> Result<Kind, String> {
        let mut spec = spec;
        if let Some(rest) = spec.strip_prefix("CRON_TZ=").or_else(|| spec.strip_prefix("TZ=")) {
            let (zone, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            if !matches!(zone, "UTC" | "Etc/UTC") {
                return Err(format!("time zone {zone:?} is not supported: schedules run in UTC"));
            }
            spec = rest.trim();
        }
        if spec.trim().is_empty() {
            return Err("empty schedule".into());
        }
        if spec.starts_with('@') {
            return parse_descriptor(spec);
        }
        let fields: Vec<&str> = spec.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {} in {spec:?}",
                fields.len()
            ));
        }
        Ok(Kind::Spec {
            minute: parse_field(fields[0], &MINUTE)?,
            hour: parse_field(fields[1], &HOUR)?,
            dom: parse_field(fields[2], &DOM)?,
            month: parse_field(fields[3], &MONTH)?,
            dow: parse_field(fields[4], &DOW)?,
        })
    }

    /// The first activation strictly after `after` (unix seconds), at second 0 of a
    /// minute (except `@every`, which is `after` + interval). `None` if there is
    /// none within robfig's search limit (the year of `after + 1s` plus five).
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let (minute, hour, dom, month, dow) = match self.kind {
            Kind::Every { secs } => return after.checked_add(secs),
            Kind::Spec { minute, hour, dom, month, dow } => (minute, hour, dom, month, dow),
        };
        let start = after.checked_add(1)?;
        let year_limit = civil_from_days(start.div_euclid(DAY)).0 + 5;
        // Only second 0 matches, so start at the first whole minute at or after `start`.
        let t = start.checked_add(59)?.div_euclid(60) * 60;
        let (mut y, mut m, mut d) = civil_from_days(t.div_euclid(DAY));
        let secs_of_day = t.rem_euclid(DAY);
        let (mut h, mut mi) = ((secs_of_day / 3600) as u32, (secs_of_day % 3600 / 60) as u32);

        let day_matches = |y: i64, m: u32, d: u32| {
            let weekday = (days_from_civil(y, m, d) + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
            let (dom_ok, dow_ok) = (dom & 1 << d != 0, dow & 1 << weekday != 0);
            if dom & STAR != 0 || dow & STAR != 0 { dom_ok && dow_ok } else { dom_ok || dow_ok }
        };
        // Each step moves one field to its next candidate and resets the lower ones,
        // then re-checks from the top, like robfig's WRAP loop.
        loop {
            if y > year_limit {
                return None;
            }
            if month & 1 << m == 0 {
                (d, h, mi) = (1, 0, 0);
                m += 1;
                if m > 12 {
                    (y, m) = (y + 1, 1);
                }
            } else if !day_matches(y, m, d) {
                (h, mi) = (0, 0);
                (y, m, d) = next_day(y, m, d);
            } else if let Some(next_h) = next_bit(hour, h, 23) {
                if next_h != h {
                    (h, mi) = (next_h, 0);
                } else if let Some(next_mi) = next_bit(minute, mi, 59) {
                    mi = next_mi;
                    return Some(days_from_civil(y, m, d) * DAY + i64::from(h) * 3600 + i64::from(mi) * 60);
                } else {
                    (h, mi) = (h + 1, 0);
                    if h > 23 {
                        h = 0;
                        (y, m, d) = next_day(y, m, d);
                    }
                }
            } else {
                (h, mi) = (0, 0);
                (y, m, d) = next_day(y, m, d);
            }
        }
    }
}

/// The lowest set bit of `bits` in `from..=max`.
fn next_bit(bits: u64, from: u32, max: u32) -> Option<u32> {
    let rest = (bits & !STAR) >> from << from;
    let b = rest.trailing_zeros();
    (b <= max).then_some(b)
}

fn next_day(y: i64, m: u32, d: u32) -> (i64, u32, u32) {
    if d < days_in_month(y, m) {
        (y, m, d + 1)
    } else if m < 12 {
        (y, m + 1, 1)
    } else {
        (y + 1, 1, 1)
    }
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn parse_field(field: &str, f: &Field) -> Result<u64, String> {
    let err = |msg: String| format!("{} field {field:?}: {msg}", f.name);
    let mut bits = 0;
    // Like Go's strings.FieldsFunc, empty items between commas are skipped.
    for expr in field.split(',').filter(|e| !e.is_empty()) {
        bits |= parse_range(expr, f).map_err(err)?;
    }
    if bits == 0 {
        // robfig accepts a field of only commas and then never fires; refuse it instead.
        return Err(err("no values".into()));
    }
    Ok(bits)
}

/// One list item: `*`, `?`, `N`, `A-B`, each optionally followed by `/STEP`.
fn parse_range(expr: &str, f: &Field) -> Result<u64, String> {
    let mut slash = expr.split('/');
    let range = slash.next().unwrap_or_default();
    let step = slash.next();
    if slash.next().is_some() {
        return Err(format!("too many '/' in {expr:?}"));
    }
    let mut hyphen = range.split('-');
    let low = hyphen.next().unwrap_or_default();
    let (mut start, mut end, mut star) = (f.min, f.max, true);
    // Like robfig, anything after `*-` is ignored.
    if low != "*" && low != "?" {
        star = false;
        start = parse_value(low, f)?;
        end = match (hyphen.next(), hyphen.next()) {
            (None, _) => start,
            (Some(high), None) => parse_value(high, f)?,
            (Some(_), Some(_)) => return Err(format!("too many '-' in {expr:?}")),
        };
        if start > end {
            return Err(format!("range {range:?} is reversed ({start} > {end})"));
        }
    }
    let step = match step {
        None => 1,
        Some(s) => {
            let n = parse_number(s)?;
            if n == 0 {
                return Err(format!("step in {expr:?} must be a positive number"));
            }
            if !range.contains('-') {
                end = f.max; // `N/step` means `N-max/step`
            }
            // Since robfig v3, `*/2` counts as a restriction for the day-of-month/week rule.
            if n > 1 {
                star = false;
            }
            n
        }
    };
    let mut bits = if star { STAR } else { 0 };
    let mut v = u64::from(start);
    while v <= u64::from(end) {
        bits |= 1 << v;
        v += step;
    }
    Ok(bits)
}

fn parse_value(s: &str, f: &Field) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    let v = match f.names.iter().position(|n| *n == lower) {
        Some(i) => i as u64 + u64::from(f.min),
        None => parse_number(s).map_err(|e| {
            if f.names.is_empty() { e } else { format!("{s:?} is neither a number nor a {} name", f.name) }
        })?,
    };
    if v < u64::from(f.min) || v > u64::from(f.max) {
        return Err(format!("value {v} out of range {}-{}", f.min, f.max));
    }
    Ok(v as u32)
}

/// A non-negative integer as Go's `strconv.Atoi` reads it (an optional `+` is allowed).
fn parse_number(s: &str) -> Result<u64, String> {
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n as u64),
        Ok(_) => Err(format!("negative number {s:?}")),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

fn parse_descriptor(spec: &str) -> Result<Kind, String> {
    let (hour, dom, month, dow) = match spec {
        "@yearly" | "@annually" => (1, 1 << 1, 1 << 1, all(&DOW)),
        "@monthly" => (1, 1 << 1, all(&MONTH), all(&DOW)),
        "@weekly" => (1, all(&DOM), all(&MONTH), 1),
        "@daily" | "@midnight" => (1, all(&DOM), all(&MONTH), all(&DOW)),
        "@hourly" => (all(&HOUR), all(&DOM), all(&MONTH), all(&DOW)),
        _ => {
            let Some(d) = spec.strip_prefix("@every ") else {
                return Err(format!("unrecognized descriptor {spec:?}"));
            };
            let every = parse_duration(d).map_err(|e| format!("@every {d:?}: {e}"))?;
            // Zero is no interval at all (robfig would make it 1s: a full
            // snapshot every second); a typo, refused.
            if every.is_zero() {
                return Err(format!("@every {d:?}: the interval must be greater than 0"));
            }
            // robfig's Every: sub-second parts are dropped and anything under 1s becomes 1s.
            let secs = every.as_secs().max(1) as i64;
            return Ok(Kind::Every { secs });
        }
    };
    Ok(Kind::Spec { minute: 1, hour, dom, month, dow })
}

fn all(f: &Field) -> u64 {
    (f.min..=f.max).fold(STAR, |bits, v| bits | 1 << v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of a UTC date-time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * DAY + h * 3600 + mi * 60
    }

    fn next(spec: &str, after: i64) -> i64 {
        Schedule::parse(spec).unwrap().next_after(after).unwrap()
    }

    fn err(spec: &str) -> String {
        Schedule::parse(spec).expect_err(spec)
    }

    #[test]
    fn default_schedule_fires_on_the_hour() {
        let s = "0 */1 * * *";
        assert_eq!(next(s, at(2024, 5, 1, 10, 0)), at(2024, 5, 1, 11, 0));
        assert_eq!(next(s, at(2024, 5, 1, 10, 0) - 1), at(2024, 5, 1, 10, 0));
        assert_eq!(next(s, at(2024, 5, 1, 10, 17) + 42), at(2024, 5, 1, 11, 0));
        assert_eq!(next(s, at(2024, 12, 31, 23, 30)), at(2025, 1, 1, 0, 0));
    }

    #[test]
    fn every_five_minutes() {
        let s = "*/5 * * * *";
        assert_eq!(next(s, at(2024, 5, 1, 10, 0)), at(2024, 5, 1, 10, 5));
        assert_eq!(next(s, at(2024, 5, 1, 10, 3) + 59), at(2024, 5, 1, 10, 5));
        assert_eq!(next(s, at(2024, 5, 1, 23, 55)), at(2024, 5, 2, 0, 0));
        assert_eq!(next("5/20 * * * *", at(2024, 5, 1, 10, 46)), at(2024, 5, 1, 11, 5));
        assert_eq!(next("10-20/5 * * * *", at(2024, 5, 1, 10, 16)), at(2024, 5, 1, 10, 20));
        assert_eq!(next("10-20/5 * * * *", at(2024, 5, 1, 10, 20)), at(2024, 5, 1, 11, 10));
    }

    #[test]
    fn weekday_names_and_numbers() {
        // 2024-05-01 is a Wednesday; the next Monday is 2024-05-06.
        assert_eq!(next("0 0 * * MON", at(2024, 5, 1, 12, 0)), at(2024, 5, 6, 0, 0));
        assert_eq!(next("0 0 * * mon", at(2024, 5, 1, 12, 0)), at(2024, 5, 6, 0, 0));
        assert_eq!(next("0 0 * * 1", at(2024, 5, 6, 0, 0)), at(2024, 5, 13, 0, 0));
        assert_eq!(next("0 0 * * sat,SUN", at(2024, 5, 1, 12, 0)), at(2024, 5, 4, 0, 0));
        assert_eq!(next("0 0 * * 0", at(2024, 5, 4, 12, 0)), at(2024, 5, 5, 0, 0));
        assert_eq!(next("0 12 * JUN-aug *", at(2024, 5, 1, 12, 0)), at(2024, 6, 1, 12, 0));
        assert_eq!(next("@weekly", at(2024, 5, 1, 12, 0)), at(2024, 5, 5, 0, 0));
    }

    #[test]
    fn restricted_dom_and_dow_are_ored() {
        // 1st, 15th, or any Friday. May 2024: Fri 3, 10, 17, 24, 31.
        let s = "0 0 1,15 * 5";
        assert_eq!(next(s, at(2024, 5, 1, 0, 0)), at(2024, 5, 3, 0, 0));
        assert_eq!(next(s, at(2024, 5, 10, 0, 0)), at(2024, 5, 15, 0, 0));
        assert_eq!(next(s, at(2024, 5, 31, 0, 0)), at(2024, 6, 1, 0, 0));
        // A star on one side matches every day, so only the other side counts.
        assert_eq!(next("0 0 13 * ?", at(2024, 5, 1, 0, 0)), at(2024, 5, 13, 0, 0));
        assert_eq!(next("0 0 ? * FRI", at(2024, 5, 1, 0, 0)), at(2024, 5, 3, 0, 0));
        assert_eq!(next("0 0 13 * FRI", at(2024, 5, 4, 0, 0)), at(2024, 5, 10, 0, 0));
        // `*/1` keeps the star, `*/2` is a restriction (robfig v3).
        assert_eq!(next("0 0 */1 * FRI", at(2024, 5, 1, 0, 0)), at(2024, 5, 3, 0, 0));
        assert_eq!(next("0 0 */2 * FRI", at(2024, 5, 1, 0, 0)), at(2024, 5, 3, 0, 0));
        assert_eq!(next("0 0 */2 * FRI", at(2024, 5, 3, 0, 0)), at(2024, 5, 5, 0, 0));
    }

    #[test]
    fn leap_day_schedule() {
        let s = "30 2 29 2 *";
        assert_eq!(next(s, at(2023, 3, 1, 0, 0)), at(2024, 2, 29, 2, 30));
        assert_eq!(next(s, at(2024, 2, 29, 2, 30)), at(2028, 2, 29, 2, 30));
        // 2100 is not a leap year: from 2096 the next is 2104, past robfig's 5-year limit.
        assert_eq!(Schedule::parse(s).unwrap().next_after(at(2096, 3, 1, 0, 0)), None);
        assert_eq!(Schedule::parse("0 0 31 2 *").unwrap().next_after(at(2024, 1, 1, 0, 0)), None);
    }

    #[test]
    fn month_ends_and_year_rollover() {
        assert_eq!(next("0 0 31 * *", at(2024, 4, 1, 0, 0)), at(2024, 5, 31, 0, 0));
        assert_eq!(next("59 23 31 12 *", at(2024, 12, 31, 23, 59)), at(2025, 12, 31, 23, 59));
        assert_eq!(next("@monthly", at(2024, 12, 15, 8, 0)), at(2025, 1, 1, 0, 0));
        assert_eq!(next("@yearly", at(2024, 1, 1, 0, 0)), at(2025, 1, 1, 0, 0));
        assert_eq!(next("@annually", at(2023, 12, 31, 23, 59) + 59), at(2024, 1, 1, 0, 0));
        assert_eq!(next("@daily", at(2024, 2, 28, 0, 0)), at(2024, 2, 29, 0, 0));
        assert_eq!(next("@midnight", at(2023, 2, 28, 0, 0)), at(2023, 3, 1, 0, 0));
        assert_eq!(next("0 0 1 1 *", at(1969, 6, 1, 0, 0)), at(1970, 1, 1, 0, 0));
    }

    #[test]
    fn hourly_and_every() {
        assert_eq!(next("@hourly", at(2024, 5, 1, 23, 59)), at(2024, 5, 2, 0, 0));
        let t = at(2024, 5, 1, 10, 0) + 17;
        assert_eq!(next("@every 90s", t), t + 90);
        assert_eq!(next("@every 1h30m", t), t + 5400);
        assert_eq!(next("@every 1.5m", t), t + 90);
        assert_eq!(next("@every 2500ms", t), t + 2);
        assert_eq!(next("@every 100ms", t), t + 1);
        assert_eq!(next("CRON_TZ=UTC 0 * * * *", t), at(2024, 5, 1, 11, 0));
    }

    #[test]
    fn errors_name_the_field_and_value() {
        assert_eq!(err(""), "empty schedule");
        assert_eq!(err("   "), "empty schedule");
        assert!(err("0 * * *").contains("expected 5 fields"), "{}", err("0 * * *"));
        assert!(err("0 * * *").contains("found 4"));
        assert!(err("0 0 * * * *").contains("found 6"));
        assert_eq!(err("0 25 * * *"), "hour field \"25\": value 25 out of range 0-23");
        assert_eq!(err("60 * * * *"), "minute field \"60\": value 60 out of range 0-59");
        assert_eq!(err("0 0 0 * *"), "day-of-month field \"0\": value 0 out of range 1-31");
        assert_eq!(err("0 0 * 13 *"), "month field \"13\": value 13 out of range 1-12");
        assert_eq!(err("0 0 * * 7"), "day-of-week field \"7\": value 7 out of range 0-6");
        assert_eq!(err("0 0 * * 1,7"), "day-of-week field \"1,7\": value 7 out of range 0-6");
        assert_eq!(err("0 0 * * FUN"), "day-of-week field \"FUN\": \"FUN\" is neither a number nor a day-of-week name");
        assert_eq!(err("0 0 * JANUARY *"), "month field \"JANUARY\": \"JANUARY\" is neither a number nor a month name");
        assert_eq!(err("x * * * *"), "minute field \"x\": \"x\" is not a number");
        assert_eq!(err("*/0 * * * *"), "minute field \"*/0\": step in \"*/0\" must be a positive number");
        assert_eq!(err("0 5-3 * * *"), "hour field \"5-3\": range \"5-3\" is reversed (5 > 3)");
        assert_eq!(err("0 0 * FRI-MON *"), "month field \"FRI-MON\": \"FRI\" is neither a number nor a month name");
        assert_eq!(err("0 0 * * FRI-MON"), "day-of-week field \"FRI-MON\": range \"FRI-MON\" is reversed (5 > 1)");
        assert_eq!(err("1-2-3 * * * *"), "minute field \"1-2-3\": too many '-' in \"1-2-3\"");
        assert_eq!(err("1/2/3 * * * *"), "minute field \"1/2/3\": too many '/' in \"1/2/3\"");
        assert_eq!(err("5- * * * *"), "minute field \"5-\": \"\" is not a number");
        assert_eq!(err(", * * * *"), "minute field \",\": no values");
        assert_eq!(err("70/5 * * * *"), "minute field \"70/5\": value 70 out of range 0-59");
        assert_eq!(err("@fortnightly"), "unrecognized descriptor \"@fortnightly\"");
        assert_eq!(err("@every"), "unrecognized descriptor \"@every\"");
        assert_eq!(err("@every 5"), "@every \"5\": missing unit in duration \"5\"");
        assert_eq!(err("@every 5d"), "@every \"5d\": unknown unit \"d\" in duration \"5d\"");
        assert_eq!(err("@every abc"), "@every \"abc\": invalid duration");
        assert_eq!(err("@every 0s"), "@every \"0s\": the interval must be greater than 0");
        assert_eq!(err("@every 0"), "@every \"0\": the interval must be greater than 0");
        assert!(err("TZ=Europe/Berlin 0 * * * *").contains("not supported"));
    }

    #[test]
    fn agrees_with_a_minute_by_minute_search() {
        let specs = [
            "*/7 3-5 * * *",
            "0 0 1,15 * 5",
            "15 */6 */2 * MON-WED",
            "0 0 29 2 *",
            "59 23 31 * *",
            "0 9-17/4 * 3,9 SAT",
        ];
        for spec in specs {
            let s = Schedule::parse(spec).unwrap();
            let Kind::Spec { minute, hour, dom, month, dow } = s.kind else { unreachable!() };
            let matches = |t: i64| {
                let (_, m, d) = civil_from_days(t.div_euclid(DAY));
                let wd = (t.div_euclid(DAY) + 4).rem_euclid(7);
                let (h, mi) = (t.rem_euclid(DAY) / 3600, t.rem_euclid(3600) / 60);
                let (dom_ok, dow_ok) = (dom >> d & 1 == 1, dow >> wd & 1 == 1);
                let day_ok = if dom & STAR != 0 || dow & STAR != 0 { dom_ok && dow_ok } else { dom_ok || dow_ok };
                minute >> mi & 1 == 1 && hour >> h & 1 == 1 && month >> m & 1 == 1 && day_ok
            };
            for after in [at(2023, 12, 31, 23, 58) + 30, at(2024, 2, 28, 17, 3), at(2024, 7, 31, 5, 59) + 59] {
                let brute = (after + 1..after + 400 * DAY).find(|t| t % 60 == 0 && matches(*t));
                if let Some(b) = brute {
                    assert_eq!(s.next_after(after), Some(b), "{spec} after {after}");
                }
            }
        }
    }

    #[test]
    fn quirks_kept_from_robfig() {
        // `?` works in any field, `+N` parses like Go's Atoi, and `*-5` is just `*`.
        assert_eq!(next("? * * * *", at(2024, 5, 1, 10, 0)), at(2024, 5, 1, 10, 1));
        assert_eq!(next("+5 * * * *", at(2024, 5, 1, 10, 0)), at(2024, 5, 1, 10, 5));
        assert_eq!(next("*-5 * * * *", at(2024, 5, 1, 10, 0)), at(2024, 5, 1, 10, 1));
        // A step larger than the range keeps only its start.
        assert_eq!(next("*/100 * * * *", at(2024, 5, 1, 10, 0)), at(2024, 5, 1, 11, 0));
    }
}
