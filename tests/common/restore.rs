//! Restoring with the binary and starting real etcd 3.4/3.5 on the result.

use super::cli::*;
use super::{Etcd, env, etcdctl_json, free_port, unique};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub struct Version {
    pub endpoint: String,
    pub etcd: String,
    pub ctl: String,
}

pub fn v34() -> Version {
    Version { endpoint: env("EBR_ETCD34_ENDPOINT"), etcd: env("EBR_ETCD34_BIN"), ctl: env("EBR_ETCDCTL34_BIN") }
}

pub fn v35() -> Version {
    Version { endpoint: env("EBR_ETCD35_ENDPOINT"), etcd: env("EBR_ETCD35_BIN"), ctl: env("EBR_ETCDCTL35_BIN") }
}

pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Put 1 MiB values until etcd's database holds at least `bytes` (a fresh
/// CI machine starts empty; a developer's grows only once).
pub fn grow_db(v: &Version, bytes: u64) {
    let filler = "f".repeat(1 << 20);
    for _ in 0..(bytes >> 20) + 64 {
        let status = etcdctl_json(&v.ctl, &v.endpoint, &["endpoint", "status"]);
        if status[0]["Status"]["dbSize"].as_u64().unwrap() >= bytes {
            return;
        }
        etcdctl_put(&v.ctl, &v.endpoint, &unique("/filler"), &filler);
    }
    panic!("etcd's database did not grow to {bytes} bytes");
}

pub fn kvs(v: &Version, endpoint: &str, prefix: &str) -> Value {
    etcdctl_json(&v.ctl, endpoint, &["get", "--prefix", prefix])["kvs"].clone()
}

pub fn revision(v: &Version, endpoint: &str) -> u64 {
    etcdctl_json(&v.ctl, endpoint, &["endpoint", "status"])[0]["Status"]["header"]["revision"].as_u64().unwrap()
}

pub fn restore(prefix: &str, data_dir: &Path, extra: &[&str], envs: &[(String, String)]) -> Run {
    let mut args = vec!["restore".to_string(), format!("--data-dir={}", data_dir.display())];
    args.extend(store_args(prefix));
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&refs(&args), &as_refs(envs))
}

/// A single-member restore of `prefix` into `<dir>/data` as member
/// `name` on a free peer port (plus `extra` flags, which win), then etcd
/// `v` started on it when the restore succeeded.
pub struct Restored {
    pub run: Run,
    pub etcd: Option<Etcd>,
}

pub fn restore_and_start(v: &Version, prefix: &str, dir: &Path, name: &str, extra: &[&str]) -> Restored {
    let data = dir.join("data");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let cluster = format!("{name}={peer}");
    let mut flags = vec![
        format!("--name={name}"),
        format!("--initial-cluster={cluster}"),
        format!("--initial-advertise-peer-urls={peer}"),
    ];
    flags.extend(extra.iter().map(|f| f.to_string()));
    let run = restore(prefix, &data, &refs(&flags), &creds());
    if run.code == 0 {
        let entries: Vec<_> = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries, ["member"], "the data directory holds member/ only");
    }
    let etcd = (run.code == 0).then(|| Etcd::start(&v.etcd, &v.ctl, &data, name, &peer, &cluster));
    Restored { run, etcd }
}
