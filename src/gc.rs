//! Garbage collection: upstream's selection (`RunGarbageCollector` in
//! pkg/snapshot/snapshotter/garbagecollector.go) as a pure function of the
//! sorted snapshot list and the current time, in UTC; and the cycle that
//! applies it to both endpoints (`snapshot gc`, and the long-running
//! `snapshot` every `--garbage-collection-period`).
//!
//! Upstream also drops chunk objects from the list before this step and skips
//! objects still under immutability; neither exists in `SnapshotName`, so both
//! are the caller's concern.

use crate::catalog::Catalog;
use crate::endpoint::{Endpoints, Role};
use crate::snapshot::{Kind, SnapshotName};
use crate::store::ErrorKind;
use log::{debug, info, warn};
use std::collections::HashSet;
use std::time::Duration;

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;
const WEEK: i64 = 7 * DAY;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Exponential,
    LimitBased { max_backups: usize },
}

/// `list` is sorted as upstream sorts (last_revision asc, then created asc).
/// Returns the indices into `list` that upstream's GC would delete, ascending.
pub fn select(list: &[SnapshotName], now: i64, policy: Policy, delta_retention_secs: i64) -> Vec<usize> {
    if list.is_empty() {
        return Vec::new();
    }
    // getSnapStreamIndexList: index 0 always starts a stream, whatever its kind.
    let streams: Vec<usize> =
        std::iter::once(0).chain((1..list.len()).filter(|&i| list[i].kind == Kind::Full)).collect();
    let mut delete = vec![false; list.len()];

    // GarbageCollectDeltaSnapshots on every stream but the latest; its loop runs
    // down to i >= 0, so a delta at index 0 is a candidate too.
    let cutoff = i128::from(now) - i128::from(delta_retention_secs);
    for w in streams.windows(2) {
        for i in w[0]..w[1] {
            if list[i].kind == Kind::Incr && i128::from(list[i].created) < cutoff {
                delete[i] = true;
            }
        }
    }

    match policy {
        Policy::LimitBased { max_backups } => {
            let keep_from = streams.len() as i64 - max_backups as i64;
            for (k, &i) in streams[..streams.len() - 1].iter().enumerate() {
                if (k as i64) < keep_from {
                    delete[i] = true;
                }
            }
        }
        Policy::Exponential => {
            for i in exponential_victims(list, &streams, now) {
                delete[i] = true;
            }
        }
    }
    (0..list.len()).filter(|&i| delete[i]).collect()
}

/// The Exponential branch: walks adjacent stream heads from newest to oldest and
/// returns the older heads to delete. Each is compared with its original newer
/// neighbour, deleted or not, as upstream does.
fn exponential_victims(list: &[SnapshotName], streams: &[usize], now: i64) -> Vec<usize> {
    let now_hour = now.rem_euclid(DAY) / HOUR;
    // now.Truncate(24h) + 23:59:59
    let mut eod = now.div_euclid(DAY) * DAY + DAY - 1;
    let mut tracking_week = false;
    let mut victims = Vec::new();
    for k in (1..streams.len()).rev() {
        let (snap, next) = (created(&list[streams[k]]), created(&list[streams[k - 1]]));
        // `delta` is taken before eod moves back a day in the weekly band.
        let delta = eod - next;
        let threshold: i64 = if delta < DAY {
            if next.rem_euclid(DAY) / HOUR == now_hour { 0 } else { 1 }
        } else if delta < 8 * DAY {
            24
        } else if delta < 5 * WEEK {
            if !tracking_week {
                eod -= DAY;
                tracking_week = true;
            }
            24 * 7
        } else {
            i64::from(i32::MAX)
        };
        // Go: int(eod.Sub(t).Hours() / n), i.e. truncation toward zero, as Rust's `/`.
        let change = |unit: i64| (eod - next) / unit - (eod - snap) / unit;
        let keep = threshold == 0
            || change(HOUR) / threshold != 0
            || change(DAY) * 24 / threshold != 0
            || change(WEEK) * 24 * 7 / threshold != 0;
        if !keep {
            victims.push(streams[k - 1]);
        }
    }
    victims
}

fn created(s: &SnapshotName) -> i64 {
    i64::try_from(s.created).unwrap_or(i64::MAX)
}

/// Garbage collection on a timer, in the long-running `snapshot`.
#[derive(Debug, Clone, Copy)]
pub struct Periodic {
    pub period: Duration,
    pub policy: Policy,
    pub delta_retention: Duration,
}

/// Collect every `period` until SIGTERM/SIGINT, never deleting what `keep`
/// names; `after(now)` runs after each cycle (the snapshotter's reconcile),
/// whether or not the collection succeeded.
pub fn run_periodically(endpoints: &Endpoints, gc: Periodic, keep: &dyn Fn(&str) -> bool, after: &dyn Fn(i64)) {
    loop {
        crate::signals::sleep(gc.period);
        if crate::signals::interrupted() {
            return;
        }
        let now = crate::report::unix_now() as i64;
        if let Err(e) = collect(endpoints, gc.policy, gc.delta_retention, now, false, keep) {
            warn!("{e}");
        }
        after(now);
    }
}

/// One garbage collection cycle over every endpoint; returns the
/// (endpoint, name) pairs deleted, or that would be with `dry_run`.
///
/// A snapshot is deleted from an endpoint only when the policy drops it
/// both from that endpoint's own list and from the merged list of both.
/// So each endpoint keeps its own latest chain, and nothing still within
/// policy loses its last copy. No endpoint is touched when one cannot be
/// listed: its contents are then unknown. Nothing `keep` names is deleted
/// (the running snapshotter's current chain). `Err` says why nothing was
/// done, or which deletions failed.
pub fn collect(
    endpoints: &Endpoints,
    policy: Policy,
    delta_retention: Duration,
    now: i64,
    dry_run: bool,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<(Role, String)>, String> {
    let catalog = match Catalog::list(endpoints) {
        Ok(c) if c.failures.is_empty() => c,
        Ok(c) => {
            let why: Vec<String> = c.failures.iter().map(|(r, e)| format!("{}: {e}", r.name())).collect();
            return Err(format!("Garbage collection skipped: cannot list every endpoint ({})", why.join("; ")));
        }
        Err(e) => return Err(format!("Garbage collection skipped: {e}")),
    };
    let retention = delta_retention.as_secs() as i64;
    let names: Vec<SnapshotName> = catalog.entries.iter().map(|e| e.snapshot.clone()).collect();
    let merged: HashSet<&str> =
        select(&names, now, policy, retention).into_iter().map(|i| catalog.entries[i].name.as_str()).collect();
    let mut deleted = Vec::new();
    let mut failed = Vec::new();
    for ep in endpoints.iter() {
        // Object lock still retaining: summed up in one line per endpoint.
        let mut locked = 0;
        let mut locked_until: Option<String> = None;
        let own: Vec<_> = catalog.entries.iter().filter(|e| e.size_on(ep.role).is_some()).collect();
        let own_names: Vec<SnapshotName> = own.iter().map(|e| e.snapshot.clone()).collect();
        let failed_before = failed.len();
        for i in select(&own_names, now, policy, retention) {
            let name = &own[i].name;
            if !merged.contains(name.as_str()) {
                debug!("Garbage collection keeps {name} on {} endpoint: within policy on the merged list", ep.name());
                continue;
            }
            if keep(name) {
                warn!(
                    "Garbage collection keeps {name} on {} endpoint: the policy would drop it, but it is in the \
                     running snapshotter's current chain",
                    ep.name()
                );
                continue;
            }
            if dry_run {
                info!("Garbage collection would delete {name} from {} endpoint", ep.name());
                deleted.push((ep.role, name.clone()));
                continue;
            }
            match ep.store.delete(name) {
                Ok(()) => {
                    info!("Garbage collection deleted {name} from {} endpoint", ep.name());
                    crate::record::delete(ep, name);
                    deleted.push((ep.role, name.clone()));
                }
                Err(e) if e.kind == ErrorKind::Locked => {
                    debug!("Garbage collection keeps {name} on {} endpoint: {e}", ep.name());
                    locked += 1;
                    locked_until = locked_until.max(e.retain_until);
                }
                Err(e) => {
                    warn!("Garbage collection could not delete {name} from {} endpoint: {e}", ep.name());
                    failed.push(format!("{name} on {}", ep.name()));
                    // As upstream: a store that keeps refusing is left for the next cycle.
                    if failed.len() - failed_before >= 5 {
                        break;
                    }
                }
            }
        }
        if locked > 0 {
            let until = locked_until.unwrap_or_else(|| "their retention ends".to_string());
            info!("{locked} snapshots still locked on the {} endpoint, kept until {until}", ep.name());
        }
    }
    if failed.is_empty() {
        Ok(deleted)
    } else {
        Err(format!("Garbage collection could not delete {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60;
    /// 2024-05-01T00:00:00Z
    const MAY_1: i64 = 1_714_521_600;

    fn snap(kind: Kind, start: u64, last: u64, created: i64) -> SnapshotName {
        SnapshotName {
            kind,
            start_revision: start,
            last_revision: last,
            created: created as u64,
            compression: String::new(),
            encrypted: false,
            is_final: false,
        }
    }

    fn day_start(t: i64) -> i64 {
        t.div_euclid(DAY) * DAY
    }

    /// prepareStoreForGarbageCollection: from 36 days before today's midnight up to
    /// `now`, one object every 10 minutes cycling Full, Incr, Incr, all at revision 1001.
    fn upstream_store(now: i64) -> Vec<SnapshotName> {
        let mut list = Vec::new();
        let mut t = day_start(now) - 36 * DAY;
        let mut count = 0;
        while now - t >= 0 {
            let kind = if count == 0 { Kind::Full } else { Kind::Incr };
            count = (count + 1) % 3;
            list.push(snap(kind, 0, 1001, t));
            t += 10 * MINUTE;
        }
        list
    }

    /// prepareExpectedSnapshotsList, starting from time.Date(y, m, d-35, 0, -30, ...).
    fn upstream_expected(now: i64) -> Vec<(Kind, u64)> {
        let mut out = Vec::new();
        let mut push = |kind, t: i64| out.push((kind, t as u64));
        let mut t = day_start(now) - 35 * DAY - 30 * MINUTE;
        for _ in 0..4 {
            t += WEEK;
            push(Kind::Full, t);
        }
        for _ in 0..7 {
            t += DAY;
            push(Kind::Full, t);
        }
        t += HOUR;
        let this_hour = now.div_euclid(HOUR) * HOUR;
        while this_hour - t > 0 {
            push(Kind::Full, t);
            t += HOUR;
        }
        t = this_hour;
        push(Kind::Full, t);
        t += 30 * MINUTE;
        while now - t >= 0 {
            push(Kind::Full, t);
            t += 30 * MINUTE;
        }
        t += 10 * MINUTE - 30 * MINUTE;
        while now - t >= 0 {
            push(Kind::Incr, t);
            t += 10 * MINUTE;
        }
        out
    }

    fn survivors(list: &[SnapshotName], deleted: &[usize]) -> Vec<(Kind, u64)> {
        let mut gone = vec![false; list.len()];
        deleted.iter().for_each(|&i| gone[i] = true);
        list.iter().zip(gone).filter(|(_, g)| !g).map(|(s, _)| (s.kind, s.created)).collect()
    }

    fn check_upstream_exponential(now: i64, gc_now: i64) {
        let list = upstream_store(now);
        let deleted = select(&list, gc_now, Policy::Exponential, 0);
        assert!(deleted.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(survivors(&list, &deleted), upstream_expected(now), "now={now} gc_now={gc_now}");
    }

    #[test]
    fn exponential_reproduces_upstream_test() {
        // 4 weekly + 7 daily + 10 hourly + 10:00, 10:30 + deltas 10:40.
        let now = MAY_1 + 10 * HOUR + 45 * MINUTE;
        let list = upstream_store(now);
        let kept = survivors(&list, &select(&list, now, Policy::Exponential, 0));
        assert_eq!(kept.len(), 4 + 7 + 10 + 2 + 1);
        assert_eq!(kept, upstream_expected(now));

        for now in [
            MAY_1,                                      // midnight exactly: no hourly band
            MAY_1 + 5 * MINUTE,                         // just after midnight
            MAY_1 + 10 * HOUR + 30 * MINUTE,            // on a full snapshot
            MAY_1 + 23 * HOUR + 30 * MINUTE,            // near the day boundary
            MAY_1 + DAY - 1,                            // last second of the day
            MAY_1 + 59 * DAY + 14 * HOUR + 59 * MINUTE, // 2024-06-29, month end nearby
        ] {
            check_upstream_exponential(now, now);
        }
    }

    #[test]
    fn exponential_reproduces_upstream_test_across_two_days() {
        // The Go test's GC runs about 5s after the store was built; that reproduces
        // unless those seconds cross an hour (see hour_boundary_flips_current_hour_rule).
        let mut now = MAY_1 + 3 * HOUR + 17;
        while now < MAY_1 + 2 * DAY + 3 * HOUR {
            check_upstream_exponential(now, now);
            if now.rem_euclid(HOUR) < HOUR - 5 {
                check_upstream_exponential(now, now + 5);
            }
            now += 7 * MINUTE + 13;
        }
    }

    #[test]
    fn hour_boundary_flips_current_hour_rule() {
        // Built at 10:59:58, collected at 11:00:03: the 10:00 full is no longer in
        // "the current hour" and shares hour window 13 (counted from eod) with 10:30.
        let built = MAY_1 + 10 * HOUR + 59 * MINUTE + 58;
        let list = upstream_store(built);
        let at = |t: i64| list.iter().position(|s| created(s) == t && s.kind == Kind::Full).unwrap();
        let ten = at(MAY_1 + 10 * HOUR);
        assert!(!select(&list, built, Policy::Exponential, 0).contains(&ten));
        let after = select(&list, built + 5, Policy::Exponential, 0);
        let mut expected_after: Vec<usize> = select(&list, built, Policy::Exponential, 0);
        expected_after.push(ten);
        expected_after.sort_unstable();
        assert_eq!(after, expected_after);
    }

    #[test]
    fn day_boundary_moves_every_band() {
        // Built at 23:59:58, collected at 00:00:03 the next day: eod is a day later,
        // so yesterday's hourly fulls collapse into one daily (the 23:30 one).
        let built = MAY_1 + DAY - 2;
        let list = upstream_store(built);
        let kept = survivors(&list, &select(&list, built + 5, Policy::Exponential, 0));
        let may_1_fulls: Vec<u64> =
            kept.iter().filter(|(k, t)| *k == Kind::Full && day_start(*t as i64) == MAY_1).map(|&(_, t)| t).collect();
        assert_eq!(may_1_fulls, [(MAY_1 + 23 * HOUR + 30 * MINUTE) as u64]);
        assert_ne!(kept, upstream_expected(built));
    }

    #[test]
    fn limit_based_reproduces_upstream_test() {
        let now = MAY_1 + 10 * HOUR + 45 * MINUTE;
        let list = upstream_store(now);
        let kept = survivors(&list, &select(&list, now, Policy::LimitBased { max_backups: 2 }, 0));
        // The Go assertion: at most maxBackups fulls, then only deltas.
        let fulls = kept.iter().take_while(|(k, _)| *k == Kind::Full).count();
        assert!(fulls <= 2);
        assert!(kept[fulls..].iter().all(|(k, _)| *k == Kind::Incr));
        let t = |h: i64, m: i64| (MAY_1 + h * HOUR + m * MINUTE) as u64;
        assert_eq!(kept, [(Kind::Full, t(10, 0)), (Kind::Full, t(10, 30)), (Kind::Incr, t(10, 40))]);
    }

    #[test]
    fn limit_based_counts_streams() {
        let list: Vec<_> = (0..5).map(|i| snap(Kind::Full, 0, 10 * (i + 1), MAY_1 + i as i64 * HOUR)).collect();
        let now = MAY_1 + DAY;
        assert_eq!(select(&list, now, Policy::LimitBased { max_backups: 3 }, 0), [0, 1]);
        assert_eq!(select(&list, now, Policy::LimitBased { max_backups: 5 }, 0), Vec::<usize>::new());
        assert_eq!(select(&list, now, Policy::LimitBased { max_backups: 9 }, 0), Vec::<usize>::new());
        // The latest full survives even with a limit of 0.
        assert_eq!(select(&list, now, Policy::LimitBased { max_backups: 0 }, 0), [0, 1, 2, 3]);
    }

    /// prepareStoreWithDeltaSnapshots (6 deltas, 10 minutes apart, the first 60
    /// minutes ago), followed by a full so that they form an older stream.
    fn deltas_then_full(now: i64) -> Vec<SnapshotName> {
        let mut list: Vec<_> = (0..6)
            .map(|i| snap(Kind::Incr, i * 10, (i + 1) * 10, now - 60 * MINUTE + i as i64 * 10 * MINUTE))
            .collect();
        list.push(snap(Kind::Full, 0, 70, now));
        list
    }

    #[test]
    fn delta_retention_matches_upstream_delta_tests() {
        let now = MAY_1 + 10 * HOUR + 45 * MINUTE;
        let list = deltas_then_full(now);
        let limit = Policy::LimitBased { max_backups: 2 };
        assert_eq!(select(&list, now, limit, 0), [0, 1, 2, 3, 4, 5]);
        assert_eq!(select(&list, now, limit, 600 * MINUTE), Vec::<usize>::new());
        assert_eq!(select(&list, now, limit, 35 * MINUTE), [0, 1, 2]);
        // Deleted only when strictly older than now - retention.
        assert_eq!(select(&list, now, limit, 40 * MINUTE), [0, 1]);
        assert_eq!(select(&list, now, Policy::Exponential, 35 * MINUTE), [0, 1, 2]);
    }

    #[test]
    fn latest_stream_is_never_touched() {
        let now = MAY_1 + 40 * DAY;
        let list = vec![
            snap(Kind::Full, 0, 10, MAY_1),
            snap(Kind::Incr, 11, 20, MAY_1 + 60),
            snap(Kind::Incr, 21, 30, MAY_1 + 120),
        ];
        for policy in [Policy::Exponential, Policy::LimitBased { max_backups: 0 }] {
            assert_eq!(select(&list, now, policy, 0), Vec::<usize>::new());
            assert_eq!(select(&list[1..], now, policy, 0), Vec::<usize>::new());
            assert_eq!(select(&[], now, policy, 0), Vec::<usize>::new());
        }
    }

    #[test]
    fn leading_deltas_form_stream_zero() {
        let now = MAY_1 + 12 * HOUR;
        let list = vec![
            snap(Kind::Incr, 1, 5, now - 3 * DAY),
            snap(Kind::Incr, 6, 9, now - 3 * DAY + 5 * MINUTE),
            snap(Kind::Full, 0, 9, now - 3 * DAY + 10 * MINUTE),
            snap(Kind::Incr, 10, 12, now - 3 * DAY + 20 * MINUTE),
            snap(Kind::Full, 0, 12, now),
            snap(Kind::Incr, 13, 14, now + 60),
        ];
        // LimitBased deletes the head of stream 0 as a "full" even though it is a delta.
        assert_eq!(select(&list, now, Policy::LimitBased { max_backups: 1 }, 0), [0, 1, 2, 3]);
        assert_eq!(select(&list, now, Policy::LimitBased { max_backups: 2 }, 30 * DAY), [0]);
        assert_eq!(select(&list, now, Policy::LimitBased { max_backups: 3 }, 30 * DAY), Vec::<usize>::new());
        // Exponential compares index 0 with the full after it: same day, so it goes,
        // while the full of three days ago is the last of its day and stays.
        assert_eq!(select(&list, now, Policy::Exponential, 30 * DAY), [0]);
        assert_eq!(select(&list, now, Policy::Exponential, 0), [0, 1, 3]);
    }

    #[test]
    fn weekly_band_shifts_eod_back_a_day() {
        // Fulls at noon each day for 40 days; now is noon on the last one.
        let now = MAY_1 + 40 * DAY + 12 * HOUR;
        let list: Vec<_> = (0..=40).map(|d| snap(Kind::Full, 0, d as u64 + 1, MAY_1 + d * DAY + 12 * HOUR)).collect();
        let kept: Vec<i64> = survivors(&list, &select(&list, now, Policy::Exponential, 0))
            .iter()
            .map(|&(_, t)| (day_start(t as i64) - MAY_1) / DAY)
            .collect();
        // Days 33..=40 are within 8 days of eod; then week windows counted from the
        // previous day's end keep days 32, 25, 18 and 11, and nothing of 5+ weeks ago.
        assert_eq!(kept, [11, 18, 25, 32, 33, 34, 35, 36, 37, 38, 39, 40]);
    }
}
