//! Object lock, versioned buckets, SSE-KMS and storage class against
//! moto_server (s3s-fs and rclone have neither object lock nor versions),
//! with etcd 3.5 from `scripts/env` and s3s-fs as a secondary without them.

mod common;

use common::cli::{refs, run};
use common::moto::Moto;
use common::restore::{scratch, v35};
use common::{Etcd, env, etcdctl, free_port, unique};

/// Flags of a moto primary in `bucket` (and, with `secondary`, the s3s-fs
/// server of `scripts/env` as secondary), under `prefix`.
fn args(cmd: &[&str], m: &Moto, bucket: &str, prefix: &str, secondary: bool, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    a.extend([
        "--storage-provider=S3".into(),
        format!("--store-container={bucket}"),
        format!("--store-prefix={prefix}"),
        format!("--store-endpoint-override={}", m.url),
        "--chunk-upload-backoff=50ms".into(),
        "--chunk-upload-attempts=2".into(),
    ]);
    if secondary {
        a.extend([
            "--secondary-storage-provider=S3".into(),
            format!("--secondary-store-container={}", env("EBR_S3A_BUCKET")),
            format!("--secondary-store-prefix={prefix}"),
            format!("--secondary-store-endpoint-override={}", env("EBR_S3A_ENDPOINT")),
        ]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn creds() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "moto".into()),
        ("AWS_SECRET_ACCESS_KEY", "moto-secret".into()),
        ("SECONDARY_AWS_ACCESS_KEY_ID", env("EBR_S3A_ACCESS_KEY")),
        ("SECONDARY_AWS_SECRET_ACCESS_KEY", env("EBR_S3A_SECRET_KEY")),
    ]
}

fn go(args: &[String]) -> common::cli::Run {
    let c = creds();
    let envs: Vec<(&str, &str)> = c.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run(&refs(args), &envs)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The names `snapshot list` prints (first column, header skipped).
fn listed(m: &Moto, bucket: &str, prefix: &str, extra: &[&str]) -> Vec<String> {
    let a = args(&["snapshot", "list"], m, bucket, prefix, false, extra);
    let c = creds();
    let envs: Vec<(&str, &str)> = c.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = common::cli::binary(&a).env_clear().envs(common::cli::NO_IMDS).envs(envs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(String::from).collect()
}

#[test]
fn object_lock_retention_headers_gc_and_refusal() {
    let m = Moto::start();
    let etcd = v35();
    let (locked, plain) = ("ebr-locked", "ebr-plain");
    m.create_bucket(locked, true);
    m.create_bucket(plain, false);
    let prefix = unique("lock");
    let lock = [
        "--object-lock-mode=GOVERNANCE",
        "--object-lock-retention=1h",
        "--sse-kms-key-id=arn:aws:kms:us-east-1:123456789012:key/etcd-backups",
        "--storage-class=STANDARD_IA",
    ];
    let once = ["snapshot", "--once"];
    let mut names = Vec::new();
    for i in 0..2 {
        // A write in between: two full snapshots with different names.
        etcdctl(&etcd.ctl, &etcd.endpoint, &["put", &format!("/{prefix}/k"), &i.to_string()]);
        let before = std::time::SystemTime::now();
        let r = go(&args(
            &once,
            &m,
            locked,
            &prefix,
            true,
            &[&[&*format!("--endpoints={}", etcd.endpoint)][..], &lock[..]].concat(),
        ));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stderr.contains("to both endpoints") || r.stderr.contains("saved snapshot"), "{}", r.stderr);
        let mut now = listed(&m, locked, &prefix, &[]);
        now.retain(|n| !names.contains(n));
        assert_eq!(now.len(), 1, "{now:?}");
        let name = now.pop().unwrap();
        let h = m.head(locked, &format!("{prefix}/v2/{name}"));
        assert_eq!(header(&h, "x-amz-object-lock-mode"), Some("GOVERNANCE"), "{h:?}");
        let until = header(&h, "x-amz-object-lock-retain-until-date").expect("retain-until date");
        let expected = etcd_backup_restore::time::utc_rfc3339(before + std::time::Duration::from_secs(3600));
        // Set when the upload started: within a few seconds after `before` + 1h.
        assert!(until[..16] == expected[..16] || until > expected.as_str(), "{until} vs {expected}");
        assert_eq!(header(&h, "x-amz-storage-class"), Some("STANDARD_IA"), "{h:?}");
        assert_eq!(header(&h, "x-amz-server-side-encryption"), Some("aws:kms"), "{h:?}");
        assert_eq!(
            header(&h, "x-amz-server-side-encryption-aws-kms-key-id"),
            Some("arn:aws:kms:us-east-1:123456789012:key/etcd-backups"),
            "{h:?}"
        );
        names.push(name);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // The secondary (s3s-fs, no lock flags) holds both as well.
    let sec = common::s3_store(common::Server::A, &prefix);
    let on_secondary: Vec<String> =
        etcd_backup_restore::store::Store::list(&sec).unwrap().into_iter().map(|o| o.name).collect();
    for n in &names {
        assert!(on_secondary.contains(n), "{n} not on the secondary: {on_secondary:?}");
    }

    // GC keeps only the newest full snapshot: the older one is locked on
    // the primary (kept, one line), deleted on the secondary.
    let gc = args(
        &["snapshot", "gc", "--garbage-collection-policy=LimitBased", "--max-backups=1"],
        &m,
        locked,
        &prefix,
        true,
        &lock[..2],
    );
    let r = go(&gc);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line: Vec<&str> = r.stderr.lines().filter(|l| l.contains("still locked")).collect();
    assert_eq!(line.len(), 1, "{}", r.stderr);
    assert!(line[0].contains("1 snapshots still locked on the primary endpoint, kept until 20"), "{}", line[0]);
    assert!(
        r.stderr.contains(&format!("Garbage collection deleted {} from secondary endpoint", names[0])),
        "{}",
        r.stderr
    );
    let after = listed(&m, locked, &prefix, &[]);
    assert!(after.contains(&names[0]) && after.contains(&names[1]), "{after:?}");

    // The flag against a bucket without object lock: one line, exit 2, nothing written.
    let r = go(&args(
        &once,
        &m,
        plain,
        &prefix,
        true,
        &[&[&*format!("--endpoints={}", etcd.endpoint)][..], &lock[..2]].concat(),
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
    let errors: Vec<&str> = r.stderr.lines().filter(|l| l.contains("ERRO")).collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(
        errors[0].contains("object lock is not enabled on this bucket") && errors[0].contains(plain),
        "{}",
        errors[0]
    );
    assert!(listed(&m, plain, &prefix, &[]).is_empty());
}

#[test]
fn versioned_bucket_deleted_snapshot_is_listed_and_restored() {
    let m = Moto::start();
    let etcd = v35();
    let bucket = "ebr-versioned";
    m.create_bucket(bucket, false);
    m.enable_versioning(bucket);
    let prefix = unique("versions");
    let key = format!("/{prefix}/k");
    let mut names = Vec::new();
    for value in ["first", "second"] {
        etcdctl(&etcd.ctl, &etcd.endpoint, &["put", &key, value]);
        let r = go(&args(
            &["snapshot", "--once", &format!("--endpoints={}", etcd.endpoint)],
            &m,
            bucket,
            &prefix,
            false,
            &[],
        ));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let mut now = listed(&m, bucket, &prefix, &[]);
        now.retain(|n| !names.contains(n));
        names.push(now.pop().expect("a new snapshot"));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // The latest snapshot is deleted: a delete marker hides it.
    m.delete(bucket, &format!("{prefix}/v2/{}", names[1]));
    assert_eq!(listed(&m, bucket, &prefix, &[]), names[..1]);
    assert_eq!(listed(&m, bucket, &prefix, &["--all-versions"]), names);

    let dir = scratch("versions-restore");
    let data = dir.join("data");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let cluster = format!("m1={peer}");
    let r = go(&args(
        &["restore", &format!("--data-dir={}", data.display())],
        &m,
        bucket,
        &prefix,
        false,
        &[
            "--name=m1",
            &format!("--initial-cluster={cluster}"),
            &format!("--initial-advertise-peer-urls={peer}"),
            &format!("--snapshot={}", names[1]),
        ],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("looking among the object versions"), "{}", r.stderr);
    let restored = Etcd::start(&etcd.etcd, &etcd.ctl, &data, "m1", &peer, &cluster);
    let got = etcdctl(&etcd.ctl, &restored.client_url, &["get", "--print-value-only", &key]);
    assert_eq!(got.trim(), "second");
}
