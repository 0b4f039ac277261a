//! The etcd client against real etcd 3.4 and 3.5 servers (plain, TLS with
//! client certificates, and a throwaway one with auth enabled).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{env, unique};
use etcd_backup_restore::etcd::{Client, EtcdConfig};
use sha2::{Digest, Sha256};

fn config(endpoints: &[&str]) -> EtcdConfig {
    EtcdConfig {
        endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        insecure_transport: true,
        insecure_skip_tls_verify: false,
        username: None,
        password: None,
        connection_timeout: Duration::from_secs(5),
        snapshot_timeout: Duration::from_secs(60),
    }
}

/// Runs etcdctl (v3 API) against `endpoint` and returns its stdout.
fn etcdctl(bin: &str, endpoint: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    assert!(out.status.success(), "{bin} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_follows_writes(endpoint: &str, etcdctl_bin: &str, version_prefix: &str) {
    let mut client = Client::connect(&config(&[endpoint])).unwrap();
    assert_eq!(client.endpoint(), endpoint);
    let before = client.status().unwrap();
    assert!(before.version.starts_with(version_prefix), "{before:?}");
    assert!(before.member_id != 0 && before.cluster_id != 0 && before.db_size > 0, "{before:?}");
    etcdctl(etcdctl_bin, endpoint, &["put", &unique("status"), "v"]);
    let after = client.status().unwrap();
    assert!(after.revision > before.revision, "{before:?} then {after:?}");
    assert_eq!((after.member_id, after.cluster_id), (before.member_id, before.cluster_id));
}

/// Reads a whole snapshot and checks it the way etcd's restore does.
fn check_snapshot(client: &mut Client) -> Vec<u8> {
    let mut stream = client.snapshot().unwrap();
    let first = stream.next().unwrap().expect("at least one message");
    let expected = first.remaining_bytes + first.blob.len() as u64 + 32;
    let mut data = first.blob;
    let mut last_remaining = first.remaining_bytes;
    while let Some(msg) = stream.next().unwrap() {
        assert!(msg.remaining_bytes <= last_remaining);
        last_remaining = msg.remaining_bytes;
        data.extend_from_slice(&msg.blob);
    }
    assert!(stream.next().unwrap().is_none(), "the end stays the end");
    assert_eq!(data.len() as u64, expected);
    assert_eq!(data.len() % 512, 32);
    let (db, digest) = data.split_at(data.len() - 32);
    assert_eq!(Sha256::digest(db).as_slice(), digest, "sha256 trailer");
    data
}

fn snapshot_is_complete(endpoint: &str, etcdctl_bin: &str) {
    for i in 0..3 {
        etcdctl(etcdctl_bin, endpoint, &["put", &unique("snap"), &format!("value {i}")]);
    }
    let mut client = Client::connect(&config(&[endpoint])).unwrap();
    let data = check_snapshot(&mut client);
    assert!(data.len() > 4096, "{} bytes", data.len());
    // The client stays usable after a stream, and after one dropped halfway.
    client.status().unwrap();
    let mut stream = client.snapshot().unwrap();
    assert!(!stream.next().unwrap().unwrap().blob.is_empty());
    drop(stream);
    client.status().unwrap();
    check_snapshot(&mut client);
}

#[test]
fn status_etcd34() {
    status_follows_writes(&env("EBR_ETCD34_ENDPOINT"), &env("EBR_ETCDCTL34_BIN"), "3.4.");
}

#[test]
fn status_etcd35() {
    status_follows_writes(&env("EBR_ETCD35_ENDPOINT"), &env("EBR_ETCDCTL35_BIN"), "3.5.");
}

#[test]
fn snapshot_etcd34() {
    snapshot_is_complete(&env("EBR_ETCD34_ENDPOINT"), &env("EBR_ETCDCTL34_BIN"));
}

#[test]
fn snapshot_etcd35() {
    snapshot_is_complete(&env("EBR_ETCD35_ENDPOINT"), &env("EBR_ETCDCTL35_BIN"));
}

#[test]
fn snapshot_deadline_is_an_error_naming_the_endpoint() {
    let endpoint = env("EBR_ETCD35_ENDPOINT");
    let mut cfg = config(&[&endpoint]);
    cfg.snapshot_timeout = Duration::from_nanos(1);
    let mut client = Client::connect(&cfg).unwrap();
    let err = match client.snapshot() {
        Err(e) => e,
        Ok(mut stream) => loop {
            match stream.next() {
                Err(e) => break e,
                Ok(Some(_)) => {}
                Ok(None) => panic!("a 1ns snapshot deadline was met"),
            }
        },
    };
    let err = format!("{err:#}");
    eprintln!("{err}");
    assert!(err.contains(&endpoint), "{err}");
    assert!(err.contains("timed out after 1ns") || err.contains("snapshot timeout of 1ns"), "{err}");
}

#[test]
fn failover_to_the_first_live_endpoint() {
    let _ = env_logger::builder().is_test(true).try_init();
    let live = env("EBR_ETCD35_ENDPOINT");
    let mut client = Client::connect(&config(&["127.0.0.1:1", &live])).unwrap();
    assert_eq!(client.endpoint(), live);
    client.status().unwrap();
}

#[test]
fn all_endpoints_dead_lists_each_cause() {
    // Accepts TCP connections (the kernel's backlog) but never speaks HTTP/2.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let mut cfg = config(&["127.0.0.1:1", "http://127.0.0.1:2", &silent_url]);
    cfg.connection_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = Client::connect(&cfg).unwrap_err().to_string();
    eprintln!("{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(err.starts_with("cannot reach etcd: "), "{err}");
    assert!(err.contains("http://127.0.0.1:1: ") && err.contains("http://127.0.0.1:2: "), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert!(err.contains(&format!("{silent_url}: timed out after 1s")), "{err}");
}

#[test]
fn unsupported_scheme_is_rejected() {
    let err = Client::connect(&config(&["unix:///run/etcd.sock"])).unwrap_err().to_string();
    assert!(err.contains("unix:///run/etcd.sock") && err.contains("scheme"), "{err}");
}

fn tls_config(endpoint: &str, with_ca: bool) -> EtcdConfig {
    let mut cfg = config(&[endpoint]);
    cfg.insecure_transport = false;
    cfg.ca_file = with_ca.then(|| PathBuf::from(env("EBR_ETCD_TLS_CA")));
    cfg.cert_file = Some(PathBuf::from(env("EBR_ETCD_TLS_CERT")));
    cfg.key_file = Some(PathBuf::from(env("EBR_ETCD_TLS_KEY")));
    cfg
}

#[test]
fn tls_with_ca_and_client_cert() {
    let endpoint = env("EBR_ETCD_TLS_ENDPOINT");
    let mut client = Client::connect(&tls_config(&endpoint, true)).unwrap();
    assert_eq!(client.endpoint(), endpoint);
    assert!(client.status().unwrap().revision > 0);
    check_snapshot(&mut client);

    // Without a scheme, TLS files mean https.
    let bare = endpoint.strip_prefix("https://").unwrap();
    let client = Client::connect(&tls_config(bare, true)).unwrap();
    assert_eq!(client.endpoint(), endpoint);
}

#[test]
fn tls_without_ca_fails_verification() {
    let endpoint = env("EBR_ETCD_TLS_ENDPOINT");
    let err = Client::connect(&tls_config(&endpoint, false)).unwrap_err().to_string();
    eprintln!("{err}");
    assert!(err.contains(&endpoint), "{err}");
    let lower = err.to_lowercase();
    assert!(lower.contains("certificate") || lower.contains("verif"), "{err}");
}

#[test]
fn tls_skip_verify_without_ca() {
    let endpoint = env("EBR_ETCD_TLS_ENDPOINT");
    let mut cfg = tls_config(&endpoint, false);
    cfg.insecure_skip_tls_verify = true;
    let mut client = Client::connect(&cfg).unwrap();
    assert!(client.status().unwrap().revision > 0);
}

#[test]
fn tls_files_errors_name_the_file_not_its_contents() {
    let dir = ScratchDir::new("pem");
    let key = dir.path().join("client.key");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL!!\n-----END PRIVATE KEY-----\n").unwrap();
    let mut cfg = tls_config(&env("EBR_ETCD_TLS_ENDPOINT"), true);
    cfg.key_file = Some(key.clone());
    let err = format!("{:#}", Client::connect(&cfg).unwrap_err());
    eprintln!("{err}");
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert!(!err.contains("SECRETKEYMATERIAL"), "{err}");

    let missing = dir.path().join("missing-ca.crt");
    cfg = tls_config(&env("EBR_ETCD_TLS_ENDPOINT"), true);
    cfg.ca_file = Some(missing.clone());
    let err = format!("{:#}", Client::connect(&cfg).unwrap_err());
    eprintln!("{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

#[test]
fn auth_with_user_and_password() {
    let _ = env_logger::builder().is_test(true).try_init();
    let etcd = ThrowawayEtcd::start(&env("EBR_ETCD35_BIN"));
    let ctl = env("EBR_ETCDCTL35_BIN");
    let password = format!("pw-{}", unique("secret"));
    etcdctl(&ctl, &etcd.endpoint, &["user", "add", &format!("root:{password}"), "--interactive=false"]);
    etcdctl(&ctl, &etcd.endpoint, &["auth", "enable"]);

    let mut cfg = config(&[&etcd.endpoint]);
    cfg.username = Some("root".into());
    cfg.password = Some(password.clone());
    let mut client = Client::connect(&cfg).unwrap();
    assert!(!format!("{client:?}").contains(&password));
    client.status().unwrap();
    check_snapshot(&mut client);

    // The server runs with --auth-token-ttl=1: once the token has expired,
    // the client logs in again by itself.
    std::thread::sleep(Duration::from_millis(2500));
    check_snapshot(&mut client);

    let wrong = format!("wrong-{password}");
    cfg.password = Some(wrong.clone());
    let err = format!("{:#}", Client::connect(&cfg).unwrap_err());
    eprintln!("{err}");
    assert!(err.contains("authentica"), "{err}");
    assert!(err.contains(&etcd.endpoint), "{err}");
    assert!(!err.contains(&wrong) && !err.contains(&password), "{err}");

    // No credentials: Status answers, a snapshot needs a user.
    let mut anonymous = Client::connect(&config(&[&etcd.endpoint])).unwrap();
    anonymous.status().unwrap();
    assert!(anonymous.snapshot().and_then(|mut s| s.next()).is_err());
}

/// A temporary directory, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> ScratchDir {
        let path = std::env::temp_dir().join(unique(&format!("ebr-{tag}")));
        std::fs::create_dir_all(&path).unwrap();
        ScratchDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A single-member etcd on free local ports with its own data dir; killed
/// (by its PID, through the `Child`) on drop.
struct ThrowawayEtcd {
    child: Child,
    endpoint: String,
    _dir: ScratchDir,
}

impl ThrowawayEtcd {
    fn start(bin: &str) -> ThrowawayEtcd {
        let dir = ScratchDir::new("etcd");
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new(bin)
            .args(["--name", "throwaway", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("throwaway={peer_url}")])
            .args(["--auth-token-ttl", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let etcd = ThrowawayEtcd { child, endpoint: client_url, _dir: dir };
        etcd.wait_ready();
        etcd
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut cfg = config(&[&self.endpoint]);
        cfg.connection_timeout = Duration::from_millis(500);
        loop {
            match Client::connect(&cfg) {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("throwaway etcd never came up: {e:#}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for ThrowawayEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
