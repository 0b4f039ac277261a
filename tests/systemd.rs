//! The units in contrib/systemd pass `systemd-analyze verify` without a
//! single warning (it exits 0 even on unknown keys, so the output must be
//! empty), with ExecStart pointing at the binary under test.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 3] =
    ["etcd-backup-restore.service", "etcd-backup-restore.timer", "etcd-backup-restore-snapshotter.service"];

/// Copy the units into a fresh directory, ExecStart rewritten, plus `extra`
/// appended to the first one; the verifier's output (empty when clean).
fn verify(extra: &str) -> String {
    let dir = std::env::temp_dir().join(format!("ebr-units-{}-{}", std::process::id(), extra.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let paths: Vec<PathBuf> = UNITS
        .iter()
        .enumerate()
        .map(|(i, unit)| {
            let mut text = std::fs::read_to_string(src.join(unit)).unwrap();
            text = text.replace("/usr/local/bin/etcd-backup-restore", env!("CARGO_BIN_EXE_etcd-backup-restore"));
            if i == 0 {
                text.push_str(extra);
            }
            let path = dir.join(unit);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let out = Command::new("systemd-analyze").arg("verify").args(&paths).output().expect("systemd-analyze");
    std::fs::remove_dir_all(&dir).unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() || !text.is_empty(), "systemd-analyze failed silently");
    text
}

#[test]
fn units_verify_cleanly() {
    assert_eq!(verify(""), "", "systemd-analyze verify must have nothing to say");
}

#[test]
fn the_check_sees_a_bad_unit() {
    assert!(verify("\n[Service]\nProtectSytem=strict\n").contains("Unknown key"));
}

#[test]
fn the_oneshot_unit_fails_on_a_degraded_backup() {
    let unit =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd").join(UNITS[0])).unwrap();
    assert!(unit.contains("Type=oneshot") && unit.contains("snapshot --once --require-all-endpoints"));
    assert!(!unit.contains("SuccessExitStatus"), "exit 3 (one endpoint only) must fail the unit");
}
