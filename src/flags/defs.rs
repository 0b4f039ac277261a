//! Every flag, defined once: name, value, default, environment fallback,
//! help, the commands that use it, and how it sets the low-level arguments.
//! Store flags are defined for the primary only; `--secondary-<name>` and
//! `SECONDARY_<VAR>` (and, for `copy`, `--source-<name>` and `SOURCE_<VAR>`)
//! are generated from the same definition.
//!
//! Defaults are applied by running `set` on the `default` text, so the help
//! output and the behaviour cannot drift apart. A definition states only what
//! differs from its group's template (`ETCD`, `STORE`, ...), which in turn
//! differs from `Flag::DEFAULT`.

use super::lowargs::*;
use super::parse::Command::{self, Copy, Gc, List, Reconcile, Restore, Server, Snapshot, Verify};

/// A help section. Sections are shown in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Global,
    Etcd,
    /// Exists once per store endpoint.
    Store,
    Snapshot,
    /// Garbage collection: `snapshot` and `snapshot gc`.
    Gc,
    /// `snapshot gc` and `snapshot reconcile`: one cycle, now.
    GcOnce,
    Restore,
    /// Which snapshots: `restore` and `snapshot verify`.
    Choice,
    List,
    /// `copy`: which snapshots, how many at once, waiting for the final one.
    Copy,
    /// Upstream's flags that mean nothing here: accepted, each with one INFO
    /// line saying why (`Flag::no_effect`), and listed in no help section.
    Upstream,
    /// `server`: its HTTP API.
    Server,
}

impl Group {
    pub const ALL: [Group; 12] = [
        Group::Global,
        Group::Etcd,
        Group::Store,
        Group::Snapshot,
        Group::Gc,
        Group::GcOnce,
        Group::Restore,
        Group::Choice,
        Group::List,
        Group::Copy,
        Group::Upstream,
        Group::Server,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Group::Global => "General",
            Group::Etcd => "etcd connection",
            Group::Store => "store",
            Group::Snapshot => "Snapshot",
            Group::Restore => "Restore",
            Group::Choice => "Which snapshots",
            Group::List => "Output",
            Group::Gc => "Garbage collection",
            Group::GcOnce => "One cycle",
            Group::Copy => "Copy",
            Group::Upstream => "Upstream flags without effect here",
            Group::Server => "HTTP API",
        }
    }

    /// The endpoints a flag of this group exists for in `command`: store
    /// flags for both backup endpoints, and in `copy` for its source too.
    pub fn roles(self, command: Command) -> &'static [Role] {
        match (self, command) {
            (Group::Store, Copy) => &[Role::Source, Role::Primary, Role::Secondary],
            (Group::Store, _) => &[Role::Primary, Role::Secondary],
            _ => &[Role::Primary],
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
    /// The commands that read the flag; `<command> --help` lists only these.
    pub uses: &'static [Command],
    /// Commands that accept the flag but ignore it: upstream's `restore`
    /// takes every snapstore flag, and `snapshot list`/`snapshot gc` always
    /// took every store and garbage collection flag.
    pub ignored_by: &'static [Command],
    pub help: &'static str,
    /// Why the flag does nothing in the commands of `ignored_by`, for the
    /// one INFO line logged at start when it is given to one of them.
    /// `None`: ignored silently (upstream's `restore` takes every upload flag).
    pub no_effect: Option<&'static str>,
    pub set: fn(&mut LowArgs, Role, &str) -> Result<(), String>,
}

impl Flag {
    /// A switch of every command. `set` fails, so a definition that forgets
    /// its own is caught by the `every_flag_sets_something` test.
    pub const DEFAULT: Flag = Flag {
        name: "",
        short: None,
        value: None,
        default: None,
        env: None,
        group: Group::Global,
        uses: ALL,
        ignored_by: &[],
        help: "",
        no_effect: None,
        set: |_, _, _| Err("the flag has no `set` in defs.rs".into()),
    };

    /// Whether `command` takes the flag on its command line. `server` is
    /// `snapshot` with an HTTP API: it takes every flag `snapshot` takes.
    pub fn accepted_by(&self, command: Command) -> bool {
        self.uses.contains(&command)
            || self.ignored_by.contains(&command)
            || (command == Server && self.accepted_by(Snapshot))
    }

    /// Whether `command` reads the flag (`server` every one `snapshot` reads).
    pub fn uses(&self, command: Command) -> bool {
        self.uses.contains(&command) || (command == Server && self.uses.contains(&Snapshot))
    }

    /// Whether `command` reads the flag of endpoint `role`. The copy source
    /// is only read, as `restore` reads its endpoints: it uses the store
    /// flags `restore` uses, and takes (and ignores) the upload flags, as
    /// upstream's `copy` takes `--source-min-chunk-size`.
    pub fn used_for(&self, command: Command, role: Role) -> bool {
        match role {
            Role::Source => command == Copy && self.group == Group::Store && self.uses.contains(&Restore),
            _ => self.uses(command),
        }
    }

    /// Whether `command` takes the flag of endpoint `role` on its command line.
    pub fn accepted_for(&self, command: Command, role: Role) -> bool {
        match role {
            Role::Source => command == Copy && self.group == Group::Store && self.accepted_by(Restore),
            _ => self.accepted_by(command),
        }
    }
}

/// In the order the README lists commands.
pub const ALL: &[Command] = &[Snapshot, Server, List, Gc, Reconcile, Verify, Restore, Copy];
/// Every command but `copy`, which reads one source and writes its
/// destinations one after another, with no endpoint waiting for another.
const BACKUP_COMMANDS: &[Command] = &[Snapshot, List, Gc, Reconcile, Verify, Restore];

const ETCD: Flag = Flag { group: Group::Etcd, uses: &[Snapshot], ..Flag::DEFAULT };
const STORE: Flag = Flag { group: Group::Store, ..Flag::DEFAULT };
/// Flags of the upload path (reconcile's and copy's copies too); the other
/// commands only list, fetch and delete.
const UPLOAD: Flag = Flag { uses: &[Snapshot, Reconcile, Copy], ignored_by: &[Restore, List, Gc, Verify], ..STORE };
/// Object lock: the writers, and garbage collection, which deletes object
/// versions instead of hiding objects behind delete markers.
const LOCK: Flag = Flag {
    uses: &[Snapshot, Reconcile, Copy, Gc],
    ignored_by: &[Restore, List, Verify],
    no_effect: Some("only the commands that write or delete snapshots use object lock"),
    ..STORE
};
const COPY: Flag = Flag { group: Group::Copy, uses: &[Copy], ..Flag::DEFAULT };
const SNAPSHOT: Flag = Flag { group: Group::Snapshot, uses: &[Snapshot], ..Flag::DEFAULT };
/// Reconcile copies exactly what garbage collection keeps, so it takes the policy.
const GC: Flag = Flag { group: Group::Gc, uses: &[Snapshot, Gc, Reconcile], ..Flag::DEFAULT };
const RESTORE: Flag = Flag { group: Group::Restore, uses: &[Restore], ..Flag::DEFAULT };
/// Restore flags upstream's `server` (and so its Helm chart) passes to the
/// process that also takes the snapshots.
const RESTORE_ALSO_SNAPSHOT: Flag =
    Flag { ignored_by: &[Snapshot], no_effect: Some("only restore writes a data directory"), ..RESTORE };
/// Upstream's flags without meaning here, for `snapshot` (whose long-running
/// form is upstream's `server`) and `restore`.
const UPSTREAM: Flag = Flag { group: Group::Upstream, uses: &[], ignored_by: &[Snapshot, Restore], ..Flag::DEFAULT };
/// Restore's embedded etcd, which applying delta snapshots natively needs not.
const EMBEDDED_ETCD: Option<&str> =
    Some("restore applies delta snapshots natively, without an embedded etcd (and snapshot does not restore)");
const OWNER_CHECK: Option<&str> = Some("there is no owner check here");
const VALIDATION: Option<&str> = Some("there is no data directory validation (upstream's initialize) here");
const LEADER_ELECTION: Option<&str> =
    Some("snapshots are taken from whichever --endpoints answers; there is no leader election here");
const SECONDARY_SYNC: Option<&str> =
    Some("every snapshot goes to both endpoints as it is taken, and reconcile copies what one lacks");
const K8S: Option<&str> = Some("there are no Kubernetes leases, member garbage collection or leader election here");

fn ignore_bool(v: &str) -> Result<(), String> {
    parse_bool(v).map(drop)
}

fn ignore_duration(v: &str) -> Result<(), String> {
    parse_duration(v).map(drop)
}

fn ignore_whole(v: &str) -> Result<(), String> {
    whole(v).map(drop)
}
const SERVER: Flag = Flag { group: Group::Server, uses: &[Server], ..Flag::DEFAULT };

fn path(v: &str) -> Result<Option<std::path::PathBuf>, String> {
    Ok(Some(v.into()).filter(|p: &std::path::PathBuf| !p.as_os_str().is_empty()))
}

fn text(v: &str) -> Result<Option<String>, String> {
    Ok(Some(v.to_string()).filter(|s| !s.is_empty()))
}

fn whole(v: &str) -> Result<u64, String> {
    v.parse().map_err(|_| "expected a whole number".to_string())
}

/// A count from 1 to `max`: the upper bound keeps a typo from becoming an
/// allocation or thread count that aborts the process.
fn count(v: &str, max: u64) -> Result<u64, String> {
    match parse_positive(v)? {
        n if n > max => Err(format!("must be at most {max}")),
        n => Ok(n),
    }
}

/// A timeout: zero would fail every attempt at once.
fn timeout(v: &str) -> Result<std::time::Duration, String> {
    match parse_duration(v)? {
        d if d.is_zero() => Err("must be greater than 0".into()),
        d => Ok(d),
    }
}

/// At most this many S3 parts in flight per endpoint; each holds a part
/// buffer of --min-chunk-size or more.
pub const MAX_PARALLEL_CHUNK_UPLOADS: u64 = 64;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// Tries per request.
pub const MAX_ATTEMPTS: u64 = 100;
/// The longest first retry wait; doubled up to 16 times, that is 16 hours.
pub const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(3600);

pub static FLAGS: &[Flag] = &[
    Flag {
        name: "log-level",
        value: Some("LEVEL"),
        default: Some("info"),
        help: "Log level: error, warn, info, debug or trace; or upstream's logrus number (0-2 error, 3 warn, 4 info, \
               5 debug, 6 trace).",
        set: |a, _, v| parse_level(v).map(|l| a.log_level = Some(l)),
        ..Flag::DEFAULT
    },
    Flag {
        name: "max-endpoint-lag",
        value: Some("DURATION"),
        default: Some("10s"),
        help: "How long one store endpoint may hold back the other: once one endpoint has stored a snapshot \
               (or listed, or taken its part of the stream), the other gets this much longer before it is detached \
               from that snapshot; its copy comes later. Restore prefers the primary among the endpoints that \
               answered within it.",
        set: |a, _, v| match parse_duration(v)? {
            d if d.is_zero() => Err("must be greater than 0".into()),
            d => {
                a.max_endpoint_lag = d;
                Ok(())
            }
        },
        uses: BACKUP_COMMANDS,
        ..Flag::DEFAULT
    },
    // etcd connection
    Flag {
        name: "endpoints",
        short: Some('e'),
        value: Some("URLS"),
        default: Some("http://127.0.0.1:2379"),
        help: "etcd client URLs, comma separated, tried in order; host:port without a scheme is allowed.",
        set: |a, _, v| {
            a.etcd.endpoints = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            if a.etcd.endpoints.is_empty() {
                return Err("expected at least one endpoint".into());
            }
            a.etcd.endpoints.iter().try_for_each(|e| crate::etcd::check_endpoint(e))
        },
        ..ETCD
    },
    Flag {
        name: "cacert",
        value: Some("FILE"),
        help: "CA bundle (PEM) that signed etcd's server certificate.",
        set: |a, _, v| path(v).map(|p| a.etcd.ca_file = p),
        ..ETCD
    },
    Flag {
        name: "cert",
        value: Some("FILE"),
        help: "Client certificate (PEM) for etcd.",
        set: |a, _, v| path(v).map(|p| a.etcd.cert_file = p),
        ..ETCD
    },
    Flag {
        name: "key",
        value: Some("FILE"),
        help: "Client private key (PEM) for etcd.",
        set: |a, _, v| path(v).map(|p| a.etcd.key_file = p),
        ..ETCD
    },
    Flag {
        name: "insecure-transport",
        default: Some("true"),
        help: "Talk to scheme-less etcd endpoints in plain text unless a TLS file is given.",
        set: |a, _, v| parse_bool(v).map(|b| a.etcd.insecure_transport = b),
        ..ETCD
    },
    Flag {
        name: "insecure-skip-tls-verify",
        default: Some("false"),
        help: "Accept any etcd server certificate (unlike upstream, off by default).",
        set: |a, _, v| parse_bool(v).map(|b| a.etcd.insecure_skip_tls_verify = b),
        ..ETCD
    },
    Flag {
        name: "etcd-username",
        value: Some("NAME"),
        help: "etcd user name (with --etcd-password).",
        set: |a, _, v| text(v).map(|t| a.etcd.username = t),
        ..ETCD
    },
    Flag {
        name: "etcd-password",
        value: Some("PASSWORD"),
        help: "etcd password (with --etcd-username).",
        set: |a, _, v| text(v).map(|t| a.etcd.password = t),
        ..ETCD
    },
    Flag {
        name: "etcd-connection-timeout",
        value: Some("DURATION"),
        default: Some("30s"),
        help: "Time allowed to connect to one etcd endpoint.",
        set: |a, _, v| timeout(v).map(|d| a.etcd.connection_timeout = d),
        ..ETCD
    },
    Flag {
        name: "etcd-snapshot-timeout",
        value: Some("DURATION"),
        default: Some("15m"),
        help: "Time allowed for streaming the whole snapshot from etcd.",
        set: |a, _, v| timeout(v).map(|d| a.etcd.snapshot_timeout = d),
        ..ETCD
    },
    Flag {
        name: "etcd-defrag-timeout",
        value: Some("DURATION"),
        default: Some("8m"),
        help: "Time allowed for defragmenting one etcd member (--defragmentation-schedule).",
        set: |a, _, v| timeout(v).map(|d| a.defrag_timeout = d),
        ..ETCD
    },
    Flag {
        name: "service-endpoints",
        value: Some("URLS"),
        help: "etcd client URLs that reach any member (a Kubernetes service), comma separated: the defragmentation \
               asks them for the member list. Empty: --endpoints.",
        set: |a, _, v| {
            a.service_endpoints = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            a.service_endpoints.iter().try_for_each(|e| crate::etcd::check_endpoint(e))
        },
        ..ETCD
    },
    // Store (primary; the secondary variant is generated)
    Flag {
        name: "storage-provider",
        value: Some("PROVIDER"),
        help: "Storage provider: S3, or Local (files under the container directory, e.g. an NFS mount).",
        set: |a, r, v| text(v).map(|t| a.store(r).provider = t),
        ..STORE
    },
    Flag {
        name: "store-container",
        value: Some("BUCKET"),
        env: Some("STORAGE_CONTAINER"),
        help: "Bucket that holds the snapshots (Local: an existing directory).",
        set: |a, r, v| text(v).map(|t| a.store(r).container = t),
        ..STORE
    },
    Flag {
        name: "store-prefix",
        value: Some("PREFIX"),
        help: "Key prefix inside the bucket; objects are <prefix>/v2/<snapshot>. A leading or trailing / is \
               dropped; empty, . and .. segments are refused.",
        set: |a, r, v| super::names::check_prefix(v).map(|p| a.store(r).prefix = p),
        ..STORE
    },
    Flag {
        name: "snapstore-temp-directory",
        value: Some("DIR"),
        default: Some("/tmp"),
        help: "Where snapshot verify --deep keeps its temporary database (removed on every exit); the primary's \
               is used.",
        set: |a, r, v| path(v).map(|p| a.store(r).temp_dir = p.unwrap_or_else(|| "/tmp".into())),
        uses: &[Verify, Snapshot],
        ignored_by: &[Restore, List, Gc, Reconcile, Copy],
        ..STORE
    },
    Flag {
        name: "store-endpoint-override",
        value: Some("URL"),
        help: "URL of an S3-compatible server instead of AWS (path-style requests unless the credentials say \
               otherwise).",
        set: |a, r, v| text(v).map(|t| a.store(r).endpoint_override = t),
        ..STORE
    },
    Flag {
        name: "store-ca-file",
        value: Some("PATH"),
        env: Some("AWS_CA_BUNDLE"),
        help: "PEM file of the CAs to trust for this S3 endpoint's TLS (a private CA), in addition to trustedCaCert \
               from the credentials; replaces the built-in roots.",
        set: |a, r, v| path(v).map(|p| a.store(r).ca_file = p),
        ..STORE
    },
    Flag {
        name: "max-parallel-chunk-uploads",
        value: Some("N"),
        default: Some("5"),
        help: "S3 parts uploaded at the same time, per endpoint (at most 64).",
        set: |a, r, v| count(v, MAX_PARALLEL_CHUNK_UPLOADS).map(|n| a.store(r).max_parallel_chunk_uploads = n as usize),
        ..UPLOAD
    },
    Flag {
        name: "min-chunk-size",
        value: Some("BYTES"),
        default: Some("5242880"),
        help: "Size of one uploaded S3 part: 5 MiB to 5 GiB (Ki/Mi/Gi suffixes accepted); grows to stay under \
               10,000 parts.",
        set: |a, r, v| {
            let n = parse_bytes(v)?;
            if n < MIN_PART_SIZE {
                return Err(format!("must be at least {MIN_PART_SIZE} (5 MiB, the S3 minimum part size)"));
            }
            if n > MAX_PART_SIZE {
                return Err(format!("must be at most {MAX_PART_SIZE} (5 GiB, the S3 maximum part size)"));
            }
            a.store(r).min_chunk_size = n;
            Ok(())
        },
        ..UPLOAD
    },
    Flag {
        name: "chunk-upload-timeout",
        value: Some("DURATION"),
        default: Some("3m"),
        help: "Time allowed for one S3 request, a part upload included.",
        set: |a, r, v| timeout(v).map(|d| a.store(r).chunk_upload_timeout = d),
        ..STORE
    },
    Flag {
        name: "chunk-upload-attempts",
        value: Some("N"),
        default: Some("6"),
        help: "Tries per request (a part upload, a listing or a fetch) before the endpoint is given up (at most \
               100).",
        set: |a, r, v| count(v, MAX_ATTEMPTS).map(|n| a.store(r).chunk_upload_attempts = n as u32),
        ..STORE
    },
    Flag {
        name: "chunk-upload-backoff",
        value: Some("DURATION"),
        default: Some("1s"),
        help: "Wait before the first retry (at most 1h); doubled for each next one, up to 16 times this.",
        set: |a, r, v| match parse_duration(v)? {
            d if d > MAX_BACKOFF => Err("must be at most 1h".into()),
            d => {
                a.store(r).chunk_upload_backoff = d;
                Ok(())
            }
        },
        ..STORE
    },
    Flag {
        name: "object-lock-mode",
        value: Some("MODE"),
        help: "GOVERNANCE or COMPLIANCE: every object written gets S3 object lock in this mode until \
               --object-lock-retention from its upload (the bucket must have object lock enabled: checked at start). \
               Garbage collection deletes object versions, and skips those still locked.",
        set: |a, r, v| {
            let mode = v.to_ascii_uppercase();
            if !matches!(mode.as_str(), "" | "GOVERNANCE" | "COMPLIANCE") {
                return Err("expected GOVERNANCE or COMPLIANCE".into());
            }
            a.store(r).object_lock_mode = Some(mode).filter(|m| !m.is_empty());
            Ok(())
        },
        ..LOCK
    },
    Flag {
        name: "object-lock-retention",
        value: Some("DURATION"),
        help: "How long object lock retains each object written (with --object-lock-mode), e.g. 96h.",
        set: |a, r, v| timeout(v).map(|d| a.store(r).object_lock_retention = Some(d)),
        ..LOCK
    },
    Flag {
        name: "sse-kms-key-id",
        value: Some("KEY"),
        help: "SSE-KMS: objects written are encrypted by S3 with this KMS key id or ARN (aws:kms); instead of \
               sseKMSKeyId in the credentials.",
        set: |a, r, v| text(v).map(|t| a.store(r).sse_kms_key_id = t),
        ..UPLOAD
    },
    Flag {
        name: "storage-class",
        value: Some("CLASS"),
        help: "S3 storage class of the objects written, e.g. STANDARD_IA (default: the bucket's).",
        set: |a, r, v| text(v).map(|t| a.store(r).storage_class = t),
        ..UPLOAD
    },
    Flag {
        name: "identity-file",
        value: Some("PATH"),
        env: Some("EBR_AGE_IDENTITY_FILE"),
        help: "age identity file (AGE-SECRET-KEY-1... lines, as age-keygen writes) to decrypt .age snapshots \
               with. Without it, verify, reconcile and copy check only their age framing, and restore refuses them.",
        set: |a, _, v| path(v).map(|p| a.identity_file = p),
        uses: &[Snapshot, Reconcile, Verify, Restore, Copy],
        ..Flag::DEFAULT
    },
    // Snapshot
    Flag {
        name: "once",
        default: Some("false"),
        help: "Take one full snapshot and exit, instead of running on --schedule with delta snapshots.",
        set: |a, _, v| parse_bool(v).map(|b| a.once = b),
        ..SNAPSHOT
    },
    Flag {
        name: "compress-snapshots",
        default: Some("true"),
        help: "Compress snapshots before storing them (as upstream does by default); =false stores etcd's bytes \
               as they are.",
        set: |a, _, v| parse_bool(v).map(|b| a.compress = b),
        ..SNAPSHOT
    },
    Flag {
        name: "compression-policy",
        value: Some("POLICY"),
        default: Some("gzip"),
        help: "gzip (.gz) or zlib (.zlib), compressed on every core; lzw (.Z, Go's LZW); or zstd (.zst, \
               multithreaded; upstream cannot read it).",
        set: |a, _, v| crate::compression::Policy::parse(v).map(|p| a.compression_policy = p),
        ..SNAPSHOT
    },
    Flag {
        name: "encrypt-to",
        value: Some("RECIPIENT"),
        help: "Encrypt every snapshot with age to this X25519 recipient (age1...), after compression: objects \
               end in .age (e.g. .gz.age) and upstream cannot read them. Repeat for more recipients; any one \
               identity decrypts.",
        set: |a, _, v| {
            a.encrypt_to.push(v.to_string());
            Ok(())
        },
        ..SNAPSHOT
    },
    Flag {
        name: "encrypt-to-file",
        value: Some("PATH"),
        help: "As --encrypt-to, for every recipient in this file (one per line, # comments).",
        set: |a, _, v| path(v).map(|p| a.encrypt_to_file = p),
        ..SNAPSHOT
    },
    Flag {
        name: "require-all-endpoints",
        default: Some("false"),
        help: "Exit 3 when the snapshot reached only one of two endpoints.",
        set: |a, _, v| parse_bool(v).map(|b| a.require_all_endpoints = b),
        ..SNAPSHOT
    },
    Flag {
        name: "metrics-file",
        value: Some("PATH"),
        help: "After every snapshot and reconcile, write per-endpoint metrics here for node_exporter's textfile \
               collector (Prometheus text, replaced atomically; name it *.prom).",
        set: |a, _, v| path(v).map(|p| a.metrics_file = p),
        uses: &[Snapshot, Reconcile],
        ..SNAPSHOT
    },
    Flag {
        name: "schedule",
        short: Some('s'),
        value: Some("CRON"),
        default: Some("0 */1 * * *"),
        help: "When to take full snapshots without --once: 5-field cron in UTC, or @hourly, @daily, @every 30m.",
        set: |a, _, v| crate::cron::Schedule::parse(v).map(|_| a.schedule = v.to_string()),
        ..SNAPSHOT
    },
    Flag {
        name: "verify-schedule",
        value: Some("CRON"),
        default: Some(""),
        help: "When to run snapshot verify (with --deep if given) on both endpoints, as --schedule; \
               exported as etcdbr_verify_* metrics. Empty: never.",
        set: |a, _, v| {
            if !v.is_empty() {
                crate::cron::Schedule::parse(v)?;
            }
            a.verify_schedule = v.to_string();
            Ok(())
        },
        ..SNAPSHOT
    },
    Flag {
        name: "defragmentation-schedule",
        value: Some("CRON"),
        default: Some("0 0 */3 * *"),
        help: "When to defragment every etcd member, one at a time and the leader last, in the long-running \
               snapshot, each followed by a full snapshot; as --schedule. Empty: never.",
        set: |a, _, v| {
            if !v.is_empty() {
                crate::cron::Schedule::parse(v)?;
            }
            a.defrag_schedule = v.to_string();
            Ok(())
        },
        ..SNAPSHOT
    },
    Flag {
        name: "backoff-multiplier",
        value: Some("N"),
        default: Some("2"),
        help: "After a failed full snapshot or a lost etcd connection, the long-running snapshot waits 1s, then \
               this many times longer after each further failure in a row.",
        set: |a, _, v| count(v, 1000).map(|n| a.backoff.multiplier = n as u32),
        ..SNAPSHOT
    },
    Flag {
        name: "backoff-attempt-limit",
        value: Some("N"),
        default: Some("6"),
        help: "Failures in a row after which the wait is --backoff-threshold-time.",
        set: |a, _, v| count(v, 1000).map(|n| a.backoff.attempt_limit = n as u32),
        ..SNAPSHOT
    },
    Flag {
        name: "backoff-threshold-time",
        value: Some("DURATION"),
        default: Some("128s"),
        help: "The longest wait between the long-running snapshot's retries.",
        set: |a, _, v| timeout(v).map(|d| a.backoff.threshold = d),
        ..SNAPSHOT
    },
    Flag {
        name: "delta-snapshot-period",
        value: Some("DURATION"),
        default: Some("20s"),
        help: "Save the changes watched since the last snapshot this often, as a delta snapshot; below 1s turns \
               delta snapshots off.",
        set: |a, _, v| parse_duration(v).map(|d| a.delta_period = d),
        ..SNAPSHOT
    },
    Flag {
        name: "delta-snapshot-memory-limit",
        value: Some("BYTES"),
        default: Some("10485760"),
        help: "Save a delta snapshot early when the watched changes reach this size in memory; 0 means the \
               default.",
        set: |a, _, v| parse_bytes(v).map(|n| a.delta_memory_limit = n),
        ..SNAPSHOT
    },
    // Garbage collection
    Flag {
        name: "garbage-collection-period",
        value: Some("DURATION"),
        default: Some("1m"),
        help: "Delete old snapshots on each endpoint this often; 1s or less turns garbage collection off.",
        set: |a, _, v| parse_duration(v).map(|d| a.gc_period = d),
        // `snapshot gc` and `snapshot reconcile` run once, now.
        uses: &[Snapshot],
        ignored_by: &[Gc, Reconcile],
        ..GC
    },
    Flag {
        name: "garbage-collection-policy",
        value: Some("POLICY"),
        default: Some("Exponential"),
        help: "Exponential (hourly for a day, daily for a week, weekly for 4 weeks) or LimitBased (the newest \
               --max-backups full snapshots).",
        set: |a, _, v| match v {
            "Exponential" | "LimitBased" => {
                a.gc_policy = v.to_string();
                Ok(())
            }
            _ => Err("expected Exponential or LimitBased".into()),
        },
        ..GC
    },
    Flag {
        name: "max-backups",
        short: Some('m'),
        value: Some("N"),
        default: Some("7"),
        help: "Full snapshots kept by the LimitBased policy.",
        set: |a, _, v| whole(v).map(|n| a.max_backups = n),
        ..GC
    },
    Flag {
        name: "delta-snapshot-retention-period",
        value: Some("DURATION"),
        default: Some("0"),
        help: "Keep delta snapshots of older full snapshots for this long (0: delete them with the garbage \
               collection).",
        set: |a, _, v| parse_duration(v).map(|d| a.delta_retention = d),
        ..GC
    },
    Flag {
        name: "dry-run",
        default: Some("false"),
        group: Group::GcOnce,
        uses: &[Gc, Reconcile],
        help: "Print what would be deleted (snapshot gc) or copied (snapshot reconcile); change nothing.",
        set: |a, _, v| parse_bool(v).map(|b| a.dry_run = b),
        ..Flag::DEFAULT
    },
    // Restore
    Flag {
        name: "data-dir",
        short: Some('d'),
        value: Some("DIR"),
        default: Some("default.etcd"),
        help: "etcd data directory to create; must not exist or be empty.",
        set: |a, _, v| {
            a.restore.data_dir = v.into();
            Ok(())
        },
        ..RESTORE_ALSO_SNAPSHOT
    },
    Flag {
        name: "name",
        value: Some("NAME"),
        default: Some("default"),
        help: "Member name of the restored etcd (its entry in --initial-cluster).",
        set: |a, _, v| {
            a.restore.name = v.to_string();
            Ok(())
        },
        ..RESTORE_ALSO_SNAPSHOT
    },
    Flag {
        name: "initial-cluster",
        value: Some("NAME=URL,..."),
        default: Some("default=http://localhost:2380"),
        help: "Every member of the restored cluster with its peer URLs.",
        set: |a, _, v| {
            a.restore.initial_cluster = v.to_string();
            Ok(())
        },
        ..RESTORE_ALSO_SNAPSHOT
    },
    Flag {
        name: "initial-cluster-token",
        value: Some("TOKEN"),
        default: Some("etcd-cluster"),
        help: "Cluster token; member and cluster IDs are derived from it.",
        set: |a, _, v| {
            a.restore.initial_cluster_token = v.to_string();
            Ok(())
        },
        ..RESTORE_ALSO_SNAPSHOT
    },
    Flag {
        name: "initial-advertise-peer-urls",
        value: Some("URLS"),
        default: Some("http://localhost:2380"),
        help: "Peer URLs of this member, comma separated; must match its --initial-cluster entry.",
        set: |a, _, v| {
            a.restore.initial_advertise_peer_urls = v.split(',').map(|u| u.trim().to_string()).collect();
            Ok(())
        },
        ..RESTORE_ALSO_SNAPSHOT
    },
    Flag {
        name: "skip-hash-check",
        default: Some("false"),
        help: "Do not verify the snapshot's SHA-256 trailer (for a db copied out of a data directory).",
        set: |a, _, v| parse_bool(v).map(|b| a.restore.skip_hash_check = b),
        ..RESTORE_ALSO_SNAPSHOT
    },
    Flag {
        name: "bump-revision",
        value: Some("N"),
        default: Some("0"),
        help: "Add N to the restored revision (with --mark-compacted), so watchers see a compaction; the sum must \
               fit etcd's int64 revisions.",
        set: |a, _, v| match whole(v)? {
            n if n > i64::MAX as u64 => Err(format!("must be at most {} (etcd revisions are int64)", i64::MAX)),
            n => {
                a.bump_revision = n;
                Ok(())
            }
        },
        ..RESTORE
    },
    Flag {
        name: "mark-compacted",
        default: Some("false"),
        help: "Mark the bumped revision as compacted (with --bump-revision).",
        set: |a, _, v| parse_bool(v).map(|b| a.mark_compacted = b),
        ..RESTORE
    },
    Flag {
        name: "snapshot",
        value: Some("NAME"),
        help: "Restore (or verify) up to this snapshot: a full snapshot alone, or a delta snapshot with the full \
               snapshot and deltas before it.",
        // Empty would silently mean the latest snapshot.
        set: |a, _, v| match v {
            "" => Err("must not be empty (leave the flag out for the latest snapshot)".into()),
            _ => {
                a.restore.snapshot = Some(v.to_string());
                Ok(())
            }
        },
        group: Group::Choice,
        uses: &[Restore, Verify],
        ..Flag::DEFAULT
    },
    Flag {
        name: "deep",
        default: Some("false"),
        group: Group::Choice,
        uses: &[Verify, Snapshot],
        help: "Also apply each endpoint's chain natively (one temporary database in --snapstore-temp-directory), \
               check the database's structure and rows, and compare etcd's HashKV recorded with the snapshots.",
        set: |a, _, v| parse_bool(v).map(|b| a.deep = b),
        ..Flag::DEFAULT
    },
    Flag {
        name: "all",
        default: Some("false"),
        group: Group::Choice,
        uses: &[Verify],
        help: "Verify every snapshot, and the continuity of every full snapshot's deltas, not only the latest chain.",
        set: |a, _, v| parse_bool(v).map(|b| a.all = b),
        ..Flag::DEFAULT
    },
    // snapshot list
    Flag {
        name: "output",
        short: Some('o'),
        value: Some("FORMAT"),
        default: Some("text"),
        group: Group::List,
        uses: &[List, Verify],
        help: "text (one line per snapshot, or per endpoint) or json.",
        set: |a, _, v| match v {
            "text" | "json" => {
                a.json = v == "json";
                Ok(())
            }
            _ => Err("expected text or json".into()),
        },
        ..Flag::DEFAULT
    },
    Flag {
        name: "all-versions",
        default: Some("false"),
        group: Group::List,
        uses: &[List],
        help: "Versioned S3 buckets: also list snapshots hidden by a delete marker (ListObjectVersions; each as \
               its newest version that is not one). restore --snapshot finds them without this flag.",
        set: |a, _, v| parse_bool(v).map(|b| a.all_versions = b),
        ..Flag::DEFAULT
    },
    // copy (upstream's copierOptions, same names and defaults)
    Flag {
        name: "max-backups-to-copy",
        value: Some("N"),
        default: Some("-1"),
        help: "Copy only the newest N full snapshots (within --max-backup-age) with their delta snapshots; -1 \
               copies all.",
        set: |a, _, v| at_least_minus_one(v).map(|n| a.copy.max_backups = n),
        ..COPY
    },
    Flag {
        name: "max-backup-age",
        value: Some("DAYS"),
        default: Some("-1"),
        help: "Copy only full snapshots created less than this many days ago (24-hour days), with their delta \
               snapshots; -1 copies any age.",
        set: |a, _, v| at_least_minus_one(v).map(|n| a.copy.max_age_days = n),
        ..COPY
    },
    Flag {
        name: "max-parallel-copy-operations",
        value: Some("N"),
        default: Some("10"),
        help: "Snapshots copied at the same time, over all destinations (at most 64); each holds up to \
               --max-parallel-chunk-uploads + 2 parts in memory.",
        set: |a, _, v| count(v, MAX_PARALLEL_COPIES).map(|n| a.copy.parallel = n as usize),
        ..COPY
    },
    Flag {
        name: "wait-for-final-snapshot",
        default: Some("false"),
        help: "Before copying, wait until the source's latest full snapshot is a final one (*.final, taken when \
               the source cluster was shut down), checking every 15s.",
        set: |a, _, v| parse_bool(v).map(|b| a.copy.wait_for_final = b),
        ..COPY
    },
    Flag {
        name: "wait-for-final-snapshot-timeout",
        value: Some("DURATION"),
        default: Some("0"),
        help: "Stop waiting for the final snapshot after this long and copy what is there; 0 waits without limit.",
        set: |a, _, v| parse_duration(v).map(|d| a.copy.wait_timeout = d),
        ..COPY
    },
    // Upstream's flags without effect here (`UPSTREAM`), with upstream's defaults.
    Flag {
        name: "restoration-temp-snapshots-dir",
        value: Some("DIR"),
        default: Some("default.restoration.tmp"),
        help: "Upstream: where restore keeps fetched delta snapshots.",
        no_effect: Some("restore streams each snapshot from the store, without temporary files"),
        set: |_, _, _| Ok(()),
        ..UPSTREAM
    },
    Flag {
        name: "max-fetchers",
        value: Some("N"),
        default: Some("6"),
        help: "Upstream: delta snapshots fetched in parallel by restore.",
        no_effect: Some("restore reads each delta snapshot as it applies it"),
        set: |_, _, v| ignore_whole(v),
        ..UPSTREAM
    },
    Flag {
        name: "max-call-send-message-size",
        value: Some("BYTES"),
        default: Some("10485760"),
        help: "Upstream: largest message restore sends to its embedded etcd.",
        no_effect: EMBEDDED_ETCD,
        set: |_, _, v| ignore_whole(v),
        ..UPSTREAM
    },
    Flag {
        name: "max-request-bytes",
        value: Some("BYTES"),
        default: Some("10485760"),
        help: "Upstream: largest request restore's embedded etcd accepts.",
        no_effect: EMBEDDED_ETCD,
        set: |_, _, v| ignore_whole(v),
        ..UPSTREAM
    },
    Flag {
        name: "max-txn-ops",
        value: Some("N"),
        default: Some("10240"),
        help: "Upstream: most operations in one transaction of restore's embedded etcd.",
        no_effect: EMBEDDED_ETCD,
        set: |_, _, v| ignore_whole(v),
        ..UPSTREAM
    },
    Flag {
        name: "embedded-etcd-quota-bytes",
        value: Some("BYTES"),
        default: Some("8589934592"),
        help: "Upstream: backend quota of restore's embedded etcd.",
        no_effect: EMBEDDED_ETCD,
        set: |_, _, v| ignore_whole(v),
        ..UPSTREAM
    },
    Flag {
        name: "auto-compaction-mode",
        value: Some("MODE"),
        default: Some("periodic"),
        help: "Upstream: periodic or revision, the auto-compaction of restore's embedded etcd.",
        no_effect: EMBEDDED_ETCD,
        set: |_, _, v| match v {
            "periodic" | "revision" => Ok(()),
            _ => Err("expected periodic or revision".into()),
        },
        ..UPSTREAM
    },
    Flag {
        name: "auto-compaction-retention",
        value: Some("RETENTION"),
        default: Some("30m"),
        help: "Upstream: auto-compaction retention of restore's embedded etcd.",
        no_effect: EMBEDDED_ETCD,
        set: |_, _, _| Ok(()),
        ..UPSTREAM
    },
    Flag {
        name: "next-cluster-version-compatible",
        default: Some("true"),
        help: "Upstream: let restore's embedded etcd open data of the next etcd version.",
        no_effect: Some("the data directory restore writes opens in etcd 3.4 and 3.5 alike"),
        set: |_, _, v| ignore_bool(v),
        ..UPSTREAM
    },
    Flag {
        name: "freespace-threshold",
        value: Some("BYTES"),
        default: Some("1073741824"),
        help: "Upstream: free space in etcd's database below which a scheduled defragmentation is skipped.",
        no_effect: Some("every scheduled defragmentation runs"),
        set: |_, _, v| ignore_whole(v),
        ..UPSTREAM
    },
    Flag {
        name: "config-file",
        value: Some("FILE"),
        help: "Upstream: YAML of the whole component configuration.",
        no_effect: Some("configuration comes from flags and environment variables only; the file is not read"),
        set: |_, _, _| Ok(()),
        ..UPSTREAM
    },
    Flag {
        name: "use-etcd-wrapper",
        default: Some("false"),
        help: "Upstream: serve etcd-wrapper's initialization calls.",
        no_effect: Some("there is no etcd-wrapper integration here"),
        set: |_, _, v| ignore_bool(v),
        ..UPSTREAM
    },
    Flag {
        name: "validation-mode",
        value: Some("MODE"),
        default: Some("full"),
        help: "Upstream: full or sanity, how the data directory is validated before etcd starts.",
        no_effect: VALIDATION,
        set: |_, _, v| match v {
            "full" | "sanity" => Ok(()),
            _ => Err("expected full or sanity".into()),
        },
        ..UPSTREAM
    },
    Flag {
        name: "experimental-fail-below-revision",
        value: Some("REVISION"),
        default: Some("0"),
        help: "Upstream: fail the data directory validation below this revision.",
        no_effect: VALIDATION,
        set: |_, _, v| ignore_whole(v),
        ..UPSTREAM
    },
    Flag {
        name: "enable-snapshot-lease-renewal",
        default: Some("false"),
        help: "Upstream: renew Kubernetes leases with the latest snapshot revisions.",
        no_effect: K8S,
        set: |_, _, v| ignore_bool(v),
        ..UPSTREAM
    },
    Flag {
        name: "full-snapshot-lease-name",
        value: Some("NAME"),
        default: Some("full-snapshot-revisions"),
        help: "Upstream: the Kubernetes lease of the latest full snapshot.",
        no_effect: K8S,
        set: |_, _, _| Ok(()),
        ..UPSTREAM
    },
    Flag {
        name: "delta-snapshot-lease-name",
        value: Some("NAME"),
        default: Some("delta-snapshot-revisions"),
        help: "Upstream: the Kubernetes lease of the latest delta snapshot.",
        no_effect: K8S,
        set: |_, _, _| Ok(()),
        ..UPSTREAM
    },
    Flag {
        name: "full-snapshot-lease-update-interval",
        value: Some("DURATION"),
        default: Some("3m"),
        help: "Upstream: retry interval of the full snapshot lease update.",
        no_effect: K8S,
        set: |_, _, v| ignore_duration(v),
        ..UPSTREAM
    },
    Flag {
        name: "enable-member-lease-renewal",
        default: Some("false"),
        help: "Upstream: renew this member's Kubernetes lease.",
        no_effect: K8S,
        set: |_, _, v| ignore_bool(v),
        ..UPSTREAM
    },
    Flag {
        name: "enable-etcd-member-gc",
        default: Some("false"),
        help: "Upstream: remove etcd members whose Kubernetes pods are gone.",
        no_effect: K8S,
        set: |_, _, v| ignore_bool(v),
        ..UPSTREAM
    },
    Flag {
        name: "k8s-heartbeat-duration",
        value: Some("DURATION"),
        default: Some("30s"),
        help: "Upstream: member lease renewal period.",
        no_effect: K8S,
        set: |_, _, v| ignore_duration(v),
        ..UPSTREAM
    },
    Flag {
        name: "k8s-member-gc-duration",
        value: Some("DURATION"),
        default: Some("1m"),
        help: "Upstream: member garbage collection period.",
        no_effect: K8S,
        set: |_, _, v| ignore_duration(v),
        ..UPSTREAM
    },
    Flag {
        name: "reelection-period",
        value: Some("DURATION"),
        default: Some("5s"),
        help: "Upstream: how often the sidecar checks whether its etcd member leads.",
        no_effect: LEADER_ELECTION,
        set: |_, _, v| ignore_duration(v),
        ..UPSTREAM
    },
    Flag {
        name: "etcd-connection-timeout-leader-election",
        value: Some("DURATION"),
        default: Some("5s"),
        help: "Upstream: etcd connection timeout of the leader election.",
        no_effect: LEADER_ELECTION,
        set: |_, _, v| ignore_duration(v),
        ..UPSTREAM
    },
    Flag {
        name: "secondary-backup-sync-enabled",
        default: Some("false"),
        help: "Upstream: copy backups to the secondary store periodically.",
        no_effect: SECONDARY_SYNC,
        set: |_, _, v| ignore_bool(v),
        ..UPSTREAM
    },
    Flag {
        name: "secondary-backup-sync-period",
        value: Some("DURATION"),
        default: Some("1h"),
        help: "Upstream: how often backups are copied to the secondary store.",
        no_effect: SECONDARY_SYNC,
        set: |_, _, v| ignore_duration(v),
        ..UPSTREAM
    },
    Flag {
        name: "owner-name",
        value: Some("DOMAIN"),
        help: "Upstream: DNS name whose address must be --owner-id for backups to run.",
        no_effect: OWNER_CHECK,
        set: |_, _, _| Ok(()),
        ..UPSTREAM
    },
    Flag {
        name: "owner-id",
        value: Some("ID"),
        help: "Upstream: the address --owner-name must resolve to.",
        no_effect: OWNER_CHECK,
        set: |_, _, _| Ok(()),
        ..UPSTREAM
    },
    Flag {
        name: "owner-check-interval",
        value: Some("DURATION"),
        default: Some("30s"),
        help: "Upstream: time between owner checks.",
        no_effect: OWNER_CHECK,
        set: |_, _, v| ignore_duration(v),
        ..UPSTREAM
    },
    Flag {
        name: "owner-check-timeout",
        value: Some("DURATION"),
        default: Some("2m"),
        help: "Upstream: timeout of one owner check.",
        no_effect: OWNER_CHECK,
        set: |_, _, v| ignore_duration(v),
        ..UPSTREAM
    },
    Flag {
        name: "owner-check-dns-cache-ttl",
        value: Some("DURATION"),
        default: Some("1m"),
        help: "Upstream: DNS cache lifetime of the owner check.",
        no_effect: OWNER_CHECK,
        set: |_, _, v| ignore_duration(v),
        ..UPSTREAM
    },
    // server (upstream's http-server flags)
    Flag {
        name: "server-port",
        short: Some('p'),
        value: Some("PORT"),
        default: Some("8080"),
        help: "Port of the HTTP API (/healthz, /metrics, /snapshot/latest, /snapshot/full, /snapshot/delta).",
        set: |a, _, v| v.parse().map(|p| a.server.port = p).map_err(|_| "expected a port number (0 to 65535)".into()),
        ..SERVER
    },
    Flag {
        name: "server-address",
        value: Some("ADDRESS"),
        default: Some("0.0.0.0"),
        help: "IP address the HTTP API listens on (upstream: every interface); 127.0.0.1 keeps it local.",
        set: |a, _, v| match v.parse::<std::net::IpAddr>() {
            Ok(_) => {
                a.server.address = v.to_string();
                Ok(())
            }
            Err(_) => Err("expected an IP address".into()),
        },
        ..SERVER
    },
    Flag {
        name: "server-cert",
        value: Some("FILE"),
        help: "Certificate chain (PEM) of the HTTP API; with --server-key it serves HTTPS.",
        set: |a, _, v| path(v).map(|p| a.server.cert = p),
        ..SERVER
    },
    Flag {
        name: "server-key",
        value: Some("FILE"),
        help: "Private key (PEM) of the HTTP API's certificate (with --server-cert).",
        set: |a, _, v| path(v).map(|p| a.server.key = p),
        ..SERVER
    },
];

/// At most this many copies at once; each holds its own part buffers.
pub const MAX_PARALLEL_COPIES: u64 = 64;

/// Upstream's copier counts: -1 (no limit) or a whole number; `None` is -1.
fn at_least_minus_one(v: &str) -> Result<Option<u64>, String> {
    match v {
        "-1" => Ok(None),
        _ => v.parse().map(Some).map_err(|_| "expected -1 or a whole number".to_string()),
    }
}

/// S3's smallest part but the last.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
