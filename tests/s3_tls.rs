//! TLS to S3 with a private CA, as on an air-gapped site: a secondary S3
//! server (rclone) behind TLS signed by the throwaway CA that `scripts/env`
//! makes. Unknown to the tool, it is refused; trusted through
//! `trustedCaCert` in the credential JSON, or through a CA file
//! (`--secondary-store-ca-file` / `SECONDARY_AWS_CA_BUNDLE`), it works, for
//! backup and restore alike.

mod common;

use common::cli::*;
use common::restore::*;
use common::{CutProxy, Server, env, free_port, s3_config, unique, var};
use etcd_backup_restore::store::s3::{S3Config, S3Store};
use etcd_backup_restore::store::{self, Store};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// rclone serving S3 over TLS on a free port; stopped when dropped.
struct TlsS3 {
    child: std::process::Child,
    url: String,
}

impl Drop for TlsS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pki(file: &str) -> PathBuf {
    PathBuf::from(env("EBR_ETCD_TLS_CA")).with_file_name(file)
}

fn start_tls_s3(bucket: &str) -> TlsS3 {
    let root = scratch("tls-s3");
    std::fs::create_dir_all(root.join(bucket)).unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env("EBR_RCLONE_BIN"))
        .args(["serve", "s3", "--config", "/dev/null", "--addr", &format!("127.0.0.1:{port}")])
        .args(["--cert", pki("server.pem").to_str().unwrap(), "--key", pki("server-key.pem").to_str().unwrap()])
        .args(["--auth-key", &format!("{},{}", var(Server::B, "ACCESS_KEY"), var(Server::B, "SECRET_KEY"))])
        .args(["--vfs-cache-mode", "off", "--dir-cache-time", "100ms", root.to_str().unwrap()])
        .env_remove("AWS_CA_BUNDLE")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(root.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return TlsS3 { child, url: format!("https://127.0.0.1:{port}") };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("rclone with TLS did not listen on {port}");
}

/// Both endpoints' flags, the secondary being the TLS server.
fn args(prefix: &str, s3: &TlsS3, bucket: &str, extra: &[&str]) -> Vec<String> {
    let mut a = store_args(prefix);
    for arg in a.iter_mut() {
        if arg.starts_with("--secondary-store-endpoint-override=") {
            *arg = format!("--secondary-store-endpoint-override={}", s3.url);
        } else if arg.starts_with("--secondary-store-container=") {
            *arg = format!("--secondary-store-container={bucket}");
        }
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// A small private etcd: what is tested here is TLS, not throughput.
fn small_etcd() -> common::Etcd {
    let v = v35();
    let dir = scratch("tls-etcd");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let e = common::Etcd::start(&v.etcd, &v.ctl, &dir.join("etcd"), "e1", &peer, &format!("e1={peer}"));
    etcdctl_put(&v.ctl, &e.client_url, "/tls/key", "over TLS");
    e
}

fn snapshot(etcd: &str, prefix: &str, s3: &TlsS3, bucket: &str, extra: &[&str], envs: &[(String, String)]) -> Run {
    let mut a = vec!["snapshot".into(), "--once".into(), format!("--endpoints={etcd}")];
    a.extend(args(prefix, s3, bucket, extra));
    run(&refs(&a), &as_refs(envs))
}

#[test]
fn private_ca_for_s3() {
    let bucket = "tlsbucket";
    let s3 = start_tls_s3(bucket);
    let ca = std::fs::read_to_string(pki("ca.pem")).unwrap();
    let prefix = unique("tls");
    let etcd = small_etcd();
    let etcd = etcd.client_url.as_str();

    // Not trusted: the secondary is refused with a certificate error; the primary still works.
    let r = snapshot(etcd, &prefix, &s3, bucket, &[], &creds());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r.stderr.lines().find(|l| l.contains("to secondary endpoint: ")).expect("secondary error");
    assert!(line.contains("certificate") || line.contains("UnknownIssuer"), "{line}");
    assert!(r.stderr.contains("saved to only one endpoint - Primary: true, Secondary: false"));

    // trustedCaCert in the secondary's credential JSON.
    let dir = scratch("tls-creds");
    let json = dir.join("secondary.json");
    let body = serde_json::json!({
        "accessKeyID": var(Server::B, "ACCESS_KEY"),
        "secretAccessKey": var(Server::B, "SECRET_KEY"),
        "region": "us-east-1",
        "trustedCaCert": ca,
    });
    std::fs::write(&json, body.to_string()).unwrap();
    let mut envs = creds()[..2].to_vec();
    envs.push(("SECONDARY_AWS_APPLICATION_CREDENTIALS_JSON".into(), json.display().to_string()));
    let r = snapshot(etcd, &prefix, &s3, bucket, &[], &envs);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("successfully saved to both endpoints"), "{}", r.stderr);

    // A CA file by flag, and by SECONDARY_AWS_CA_BUNDLE for the restore.
    let ca_flag = format!("--secondary-store-ca-file={}", pki("ca.pem").display());
    let r = snapshot(etcd, &prefix, &s3, bucket, &[&ca_flag], &creds());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("successfully saved to both endpoints"), "{}", r.stderr);
    let missing = format!("--secondary-store-ca-file={}", dir.join("nope.pem").display());
    let r = snapshot(etcd, &prefix, &s3, bucket, &[&missing], &creds());
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--secondary-store-ca-file") && r.stderr.contains("nope.pem"), "{}", r.stderr);

    let mut envs = creds();
    envs.push(("SECONDARY_AWS_CA_BUNDLE".into(), pki("ca.pem").display().to_string()));
    let data = dir.join("data");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut a = vec![
        "restore".to_string(),
        format!("--data-dir={}", data.display()),
        "--name=t1".into(),
        format!("--initial-cluster=t1={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
    ];
    a.extend(args(
        &prefix,
        &s3,
        bucket,
        &["--store-endpoint-override=http://127.0.0.1:1", "--chunk-upload-attempts=1"],
    ));
    let r = run(&refs(&a), &as_refs(&envs));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("from secondary endpoint"), "{}", r.stderr);
    assert!(data.join("member/snap/db").is_file());
}

/// Connections that 30 reads in turn of one object under `cfg` take
/// through a counting proxy (10 whole and 10 ranged, each bounded by its
/// length, and 10 to the end).
fn connections_for_reads(mut cfg: S3Config) -> usize {
    let store = S3Store::new(cfg.clone()).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    store::save(&store, "obj", &data).unwrap();
    let url = cfg.endpoint.clone().unwrap();
    let proxy = CutProxy::passing(&url);
    let (scheme, _) = url.split_once("://").unwrap();
    cfg.endpoint = Some(format!("{scheme}://{}", proxy.url.trim_start_matches("http://")));
    let counted = S3Store::new(cfg).unwrap();
    let read = |offset: u64, len: Option<u64>| {
        let mut out = Vec::new();
        counted.load("obj", offset, len).unwrap().read_to_end(&mut out).unwrap();
        out
    };
    for i in 0..10u64 {
        assert_eq!(read(0, Some(data.len() as u64)), data);
        let (start, len) = (i * 9_000, 8_000);
        assert_eq!(read(start, Some(len)), &data[start as usize..(start + len) as usize]);
        assert_eq!(read(0, None), data);
    }
    store.delete("obj").unwrap();
    proxy.connections.load(Ordering::SeqCst)
}

/// Over TLS a read hands its connection back to the pool (a restore of 100
/// deltas would otherwise make 100 handshakes); over plain HTTP a bounded
/// read takes a new one (see `reuse_reads` in `store::s3`).
#[test]
fn reads_reuse_connections_over_tls_only() {
    let bucket = "poolbucket";
    let s3 = start_tls_s3(bucket);
    let mut tls = s3_config(Server::B, &unique("pool"));
    tls.endpoint = Some(s3.url.clone());
    tls.bucket = bucket.to_string();
    tls.trusted_ca_pem = Some(std::fs::read(pki("ca.pem")).unwrap());
    let used = connections_for_reads(tls);
    assert_eq!(used, 1, "30 reads in turn over TLS took {used} connections");
    let used = connections_for_reads(s3_config(Server::A, &unique("pool")));
    assert!(used >= 20, "20 bounded reads in turn over plain HTTP took {used} connections");
}
