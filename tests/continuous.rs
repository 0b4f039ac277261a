//! The long-running `snapshot` end to end: full snapshots on a schedule and
//! delta snapshots from a watch, on both real S3 servers, while a writer
//! changes etcd; then `restore` must equal the source at the last delta
//! (every key, value, revision, and etcd's HashKV).

mod common;

use common::cli::*;
use common::restore::*;
use common::snapshotter::start;
use common::{Etcd, env, etcdctl, etcdctl_json, free_port, unique};
use etcd_backup_restore::snapshot::{Kind, SnapshotName};
use etcd_backup_restore::store::Store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A schedule that is never due in a test: only the startup full snapshot.
const YEARLY: &str = "--schedule=0 0 1 1 *";

/// Puts (some large, some overwriting) and deletes under `keys`, in a
/// background thread until the returned guard is dropped.
struct Writer {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

fn writer(v: &Version, keys: &str) -> Writer {
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (ctl, endpoint, keys, flag) = (v.ctl.clone(), v.endpoint.clone(), keys.to_string(), stop.clone());
    let thread = std::thread::spawn(move || {
        let mut n = 0;
        while !flag.load(Ordering::SeqCst) {
            let value = if n % 7 == 3 { "x".repeat(40_000) } else { format!("value {n}") };
            etcdctl_put(&ctl, &endpoint, &format!("{keys}{:03}", n % 23), &value);
            if n % 5 == 4 {
                etcdctl(&ctl, &endpoint, &["del", &format!("{keys}{:03}", (n * 3) % 23)]);
            }
            n += 1;
        }
        n
    });
    Writer { stop, thread: Some(thread) }
}

impl Writer {
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn names(s: &dyn Store) -> Vec<SnapshotName> {
    let mut l: Vec<SnapshotName> = listed(s).iter().filter_map(|o| SnapshotName::parse(&o.name)).collect();
    l.sort_by_key(|n| (n.last_revision, n.created));
    l
}

/// The full snapshots and deltas on both endpoints are the same objects,
/// and the deltas after the latest full snapshot form a chain without gaps
/// (deltas go on while a full snapshot is taken, so they may overlap it).
fn check_stored(prefix: &str) -> Vec<SnapshotName> {
    let (a, b) = (listed(&primary(prefix)), listed(&secondary(prefix)));
    let sizes =
        |l: &[etcd_backup_restore::store::ObjectInfo]| l.iter().map(|o| (o.name.clone(), o.size)).collect::<Vec<_>>();
    assert_eq!(sizes(&a), sizes(&b), "both endpoints must hold the same snapshots");
    let all = names(&primary(prefix));
    let latest = all.iter().rposition(|n| n.kind == Kind::Full).expect("a full snapshot");
    let mut covered = all[latest].last_revision;
    for d in &all[latest + 1..] {
        assert_eq!(d.kind, Kind::Incr);
        assert!(d.start_revision <= covered + 1, "delta {d} must continue the chain at {}", covered + 1);
        covered = d.last_revision;
    }
    all
}

/// etcd's HashKV of `endpoint` at `rev` (0: its current revision).
fn hashkv(v: &Version, endpoint: &str, rev: u64) -> u64 {
    let out = etcdctl_json(&v.ctl, endpoint, &["endpoint", "hashkv", &format!("--rev={rev}")]);
    out[0]["HashKV"]["hash"].as_u64().unwrap()
}

/// Restore `prefix` into a fresh directory, start etcd `v` on it, and
/// compare with the source: keys under `keys` (with their revisions and
/// versions), the revision (the last delta's), and HashKV at it.
fn restore_equals_source(v: &Version, prefix: &str, keys: &str, extra: &[&str]) -> String {
    let last = names(&primary(prefix)).iter().map(|n| n.last_revision).max().unwrap();
    let dir = scratch("cont");
    let r = restore_and_start(v, prefix, &dir, "c1", extra);
    assert_eq!(r.run.code, 0, "{}", r.run.stderr);
    let e = r.etcd.unwrap();
    let restored = kvs(v, &e.client_url, keys);
    assert!(restored.as_array().is_some_and(|a| !a.is_empty()), "keys were restored");
    assert_eq!(restored, kvs(v, &v.endpoint, keys), "every key, value, create/mod revision and version");
    assert_eq!(revision(v, &e.client_url), last, "the revision of the last delta snapshot");
    assert_eq!(hashkv(v, &e.client_url, 0), hashkv(v, &v.endpoint, last), "etcd's HashKV at that revision");
    r.run.stderr
}

/// Full snapshots every 4s (each runs as long as it needs, alongside the
/// deltas) and deltas every second while a writer runs;
/// SIGTERM saves what was watched last. Restore equals the source.
fn scheduled_backup_restores(v: Version) {
    let prefix = unique("sched");
    let keys = format!("/{}/", unique("k"));
    // A lease granted after the first full snapshot: its keys keep their lease ID.
    etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}before"), "the full snapshot has this");
    let s = start(&v.endpoint, &prefix, &["--schedule=@every 4s"]);
    s.wait_for("successfully saved to both endpoints");
    let lease = etcdctl(&v.ctl, &v.endpoint, &["lease", "grant", "600"]);
    let lease_id = lease.split_whitespace().nth(1).unwrap().to_string();
    etcdctl(&v.ctl, &v.endpoint, &["put", &format!("{keys}leased"), "v", &format!("--lease={lease_id}")]);
    let w = writer(&v, &keys);
    // A second full snapshot on the schedule, with deltas around it.
    std::thread::sleep(Duration::from_secs(5));
    s.wait_for_lines(&["INFO Snapshot Full-", "successfully saved to both endpoints"], 2);
    std::thread::sleep(Duration::from_secs(2));
    let writes = w.finish();
    let log = s.stop();
    assert!(writes > 20, "the writer made {writes} writes");
    let all = check_stored(&prefix);
    let fulls = all.iter().filter(|n| n.kind == Kind::Full).count();
    assert!(fulls >= 2, "full snapshots on the schedule: {all:?}");
    assert!(all.iter().filter(|n| n.kind == Kind::Incr).count() >= 4, "delta snapshots every second: {all:?}");
    assert!(all.iter().all(|n| n.compression == ".gz"), "gzip by default");
    for n in &all {
        assert!(log.contains(&format!("INFO Snapshot {n} successfully saved to both endpoints")), "{n}");
    }
    let out = restore_equals_source(&v, &prefix, &keys, &[]);
    assert!(out.contains("delta snapshots up to Incr-"), "{out}");
}

#[test]
fn scheduled_backup_restores_etcd34() {
    scheduled_backup_restores(v34());
}

#[test]
fn scheduled_backup_restores_etcd35() {
    scheduled_backup_restores(v35());
}

/// A restart resumes the chain where the store ends (writes made while it
/// was down included); deltas missing on the primary come from the
/// secondary; a delta missing on both is a gap, reported as such.
#[test]
fn restart_resumes_and_restore_merges_the_endpoints() {
    let v = v35();
    let prefix = unique("resume");
    let keys = format!("/{}/", unique("k"));
    let s = start(&v.endpoint, &prefix, &[YEARLY]);
    s.wait_for("successfully saved to both endpoints");
    let w = writer(&v, &keys);
    std::thread::sleep(Duration::from_secs(3));
    w.finish();
    s.stop();
    for i in 0..5 {
        etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}while-down-{i}"), "written while the snapshotter was down");
    }
    let s = start(&v.endpoint, &prefix, &[YEARLY]);
    s.wait_for("INFO Resuming after Full-");
    let w = writer(&v, &keys);
    std::thread::sleep(Duration::from_secs(3));
    w.finish();
    let log = s.stop();
    assert!(!log.contains("Taking snapshot"), "no new full snapshot on a restart within the schedule:\n{log}");
    let all = check_stored(&prefix);
    assert_eq!(all.iter().filter(|n| n.kind == Kind::Full).count(), 1);
    let deltas: Vec<String> = all.iter().filter(|n| n.kind == Kind::Incr).map(|n| n.to_string()).collect();
    assert!(deltas.len() >= 4, "{deltas:?}");

    // Two deltas only on the secondary: fetched from there.
    for d in &deltas[1..3] {
        primary(&prefix).delete(d).unwrap();
    }
    let out = restore_equals_source(&v, &prefix, &keys, &[]);
    for d in &deltas[1..3] {
        assert!(out.contains(&format!("INFO Successfully fetched snapshot {d} from secondary endpoint")), "{d}");
    }
    assert!(out.contains(&format!("INFO Successfully fetched snapshot {} from primary endpoint", deltas[0])));

    // The last delta's bytes broken on both endpoints (both servers keep
    // objects as plain files): the restore, applying the deltas as they
    // land, names that delta and why, and writes nothing. The byte broken is
    // the last member's CRC-32: the middle byte could fall in a gzip member's
    // header time (a delta is several members), which changes no content.
    let last = deltas.last().unwrap();
    assert!(last.ends_with(".gz"), "{last}");
    for (root, bucket) in [("EBR_S3A_ROOT", "EBR_S3A_BUCKET"), ("EBR_S3B_ROOT", "EBR_S3B_BUCKET")] {
        let file = std::path::Path::new(&env(root)).join(env(bucket)).join(&prefix).join("v2").join(last);
        let mut bytes = std::fs::read(&file).unwrap();
        let crc = bytes.len() - 8;
        bytes[crc] ^= 0x01;
        std::fs::write(&file, bytes).unwrap();
    }
    let dir = scratch("broken-delta");
    let r = restore(&prefix, &dir.join("data"), &[], &creds());
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r.stderr.lines().find(|l| l.contains("ERRO Failed to restore")).unwrap();
    assert!(line.contains(&format!("could not fetch snapshot {last} from any endpoint")), "{line}");
    assert!(!line.contains("was not fetched"), "{line}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing left behind");

    // One delta on neither endpoint: a gap, and nothing written.
    let gone = SnapshotName::parse(&deltas[2]).unwrap();
    secondary(&prefix).delete(&deltas[2]).unwrap();
    let dir = scratch("gap");
    let r = restore(&prefix, &dir.join("data"), &[], &creds());
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r.stderr.lines().find(|l| l.contains("ERRO Failed to restore")).unwrap();
    assert!(line.contains("the snapshot chain has a gap"), "{line}");
    assert!(
        line.contains(&format!("revisions {} to {} are on no endpoint", gone.start_revision, gone.last_revision)),
        "{line}"
    );
    assert!(line.contains(&format!("pass --snapshot {}", deltas[1])), "{line}");
    assert!(!dir.join("data").exists(), "nothing may be written");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no staging directory left");

    // Up to the revision before the gap, on request.
    let r = restore(&prefix, &dir.join("data"), &[&format!("--snapshot={}", deltas[1])], &creds());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("(revision {})", SnapshotName::parse(&deltas[1]).unwrap().last_revision)));
}

/// The watch cannot resume from a compacted revision: a full snapshot is
/// taken instead, and the chain goes on from it.
#[test]
fn compacted_revision_falls_back_to_a_full_snapshot() {
    let v = v35();
    let dir = scratch("compact");
    let peer = format!("http://127.0.0.1:{}", free_port());
    // A private etcd: compacting the shared one would disturb other tests.
    let etcd = Etcd::start(&v.etcd, &v.ctl, &dir.join("etcd"), "p1", &peer, &format!("p1={peer}"));
    let v = Version { endpoint: etcd.client_url.clone(), ..v };
    let prefix = unique("compact");
    let keys = format!("/{}/", unique("k"));
    etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}first"), "1");
    let s = start(&v.endpoint, &prefix, &[YEARLY]);
    s.wait_for("successfully saved to both endpoints");
    s.stop();
    for i in 0..5 {
        etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}{i}"), "then compacted");
    }
    let rev = revision(&v, &v.endpoint);
    etcdctl(&v.ctl, &v.endpoint, &["compaction", &rev.to_string()]);
    let s = start(&v.endpoint, &prefix, &[YEARLY]);
    s.wait_for("taking a full snapshot instead of a delta");
    s.wait_for(&format!("Taking snapshot Full-00000000-{rev:08}-"));
    s.wait_for(&format!("Full-00000000-{rev:08}-"));
    etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}after"), "in a delta after the new full snapshot");
    s.wait_for(&format!("Snapshot Incr-{:08}-", rev + 1));
    s.stop();
    let all = check_stored(&prefix);
    assert_eq!(all.iter().filter(|n| n.kind == Kind::Full).count(), 2, "{all:?}");
    restore_equals_source(&v, &prefix, &keys, &[]);
}

/// Every policy writes its suffix and restores, full and deltas together;
/// gzip (upstream's format) also without any delta being compressed apart.
#[test]
fn every_compression_policy_round_trips() {
    let runs: Vec<_> = [("gzip", ".gz"), ("zlib", ".zlib"), ("lzw", ".Z"), ("zstd", ".zst"), ("none", "")]
        .into_iter()
        .enumerate()
        .map(|(i, (policy, suffix))| {
            std::thread::spawn(move || {
                let v = if i % 2 == 0 { v34() } else { v35() };
                let prefix = unique(&format!("cmp-{policy}"));
                let keys = format!("/{}/", unique("k"));
                etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}before"), "in the full snapshot");
                let flag = match policy {
                    "none" => "--compress-snapshots=false".to_string(),
                    p => format!("--compression-policy={p}"),
                };
                let s = start(&v.endpoint, &prefix, &[YEARLY, &flag]);
                s.wait_for("successfully saved to both endpoints");
                for i in 0..10 {
                    etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}{i}"), &format!("{policy} {i}").repeat(500));
                }
                s.wait_for("Snapshot Incr-");
                s.stop();
                let all = check_stored(&prefix);
                assert!(all.iter().any(|n| n.kind == Kind::Incr), "{policy}: {all:?}");
                assert!(all.iter().all(|n| n.compression == suffix), "{policy}: {all:?}");
                restore_equals_source(&v, &prefix, &keys, &[]);
            })
        })
        .collect();
    for r in runs {
        r.join().unwrap();
    }
}

/// SIGTERM while etcd's snapshot stream is stalled mid-way: both uploads
/// are aborted at once (no object, no multipart upload left) and the
/// snapshotter exits 0, well within the grace period.
#[test]
fn sigterm_during_a_full_snapshot_aborts_it() {
    let v = v34();
    // Enough data that the snapshot is larger than what the proxy lets through.
    etcdctl_put(&v.ctl, &v.endpoint, &format!("/{}", unique("bulk")), &"b".repeat(300 << 10));
    let proxy = common::CutProxy::stalling(&v.endpoint, 128 << 10);
    let prefix = unique("sigfull");
    let s = start(&proxy.url, &prefix, &[YEARLY]);
    s.wait_for("INFO Taking snapshot Full-");
    std::thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    let log = s.stop();
    assert!(stopped.elapsed() < Duration::from_secs(5), "stopped in {:?}", stopped.elapsed());
    assert!(log.contains("interrupted by a signal; every upload was aborted, nothing was stored"), "{log}");
    assert!(listed(&primary(&prefix)).is_empty() && listed(&secondary(&prefix)).is_empty());
    no_uploads_left_on_secondary(&prefix);
}

/// etcd goes back in time (here: re-created from scratch, so its revision
/// is below the snapshots already stored under the prefix). The snapshotter
/// warns once, starts a new history, and its GC deletes none of it; list
/// and restore pick the new history; `--snapshot` still reaches the old one
/// while the policy keeps it.
fn new_history_after_etcd_went_back(policy: &[&str], old_kept: bool) {
    let v = v35();
    let dir = scratch("rollback");
    let prefix = unique("rollback");
    let private = |name: &str| {
        let peer = format!("http://127.0.0.1:{}", free_port());
        let etcd = Etcd::start(&v.etcd, &v.ctl, &dir.join(name), name, &peer, &format!("{name}={peer}"));
        (Version { endpoint: etcd.client_url.clone(), etcd: v.etcd.clone(), ctl: v.ctl.clone() }, etcd)
    };
    // The old history: an etcd at a higher revision than the new one will reach.
    let (old, _old_etcd) = private("old");
    for i in 0..40 {
        etcdctl_put(&old.ctl, &old.endpoint, &format!("/old/{i}"), "old");
    }
    let r = run(&refs(&with(dual_args(&old.endpoint, &prefix), &["--once"])), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let old_full = only_snapshot(&primary(&prefix)).0;
    std::thread::sleep(Duration::from_millis(1100)); // a later creation second

    let (new, _new_etcd) = private("new");
    etcdctl_put(&new.ctl, &new.endpoint, "/new/first", "1");
    let mut extra = vec![YEARLY, "--garbage-collection-period=2s"];
    extra.extend_from_slice(policy);
    let s = start(&new.endpoint, &prefix, &extra);
    s.wait_for("WARN etcd went back in time");
    for i in 0..8 {
        etcdctl_put(&new.ctl, &new.endpoint, &format!("/new/{i}"), "new");
        std::thread::sleep(Duration::from_millis(400));
    }
    s.wait_for_lines(&["INFO Snapshot Incr-", "successfully saved to both endpoints"], 2);
    std::thread::sleep(Duration::from_secs(5)); // two garbage collections
    let log = s.stop();
    assert_eq!(log.matches("WARN etcd went back in time").count(), 1, "one WARN explains it");

    // Nothing this run stored was deleted, on either endpoint.
    let saved: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("INFO Snapshot ").nth(1)?.strip_suffix(" successfully saved to both endpoints"))
        .collect();
    assert!(saved.iter().any(|n| n.starts_with("Full-")) && saved.iter().any(|n| n.starts_with("Incr-")), "{log}");
    for store in [primary(&prefix), secondary(&prefix)] {
        let on: Vec<String> = listed(&store).into_iter().map(|o| o.name).collect();
        for n in &saved {
            assert!(on.iter().any(|o| o == n), "{n} was deleted; left: {on:?}\n{log}");
        }
        assert_eq!(on.contains(&old_full), old_kept, "the old history under this policy: {on:?}");
    }

    // `snapshot list` ends with the new history.
    let mut args = vec!["snapshot".to_string(), "list".into(), "--output=json".into()];
    args.extend(store_args(&prefix));
    let list = binary(&args).output().unwrap();
    assert_eq!(list.status.code(), Some(0), "{}", String::from_utf8_lossy(&list.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let last = rows.as_array().unwrap().last().unwrap()["name"].as_str().unwrap().to_string();
    assert_eq!(last, *saved.last().unwrap(), "the newest snapshot of the new history is listed last");

    // restore: the new history, every key as the new etcd has it.
    let r = restore_and_start(&new, &prefix, &dir.join("latest"), "n1", &[]);
    assert_eq!(r.run.code, 0, "{}", r.run.stderr);
    let e = r.etcd.unwrap();
    assert_eq!(kvs(&new, &e.client_url, "/new/"), kvs(&new, &new.endpoint, "/new/"));
    assert_eq!(kvs(&new, &e.client_url, "/old/"), serde_json::json!(null), "nothing of the old history");
    drop(e);

    if old_kept {
        let r = restore_and_start(&old, &prefix, &dir.join("old"), "o1", &[&format!("--snapshot={old_full}")]);
        assert_eq!(r.run.code, 0, "{}", r.run.stderr);
        let e = r.etcd.unwrap();
        assert_eq!(kvs(&old, &e.client_url, "/old/"), kvs(&old, &old.endpoint, "/old/"));
    }
}

#[test]
fn etcd_back_in_time_exponential_gc_keeps_the_new_history() {
    new_history_after_etcd_went_back(&["--garbage-collection-policy=Exponential"], true);
}

#[test]
fn etcd_back_in_time_limit_based_gc_keeps_the_new_history() {
    // One backup kept: the old history is the one to go.
    new_history_after_etcd_went_back(&["--garbage-collection-policy=LimitBased", "--max-backups=1"], false);
}
