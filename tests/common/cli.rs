//! Driving the real binary: run it with a clean environment, the flags of
//! a dual-endpoint run, and checks on what it stored.

use super::s3_admin::admin;
use super::{Server, env, s3_store};
use etcd_backup_restore::store::s3::S3Store;
use etcd_backup_restore::store::{ObjectInfo, Store};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_etcd-backup-restore");

pub struct Run {
    pub code: i32,
    pub stderr: String,
}

/// Run the binary with exactly these environment variables (no inherited
/// AWS_* or CA bundle settings).
pub fn run(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let out =
        Command::new(BIN).args(args).env_clear().envs(NO_IMDS).envs(envs.iter().copied()).output().expect("run binary");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("$ etcd-backup-restore {}\n{stderr}", args.join(" "));
    Run { code: out.status.code().unwrap_or(-1), stderr }
}

/// Instance metadata off for every endpoint: a test never asks 169.254.169.254
/// (the credential tests that use IMDS point it at 127.0.0.1 instead).
pub const NO_IMDS: [(&str, &str); 3] = [
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("SECONDARY_AWS_EC2_METADATA_DISABLED", "true"),
    ("SOURCE_AWS_EC2_METADATA_DISABLED", "true"),
];

/// The binary with `args` and only both servers' credentials in its
/// environment, for tests that spawn it themselves.
pub fn binary<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env_clear().envs(NO_IMDS).envs(creds());
    c
}

pub fn primary(prefix: &str) -> S3Store {
    s3_store(Server::A, prefix)
}

pub fn secondary(prefix: &str) -> S3Store {
    s3_store(Server::B, prefix)
}

pub fn load(s: &dyn Store, name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    s.load(name, 0, None).unwrap().read_to_end(&mut v).unwrap();
    v
}

pub fn listed(s: &dyn Store) -> Vec<ObjectInfo> {
    let mut l = s.list().unwrap();
    l.sort_by(|a, b| a.name.cmp(&b.name));
    l
}

/// Credentials of both servers, each through its own variables.
pub fn creds() -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), env("EBR_S3A_ACCESS_KEY")),
        ("AWS_SECRET_ACCESS_KEY".into(), env("EBR_S3A_SECRET_KEY")),
        ("SECONDARY_AWS_ACCESS_KEY_ID".into(), env("EBR_S3B_ACCESS_KEY")),
        ("SECONDARY_AWS_SECRET_ACCESS_KEY".into(), env("EBR_S3B_SECRET_KEY")),
    ]
}

pub fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// Flags for a dual-endpoint `snapshot --once` into `prefix` on both servers.
pub fn dual_args(etcd: &str, prefix: &str) -> Vec<String> {
    // These tests look at etcd's own bytes in the objects; compression has its own tests.
    let mut args =
        vec!["snapshot".into(), "--once".into(), format!("--endpoints={etcd}"), "--compress-snapshots=false".into()];
    args.extend(store_args(prefix));
    args
}

/// The store flags of both endpoints (any command), `prefix` on both servers.
pub fn store_args(prefix: &str) -> Vec<String> {
    vec![
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

pub fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    for e in extra {
        // A later flag of the same name wins, as on any command line.
        args.push(e.to_string());
    }
    args
}

pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `etcdctl put`, with the value on standard input (values may be larger
/// than one command-line argument may be).
pub fn etcdctl_put(ctl: &str, endpoint: &str, key: &str, value: &str) {
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
pub fn only_snapshot(s: &dyn Store) -> (String, Vec<u8>) {
    let l = listed(s);
    assert_eq!(l.len(), 1, "exactly one object expected, got {l:?}");
    let bytes = load(s, &l[0].name);
    assert_eq!(bytes.len() as u64, l[0].size);
    assert_eq!(bytes.len() % 512, 32, "etcd snapshot = pages + 32-byte trailer");
    let (db, trailer) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(db).as_slice(), trailer, "SHA-256 trailer must verify");
    (l[0].name.clone(), bytes)
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub fn no_uploads_left_on_secondary(prefix: &str) {
    let uploads = admin(Server::B, prefix).list_multipart_uploads().unwrap();
    assert!(
        !uploads.iter().any(|(key, _)| key.contains(prefix)),
        "multipart uploads left on the secondary: {uploads:?}"
    );
}
