//! Self-healing reconcile against the real servers: what one endpoint
//! missed (down, refused) is copied from the other, byte-identical and
//! verified, so that each endpoint alone restores; a bad source object is
//! never copied; `--dry-run` copies nothing.

mod common;

use common::cli::*;
use common::fault::S3Faults;
use common::restore::{Version, kvs, restore_and_start, revision, scratch, v34, v35};
use common::snapshotter::start;
use common::{env, unique};
use etcd_backup_restore::snapshot::SnapshotName;
use etcd_backup_restore::store::{self, Store};
use std::time::{Duration, Instant};

const REFUSED: &str = "http://127.0.0.1:1";

fn reconcile(prefix: &str, extra: &[&str]) -> Run {
    let mut args = vec!["snapshot".to_string(), "reconcile".into()];
    args.extend(store_args(prefix));
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&refs(&args), &as_refs(&creds()))
}

/// `snapshot --once` with the secondary refusing connections: stored on
/// the primary only.
fn once_on_primary_only(etcd: &str, prefix: &str, extra: &[&str]) {
    let mut args = vec!["snapshot".to_string(), "--once".into(), format!("--endpoints={etcd}")];
    args.extend(store_args(prefix));
    args.push(format!("--secondary-store-endpoint-override={REFUSED}"));
    args.extend(extra.iter().map(|s| s.to_string()));
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("Failed to save snapshot Full-"), "{}", r.stderr);
}

fn names(s: &dyn Store) -> Vec<String> {
    listed(s).into_iter().map(|o| o.name).collect()
}

/// Both endpoints hold the same objects, byte for byte.
fn same_objects(prefix: &str) -> Vec<String> {
    let (a, b) = (primary(prefix), secondary(prefix));
    let sizes = |s: &dyn Store| listed(s).into_iter().map(|o| (o.name, o.size)).collect::<Vec<_>>();
    assert_eq!(sizes(&a), sizes(&b), "both endpoints must hold the same objects");
    let all = names(&a);
    for name in &all {
        assert!(load(&a, name) == load(&b, name), "{name} differs between the endpoints");
    }
    all
}

fn not_crashed(r: &Run) {
    assert!(r.code != 101 && r.code != 134 && !r.stderr.contains("panicked"), "{}", r.stderr);
}

/// (1) A full snapshot and deltas stored while the secondary refused:
/// reconcile copies them, and a restore from the secondary alone equals
/// the source. gzip, the default, so the copies are verified decompressed.
#[test]
fn what_the_secondary_missed_is_copied_and_it_restores_alone_35() {
    missed_is_copied_and_restores_alone(v35(), "rec-missed35");
}

#[test]
fn what_the_secondary_missed_is_copied_and_it_restores_alone_34() {
    missed_is_copied_and_restores_alone(v34(), "rec-missed34");
}

fn missed_is_copied_and_restores_alone(v: Version, tag: &str) {
    let prefix = unique(tag);
    let keys = format!("/{}/", unique("k"));
    common::cli::etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}a"), "in the full snapshot");
    once_on_primary_only(&v.endpoint, &prefix, &[]);
    let down = format!("--secondary-store-endpoint-override={REFUSED}");
    let s = start(&v.endpoint, &prefix, &[&down, "--schedule=@every 1h"]);
    s.wait_for("Resuming after Full-");
    for i in 0..3 {
        common::cli::etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}d{i}"), "in a delta");
        s.wait_for_lines(&["Successfully saved snapshot Incr-", "to primary endpoint"], i + 1);
    }
    s.stop();
    let on_primary = names(&primary(&prefix));
    assert!(on_primary.len() >= 4 && on_primary.iter().all(|n| n.ends_with(".gz")), "{on_primary:?}");
    assert!(names(&secondary(&prefix)).is_empty());

    let r = reconcile(&prefix, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for name in &on_primary {
        let line = format!("INFO Copied snapshot {name} from primary to secondary endpoint");
        assert!(r.stderr.contains(&line), "missing {line:?}");
    }
    assert_eq!(same_objects(&prefix), on_primary);
    no_uploads_left_on_secondary(&prefix);
    // The HashKV records travel with their snapshots.
    let records = |s: &dyn Store| listed(&*s.sibling("hashkv")).into_iter().map(|o| o.name).collect::<Vec<_>>();
    let on_primary_records = records(&primary(&prefix));
    assert!(!on_primary_records.is_empty(), "the snapshotter records HashKV");
    assert_eq!(records(&secondary(&prefix)), on_primary_records);

    let again = reconcile(&prefix, &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(!again.stderr.contains("Copied snapshot"), "nothing left to copy: {}", again.stderr);

    let last = on_primary.iter().filter_map(|n| SnapshotName::parse(n)).map(|n| n.last_revision).max().unwrap();
    let dir = scratch("rec-restore");
    let primary_down = format!("--store-endpoint-override={REFUSED}");
    let r = restore_and_start(&v, &prefix, &dir, "r1", &[&primary_down]);
    assert_eq!(r.run.code, 0, "{}", r.run.stderr);
    let e = r.etcd.unwrap();
    let restored = kvs(&v, &e.client_url, &keys);
    assert_eq!(restored.as_array().map(Vec::len), Some(4), "{restored}");
    assert_eq!(restored, kvs(&v, &v.endpoint, &keys), "every key, value and revision");
    assert_eq!(revision(&v, &e.client_url), last, "the revision of the last delta snapshot");
    // The whole keyspace, not only this test's keys: etcd's own HashKV.
    let hashkv = |ep: &str| {
        common::etcdctl_json(&v.ctl, ep, &["endpoint", "hashkv", &format!("--rev={last}")])[0]["HashKV"]["hash"].clone()
    };
    assert_eq!(hashkv(&e.client_url), hashkv(&v.endpoint), "HashKV at revision {last}");
}

/// (2) The long-running snapshotter with the secondary down at first:
/// within a garbage collection cycle after it is back, it holds what the
/// primary holds, and the metrics file counts the copies.
#[test]
fn the_snapshotter_heals_a_secondary_that_comes_back() {
    let v = v35();
    let prefix = unique("rec-back");
    let keys = format!("/{}/", unique("k"));
    let proxy = S3Faults::down(&env("EBR_S3B_ENDPOINT"));
    let metrics = scratch("rec-metrics").join("etcdbr.prom");
    let s = start(
        &v.endpoint,
        &prefix,
        &[
            &format!("--secondary-store-endpoint-override={}", proxy.url),
            "--garbage-collection-period=2s",
            "--max-endpoint-lag=1s",
            &format!("--metrics-file={}", metrics.display()),
        ],
    );
    s.wait_for_lines(&["Successfully saved snapshot Full-", "to primary endpoint"], 1);
    common::cli::etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}a"), "while the secondary is down");
    s.wait_for_lines(&["Successfully saved snapshot Incr-", "to primary endpoint"], 1);
    assert!(names(&secondary(&prefix)).is_empty());
    let missed = names(&primary(&prefix));

    proxy.set_active(false);
    let back = Instant::now();
    for name in &missed {
        s.wait_for(&format!("INFO Copied snapshot {name} from primary to secondary endpoint"));
    }
    let healed = back.elapsed();
    let log = s.stop();
    eprintln!("the secondary was healed {healed:?} after it came back");
    // One 2s cycle plus the copies, with room for a loaded machine.
    assert!(healed < Duration::from_secs(45), "healed after {healed:?}:\n{log}");
    let all = same_objects(&prefix);
    assert!(missed.iter().all(|n| all.contains(n)));
    no_uploads_left_on_secondary(&prefix);
    // Parsed as Prometheus parses it, beside the snapshot metrics.
    let parsed = std::process::Command::new("python3")
        .args(["-c", PARSE, metrics.to_str().unwrap()])
        .output()
        .expect("python3 with prometheus_client (scripts/test installs it)");
    assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
    let m: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(m["types"]["etcdbr_reconciled"], "counter", "{m}");
    assert_eq!(m["types"]["etcdbr_snapshot_failures"], "counter", "{m}");
    let copied = m["etcdbr_reconciled_total"]["secondary"].as_f64().unwrap_or_else(|| panic!("{m}"));
    assert!(copied >= missed.len() as f64, "{m}");
    assert_eq!(m["etcdbr_reconciled_total"]["primary"].as_f64(), Some(0.0), "{m}");
}

/// Prints {"types": {family: type}, sample name: {endpoint: value}} for
/// the samples without a `kind` label.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {"types": {}}
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    out["types"][family.name] = family.type
    for s in family.samples:
        if "kind" not in s.labels:
            out.setdefault(s.name, {})[s.labels["endpoint"]] = s.value
print(json.dumps(out))
"#;

/// (3) A corrupted object on the primary that the secondary lacks is not
/// copied: the command names it, exits 1, and leaves nothing behind.
#[test]
fn a_corrupted_source_is_refused_and_nothing_is_left() {
    let v = v35();
    let prefix = unique("rec-bad");
    once_on_primary_only(&v.endpoint, &prefix, &["--compress-snapshots=false"]);
    let p = primary(&prefix);
    let (name, mut bytes) = only_snapshot(&p);
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    store::save(&p, &name, &bytes).unwrap();

    let r = reconcile(&prefix, &[]);
    not_crashed(&r);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line =
        r.stderr.lines().find(|l| l.contains(" ERRO ") && l.contains(&name)).expect("an error naming the object");
    assert!(line.contains("primary endpoint's copy is bad") && line.contains("SHA-256"), "{line}");
    assert!(names(&secondary(&prefix)).is_empty(), "nothing copied");
    no_uploads_left_on_secondary(&prefix);
}

/// (4) `--dry-run` says what it would copy and copies nothing; (5) the
/// real run then copies an uncompressed snapshot byte-identical.
#[test]
fn dry_run_copies_nothing_then_an_uncompressed_copy_is_identical() {
    let v = v35();
    let prefix = unique("rec-dry");
    once_on_primary_only(&v.endpoint, &prefix, &["--compress-snapshots=false"]);
    let name = names(&primary(&prefix)).remove(0);
    assert!(!name.ends_with(".gz"), "{name}");

    let r = reconcile(&prefix, &["--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("would copy snapshot {name} from primary to secondary endpoint")),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("Copied snapshot"), "{}", r.stderr);
    assert!(names(&secondary(&prefix)).is_empty(), "--dry-run copied something");

    let r = reconcile(&prefix, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(same_objects(&prefix), [name]);
}

/// A secondary that refuses every part is skipped until the next cycle
/// with one WARN naming it; the upload is aborted, nothing is left.
#[test]
fn a_destination_refusing_writes_is_skipped_and_left_clean() {
    use common::fault::{Action, Request, Rule};
    let v = v35();
    let prefix = unique("rec-refused");
    once_on_primary_only(&v.endpoint, &prefix, &[]);
    once_on_primary_only(&v.endpoint, &prefix, &[]);
    let rules = vec![Rule { kind: Request::UploadPart, nth: Vec::new(), action: Action::Status(500) }];
    let proxy = S3Faults::start(&env("EBR_S3B_ENDPOINT"), rules);
    let r = reconcile(&prefix, &[&format!("--secondary-store-endpoint-override={}", proxy.url)]);
    not_crashed(&r);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let skipped: Vec<&str> = r.stderr.lines().filter(|l| l.contains("skipped until the next cycle")).collect();
    assert_eq!(skipped.len(), 1, "{}", r.stderr);
    assert!(skipped[0].contains(" WARN Reconcile of the secondary endpoint") && skipped[0].contains("Full-"));
    assert!(
        proxy.hits(Request::AbortUpload) == 0
            && proxy.log.lock().unwrap().iter().any(|(k, _)| *k == Request::AbortUpload)
    );
    assert!(names(&secondary(&prefix)).is_empty());
    no_uploads_left_on_secondary(&prefix);
}

/// Bad usage: one line, exit 2, nothing attempted.
#[test]
fn reconcile_needs_two_endpoints_and_a_valid_policy() {
    let prefix = unique("rec-usage");
    let primary_only: Vec<String> = store_args(&prefix).into_iter().filter(|a| !a.starts_with("--secondary")).collect();
    let mut args = vec!["snapshot".to_string(), "reconcile".into()];
    args.extend(primary_only);
    let r = run(&refs(&args), &as_refs(&creds()));
    not_crashed(&r);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.starts_with("etcd-backup-restore: snapshot reconcile needs two endpoints"), "{}", r.stderr);
    let r = reconcile(&prefix, &["--garbage-collection-policy=LimitBased", "--max-backups=0"]);
    not_crashed(&r);
    assert_eq!((r.code, r.stderr.lines().count()), (2, 1), "{}", r.stderr);
    assert!(r.stderr.contains("--max-backups"), "{}", r.stderr);
}

/// Copy throughput between the two local servers: a 64 MiB snapshot (13
/// parts of 5 MiB) from s3s-fs to rclone, timed around the command.
#[test]
fn copy_throughput_between_the_local_servers() {
    use sha2::{Digest, Sha256};
    let prefix = unique("rec-speed");
    let mut data = Vec::with_capacity(64 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < (64 << 20) - 32 - 512 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(data.len() / 512 * 512);
    let sum = Sha256::digest(&data);
    data.extend_from_slice(&sum);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let name = SnapshotName::full(1, now).to_string();
    store::save(&primary(&prefix), &name, &data).unwrap();

    let started = Instant::now();
    let r = reconcile(&prefix, &[]);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(load(&secondary(&prefix), &name) == data, "the copy is byte-identical");
    let mb = data.len() as f64 / 1e6;
    eprintln!("reconcile copied {mb:.1} MB in {secs:.2}s: {:.1} MB/s", mb / secs);
}

/// (5) The long-running snapshotter's scheduled verify (`--deep`) finds a
/// copy damaged at rest, exports it, and the next reconcile replaces it
/// from the good copy; the metrics then say both endpoints verify.
#[test]
fn the_scheduled_verify_finds_bit_rot_and_reconcile_repairs_it() {
    let v = v35();
    let prefix = unique("rec-rot");
    let dir = scratch("rec-rot");
    let metrics = dir.join("etcdbr.prom");
    let s = start(
        &v.endpoint,
        &prefix,
        &[
            "--schedule=0 0 1 1 *",
            "--verify-schedule=@every 2s",
            "--deep",
            &format!("--snapstore-temp-directory={}", dir.display()),
            "--garbage-collection-period=2s",
            &format!("--metrics-file={}", metrics.display()),
        ],
    );
    s.wait_for_lines(&["INFO Snapshot Full-", "successfully saved to both endpoints"], 1);
    let full = names(&primary(&prefix)).into_iter().find(|n| n.starts_with("Full-")).unwrap();
    let good = load(&primary(&prefix), &full);
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x10;
    store::save(&secondary(&prefix), &full, &bad).unwrap();

    s.wait_for(&format!("WARN secondary endpoint: {full}: "));
    s.wait_for(&format!("INFO Replaced the bad copy of snapshot {full} from primary to secondary endpoint"));
    assert!(load(&secondary(&prefix), &full) == good, "the secondary holds the good bytes again");
    // A verify after the repair: both endpoints verify (deep) again. (One
    // that read the bad copy may still end after the repair: wait for the
    // metrics, not a log line.)
    let text = || std::fs::read_to_string(&metrics).unwrap_or_default();
    let ok = |m: &str, role: &str| m.contains(&format!("etcdbr_verify_success{{endpoint=\"{role}\"}} 1\n"));
    let end = Instant::now() + Duration::from_secs(30);
    while !(ok(&text(), "primary") && ok(&text(), "secondary")) {
        assert!(Instant::now() < end, "no clean verify after the repair:\n{}\n{}", text(), s.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    s.stop();
    let m = text();
    for role in ["primary", "secondary"] {
        assert!(m.contains(&format!("etcdbr_verified_revision{{endpoint=\"{role}\"}} ")), "{m}");
        assert!(m.contains(&format!("etcdbr_verify_timestamp_seconds{{endpoint=\"{role}\"}} ")), "{m}");
    }
    let parsed = std::process::Command::new("python3").args(["-c", PARSE, metrics.to_str().unwrap()]).output().unwrap();
    assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
    let p: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(p["types"]["etcdbr_verify_success"], "gauge", "{p}");
    assert_eq!(p["etcdbr_reconciled_total"]["secondary"].as_f64(), Some(1.0), "{p}");
}
