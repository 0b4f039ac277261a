//! Every flag, defined once: name, value, default, environment fallback,
//! help, and how it sets the low-level arguments. Store flags are defined
//! for the primary only; `--secondary-<name>` and `SECONDARY_<VAR>` are
//! generated from the same definition.
//!
//! Defaults are applied by running `set` on the `default` text, so the help
//! output and the behaviour cannot drift apart.

use super::lowargs::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Global,
    Etcd,
    /// Exists once per store endpoint.
    Store,
    Snapshot,
    Restore,
    List,
    /// Garbage collection: `snapshot` and `snapshot gc`.
    Gc,
    /// `snapshot gc` only.
    GcOnce,
}

impl Group {
    pub fn title(self) -> &'static str {
        match self {
            Group::Global => "General",
            Group::Etcd => "etcd connection",
            Group::Store => "store",
            Group::Snapshot => "Snapshot",
            Group::Restore => "Restore",
            Group::List => "Output",
            Group::Gc => "Garbage collection",
            Group::GcOnce => "One garbage collection",
        }
    }
}

pub struct Flag {
    pub name: &'static str,
    pub short: Option<char>,
    /// Placeholder of the value, or `None` for a switch (`--x`, `--x=false`).
    pub value: Option<&'static str>,
    pub default: Option<&'static str>,
    /// Environment variable read when the flag is not given.
    pub env: Option<&'static str>,
    pub group: Group,
    pub help: &'static str,
    pub set: fn(&mut LowArgs, Role, &str) -> Result<(), String>,
}

fn path(v: &str) -> Option<std::path::PathBuf> {
    Some(v.into()).filter(|p: &std::path::PathBuf| !p.as_os_str().is_empty())
}

fn text(v: &str) -> Option<String> {
    Some(v.to_string()).filter(|s| !s.is_empty())
}

pub static FLAGS: &[Flag] = &[
    // General
    Flag {
        name: "log-level",
        short: None,
        value: Some("LEVEL"),
        default: Some("info"),
        env: None,
        group: Group::Global,
        help: "Log level: error, warn, info, debug or trace.",
        set: |a, _, v| {
            a.log_level = Some(parse_level(v)?);
            Ok(())
        },
    },
    // etcd connection
    Flag {
        name: "endpoints",
        short: Some('e'),
        value: Some("URLS"),
        default: Some("http://127.0.0.1:2379"),
        env: None,
        group: Group::Etcd,
        help: "etcd client URLs, comma separated, tried in order; host:port without a scheme is allowed.",
        set: |a, _, v| {
            a.etcd.endpoints = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            if a.etcd.endpoints.is_empty() { Err("expected at least one endpoint".into()) } else { Ok(()) }
        },
    },
    Flag {
        name: "cacert",
        short: None,
        value: Some("FILE"),
        default: None,
        env: None,
        group: Group::Etcd,
        help: "CA bundle (PEM) that signed etcd's server certificate.",
        set: |a, _, v| {
            a.etcd.cacert = path(v);
            Ok(())
        },
    },
    Flag {
        name: "cert",
        short: None,
        value: Some("FILE"),
        default: None,
        env: None,
        group: Group::Etcd,
        help: "Client certificate (PEM) for etcd.",
        set: |a, _, v| {
            a.etcd.cert = path(v);
            Ok(())
        },
    },
    Flag {
        name: "key",
        short: None,
        value: Some("FILE"),
        default: None,
        env: None,
        group: Group::Etcd,
        help: "Client private key (PEM) for etcd.",
        set: |a, _, v| {
            a.etcd.key = path(v);
            Ok(())
        },
    },
    Flag {
        name: "insecure-transport",
        short: None,
        value: None,
        default: Some("true"),
        env: None,
        group: Group::Etcd,
        help: "Talk to scheme-less etcd endpoints in plain text unless a TLS file is given.",
        set: |a, _, v| {
            a.etcd.insecure_transport = parse_bool(v)?;
            Ok(())
        },
    },
    Flag {
        name: "insecure-skip-tls-verify",
        short: None,
        value: None,
        default: Some("false"),
        env: None,
        group: Group::Etcd,
        help: "Accept any etcd server certificate (unlike upstream, off by default).",
        set: |a, _, v| {
            a.etcd.insecure_skip_tls_verify = parse_bool(v)?;
            Ok(())
        },
    },
    Flag {
        name: "etcd-username",
        short: None,
        value: Some("NAME"),
        default: None,
        env: None,
        group: Group::Etcd,
        help: "etcd user name (with --etcd-password).",
        set: |a, _, v| {
            a.etcd.username = text(v);
            Ok(())
        },
    },
    Flag {
        name: "etcd-password",
        short: None,
        value: Some("PASSWORD"),
        default: None,
        env: None,
        group: Group::Etcd,
        help: "etcd password (with --etcd-username).",
        set: |a, _, v| {
            a.etcd.password = text(v);
            Ok(())
        },
    },
    Flag {
        name: "etcd-connection-timeout",
        short: None,
        value: Some("DURATION"),
        default: Some("30s"),
        env: None,
        group: Group::Etcd,
        help: "Time allowed to connect to one etcd endpoint.",
        set: |a, _, v| {
            a.etcd.connection_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    Flag {
        name: "etcd-snapshot-timeout",
        short: None,
        value: Some("DURATION"),
        default: Some("15m"),
        env: None,
        group: Group::Etcd,
        help: "Time allowed for streaming the whole snapshot from etcd.",
        set: |a, _, v| {
            a.etcd.snapshot_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    // Store (primary; the secondary variant is generated)
    Flag {
        name: "storage-provider",
        short: None,
        value: Some("PROVIDER"),
        default: None,
        env: None,
        group: Group::Store,
        help: "Storage provider: S3, or Local (files under the container directory, e.g. an NFS mount).",
        set: |a, r, v| {
            a.store(r).provider = text(v);
            Ok(())
        },
    },
    Flag {
        name: "store-container",
        short: None,
        value: Some("BUCKET"),
        default: None,
        env: Some("STORAGE_CONTAINER"),
        group: Group::Store,
        help: "Bucket that holds the snapshots (Local: an existing directory).",
        set: |a, r, v| {
            a.store(r).container = text(v);
            Ok(())
        },
    },
    Flag {
        name: "store-prefix",
        short: None,
        value: Some("PREFIX"),
        default: None,
        env: None,
        group: Group::Store,
        help: "Key prefix inside the bucket; objects are <prefix>/v2/<snapshot>.",
        set: |a, r, v| {
            a.store(r).prefix = v.trim_matches('/').to_string();
            Ok(())
        },
    },
    Flag {
        name: "store-endpoint-override",
        short: None,
        value: Some("URL"),
        default: None,
        env: None,
        group: Group::Store,
        help: "URL of an S3-compatible server instead of AWS.",
        set: |a, r, v| {
            a.store(r).endpoint_override = text(v);
            Ok(())
        },
    },
    Flag {
        name: "store-ca-file",
        short: None,
        value: Some("PATH"),
        default: None,
        env: Some("AWS_CA_BUNDLE"),
        group: Group::Store,
        help: "PEM file of the CAs to trust for this S3 endpoint's TLS (a private CA), in addition to trustedCaCert from the credentials; replaces the built-in roots.",
        set: |a, r, v| {
            a.store(r).ca_file = path(v);
            Ok(())
        },
    },
    Flag {
        name: "max-parallel-chunk-uploads",
        short: None,
        value: Some("N"),
        default: Some("5"),
        env: None,
        group: Group::Store,
        help: "Parts uploaded at the same time.",
        set: |a, r, v| {
            a.store(r).max_parallel_chunk_uploads = parse_positive(v)? as usize;
            Ok(())
        },
    },
    Flag {
        name: "min-chunk-size",
        short: None,
        value: Some("BYTES"),
        default: Some("5242880"),
        env: None,
        group: Group::Store,
        help: "Size of one uploaded part (at least 5 MiB; grows to keep under 10,000 parts).",
        set: |a, r, v| {
            let n = parse_bytes(v)?;
            if n < MIN_PART_SIZE {
                return Err(format!("must be at least {MIN_PART_SIZE} (5 MiB, the S3 minimum part size)"));
            }
            a.store(r).min_chunk_size = n;
            Ok(())
        },
    },
    Flag {
        name: "chunk-upload-timeout",
        short: None,
        value: Some("DURATION"),
        default: Some("3m"),
        env: None,
        group: Group::Store,
        help: "Time allowed for one request, a part upload included.",
        set: |a, r, v| {
            a.store(r).chunk_upload_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    Flag {
        name: "chunk-upload-attempts",
        short: None,
        value: Some("N"),
        default: Some("6"),
        env: None,
        group: Group::Store,
        help: "Tries per request before the endpoint is given up.",
        set: |a, r, v| {
            a.store(r).chunk_upload_attempts = parse_positive(v)?.min(100) as u32;
            Ok(())
        },
    },
    Flag {
        name: "chunk-upload-backoff",
        short: None,
        value: Some("DURATION"),
        default: Some("1s"),
        env: None,
        group: Group::Store,
        help: "Wait before the first retry; doubled for each next one, up to 16 times this.",
        set: |a, r, v| {
            a.store(r).chunk_upload_backoff = parse_duration(v)?;
            Ok(())
        },
    },
    // Snapshot
    Flag {
        name: "once",
        short: None,
        value: None,
        default: Some("false"),
        env: None,
        group: Group::Snapshot,
        help: "Take one full snapshot and exit, instead of running on --schedule with delta snapshots.",
        set: |a, _, v| {
            a.once = parse_bool(v)?;
            Ok(())
        },
    },
    Flag {
        name: "compress-snapshots",
        short: None,
        value: None,
        default: Some("true"),
        env: None,
        group: Group::Snapshot,
        help: "Compress snapshots before storing them (as upstream does by default); =false stores etcd's bytes as they are.",
        set: |a, _, v| {
            a.compress = parse_bool(v)?;
            Ok(())
        },
    },
    Flag {
        name: "compression-policy",
        short: None,
        value: Some("POLICY"),
        default: Some("gzip"),
        env: None,
        group: Group::Snapshot,
        help: "gzip (.gz) or zlib (.zlib), compressed on every core; lzw (.Z, Go's LZW); or zstd (.zst, multithreaded; upstream cannot read it).",
        set: |a, _, v| {
            a.compression_policy = crate::compression::Policy::parse(v)?;
            Ok(())
        },
    },
    Flag {
        name: "require-all-endpoints",
        short: None,
        value: None,
        default: Some("false"),
        env: None,
        group: Group::Snapshot,
        help: "Exit 3 when the snapshot reached only one of two endpoints.",
        set: |a, _, v| {
            a.require_all_endpoints = parse_bool(v)?;
            Ok(())
        },
    },
    Flag {
        name: "metrics-file",
        short: None,
        value: Some("PATH"),
        default: None,
        env: None,
        group: Group::Snapshot,
        help: "After every snapshot, write per-endpoint metrics here for node_exporter's textfile collector (Prometheus text, replaced atomically; name it *.prom).",
        set: |a, _, v| {
            a.metrics_file = path(v);
            Ok(())
        },
    },
    Flag {
        name: "schedule",
        short: Some('s'),
        value: Some("CRON"),
        default: Some("0 */1 * * *"),
        env: None,
        group: Group::Snapshot,
        help: "When to take full snapshots without --once: 5-field cron in UTC, or @hourly, @daily, @every 30m.",
        set: |a, _, v| {
            crate::cron::Schedule::parse(v)?;
            a.schedule = v.to_string();
            Ok(())
        },
    },
    Flag {
        name: "delta-snapshot-period",
        short: None,
        value: Some("DURATION"),
        default: Some("20s"),
        env: None,
        group: Group::Snapshot,
        help: "Save the changes watched since the last snapshot this often, as a delta snapshot; below 1s turns delta snapshots off.",
        set: |a, _, v| {
            a.delta_period = parse_duration(v)?;
            Ok(())
        },
    },
    Flag {
        name: "delta-snapshot-memory-limit",
        short: None,
        value: Some("BYTES"),
        default: Some("10485760"),
        env: None,
        group: Group::Snapshot,
        help: "Save a delta snapshot early when the watched changes reach this size in memory; 0 means the default.",
        set: |a, _, v| {
            a.delta_memory_limit = parse_bytes(v)?;
            Ok(())
        },
    },
    Flag {
        name: "garbage-collection-period",
        short: None,
        value: Some("DURATION"),
        default: Some("1m"),
        env: None,
        group: Group::Gc,
        help: "Delete old snapshots on each endpoint this often; 1s or less turns garbage collection off.",
        set: |a, _, v| {
            a.gc_period = parse_duration(v)?;
            Ok(())
        },
    },
    Flag {
        name: "garbage-collection-policy",
        short: None,
        value: Some("POLICY"),
        default: Some("Exponential"),
        env: None,
        group: Group::Gc,
        help: "Exponential (hourly for a day, daily for a week, weekly for 4 weeks) or LimitBased (the newest --max-backups full snapshots).",
        set: |a, _, v| match v {
            "Exponential" | "LimitBased" => {
                a.gc_policy = v.to_string();
                Ok(())
            }
            _ => Err("expected Exponential or LimitBased".into()),
        },
    },
    Flag {
        name: "max-backups",
        short: Some('m'),
        value: Some("N"),
        default: Some("7"),
        env: None,
        group: Group::Gc,
        help: "Full snapshots kept by the LimitBased policy.",
        set: |a, _, v| {
            a.max_backups = v.parse().map_err(|_| "expected a whole number".to_string())?;
            Ok(())
        },
    },
    Flag {
        name: "delta-snapshot-retention-period",
        short: None,
        value: Some("DURATION"),
        default: Some("0"),
        env: None,
        group: Group::Gc,
        help: "Keep delta snapshots of older full snapshots for this long (0: delete them with the garbage collection).",
        set: |a, _, v| {
            a.delta_retention = parse_duration(v)?;
            Ok(())
        },
    },
    Flag {
        name: "dry-run",
        short: None,
        value: None,
        default: Some("false"),
        env: None,
        group: Group::GcOnce,
        help: "Print what would be deleted, delete nothing.",
        set: |a, _, v| {
            a.dry_run = parse_bool(v)?;
            Ok(())
        },
    },
    // Restore
    Flag {
        name: "data-dir",
        short: Some('d'),
        value: Some("DIR"),
        default: Some("default.etcd"),
        env: None,
        group: Group::Restore,
        help: "etcd data directory to create; must not exist or be empty.",
        set: |a, _, v| {
            a.restore.data_dir = v.into();
            Ok(())
        },
    },
    Flag {
        name: "name",
        short: None,
        value: Some("NAME"),
        default: Some("default"),
        env: None,
        group: Group::Restore,
        help: "Member name of the restored etcd (its entry in --initial-cluster).",
        set: |a, _, v| {
            a.restore.name = v.to_string();
            Ok(())
        },
    },
    Flag {
        name: "initial-cluster",
        short: None,
        value: Some("NAME=URL,..."),
        default: Some("default=http://localhost:2380"),
        env: None,
        group: Group::Restore,
        help: "Every member of the restored cluster with its peer URLs.",
        set: |a, _, v| {
            a.restore.initial_cluster = v.to_string();
            Ok(())
        },
    },
    Flag {
        name: "initial-cluster-token",
        short: None,
        value: Some("TOKEN"),
        default: Some("etcd-cluster"),
        env: None,
        group: Group::Restore,
        help: "Cluster token; member and cluster IDs are derived from it.",
        set: |a, _, v| {
            a.restore.initial_cluster_token = v.to_string();
            Ok(())
        },
    },
    Flag {
        name: "initial-advertise-peer-urls",
        short: None,
        value: Some("URLS"),
        default: Some("http://localhost:2380"),
        env: None,
        group: Group::Restore,
        help: "Peer URLs of this member, comma separated; must match its --initial-cluster entry.",
        set: |a, _, v| {
            a.restore.initial_advertise_peer_urls = v.split(',').map(|u| u.trim().to_string()).collect();
            Ok(())
        },
    },
    Flag {
        name: "skip-hash-check",
        short: None,
        value: None,
        default: Some("false"),
        env: None,
        group: Group::Restore,
        help: "Do not verify the snapshot's SHA-256 trailer (for a db copied out of a data directory).",
        set: |a, _, v| {
            a.restore.skip_hash_check = parse_bool(v)?;
            Ok(())
        },
    },
    Flag {
        name: "bump-revision",
        short: None,
        value: Some("N"),
        default: Some("0"),
        env: None,
        group: Group::Restore,
        help: "Add N to the restored revision (with --mark-compacted), so watchers see a compaction.",
        set: |a, _, v| {
            a.restore.bump_revision = v.parse().map_err(|_| "expected a whole number".to_string())?;
            Ok(())
        },
    },
    Flag {
        name: "mark-compacted",
        short: None,
        value: None,
        default: Some("false"),
        env: None,
        group: Group::Restore,
        help: "Mark the bumped revision as compacted (with --bump-revision).",
        set: |a, _, v| {
            a.restore.mark_compacted = parse_bool(v)?;
            Ok(())
        },
    },
    Flag {
        name: "snapshot",
        short: None,
        value: Some("NAME"),
        default: None,
        env: None,
        group: Group::Restore,
        help: "Restore up to this snapshot: a full snapshot alone, or a delta snapshot with the full snapshot and deltas before it.",
        set: |a, _, v| {
            a.restore.snapshot = Some(v.to_string()).filter(|s| !s.is_empty());
            Ok(())
        },
    },
    // snapshot list
    Flag {
        name: "output",
        short: Some('o'),
        value: Some("FORMAT"),
        default: Some("text"),
        env: None,
        group: Group::List,
        help: "text (one line per snapshot) or json.",
        set: |a, _, v| {
            a.json = match v {
                "text" => false,
                "json" => true,
                _ => return Err("expected text or json".into()),
            };
            Ok(())
        },
    },
];

/// S3's smallest part but the last.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
