//! Low-level arguments: what the command line (and the few environment
//! fallbacks) said, typed but not yet combined or checked against each other.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::endpoint::Role;

#[derive(Debug, Default)]
pub struct LowArgs {
    pub log_level: Option<log::LevelFilter>,
    pub max_endpoint_lag: Duration,
    /// Checked against itself in `hiargs::etcd`, then used as it is.
    pub etcd: crate::etcd::EtcdConfig,
    /// By [`Role`]: the primary, the secondary, `copy`'s source.
    pub stores: [StoreArgs; 3],
    pub once: bool,
    pub compress: bool,
    pub compression_policy: crate::compression::Policy,
    pub require_all_endpoints: bool,
    /// `--encrypt-to`, in order; checked in `hiargs`.
    pub encrypt_to: Vec<String>,
    pub encrypt_to_file: Option<PathBuf>,
    /// `--identity-file` or `EBR_AGE_IDENTITY_FILE`.
    pub identity_file: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
    pub schedule: String,
    pub delta_period: Duration,
    /// `--backoff-*`: the long-running snapshot's retry waits.
    pub backoff: crate::continuous::Backoff,
    pub delta_memory_limit: u64,
    pub gc_period: Duration,
    /// `Exponential` or `LimitBased`, checked when set.
    pub gc_policy: String,
    pub max_backups: u64,
    pub delta_retention: Duration,
    pub dry_run: bool,
    /// Every restore setting but the bump, which needs both flags below.
    pub restore: crate::restore::Options,
    pub bump_revision: u64,
    pub mark_compacted: bool,
    /// `snapshot list`/`snapshot verify --output json`.
    pub json: bool,
    /// `snapshot list --all-versions`.
    pub all_versions: bool,
    /// `snapshot verify --all`.
    pub all: bool,
    /// `snapshot verify --deep`, and the scheduled verify of `snapshot`.
    pub deep: bool,
    /// Empty: no scheduled verify.
    pub verify_schedule: String,
    /// `copy`'s own flags.
    pub copy: CopyArgs,
    /// `--defragmentation-schedule`; empty: never.
    pub defrag_schedule: String,
    pub defrag_timeout: Duration,
    /// `--service-endpoints`; empty: `--endpoints`.
    pub service_endpoints: Vec<String>,
    /// One line per flag given that has no effect in this command, and why:
    /// logged as INFO once logging is set up.
    pub notes: Vec<String>,
    /// `server`'s HTTP API.
    pub server: ServerArgs,
    /// Secondary store flags given on the command line, by flag name, to
    /// refuse them when `--secondary-storage-provider` is missing.
    pub secondary_flags_given: Vec<String>,
}

impl LowArgs {
    pub fn store(&mut self, role: Role) -> &mut StoreArgs {
        &mut self.stores[role as usize]
    }
}

/// `server`: where and how the HTTP API listens.
#[derive(Debug, Default)]
pub struct ServerArgs {
    pub port: u16,
    pub address: String,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `copy`: upstream's copier options (`None` stands for its -1).
#[derive(Debug, Default)]
pub struct CopyArgs {
    pub max_backups: Option<u64>,
    pub max_age_days: Option<u64>,
    pub parallel: usize,
    pub wait_for_final: bool,
    pub wait_timeout: Duration,
}

#[derive(Debug, Default, Clone)]
pub struct StoreArgs {
    pub provider: Option<String>,
    pub container: Option<String>,
    pub prefix: String,
    pub endpoint_override: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub max_parallel_chunk_uploads: usize,
    pub min_chunk_size: u64,
    pub chunk_upload_timeout: Duration,
    pub chunk_upload_attempts: u32,
    pub chunk_upload_backoff: Duration,
    pub temp_dir: PathBuf,
    pub object_lock_mode: Option<String>,
    pub object_lock_retention: Option<Duration>,
    pub sse_kms_key_id: Option<String>,
    pub storage_class: Option<String>,
}

/// Go's `strconv.ParseBool`, which upstream's flags accept.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// Go-style durations as upstream takes them: `30s`, `15m`, `1h30m`, `500ms`
/// ([`crate::time::parse_duration`], with the flags' own message).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    crate::time::parse_duration(v).map_err(|_| "expected a duration such as 30s, 15m or 1h30m".to_string())
}

/// A byte count: a plain number, or one with a `Ki`/`Mi`/`Gi` suffix.
pub fn parse_bytes(v: &str) -> Result<u64, String> {
    let (num, mult) = match v {
        _ if v.ends_with("Ki") => (&v[..v.len() - 2], 1u64 << 10),
        _ if v.ends_with("Mi") => (&v[..v.len() - 2], 1 << 20),
        _ if v.ends_with("Gi") => (&v[..v.len() - 2], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| "expected a number of bytes, e.g. 5242880 or 5Mi".into())
}

pub fn parse_positive(v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number greater than 0".into()),
    }
}

/// A level name, or upstream's logrus number: 0 panic, 1 fatal and 2 error
/// all log errors here, as there is no level above error.
pub fn parse_level(v: &str) -> Result<log::LevelFilter, String> {
    match v.to_ascii_lowercase().as_str() {
        "error" | "0" | "1" | "2" => Ok(log::LevelFilter::Error),
        "warn" | "warning" | "3" => Ok(log::LevelFilter::Warn),
        "info" | "4" => Ok(log::LevelFilter::Info),
        "debug" | "5" => Ok(log::LevelFilter::Debug),
        "trace" | "6" => Ok(log::LevelFilter::Trace),
        _ => Err("expected error, warn, info, debug or trace, or a number from 0 to 6".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_go() {
        for (s, ms) in
            [("30s", 30_000), ("15m", 900_000), ("1h30m", 5_400_000), ("500ms", 500), ("1.5s", 1500), ("0", 0)]
        {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms), "{s}");
        }
        for s in ["", "30", "s", "10x", "1h-5m", "-1s"] {
            assert!(parse_duration(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn bytes_and_counts() {
        assert_eq!(parse_bytes("5242880").unwrap(), 5 << 20);
        assert_eq!(parse_bytes("64Mi").unwrap(), 64 << 20);
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("5MB").is_err());
        assert!(parse_bytes("99999999999Gi").is_err());
        assert!(parse_positive("0").is_err());
        assert_eq!(parse_positive("3").unwrap(), 3);
    }

    #[test]
    fn bools_like_go() {
        assert!(parse_bool("True").unwrap());
        assert!(!parse_bool("0").unwrap());
        assert!(parse_bool("yes").is_err());
    }
}
