//! `--metrics-file`: after every snapshot, the outcome per endpoint in
//! node_exporter's textfile-collector format (Prometheus text), written to a
//! temporary file and renamed, so the collector never reads half a file.
//! Counters and the last success survive failed runs: the previous file is
//! read back first.

use crate::endpoint::Role;
use crate::snapshot::{Kind, SnapshotName};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Metric name, help, type. Upstream's `etcdbr_` names where one exists.
const METRICS: [(&str, &str, &str); 12] = [
    ("etcdbr_snapshot_latest_timestamp", "Unix time of the latest snapshot stored on the endpoint.", "gauge"),
    ("etcdbr_snapshot_latest_revision", "etcd revision of the latest snapshot stored on the endpoint.", "gauge"),
    ("etcdbr_snapshot_uploaded_bytes", "Bytes stored for the latest snapshot on the endpoint.", "gauge"),
    ("etcdbr_snapshot_last_run_timestamp", "Unix time of the last attempt to store a snapshot.", "gauge"),
    ("etcdbr_snapshot_last_run_success", "1 if the last attempt stored the snapshot on the endpoint, else 0.", "gauge"),
    ("etcdbr_snapshot_last_run_duration_seconds", "Duration of the last attempt.", "gauge"),
    ("etcdbr_snapshot_failures_total", "Attempts that did not store the snapshot on the endpoint.", "counter"),
    ("etcdbr_reconciled_total", "Snapshots copied to the endpoint from the other one by reconcile.", "counter"),
    ("etcdbr_verified_revision", "Latest etcd revision the endpoint alone restores to, as last verified.", "gauge"),
    ("etcdbr_verify_success", "1 if the last verify found the endpoint restorable and nothing wrong, else 0.", "gauge"),
    ("etcdbr_verify_timestamp_seconds", "Unix time of the last verify of the endpoint.", "gauge"),
    ("etcdbr_defragmentation_duration_seconds", "Duration of the member's last defragmentation.", "gauge"),
];

/// Threads of one process (snapshots, reconcile, verify) update the same
/// file: one read-modify-write at a time.
static FILE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A metric sample's identity: name and rendered labels.
type Series = (String, String);

/// Record one attempt: whether each endpoint stored it, and the snapshot
/// (with the bytes stored) when one was taken.
pub fn record(
    path: &Path,
    stored: &[(Role, bool)],
    kind: Kind,
    snapshot: Option<&(SnapshotName, u64)>,
    duration_secs: f64,
    now: u64,
) -> std::io::Result<()> {
    let _one = FILE.lock().unwrap_or_else(|p| p.into_inner());
    let mut samples = read(path)?;
    let kind = kind.name();
    for &(role, ok) in stored {
        let ep = format!("endpoint=\"{}\"", role.name());
        let by_kind = format!("{ep},kind=\"{kind}\"");
        let mut set = |metric: &str, labels: &str, v: f64| {
            samples.insert((metric.to_string(), labels.to_string()), v);
        };
        set("etcdbr_snapshot_last_run_timestamp", &by_kind, now as f64);
        set("etcdbr_snapshot_last_run_success", &by_kind, if ok { 1.0 } else { 0.0 });
        set("etcdbr_snapshot_last_run_duration_seconds", &by_kind, duration_secs);
        match snapshot {
            Some((n, bytes)) if ok => {
                set("etcdbr_snapshot_latest_timestamp", &by_kind, n.created as f64);
                set("etcdbr_snapshot_latest_revision", &by_kind, n.last_revision as f64);
                set("etcdbr_snapshot_uploaded_bytes", &by_kind, *bytes as f64);
            }
            _ => {
                *samples.entry(("etcdbr_snapshot_failures_total".into(), by_kind.clone())).or_insert(0.0) += 1.0;
            }
        }
    }
    write_atomically(path, &render(&samples))
}

/// Add the snapshots reconcile copied to each endpoint to its counter.
pub fn record_reconciled(path: &Path, copied: &[(Role, u64)]) -> std::io::Result<()> {
    let _one = FILE.lock().unwrap_or_else(|p| p.into_inner());
    let mut samples = read(path)?;
    for &(role, n) in copied {
        let series = ("etcdbr_reconciled_total".to_string(), format!("endpoint=\"{}\"", role.name()));
        *samples.entry(series).or_insert(0.0) += n as f64;
    }
    write_atomically(path, &render(&samples))
}

/// Record one verify: per endpoint, the revision it alone restores to
/// (kept from the last verify that found one) and whether it verified.
pub fn record_verified(path: &Path, verified: &[(Role, Option<u64>, bool)], now: u64) -> std::io::Result<()> {
    let _one = FILE.lock().unwrap_or_else(|p| p.into_inner());
    let mut samples = read(path)?;
    for &(role, revision, ok) in verified {
        let ep = format!("endpoint=\"{}\"", role.name());
        let mut set = |metric: &str, v: f64| samples.insert((metric.to_string(), ep.clone()), v);
        if let Some(r) = revision {
            set("etcdbr_verified_revision", r as f64);
        }
        set("etcdbr_verify_success", if ok { 1.0 } else { 0.0 });
        set("etcdbr_verify_timestamp_seconds", now as f64);
    }
    write_atomically(path, &render(&samples))
}

/// Record how long each member's defragmentation took.
pub fn record_defragmented(path: &Path, members: &[(String, f64)]) -> std::io::Result<()> {
    let _one = FILE.lock().unwrap_or_else(|p| p.into_inner());
    let mut samples = read(path)?;
    for (member, secs) in members {
        // A member name is etcd's `--name`: escaped as Prometheus label values are.
        let label = member.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        samples.insert(("etcdbr_defragmentation_duration_seconds".into(), format!("member=\"{label}\"")), *secs);
    }
    write_atomically(path, &render(&samples))
}

/// The samples of the file as it is, none when it does not exist yet.
fn read(path: &Path) -> std::io::Result<BTreeMap<Series, f64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// The samples of a file this module wrote: `name{labels} value` lines.
fn parse(text: &str) -> BTreeMap<Series, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = series.split_once('{')?;
            Some(((name.to_string(), labels.strip_suffix('}')?.to_string()), value.parse().ok()?))
        })
        .filter(|((name, _), _)| METRICS.iter().any(|(m, ..)| m == name))
        .collect()
}

fn render(samples: &BTreeMap<Series, f64>) -> String {
    let mut out = String::new();
    for (metric, help, kind) in METRICS {
        let mut rows = samples.iter().filter(|((name, _), _)| name == metric).peekable();
        if rows.peek().is_none() {
            continue;
        }
        out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} {kind}\n"));
        for ((name, labels), v) in rows {
            out.push_str(&format!("{name}{{{labels}}} {v}\n"));
        }
    }
    out
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The collector reads only `*.prom`: the temporary name ends otherwise.
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(primary_ok: bool) -> [(Role, bool); 2] {
        [(Role::Primary, primary_ok), (Role::Secondary, true)]
    }

    #[test]
    fn failures_count_up_and_the_last_success_stays() {
        let dir = crate::test_scratch::dir("metrics");
        let path = dir.join("etcdbr.prom");
        let taken = (SnapshotName::parse("Full-00000000-00000042-1700000000.gz").unwrap(), 1234);
        let none = [(Role::Primary, false), (Role::Secondary, false)];
        record(&path, &stored(true), Kind::Full, Some(&taken), 1.5, 1_700_000_001).unwrap();
        record(&path, &stored(false), Kind::Full, Some(&taken), 2.5, 1_700_000_100).unwrap();
        record(&path, &none, Kind::Full, None, 0.1, 1_700_000_200).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in [
            "# TYPE etcdbr_snapshot_failures_total counter",
            "etcdbr_snapshot_failures_total{endpoint=\"primary\",kind=\"Full\"} 2",
            "etcdbr_snapshot_failures_total{endpoint=\"secondary\",kind=\"Full\"} 1",
            "etcdbr_snapshot_latest_timestamp{endpoint=\"primary\",kind=\"Full\"} 1700000000",
            "etcdbr_snapshot_latest_revision{endpoint=\"secondary\",kind=\"Full\"} 42",
            "etcdbr_snapshot_uploaded_bytes{endpoint=\"primary\",kind=\"Full\"} 1234",
            "etcdbr_snapshot_last_run_success{endpoint=\"secondary\",kind=\"Full\"} 0",
            "etcdbr_snapshot_last_run_timestamp{endpoint=\"primary\",kind=\"Full\"} 1700000200",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(std::fs::read_dir(&*dir).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn reconciled_copies_count_up_beside_the_snapshot_metrics() {
        let dir = crate::test_scratch::dir("metrics-reconciled");
        let path = dir.join("etcdbr.prom");
        let taken = (SnapshotName::parse("Full-00000000-00000042-1700000000.gz").unwrap(), 1234);
        record(&path, &stored(true), Kind::Full, Some(&taken), 1.5, 1_700_000_001).unwrap();
        record_reconciled(&path, &[(Role::Primary, 0), (Role::Secondary, 2)]).unwrap();
        record_reconciled(&path, &[(Role::Primary, 0), (Role::Secondary, 3)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in [
            "# TYPE etcdbr_reconciled_total counter",
            "etcdbr_reconciled_total{endpoint=\"secondary\"} 5",
            "etcdbr_reconciled_total{endpoint=\"primary\"} 0",
            "etcdbr_snapshot_uploaded_bytes{endpoint=\"primary\",kind=\"Full\"} 1234",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
