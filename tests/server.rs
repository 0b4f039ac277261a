//! `server`: the long-running snapshotter with upstream's HTTP API, against
//! real etcd 3.5 and both S3 servers, on a free port of 127.0.0.1.

mod common;

use common::cli::*;
use common::fault::S3Faults;
use common::restore::{grow_db, scratch, v35};
use common::{env, free_port, unique};
use etcd_backup_restore::snapshot::SnapshotName;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    log: std::path::PathBuf,
    port: u16,
}

impl Server {
    /// `server` on a free port with both endpoints (`primary`/`secondary`:
    /// their S3 URLs) and `extra` flags.
    fn start(prefix: &str, primary: &str, secondary: &str, extra: &[&str]) -> Server {
        let port = free_port();
        let mut args = vec![
            "server".to_string(),
            "--server-address=127.0.0.1".into(),
            format!("--server-port={port}"),
            format!("--endpoints={}", v35().endpoint),
            "--delta-snapshot-period=1s".into(),
            "--garbage-collection-period=0".into(),
        ];
        args.extend(store_args(prefix));
        args.push(format!("--store-endpoint-override={primary}"));
        args.push(format!("--secondary-store-endpoint-override={secondary}"));
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = scratch("server").join("log");
        let child = binary(&args).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        Server { child, log, port }
    }

    fn direct(prefix: &str, extra: &[&str]) -> Server {
        Server::start(prefix, &env("EBR_S3A_ENDPOINT"), &env("EBR_S3B_ENDPOINT"), extra)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str) -> (u16, String) {
        http(self.port, method, path)
    }

    /// Wait (bounded) until /healthz answers `status`.
    fn wait_health(&self, status: u16, while_waiting: impl Fn()) -> Duration {
        let start = Instant::now();
        loop {
            let (s, body) = self.call("GET", "/healthz");
            if s == status {
                assert_eq!(body, format!("{{\"health\":{}}}", status == 200));
                return start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no /healthz {status} within 60s; log:\n{}", self.log());
            while_waiting();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM: exit 0 (bounded), after the snapshotter stopped.
    fn stop(mut self) -> String {
        let status = common::terminate(&mut self.child, "the server");
        let log = self.log();
        eprintln!("{log}");
        assert_eq!(status.code(), Some(0), "SIGTERM must end the server with 0");
        assert!(log.contains("INFO Snapshotter stopped") && log.contains("INFO HTTP API stopped"), "{log}");
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request on its own connection: status and body.
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(_) => return (0, String::new()),
    };
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut out = String::new();
    if s.read_to_string(&mut out).is_err() {
        return (0, String::new());
    }
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

fn put(key: &str, value: &str) {
    let v = v35();
    etcdctl_put(&v.ctl, &v.endpoint, key, value);
}

fn names(s: &dyn etcd_backup_restore::store::Store) -> Vec<String> {
    listed(s).into_iter().map(|o| o.name).collect()
}

/// /healthz: 503 before the first full snapshot, 200 once it is stored,
/// 503 when both endpoints refuse (changes wait longer than two delta
/// periods), 200 again once one endpoint is back.
#[test]
fn healthz_follows_the_first_snapshot_and_the_endpoints() {
    let prefix = unique("srv-health");
    let a = S3Faults::down(&env("EBR_S3A_ENDPOINT"));
    let b = S3Faults::down(&env("EBR_S3B_ENDPOINT"));
    let s = Server::start(&prefix, &a.url, &b.url, &["--max-endpoint-lag=2s"]);
    s.wait_health(503, || {});
    a.set_active(false);
    b.set_active(false);
    let up = s.wait_health(200, || {});
    eprintln!("healthy {up:?} after both endpoints came up");

    a.set_active(true);
    b.set_active(true);
    let key = unique("/srv-health/k");
    let down = s.wait_health(503, || put(&key, "while both are down"));
    eprintln!("unhealthy {down:?} after both endpoints went down");
    assert!(down >= Duration::from_secs(1), "not before changes waited: {down:?}");

    a.set_active(false);
    let back = s.wait_health(200, || put(&key, "primary back"));
    eprintln!("healthy {back:?} after the primary came back");
    let log = s.stop();
    assert!(log.contains("Successfully saved snapshot Incr-"), "{log}");
}

/// POST /snapshot/full stores a snapshot on both endpoints and names it;
/// /snapshot/latest and /metrics (parsed by prometheus_client) agree with
/// what the stores hold; /snapshot/delta saves the changes now; unknown
/// paths are 404, wrong methods 405; SIGTERM exits 0.
#[test]
fn triggers_latest_and_metrics_match_the_stores() {
    let prefix = unique("srv-api");
    let metrics_file = scratch("srv-metrics").join("etcdbr.prom");
    // No periodic delta: the one /snapshot/delta saves holds the put below
    // (a periodic one saved first would leave nothing to save: `null`).
    let metrics = format!("--metrics-file={}", metrics_file.display());
    let s = Server::direct(&prefix, &[&metrics, "--delta-snapshot-period=1h"]);
    s.wait_health(200, || {});

    let (status, body) = s.call("POST", "/snapshot/full");
    assert_eq!(status, 200, "{body}");
    let full: Value = serde_json::from_str(&body).unwrap();
    let name = full["snapName"].as_str().unwrap().to_string();
    assert_eq!(full["kind"], "Full");
    assert_eq!(full["storedOn"], serde_json::json!(["primary", "secondary"]));
    assert_eq!(full["prefix"], format!("{prefix}/v2"));
    assert!(names(&primary(&prefix)).contains(&name) && names(&secondary(&prefix)).contains(&name), "{name}");
    let parsed = SnapshotName::parse(&name).unwrap();
    assert_eq!(full["lastRevision"].as_u64(), Some(parsed.last_revision));

    let key = unique("/srv-api/k");
    put(&key, "v");
    let (status, body) = s.call("GET", "/snapshot/delta");
    assert_eq!(status, 200, "{body}");
    let delta: Value = serde_json::from_str(&body).unwrap();
    let delta_name = delta["snapName"].as_str().unwrap_or_else(|| panic!("{body}")).to_string();
    assert_eq!(delta["kind"], "Incr");
    assert!(names(&primary(&prefix)).contains(&delta_name), "{delta_name}");

    let (status, body) = s.call("GET", "/snapshot/latest");
    assert_eq!(status, 200, "{body}");
    let latest: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(latest["fullSnapshot"]["snapName"], name.as_str(), "{latest}");
    let deltas: Vec<&str> =
        latest["deltaSnapshots"].as_array().unwrap().iter().map(|d| d["snapName"].as_str().unwrap()).collect();
    assert!(deltas.contains(&delta_name.as_str()), "{latest}");

    // /metrics: every sample of the metrics file, plus the process's.
    let (status, text) = s.call("GET", "/metrics");
    assert_eq!(status, 200);
    let scraped = scratch("srv-scrape").join("metrics.txt");
    std::fs::write(&scraped, &text).unwrap();
    let m = parse_metrics(&scraped);
    for role in ["primary", "secondary"] {
        assert_eq!(
            m["etcdbr_snapshot_latest_revision"][format!("{role}/Full")].as_f64(),
            Some(parsed.last_revision as f64),
            "{m}"
        );
        let incr = SnapshotName::parse(&delta_name).unwrap();
        let seen = m["etcdbr_snapshot_latest_revision"][format!("{role}/Incr")].as_f64().unwrap();
        assert!(seen >= incr.last_revision as f64, "{m}");
        assert_eq!(m["etcdbr_snapshot_last_run_success"][format!("{role}/Full")].as_f64(), Some(1.0), "{m}");
    }
    assert!(m["process_resident_memory_bytes"][""].as_f64().unwrap() > 1e6, "{m}");
    assert!(m["process_open_fds"][""].as_f64().unwrap() >= 3.0, "{m}");
    let file = parse_metrics(&metrics_file);
    for (family, series) in file.as_object().unwrap().iter().filter(|(k, _)| k.starts_with("etcdbr_")) {
        for (labels, _) in series.as_object().unwrap() {
            assert!(m[family].get(labels).is_some(), "/metrics lacks {family}{{{labels}}} of the file: {m}");
        }
    }

    assert_eq!(s.call("GET", "/nope").0, 404);
    assert_eq!(s.call("POST", "/healthz").0, 405);
    assert_eq!(s.call("DELETE", "/snapshot/full").0, 405);
    assert_eq!(s.call("GET", "/snapshot/full?final=maybe").0, 400);
    let (status, body) = s.call("POST", "/snapshot/full?final=true");
    assert_eq!(status, 200, "{body}");
    let fin: Value = serde_json::from_str(&body).unwrap();
    assert!(fin["snapName"].as_str().unwrap().ends_with(".final") && fin["isFinal"] == true, "{fin}");
    s.stop();
}

/// /snapshot/delta is 500 when delta snapshots are off, as upstream.
#[test]
fn delta_trigger_is_refused_without_deltas() {
    let prefix = unique("srv-nodelta");
    let s = Server::direct(&prefix, &["--delta-snapshot-period=0"]);
    s.wait_health(200, || {});
    assert_eq!(s.call("POST", "/snapshot/delta").0, 500);
    s.stop();
}

/// {"types": {family: type}, sample: {"<endpoint>/<kind>": value}}.
fn parse_metrics(path: &std::path::Path) -> Value {
    const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {"types": {}}
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    out["types"][family.name] = family.type
    for s in family.samples:
        key = "/".join(v for v in [s.labels.get("endpoint"), s.labels.get("kind")] if v)
        out.setdefault(s.name, {})[key] = s.value
print(json.dumps(out))
"#;
    let parsed = std::process::Command::new("python3")
        .args(["-c", PARSE, path.to_str().unwrap()])
        .output()
        .expect("python3 with prometheus_client (scripts/test installs it)");
    assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
    serde_json::from_slice(&parsed.stdout).unwrap()
}

/// 50 clients polling the API at once while a full snapshot streams neither break
/// it nor slow it down much: timed against the same snapshot taken with no
/// client around (assertion at 2x, the numbers printed).
#[test]
fn concurrent_requests_do_not_slow_a_streaming_full_snapshot() {
    grow_db(&v35(), 64 << 20);
    let prefix = unique("srv-load");
    let s = Server::direct(&prefix, &["--delta-snapshot-period=0"]);
    s.wait_health(200, || {});
    let timed = |s: &Server| {
        let start = Instant::now();
        let (status, body) = s.call("POST", "/snapshot/full");
        assert_eq!(status, 200, "{body}");
        (start.elapsed(), serde_json::from_str::<Value>(&body).unwrap())
    };
    let (quiet, _) = timed(&s);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (loaded, taken, served) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..50)
            .map(|i| {
                let (stop, port) = (&stop, s.port);
                scope.spawn(move || {
                    let path = ["/healthz", "/metrics"][i % 2];
                    let mut ok = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let (status, _) = http(port, "GET", path);
                        assert!(status == 200 || status == 503, "{path}: {status}");
                        ok += 1;
                        // Clients polling, not a CPU burner: 50 at once, 10 times a second.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    ok
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let (loaded, taken) = timed(&s);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let served: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
        (loaded, taken, served)
    });
    eprintln!(
        "full snapshot of a 64 MiB database: {quiet:?} alone, {loaded:?} with 50 clients ({served} requests served)"
    );
    assert_eq!(taken["storedOn"], serde_json::json!(["primary", "secondary"]), "{taken}");
    assert!(served >= 50, "{served}");
    assert!(loaded <= quiet * 2 + Duration::from_secs(1), "{loaded:?} vs {quiet:?}");
    s.stop();
}

/// HTTPS with --server-cert/--server-key, checked against a throwaway CA.
#[test]
fn https_with_a_throwaway_ca() {
    let dir = scratch("srv-tls");
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh").arg("-c").arg(cmd).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=throwaway-ca");
    sh("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1");
    sh("printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf && openssl x509 -req -in server.csr -CA ca.pem \
        -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile ext.cnf");
    let prefix = unique("srv-tls");
    let cert = format!("--server-cert={}", dir.join("server.pem").display());
    let key = format!("--server-key={}", dir.join("server.key").display());
    let s = Server::direct(&prefix, &[&cert, &key]);
    let curl = |args: &[&str]| {
        std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/stdout", "-w", " %{http_code}"])
            .args(args)
            .output()
            .unwrap()
    };
    let url = format!("https://127.0.0.1:{}/healthz", s.port);
    let ca = dir.join("ca.pem");
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let out = curl(&["--cacert", ca.to_str().unwrap(), &url]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text == "{\"health\":true} 200" {
            break;
        }
        assert!(Instant::now() < end, "no HTTPS 200 within 60s: {text}; log:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Without the CA the certificate is not trusted; plain HTTP gets no answer.
    assert!(!curl(&[&url]).status.success());
    assert_eq!(http(s.port, "GET", "/healthz").0, 0);
    s.stop();
}

/// Polling /snapshot/latest does not list the S3 servers on every request:
/// a listing is reused for a short while, and a snapshot taken over HTTP
/// shows in the next answer at once.
#[test]
fn polling_latest_reuses_one_listing() {
    use common::fault::Request;
    let prefix = unique("srv-poll");
    let (a, b) = (S3Faults::start(&env("EBR_S3A_ENDPOINT"), vec![]), S3Faults::start(&env("EBR_S3B_ENDPOINT"), vec![]));
    let s = Server::start(&prefix, &a.url, &b.url, &["--delta-snapshot-period=1h"]);
    s.wait_health(200, || {});
    let before = a.hits(Request::List);
    let started = Instant::now();
    for _ in 0..20 {
        let (status, body) = s.call("GET", "/snapshot/latest");
        assert_eq!(status, 200, "{body}");
    }
    let listed = a.hits(Request::List) - before;
    let polled = started.elapsed();
    // One listing per 2 s window at most (plus one at a window's edge).
    assert!(listed as u64 <= polled.as_secs() / 2 + 2, "{listed} listings for 20 requests in {polled:?}");
    let (_, body) = s.call("POST", "/snapshot/full");
    let name = serde_json::from_str::<Value>(&body).unwrap()["snapName"].as_str().unwrap().to_string();
    let (_, latest) = s.call("GET", "/snapshot/latest");
    let latest: Value = serde_json::from_str(&latest).unwrap();
    assert_eq!(latest["fullSnapshot"]["snapName"].as_str(), Some(name.as_str()), "{latest}");
    s.stop();
}
