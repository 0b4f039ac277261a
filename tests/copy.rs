//! `copy` against the real servers: a source filled by the real snapshotter
//! (full snapshots and deltas, gzip and zlib) is copied to a primary on the
//! other server and a secondary on the same server under another prefix,
//! byte-identical, `.final` stripped, selected as upstream selects; a
//! corrupted source object is refused and leaves nothing behind; a second
//! run copies nothing; the destination alone restores the source's keys.

mod common;

use common::cli::*;
use common::restore::{kvs, restore_and_start, revision, scratch, v35};
use common::s3_admin::admin;
use common::snapshotter::start;
use common::{Server, env, s3_store, unique, var};
use etcd_backup_restore::snapshot::{Kind, SnapshotName};
use etcd_backup_restore::store::{self, Store};

/// One endpoint's store flags: `flag_prefix` (`source-`, empty for the
/// primary, `secondary-`) on `server` under `prefix`, quick to give up.
fn endpoint_args(flag_prefix: &str, server: Server, prefix: &str) -> Vec<String> {
    let p = flag_prefix;
    vec![
        format!("--{p}storage-provider=S3"),
        format!("--{p}store-container={}", var(server, "BUCKET")),
        format!("--{p}store-prefix={prefix}"),
        format!("--{p}store-endpoint-override={}", var(server, "ENDPOINT")),
        format!("--{p}chunk-upload-backoff=50ms"),
        format!("--{p}chunk-upload-attempts=3"),
    ]
}

/// The source: server A under `src`, its own credentials (server A's) in `SOURCE_*`.
fn source_args(src: &str) -> Vec<String> {
    endpoint_args("source-", Server::A, src)
}

/// The primary destination: server B under `dst`.
fn primary_args(dst: &str) -> Vec<String> {
    endpoint_args("", Server::B, dst)
}

/// The secondary destination: server A (the source's server) under `dst2`.
fn secondary_args(dst2: &str) -> Vec<String> {
    endpoint_args("secondary-", Server::A, dst2)
}

fn copy_creds() -> Vec<(String, String)> {
    vec![
        ("SOURCE_AWS_ACCESS_KEY_ID".into(), env("EBR_S3A_ACCESS_KEY")),
        ("SOURCE_AWS_SECRET_ACCESS_KEY".into(), env("EBR_S3A_SECRET_KEY")),
        ("AWS_ACCESS_KEY_ID".into(), env("EBR_S3B_ACCESS_KEY")),
        ("AWS_SECRET_ACCESS_KEY".into(), env("EBR_S3B_SECRET_KEY")),
        ("SECONDARY_AWS_ACCESS_KEY_ID".into(), env("EBR_S3A_ACCESS_KEY")),
        ("SECONDARY_AWS_SECRET_ACCESS_KEY".into(), env("EBR_S3A_SECRET_KEY")),
    ]
}

/// `copy` from `src` to the primary `dst` (and the secondary `dst2`).
fn copy(src: &str, dst: &str, dst2: Option<&str>, extra: &[&str]) -> Run {
    let mut args = vec!["copy".to_string()];
    args.extend(source_args(src));
    args.extend(primary_args(dst));
    args.extend(dst2.map(secondary_args).unwrap_or_default());
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&refs(&args), &as_refs(&copy_creds()))
}

fn objects(s: &dyn Store) -> Vec<(String, Vec<u8>)> {
    listed(s).into_iter().map(|o| (o.name.clone(), load(s, &o.name))).collect()
}

fn names(s: &dyn Store) -> Vec<String> {
    listed(s).into_iter().map(|o| o.name).collect()
}

fn not_crashed(r: &Run) {
    assert!(r.code != 101 && r.code != 134 && !r.stderr.contains("panicked"), "{}", r.stderr);
}

/// One backup into `src` (on both servers, as the snapshotter writes both):
/// a full snapshot with `--once`, then `deltas` delta snapshots of puts
/// under `keys`. Returns the names the backup added on server A.
fn backup(etcd: &str, ctl: &str, src: &str, keys: &str, deltas: usize, extra: &[&str]) -> Vec<String> {
    let before = names(&primary(src));
    let mut args = vec!["snapshot".to_string(), "--once".into(), format!("--endpoints={etcd}")];
    args.extend(store_args(src));
    args.extend(extra.iter().map(|s| s.to_string()));
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut flags = vec!["--schedule=@every 1h"];
    flags.extend(extra);
    let s = start(etcd, src, &flags);
    s.wait_for("Resuming after Full-");
    for i in 0..deltas {
        etcdctl_put(ctl, etcd, &format!("{keys}{}", unique("d")), "in a delta");
        s.wait_for_lines(&["Successfully saved snapshot Incr-", "to primary endpoint"], i + 1);
    }
    s.stop();
    names(&primary(src)).into_iter().filter(|n| !before.contains(n)).collect()
}

/// Rename object `name` on server A under `prefix` to `name.final`, as
/// upstream names the full snapshot taken when a cluster is stopped.
fn make_final(prefix: &str, name: &str) -> String {
    let a = primary(prefix);
    let bytes = load(&a, name);
    let final_name = format!("{name}.final");
    store::save(&a, &final_name, &bytes).unwrap();
    a.delete(name).unwrap();
    final_name
}

fn kind(name: &str) -> Kind {
    SnapshotName::parse(name).unwrap().kind
}

/// gzip (the default): `--max-backups-to-copy=1` copies the latest full
/// snapshot (final, stored without `.final`) and its deltas to both
/// destinations, byte-identical; a run without the limit copies the older
/// backup; a third run copies nothing; the primary destination alone
/// restores the source's keys at the last delta's revision.
#[test]
fn copies_selected_backups_to_both_destinations_byte_identical_and_restorable() {
    let v = v35();
    let (src, dst, dst2) = (unique("cp-src"), unique("cp-dst"), unique("cp-dst2"));
    let keys = format!("/{}/", unique("k"));
    etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}a"), "in the first full snapshot");
    let older = backup(&v.endpoint, &v.ctl, &src, &keys, 2, &[]);
    etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}b"), "in the second full snapshot");
    let mut newer = backup(&v.endpoint, &v.ctl, &src, &keys, 2, &[]);
    assert!(older.iter().chain(&newer).all(|n| n.ends_with(".gz")), "{older:?} {newer:?}");
    assert_eq!(newer.iter().filter(|n| kind(n) == Kind::Full).count(), 1, "{newer:?}");
    let full = newer.iter().position(|n| kind(n) == Kind::Full).unwrap();
    let plain_full = newer[full].clone();
    newer[full] = make_final(&src, &plain_full);

    let r = copy(&src, &dst, Some(&dst2), &["--max-backups-to-copy=1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let source = primary(&src);
    let expect = |names: &[String]| {
        let mut v: Vec<(String, Vec<u8>)> =
            names.iter().map(|n| (n.strip_suffix(".final").unwrap_or(n).to_string(), load(&source, n))).collect();
        v.sort();
        v
    };
    let (b_dst, a_dst2) = (s3_store(Server::B, &dst), s3_store(Server::A, &dst2));
    assert!(objects(&b_dst) == expect(&newer), "the primary holds the latest backup: {:?}", names(&b_dst));
    assert!(objects(&a_dst2) == expect(&newer), "the secondary holds the latest backup: {:?}", names(&a_dst2));
    assert!(names(&b_dst).contains(&plain_full), ".final is stripped");
    let line = format!("INFO Copied snapshot {} from source to primary endpoint as {plain_full}", newer[full]);
    assert!(r.stderr.contains(&line), "missing {line:?}");
    for name in newer.iter().filter(|n| kind(n) == Kind::Incr) {
        for to in ["primary", "secondary"] {
            let line = format!("INFO Copied snapshot {name} from source to {to} endpoint");
            assert!(r.stderr.contains(&line), "missing {line:?}");
        }
    }

    let r = copy(&src, &dst, Some(&dst2), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let all: Vec<String> = older.iter().chain(&newer).cloned().collect();
    assert!(objects(&b_dst) == expect(&all) && objects(&a_dst2) == expect(&all), "{:?}", names(&b_dst));
    assert_eq!(r.stderr.matches("Copied snapshot").count(), 2 * older.len(), "only the older backup: {}", r.stderr);

    let again = copy(&src, &dst, Some(&dst2), &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(!again.stderr.contains("Copied snapshot"), "nothing left to copy: {}", again.stderr);
    let line = format!("0 copied, {} already there", all.len());
    assert!(again.stderr.contains(&line), "{line}: {}", again.stderr);

    // The primary destination alone (server B under `dst`; server A has nothing there).
    assert!(names(&primary(&dst)).is_empty());
    let last = newer.iter().filter_map(|n| SnapshotName::parse(n)).map(|n| n.last_revision).max().unwrap();
    let r = restore_and_start(&v, &dst, &scratch("cp-restore"), "c1", &[]);
    assert_eq!(r.run.code, 0, "{}", r.run.stderr);
    let e = r.etcd.unwrap();
    let restored = kvs(&v, &e.client_url, &keys);
    assert_eq!(restored.as_array().map(Vec::len), Some(6), "{restored}");
    assert_eq!(restored, kvs(&v, &v.endpoint, &keys), "every key, value and revision");
    assert_eq!(revision(&v, &e.client_url), last, "the revision of the last delta snapshot");
}

/// zlib: copied byte-identical; then, with the source's full snapshot
/// corrupted, a destination that holds everything stays complete, one that
/// lacks it gets the deltas but never the bad object (exit 3 with both,
/// 1 with that one alone), and no upload is left behind.
#[test]
fn a_corrupted_source_object_is_refused_the_rest_goes_on() {
    let v = v35();
    let (src, dst, dst2) = (unique("cp-zsrc"), unique("cp-zdst"), unique("cp-zdst2"));
    let keys = format!("/{}/", unique("k"));
    etcdctl_put(&v.ctl, &v.endpoint, &format!("{keys}a"), "in the full snapshot");
    let made = backup(&v.endpoint, &v.ctl, &src, &keys, 1, &["--compression-policy=zlib"]);
    assert!(made.len() >= 2 && made.iter().all(|n| n.ends_with(".zlib")), "{made:?}");

    let r = copy(&src, &dst, None, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b_dst = s3_store(Server::B, &dst);
    assert!(objects(&b_dst) == objects(&primary(&src)), "byte-identical: {:?}", names(&b_dst));

    let full = made.iter().find(|n| kind(n) == Kind::Full).unwrap().clone();
    let source = primary(&src);
    let mut bytes = load(&source, &full);
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    store::save(&source, &full, &bytes).unwrap();

    let r = copy(&src, &dst, Some(&dst2), &[]);
    not_crashed(&r);
    assert_eq!(r.code, 3, "the primary holds everything, the secondary not: {}", r.stderr);
    let line = r.stderr.lines().find(|l| l.contains(" ERRO ") && l.contains(&full)).expect("an error naming it");
    assert!(line.contains("Cannot copy snapshot") && line.contains("source endpoint's copy is bad"), "{line}");
    let a_dst2 = s3_store(Server::A, &dst2);
    let delta: Vec<String> = made.iter().filter(|n| kind(n) == Kind::Incr).cloned().collect();
    assert_eq!(names(&a_dst2), delta, "the delta is copied, the bad full snapshot is not");
    // s3s-fs (server A) cannot list multipart uploads: the run below checks on server B.

    // The bad object alone, to a fresh destination on server B.
    let r = copy(&src, &dst2, None, &[]);
    not_crashed(&r);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let b_dst2 = s3_store(Server::B, &dst2);
    assert!(names(&b_dst2) == delta, "{:?}", names(&b_dst2));
    assert!(admin(Server::B, &dst2).list_multipart_uploads().unwrap().is_empty(), "no upload left");
}

/// Bad usage: one line, exit 2, nothing attempted.
#[test]
fn copy_usage_errors() {
    let (src, dst) = (unique("cp-usage-src"), unique("cp-usage-dst"));
    let mut args = vec!["copy".to_string()];
    args.extend(primary_args(&dst));
    let r = run(&refs(&args), &as_refs(&copy_creds()));
    not_crashed(&r);
    assert_eq!((r.code, r.stderr.lines().count()), (2, 1), "{}", r.stderr);
    assert!(r.stderr.contains("--source-storage-provider is required"), "{}", r.stderr);

    // The source is the primary: same server, bucket and prefix.
    let mut args = vec!["copy".to_string()];
    args.extend(endpoint_args("source-", Server::B, &dst));
    args.extend(primary_args(&dst));
    let r = run(&refs(&args), &as_refs(&copy_creds()));
    assert_eq!((r.code, r.stderr.lines().count()), (2, 1), "{}", r.stderr);
    assert!(r.stderr.contains("the source is the primary endpoint"), "{}", r.stderr);

    // No SOURCE_* credentials: no fallback to the primary's.
    let mut args = vec!["copy".to_string()];
    args.extend(source_args(&src));
    args.extend(primary_args(&dst));
    let primary_only: Vec<(String, String)> =
        copy_creds().into_iter().filter(|(k, _)| !k.starts_with("SOURCE_")).collect();
    let r = run(&refs(&args), &as_refs(&primary_only));
    assert_eq!((r.code, r.stderr.lines().count()), (2, 1), "{}", r.stderr);
    assert!(r.stderr.contains("no credentials for the source endpoint: set SOURCE_AWS_"), "{}", r.stderr);
    assert!(names(&s3_store(Server::B, &dst)).is_empty());
}
