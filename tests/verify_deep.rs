//! `snapshot verify --deep` against a private etcd 3.4 and 3.5 (each test
//! compacts its own etcd) and both S3 servers: the snapshotter records
//! etcd's HashKV with each snapshot, and the chain applied natively hashes
//! to exactly that value after puts, overwrites, deletes, leased keys and
//! compactions before and after the full snapshot. A record that does not
//! match is named.

mod common;

use common::cli::{binary, etcdctl_put, listed, load, primary, secondary, store_args};
use common::restore::{Version, scratch, v34, v35};
use common::{Etcd, etcdctl, etcdctl_json, free_port, snapshotter, unique};
use etcd_backup_restore::snapshot::{Kind, SnapshotName};
use etcd_backup_restore::store::{self, Store};
use std::time::{Duration, Instant};

fn revision(v: &Version, ep: &str) -> u64 {
    etcdctl_json(&v.ctl, ep, &["endpoint", "status"])[0]["Status"]["header"]["revision"].as_u64().unwrap()
}

fn history(v: &Version, ep: &str, round: u32) {
    let put = |k: &str, val: &str| etcdctl_put(&v.ctl, ep, k, val);
    put("/a", &format!("a{round}"));
    put("/b", "b");
    put("/a", &format!("a{round}-again"));
    put(&format!("/c{round}"), "c");
    etcdctl(&v.ctl, ep, &["del", "/b"]);
    let lease = etcdctl_json(&v.ctl, ep, &["lease", "grant", "600"])["ID"].as_i64().unwrap();
    etcdctl(&v.ctl, ep, &["put", &format!("/leased{round}"), "l", &format!("--lease={lease:x}")]);
    etcdctl(&v.ctl, ep, &["del", "/c", "--prefix"]);
    put("/b", "back");
    let at = revision(v, ep);
    etcdctl(&v.ctl, ep, &["compaction", &(at - 1).to_string(), "--physical"]);
    put("/after-compaction", &format!("{round}"));
}

fn records(s: &dyn Store) -> Vec<String> {
    listed(&*s.sibling("hashkv")).into_iter().map(|o| o.name).collect()
}

fn deep(v: Version, tag: &str) {
    let dir = scratch(tag);
    let peer = format!("http://127.0.0.1:{}", free_port());
    let etcd = Etcd::start(&v.etcd, &v.ctl, &dir.join("etcd"), "d1", &peer, &format!("d1={peer}"));
    let ep = etcd.client_url.clone();
    history(&v, &ep, 1);
    let prefix = unique(tag);
    let s = snapshotter::start(&ep, &prefix, &["--schedule=0 0 1 1 *"]);
    s.wait_for_lines(&["INFO Snapshot Full-", "successfully saved to both endpoints"], 1);
    history(&v, &ep, 2);
    let last = revision(&v, &ep);
    // Wait for the delta holding `last` and its record on both endpoints.
    let end = Instant::now() + Duration::from_secs(60);
    let last_delta = loop {
        let names: Vec<String> = listed(&primary(&prefix)).into_iter().map(|o| o.name).collect();
        let done = names.iter().find(|n| SnapshotName::parse(n).is_some_and(|s| s.last_revision == last)).cloned();
        if let Some(name) = done
            && records(&primary(&prefix)).contains(&name)
            && records(&secondary(&prefix)).contains(&name)
        {
            break name;
        }
        assert!(Instant::now() < end, "no delta (with its record) up to revision {last} within 60s:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    s.stop();
    assert_eq!(SnapshotName::parse(&last_delta).unwrap().kind, Kind::Incr);

    // The record is what etcd says now of that revision.
    let rec: serde_json::Value =
        serde_json::from_slice(&load(&*primary(&prefix).sibling("hashkv"), &last_delta)).unwrap();
    let etcds = etcdctl_json(&v.ctl, &ep, &["endpoint", "hashkv", &format!("--rev={last}")]);
    assert_eq!(rec["hash"], etcds[0]["HashKV"]["hash"], "record {rec} vs etcd {etcds}");
    assert_eq!(rec["revision"].as_u64(), Some(last));
    assert!(rec["compactRevision"].as_i64().unwrap() > 1, "{rec}");

    let run = |extra: &[&str]| {
        let mut args = vec!["snapshot".to_string(), "verify".into(), "--deep".into()];
        args.extend(store_args(&prefix));
        args.push(format!("--snapstore-temp-directory={}", dir.display()));
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = binary(&args).output().unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        eprintln!("{stderr}\n{stdout}");
        (out.status.code(), stdout)
    };
    let (code, out) = run(&["--output=json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let equal = format!("HashKV {} at revision {last} equals etcd's", rec["hash"]);
    for e in 0..2 {
        let deep = v["endpoints"][e]["deep"].as_str().unwrap_or_default();
        assert!(deep.contains(&equal), "{equal}\n{deep}");
        assert_eq!(v["endpoints"][e]["lastVerifiedRevision"].as_u64(), Some(last));
    }
    // Nothing of the temporary database is left behind.
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().starts_with(".etcdbr-verify")), "{left:?}");

    // A record that the chain does not hash to is named, on that endpoint only.
    let mut bad = rec.clone();
    bad["hash"] = serde_json::json!(rec["hash"].as_u64().unwrap() ^ 1);
    store::save(&*secondary(&prefix).sibling("hashkv"), &last_delta, bad.to_string().as_bytes()).unwrap();
    let (code, out) = run(&[]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains(&format!("  secondary endpoint: {last_delta}: HashKV at revision {last} is ")), "{out}");
    assert!(out.starts_with("primary: OK: "), "{out}");
    assert!(out.contains("\nsecondary: FAILED: 2 objects checked, nothing restorable\n"), "{out}");
    drop(etcd);
}

#[test]
fn deep_hashkv_equals_etcd_35() {
    deep(v35(), "deep35");
}

#[test]
fn deep_hashkv_equals_etcd_34() {
    deep(v34(), "deep34");
}
