//! High-level configuration: low-level arguments combined, checked against
//! each other, with credentials loaded, ready for the command to use.

use super::lowargs::{LowArgs, Role, StoreArgs};
use super::parse::UsageError;
use crate::backup::Job;
use crate::continuous::Settings;
use crate::credentials::{self, Env, S3Credentials};
use crate::datadir::member;
use crate::endpoint::{Backend, Config as EndpointConfig, Configs, Parts};
use crate::etcd::EtcdConfig;
use crate::gc::Periodic;
use crate::report::MetricsFile;
use crate::store::RetryPolicy;
use crate::store::s3::{S3Config, WriteOptions};
use std::time::Duration;

#[derive(Debug)]
pub struct SnapshotConfig {
    /// The primary, then the secondary when configured.
    pub endpoints: Configs,
    pub job: Job,
    pub require_all_endpoints: bool,
    /// `None` with `--once`.
    pub scheduled: Option<Settings>,
}

/// Upstream's default, also used for a limit below 1.
const DELTA_MEMORY_LIMIT: usize = 10 << 20;

impl SnapshotConfig {
    pub fn new(low: LowArgs, env: Env) -> Result<SnapshotConfig, UsageError> {
        let endpoints = endpoints(&low, env)?;
        let scheduled = if low.once { None } else { Some(scheduled(&low)?) };
        let metrics = MetricsFile::new(low.metrics_file.clone(), endpoints.iter().map(|e| e.role).collect());
        Ok(SnapshotConfig {
            job: Job {
                etcd: etcd(&low)?,
                compression: low.compress.then_some(low.compression_policy),
                encryption: crate::encryption::Recipients::new(&low.encrypt_to, low.encrypt_to_file.as_deref())
                    .map_err(UsageError)?,
                metrics,
            },
            endpoints,
            require_all_endpoints: low.require_all_endpoints,
            scheduled,
        })
    }
}

/// `server`: the long-running `snapshot` with upstream's HTTP API.
#[derive(Debug)]
pub struct ServerConfig {
    pub snapshot: SnapshotConfig,
    pub http: crate::server::Options,
}

impl ServerConfig {
    pub fn new(low: LowArgs, env: Env) -> Result<ServerConfig, UsageError> {
        if low.once {
            return Err(UsageError("server runs until SIGTERM: --once is `snapshot --once`'s".into()));
        }
        let tls = match (low.server.cert.clone(), low.server.key.clone()) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(UsageError("--server-cert and --server-key go together (HTTPS needs both)".into())),
        };
        let ip: std::net::IpAddr =
            low.server.address.parse().map_err(|_| UsageError("invalid --server-address".into()))?;
        let addr = (ip, low.server.port).into();
        let snapshot = SnapshotConfig::new(low, env)?;
        // A request for a snapshot waits as long as etcd may take to send one.
        let request_timeout = snapshot.job.etcd.snapshot_timeout + Duration::from_secs(60);
        let http = crate::server::Options { addr, tls, request_timeout };
        Ok(ServerConfig { snapshot, http })
    }
}

/// `snapshot gc`: one garbage collection.
#[derive(Debug)]
pub struct GcOnceConfig {
    pub endpoints: Configs,
    pub policy: crate::gc::Policy,
    pub delta_retention: Duration,
    pub dry_run: bool,
}

impl GcOnceConfig {
    pub fn new(low: LowArgs, env: Env) -> Result<GcOnceConfig, UsageError> {
        Ok(GcOnceConfig {
            endpoints: endpoints(&low, env)?,
            policy: gc_policy(&low)?,
            delta_retention: low.delta_retention,
            dry_run: low.dry_run,
        })
    }
}

/// `snapshot reconcile`: one reconcile cycle.
#[derive(Debug)]
pub struct ReconcileConfig {
    pub endpoints: Configs,
    pub options: crate::reconcile::Options,
    pub metrics: MetricsFile,
}

impl ReconcileConfig {
    pub fn new(low: LowArgs, env: Env) -> Result<ReconcileConfig, UsageError> {
        let endpoints = endpoints(&low, env)?;
        if endpoints.len() < 2 {
            return Err(UsageError(
                "snapshot reconcile needs two endpoints: --secondary-storage-provider is missing".into(),
            ));
        }
        let metrics = MetricsFile::new(low.metrics_file.clone(), endpoints.iter().map(|e| e.role).collect());
        let options = crate::reconcile::Options {
            policy: gc_policy(&low)?,
            delta_retention: low.delta_retention,
            dry_run: low.dry_run,
        };
        Ok(ReconcileConfig { endpoints, options, metrics })
    }
}

/// `copy`: the source, the destinations (the primary, and the secondary
/// when configured), and upstream's copier options.
#[derive(Debug)]
pub struct CopyConfig {
    pub source: EndpointConfig,
    pub destinations: Configs,
    pub options: crate::copy::Options,
}

impl CopyConfig {
    pub fn new(low: LowArgs, env: Env) -> Result<CopyConfig, UsageError> {
        use crate::copy::WaitForFinal;
        let mut source = low.stores[Role::Source as usize].clone();
        // Upstream's `MergeWith`: an empty source prefix is the destination's.
        if source.prefix.is_empty() {
            source.prefix.clone_from(&low.stores[Role::Primary as usize].prefix);
        }
        // Upstream reads only SOURCE_* for the source: no fallback to the primary's credentials.
        let p = Role::Source.env_prefix();
        let creds = match credentials::resolve(p, env)? {
            Some(c) => Some(c),
            None => credentials::instance_metadata(p, env)?,
        };
        let source = endpoint(&source, Role::Source, creds)?;
        let destinations = endpoints(&low, env)?;
        for d in destinations.iter() {
            if let Some(place) = same_location(&source.backend, &d.backend) {
                return Err(UsageError(format!(
                    "the source is the {} endpoint ({place}): nothing to copy; check --source-store-container, \
                     --source-store-prefix and --source-store-endpoint-override",
                    d.role.name()
                )));
            }
        }
        let c = &low.copy;
        let wait_for_final = match (c.wait_for_final, c.wait_timeout) {
            (false, _) => WaitForFinal::No,
            (true, t) if t.is_zero() => WaitForFinal::Forever,
            (true, t) => WaitForFinal::AtMost(t),
        };
        let options = crate::copy::Options {
            max_backups: c.max_backups,
            max_age_days: c.max_age_days,
            parallel: c.parallel,
            wait_for_final,
        };
        Ok(CopyConfig { source, destinations, options })
    }
}

/// Where two endpoints are, when it is the same place: the same bucket and
/// prefix at the same server, or the same directory and prefix.
fn same_location(a: &Backend, b: &Backend) -> Option<String> {
    match (a, b) {
        (Backend::S3(a), Backend::S3(b))
            if (&a.endpoint, &a.bucket, &a.prefix) == (&b.endpoint, &b.bucket, &b.prefix) =>
        {
            let server = a.endpoint.as_deref().unwrap_or("AWS");
            Some(format!("s3://{}/{} at {server}", a.bucket, a.prefix))
        }
        (Backend::Local { container: a, prefix: p }, Backend::Local { container: b, prefix: q }) if p == q => {
            let real = |c: &std::path::Path| std::fs::canonicalize(c).unwrap_or_else(|_| c.to_path_buf());
            (real(a) == real(b)).then(|| format!("{}/{p}", a.display()))
        }
        _ => None,
    }
}

fn gc_policy(low: &LowArgs) -> Result<crate::gc::Policy, UsageError> {
    match low.gc_policy.as_str() {
        "LimitBased" if low.max_backups == 0 => {
            Err(UsageError("--max-backups must be greater than 0 with the LimitBased policy".into()))
        }
        "LimitBased" => Ok(crate::gc::Policy::LimitBased { max_backups: low.max_backups as usize }),
        _ => Ok(crate::gc::Policy::Exponential),
    }
}

fn scheduled(low: &LowArgs) -> Result<Settings, UsageError> {
    let schedule = crate::cron::Schedule::parse(&low.schedule).map_err(|e| UsageError(format!("--schedule: {e}")))?;
    let policy = gc_policy(low)?;
    Ok(Settings {
        schedule,
        delta_period: Some(low.delta_period).filter(|p| *p >= Duration::from_secs(1)),
        delta_memory_limit: match low.delta_memory_limit {
            0 => DELTA_MEMORY_LIMIT,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
        verify: match low.verify_schedule.as_str() {
            "" => None,
            s => Some((
                crate::cron::Schedule::parse(s).map_err(|e| UsageError(format!("--verify-schedule: {e}")))?,
                crate::verify::Options { selection: Default::default(), deep: deep(low) },
            )),
        },
        backoff: low.backoff,
        defrag: match low.defrag_schedule.as_str() {
            "" => None,
            s => Some(crate::defrag::Options {
                schedule: crate::cron::Schedule::parse(s)
                    .map_err(|e| UsageError(format!("--defragmentation-schedule: {e}")))?,
                timeout: low.defrag_timeout,
                cluster: match low.service_endpoints.as_slice() {
                    [] => etcd(low)?,
                    service => EtcdConfig { endpoints: service.to_vec(), ..etcd(low)? },
                },
            }),
        },
        gc: (low.gc_period > Duration::from_secs(1)).then_some(Periodic {
            period: low.gc_period,
            policy,
            delta_retention: low.delta_retention,
        }),
    })
}

/// `restore`: where to find the snapshot, and the data directory to write.
#[derive(Debug)]
pub struct RestoreConfig {
    pub endpoints: Configs,
    pub options: crate::restore::Options,
}

impl RestoreConfig {
    pub fn new(low: LowArgs, env: Env) -> Result<RestoreConfig, UsageError> {
        let bump_revision = match (low.bump_revision, low.mark_compacted) {
            (0, false) => None,
            (n, true) if n > 0 => Some(n),
            _ => {
                return Err(UsageError("--bump-revision N (N > 0) and --mark-compacted must be given together".into()));
            }
        };
        if low.restore.data_dir.as_os_str().is_empty() {
            return Err(UsageError("--data-dir must not be empty".into()));
        }
        // Every member limit, before an endpoint is opened; restore::run
        // checks the same again for callers of the library.
        let r = &low.restore;
        let members = member::parse_initial_cluster(&r.initial_cluster, &r.initial_cluster_token)
            .map_err(|e| UsageError(format!("--initial-cluster: {e}")))?;
        member::local_member(&members, &r.name, &r.initial_advertise_peer_urls.join(","))?;
        Ok(RestoreConfig {
            endpoints: readers(endpoints(&low, env)?),
            options: crate::restore::Options { bump_revision, ..low.restore },
        })
    }
}

/// `snapshot list`.
#[derive(Debug)]
pub struct ListConfig {
    pub endpoints: Configs,
    pub json: bool,
    pub all_versions: bool,
}

impl ListConfig {
    pub fn new(low: LowArgs, env: Env) -> Result<ListConfig, UsageError> {
        Ok(ListConfig { endpoints: readers(endpoints(&low, env)?), json: low.json, all_versions: low.all_versions })
    }
}

/// `snapshot verify`.
#[derive(Debug)]
pub struct VerifyConfig {
    pub endpoints: Configs,
    pub options: crate::verify::Options,
    pub json: bool,
}

impl VerifyConfig {
    pub fn new(low: LowArgs, env: Env) -> Result<VerifyConfig, UsageError> {
        use crate::verify::Selection;
        let selection = match (low.all, &low.restore.snapshot) {
            (true, Some(_)) => return Err(UsageError("--all and --snapshot cannot be given together".into())),
            (true, None) => Selection::All,
            (false, Some(name)) => Selection::UpTo(name.clone()),
            (false, None) => Selection::Latest,
        };
        let options = crate::verify::Options { selection, deep: deep(&low) };
        Ok(VerifyConfig { endpoints: readers(endpoints(&low, env)?), options, json: low.json })
    }
}

/// `--deep`: where its temporary database goes.
fn deep(low: &LowArgs) -> Option<std::path::PathBuf> {
    low.deep.then(|| low.stores[0].temp_dir.clone())
}

fn etcd(low: &LowArgs) -> Result<EtcdConfig, UsageError> {
    let e = &low.etcd;
    if e.username.is_some() != e.password.is_some() {
        return Err(UsageError("--etcd-username and --etcd-password must be given together".into()));
    }
    if e.cert_file.is_some() != e.key_file.is_some() {
        return Err(UsageError("--cert and --key must be given together".into()));
    }
    if e.snapshot_timeout < e.connection_timeout {
        return Err(UsageError("--etcd-snapshot-timeout must not be shorter than --etcd-connection-timeout".into()));
    }
    Ok(e.clone())
}

/// The primary endpoint, and the secondary when `--secondary-storage-provider` is set.
/// The endpoints of a command that only reads: object lock (accepted, as
/// every store flag is by every command) neither checked nor applied.
fn readers(mut configs: Configs) -> Configs {
    for c in &mut configs.each {
        if let Backend::S3(s3) = &mut c.backend {
            s3.write.object_lock = None;
        }
    }
    configs
}

fn endpoints(low: &LowArgs, env: Env) -> Result<Configs, UsageError> {
    let (stores, secondary_flags) = (&low.stores, &low.secondary_flags_given);
    let primary_creds = match credentials::resolve("", env)? {
        Some(c) => Some(c),
        None => credentials::instance_metadata("", env)?,
    };
    let mut out = vec![endpoint(&stores[0], Role::Primary, primary_creds.clone())?];
    if stores[1].provider.is_some() {
        // Spec "Credential Fallback": no SECONDARY_* credentials (static or a
        // chain source of its own) means the primary's, whatever their source.
        let creds = credentials::resolve(Role::Secondary.env_prefix(), env)?.or(primary_creds);
        out.push(endpoint(&stores[1], Role::Secondary, creds)?);
    } else if let Some(flag) = secondary_flags.first() {
        return Err(UsageError(format!("{flag} needs --secondary-storage-provider")));
    }
    let identities = match &low.identity_file {
        Some(p) => Some(std::sync::Arc::new(
            crate::encryption::Identities::load(p).map_err(|e| UsageError(format!("--identity-file: {e}")))?,
        )),
        None => None,
    };
    Ok(Configs { each: out, max_lag: low.max_endpoint_lag, identities })
}

fn endpoint(s: &StoreArgs, role: Role, creds: Option<S3Credentials>) -> Result<EndpointConfig, UsageError> {
    let flag = |name: &str| format!("--{}{name}", role.flag_prefix());
    let provider =
        s.provider.as_deref().ok_or_else(|| format!("{} is required (S3 or Local)", flag("storage-provider")))?;
    let local = match provider.to_ascii_lowercase().as_str() {
        "s3" => false,
        "local" => true,
        _ => {
            return Err(UsageError(format!(
                "unsupported storage provider {provider:?} for {}: supported are S3 and Local",
                flag("storage-provider")
            )));
        }
    };
    let bucket = s.container.clone().ok_or_else(|| {
        format!("{} (or {}STORAGE_CONTAINER) is required", flag("store-container"), role.env_prefix())
    })?;
    let object_lock = match (&s.object_lock_mode, s.object_lock_retention) {
        (Some(mode), Some(retention)) => Some((mode.clone(), retention)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(UsageError(format!("{} needs {}", flag("object-lock-mode"), flag("object-lock-retention"))));
        }
        (None, Some(_)) => {
            return Err(UsageError(format!("{} needs {}", flag("object-lock-retention"), flag("object-lock-mode"))));
        }
    };
    let initial = s.chunk_upload_backoff;
    let retry = RetryPolicy { attempts: s.chunk_upload_attempts, initial_backoff: initial, max_backoff: initial * 16 };
    let parts = Parts { max_parallel: s.max_parallel_chunk_uploads, min_size: s.min_chunk_size };
    if local {
        let s3_only = [
            ("object-lock-mode", object_lock.is_some()),
            ("sse-kms-key-id", s.sse_kms_key_id.is_some()),
            ("storage-class", s.storage_class.is_some()),
        ];
        if let Some((name, _)) = s3_only.iter().find(|(_, set)| *set) {
            return Err(UsageError(format!("{} is for S3 endpoints only, not Local", flag(name))));
        }
        return Ok(EndpointConfig {
            role,
            backend: Backend::Local { container: bucket.into(), prefix: s.prefix.clone() },
            parts,
            retry,
        });
    }
    // Local: the container is a directory path, which the store checks when it opens it.
    super::names::check_bucket(&bucket)
        .map_err(|e| format!("invalid {} (or {}STORAGE_CONTAINER): {e}", flag("store-container"), role.env_prefix()))?;
    let creds = creds.ok_or_else(|| {
        let p = role.env_prefix();
        format!(
            "no credentials for the {} endpoint: set {p}AWS_APPLICATION_CREDENTIALS, \
             {p}AWS_APPLICATION_CREDENTIALS_JSON, {p}AWS_ACCESS_KEY_ID and {p}AWS_SECRET_ACCESS_KEY, \
             or a chain source ({p}AWS_ROLE_ARN, {p}AWS_CONTAINER_CREDENTIALS_FULL_URI, {p}AWS_PROFILE; \
             instance metadata is off: {p}AWS_EC2_METADATA_DISABLED=true)",
            role.name()
        )
    })?;
    // The CA file's certificates join trustedCaCert's; both replace the built-in roots.
    let mut trusted_ca_pem = creds.trusted_ca_cert.map(String::into_bytes);
    if let Some(path) = &s.ca_file {
        let pem = crate::userfile::read(path, crate::userfile::CA_BUNDLE)
            .map_err(|e| format!("{} {}: {e}", flag("store-ca-file"), path.display()))?;
        let all = trusted_ca_pem.get_or_insert_with(Vec::new);
        all.push(b'\n');
        all.extend_from_slice(&pem);
    }
    let sse_kms_key_id = s.sse_kms_key_id.clone().or(creds.sse_kms_key_id.clone());
    if sse_kms_key_id.is_some() && creds.sse_customer_key.is_some() {
        return Err(UsageError(format!(
            "{} (or sseKMSKeyId) and sseCustomerKey in {} exclude each other: one kind of server-side encryption",
            flag("sse-kms-key-id"),
            creds.source
        )));
    }
    let write = WriteOptions { object_lock, sse_kms_key_id, storage_class: s.storage_class.clone() };
    let endpoint = match (&s.endpoint_override, &creds.endpoint) {
        (Some(url), _) => Some(check_url(url, &flag("store-endpoint-override"))?),
        (None, Some(url)) => Some(check_url(url, &format!("endpoint in {}", creds.source))?),
        (None, None) => None,
    };
    Ok(EndpointConfig {
        role,
        backend: Backend::S3(Box::new(S3Config {
            // Path style is what S3-compatible servers expect; AWS itself gets virtual hosts.
            path_style: creds.force_path_style.unwrap_or(endpoint.is_some()),
            endpoint,
            bucket,
            prefix: s.prefix.clone(),
            region: creds.region.clone().unwrap_or_else(|| "us-east-1".into()),
            access_key_id: creds.access_key_id,
            secret_access_key: creds.secret_access_key,
            session_token: creds.session_token,
            trusted_ca_pem,
            insecure_skip_verify: creds.insecure_skip_verify,
            sse_customer: creds.sse_customer_algorithm.zip(creds.sse_customer_key),
            credential_chain: creds.chain.map(|mut c| {
                c.endpoint = role.name().to_string();
                c
            }),
            connect_timeout: std::time::Duration::from_secs(30).min(s.chunk_upload_timeout),
            request_timeout: s.chunk_upload_timeout,
            write,
        })),
        parts,
        retry,
    })
}

/// An S3 endpoint must be an http(s) URL with a host.
fn check_url(url: &str, what: &str) -> Result<String, UsageError> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(url.trim_end_matches('/').to_string()),
        _ => Err(UsageError(format!("invalid {what} {url:?}: expected an http:// or https:// URL"))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::{Parsed, parse};
    use super::*;
    use std::collections::HashMap;

    fn config(args: &[&str], env: &[(&str, &str)]) -> Result<SnapshotConfig, UsageError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env = move |k: &str| env.get(k).cloned();
        let mut argv = vec!["snapshot", "--once"];
        argv.extend_from_slice(args);
        let Parsed::Run(_, low) = parse(argv.iter().map(std::ffi::OsString::from), &env)? else { panic!() };
        SnapshotConfig::new(*low, &env)
    }

    const KEYS: &[(&str, &str)] = &[("AWS_ACCESS_KEY_ID", "pk"), ("AWS_SECRET_ACCESS_KEY", "ps")];
    const BASE: &[&str] =
        &["--storage-provider=S3", "--store-container=bk1", "--store-endpoint-override=http://127.0.0.1:9"];

    fn s3(e: &EndpointConfig) -> &S3Config {
        match &e.backend {
            Backend::S3(c) => c,
            other => panic!("not S3: {other:?}"),
        }
    }

    #[test]
    fn local_needs_no_credentials_and_mixes_with_s3() {
        let c =
            config(&["--storage-provider=Local", "--store-container=/mnt/nfs", "--store-prefix=etcd"], &[]).unwrap();
        match &c.endpoints[0].backend {
            Backend::Local { container, prefix } => {
                assert_eq!((container.to_str(), prefix.as_str()), (Some("/mnt/nfs"), "etcd"))
            }
            other => panic!("{other:?}"),
        }
        let mut args = BASE.to_vec();
        args.extend(["--secondary-storage-provider=local", "--secondary-store-container=/mnt/nfs"]);
        let c = config(&args, KEYS).unwrap();
        assert_eq!(s3(&c.endpoints[0]).bucket, "bk1");
        assert!(matches!(c.endpoints[1].backend, Backend::Local { .. }));
    }

    #[test]
    fn single_endpoint_mode() {
        let c = config(BASE, KEYS).unwrap();
        assert_eq!(c.endpoints.len(), 1);
        let p = &s3(&c.endpoints[0]);
        assert_eq!((p.bucket.as_str(), p.endpoint.as_deref(), p.path_style), ("bk1", Some("http://127.0.0.1:9"), true));
        assert_eq!(p.region, "us-east-1");
        assert_eq!(c.endpoints[0].retry, RetryPolicy::default());
    }

    #[test]
    fn secondary_falls_back_to_primary_credentials_or_uses_its_own() {
        let mut args = BASE.to_vec();
        args.extend(["--secondary-storage-provider=S3", "--secondary-store-container=bk2"]);
        let c = config(&args, KEYS).unwrap();
        assert_eq!(s3(&c.endpoints[1]).access_key_id, "pk");
        assert_eq!(s3(&c.endpoints[1]).endpoint, None, "the endpoint override is per endpoint");
        let mut env = KEYS.to_vec();
        env.extend([("SECONDARY_AWS_ACCESS_KEY_ID", "sk"), ("SECONDARY_AWS_SECRET_ACCESS_KEY", "ss")]);
        let c = config(&args, &env).unwrap();
        assert_eq!(
            (s3(&c.endpoints[0]).access_key_id.as_str(), s3(&c.endpoints[1]).access_key_id.as_str()),
            ("pk", "sk")
        );
        assert_eq!(s3(&c.endpoints[1]).bucket, "bk2");
    }

    #[test]
    fn configuration_mistakes_are_one_line_and_name_the_culprit() {
        let with = |extra: &[&'static str]| {
            let mut v = BASE.to_vec();
            v.extend_from_slice(extra);
            v
        };
        for (args, env, want) in [
            (
                with(&["--secondary-store-container=bk2"]),
                KEYS,
                "--secondary-store-container needs --secondary-storage-provider",
            ),
            (
                with(&["--secondary-storage-provider=GCS"]),
                KEYS,
                "unsupported storage provider \"GCS\" for --secondary-storage-provider",
            ),
            (
                with(&["--secondary-storage-provider=S3"]),
                KEYS,
                "--secondary-store-container (or SECONDARY_STORAGE_CONTAINER) is required",
            ),
            (vec!["--store-container=bkt"], KEYS, "--storage-provider is required"),
            (BASE.to_vec(), &[("AWS_EC2_METADATA_DISABLED", "true")][..], "no credentials for the primary endpoint"),
            (
                vec!["--storage-provider=S3", "--store-container=bkt", "--store-endpoint-override=127.0.0.1:9"],
                KEYS,
                "--store-endpoint-override",
            ),
            (with(&["--etcd-username=u"]), KEYS, "--etcd-password"),
        ] {
            let err = config(&args, env).unwrap_err().0;
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn chain_sources_and_the_secondary_fallback() {
        let chain = |e: &EndpointConfig| s3(e).credential_chain.clone().unwrap();
        let kinds = |e: &EndpointConfig| {
            chain(e)
                .sources()
                .unwrap()
                .iter()
                .map(|s| format!("{s:?}").split([' ', '{']).next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        // Nothing set: instance metadata is the only source left.
        let c = config(BASE, &[]).unwrap();
        assert_eq!(kinds(&c.endpoints[0]), ["Imds"]);
        assert_eq!(chain(&c.endpoints[0]).endpoint, "primary");
        // Static keys come first, with the rest of the chain behind them.
        let c = config(BASE, KEYS).unwrap();
        assert_eq!(kinds(&c.endpoints[0]), ["Static", "Imds"]);
        // A secondary with a web identity of its own uses it; one with nothing uses the primary's.
        let sec = ["--secondary-storage-provider=S3", "--secondary-store-container=bk2"];
        let mut args = BASE.to_vec();
        args.extend(sec);
        let env = [
            KEYS[0],
            KEYS[1],
            ("SECONDARY_AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("SECONDARY_AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("SECONDARY_AWS_EC2_METADATA_DISABLED", "true"),
        ];
        let c = config(&args, &env).unwrap();
        assert_eq!(kinds(&c.endpoints[1]), ["WebIdentity"]);
        let c = config(&args, KEYS).unwrap();
        assert_eq!(
            (kinds(&c.endpoints[1]), chain(&c.endpoints[1]).endpoint.as_str()),
            (vec!["Static".to_string(), "Imds".to_string()], "secondary")
        );
        let c = config(&args, &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:9/c")]).unwrap();
        assert_eq!(kinds(&c.endpoints[1]), ["Container", "Imds"]);
        assert_eq!(chain(&c.endpoints[1]).prefix, "", "the fallback reads the primary's names");
        // The upstream JSON's roleARN + tokenPath is a web identity.
        let d = std::env::temp_dir().join(format!("ebr-hiargs-json-{}", std::process::id()));
        std::fs::write(&d, r#"{"roleARN":"arn:aws:iam::1:role/j","tokenPath":"/var/run/token","region":"eu-west-1"}"#)
            .unwrap();
        let c = config(BASE, &[("AWS_APPLICATION_CREDENTIALS_JSON", d.to_str().unwrap())]).unwrap();
        std::fs::remove_file(&d).unwrap();
        assert_eq!(kinds(&c.endpoints[0]), ["WebIdentity", "Imds"]);
        assert_eq!(chain(&c.endpoints[0]).sts(None).url, "https://sts.eu-west-1.amazonaws.com/");
    }

    fn copy_config(args: &[&str], env: &[(&str, &str)]) -> Result<CopyConfig, UsageError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env = move |k: &str| env.get(k).cloned();
        let argv = ["copy"].iter().chain(args).map(std::ffi::OsString::from);
        let Parsed::Run(_, low) = parse(argv, &env)? else { panic!() };
        CopyConfig::new(*low, &env)
    }

    const SOURCE: &[&str] = &["--source-storage-provider=S3", "--source-store-container=old-bucket"];
    const SOURCE_KEYS: &[(&str, &str)] = &[
        ("AWS_ACCESS_KEY_ID", "pk"),
        ("AWS_SECRET_ACCESS_KEY", "ps"),
        ("SOURCE_AWS_ACCESS_KEY_ID", "sk"),
        ("SOURCE_AWS_SECRET_ACCESS_KEY", "ss"),
    ];

    #[test]
    fn copy_reads_the_source_from_its_own_flags_and_source_credentials() {
        let args: Vec<&str> = BASE.iter().chain(SOURCE).chain(&["--store-prefix=etcd"]).copied().collect();
        let c = copy_config(&args, SOURCE_KEYS).unwrap();
        assert_eq!(c.source.role, Role::Source);
        let src = s3(&c.source);
        assert_eq!(
            (src.bucket.as_str(), src.access_key_id.as_str(), src.endpoint.as_deref()),
            ("old-bucket", "sk", None)
        );
        assert_eq!(src.prefix, "etcd", "an empty source prefix is the destination's, as upstream's MergeWith");
        assert_eq!(c.destinations.len(), 1);
        assert_eq!(s3(&c.destinations[0]).access_key_id, "pk");
        let mut args = args.clone();
        args.extend([
            "--source-store-prefix=other",
            "--secondary-storage-provider=Local",
            "--secondary-store-container=/tmp",
        ]);
        let c = copy_config(&args, SOURCE_KEYS).unwrap();
        assert_eq!((s3(&c.source).prefix.as_str(), c.destinations.len()), ("other", 2));
        assert_eq!(c.options.wait_for_final, crate::copy::WaitForFinal::No);
        use crate::copy::WaitForFinal::{AtMost, Forever};
        let wait = |extra: &[&str]| {
            let a: Vec<&str> = BASE.iter().chain(SOURCE).chain(extra).copied().collect();
            copy_config(&a, SOURCE_KEYS).unwrap().options.wait_for_final
        };
        assert_eq!(wait(&["--wait-for-final-snapshot"]), Forever, "timeout 0: no deadline, as upstream");
        assert_eq!(
            wait(&["--wait-for-final-snapshot", "--wait-for-final-snapshot-timeout=1m"]),
            AtMost(Duration::from_secs(60))
        );
    }

    #[test]
    fn copy_usage_errors_are_one_line() {
        let with = |extra: &[&'static str]| BASE.iter().chain(extra).copied().collect::<Vec<_>>();
        for (args, env, want) in [
            (with(&["--source-store-container=old"]), SOURCE_KEYS, "--source-storage-provider is required"),
            (
                with(&["--source-storage-provider=S3"]),
                SOURCE_KEYS,
                "--source-store-container (or SOURCE_STORAGE_CONTAINER) is required",
            ),
            // No fallback to the primary's credentials, as upstream.
            (
                with(SOURCE),
                &[KEYS[0], KEYS[1], ("SOURCE_AWS_EC2_METADATA_DISABLED", "true")][..],
                "no credentials for the source endpoint: set SOURCE_AWS_APPLICATION_CREDENTIALS",
            ),
            (
                with(&[
                    "--source-storage-provider=S3",
                    "--source-store-container=bk1",
                    "--source-store-endpoint-override=http://127.0.0.1:9/",
                ]),
                SOURCE_KEYS,
                "the source is the primary endpoint (s3://bk1/ at http://127.0.0.1:9)",
            ),
            (
                with(&[
                    "--source-storage-provider=Local",
                    "--source-store-container=/tmp",
                    "--source-store-prefix=p",
                    "--secondary-storage-provider=Local",
                    "--secondary-store-container=/tmp/",
                    "--secondary-store-prefix=p",
                ]),
                KEYS,
                "the source is the secondary endpoint",
            ),
            (
                with(&["--source-storage-provider=GCS", "--source-store-container=b"]),
                SOURCE_KEYS,
                "--source-storage-provider",
            ),
        ] {
            let err = copy_config(&args, env).unwrap_err().0;
            assert!(err.contains(want) && !err.contains('\n'), "{args:?}: {err}");
        }
        // Another prefix or another server is another place.
        let other_prefix = with(&[
            "--source-storage-provider=S3",
            "--source-store-container=bk1",
            "--source-store-prefix=x",
            "--source-store-endpoint-override=http://127.0.0.1:9",
        ]);
        assert!(copy_config(&other_prefix, SOURCE_KEYS).is_ok());
        let other_server = with(&[
            "--source-storage-provider=S3",
            "--source-store-container=bk1",
            "--source-store-endpoint-override=http://127.0.0.1:10",
        ]);
        assert!(copy_config(&other_server, SOURCE_KEYS).is_ok());
    }

    #[test]
    fn scheduled_mode_settings() {
        let env: HashMap<String, String> = HashMap::new();
        let env = move |k: &str| env.get(k).cloned();
        let snapshot = |extra: &[&str]| {
            let args = ["snapshot", "--storage-provider=Local", "--store-container=/tmp"].iter().chain(extra);
            let Parsed::Run(_, low) = parse(args.map(std::ffi::OsString::from), &env)? else { panic!() };
            SnapshotConfig::new(*low, &env)
        };
        let s = snapshot(&[]).unwrap().scheduled.unwrap();
        assert_eq!(s.delta_period, Some(Duration::from_secs(20)));
        assert_eq!(s.delta_memory_limit, 10 << 20);
        let gc = s.gc.unwrap();
        assert_eq!(
            (gc.period, gc.policy, gc.delta_retention),
            (Duration::from_secs(60), crate::gc::Policy::Exponential, Duration::ZERO)
        );
        assert!(snapshot(&["--once"]).unwrap().scheduled.is_none());
        let s = snapshot(&[
            "--delta-snapshot-period=999ms",
            "--garbage-collection-period=1s",
            "--delta-snapshot-memory-limit=0",
        ])
        .unwrap()
        .scheduled
        .unwrap();
        assert_eq!((s.delta_period, s.gc.is_none(), s.delta_memory_limit), (None, true, 10 << 20));
        let s = snapshot(&["--garbage-collection-policy=LimitBased", "-m", "3"]).unwrap().scheduled.unwrap();
        assert_eq!(s.gc.unwrap().policy, crate::gc::Policy::LimitBased { max_backups: 3 });
        for (args, want) in [
            (&["--garbage-collection-policy=LimitBased", "--max-backups=0"][..], "--max-backups"),
            (&["--garbage-collection-policy=limit"], "--garbage-collection-policy"),
            (&["--schedule=* * *"], "--schedule"),
        ] {
            let err = snapshot(args).unwrap_err().0;
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }
}
