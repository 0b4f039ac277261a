//! Upstream's command lines, unchanged: the backup-restore container's
//! flags from upstream's Helm chart run `snapshot --once` against the real
//! etcd 3.5 and both S3 servers, and the scheduled defragmentation of a
//! private etcd gives its free pages back and is followed by a full snapshot.

mod common;

use common::cli::*;
use common::restore::*;
use common::snapshotter::start;
use common::{Etcd, etcdctl, etcdctl_json, free_port, unique};
use etcd_backup_restore::snapshot::{Kind, SnapshotName};

/// The chart's `backup-restore` container args
/// (gardener/etcd-backup-restore `chart/etcd-backup-restore/templates/etcd-statefulset.yaml`,
/// non-TLS branch, LimitBased policy, every optional value set), values
/// filled in; `--endpoints` and the store go to the test servers.
fn chart_args(etcd: &str) -> Vec<String> {
    [
        "--schedule=0 */24 * * *",
        "--max-backups=7",
        "--garbage-collection-policy=LimitBased",
        "--garbage-collection-period=1m",
        "--data-dir=/var/etcd/data/new.etcd",
        "--embedded-etcd-quota-bytes=8589934592",
        "--insecure-transport=true",
        "--insecure-skip-tls-verify=true",
        &format!("--endpoints={etcd}"),
        "--defragmentation-schedule=0 0 */3 * *",
        "--etcd-connection-timeout=30s",
        "--etcd-snapshot-timeout=8m",
        "--etcd-defrag-timeout=8m",
        "--delta-snapshot-period=60s",
        "--delta-snapshot-memory-limit=104857600",
        "--compress-snapshots=true",
        "--compression-policy=gzip",
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=30m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `snapshot --once` with the chart's flags at `--log-level` `level`, into `prefix` on both servers.
fn chart_once(level: &str, prefix: &str) -> Run {
    let mut args = vec!["snapshot".to_string(), "--once".into(), format!("--log-level={level}")];
    args.extend(chart_args(&v35().endpoint));
    // The chart's --storage-provider and --store-prefix, at the test servers.
    args.extend(store_args(prefix));
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    r
}

#[test]
fn chart_flags_take_a_snapshot_and_say_what_has_no_effect() {
    let prefix = unique("dropin");
    let r = chart_once("4", &prefix);
    for (store, what) in [(primary(&prefix), "primary"), (secondary(&prefix), "secondary")] {
        let l = listed(&store);
        assert_eq!(l.len(), 1, "{what}: {l:?}");
        assert!(l[0].name.starts_with("Full-") && l[0].name.ends_with(".gz"), "{what}: {}", l[0].name);
    }
    for flag in ["--data-dir", "--embedded-etcd-quota-bytes", "--auto-compaction-mode", "--auto-compaction-retention"] {
        let line = format!("{flag} has no effect here: ");
        let lines: Vec<_> = r.stderr.lines().filter(|l| l.contains(" INFO ") && l.contains(&line)).collect();
        assert_eq!(lines.len(), 1, "one INFO line for {flag}:\n{}", r.stderr);
    }
    // Flags that take effect are not reported.
    assert!(!r.stderr.contains("--schedule has no effect"), "{}", r.stderr);

    // Numeric log levels are logrus': 2 is error, so the INFO lines go.
    let r = chart_once("2", &unique("dropin-quiet"));
    assert!(!r.stderr.contains(" INFO "), "{}", r.stderr);
}

fn db_sizes(v: &Version, endpoint: &str) -> (u64, u64) {
    let s = &etcdctl_json(&v.ctl, endpoint, &["endpoint", "status"])[0]["Status"];
    (s["dbSize"].as_u64().unwrap(), s["dbSizeInUse"].as_u64().unwrap())
}

#[test]
fn scheduled_defragmentation_shrinks_the_database_then_takes_a_full_snapshot() {
    let v = v35();
    let dir = scratch("defrag");
    let peer = format!("http://127.0.0.1:{}", free_port());
    // A private etcd: defragmenting the shared one would stall other tests.
    let etcd = Etcd::start(&v.etcd, &v.ctl, &dir.join("etcd"), "d1", &peer, &format!("d1={peer}"));
    let value = "v".repeat(512 << 10);
    for i in 0..40 {
        etcdctl_put(&v.ctl, &etcd.client_url, &format!("/big/{i:02}"), &value);
    }
    etcdctl(&v.ctl, &etcd.client_url, &["del", "--prefix", "/big/"]);
    let rev = revision(&v, &etcd.client_url);
    etcdctl(&v.ctl, &etcd.client_url, &["compaction", "--physical", &rev.to_string()]);
    // etcd frees the compacted pages in its next backend commit (100ms).
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let before = loop {
        let sizes = db_sizes(&v, &etcd.client_url);
        if sizes.1 < sizes.0 / 2 || std::time::Instant::now() > end {
            break sizes;
        }
        etcdctl_put(&v.ctl, &etcd.client_url, "/small", "x");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(before.0 >= 16 << 20 && before.1 < before.0 / 2, "free pages expected before: {before:?}");

    let prefix = unique("defrag");
    let s = start(
        &etcd.client_url,
        &prefix,
        &["--schedule=0 0 1 1 *", "--defragmentation-schedule=@every 3s", "--etcd-defrag-timeout=1m"],
    );
    s.wait_for("Defragmented etcd member d1");
    s.wait_for("Defragmentation done; taking a full snapshot");
    // The startup full snapshot, then the one after the defragmentation.
    s.wait_for_lines(&["Full-", "saved to both endpoints"], 2);
    let after = db_sizes(&v, &etcd.client_url);
    let log = s.stop();
    eprintln!("db size before {before:?}, after {after:?} (total, in use)");
    assert!(after.0 < before.0 / 2, "defragmentation must shrink the file: {before:?} -> {after:?}");
    let defrag_at = log.find("Defragmentation done").unwrap();
    let full_after = log[defrag_at..].lines().any(|l| l.contains("Full-") && l.contains("saved to both endpoints"));
    assert!(full_after, "a full snapshot must follow the defragmentation:\n{log}");
    let fulls = listed(&primary(&prefix))
        .iter()
        .filter_map(|o| SnapshotName::parse(&o.name))
        .filter(|n| n.kind == Kind::Full)
        .count();
    assert!(fulls >= 2, "the startup and the post-defragmentation full snapshots");
}
