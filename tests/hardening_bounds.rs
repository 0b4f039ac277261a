//! Issue 11, items 4 and 6: everything from outside is bounded in size and
//! time, and logged as data. Each case drives the real binary against the
//! real servers, with `tests/common/fault.rs` in front where a server must
//! misbehave: credential paths that are devices or fifos, listings that
//! never end, responses that drip, decompression bombs, and error messages
//! that forge log lines.

mod common;

use common::cli::*;
use common::fault::{Action, Request, Rule, S3Faults};
use common::restore::*;
use common::{env, unique};
use etcd_backup_restore::snapshot::SnapshotName;
use etcd_backup_restore::store;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rule(kind: Request, action: Action) -> Rule {
    Rule { kind, nth: Vec::new(), action }
}

/// Bad input must never crash: no panic, no abort.
fn no_crash(r: &Run) {
    assert!(r.code != 101 && r.code != 134, "crashed: {}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// Run `cmd` to its end, killing it (and failing) after `limit`; returns
/// the run, how long it took, and the largest size of `watch` seen.
fn run_bounded(mut cmd: Command, limit: Duration, watch: Option<&Path>) -> (Run, Duration, u64) {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut largest = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}: {}", reader.join().unwrap());
        }
        if let Some(dir) = watch {
            largest = largest.max(disk_use(dir));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    let stderr = reader.join().unwrap();
    eprintln!("{stderr}");
    (Run { code: status.code().unwrap_or(-1), stderr }, took, largest)
}

/// Bytes of the regular files under `dir` (files may vanish meanwhile).
fn disk_use(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_use(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// The binary with `args`, at most a minute, checked not to crash; the
/// time it took is printed as `what`.
fn timed(args: &[String], what: &str) -> (Run, Duration) {
    let (r, took, _) = run_bounded(binary(args), Duration::from_secs(60), None);
    no_crash(&r);
    eprintln!("{what}: {took:?}");
    (r, took)
}

/// A single-member restore of `prefix` into `<dir>/data`, `extra` last.
fn restore_args(prefix: &str, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["restore".to_string(), format!("--data-dir={}", dir.join("data").display())];
    args.extend(store_args(prefix));
    let member = [
        "--name=m1",
        "--initial-cluster=m1=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
    ];
    args.extend(member.map(String::from));
    with(args, extra)
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn list_args(prefix: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["snapshot".to_string(), "list".to_string()];
    args.extend(store_args(prefix));
    with(args, extra)
}

/// Item 4: a device, a fifo, or a fifo inside a secret directory as a
/// credentials or CA path: exit 2 at once, one line naming what and where.
#[test]
fn credential_paths_that_are_not_regular_files_exit_2_at_once() {
    let dir = scratch("bcreds");
    let fifo = dir.join("creds.fifo");
    mkfifo(&fifo);
    let secret = dir.join("secret");
    std::fs::create_dir(&secret).unwrap();
    mkfifo(&secret.join("accessKeyID"));
    std::fs::write(secret.join("secretAccessKey"), "x").unwrap();
    let fifo = fifo.to_str().unwrap();
    let secret = secret.to_str().unwrap();
    let prefix = unique("bcreds");
    let cases: [(&str, &str, &str); 5] = [
        ("AWS_APPLICATION_CREDENTIALS", "/dev/zero", "not a regular file (a device)"),
        ("AWS_APPLICATION_CREDENTIALS", fifo, "not a regular file (a fifo)"),
        ("AWS_APPLICATION_CREDENTIALS_JSON", fifo, "not a regular file (a fifo)"),
        ("SECONDARY_AWS_APPLICATION_CREDENTIALS", secret, "not a regular file (a fifo)"),
        ("", "/dev/zero", "not a regular file (a device)"),
    ];
    for (var, path, want) in cases {
        let mut envs = creds();
        let mut extra = Vec::new();
        let ca_flag = format!("--store-ca-file={path}");
        if var.is_empty() {
            extra.push(ca_flag.as_str());
        } else {
            envs.push((var.to_string(), path.to_string()));
        }
        let started = Instant::now();
        let r = run(&refs(&list_args(&prefix, &extra)), &as_refs(&envs));
        let took = started.elapsed();
        no_crash(&r);
        assert_eq!(r.code, 2, "{var}={path}: {}", r.stderr);
        assert!(took < Duration::from_secs(1), "{var}={path}: took {took:?}");
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {}", r.stderr);
        let named = if var.is_empty() { "--store-ca-file".to_string() } else { format!("{var}=") };
        assert!(lines[0].starts_with("etcd-backup-restore: "), "{}", lines[0]);
        assert!(lines[0].contains(&named) && lines[0].contains(path) && lines[0].contains(want), "{}", lines[0]);
    }
}

/// Item 4: listings that never end. The same token again fails at once; a
/// new token every time stops at the documented page bound.
#[test]
fn endless_listings_fail_within_a_bound() {
    let prefix = unique("blist");
    for (fresh_tokens, want, limit) in
        [(false, "repeated a continuation token", 5), (true, "still truncated after 10000 pages", 120)]
    {
        let a =
            S3Faults::start(&env("EBR_S3A_ENDPOINT"), vec![rule(Request::List, Action::EndlessList { fresh_tokens })]);
        let b =
            S3Faults::start(&env("EBR_S3B_ENDPOINT"), vec![rule(Request::List, Action::EndlessList { fresh_tokens })]);
        let args = list_args(
            &prefix,
            &[
                &format!("--store-endpoint-override={}", a.url),
                &format!("--secondary-store-endpoint-override={}", b.url),
            ],
        );
        let (r, took, _) = run_bounded(binary(&args), Duration::from_secs(limit), None);
        no_crash(&r);
        assert_eq!(r.code, 1, "{}", r.stderr);
        eprintln!("fresh tokens {fresh_tokens}: {took:?}, {} listing requests", a.log.lock().unwrap().len());
        for (faults, bucket) in [(&a, env("EBR_S3A_BUCKET")), (&b, env("EBR_S3B_BUCKET"))] {
            let line = r.stderr.lines().find(|l| l.contains(want) && l.contains(&faults.url)).unwrap_or_else(|| {
                panic!("no line naming {} and {want:?}: {}", faults.url, r.stderr);
            });
            assert!(line.contains(&format!("s3://{bucket}/{prefix}/v2/")), "{line}");
        }
        if !fresh_tokens {
            // Permanent: not retried.
            assert!(a.log.lock().unwrap().len() <= 2, "{:?}", a.log.lock().unwrap().len());
        }
    }
}

/// Item 4: `--chunk-upload-timeout` bounds a whole ranged GET, body
/// included: a primary dripping 100 bytes a second is given up after the
/// timeout and the restore completes from the secondary.
#[test]
fn restore_through_a_dripping_primary_fails_over_within_the_timeout() {
    let v = v35();
    let prefix = unique("bdrip");
    let r = run(&refs(&dual_args(&v.endpoint, &prefix)), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let name = only_snapshot(&primary(&prefix)).0;
    let faults = S3Faults::start(&env("EBR_S3A_ENDPOINT"), vec![rule(Request::Get, Action::Drip(100))]);
    let args = restore_args(
        &prefix,
        &scratch("bdrip"),
        &[&format!("--store-endpoint-override={}", faults.url), "--chunk-upload-timeout=2s"],
    );
    // 3 attempts of 2 s each per part, then the secondary.
    let (r, took) = timed(&args, "restore through a dripping primary");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(faults.hits(Request::Get) > 0);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains(&format!("Failed to fetch snapshot {name} from primary endpoint")))
        .unwrap_or_else(|| panic!("no failover line: {}", r.stderr));
    assert!(line.contains("timed out"), "{line}");
    assert!(r.stderr.contains(&format!("Successfully fetched snapshot {name} from secondary endpoint")));
}

/// Item 4, uploads: a secondary taking part bodies at 1 KB/s is detached
/// after its whole-request timeout; the primary's copy completes.
#[test]
fn slow_secondary_upload_is_bounded_by_the_request_timeout() {
    let v = v35();
    let prefix = unique("bslowup");
    let faults = S3Faults::start(&env("EBR_S3B_ENDPOINT"), vec![rule(Request::UploadPart, Action::Throttle(1000))]);
    let args = with(
        dual_args(&v.endpoint, &prefix),
        &[
            &format!("--secondary-store-endpoint-override={}", faults.url),
            "--secondary-chunk-upload-timeout=2s",
            "--secondary-chunk-upload-attempts=2",
        ],
    );
    let (r, took) = timed(&args, "snapshot with a 1 KB/s secondary");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(r.stderr.contains("Failed to save snapshot"), "{}", r.stderr);
    assert!(listed(&secondary(&prefix)).is_empty());
}

/// A gzip of `head` followed by about `len` bytes of `fill`: one member
/// of 1 MiB repeated (gzip allows several members; compressing it once
/// keeps the test fast).
fn gzip_bomb(head: &[u8], fill: u8, len: usize) -> Vec<u8> {
    let gzip = |data: &[u8]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    };
    let mut out = gzip(head);
    out.extend(gzip(&vec![fill; 1 << 20]).repeat(len >> 20));
    out
}

/// The first 80 bytes of a bbolt meta page claiming `pgid` pages of 4 KiB,
/// checksummed as bbolt does (FNV-1a 64 of bytes 16..72).
fn meta_page(pgid: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0u64.to_le_bytes()); // page id
    b.extend_from_slice(&0x04u16.to_le_bytes()); // meta flag
    b.extend_from_slice(&[0; 6]); // count, overflow
    for v in [0xED0C_DAEDu32, 2, 4096, 0] {
        b.extend_from_slice(&v.to_le_bytes()); // magic, version, page size, flags
    }
    for v in [3u64, 0, 2, pgid, 1] {
        b.extend_from_slice(&v.to_le_bytes()); // root, sequence, freelist, pgid, txid
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in &b[16..72] {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    b.extend_from_slice(&h.to_le_bytes());
    b
}

/// Restore `prefix` (primary only holds the bomb) into a fresh directory,
/// watching that directory's disk use; returns the run and the largest use.
fn restore_watched(prefix: &str, tag: &str) -> (Run, u64) {
    let dir = scratch(tag);
    let args = restore_args(prefix, &dir, &[]);
    let (r, took, largest) = run_bounded(binary(&args), Duration::from_secs(120), Some(&dir));
    no_crash(&r);
    eprintln!("{tag}: {took:?}, at most {largest} bytes on disk");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing left behind in {}", dir.display());
    (r, largest)
}

/// Item 4: a 64 MiB expansion named as a full snapshot stops at the size
/// its bbolt meta page gives (or at once when it has none).
#[test]
fn full_snapshot_bombs_stop_at_the_meta_page_size() {
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for (head, want) in [
        (meta_page(4), "larger than the 16416 bytes its bbolt meta page gives"),
        (Vec::new(), "not an etcd snapshot: its first bbolt meta page is invalid"),
    ] {
        let prefix = unique("bbomb");
        let mut name = SnapshotName::full(5, created);
        name.compression = ".gz".into();
        let name = name.to_string();
        let bomb = gzip_bomb(&head, 0, 64 << 20);
        store::save(&primary(&prefix), &name, &bomb).unwrap();
        let (r, largest) = restore_watched(&prefix, "bbomb");
        assert_eq!(r.code, 1, "{}", r.stderr);
        let line = r.stderr.lines().find(|l| l.contains(want)).unwrap_or_else(|| panic!("{want:?}: {}", r.stderr));
        assert!(line.contains(&name), "{line}");
        // The download plus at most one 1 MiB buffer of output.
        assert!(largest <= bomb.len() as u64 + (2 << 20), "{largest} bytes on disk");
    }
}

/// Item 4: a delta snapshot expanding to 768 MiB stops at the 512 MiB bound
/// of a delta, and its output is removed.
#[test]
fn delta_snapshot_bomb_stops_at_the_delta_bound() {
    let v = v35();
    let prefix = unique("bdbomb");
    let r = run(&refs(&dual_args(&v.endpoint, &prefix)), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (full, full_bytes) = only_snapshot(&primary(&prefix));
    let full = SnapshotName::parse(&full).unwrap();
    let mut delta = SnapshotName::delta(full.last_revision + 1, full.last_revision + 10, full.created + 1);
    delta.compression = ".gz".into();
    let delta = delta.to_string();
    let bomb = gzip_bomb(b"[", b' ', 768 << 20);
    store::save(&primary(&prefix), &delta, &bomb).unwrap();
    let (r, largest) = restore_watched(&prefix, "bdbomb");
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("larger than 536870912 bytes, the most a delta snapshot can hold"))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(line.contains(&delta), "{line}");
    let bound = (512u64 << 20) + (1 << 20) + bomb.len() as u64 + full_bytes.len() as u64;
    assert!(largest <= bound, "{largest} bytes on disk, bound {bound}");
}

/// Item 6: an S3 error message with a newline, a forged log line and a
/// terminal escape is logged as one escaped line.
#[test]
fn server_error_text_cannot_forge_log_lines() {
    const FORGED: &str = "denied\n2026-01-01T00:00:00Z INFO Successfully restored the etcd data directory.\x1b[31m";
    let prefix = unique("bforge");
    let faults = S3Faults::start(&env("EBR_S3A_ENDPOINT"), vec![rule(Request::List, Action::Error(403, FORGED))]);
    let args = list_args(&prefix, &[&format!("--store-endpoint-override={}", faults.url)]);
    let (r, _, _) = run_bounded(binary(&args), Duration::from_secs(30), None);
    no_crash(&r);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(faults.hits(Request::List) > 0);
    assert!(!r.stderr.contains('\x1b'), "an ESC byte reached stderr: {:?}", r.stderr);
    assert!(!r.stderr.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")), "forged line: {}", r.stderr);
    assert!(r.stderr.contains("denied\\n2026-01-01T00:00:00Z INFO Successfully restored"), "{}", r.stderr);
    assert!(r.stderr.contains("\\x1b[31m"), "{}", r.stderr);
}
