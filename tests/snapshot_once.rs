//! `snapshot --once` end to end: the real binary against real etcd 3.4/3.5
//! and two different real S3 servers (s3s-fs primary, rclone secondary).

mod common;

use common::cli::*;
use common::s3_admin::admin;
use common::{Server, env, unique};
use etcd_backup_restore::store::Store;
use std::process::Command;

fn both_endpoints_up(etcd_var: &str, ctl_var: &str) {
    let (etcd, ctl) = (env(etcd_var), env(ctl_var));
    let prefix = unique("both");
    let (key, value) = (unique("key"), unique("value"));
    etcdctl_put(&ctl, &etcd, &key, &value);
    let c = creds();
    let r = run(&refs(&dual_args(&etcd, &prefix)), &as_refs(&c));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (name, a) = only_snapshot(&primary(&prefix));
    let (name_b, b) = only_snapshot(&secondary(&prefix));
    assert_eq!(name, name_b);
    assert!(a == b, "objects on both endpoints must be byte-identical");
    assert!(
        contains(&a, key.as_bytes()) && contains(&a, value.as_bytes()),
        "the key written before must be in the snapshot"
    );
    let parsed = etcd_backup_restore::snapshot::SnapshotName::parse(&name).expect("upstream name");
    assert_eq!(parsed.start_revision, 0);
    assert!(parsed.last_revision > 0);
    for line in [
        format!("INFO Successfully saved snapshot {name} to primary endpoint"),
        format!("INFO Successfully saved snapshot {name} to secondary endpoint"),
        format!("INFO Snapshot {name} successfully saved to both endpoints"),
    ] {
        assert!(r.stderr.contains(&line), "missing log line {line:?}");
    }
    // etcd's HashKV, asked once the snapshot is stored, is recorded on both
    // before the process exits.
    let records: Vec<Vec<u8>> =
        [primary(&prefix), secondary(&prefix)].iter().map(|s| load(&*s.sibling("hashkv"), &name)).collect();
    assert_eq!(records[0], records[1]);
    let record: serde_json::Value = serde_json::from_slice(&records[0]).unwrap();
    assert_eq!(record["revision"].as_u64(), Some(parsed.last_revision), "{record}");
    assert!(record["hash"].as_u64().is_some(), "{record}");
}

#[test]
fn both_endpoints_up_etcd34() {
    both_endpoints_up("EBR_ETCD34_ENDPOINT", "EBR_ETCDCTL34_BIN");
}

#[test]
fn both_endpoints_up_etcd35() {
    both_endpoints_up("EBR_ETCD35_ENDPOINT", "EBR_ETCDCTL35_BIN");
}

#[test]
fn single_endpoint_mode() {
    let prefix = unique("single");
    let c = creds();
    let args: Vec<String> = dual_args(&env("EBR_ETCD34_ENDPOINT"), &prefix).into_iter().take(8).collect();
    let r = run(&refs(&args), &as_refs(&c));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (name, _) = only_snapshot(&primary(&prefix));
    assert!(r.stderr.contains(&format!("INFO Successfully saved snapshot {name} to primary endpoint")));
    assert!(!r.stderr.contains("secondary"), "{}", r.stderr);
    assert!(listed(&secondary(&prefix)).is_empty());
}

/// Secondary unusable in some way: the primary still gets a valid snapshot,
/// a WARN says so, exit 0 (3 with --require-all-endpoints).
fn secondary_fails(extra: &[&str], envs: Vec<(String, String)>, want_cause: &str) {
    let prefix = unique("degraded");
    let args = with(dual_args(&env("EBR_ETCD34_ENDPOINT"), &prefix), extra);
    let r = run(&refs(&args), &as_refs(&envs));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (name, _) = only_snapshot(&primary(&prefix));
    assert!(r.stderr.contains(&format!("INFO Successfully saved snapshot {name} to primary endpoint")), "{}", r.stderr);
    let erro = format!("ERRO Failed to save snapshot {name} to secondary endpoint: ");
    let line = r.stderr.lines().find(|l| l.contains(&erro)).unwrap_or_else(|| panic!("no {erro:?}"));
    assert!(line.contains(want_cause), "cause {want_cause:?} missing in {line:?}");
    assert!(
        r.stderr
            .contains(&format!("WARN Snapshot {name} saved to only one endpoint - Primary: true, Secondary: false"))
    );
    for (k, v) in &envs {
        if k.contains("SECRET") {
            assert!(!r.stderr.contains(v.as_str()), "secret of {k} leaked");
        }
    }
    // Strict mode turns the same outcome into exit code 3.
    let args = with(args, &["--require-all-endpoints"]);
    let r = run(&refs(&args), &as_refs(&envs));
    assert_eq!(r.code, 3, "{}", r.stderr);
    no_uploads_left_on_secondary(&prefix);
}

#[test]
fn secondary_down() {
    secondary_fails(&["--secondary-store-endpoint-override=http://127.0.0.1:1"], creds(), "127.0.0.1:1");
}

#[test]
fn secondary_wrong_secret() {
    let mut envs = creds();
    envs[3].1 = "not-the-secondary-secret".into();
    secondary_fails(&[], envs, "403");
}

#[test]
fn secondary_bucket_missing() {
    let bucket = unique("nobucket");
    secondary_fails(&[&format!("--secondary-store-container={bucket}")], creds(), &bucket);
}

#[test]
fn both_endpoints_down() {
    let prefix = unique("bothdown");
    let args = with(
        dual_args(&env("EBR_ETCD34_ENDPOINT"), &prefix),
        &["--store-endpoint-override=http://127.0.0.1:1", "--secondary-store-endpoint-override=http://127.0.0.1:2"],
    );
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r.stderr.lines().find(|l| l.contains("was not saved to any endpoint")).expect("final error line");
    assert!(line.contains("primary: ") && line.contains("127.0.0.1:1"), "{line}");
    assert!(line.contains("secondary: ") && line.contains("127.0.0.1:2"), "{line}");
}

#[test]
fn etcd_unreachable_uploads_nothing() {
    let prefix = unique("noetcd");
    let args = with(dual_args("http://127.0.0.1:1", &prefix), &["--etcd-connection-timeout=2s"]);
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("ERRO Failed to take snapshot") && r.stderr.contains("127.0.0.1:1"), "{}", r.stderr);
    assert!(listed(&primary(&prefix)).is_empty());
    assert!(listed(&secondary(&prefix)).is_empty());
    no_uploads_left_on_secondary(&prefix);
}

#[test]
fn credential_fallback_to_primary() {
    // No SECONDARY_* credentials: the secondary (another prefix on the
    // primary's server) must be reached with the primary's.
    let prefix = unique("fallback");
    let other = format!("{prefix}-second");
    let args = with(
        dual_args(&env("EBR_ETCD34_ENDPOINT"), &prefix),
        &[
            &format!("--secondary-store-container={}", env("EBR_S3A_BUCKET")),
            &format!("--secondary-store-prefix={other}"),
            &format!("--secondary-store-endpoint-override={}", env("EBR_S3A_ENDPOINT")),
        ],
    );
    let c = creds();
    let r = run(&refs(&args), &as_refs(&c[..2]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("successfully saved to both endpoints"));
    let (a, b) = (only_snapshot(&primary(&prefix)), only_snapshot(&primary(&other)));
    assert_eq!(a, b);
}

#[test]
fn json_file_and_directory_credentials() {
    let dir = std::env::temp_dir().join(unique("creds"));
    std::fs::create_dir_all(dir.join("secondary-fields")).unwrap();
    std::fs::create_dir_all(dir.join("secondary-json")).unwrap();
    let json = |s: &str| {
        format!(
            r#"{{"accessKeyID":"{}","secretAccessKey":"{}","region":"us-east-1"}}"#,
            env(&format!("EBR_S3{s}_ACCESS_KEY")),
            env(&format!("EBR_S3{s}_SECRET_KEY"))
        )
    };
    std::fs::write(dir.join("primary.json"), json("A")).unwrap();
    std::fs::write(dir.join("secondary-json/credentials.json"), json("B")).unwrap();
    std::fs::write(dir.join("secondary-fields/accessKeyID"), env("EBR_S3B_ACCESS_KEY")).unwrap();
    std::fs::write(dir.join("secondary-fields/secretAccessKey"), env("EBR_S3B_SECRET_KEY")).unwrap();
    std::fs::write(dir.join("secondary-fields/region"), "us-east-1").unwrap();
    for secondary_dir in ["secondary-fields", "secondary-json"] {
        let prefix = unique("credforms");
        let envs = [
            ("AWS_APPLICATION_CREDENTIALS", dir.join("primary.json").to_str().unwrap().to_string()),
            ("SECONDARY_AWS_APPLICATION_CREDENTIALS", dir.join(secondary_dir).to_str().unwrap().to_string()),
        ];
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = run(&refs(&dual_args(&env("EBR_ETCD34_ENDPOINT"), &prefix)), &envs);
        assert_eq!(r.code, 0, "{secondary_dir}: {}", r.stderr);
        assert_eq!(only_snapshot(&primary(&prefix)), only_snapshot(&secondary(&prefix)));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_etcd_with_client_certificate() {
    let prefix = unique("tls");
    let args = with(
        dual_args(&env("EBR_ETCD_TLS_ENDPOINT"), &prefix),
        &[
            &format!("--cacert={}", env("EBR_ETCD_TLS_CA")),
            &format!("--cert={}", env("EBR_ETCD_TLS_CERT")),
            &format!("--key={}", env("EBR_ETCD_TLS_KEY")),
        ],
    );
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(only_snapshot(&primary(&prefix)), only_snapshot(&secondary(&prefix)));
}

#[test]
fn different_chunk_settings_give_different_part_counts() {
    // About 21 MiB of data on etcd 3.5, so that 5 MiB and 8 MiB parts differ.
    // Both endpoints are s3s-fs here (two prefixes) because its multipart
    // ETag ends in `-<parts>`; rclone's is a plain MD5.
    let (etcd, ctl) = (env("EBR_ETCD35_ENDPOINT"), env("EBR_ETCDCTL35_BIN"));
    let big = "x".repeat(1 << 20);
    for i in 0..21 {
        etcdctl_put(&ctl, &etcd, &format!("/parts-test/{i}"), &format!("{i}{big}"));
    }
    let prefix = unique("parts");
    let other = format!("{prefix}-8m");
    let args = with(
        dual_args(&etcd, &prefix),
        &[
            "--min-chunk-size=5Mi",
            "--max-parallel-chunk-uploads=3",
            &format!("--secondary-store-container={}", env("EBR_S3A_BUCKET")),
            &format!("--secondary-store-prefix={other}"),
            &format!("--secondary-store-endpoint-override={}", env("EBR_S3A_ENDPOINT")),
            "--secondary-min-chunk-size=8Mi",
            "--secondary-max-parallel-chunk-uploads=2",
        ],
    );
    let c = creds();
    let r = run(&refs(&args), &as_refs(&c[..2]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (name, a) = only_snapshot(&primary(&prefix));
    assert_eq!(only_snapshot(&primary(&other)).1, a);
    let size = a.len() as u64;
    let mib = 1u64 << 20;
    let mut counts = Vec::new();
    for (p, part) in [(&prefix, 5 * mib), (&other, 8 * mib)] {
        let s = primary(p);
        let (_, etag) = admin(Server::A, p).head(&name).unwrap();
        let want = format!("-{}", size.div_ceil(part));
        assert!(etag.ends_with(&want), "{}: ETag {etag} should end in {want} for {size} bytes", s.location());
        counts.push(want);
    }
    assert_ne!(counts[0], counts[1]);
    // Give the shared etcd its space back, so that repeated runs stay small.
    let ctl_run = |args: &[&str]| {
        let out = Command::new(&ctl).env("ETCDCTL_API", "3").arg("--endpoints").arg(&etcd).args(args).output().unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ctl_run(&["del", "--prefix", "/parts-test/"]);
    let rev = ctl_run(&["endpoint", "status", "-w", "json"]);
    let rev = rev.split("\"revision\":").nth(1).and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()).unwrap();
    ctl_run(&["compaction", rev]);
    ctl_run(&["defrag"]);
}

#[test]
fn bad_flags_exit_2_with_one_line_naming_the_flag() {
    for (args, want) in [
        (vec!["snapshot", "--once", "--bogus"], "--bogus"),
        (vec!["snapshot", "--once", "--min-chunk-size=1"], "--min-chunk-size"),
        (vec!["snapshot", "--once", "--max-parallel-chunk-uploads=many"], "--max-parallel-chunk-uploads"),
        (
            vec!["snapshot", "--once", "--storage-provider=S3", "--store-container=bkt", "--secondary-store-prefix=x"],
            "--secondary-store-prefix needs --secondary-storage-provider",
        ),
        (vec!["snapshot", "--once", "--storage-provider=Azure", "--store-container=bkt"], "--storage-provider"),
        (
            vec![
                "snapshot",
                "--once",
                "--storage-provider=S3",
                "--store-container=bkt",
                "--store-endpoint-override=127.0.0.1:9000",
            ],
            "--store-endpoint-override",
        ),
    ] {
        let r = run(&args, &[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "TOPSECRET")]);
        assert_eq!(r.code, 2, "{args:?}");
        assert_eq!(r.stderr.trim_end().lines().count(), 1, "one line: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("TOPSECRET"));
    }
    let r = run(&["snapshot", "--help"], &[]);
    assert_eq!(r.code, 0);
}

/// `--metrics-file`: node_exporter textfile metrics per endpoint, checked
/// with Prometheus' own Python parser; failures count up across runs and
/// the last success stays.
#[test]
fn metrics_file_for_node_exporter() {
    let prefix = unique("metrics");
    let dir = common::restore::scratch("metrics");
    let file = dir.join("etcdbr.prom");
    let metrics = format!("--metrics-file={}", file.display());
    let args = with(dual_args(&env("EBR_ETCD35_ENDPOINT"), &prefix), &[&metrics]);
    assert_eq!(run(&refs(&args), &as_refs(&creds())).code, 0);
    let (name, bytes) = only_snapshot(&primary(&prefix));
    let down = with(args, &["--secondary-store-endpoint-override=http://127.0.0.1:1"]);
    assert_eq!(run(&refs(&down), &as_refs(&creds())).code, 0);
    let parsed = Command::new("python3")
        .args(["-c", PARSE, file.to_str().unwrap()])
        .output()
        .expect("python3 with prometheus_client (scripts/test installs it)");
    assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
    let m: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    let get = |metric: &str, endpoint: &str| {
        m[metric][endpoint].as_f64().unwrap_or_else(|| panic!("{metric} {endpoint}: {m}"))
    };
    assert_eq!(m["types"]["etcdbr_snapshot_failures"], "counter");
    assert_eq!(m["types"]["etcdbr_snapshot_latest_revision"], "gauge");
    assert_eq!(get("etcdbr_snapshot_failures_total", "secondary"), 1.0);
    assert!(m["etcdbr_snapshot_failures_total"]["primary"].is_null());
    assert_eq!(get("etcdbr_snapshot_last_run_success", "primary"), 1.0);
    assert_eq!(get("etcdbr_snapshot_last_run_success", "secondary"), 0.0);
    let first = etcd_backup_restore::snapshot::SnapshotName::parse(&name).unwrap();
    assert_eq!(
        get("etcdbr_snapshot_latest_revision", "secondary"),
        first.last_revision as f64,
        "the last success stays"
    );
    assert_eq!(get("etcdbr_snapshot_uploaded_bytes", "secondary"), bytes.len() as f64);
    assert!(get("etcdbr_snapshot_latest_timestamp", "primary") >= first.created as f64);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
}

/// Prints {"types": {family: type}, sample name: {endpoint: value}}.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {"types": {}}
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    out["types"][family.name] = family.type
    for s in family.samples:
        assert s.labels["kind"] == "Full", s
        out.setdefault(s.name, {})[s.labels["endpoint"]] = s.value
print(json.dumps(out))
"#;

/// Bad credential files: one line naming the variable and the file, never
/// their content, exit 2, nothing stored.
#[test]
fn bad_credential_files_exit_2_naming_the_file() {
    let dir = common::restore::scratch("badcreds");
    let broken = dir.join("broken.json");
    std::fs::write(&broken, r#"{"accessKeyID": "k", "secretAccessKey": "TOPSECRET", "#).unwrap();
    let unreadable = dir.join("a-directory.json");
    std::fs::create_dir(&unreadable).unwrap();
    let prefix = unique("badcreds");
    for file in [&broken, &unreadable, &dir.join("missing.json")] {
        let envs = [("AWS_APPLICATION_CREDENTIALS_JSON", file.to_str().unwrap())];
        let r = run(&refs(&dual_args(&env("EBR_ETCD35_ENDPOINT"), &prefix)), &envs);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert_eq!(r.stderr.trim_end().lines().count(), 1, "one line: {}", r.stderr);
        assert!(r.stderr.contains("AWS_APPLICATION_CREDENTIALS_JSON") && r.stderr.contains(file.to_str().unwrap()));
        assert!(!r.stderr.contains("TOPSECRET"), "{}", r.stderr);
    }
    assert!(listed(&primary(&prefix)).is_empty() && listed(&secondary(&prefix)).is_empty());
}
