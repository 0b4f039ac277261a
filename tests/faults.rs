//! Fault injection: a proxy between the tool and one S3 server (or etcd)
//! answers 503/500, resets, stalls or corrupts. Each case checks the exit
//! code, the log lines, the objects on both endpoints (whole, SHA-256
//! trailer verified, identical) and that no multipart upload is left on
//! the secondary (rclone lists them; s3s-fs, the primary, does not).

mod common;

use common::cli::*;
use common::fault::{Action, Request, Rule, S3Faults};
use common::restore::*;
use common::{CutProxy, env, unique};
use std::time::{Duration, Instant};

/// etcd 3.5 with a database of at least 16 MiB: four 5 MiB parts or more.
fn etcd() -> String {
    let v = v35();
    grow_db(&v, 16 << 20);
    v.endpoint
}

/// A `snapshot --once` with the secondary behind `faults`.
fn backup_through(prefix: &str, faults: &S3Faults, extra: &[&str]) -> Run {
    let proxied = format!("--secondary-store-endpoint-override={}", faults.url);
    let args = with(dual_args(&etcd(), prefix), &[&proxied]);
    run(&refs(&with(args, extra)), &as_refs(&creds()))
}

fn rule(kind: Request, nth: &[usize], action: Action) -> Rule {
    Rule { kind, nth: nth.to_vec(), action }
}

#[test]
fn transient_503_and_500_on_parts_are_retried() {
    let prefix = unique("f503");
    let faults = S3Faults::start(
        &env("EBR_S3B_ENDPOINT"),
        vec![
            rule(Request::UploadPart, &[2], Action::Status(503)),
            rule(Request::UploadPart, &[3], Action::Status(500)),
        ],
    );
    let r = backup_through(&prefix, &faults, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(faults.hits(Request::UploadPart), 2);
    assert!(r.stderr.contains("successfully saved to both endpoints"), "{}", r.stderr);
    assert!(r.stderr.lines().any(|l| l.contains("WARN secondary endpoint") && l.contains("SlowDown")), "{}", r.stderr);
    let (name, a) = only_snapshot(&primary(&prefix));
    let (name_b, b) = only_snapshot(&secondary(&prefix));
    assert_eq!(name, name_b);
    assert!(a == b, "identical bytes on both endpoints");
    no_uploads_left_on_secondary(&prefix);
}

#[test]
fn secondary_resetting_every_part_is_aborted_and_the_primary_completes() {
    let prefix = unique("freset");
    let faults =
        S3Faults::start(&env("EBR_S3B_ENDPOINT"), vec![rule(Request::UploadPart, &[], Action::ResetAfter(64 << 10))]);
    let r = backup_through(&prefix, &faults, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (name, _) = only_snapshot(&primary(&prefix));
    assert!(r.stderr.contains(&format!("ERRO Failed to save snapshot {name} to secondary endpoint")), "{}", r.stderr);
    assert!(r.stderr.contains("saved to only one endpoint - Primary: true, Secondary: false"));
    assert!(listed(&secondary(&prefix)).is_empty());
    assert!(faults.log.lock().unwrap().iter().any(|(k, _)| *k == Request::AbortUpload), "the upload was aborted");
    no_uploads_left_on_secondary(&prefix);
}

#[test]
fn stalled_secondary_is_detached_after_the_part_timeout() {
    let prefix = unique("fstall");
    let faults = S3Faults::start(&env("EBR_S3B_ENDPOINT"), vec![rule(Request::UploadPart, &[], Action::Stall)]);
    let started = Instant::now();
    let r = backup_through(
        &prefix,
        &faults,
        &["--secondary-chunk-upload-timeout=2s", "--secondary-chunk-upload-attempts=2"],
    );
    let took = started.elapsed();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(took < Duration::from_secs(60), "bounded: {took:?}");
    let (name, _) = only_snapshot(&primary(&prefix));
    let line = r.stderr.lines().find(|l| l.contains(&format!("Failed to save snapshot {name} to secondary"))).unwrap();
    assert!(line.contains("timed out") || line.contains("timeout"), "{line}");
    assert!(listed(&secondary(&prefix)).is_empty());
    no_uploads_left_on_secondary(&prefix);
}

#[test]
fn etcd_dropping_mid_snapshot_stores_nothing() {
    let prefix = unique("fdrop");
    let proxy = CutProxy::start(&etcd(), 2 << 20);
    let args = with(dual_args(&proxy.url, &prefix), &[]);
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("every upload was aborted, nothing was stored"), "{}", r.stderr);
    assert!(listed(&primary(&prefix)).is_empty() && listed(&secondary(&prefix)).is_empty());
    no_uploads_left_on_secondary(&prefix);
}

#[test]
fn corrupted_etcd_stream_fails_the_sha256_check() {
    let prefix = unique("fflip");
    // Deep inside the stream: in snapshot bytes, not in gRPC or HTTP/2 framing.
    let proxy = CutProxy::flipping(&etcd(), (3 << 20) + 1000);
    let r = run(&refs(&dual_args(&proxy.url, &prefix)), &as_refs(&creds()));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("SHA-256 trailer mismatch"), "{}", r.stderr);
    assert!(r.stderr.contains("every upload was aborted, nothing was stored"), "{}", r.stderr);
    assert!(listed(&primary(&prefix)).is_empty() && listed(&secondary(&prefix)).is_empty());
    no_uploads_left_on_secondary(&prefix);
}

#[test]
fn sigterm_during_an_upload_aborts_both() {
    let prefix = unique("fterm");
    // The secondary's parts hang, so the upload is surely in flight.
    let faults = S3Faults::start(&env("EBR_S3B_ENDPOINT"), vec![rule(Request::UploadPart, &[], Action::Stall)]);
    let proxied = format!("--secondary-store-endpoint-override={}", faults.url);
    let args = with(dual_args(&etcd(), &prefix), &[&proxied, "--secondary-chunk-upload-timeout=3s"]);
    let child = binary(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while faults.hits(Request::UploadPart) == 0 {
        assert!(Instant::now() < end, "no part upload reached the secondary");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted by a signal"), "{stderr}");
    assert!(!stderr.contains("Still running"), "stopped within the grace period: {stderr}");
    assert!(listed(&primary(&prefix)).is_empty() && listed(&secondary(&prefix)).is_empty());
    no_uploads_left_on_secondary(&prefix);
}

#[test]
fn restore_reads_the_secondary_when_the_primary_answers_500() {
    let prefix = unique("fget");
    let r = run(&refs(&dual_args(&etcd(), &prefix)), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let name = only_snapshot(&primary(&prefix)).0;
    let faults = S3Faults::start(&env("EBR_S3A_ENDPOINT"), vec![rule(Request::Get, &[], Action::Status(500))]);
    let dir = scratch("fget");
    let r = restore(&prefix, &dir.join("data"), &[&format!("--store-endpoint-override={}", faults.url)], &creds());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(faults.hits(Request::Get) >= 1);
    assert!(r.stderr.contains(&format!("Failed to fetch snapshot {name} from primary endpoint")), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("INFO Successfully fetched snapshot {name} from secondary endpoint")));
    assert!(dir.join("data/member/snap/db").is_file());
}

/// A slow secondary (each part connection capped at 4 MB/s) holds the
/// snapshot back, but memory stays within the documented bound (81 MiB of
/// buffers for two endpoints with the defaults) while a snapshot larger
/// than that streams through; both endpoints get it.
#[test]
fn slow_secondary_keeps_memory_bounded() {
    // A private etcd: growing the shared one would slow every later test.
    let dir = scratch("fslow-etcd");
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let v = v35();
    let etcd = common::Etcd::start(&v.etcd, &v.ctl, &dir.join("etcd"), "s1", &peer, &format!("s1={peer}"));
    let v = Version { endpoint: etcd.client_url.clone(), ..v };
    grow_db(&v, 128 << 20);
    let prefix = unique("fslow");
    let faults =
        S3Faults::start(&env("EBR_S3B_ENDPOINT"), vec![rule(Request::UploadPart, &[], Action::Throttle(4_000_000))]);
    let proxied = format!("--secondary-store-endpoint-override={}", faults.url);
    let args = with(dual_args(&v.endpoint, &prefix), &[&proxied]);
    let mut child = binary(&args).stderr(std::process::Stdio::null()).spawn().unwrap();
    // The peak resident set (VmHWM), read until the process ends.
    let mut peak_kb = 0u64;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            let hwm = text.lines().find_map(|l| l.strip_prefix("VmHWM:"));
            peak_kb = peak_kb.max(hwm.and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()).unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let (name, a) = only_snapshot(&primary(&prefix));
    let (_, b) = only_snapshot(&secondary(&prefix));
    assert!(a == b, "identical on both endpoints");
    assert!(a.len() > 128 << 20, "{name}: {} bytes", a.len());
    eprintln!("peak RSS {peak_kb} kB for a {} byte snapshot", a.len());
    // 81 MiB of buffers, plus the program itself and its HTTP/TLS state.
    assert!(peak_kb < 110 << 10, "peak RSS {peak_kb} kB for a {} byte snapshot", a.len());
    no_uploads_left_on_secondary(&prefix);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}
