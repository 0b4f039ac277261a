//! `snapshot verify` against real etcd 3.5 and both real S3 servers: a
//! chain written by the long-running snapshotter is copied to a prefix of
//! its own per test, then damaged (a flipped byte, a lost delta, an object
//! cut short by the fault proxy, a connection broken midway) and verified.

mod common;

use common::cli::{binary, etcdctl_put, listed, load, primary, secondary, store_args};
use common::fault::{Action, Request, Rule, S3Faults};
use common::restore::v35;
use common::{env, snapshotter, unique};
use etcd_backup_restore::snapshot::{Kind, SnapshotName};
use etcd_backup_restore::store::{self, Store};
use std::process::Stdio;
use std::sync::OnceLock;

/// The snapshotter's objects (a full snapshot and its deltas, gzip), in
/// chain order.
fn chain() -> &'static [(SnapshotName, String, Vec<u8>)] {
    static CHAIN: OnceLock<Vec<(SnapshotName, String, Vec<u8>)>> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let v = v35();
        let prefix = unique("vsrc");
        // Enough incompressible data that the full snapshot takes several
        // connections through the cut proxy, whatever etcd held before.
        let bulk = format!("/{}/", unique("bulk"));
        for n in 0..16u64 {
            etcdctl_put(&v.ctl, &v.endpoint, &format!("{bulk}{n}"), &common::noise(4096, n));
        }
        let s = snapshotter::start(&v.endpoint, &prefix, &["--schedule=0 0 1 1 *"]);
        s.wait_for_lines(&["INFO Snapshot Full-", "successfully saved to both endpoints"], 1);
        let keys = format!("/{}/", unique("k"));
        for n in 1..=4 {
            etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}{n}"), &format!("value {n}"));
            s.wait_for_lines(&["INFO Snapshot Incr-", "successfully saved to both endpoints"], n);
        }
        s.stop();
        let p = primary(&prefix);
        let names: Vec<String> = listed(&p).into_iter().map(|o| o.name).collect();
        let on_secondary: Vec<String> = listed(&secondary(&prefix)).into_iter().map(|o| o.name).collect();
        assert_eq!(names, on_secondary, "the snapshotter stored the same objects on both");
        let mut objects: Vec<_> =
            names.into_iter().map(|n| (SnapshotName::parse(&n).unwrap(), n.clone(), load(&p, &n))).collect();
        objects.sort_by_key(|(s, _, _)| (s.last_revision, s.kind == Kind::Full));
        assert_eq!(objects[0].0.kind, Kind::Full, "{:?}", objects.iter().map(|o| &o.1).collect::<Vec<_>>());
        assert!(objects.len() >= 4, "a full snapshot and at least 3 deltas");
        objects
    })
}

/// A copy of the chain under a fresh prefix on both servers.
fn copy(tag: &str) -> String {
    let prefix = unique(tag);
    for (_, name, bytes) in chain() {
        store::save(&primary(&prefix), name, bytes).unwrap();
        store::save(&secondary(&prefix), name, bytes).unwrap();
    }
    prefix
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `snapshot verify` on `prefix` with `extra` flags; every run must stay
/// within the memory bound, whatever the snapshots' size.
fn verify(prefix: &str, extra: &[&str]) -> Out {
    use std::io::Read;
    let mut args = vec!["snapshot".to_string(), "verify".into()];
    args.extend(store_args(prefix));
    args.extend(extra.iter().map(|s| s.to_string()));
    #[allow(clippy::zombie_processes)] // waited for by wait4 below
    let mut child = binary(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    // The verify process's own high-water mark (VmHWM starts anew at exec;
    // wait4's ru_maxrss would count the test process it was spawned from),
    // sampled until it exits.
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak_kib = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let hwm =
                    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).map(|v| v.trim().trim_end_matches(" kB"));
                peak_kib = peak_kib.max(hwm.and_then(|v| v.trim().parse().ok()).unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            peak_kib
        })
    };
    let mut stderr = String::new();
    err.read_to_string(&mut stderr).unwrap();
    let stdout = reader.join().unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: a child of this process, not yet waited for; valid pointers.
    let waited = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid as i32);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = sampler.join().unwrap();
    eprintln!("$ etcd-backup-restore {}\n{stdout}{stderr}peak RSS {peak} KiB", args.join(" "));
    assert!(peak < 64 << 10, "peak RSS {peak} KiB is over 64 MiB");
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    assert!(code != 101 && code != 134 && !stderr.contains("panicked"), "{stderr}");
    Out { code, stdout, stderr }
}

fn json(out: &Out) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// `lastVerifiedRevision` of the primary, the secondary and the merged view.
fn revisions(v: &serde_json::Value) -> [Option<u64>; 3] {
    let r = |x: &serde_json::Value| x["lastVerifiedRevision"].as_u64();
    [r(&v["endpoints"][0]), r(&v["endpoints"][1]), r(&v["merged"])]
}

#[test]
fn a_healthy_chain_verifies_on_both_endpoints() {
    let prefix = copy("vok");
    let out = verify(&prefix, &["--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = json(&out);
    let last = chain().last().unwrap();
    assert_eq!(last.0.kind, Kind::Incr);
    let rev = Some(last.0.last_revision);
    assert_eq!(revisions(&v), [rev, rev, rev]);
    for e in [&v["endpoints"][0], &v["endpoints"][1]] {
        assert_eq!(e["objectsChecked"].as_u64(), Some(chain().len() as u64));
        assert_eq!(e["lastVerifiedSnapshot"].as_str(), Some(last.1.as_str()));
        assert_eq!(e["problems"], serde_json::json!([]));
    }
    assert_eq!(v["endpoints"][1]["endpoint"], "secondary");
}

#[test]
fn a_flipped_byte_on_one_endpoint_is_named_and_the_other_still_verifies() {
    let prefix = copy("vflip");
    let (_, name, bytes) = &chain()[2];
    let mut bad = bytes.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0xff;
    store::save(&secondary(&prefix), name, &bad).unwrap();

    let out = verify(&prefix, &[]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stdout.contains(&format!("  secondary endpoint: {name}: ")), "{}", out.stdout);
    assert!(out.stdout.starts_with("primary: OK: "), "{}", out.stdout);
    assert!(out.stdout.contains("\nsecondary: FAILED: "), "{}", out.stdout);
    assert!(!out.stdout.contains("primary endpoint:"), "{}", out.stdout);
    assert!(out.stderr.contains(&format!("WARN secondary endpoint: {name}: ")), "{}", out.stderr);

    let v = json(&verify(&prefix, &["--output=json"]));
    let last = chain().last().unwrap().0.last_revision;
    // The secondary restores up to the object before the damaged one; both together up to the end.
    assert_eq!(revisions(&v), [Some(last), Some(chain()[1].0.last_revision), Some(last)]);
    assert_eq!(v["endpoints"][1]["problems"][0]["object"], name.as_str());
    assert_eq!(v["endpoints"][1]["problems"][0]["endpoint"], "secondary");

    // Reconcile replaces the bad copy from the good one, and only that one.
    let mut args = vec!["snapshot".to_string(), "reconcile".into()];
    args.extend(store_args(&prefix));
    let out = binary(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("INFO Replaced the bad copy of snapshot {name} from primary to secondary endpoint")),
        "{stderr}"
    );
    assert_eq!(stderr.matches("INFO Replaced").count() + stderr.matches("INFO Copied").count(), 1, "{stderr}");
    assert!(load(&secondary(&prefix), name) == *bytes, "the secondary holds the good bytes again");
    let out = verify(&prefix, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

#[test]
fn a_delta_missing_on_both_endpoints_is_a_gap_naming_the_revisions() {
    let prefix = copy("vgap");
    let (gone, name, _) = &chain()[2];
    primary(&prefix).delete(name).unwrap();
    secondary(&prefix).delete(name).unwrap();
    let out = verify(&prefix, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let next = &chain()[3];
    let missing = match (gone.start_revision, gone.last_revision) {
        (a, b) if a == b => format!("revision {a} is missing"),
        (a, b) => format!("revisions {a} to {b} are missing"),
    };
    for who in ["primary endpoint", "secondary endpoint", "both endpoints"] {
        let line = format!("  {who}: {}: gap in the chain of {}: ", next.1, chain()[0].1);
        assert!(out.stdout.contains(&line), "{line}\n{}", out.stdout);
    }
    assert_eq!(out.stdout.matches(&missing).count(), 3, "{missing}\n{}", out.stdout);
    let v = json(&verify(&prefix, &["--output=json"]));
    let before = Some(chain()[1].0.last_revision);
    assert_eq!(revisions(&v), [before, before, before]);
}

#[test]
fn snapshot_picks_a_chain_and_all_checks_every_object() {
    let prefix = copy("vsel");
    // An old, unreadable full snapshot on the primary, outside the latest chain.
    let full = &chain()[0].0;
    let old = SnapshotName::full(full.last_revision - 1, full.created - 10).to_string();
    store::save(&primary(&prefix), &old, b"not a snapshot").unwrap();

    let v = json(&verify(&prefix, &["--output=json"]));
    assert_eq!(v["exitCode"], 0, "the latest chain does not include {old}");

    let (upto, name, _) = &chain()[2];
    let out = verify(&prefix, &["--snapshot", name, "--output=json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = json(&out);
    assert_eq!(revisions(&v), [Some(upto.last_revision); 3]);
    assert_eq!(v["endpoints"][0]["objectsChecked"], 3);
    assert_eq!(v["endpoints"][0]["lastVerifiedSnapshot"], name.as_str());

    let out = verify(&prefix, &["--all"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stdout.contains(&format!("  primary endpoint: {old}: ")), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("primary: FAILED: {} objects checked", chain().len() + 1)), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("secondary: OK: {} objects checked", chain().len())), "{}", out.stdout);

    let out = verify(&prefix, &["--snapshot", "Full-00000000-00000001-1"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stdout.contains("snapshot Full-00000000-00000001-1 is not stored here"), "{}", out.stdout);
}

#[test]
fn an_object_shorter_than_listed_is_named() {
    let prefix = copy("vcut");
    let (_, full, bytes) = &chain()[0];
    let largest_delta = chain()[1..].iter().map(|o| o.2.len()).max().unwrap();
    assert!(largest_delta < bytes.len() - 1, "only the full snapshot gets cut");
    let cut = (bytes.len() - 1) as u64;
    let proxy = S3Faults::start(
        &env("EBR_S3A_ENDPOINT"),
        vec![Rule { kind: Request::Get, nth: vec![], action: Action::Truncate(cut) }],
    );
    let out = verify(&prefix, &[&format!("--store-endpoint-override={}", proxy.url)]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let want = format!("  primary endpoint: {full}: the object has {cut} bytes but is listed with {}", bytes.len());
    assert!(out.stdout.contains(&want), "{want}\n{}", out.stdout);
    assert!(out.stdout.contains("primary: FAILED: ") && out.stdout.contains("nothing restorable"), "{}", out.stdout);
    assert!(out.stdout.contains("\nsecondary: OK: "), "{}", out.stdout);
    assert!(proxy.hits(Request::Get) >= 1);
}

#[test]
fn a_stream_broken_midway_resumes_where_it_broke() {
    let prefix = copy("vresume");
    let (_, full, bytes) = &chain()[0];
    // Every connection to the primary closes after a quarter of the object
    // (in bytes of answers): the full snapshot takes several connections.
    let limit = bytes.len() / 4;
    assert!(limit > 1000, "a full snapshot of {} bytes", bytes.len());
    let proxy = common::CutProxy::start(&env("EBR_S3A_ENDPOINT"), limit);
    let out = verify(&prefix, &[&format!("--store-endpoint-override={}", proxy.url)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let resumed = format!("WARN primary endpoint: verifying {full}: broken after ");
    assert!(out.stderr.contains(&resumed) && out.stderr.contains("resuming from there"), "{}", out.stderr);
}

#[test]
fn an_endpoint_that_cannot_be_listed_fails_alone() {
    let prefix = copy("vdown");
    let out = verify(&prefix, &["--secondary-store-endpoint-override=http://127.0.0.1:1", "--output=json"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let v = json(&out);
    let last = Some(chain().last().unwrap().0.last_revision);
    assert_eq!(revisions(&v), [last, None, last]);
    assert_eq!(v["endpoints"][1]["problems"][0]["object"], "(listing)");
    let why = v["endpoints"][1]["problems"][0]["problem"].as_str().unwrap();
    assert!(why.contains("127.0.0.1:1") && !why.contains(&env("EBR_S3B_SECRET_KEY")), "{why}");
}

#[test]
fn bad_usage_is_one_line_and_exit_2() {
    for (extra, want) in [
        (&["--all", "--snapshot", "Full-00000000-00000001-1"][..], "--all and --snapshot cannot be given together"),
        (&["--output=yaml"], "--output"),
        (&["--dry-run"], "--dry-run is not a flag of `snapshot verify`"),
    ] {
        let out = verify("unused", extra);
        assert_eq!(out.code, 2, "{extra:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.starts_with("etcd-backup-restore: ") && out.stderr.contains(want), "{}", out.stderr);
        assert!(out.stdout.is_empty());
    }
}
