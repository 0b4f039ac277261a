//! The static binary needs nothing from the host: inside an empty root
//! holding only the binary, a CA bundle and the credential files, as the
//! unprivileged user of the Containerfile's scratch image, it backs
//! etcd up to both local S3 endpoints and restores from them. The binary is
//! built by `scripts/build-static`, which `scripts/test` runs first.

mod common;

use common::restore::*;
use common::{Etcd, Server, env, free_port, unique, var};
use std::path::Path;
use std::process::Command;

/// Run the static binary chrooted into `root` as uid/gid 65532 (the
/// Containerfile's user), with only `envs`.
fn chrooted(root: &Path, args: &[&str], envs: &[(&str, String)]) -> (i32, String) {
    let out = Command::new("/usr/sbin/chroot")
        .arg("--userspec=65532:65532")
        .arg(root)
        .arg("/etcd-backup-restore")
        .args(args)
        .env_clear()
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("chroot (the tests run as root)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("$ chroot {} etcd-backup-restore {}\n{stderr}", root.display(), args.join(" "));
    (out.status.code().unwrap_or(-1), stderr + &String::from_utf8_lossy(&out.stdout))
}

fn creds_json(server: Server) -> String {
    serde_json::json!({
        "accessKeyID": var(server, "ACCESS_KEY"),
        "secretAccessKey": var(server, "SECRET_KEY"),
        "region": "us-east-1",
    })
    .to_string()
}

#[test]
fn static_binary_backs_up_and_restores_in_an_empty_root() {
    let bin = env("EBR_STATIC_BIN");
    let v = v35();
    let root = scratch("chroot");
    std::fs::copy(&bin, root.join("etcd-backup-restore")).unwrap();
    std::fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    std::fs::create_dir_all(root.join("creds")).unwrap();
    std::fs::write(root.join("creds/primary.json"), creds_json(Server::A)).unwrap();
    std::fs::write(root.join("creds/secondary.json"), creds_json(Server::B)).unwrap();
    std::fs::create_dir(root.join("data")).unwrap();
    // The unprivileged user owns only its data directory and reads its credentials.
    std::os::unix::fs::chown(root.join("data"), Some(65532), Some(65532)).unwrap();
    for f in ["primary.json", "secondary.json"] {
        std::os::unix::fs::chown(root.join("creds").join(f), Some(65532), Some(65532)).unwrap();
        std::fs::set_permissions(root.join("creds").join(f), std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .unwrap();
    }
    let envs = [
        ("AWS_APPLICATION_CREDENTIALS_JSON", "/creds/primary.json".to_string()),
        ("SECONDARY_AWS_APPLICATION_CREDENTIALS_JSON", "/creds/secondary.json".to_string()),
    ];

    let (code, out) = chrooted(&root, &["--version"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("etcd-backup-restore {}", env!("CARGO_PKG_VERSION"))), "{out}");

    let key = format!("/{}", unique("static"));
    common::cli::etcdctl_put(&v.ctl, &v.endpoint, &key, "from the static binary");
    let prefix = unique("static");
    let store = common::cli::store_args(&prefix);
    let mut args = vec!["snapshot".to_string(), "--once".into(), format!("--endpoints={}", v.endpoint)];
    args.extend(store.iter().cloned());
    let (code, out) = chrooted(&root, &common::cli::refs(&args), &envs);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("successfully saved to both endpoints"), "{out}");

    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut args = vec![
        "restore".to_string(),
        "--data-dir=/data/restored".into(),
        "--name=s1".into(),
        format!("--initial-cluster=s1={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
    ];
    args.extend(store);
    let (code, out) = chrooted(&root, &common::cli::refs(&args), &envs);
    assert_eq!(code, 0, "{out}");
    let e = Etcd::start(&v.etcd, &v.ctl, &root.join("data/restored"), "s1", &peer, &format!("s1={peer}"));
    let got = kvs(&v, &e.client_url, &key);
    assert_eq!(got[0]["value"], base64(b"from the static binary"), "{got}");
}

fn base64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
