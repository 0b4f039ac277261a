//! Each endpoint on its own: a stalled, refusing or slow endpoint holds the
//! other back for at most `--max-endpoint-lag`, for full snapshots, delta
//! snapshots and restore alike. Every bound is checked against the same
//! operation with both endpoints healthy, measured in the same test.

mod common;

use common::cli::*;
use common::fault::{Action, Request, Rule, S3Faults};
use common::restore::*;
use common::snapshotter::start;
use common::{env, unique};
use etcd_backup_restore::snapshot::{Kind, SnapshotName};
use std::time::{Duration, Instant};

const LAG: &str = "--max-endpoint-lag=2s";
/// The lag, plus room for a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(2 + 8);

/// etcd 3.5 with a database of at least 16 MiB: four 5 MiB parts or more.
fn etcd() -> String {
    let v = v35();
    grow_db(&v, 16 << 20);
    v.endpoint
}

/// Every request of every kind gets `action`.
fn all(action: Action) -> Vec<Rule> {
    [Request::CreateUpload, Request::UploadPart, Request::CompleteUpload, Request::Get, Request::List, Request::Other]
        .into_iter()
        .map(|kind| Rule { kind, nth: Vec::new(), action })
        .collect()
}

/// Retries as upstream's defaults have them (6 tries, 1+2+4+8+16 s), so a
/// test shows they no longer hold the other endpoint back.
const SLOW_RETRIES: [&str; 2] = ["--secondary-chunk-upload-attempts=6", "--secondary-chunk-upload-backoff=1s"];

/// `snapshot --once` with the secondary at `secondary`; (run, seconds).
fn once(prefix: &str, secondary: &str) -> (Run, Duration) {
    let args = with(dual_args(&etcd(), prefix), &[LAG, &format!("--secondary-store-endpoint-override={secondary}")]);
    let args = with(args, &SLOW_RETRIES);
    let started = Instant::now();
    let r = run(&refs(&args), &as_refs(&creds()));
    (r, started.elapsed())
}

/// A healthy `snapshot --once` to both endpoints: the time to beat.
fn healthy_once() -> Duration {
    let (r, took) = once(&unique("healthy"), &env("EBR_S3B_ENDPOINT"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    took
}

/// The primary stored the snapshot whole and the run said the secondary
/// was left behind.
fn primary_only(prefix: &str, r: &Run) {
    assert_eq!(r.code, 0, "one endpoint is enough without --require-all-endpoints: {}", r.stderr);
    let (name, bytes) = only_snapshot(&primary(prefix));
    assert!(bytes.len() > 16 << 20, "the whole snapshot");
    assert!(r.stderr.contains(&format!("Successfully saved snapshot {name} to primary endpoint")), "{}", r.stderr);
    assert!(r.stderr.contains("saved to only one endpoint - Primary: true, Secondary: false"), "{}", r.stderr);
}

#[test]
fn once_with_the_secondary_stalled_stores_on_the_primary_within_the_lag() {
    let baseline = healthy_once();
    let prefix = unique("istall");
    let faults = S3Faults::start(&env("EBR_S3B_ENDPOINT"), all(Action::Stall));
    let (r, took) = once(&prefix, &faults.url);
    eprintln!("measured: --once, secondary stalled: {took:?} (healthy {baseline:?})");
    primary_only(&prefix, &r);
    assert!(r.stderr.contains("more than --max-endpoint-lag behind the other endpoint"), "{}", r.stderr);
    assert!(took < baseline + SLACK, "{took:?} against {baseline:?} healthy");
}

#[test]
fn once_with_the_secondary_refusing_does_not_wait_for_its_retries() {
    let baseline = healthy_once();
    let prefix = unique("irefuse");
    // Nothing listens on port 1: every connection is refused at once, and
    // six tries would wait 1+2+4+8+16 s.
    let (r, took) = once(&prefix, "http://127.0.0.1:1");
    eprintln!("measured: --once, secondary refusing: {took:?} (healthy {baseline:?})");
    primary_only(&prefix, &r);
    assert!(took < baseline + SLACK, "{took:?} against {baseline:?} healthy");
}

#[test]
fn once_with_a_slow_secondary_completes_the_primary_within_the_lag() {
    let baseline = healthy_once();
    let prefix = unique("islow");
    // 64 KiB/s per connection: 16 MiB would take the secondary minutes.
    let faults = S3Faults::start(
        &env("EBR_S3B_ENDPOINT"),
        vec![Rule { kind: Request::UploadPart, nth: Vec::new(), action: Action::Throttle(64 << 10) }],
    );
    let (r, took) = once(&prefix, &faults.url);
    eprintln!("measured: --once, secondary at 64 KiB/s: {took:?} (healthy {baseline:?})");
    primary_only(&prefix, &r);
    // The secondary's share of the buffers may hold the whole snapshot: it
    // is then let go when it has not finished `lag` after the primary.
    assert!(took < baseline + SLACK + Duration::from_secs(2), "{took:?} against {baseline:?} healthy");
}

/// Delta snapshots on the primary while the secondary is at `secondary`:
/// the largest gap between consecutive deltas stored on the primary.
fn delta_gap(tag: &str, secondary: &str) -> u64 {
    let v = v35();
    let prefix = unique(tag);
    let keys = format!("/{}/", unique("k"));
    let proxied = format!("--secondary-store-endpoint-override={secondary}");
    let mut extra = vec![LAG, "--schedule=0 0 1 1 *", "--delta-snapshot-period=2s", &proxied];
    extra.extend(SLOW_RETRIES);
    let s = start(&v.endpoint, &prefix, &extra);
    s.wait_for("Successfully saved snapshot Full-");
    let end = Instant::now() + Duration::from_secs(16);
    let mut n = 0;
    while Instant::now() < end {
        etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}{}", n % 10), &format!("v{n}"));
        n += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = s.stop();
    let mut created: Vec<u64> = listed(&primary(&prefix))
        .iter()
        .filter_map(|o| SnapshotName::parse(&o.name))
        .filter(|n| n.kind == Kind::Incr)
        .map(|n| n.created)
        .collect();
    created.sort();
    eprintln!("measured: primary deltas with the secondary at {secondary}: created at {created:?}");
    if std::env::var("EBR_SHOW_LOG").is_ok() {
        eprintln!("{log}");
    }
    assert!(created.len() >= 5, "deltas kept landing on the primary: {created:?}\n{log}");
    created.windows(2).map(|w| w[1] - w[0]).max().unwrap()
}

#[test]
fn deltas_keep_landing_on_the_primary_while_the_secondary_refuses() {
    let gap = delta_gap("idrefuse", "http://127.0.0.1:1");
    assert!(gap <= 4, "largest gap between primary deltas {gap}s at a 2s period");
}

#[test]
fn deltas_keep_landing_on_the_primary_while_the_secondary_stalls() {
    let faults = S3Faults::start(&env("EBR_S3B_ENDPOINT"), all(Action::Stall));
    let gap = delta_gap("idstall", &faults.url);
    assert!(gap <= 4, "largest gap between primary deltas {gap}s at a 2s period");
}

#[test]
fn restore_with_the_primary_stalled_comes_from_the_secondary_within_the_lag() {
    let v = v35();
    let prefix = unique("irestore");
    let r = run(&refs(&dual_args(&etcd(), &prefix)), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dir = scratch("irestore");
    let started = Instant::now();
    let healthy = restore_and_start(&v, &prefix, &dir.join("healthy"), "h1", &[LAG]);
    let baseline = started.elapsed();
    assert_eq!(healthy.run.code, 0, "{}", healthy.run.stderr);
    drop(healthy);

    let faults = S3Faults::start(&env("EBR_S3A_ENDPOINT"), all(Action::Stall));
    let proxied = format!("--store-endpoint-override={}", faults.url);
    let started = Instant::now();
    let r = restore_and_start(&v, &prefix, &dir.join("stalled"), "s1", &[LAG, &proxied]);
    let took = started.elapsed();
    eprintln!("measured: restore, primary stalled: {took:?} (healthy {baseline:?})");
    assert_eq!(r.run.code, 0, "{}", r.run.stderr);
    assert!(r.run.stderr.contains("from secondary endpoint"), "{}", r.run.stderr);
    assert!(r.run.stderr.contains("Failed to list snapshots from primary endpoint"), "{}", r.run.stderr);
    assert!(took < baseline + SLACK, "{took:?} against {baseline:?} healthy");
}
