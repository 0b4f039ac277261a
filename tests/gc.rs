//! Garbage collection end to end: synthetic snapshot sets on both real S3
//! servers, `snapshot gc` (the same cycle the snapshotter runs on its
//! timer), and the objects left on each endpoint.

mod common;

use common::cli::*;
use common::unique;
use etcd_backup_restore::gc::{self, Policy};
use etcd_backup_restore::snapshot::{Kind, SnapshotName};
use etcd_backup_restore::store::{self, Store};
use std::collections::BTreeSet;

const HOUR: u64 = 3600;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn full(rev: u64, created: u64) -> String {
    let mut n = SnapshotName::full(rev, created);
    n.compression = ".gz".into();
    n.to_string()
}

fn delta(start: u64, last: u64, created: u64) -> String {
    let mut n = SnapshotName::delta(start, last, created);
    n.compression = ".gz".into();
    n.to_string()
}

/// Store every name (a few bytes each; the collector reads names only).
fn put_all(s: &dyn Store, names: &[String]) {
    std::thread::scope(|scope| {
        for chunk in names.chunks(names.len().div_ceil(4).max(1)) {
            scope.spawn(move || {
                for n in chunk {
                    store::save(s, n, b"x").unwrap();
                }
            });
        }
    });
}

fn stored(s: &dyn Store) -> BTreeSet<String> {
    listed(s).into_iter().map(|o| o.name).collect()
}

fn gc_run(prefix: &str, extra: &[&str]) -> Run {
    let mut args = vec!["snapshot".to_string(), "gc".into()];
    args.extend(store_args(prefix));
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&refs(&args), &as_refs(&creds()))
}

/// Sort in upstream's SnapList order (last_revision asc, then created asc),
/// as `gc::select` expects it. Go's sort is not stable; here equal keys keep
/// their input order. (The binary sorts its merged catalog instead.)
fn sort_upstream(list: &mut [SnapshotName]) {
    list.sort_by_key(|s| (s.last_revision, s.created));
}

#[test]
fn sorts_by_revision_then_time() {
    let mut list = vec![
        SnapshotName::full(20, 300),
        SnapshotName::delta(11, 20, 200),
        SnapshotName::full(10, 400),
        SnapshotName::delta(5, 10, 100),
    ];
    sort_upstream(&mut list);
    let order: Vec<(u64, u64)> = list.iter().map(|s| (s.last_revision, s.created)).collect();
    assert_eq!(order, [(10, 100), (10, 400), (20, 200), (20, 300)]);
}

/// What upstream's policy keeps of `names` at `now`.
fn survivors(names: &BTreeSet<String>, now: u64, policy: Policy) -> BTreeSet<String> {
    let mut list: Vec<SnapshotName> = names.iter().map(|n| SnapshotName::parse(n).unwrap()).collect();
    sort_upstream(&mut list);
    let gone: BTreeSet<usize> = gc::select(&list, now as i64, policy, 0).into_iter().collect();
    list.iter().enumerate().filter(|(i, _)| !gone.contains(i)).map(|(_, n)| n.to_string()).collect()
}

/// Five weeks of full snapshots every 6 hours, each followed by a delta:
/// the Exponential policy keeps, on both endpoints, exactly what upstream's
/// keeps. `--dry-run` first only reports it.
#[test]
fn exponential_keeps_upstream_survivors_on_both_endpoints() {
    let prefix = unique("gcexp");
    let t = now();
    let mut names = Vec::new();
    let mut rev = 100;
    for k in (0..146u64).rev() {
        let created = t - k * 6 * HOUR - 120;
        names.push(full(rev, created));
        names.push(delta(rev + 1, rev + 10, created + 60));
        rev += 10;
    }
    let all: BTreeSet<String> = names.iter().cloned().collect();
    std::thread::scope(|s| {
        s.spawn(|| put_all(&primary(&prefix), &names));
        s.spawn(|| put_all(&secondary(&prefix), &names));
    });

    let before = now();
    let r = gc_run(&prefix, &["--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(stored(&primary(&prefix)), all, "--dry-run deletes nothing");
    let would =
        r.stderr.lines().filter(|l| l.contains("Garbage collection would delete") && l.ends_with(" endpoint")).count();

    let r = gc_run(&prefix, &[]);
    let after = now();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (a, b) = (stored(&primary(&prefix)), stored(&secondary(&prefix)));
    assert_eq!(a, b, "both endpoints keep the same snapshots");
    // The policy looks at the clock: the run happened between these two.
    let expected = [before, after].map(|t| survivors(&all, t, Policy::Exponential));
    assert!(expected.contains(&a), "survivors {a:#?}\nexpected {expected:#?}");
    assert_eq!(would, 2 * (all.len() - a.len()), "--dry-run listed what was then deleted, on each endpoint");
    let deleted =
        r.stderr.lines().filter(|l| l.contains("INFO Garbage collection deleted ") && l.ends_with(" endpoint")).count();
    assert_eq!(deleted, 2 * (all.len() - a.len()));
    assert!(r.stderr.contains(&format!("INFO Garbage collection deleted {deleted} objects")), "{}", r.stderr);

    // What upstream's policy means, independently of the oracle above.
    let kept: Vec<SnapshotName> = a.iter().map(|n| SnapshotName::parse(n).unwrap()).collect();
    let fulls: Vec<&SnapshotName> = kept.iter().filter(|n| n.kind == Kind::Full).collect();
    let newest = kept.iter().filter(|n| n.kind == Kind::Full).max_by_key(|n| n.created).unwrap();
    assert_eq!(newest.to_string(), names[names.len() - 2], "the latest full snapshot stays");
    assert!(a.contains(&names[names.len() - 1]), "and its delta");
    assert_eq!(kept.iter().filter(|n| n.kind == Kind::Incr).count(), 1, "older deltas go (retention 0)");
    assert!(fulls.iter().all(|n| n.created + 36 * 24 * HOUR > t), "nothing older than five weeks");
    let daily = fulls.iter().filter(|n| n.created + 8 * 24 * HOUR > t && n.created + 24 * HOUR < t).count();
    assert!((6..=8).contains(&daily), "one a day for the last week: {daily}");
    assert!(fulls.len() < 30, "{} full snapshots kept", fulls.len());
}

/// LimitBased with one backup: each endpoint keeps its own latest chain,
/// even where the merged list would drop it: the primary missed the newest
/// full snapshot, and deleting its older chain would leave it nothing to
/// restore if the secondary were lost.
#[test]
fn limit_based_keeps_each_endpoints_latest_chain() {
    let prefix = unique("gclim");
    let t = now() - 10 * HOUR;
    let (f1, d1) = (full(100, t), delta(101, 110, t + 60));
    let (f2, d2) = (full(110, t + HOUR), delta(111, 120, t + HOUR + 60));
    let (f3, d3) = (full(120, t + 2 * HOUR), delta(121, 130, t + 2 * HOUR + 60));
    let on_primary = [f1.clone(), d1.clone(), f2.clone(), d2.clone()];
    let on_secondary = [f1, d1, f2, d2, f3.clone(), d3.clone()];
    put_all(&primary(&prefix), &on_primary);
    put_all(&secondary(&prefix), &on_secondary);
    let r = gc_run(&prefix, &["--garbage-collection-policy=LimitBased", "--max-backups=1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(stored(&primary(&prefix)), on_primary[2..].iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(stored(&secondary(&prefix)), [f3, d3].into_iter().collect::<BTreeSet<_>>());
    assert!(r.stderr.contains("INFO Garbage collection deleted 6 objects"), "{}", r.stderr);

    // Usage errors are one line, exit 2, nothing deleted.
    let r = gc_run(&prefix, &["--garbage-collection-policy=LimitBased", "--max-backups=0"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--max-backups must be greater than 0"), "{}", r.stderr);
    assert_eq!(stored(&primary(&prefix)).len(), 2);
}

/// One endpoint cannot be listed: nothing is deleted anywhere (its
/// contents are unknown), and the run says why.
#[test]
fn an_unlistable_endpoint_stops_the_collection() {
    let prefix = unique("gcdown");
    let t = now() - 10 * HOUR;
    let names = [full(100, t), delta(101, 110, t + 60), full(110, t + HOUR)];
    put_all(&primary(&prefix), &names);
    let r = gc_run(
        &prefix,
        &[
            "--garbage-collection-policy=LimitBased",
            "--max-backups=1",
            "--secondary-store-endpoint-override=http://127.0.0.1:1",
            "--secondary-chunk-upload-attempts=1",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("Garbage collection skipped: cannot list every endpoint (secondary: "), "{}", r.stderr);
    assert_eq!(stored(&primary(&prefix)).len(), 3);
}
