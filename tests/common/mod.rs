//! Shared test support. The integration tests run against real servers that
//! `scripts/env up` starts; `scripts/test` exports their addresses.
#![allow(dead_code)]

pub mod cli;
pub mod credserver;
pub mod fault;
pub mod kube;
pub mod moto;
pub mod restore;
pub mod s3_admin;
pub mod snapshotter;

/// A variable that `scripts/env up` exports; a missing one fails the test
/// with a hint instead of silently skipping it.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests through scripts/test (it starts etcd and the S3 servers)")
    })
}

/// A name unique to this test run, for keys, prefixes and buckets.
/// `len` printable characters from `seed`, xorshift: values etcd stores
/// that compress little (about 6.5 bits of 8 per byte).
pub fn noise(len: usize, seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect()
}

/// SIGTERM to `child`, then its exit status within 30 s (else a panic
/// saying `what` did not stop).
pub fn terminate(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(std::time::Instant::now() < end, "{what} did not stop within 30s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

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
        credential_chain: None,
        connect_timeout: std::time::Duration::from_secs(5),
        request_timeout: std::time::Duration::from_secs(60),
        write: Default::default(),
    }
}

pub fn s3_store(server: Server, prefix: &str) -> S3Store {
    S3Store::new(s3_config(server, prefix)).unwrap()
}

/// A port that was free a moment ago, on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `etcdctl` with the v3 API against `endpoint`; stdout, or a panic with stderr.
pub fn etcdctl(ctl: &str, endpoint: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(ctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--command-timeout", "20s"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl {args:?} at {endpoint}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn etcdctl_json(ctl: &str, endpoint: &str, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-w", "json"]);
    serde_json::from_str(&etcdctl(ctl, endpoint, &a)).unwrap()
}

/// An etcd server started by a test on a data directory, stopped (by PID)
/// when dropped.
pub struct Etcd {
    child: std::process::Child,
    pub client_url: String,
    pub log: std::path::PathBuf,
}

impl Etcd {
    /// Start `bin` as member `name` with `peer_url` on `data_dir`, and wait
    /// (bounded) until it answers `endpoint health` through `ctl`.
    pub fn start(bin: &str, ctl: &str, data_dir: &std::path::Path, name: &str, peer_url: &str, cluster: &str) -> Etcd {
        Self::start_with(bin, ctl, data_dir, name, peer_url, cluster, true)
    }

    pub fn start_with(
        bin: &str,
        ctl: &str,
        data_dir: &std::path::Path,
        name: &str,
        peer_url: &str,
        cluster: &str,
        wait: bool,
    ) -> Etcd {
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let log = data_dir.with_extension("log");
        let child = std::process::Command::new(bin)
            .args(["--name", name, "--data-dir", data_dir.to_str().unwrap()])
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url])
            .args(["--initial-cluster", cluster, "--initial-cluster-token", "ignored-when-data-exists"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let e = Etcd { child, client_url, log };
        if wait {
            e.wait_healthy(ctl);
        }
        e
    }

    pub fn wait_healthy(&self, ctl: &str) {
        for _ in 0..300 {
            let ok = std::process::Command::new(ctl)
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.client_url, "--command-timeout", "1s", "endpoint", "health"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "etcd at {} did not become healthy; log:\n{}",
            self.client_url,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of `target` that closes each connection once it
/// has passed `limit` bytes from the server to the client (a server
/// dropping the connection mid-download). Stops with the test process.
pub struct CutProxy {
    pub url: String,
    /// Connections accepted so far.
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CutProxy {
    /// Passes everything (to count connections).
    pub fn passing(target: &str) -> CutProxy {
        Self::spawn(target, usize::MAX, false, None, None)
    }

    /// Passes `limit` bytes of each connection's responses, then closes it.
    pub fn start(target: &str, limit: usize) -> CutProxy {
        Self::spawn(target, limit, false, None, None)
    }

    /// Passes everything, but flips the lowest bit of byte `offset` of each
    /// connection's responses (a corrupted stream).
    pub fn flipping(target: &str, offset: usize) -> CutProxy {
        Self::spawn(target, usize::MAX, false, None, Some(offset))
    }

    /// Passes `limit` bytes of each connection's responses, then holds the
    /// connection open without sending anything more.
    pub fn stalling(target: &str, limit: usize) -> CutProxy {
        Self::spawn(target, limit, true, None, None)
    }

    /// Passes everything until a request asks for a range starting at
    /// `offset`; closes that connection after `limit` bytes of its answer.
    pub fn cutting_range(target: &str, offset: u64, limit: usize) -> CutProxy {
        Self::spawn(target, limit, false, Some(format!("range: bytes={offset}-")), None)
    }

    fn spawn(target: &str, limit: usize, stall: bool, trigger: Option<String>, flip: Option<usize>) -> CutProxy {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let target = target.trim_start_matches("http://").trim_start_matches("https://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let armed = Arc::new(AtomicBool::new(trigger.is_none()));
                let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (arm, trigger) = (armed.clone(), trigger.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n @ 1..) = c_in.read(&mut buf) {
                        if let Some(t) = &trigger
                            && String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase().contains(t.as_str())
                        {
                            arm.store(true, Ordering::SeqCst);
                        }
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let mut passed = 0;
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = match s_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) if flip.is_some_and(|f| (passed..passed + n).contains(&f)) => {
                                buf[flip.unwrap() - passed] ^= 0x01;
                                n
                            }
                            Ok(n) if armed.load(Ordering::SeqCst) => n.min(limit - passed),
                            Ok(n) => {
                                if c_out.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                continue;
                            }
                        };
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        passed += n;
                        if passed >= limit {
                            break;
                        }
                    }
                    if stall {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = s_in.shutdown(Shutdown::Both);
                });
            }
        });
        CutProxy { url, connections }
    }
}
