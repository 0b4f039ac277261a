//! `snapshot --once` end to end: the real binary against real etcd 3.4/3.5
//! and two different real S3 servers (s3s-fs primary, rclone secondary).

mod common;

use common::{Server, env, s3_store, unique};
use etcd_backup_restore::store::s3::S3Store;
use etcd_backup_restore::store::{ObjectInfo, Store};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_etcd-backup-restore");

struct Run {
    code: i32,
    stderr: String,
}

/// Run the binary with exactly these environment variables (no inherited
/// AWS_* or CA bundle settings).
fn run(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let out = Command::new(BIN).args(args).env_clear().envs(envs.iter().copied()).output().expect("run binary");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("$ etcd-backup-restore {}\n{stderr}", args.join(" "));
    Run { code: out.status.code().unwrap_or(-1), stderr }
}

fn primary(prefix: &str) -> S3Store {
    s3_store(Server::A, prefix)
}

fn secondary(prefix: &str) -> S3Store {
    s3_store(Server::B, prefix)
}

fn load(s: &dyn Store, name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    s.load(name, 0).unwrap().read_to_end(&mut v).unwrap();
    v
}

fn listed(s: &dyn Store) -> Vec<ObjectInfo> {
    let mut l = s.list().unwrap();
    l.sort_by(|a, b| a.name.cmp(&b.name));
    l
}

/// Credentials of both servers, each through its own variables.
fn creds() -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), env("EBR_S3A_ACCESS_KEY")),
        ("AWS_SECRET_ACCESS_KEY".into(), env("EBR_S3A_SECRET_KEY")),
        ("SECONDARY_AWS_ACCESS_KEY_ID".into(), env("EBR_S3B_ACCESS_KEY")),
        ("SECONDARY_AWS_SECRET_ACCESS_KEY".into(), env("EBR_S3B_SECRET_KEY")),
    ]
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// Flags for a dual-endpoint run into `prefix` on both servers.
fn dual_args(etcd: &str, prefix: &str) -> Vec<String> {
    vec![
        "snapshot".into(),
        "--once".into(),
        format!("--endpoints={etcd}"),
        "--storage-provider=S3".into(),
        format!("--store-container={}", env("EBR_S3A_BUCKET")),
        format!("--store-prefix={prefix}"),
        format!("--store-endpoint-override={}", env("EBR_S3A_ENDPOINT")),
        "--secondary-storage-provider=S3".into(),
        format!("--secondary-store-container={}", env("EBR_S3B_BUCKET")),
        format!("--secondary-store-prefix={prefix}"),
        format!("--secondary-store-endpoint-override={}", env("EBR_S3B_ENDPOINT")),
        // Keep failure cases quick; the retry path itself is still taken.
        "--chunk-upload-backoff=50ms".into(),
        "--secondary-chunk-upload-backoff=50ms".into(),
        "--chunk-upload-attempts=3".into(),
        "--secondary-chunk-upload-attempts=3".into(),
    ]
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    for e in extra {
        // A later flag of the same name wins, as on any command line.
        args.push(e.to_string());
    }
    args
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `etcdctl put`, with the value on standard input (values may be larger
/// than one command-line argument may be).
fn etcdctl_put(ctl: &str, endpoint: &str, key: &str, value: &str) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(ctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "put", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "etcdctl put: {}", String::from_utf8_lossy(&out.stderr));
}

/// The only object under the prefix, checked to be a complete etcd snapshot.
fn only_snapshot(s: &dyn Store) -> (String, Vec<u8>) {
    let l = listed(s);
    assert_eq!(l.len(), 1, "exactly one object expected, got {l:?}");
    let bytes = load(s, &l[0].name);
    assert_eq!(bytes.len() as u64, l[0].size);
    assert_eq!(bytes.len() % 512, 32, "etcd snapshot = pages + 32-byte trailer");
    let (db, trailer) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(db).as_slice(), trailer, "SHA-256 trailer must verify");
    (l[0].name.clone(), bytes)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn no_uploads_left_on_secondary(prefix: &str) {
    let uploads = secondary(prefix).list_multipart_uploads().unwrap();
    assert!(
        !uploads.iter().any(|(key, _)| key.contains(prefix)),
        "multipart uploads left on the secondary: {uploads:?}"
    );
}

fn both_endpoints_up(etcd_var: &str, ctl_var: &str) {
    let (etcd, ctl) = (env(etcd_var), env(ctl_var));
    let prefix = unique("both");
    let (key, value) = (unique("key"), unique("value"));
    etcdctl_put(&ctl, &etcd, &key, &value);
    let c = creds();
    let r = run(&refs(&dual_args(&etcd, &prefix)), &as_refs(&c));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (name, a) = only_snapshot(&primary(&prefix));
    let (name_b, b) = only_snapshot(&secondary(&prefix));
    assert_eq!(name, name_b);
    assert!(a == b, "objects on both endpoints must be byte-identical");
    assert!(
        contains(&a, key.as_bytes()) && contains(&a, value.as_bytes()),
        "the key written before must be in the snapshot"
    );
    let parsed = etcd_backup_restore::snapshot::SnapshotName::parse(&name).expect("upstream name");
    assert_eq!(parsed.start_revision, 0);
    assert!(parsed.last_revision > 0);
    for line in [
        format!("INFO Successfully saved snapshot {name} to primary endpoint"),
        format!("INFO Successfully saved snapshot {name} to secondary endpoint"),
        format!("INFO Snapshot {name} successfully saved to both endpoints"),
    ] {
        assert!(r.stderr.contains(&line), "missing log line {line:?}");
    }
}

#[test]
fn both_endpoints_up_etcd34() {
    both_endpoints_up("EBR_ETCD34_ENDPOINT", "EBR_ETCDCTL34_BIN");
}

#[test]
fn both_endpoints_up_etcd35() {
    both_endpoints_up("EBR_ETCD35_ENDPOINT", "EBR_ETCDCTL35_BIN");
}

#[test]
fn single_endpoint_mode() {
    let prefix = unique("single");
    let c = creds();
    let args: Vec<String> = dual_args(&env("EBR_ETCD34_ENDPOINT"), &prefix).into_iter().take(7).collect();
    let r = run(&refs(&args), &as_refs(&c));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (name, _) = only_snapshot(&primary(&prefix));
    assert!(r.stderr.contains(&format!("INFO Successfully saved snapshot {name} to primary endpoint")));
    assert!(!r.stderr.contains("secondary"), "{}", r.stderr);
    assert!(listed(&secondary(&prefix)).is_empty());
}

/// Secondary unusable in some way: the primary still gets a valid snapshot,
/// a WARN says so, exit 0 (3 with --require-all-endpoints).
fn secondary_fails(extra: &[&str], envs: Vec<(String, String)>, want_cause: &str) {
    let prefix = unique("degraded");
    let args = with(dual_args(&env("EBR_ETCD34_ENDPOINT"), &prefix), extra);
    let r = run(&refs(&args), &as_refs(&envs));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (name, _) = only_snapshot(&primary(&prefix));
    assert!(r.stderr.contains(&format!("INFO Successfully saved snapshot {name} to primary endpoint")), "{}", r.stderr);
    let erro = format!("ERRO Failed to save snapshot {name} to secondary endpoint: ");
    let line = r.stderr.lines().find(|l| l.contains(&erro)).unwrap_or_else(|| panic!("no {erro:?}"));
    assert!(line.contains(want_cause), "cause {want_cause:?} missing in {line:?}");
    assert!(
        r.stderr
            .contains(&format!("WARN Snapshot {name} saved to only one endpoint - Primary: true, Secondary: false"))
    );
    for (k, v) in &envs {
        if k.contains("SECRET") {
            assert!(!r.stderr.contains(v.as_str()), "secret of {k} leaked");
        }
    }
    // Strict mode turns the same outcome into exit code 3.
    let args = with(args, &["--require-all-endpoints"]);
    let r = run(&refs(&args), &as_refs(&envs));
    assert_eq!(r.code, 3, "{}", r.stderr);
    no_uploads_left_on_secondary(&prefix);
}

#[test]
fn secondary_down() {
    secondary_fails(&["--secondary-store-endpoint-override=http://127.0.0.1:1"], creds(), "127.0.0.1:1");
}

#[test]
fn secondary_wrong_secret() {
    let mut envs = creds();
    envs[3].1 = "not-the-secondary-secret".into();
    secondary_fails(&[], envs, "403");
}

#[test]
fn secondary_bucket_missing() {
    let bucket = unique("nobucket");
    secondary_fails(&[&format!("--secondary-store-container={bucket}")], creds(), &bucket);
}

#[test]
fn both_endpoints_down() {
    let prefix = unique("bothdown");
    let args = with(
        dual_args(&env("EBR_ETCD34_ENDPOINT"), &prefix),
        &["--store-endpoint-override=http://127.0.0.1:1", "--secondary-store-endpoint-override=http://127.0.0.1:2"],
    );
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r.stderr.lines().find(|l| l.contains("was not saved to any endpoint")).expect("final error line");
    assert!(line.contains("primary: ") && line.contains("127.0.0.1:1"), "{line}");
    assert!(line.contains("secondary: ") && line.contains("127.0.0.1:2"), "{line}");
}

#[test]
fn etcd_unreachable_uploads_nothing() {
    let prefix = unique("noetcd");
    let args = with(dual_args("http://127.0.0.1:1", &prefix), &["--etcd-connection-timeout=2s"]);
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("ERRO Failed to take snapshot") && r.stderr.contains("127.0.0.1:1"), "{}", r.stderr);
    assert!(listed(&primary(&prefix)).is_empty());
    assert!(listed(&secondary(&prefix)).is_empty());
    no_uploads_left_on_secondary(&prefix);
}

#[test]
fn credential_fallback_to_primary() {
    // No SECONDARY_* credentials: the secondary (another prefix on the
    // primary's server) must be reached with the primary's.
    let prefix = unique("fallback");
    let other = format!("{prefix}-second");
    let args = with(
        dual_args(&env("EBR_ETCD34_ENDPOINT"), &prefix),
        &[
            &format!("--secondary-store-container={}", env("EBR_S3A_BUCKET")),
            &format!("--secondary-store-prefix={other}"),
            &format!("--secondary-store-endpoint-override={}", env("EBR_S3A_ENDPOINT")),
        ],
    );
    let c = creds();
    let r = run(&refs(&args), &as_refs(&c[..2]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("successfully saved to both endpoints"));
    let (a, b) = (only_snapshot(&primary(&prefix)), only_snapshot(&primary(&other)));
    assert_eq!(a, b);
}

#[test]
fn json_file_and_directory_credentials() {
    let dir = std::env::temp_dir().join(unique("creds"));
    std::fs::create_dir_all(dir.join("secondary-fields")).unwrap();
    std::fs::create_dir_all(dir.join("secondary-json")).unwrap();
    let json = |s: &str| {
        format!(
            r#"{{"accessKeyID":"{}","secretAccessKey":"{}","region":"us-east-1"}}"#,
            env(&format!("EBR_S3{s}_ACCESS_KEY")),
            env(&format!("EBR_S3{s}_SECRET_KEY"))
        )
    };
    std::fs::write(dir.join("primary.json"), json("A")).unwrap();
    std::fs::write(dir.join("secondary-json/credentials.json"), json("B")).unwrap();
    std::fs::write(dir.join("secondary-fields/accessKeyID"), env("EBR_S3B_ACCESS_KEY")).unwrap();
    std::fs::write(dir.join("secondary-fields/secretAccessKey"), env("EBR_S3B_SECRET_KEY")).unwrap();
    std::fs::write(dir.join("secondary-fields/region"), "us-east-1").unwrap();
    for secondary_dir in ["secondary-fields", "secondary-json"] {
        let prefix = unique("credforms");
        let envs = [
            ("AWS_APPLICATION_CREDENTIALS", dir.join("primary.json").to_str().unwrap().to_string()),
            ("SECONDARY_AWS_APPLICATION_CREDENTIALS", dir.join(secondary_dir).to_str().unwrap().to_string()),
        ];
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = run(&refs(&dual_args(&env("EBR_ETCD34_ENDPOINT"), &prefix)), &envs);
        assert_eq!(r.code, 0, "{secondary_dir}: {}", r.stderr);
        assert_eq!(only_snapshot(&primary(&prefix)), only_snapshot(&secondary(&prefix)));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_etcd_with_client_certificate() {
    let prefix = unique("tls");
    let args = with(
        dual_args(&env("EBR_ETCD_TLS_ENDPOINT"), &prefix),
        &[
            &format!("--cacert={}", env("EBR_ETCD_TLS_CA")),
            &format!("--cert={}", env("EBR_ETCD_TLS_CERT")),
            &format!("--key={}", env("EBR_ETCD_TLS_KEY")),
        ],
    );
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(only_snapshot(&primary(&prefix)), only_snapshot(&secondary(&prefix)));
}

#[test]
fn different_chunk_settings_give_different_part_counts() {
    // About 21 MiB of data on etcd 3.5, so that 5 MiB and 8 MiB parts differ.
    // Both endpoints are s3s-fs here (two prefixes) because its multipart
    // ETag ends in `-<parts>`; rclone's is a plain MD5.
    let (etcd, ctl) = (env("EBR_ETCD35_ENDPOINT"), env("EBR_ETCDCTL35_BIN"));
    let big = "x".repeat(1 << 20);
    for i in 0..21 {
        etcdctl_put(&ctl, &etcd, &format!("/parts-test/{i}"), &format!("{i}{big}"));
    }
    let prefix = unique("parts");
    let other = format!("{prefix}-8m");
    let args = with(
        dual_args(&etcd, &prefix),
        &[
            "--min-chunk-size=5Mi",
            "--max-parallel-chunk-uploads=3",
            &format!("--secondary-store-container={}", env("EBR_S3A_BUCKET")),
            &format!("--secondary-store-prefix={other}"),
            &format!("--secondary-store-endpoint-override={}", env("EBR_S3A_ENDPOINT")),
            "--secondary-min-chunk-size=8Mi",
            "--secondary-max-parallel-chunk-uploads=2",
        ],
    );
    let c = creds();
    let r = run(&refs(&args), &as_refs(&c[..2]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (name, a) = only_snapshot(&primary(&prefix));
    assert_eq!(only_snapshot(&primary(&other)).1, a);
    let size = a.len() as u64;
    let mib = 1u64 << 20;
    let mut counts = Vec::new();
    for (s, part) in [(primary(&prefix), 5 * mib), (primary(&other), 8 * mib)] {
        let (_, etag) = s.head(&name).unwrap();
        let want = format!("-{}", size.div_ceil(part));
        assert!(etag.ends_with(&want), "{}: ETag {etag} should end in {want} for {size} bytes", s.location());
        counts.push(want);
    }
    assert_ne!(counts[0], counts[1]);
}

#[test]
fn bad_flags_exit_2_with_one_line_naming_the_flag() {
    for (args, want) in [
        (vec!["snapshot", "--once", "--bogus"], "--bogus"),
        (vec!["snapshot", "--once", "--min-chunk-size=1"], "--min-chunk-size"),
        (vec!["snapshot", "--once", "--max-parallel-chunk-uploads=many"], "--max-parallel-chunk-uploads"),
        (
            vec!["snapshot", "--once", "--storage-provider=S3", "--store-container=b", "--secondary-store-prefix=x"],
            "--secondary-store-prefix needs --secondary-storage-provider",
        ),
        (vec!["snapshot", "--once", "--storage-provider=Azure", "--store-container=b"], "--storage-provider"),
        (
            vec![
                "snapshot",
                "--once",
                "--storage-provider=S3",
                "--store-container=b",
                "--store-endpoint-override=127.0.0.1:9000",
            ],
            "--store-endpoint-override",
        ),
    ] {
        let r = run(&args, &[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "TOPSECRET")]);
        assert_eq!(r.code, 2, "{args:?}");
        assert_eq!(r.stderr.trim_end().lines().count(), 1, "one line: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("TOPSECRET"));
    }
    let r = run(&["snapshot", "--help"], &[]);
    assert_eq!(r.code, 0);
}
