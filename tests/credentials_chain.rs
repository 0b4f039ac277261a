//! The credential chain end to end: the binary gets no static keys, fetches
//! temporary ones (web identity through STS, the container endpoint, IMDSv2,
//! a shared-files role) and signs with them against s3s-fs, which enforces
//! SigV4 and only knows the keys the test credentials service hands out.
//! Refreshing is checked with 15-second keys under a long-running
//! snapshotter; moto_server checks our STS requests against a real STS
//! implementation.

mod common;

use common::credserver::CredServer;
use common::{Server, env, s3_store, unique};
use etcd_backup_restore::store::Store;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_etcd-backup-restore");

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Keys from the container endpoint at `full` (token "tok"), nothing else.
fn container_env(full: &str) -> [(&'static str, &str); 3] {
    [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "tok"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

fn keys_of_a() -> (String, String) {
    (env("EBR_S3A_ACCESS_KEY"), env("EBR_S3A_SECRET_KEY"))
}

fn store_args(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    vec![
        "--storage-provider=S3".into(),
        format!("--store-container={bucket}"),
        format!("--store-prefix={prefix}"),
        format!("--store-endpoint-override={endpoint}"),
        "--chunk-upload-backoff=50ms".into(),
        "--chunk-upload-attempts=2".into(),
    ]
}

/// `snapshot --once` to server A with exactly `envs`: exit code and log.
fn once(prefix: &str, envs: &[(&str, &str)]) -> (i32, String) {
    once_at(&env("EBR_S3A_ENDPOINT"), &env("EBR_S3A_BUCKET"), prefix, envs)
}

fn once_at(endpoint: &str, bucket: &str, prefix: &str, envs: &[(&str, &str)]) -> (i32, String) {
    let mut args = vec!["snapshot".to_string(), "--once".into(), format!("--endpoints={}", env("EBR_ETCD35_ENDPOINT"))];
    args.extend(store_args(endpoint, bucket, prefix));
    let out = Command::new(BIN).args(&args).env_clear().envs(envs.iter().copied()).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{log}");
    (out.status.code().unwrap_or(-1), log)
}

/// Shared files with profile `deployer`: a role assumed with profile `base`'s static keys.
fn role_profile(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (credentials, config) = (dir.join("credentials"), dir.join("config"));
    std::fs::write(&credentials, "[base]\naws_access_key_id = AKIDBASE\naws_secret_access_key = base-secret\n")
        .unwrap();
    let role = "[profile deployer]\nrole_arn = arn:aws:iam::123456789012:role/deployer\nsource_profile = base\n";
    std::fs::write(&config, role).unwrap();
    (credentials, config)
}

fn full_snapshots(prefix: &str) -> usize {
    s3_store(Server::A, prefix).list().unwrap().iter().filter(|o| o.name.starts_with("Full-")).count()
}

#[test]
fn each_source_fetches_keys_that_the_s3_server_accepts() {
    let server = CredServer::start(keys_of_a(), Duration::from_secs(3600), "container-secret");
    let dir = scratch("creds-sources");
    let token = dir.join("token");
    std::fs::write(&token, "the-web-identity-token\n").unwrap();
    let ctoken = dir.join("ctoken");
    std::fs::write(&ctoken, "container-secret").unwrap();
    let no_imds = ("AWS_EC2_METADATA_DISABLED", "true");

    // Without any source, s3s-fs refuses: the keys below really come from the chain.
    let prefix = unique("creds-none");
    let (code, log) = once(&prefix, &[no_imds]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("no credentials for the primary endpoint"), "{log}");

    // 2. Web identity: STS AssumeRoleWithWebIdentity with the token file's content.
    let prefix = unique("creds-web");
    let sts = server.url.clone();
    let (code, log) = once(
        &prefix,
        &[
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/etcd"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
            ("AWS_ROLE_SESSION_NAME", "etcd-test"),
            ("AWS_ENDPOINT_URL_STS", &sts),
            no_imds,
        ],
    );
    assert_eq!(code, 0, "{log}");
    assert_eq!(full_snapshots(&prefix), 1);
    assert!(
        log.contains("INFO primary endpoint: credentials from web identity (AWS_WEB_IDENTITY_TOKEN_FILE="),
        "{log}"
    );
    let r = server.requests();
    let sts_calls: Vec<_> =
        r.iter().filter(|r| r.form("Action").as_deref() == Some("AssumeRoleWithWebIdentity")).collect();
    assert_eq!(sts_calls.len(), 1, "{r:?}");
    assert_eq!(sts_calls[0].form("WebIdentityToken").as_deref(), Some("the-web-identity-token"));
    assert_eq!(sts_calls[0].form("RoleArn").as_deref(), Some("arn:aws:iam::123456789012:role/etcd"));
    assert_eq!(sts_calls[0].form("RoleSessionName").as_deref(), Some("etcd-test"));
    assert!(!log.contains("the-web-identity-token") && !log.contains(&keys_of_a().1), "no secret in the log");

    // 3. The container endpoint with a token file.
    let prefix = unique("creds-container");
    let full = format!("{}/creds", server.url);
    let envs = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", ctoken.to_str().unwrap()),
        no_imds,
    ];
    let (code, log) = once(&prefix, &envs);
    assert_eq!((code, full_snapshots(&prefix)), (0, 1), "{log}");
    assert!(log.contains("credentials from the container credentials endpoint"), "{log}");

    // ... and a wrong token: one line says which source failed and why.
    std::fs::write(&ctoken, "wrong").unwrap();
    let prefix = unique("creds-container-bad");
    let (code, log) = once(&prefix, &envs);
    assert_eq!(code, 1, "{log}");
    let line =
        log.lines().find(|l| l.contains("credentials from the container credentials endpoint") && l.contains("failed"));
    assert!(line.is_some_and(|l| l.contains("HTTP 403")), "{log}");
    assert!(!log.contains("container-secret"), "{log}");

    // 4. A shared-files profile that assumes a role with its source profile's keys (signed STS AssumeRole).
    let prefix = unique("creds-profile");
    let (credentials, config) = role_profile(&dir);
    let (code, log) = once(
        &prefix,
        &[
            ("AWS_PROFILE", "deployer"),
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_ENDPOINT_URL_STS", &sts),
            no_imds,
        ],
    );
    assert_eq!((code, full_snapshots(&prefix)), (0, 1), "{log}");
    assert!(log.contains("credentials from shared files profile deployer"), "{log}");
    let r = server.requests();
    let assume = r.iter().find(|r| r.form("Action").as_deref() == Some("AssumeRole")).expect("an AssumeRole call");
    assert!(assume.header("authorization").unwrap().contains("Credential=AKIDBASE/"), "{assume:?}");

    // 5. IMDSv2 (pointed at 127.0.0.1): token first, then the role's keys.
    let prefix = unique("creds-imds");
    let (code, log) = once(&prefix, &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url.as_str())]);
    assert_eq!((code, full_snapshots(&prefix)), (0, 1), "{log}");
    assert!(log.contains("credentials from instance metadata (IMDSv2)"), "{log}");
    let r = server.requests();
    assert!(r.iter().any(|r| r.method == "PUT" && r.path == "/latest/api/token"), "{r:?}");
}

#[test]
fn short_lived_keys_are_refreshed_under_a_running_snapshotter() {
    let server = CredServer::start(keys_of_a(), Duration::from_secs(15), "tok");
    let etcd = env("EBR_ETCD35_ENDPOINT");
    let prefix = unique("creds-refresh");
    let dir = scratch("creds-refresh");
    let log_path = dir.join("log");
    let mut args = vec![
        "snapshot".to_string(),
        format!("--endpoints={etcd}"),
        "--delta-snapshot-period=1s".into(),
        "--garbage-collection-period=0".into(),
    ];
    args.extend(store_args(&env("EBR_S3A_ENDPOINT"), &env("EBR_S3A_BUCKET"), &prefix));
    let full = format!("{}/creds", server.url);
    let mut child = Command::new(BIN)
        .args(&args)
        .env_clear()
        .envs(container_env(&full))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // 35 s of changes: the 15 s keys expire twice over; each is refreshed at half-life.
    let ctl = env("EBR_ETCDCTL35_BIN");
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(35) {
        common::etcdctl(&ctl, &etcd, &["put", &format!("/{prefix}/k{i}"), "v"]);
        i += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = common::terminate(&mut child, "the snapshotter");
    let log = std::fs::read_to_string(&log_path).unwrap();
    eprintln!("{log}");
    assert!(status.success(), "{log}");
    let fetches = server.requests().iter().filter(|r| r.path == "/creds").count();
    let refreshed =
        log.lines().filter(|l| l.contains("credentials from the container") && l.contains("refreshed")).count();
    assert!(fetches >= 4 && refreshed >= 3, "{fetches} fetches, {refreshed} refreshes in 35 s of 15 s keys:\n{log}");
    for bad in ["ERRO", "WARN", "failed"] {
        let found = log.lines().any(|l| l.contains(bad) && !l.contains("Received SIGTERM"));
        assert!(!found, "a failed request ({bad}) while keys expired:\n{log}");
    }
    let objects = s3_store(Server::A, &prefix).list().unwrap();
    let deltas = objects.iter().filter(|o| o.name.starts_with("Incr-")).count();
    assert!(deltas >= 20, "{deltas} delta snapshots in 35 s");
}

#[test]
fn moto_sts_web_identity_and_assume_role() {
    let m = common::moto::Moto::start();
    let bucket = "creds-moto";
    m.create_bucket(bucket, false);
    let dir = scratch("creds-moto");
    let token = dir.join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJldGNkIn0.c2ln").unwrap();
    let (code, log) = once_at(
        &m.url,
        bucket,
        "web",
        &[
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/etcd"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
            ("AWS_ENDPOINT_URL_STS", &m.url),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("credentials from web identity") && log.contains("valid until"), "{log}");

    let (credentials, config) = role_profile(&dir);
    let (code, log) = once_at(
        &m.url,
        bucket,
        "profile",
        &[
            ("AWS_PROFILE", "deployer"),
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_ENDPOINT_URL_STS", &m.url),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("credentials from shared files profile deployer") && log.contains("valid until"), "{log}");
    let moto_log = std::fs::read_to_string(&m.log).unwrap();
    assert!(moto_log.matches("\"POST / HTTP/1.1\" 200").count() >= 2, "two STS calls answered:\n{moto_log}");
}

/// 15-second keys during one slow multipart upload (parts one at a time
/// through a throttled link, ~25 s in all): each part is signed with the
/// keys current when it starts, the keys are refreshed in the middle of the
/// upload, and no request fails.
#[test]
fn short_lived_keys_are_refreshed_during_a_slow_multipart_upload() {
    use common::fault::{Action, Request, Rule, S3Faults};
    let server = CredServer::start(keys_of_a(), Duration::from_secs(15), "tok");
    let dir = scratch("creds-slow");
    let (bin, ctl) = (env("EBR_ETCD35_BIN"), env("EBR_ETCDCTL35_BIN"));
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let etcd = common::Etcd::start(&bin, &ctl, &dir.join("etcd"), "s1", &peer, &format!("s1={peer}"));
    // 12 MiB of values that do not compress much: three parts of 5, 5 and 2 MiB.
    for i in 0..12 {
        common::cli::etcdctl_put(&ctl, &etcd.client_url, &format!("/big/{i}"), &common::noise(1 << 20, i));
    }
    let slow = S3Faults::start(
        &env("EBR_S3A_ENDPOINT"),
        vec![Rule { kind: Request::UploadPart, nth: Vec::new(), action: Action::Throttle(512 << 10) }],
    );
    let prefix = unique("creds-slow");
    let mut args = vec!["snapshot".to_string(), "--once".into(), format!("--endpoints={}", etcd.client_url)];
    args.extend(store_args(&slow.url, &env("EBR_S3A_BUCKET"), &prefix));
    args.extend(["--compress-snapshots=false".into(), "--max-parallel-chunk-uploads=1".into()]);
    let full = format!("{}/creds", server.url);
    let started = Instant::now();
    let out = Command::new(BIN).args(&args).env_clear().envs(container_env(&full)).output().unwrap();
    let took = started.elapsed();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{log}\nthe upload took {took:?}");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(took > Duration::from_secs(16), "the upload outlived the first keys: {took:?}");
    assert!(!log.contains("WARN") && !log.contains("ERRO"), "no request failed while keys expired:\n{log}");
    let fetches = server.requests().iter().filter(|r| r.path == "/creds").count();
    assert!(fetches >= 2, "{fetches} fetches of 15 s keys during a {took:?} upload:\n{log}");
    assert!(log.contains("refreshed"), "{log}");
    let objects = s3_store(Server::A, &prefix).list().unwrap();
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(objects[0].size >= 12 << 20, "{objects:?}");
    drop(etcd);
}
