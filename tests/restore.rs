//! `restore` and `snapshot list` end to end: back up real etcd 3.4/3.5 with
//! the binary, restore with the binary, start real etcd on the result.

mod common;

use common::cli::*;
use common::restore::*;
use common::{CutProxy, Etcd, env, etcdctl, etcdctl_json, free_port, unique};
use etcd_backup_restore::store::Store;
use serde_json::Value;
use std::path::Path;
use std::sync::Mutex;

/// Tests that start etcd on the fixed peer port of the reference vector.
static FIXED_PORT: Mutex<()> = Mutex::new(());

/// Keys under a fresh prefix: small ones, and two of 200 KB (overflow pages).
fn write_keys(v: &Version) -> String {
    let p = format!("/{}/", unique("restore"));
    for i in 0..40 {
        etcdctl_put(&v.ctl, &v.endpoint, &format!("{p}small/{i:03}"), &format!("value {i}"));
    }
    etcdctl_put(&v.ctl, &v.endpoint, &format!("{p}small/007"), "overwritten");
    etcdctl(&v.ctl, &v.endpoint, &["del", &format!("{p}small/013")]);
    for i in 0..2 {
        etcdctl_put(&v.ctl, &v.endpoint, &format!("{p}big/{i}"), &format!("{i}").repeat(200 << 10));
    }
    p
}

/// Back up `v` to both endpoints under a fresh prefix: (prefix, object name).
fn backup(v: &Version) -> (String, String) {
    let prefix = unique("rs");
    let r = run(&refs(&dual_args(&v.endpoint, &prefix)), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let name = only_snapshot(&primary(&prefix)).0;
    (prefix, name)
}

/// A second snapshot of `v` with `args`, a second after the first (its
/// name's time differs) and with one more key (its revision too).
fn back_up_again(v: &Version, args: &[String]) {
    std::thread::sleep(std::time::Duration::from_millis(1100));
    etcdctl(&v.ctl, &v.endpoint, &["put", &unique("/again"), "x"]);
    let r = run(&refs(args), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// The revision inside a stored snapshot, by etcd's own etcdutl.
fn etcdutl_revision(bytes: &[u8], dir: &Path) -> u64 {
    etcdutl_status(&bytes[..bytes.len() - 32], dir)["revision"].as_u64().unwrap()
}

/// `etcdutl snapshot status` of a copy of `db` (it walks the whole file
/// with Go bbolt and fails on a broken one).
fn etcdutl_status(db: &[u8], dir: &Path) -> Value {
    let f = dir.join("snapshot.db");
    std::fs::write(&f, db).unwrap();
    let out = std::process::Command::new(env("EBR_ETCDUTL35_BIN"))
        .args(["snapshot", "status", f.to_str().unwrap(), "-w", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()
}

/// Backup → restore → etcd `v` on the result: same keys and revision,
/// the member ID etcd computes, writes work, and survive a restart.
fn round_trip(v: Version) {
    let keys = write_keys(&v);
    let (prefix, name) = backup(&v);
    let dir = scratch("rt");
    let data = dir.join("data");
    let _port = FIXED_PORT.lock().unwrap_or_else(|e| e.into_inner());
    // The reference vector: this URL and token give member c340e2006ae8e270 in cluster 482a263d31c02ea0.
    let peer = "http://127.0.0.1:24480";
    let cluster = format!("r1={peer}");
    let r = restore(
        &prefix,
        &data,
        &[
            "--name=r1",
            &format!("--initial-cluster={cluster}"),
            &format!("--initial-advertise-peer-urls={peer}"),
            "--initial-cluster-token=tok-single",
        ],
        &creds(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for line in [
        "INFO Listed 1 snapshots from primary endpoint".to_string(),
        "INFO Listed 1 snapshots from secondary endpoint".to_string(),
        "INFO Merged snapshot list: 1 snapshots total (Primary: 1, Secondary: 1)".to_string(),
        format!("INFO Successfully fetched snapshot {name} from primary endpoint"),
        "INFO Successfully restored the etcd data directory.".to_string(),
    ] {
        assert!(r.stderr.contains(&line), "missing {line:?}");
    }
    assert!(!dir.read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".restore-")));

    let stored = load(&primary(&prefix), &name);
    let want_rev = etcdutl_revision(&stored, &dir);
    // The snapshot itself, changed in place by one commit as etcdutl does
    // (a few pages more), and readable by Go bbolt.
    let db = std::fs::read(data.join("member/snap/db")).unwrap();
    let snap_len = stored.len() - 32;
    assert!(db.len() > snap_len && db.len() <= snap_len + 8 * 4096, "db {} bytes, snapshot {snap_len}", db.len());
    assert_eq!(etcdutl_status(&db, &dir)["revision"].as_u64(), Some(want_rev));
    let e = Etcd::start(&v.etcd, &v.ctl, &data, "r1", peer, &cluster);
    assert_eq!(kvs(&v, &e.client_url, &keys), kvs(&v, &v.endpoint, &keys), "every key and value as in the source");
    assert_eq!(revision(&v, &e.client_url), want_rev, "revision as in the snapshot");
    let members = etcdctl_json(&v.ctl, &e.client_url, &["member", "list"]);
    assert_eq!(members["members"].as_array().unwrap().len(), 1);
    assert_eq!(members["members"][0]["ID"].as_u64().unwrap(), 0xc340e2006ae8e270);
    assert_eq!(members["members"][0]["name"], "r1");
    assert_eq!(members["header"]["cluster_id"].as_u64().unwrap(), 0x482a263d31c02ea0);
    etcdctl(&v.ctl, &e.client_url, &["put", &format!("{keys}after"), "restore"]);
    assert_eq!(revision(&v, &e.client_url), want_rev + 1);
    drop(e);
    let e = Etcd::start(&v.etcd, &v.ctl, &data, "r1", peer, &cluster);
    assert_eq!(kvs(&v, &e.client_url, &format!("{keys}after"))[0]["mod_revision"].as_u64(), Some(want_rev + 1));
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn round_trip_etcd34() {
    round_trip(v34());
}

#[test]
fn round_trip_etcd35() {
    round_trip(v35());
}

#[test]
fn bump_revision_marks_compacted() {
    let v = v35();
    let keys = write_keys(&v);
    let (prefix, name) = backup(&v);
    let dir = scratch("bump");
    let want = etcdutl_revision(&load(&primary(&prefix), &name), &dir);
    let Restored { run: r, etcd } =
        restore_and_start(&v, &prefix, &dir, "b1", &["--bump-revision=1000000", "--mark-compacted"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let e = etcd.unwrap();
    assert_eq!(revision(&v, &e.client_url), want + 1_000_000);
    assert_eq!(kvs(&v, &e.client_url, &keys), kvs(&v, &v.endpoint, &keys));
    let old = std::process::Command::new(&v.ctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &e.client_url, "get", "--rev", &want.to_string(), &keys])
        .output()
        .unwrap();
    assert!(!old.status.success() && String::from_utf8_lossy(&old.stderr).contains("compacted"), "{old:?}");
    etcdctl(&v.ctl, &e.client_url, &["put", "after-bump", "x"]);
    assert_eq!(revision(&v, &e.client_url), want + 1_000_001);
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn three_member_cluster_has_quorum() {
    let v = v35();
    let keys = write_keys(&v);
    let (prefix, _) = backup(&v);
    let dir = scratch("three");
    let peers: Vec<String> = (0..3).map(|_| format!("http://127.0.0.1:{}", free_port())).collect();
    let cluster = peers.iter().enumerate().map(|(i, p)| format!("m{i}={p}")).collect::<Vec<_>>().join(",");
    for (i, peer) in peers.iter().enumerate() {
        let r = restore(
            &prefix,
            &dir.join(format!("m{i}")),
            &[
                &format!("--name=m{i}"),
                &format!("--initial-cluster={cluster}"),
                &format!("--initial-advertise-peer-urls={peer}"),
                "--initial-cluster-token=three",
            ],
            &creds(),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    // No member is healthy alone: start all three, then wait.
    let nodes: Vec<Etcd> = (0..3)
        .map(|i| {
            Etcd::start_with(&v.etcd, &v.ctl, &dir.join(format!("m{i}")), &format!("m{i}"), &peers[i], &cluster, false)
        })
        .collect();
    for n in &nodes {
        n.wait_healthy(&v.ctl);
    }
    etcdctl(&v.ctl, &nodes[0].client_url, &["put", &format!("{keys}quorum"), "yes"]);
    let got = kvs(&v, &nodes[2].client_url, &format!("{keys}quorum"));
    assert_eq!(got[0]["value"], "eWVz", "written on m0, read on m2");
    assert_eq!(
        kvs(&v, &nodes[1].client_url, &keys).as_array().unwrap().len(),
        42,
        "40 small - 1 deleted + 2 big + quorum"
    );
    let members = etcdctl_json(&v.ctl, &nodes[1].client_url, &["member", "list"]);
    assert_eq!(members["members"].as_array().unwrap().len(), 3);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A restore that must come from the secondary; checks the data directory.
fn restore_from_secondary(prefix: &str, name: &str, extra: &[&str], want_log: &[&str]) -> String {
    let dir = scratch("failover");
    let data = dir.join("data");
    let r = restore(prefix, &data, extra, &creds());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("INFO Successfully fetched snapshot {name} from secondary endpoint")),
        "{}",
        r.stderr
    );
    for l in want_log {
        assert!(r.stderr.contains(l), "missing {l:?}");
    }
    assert!(data.join("member/snap/db").is_file() && data.join("member/wal").is_dir());
    let _ = std::fs::remove_dir_all(&dir);
    r.stderr
}

#[test]
fn failover_primary_down() {
    let (prefix, name) = backup(&v34());
    restore_from_secondary(
        &prefix,
        &name,
        &["--store-endpoint-override=http://127.0.0.1:1"],
        &["ERRO Failed to list snapshots from primary endpoint", "INFO Listed 1 snapshots from secondary endpoint"],
    );
}

#[test]
fn failover_primary_object_deleted() {
    let (prefix, name) = backup(&v34());
    primary(&prefix).delete(&name).unwrap();
    restore_from_secondary(
        &prefix,
        &name,
        &[],
        &["Merged snapshot list: 1 snapshots total (Primary: 0, Secondary: 1)"],
    );
}

/// Flip one bit of the primary's copy at `at`: s3s-fs keeps objects as
/// plain files, so this changes it behind the server's back.
fn corrupt_on_primary(prefix: &str, name: &str, at: usize) {
    let file = Path::new(&env("EBR_S3A_ROOT")).join(env("EBR_S3A_BUCKET")).join(prefix).join("v2").join(name);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
}

/// A backup of three 8 MiB parts, the last one over 1000 bytes: (prefix, name, size).
/// From a private etcd: the shared one stays small for the one-part tests.
fn three_part_backup() -> (String, String, u64) {
    let dir = scratch("three-parts");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let v = v34();
    let etcd = Etcd::start(&v.etcd, &v.ctl, &dir.join("etcd"), "t1", &peer, &format!("t1={peer}"));
    let v = Version { endpoint: etcd.client_url.clone(), ..v };
    grow_db(&v, 17 << 20);
    let (prefix, name) = backup(&v);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
    let size = primary(&prefix).list().unwrap()[0].size;
    assert!(size > (16 << 20) + 1000, "the snapshot needs a third part: {size}");
    (prefix, name, size)
}

#[test]
fn failover_primary_object_corrupted() {
    let (prefix, name) = backup(&v34());
    corrupt_on_primary(&prefix, &name, 5000);
    restore_from_secondary(&prefix, &name, &[], &["Failed to fetch snapshot", "SHA-256 trailer mismatch"]);
}

#[test]
fn failover_primary_drops_mid_download_resumes_on_secondary() {
    let (prefix, name, size) = three_part_backup();
    // Every answer for the second part breaks after 600 kB; the others pass.
    let proxy = CutProxy::cutting_range(&env("EBR_S3A_ENDPOINT"), 8 << 20, 600_000);
    let log = restore_from_secondary(
        &prefix,
        &name,
        &[&format!("--store-endpoint-override={}", proxy.url)],
        &["Failed to fetch snapshot", "GetObject of bytes 8388608..16777216"],
    );
    // How many of the other parts finished first depends on timing; the
    // broken one never counts, and at least one other part does.
    let resumed = format!("Resuming snapshot {name} from secondary endpoint: ");
    let line = log.lines().find_map(|l| l.split_once(&resumed)).map(|(_, rest)| rest).expect("a resume line");
    let have: u64 = line.split(' ').next().unwrap().parse().unwrap();
    assert!(line.ends_with(&format!("of {size} bytes already fetched")), "{line}");
    assert!(have >= 8 << 20 && have <= size - (8 << 20), "{line}");
    assert!(have.is_multiple_of(8 << 20) || have % (8 << 20) == size % (8 << 20), "whole parts only: {line}");
}

/// The primary breaks a part, the secondary supplies it, and the part after
/// it (the primary's) turns out corrupt: the mixed download fails its
/// checks, is named after both endpoints, and the secondary's copy is
/// then fetched whole.
#[test]
fn bad_bytes_after_a_resume_fetch_the_secondary_whole() {
    let (prefix, name, size) = three_part_backup();
    corrupt_on_primary(&prefix, &name, size as usize - 1000);
    // The reader waits at the broken second part, so it reaches the
    // corrupt third one only after the resume.
    let proxy = CutProxy::cutting_range(&env("EBR_S3A_ENDPOINT"), 8 << 20, 600_000);
    let log = restore_from_secondary(
        &prefix,
        &name,
        &[&format!("--store-endpoint-override={}", proxy.url)],
        &[
            &format!("Resuming snapshot {name} from secondary endpoint: "),
            &format!("Failed to fetch snapshot {name} from primary and secondary endpoints: "),
        ],
    );
    let order: Vec<usize> =
        ["Resuming snapshot", "from primary and secondary endpoints", "Successfully fetched snapshot"]
            .iter()
            .map(|l| log.find(l).unwrap())
            .collect();
    assert!(order.is_sorted(), "{log}");
}

/// A snapshot of one part is one GET streamed through the checks, with no
/// download file: broken mid-body, it is fetched again whole (the retry
/// policy), then from the secondary.
#[test]
fn failover_primary_breaks_a_one_part_snapshot_mid_body() {
    let (prefix, name) = backup(&v34());
    let size = primary(&prefix).list().unwrap()[0].size;
    assert!(size < 8 << 20 && size > 20_000, "one part, longer than the cut: {size}");
    // Every answer for a range from byte 0 breaks after 10 kB (headers included).
    let proxy = CutProxy::cutting_range(&env("EBR_S3A_ENDPOINT"), 0, 10_000);
    let log = restore_from_secondary(
        &prefix,
        &name,
        &[
            &format!("--store-endpoint-override={}", proxy.url),
            "--chunk-upload-attempts=2",
            "--chunk-upload-backoff=50ms",
        ],
        &[
            &format!("WARN primary endpoint: fetching {name} failed (attempt 1/2), retrying in 50ms: "),
            &format!("WARN Failed to fetch snapshot {name} from primary endpoint: "),
        ],
    );
    let failed = log.lines().find(|l| l.contains("Failed to fetch snapshot")).unwrap();
    assert!(failed.contains("broken after ") || failed.contains("the object ended after "), "{failed}");
    assert!(!log.contains("Resuming"), "a one-part snapshot is fetched whole: {log}");
}

#[test]
fn a_newer_full_snapshot_on_the_secondary_wins_over_the_primarys_own_chain() {
    let v = v34();
    let (prefix, older) = backup(&v);
    back_up_again(&v, &dual_args(&v.endpoint, &prefix));
    let newer = primary(&prefix).list().unwrap().into_iter().map(|o| o.name).find(|n| *n != older).unwrap();
    // The primary missed the newer one: its own listing (whose chain starts
    // downloading first) holds the older only; the merged one wins.
    primary(&prefix).delete(&newer).unwrap();
    let log = restore_from_secondary(&prefix, &newer, &[], &[&format!("Restored {newer} (revision ")]);
    assert!(!log.contains(&format!("Restored {older}")) && !log.contains("Failed to fetch"), "{log}");
}

#[test]
fn both_endpoints_down_names_both_causes() {
    let dir = scratch("bothdown");
    let r = restore(
        &unique("x"),
        &dir.join("data"),
        &["--store-endpoint-override=http://127.0.0.1:1", "--secondary-store-endpoint-override=http://127.0.0.1:2"],
        &creds(),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let last = r.stderr.lines().last().unwrap();
    assert!(last.contains("primary: ") && last.contains("127.0.0.1:1"), "{last}");
    assert!(last.contains("secondary: ") && last.contains("127.0.0.1:2"), "{last}");
    assert!(!dir.join("data").exists());
    assert_eq!(dir.read_dir().unwrap().count(), 0, "nothing left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nothing_found_names_both_locations() {
    let dir = scratch("nothing");
    let prefix = unique("empty");
    let r = restore(&prefix, &dir.join("data"), &[], &creds());
    assert_eq!(r.code, 1, "{}", r.stderr);
    let last = r.stderr.lines().last().unwrap();
    assert!(last.contains("no full snapshot found"), "{last}");
    assert!(last.contains(&format!("s3://{}/{prefix}/v2/", env("EBR_S3A_BUCKET"))), "{last}");
    assert!(last.contains(&format!("s3://{}/{prefix}/v2/", env("EBR_S3B_BUCKET"))), "{last}");
    assert_eq!(dir.read_dir().unwrap().count(), 0, "nothing left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_a_non_empty_data_dir_and_leaves_it_alone() {
    let dir = scratch("nonempty");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("precious"), "keep me").unwrap();
    let r = restore(&unique("x"), &data, &[], &creds());
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("is not empty") && r.stderr.contains(data.to_str().unwrap()), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(data.join("precious")).unwrap(), "keep me");
    assert_eq!(dir.read_dir().unwrap().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn snapshot_list_merges_both_endpoints() {
    let v = v34();
    let (prefix, both) = backup(&v);
    // A second snapshot on the primary only (single-endpoint mode).
    let args: Vec<String> = dual_args(&v.endpoint, &prefix).into_iter().take(8).collect();
    back_up_again(&v, &args);
    let mut list = vec!["snapshot".to_string(), "list".into()];
    list.extend(store_args(&prefix));
    let out = binary(&list).args(["--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["name"], both.as_str());
    assert_eq!(rows[0]["location"], "both");
    assert_eq!(rows[1]["location"], "primary");
    assert_eq!(rows[1]["kind"], "Full");
    assert!(rows[1]["lastRevision"].as_u64() > rows[0]["lastRevision"].as_u64());
    let text = binary(&list).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[1].starts_with(&both) && lines[1].ends_with(" both"), "{text}");
    assert!(lines[2].ends_with(" primary"), "{text}");
}

#[test]
fn sigterm_while_stalled_leaves_nothing_behind() {
    let v = v34();
    etcdctl_put(&v.ctl, &v.endpoint, &unique("/filler"), &"f".repeat(1 << 20));
    let (prefix, _) = backup(&v);
    let proxy = CutProxy::stalling(&env("EBR_S3A_ENDPOINT"), 600_000);
    let dir = scratch("sigterm");
    let data = dir.join("data");
    // Primary only, through a proxy that stops sending mid-download.
    let mut args = vec!["restore".to_string(), format!("--data-dir={}", data.display())];
    args.extend(store_args(&prefix).into_iter().filter(|a| !a.starts_with("--secondary")));
    args.push(format!("--store-endpoint-override={}", proxy.url));
    let mut child = binary(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let staged = || {
        dir.read_dir()
            .unwrap()
            .flatten()
            // A snapshot stored as is downloads straight into the db.
            .flat_map(|e| [e.path().join("fetch/snapshot.download"), e.path().join("member/snap/db")])
            .find(|p| p.metadata().is_ok_and(|m| m.len() > 0))
    };
    // Wait until the download stalls: some bytes, then no growth for 500 ms.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (mut last, mut since) = (0, std::time::Instant::now());
    loop {
        assert!(std::time::Instant::now() < deadline, "the restore never stalled");
        let len = staged().map_or(0, |p| p.metadata().map_or(0, |m| m.len()));
        if len != last {
            (last, since) = (len, std::time::Instant::now());
        } else if len > 0 && since.elapsed() > std::time::Duration::from_millis(500) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let started = std::time::Instant::now();
    // SAFETY: sends SIGTERM to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    eprintln!("{stderr}");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    assert!(stderr.contains("WARN Received SIGTERM"), "{stderr}");
    // Stuck in a read, the restore cannot notice the flag: the watcher
    // cleans up after the grace period.
    assert!(stderr.contains("Still running 10s after the signal"), "{stderr}");
    assert!(stderr.contains("Removed the unfinished"), "{stderr}");
    assert_eq!(dir.read_dir().unwrap().count(), 0, "no staging directory, no data directory");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn local_secondary_backs_up_and_restores_when_the_primary_is_down() {
    let v = v35();
    let keys = write_keys(&v);
    let dir = scratch("local");
    let nfs = dir.join("nfs");
    std::fs::create_dir_all(&nfs).unwrap();
    let prefix = unique("loc");
    let local =
        ["--secondary-storage-provider=Local".to_string(), format!("--secondary-store-container={}", nfs.display())];
    let local: Vec<&str> = local.iter().map(String::as_str).collect();
    let r = run(&refs(&with(dual_args(&v.endpoint, &prefix), &local)), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let name = only_snapshot(&primary(&prefix)).0;
    assert!(r.stderr.contains(&format!("INFO Snapshot {name} successfully saved to both endpoints")), "{}", r.stderr);
    let stored = nfs.join(&prefix).join("v2");
    assert_eq!(std::fs::read(stored.join(&name)).unwrap(), load(&primary(&prefix), &name), "identical bytes");
    assert_eq!(stored.read_dir().unwrap().count(), 1, "no temporary file left");

    let primary_down = [&local[..], &["--store-endpoint-override=http://127.0.0.1:1"]].concat();
    let Restored { run: r, etcd } = restore_and_start(&v, &prefix, &dir, "l1", &primary_down);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("INFO Successfully fetched snapshot {name} from secondary endpoint")),
        "{}",
        r.stderr
    );
    assert_eq!(kvs(&v, &etcd.unwrap().client_url, &keys), kvs(&v, &v.endpoint, &keys));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Upstream compresses full snapshots by default: the same bytes gzipped,
/// zlib'd or LZW'd (Go's compress/lzw) under `<name><suffix>` restore.
fn restores_upstream_compressed(suffix: &str) {
    use std::io::Write;
    let v = v35();
    let keys = write_keys(&v);
    let (plain_prefix, name) = backup(&v);
    let bytes = load(&primary(&plain_prefix), &name);
    let packed = match suffix {
        ".gz" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&bytes).unwrap();
            e.finish().unwrap()
        }
        ".zlib" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&bytes).unwrap();
            e.finish().unwrap()
        }
        ".Z" => {
            let mut e = etcd_backup_restore::compression::LzwWriter::new(Vec::new());
            e.write_all(&bytes).unwrap();
            e.finish().unwrap()
        }
        _ => unreachable!(),
    };
    let prefix = unique("packed");
    let packed_name = format!("{name}{suffix}");
    // The primary's copy is damaged in the middle: it must fail to
    // decompress or verify, and the secondary's copy is used.
    let mut damaged = packed.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    etcd_backup_restore::store::save(&primary(&prefix), &packed_name, &damaged).unwrap();
    etcd_backup_restore::store::save(&secondary(&prefix), &packed_name, &packed).unwrap();

    let dir = scratch("packed");
    let Restored { run: r, etcd } = restore_and_start(&v, &prefix, &dir, "z1", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("WARN Failed to fetch snapshot {packed_name} from primary endpoint")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&format!("INFO Successfully fetched snapshot {packed_name} from secondary endpoint")));
    assert_eq!(kvs(&v, &etcd.unwrap().client_url, &keys), kvs(&v, &v.endpoint, &keys));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restores_upstream_gzip() {
    restores_upstream_compressed(".gz");
}

#[test]
fn restores_upstream_zlib() {
    restores_upstream_compressed(".zlib");
}

#[test]
fn restores_upstream_lzw() {
    restores_upstream_compressed(".Z");
}

/// The default: gzip, compressed in parallel members; and the other
/// policies. Each object is the same on both endpoints and restores.
#[test]
fn compressed_backups_restore_for_every_policy() {
    let v = v35();
    let keys = write_keys(&v);
    grow_db(&v, 3 << 20);
    for (flags, suffix) in
        [(&[][..], ".gz"), (&["--compression-policy=zlib"][..], ".zlib"), (&["--compression-policy=lzw"][..], ".Z")]
    {
        let prefix = unique("cmp");
        let mut args = vec!["snapshot".to_string(), "--once".into(), format!("--endpoints={}", v.endpoint)];
        args.extend(store_args(&prefix));
        args.extend(flags.iter().map(|f| f.to_string()));
        let r = run(&refs(&args), &as_refs(&creds()));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let objects = listed(&primary(&prefix));
        assert_eq!(objects.len(), 1, "{objects:?}");
        let name = objects[0].name.clone();
        assert!(name.ends_with(suffix), "{name}");
        let packed = load(&primary(&prefix), &name);
        assert_eq!(packed.len() as u64, objects[0].size);
        assert!(packed == load(&secondary(&prefix), &name), "identical bytes on both endpoints");
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut etcd_backup_restore::compression::decoder(suffix, &packed[..]).unwrap(),
            &mut plain,
        )
        .unwrap();
        assert!(packed.len() < plain.len(), "{suffix}: {} bytes packed from {}", packed.len(), plain.len());
        let mut check = etcd_backup_restore::snapshot::TrailerCheck::default();
        check.update(&plain);
        check.finish().unwrap();
        if suffix == ".gz" {
            // Parallel compression: one gzip member per MiB.
            let members = packed.windows(3).filter(|w| w == &[0x1f, 0x8b, 0x08]).count();
            assert!(members as u64 >= plain.len() as u64 >> 20, "{members} members");
        }

        let dir = scratch("cmp");
        let Restored { run: r, etcd } = restore_and_start(&v, &prefix, &dir, "c1", &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(kvs(&v, &etcd.unwrap().client_url, &keys), kvs(&v, &v.endpoint, &keys), "{suffix}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
