//! The metrics model: after every snapshot, the outcome per endpoint, kept
//! in memory and rendered as Prometheus text, both for `--metrics-file`
//! (node_exporter's textfile collector; written to a temporary file and
//! renamed, so the collector never reads half a file) and for the server's
//! `/metrics`. Counters and the last success survive failed runs and
//! restarts: the previous file is read back first.

use crate::endpoint::Role;
use crate::snapshot::{Kind, SnapshotName};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// A metric sample's identity: name and rendered labels.
type Series = (String, String);

/// The one in-memory metrics model of a process: every record lands here
/// first; `--metrics-file` is a rendering of it written after each change,
/// and the server's `/metrics` renders the same samples. Counters and the
/// last success survive restarts through the file, read back once.
#[derive(Debug, Default)]
pub struct Model {
    path: Option<PathBuf>,
    /// `None` until the file (if any) was read back.
    samples: Mutex<Option<BTreeMap<Series, f64>>>,
    /// One file write at a time, in the order the samples changed; held
    /// across the write, while `samples` is held only to update and render,
    /// so readers of the model never wait for the disk.
    file: Mutex<()>,
}

impl Model {
    pub fn new(path: Option<PathBuf>) -> Model {
        Model { path, ..Model::default() }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Read the metrics file back (once), so counters go on from where the
    /// last run left them. Also done by the first record.
    pub fn load(&self) -> std::io::Result<()> {
        if self.samples.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Ok(());
        }
        let read = match &self.path {
            Some(path) => read(path),
            None => Ok(BTreeMap::new()),
        };
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.is_none() {
            // A file that cannot be read starts the counters afresh.
            *samples = Some(read.as_ref().cloned().unwrap_or_default());
        }
        read.map(|_| ())
    }

    /// The current samples in Prometheus text (nothing before the first
    /// record or `load`).
    pub fn render(&self) -> String {
        render(self.samples.lock().unwrap_or_else(|p| p.into_inner()).as_ref().unwrap_or(&BTreeMap::new()))
    }

    /// Apply `change` to the samples and write the file, if any.
    fn update(&self, change: impl FnOnce(&mut BTreeMap<Series, f64>)) -> std::io::Result<()> {
        let _one = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = self.load();
        let text = {
            let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            let samples = samples.get_or_insert_with(BTreeMap::new);
            change(samples);
            render(samples)
        };
        match &self.path {
            Some(path) => loaded.and_then(|()| write_atomically(path, &text)),
            None => Ok(()),
        }
    }

    /// Record one attempt: whether each endpoint stored it, and the snapshot
    /// (with the bytes stored) when one was taken.
    pub fn record(
        &self,
        stored: &[(Role, bool)],
        kind: Kind,
        snapshot: Option<&(SnapshotName, u64)>,
        duration_secs: f64,
        now: u64,
    ) -> std::io::Result<()> {
        self.update(|samples| {
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
                        *samples.entry(("etcdbr_snapshot_failures_total".into(), by_kind.clone())).or_insert(0.0) +=
                            1.0;
                    }
                }
            }
        })
    }

    /// Add the snapshots reconcile copied to each endpoint to its counter.
    pub fn record_reconciled(&self, copied: &[(Role, u64)]) -> std::io::Result<()> {
        self.update(|samples| {
            for &(role, n) in copied {
                let series = ("etcdbr_reconciled_total".to_string(), format!("endpoint=\"{}\"", role.name()));
                *samples.entry(series).or_insert(0.0) += n as f64;
            }
        })
    }

    /// Record how long each member's defragmentation took.
    pub fn record_defragmented(&self, members: &[(String, f64)]) -> std::io::Result<()> {
        self.update(|samples| {
            for (member, secs) in members {
                // A member name is etcd's `--name`: escaped as Prometheus label values are.
                let label = member.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                samples
                    .insert(("etcdbr_defragmentation_duration_seconds".into(), format!("member=\"{label}\"")), *secs);
            }
        })
    }

    /// Record one verify: per endpoint, the revision it alone restores to
    /// (kept from the last verify that found one) and whether it verified.
    pub fn record_verified(&self, verified: &[(Role, Option<u64>, bool)], now: u64) -> std::io::Result<()> {
        self.update(|samples| {
            for &(role, revision, ok) in verified {
                let ep = format!("endpoint=\"{}\"", role.name());
                let mut set = |metric: &str, v: f64| samples.insert((metric.to_string(), ep.clone()), v);
                if let Some(r) = revision {
                    set("etcdbr_verified_revision", r as f64);
                }
                set("etcdbr_verify_success", if ok { 1.0 } else { 0.0 });
                set("etcdbr_verify_timestamp_seconds", now as f64);
            }
        })
    }
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

/// The process metrics Prometheus clients export, from /proc/self: CPU
/// time, resident memory, open file descriptors and start time. Empty when
/// /proc is not there.
pub fn process_metrics() -> String {
    // SAFETY: sysconf with constant, valid names.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return String::new() };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    // utime, stime, starttime and rss are fields 14, 15, 22 and 24 (1-based, in proc(5)).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let ticks = ticks.max(1) as f64;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok()))
        .unwrap_or(0.0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let mut out = String::new();
    for (name, help, kind, value) in [
        (
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
            (field(14) + field(15)) / ticks,
        ),
        ("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge", field(24) * page.max(1) as f64),
        ("process_open_fds", "Number of open file descriptors.", "gauge", fds as f64),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "gauge",
            boot + field(22) / ticks,
        ),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    }
    out
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
        let m = Model::new(Some(path.clone()));
        m.record(&stored(true), Kind::Full, Some(&taken), 1.5, 1_700_000_001).unwrap();
        m.record(&stored(false), Kind::Full, Some(&taken), 2.5, 1_700_000_100).unwrap();
        m.record(&none, Kind::Full, None, 0.1, 1_700_000_200).unwrap();
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
    fn process_metrics_come_from_proc() {
        let text = process_metrics();
        let value = |name: &str| -> f64 {
            let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{text}"));
            line.rsplit_once(' ').unwrap().1.parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6, "{text}");
        assert!(value("process_open_fds") >= 3.0, "{text}");
        let start = value("process_start_time_seconds");
        let now = crate::time::unix_now() as f64;
        assert!(start > now - 3600.0 && start <= now + 1.0, "{start} vs {now}");
    }

    #[test]
    fn reconciled_copies_count_up_beside_the_snapshot_metrics() {
        let dir = crate::test_scratch::dir("metrics-reconciled");
        let path = dir.join("etcdbr.prom");
        let taken = (SnapshotName::parse("Full-00000000-00000042-1700000000.gz").unwrap(), 1234);
        Model::new(Some(path.clone())).record(&stored(true), Kind::Full, Some(&taken), 1.5, 1_700_000_001).unwrap();
        // A new process reads the counters back from the file.
        let m = Model::new(Some(path.clone()));
        m.record_reconciled(&[(Role::Primary, 0), (Role::Secondary, 2)]).unwrap();
        m.record_reconciled(&[(Role::Primary, 0), (Role::Secondary, 3)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(m.render(), text, "the file is the model rendered");
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
