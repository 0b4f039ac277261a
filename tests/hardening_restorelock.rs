//! Issue 11, items 5 and 7, against the real servers: two restores into
//! one data directory (one wins, the other names it at once), leftovers
//! removed only when provably a dead restore's, symlinked `--data-dir`
//! refused before any download, and delta snapshots whose events do not
//! match their names refused naming the object.

mod common;

use common::cli::*;
use common::restore::*;
use common::{Etcd, free_port, unique};
use etcd_backup_restore::delta::{Event, EventKind, Writer};
use etcd_backup_restore::snapshot::SnapshotName;
use etcd_backup_restore::store::save;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A full snapshot of `v` on both endpoints under a fresh prefix, with a
/// key under `keys` in it: (prefix, object name).
fn backup(v: &Version, keys: &str) -> (String, String) {
    etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}k"), "v");
    let prefix = unique("lock");
    let r = run(&refs(&dual_args(&v.endpoint, &prefix)), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    (prefix.clone(), listed(&primary(&prefix))[0].name.clone())
}

/// The flags of a single-member restore of `prefix` into `data` as `name`.
fn restore_args(prefix: &str, data: &Path, name: &str, peer: &str) -> Vec<String> {
    let mut args = vec![
        "restore".to_string(),
        format!("--data-dir={}", data.display()),
        format!("--name={name}"),
        format!("--initial-cluster={name}={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
    ];
    args.extend(store_args(prefix));
    args
}

/// A full snapshot of etcd 3.4 under a fresh prefix and an empty scratch
/// directory for the restore: (prefix, directory).
fn backed_up(tag: &str) -> (String, std::path::PathBuf) {
    let (prefix, _) = backup(&v34(), &format!("/{}/", unique(tag)));
    (prefix, scratch(tag))
}

/// One restore of `prefix` into `data` as member `name`, on a free peer port.
fn restore_once(prefix: &str, data: &Path, name: &str) -> Run {
    let peer = format!("http://127.0.0.1:{}", free_port());
    run(&refs(&restore_args(prefix, data, name, &peer)), &as_refs(&creds()))
}

/// What is in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = dir.read_dir().unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    v.sort();
    v
}

fn no_panic(stderr: &str) {
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn two_restores_into_one_data_dir_one_wins_the_other_names_it() {
    let v = v34();
    let keys = format!("/{}/", unique("both"));
    let (prefix, _) = backup(&v, &keys);
    let dir = scratch("both");
    let data = dir.join("data");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let args = restore_args(&prefix, &data, "l1", &peer);
    let start = || {
        let child = binary(&args).stderr(Stdio::piped()).spawn().unwrap();
        (child, Instant::now())
    };
    // Each waited for on its own thread, so each one's time is its own.
    let [a, b] = [start(), start()].map(|(child, started)| {
        std::thread::spawn(move || {
            let pid = child.id();
            let out = child.wait_with_output().unwrap();
            let took = started.elapsed();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            eprintln!("pid {pid} took {took:?}:\n{stderr}");
            (pid, out.status.code(), took, stderr)
        })
    });
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let (winner, loser) = if a.1 == Some(0) { (a, b) } else { (b, a) };
    assert_eq!(winner.1, Some(0), "one restore succeeds: {}", winner.3);
    assert_eq!(loser.1, Some(2), "the other is refused: {}", loser.3);
    no_panic(&loser.3);
    assert!(loser.2 < Duration::from_secs(1), "refused at once, took {:?}", loser.2);
    assert!(loser.3.contains(&format!("another restore (pid {}) is writing it", winner.0)), "{}", loser.3);
    assert!(loser.3.contains(&format!("--data-dir {}", data.display())), "{}", loser.3);
    assert!(!loser.3.contains("Listed"), "nothing fetched: {}", loser.3);
    // Nothing but the data directory: no staging directory, no lock file.
    assert_eq!(names_in(&dir), ["data"]);
    assert_eq!(names_in(&data), ["member"]);
    let e = Etcd::start(&v.etcd, &v.ctl, &data, "l1", &peer, &format!("l1={peer}"));
    assert_eq!(kvs(&v, &e.client_url, &keys), kvs(&v, &v.endpoint, &keys), "the winner's data is complete");
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_users_look_alike_directory_survives_a_restore() {
    let (prefix, dir) = backed_up("notes");
    let notes = dir.join(".data.restore-notes");
    std::fs::create_dir_all(notes.join("member")).unwrap();
    std::fs::write(notes.join("member/todo.txt"), "keep me").unwrap();
    let r = restore_once(&prefix, &dir.join("data"), "n1");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(notes.join("member/todo.txt")).unwrap(), "keep me");
    assert!(!r.stderr.contains(".data.restore-notes"), "not even looked at: {}", r.stderr);
    assert_eq!(names_in(&dir), [".data.restore-notes", "data"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dead_restores_leftover_is_removed_with_a_warning() {
    let (prefix, dir) = backed_up("dead");
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let leftover = dir.join(format!(".data.restore-{dead}"));
    std::fs::create_dir_all(leftover.join("member/snap")).unwrap();
    std::fs::create_dir_all(leftover.join("fetch")).unwrap();
    std::fs::write(leftover.join("fetch/snapshot.download"), "partial").unwrap();
    // Left by a restore killed with SIGKILL: the kernel released its lock.
    std::fs::write(dir.join(".data.restore.lock"), dead.to_string()).unwrap();
    let r = restore_once(&prefix, &dir.join("data"), "d1");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let warn = format!("WARN Removing {}, left over from an interrupted restore (pid {dead})", leftover.display());
    assert!(r.stderr.contains(&warn), "{}", r.stderr);
    assert_eq!(names_in(&dir), ["data"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_symlinked_data_dir_is_refused_before_any_download() {
    let dir = scratch("symlink");
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    // The prefix holds nothing: a restore that got as far as listing would log it.
    let prefix = unique("nolist");
    for to in ["empty", "missing"] {
        let link = dir.join(format!("data-{to}"));
        std::os::unix::fs::symlink(dir.join(to), &link).unwrap();
        let started = Instant::now();
        let r = run(&refs(&restore_args(&prefix, &link, "s1", "http://127.0.0.1:2380")), &as_refs(&creds()));
        assert_eq!(r.code, 2, "{}", r.stderr);
        no_panic(&r.stderr);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        let want = format!("--data-dir {} is a symbolic link (to {})", link.display(), dir.join(to).display());
        assert!(r.stderr.contains(&want), "{}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
        assert!(!r.stderr.contains("Listed") && !r.stderr.contains("fetch"), "{}", r.stderr);
        assert!(link.is_symlink());
    }
    assert_eq!(names_in(&dir), ["data-empty", "data-missing", "empty"]);
    assert_eq!(names_in(&dir.join("empty")).len(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

fn put(key: &str, rev: i64, create: i64, version: i64, lease: i64) -> Event {
    Event {
        kind: EventKind::Put,
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        create_revision: create,
        mod_revision: rev,
        version,
        lease,
    }
}

#[test]
fn a_delta_whose_events_do_not_match_its_name_fails_naming_it() {
    let v = v35();
    let (source, full) = backup(&v, &format!("/{}/", unique("lies")));
    let bytes = load(&primary(&source), &full);
    let name = SnapshotName::parse(&full).unwrap();
    let r = name.last_revision as i64;
    let delta = format!("Incr-{:08}-{:08}-{}", r + 1, r + 2, name.created + 1);
    let good = put("/lies/a", r + 1, r + 1, 1, 0);
    let cases = [
        (
            vec![good.clone(), put("/lies/a", r + 2, r + 1, 2, 0), put("/lies/b", r + 3, r + 3, 1, 0)],
            format!("its event 2 (key \"/lies/b\") is at revision {}, past the {} its name says", r + 3, r + 2),
        ),
        (vec![good.clone(), put("", r + 2, r + 2, 1, 0)], "its event 1 (key \"\") has an empty key".to_string()),
        (vec![good.clone(), put("/lies/c", r + 2, r + 2, 1, -7)], "its event 1 (key \"/lies/c\") has lease -7".into()),
        (vec![put("/lies/d", -3, 1, 1, 0), good.clone()], "its event 0 (key \"/lies/d\") has revision -3".into()),
    ];
    for (events, want) in cases {
        let prefix = unique("lies");
        let mut w = Writer::new();
        events.iter().for_each(|e| w.push(e, name.created as i64 + 1, 0));
        let data = w.finish();
        for store in [primary(&prefix), secondary(&prefix)] {
            save(&store, &full, &bytes).unwrap();
            save(&store, &delta, &data).unwrap();
        }
        let dir = scratch("lies");
        let out = restore_once(&prefix, &dir.join("data"), "x1");
        assert_eq!(out.code, 1, "{}", out.stderr);
        no_panic(&out.stderr);
        let last = out.stderr.lines().last().unwrap();
        assert!(last.contains(&format!("delta snapshot {delta}: {want}")), "{last}");
        // No data directory, no staging directory, no lock file.
        assert_eq!(names_in(&dir).len(), 0, "{:?}", names_in(&dir));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
