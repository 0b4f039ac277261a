//! Shared test support. The integration tests run against real servers that
//! `scripts/env up` starts; `scripts/test` exports their addresses.
#![allow(dead_code)]

/// A variable that `scripts/env up` exports; a missing one fails the test
/// with a hint instead of silently skipping it.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests through scripts/test (it starts etcd and the S3 servers)")
    })
}

/// A name unique to this test run, for keys, prefixes and buckets.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{tag}-{}-{nanos:x}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

use etcd_backup_restore::store::s3::{S3Config, S3Store};

/// The two S3 servers that `scripts/env` starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Server {
    /// s3s-fs, the primary.
    A,
    /// rclone serve s3, the secondary.
    B,
}

pub fn var(server: Server, what: &str) -> String {
    env(&format!("EBR_S3{server:?}_{what}"))
}

/// `server`'s own bucket and credentials, under `prefix`.
pub fn s3_config(server: Server, prefix: &str) -> S3Config {
    S3Config {
        endpoint: Some(var(server, "ENDPOINT")),
        bucket: var(server, "BUCKET"),
        prefix: prefix.to_string(),
        region: "us-east-1".to_string(),
        path_style: true,
        access_key_id: var(server, "ACCESS_KEY"),
        secret_access_key: var(server, "SECRET_KEY"),
        session_token: None,
        trusted_ca_pem: None,
        insecure_skip_verify: false,
        sse_customer: None,
        connect_timeout: std::time::Duration::from_secs(5),
        request_timeout: std::time::Duration::from_secs(60),
    }
}

pub fn s3_store(server: Server, prefix: &str) -> S3Store {
    S3Store::new(s3_config(server, prefix)).unwrap()
}
