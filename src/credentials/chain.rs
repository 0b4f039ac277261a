//! Credentials that are not fixed keys, found per endpoint in the AWS SDK's
//! order (after the static keys, which `credentials::load` reads): web
//! identity, the container endpoint, the shared files, IMDSv2. A
//! [`Provider`] hands the current keys to every S3 request and fetches new
//! ones before they expire, without holding its lock across the network.

use super::fetch::{self, FetchError, Sts};
use super::profile;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The chain's variables (read with the endpoint's prefix), for the help
/// footer and the README, in the order the sources are tried.
pub const VARIABLES: [(&str, &str); 14] = [
    ("AWS_ROLE_ARN", "web identity: the role to assume (with AWS_WEB_IDENTITY_TOKEN_FILE)"),
    ("AWS_WEB_IDENTITY_TOKEN_FILE", "web identity: the token file, re-read on every refresh"),
    ("AWS_ROLE_SESSION_NAME", "web identity and role profiles: the session name (default etcd-backup-restore-<time>)"),
    (
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "container credentials: the URL (http only to a loopback or ECS/EKS address)",
    ),
    ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "container credentials: the path on http://169.254.170.2"),
    ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container credentials: the Authorization header"),
    ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "container credentials: a file holding it, re-read on every refresh"),
    ("AWS_PROFILE", "shared files: the profile (default `default`)"),
    ("AWS_SHARED_CREDENTIALS_FILE", "shared files: the credentials file (default ~/.aws/credentials)"),
    ("AWS_CONFIG_FILE", "shared files: the config file (default ~/.aws/config)"),
    ("AWS_EC2_METADATA_DISABLED", "`true`: never ask the instance metadata service"),
    ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "instance metadata (IMDSv2) URL (default http://169.254.169.254)"),
    ("AWS_ENDPOINT_URL_STS", "STS URL for the roles (default https://sts.<region>.amazonaws.com)"),
    ("AWS_STS_REGIONAL_ENDPOINTS", "`legacy`: the global https://sts.amazonaws.com instead of the regional one"),
];

/// Keys to sign with; `expires` is `None` for keys that never expire.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub expires: Option<SystemTime>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys(<redacted>, expires {:?})", self.expires.map(crate::time::utc_rfc3339))
    }
}

/// An endpoint's chain as configured: the variables captured once from the
/// environment (names without the prefix), and what its JSON file named.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChainSpec {
    /// `primary`, `secondary`, `source`: for log lines.
    pub endpoint: String,
    pub prefix: String,
    pub(super) vars: BTreeMap<String, String>,
    pub(super) home: Option<String>,
    /// The region STS is asked in (the endpoint's region).
    pub region: Option<String>,
    /// `roleARN` + `tokenPath` of upstream's credentials JSON, and where they came from.
    pub json_web_identity: Option<(String, String, String)>,
    /// Static keys (the chain's first source) and where they came from.
    pub fixed: Option<(Keys, String)>,
}

/// One source of the chain, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Static { origin: String },
    WebIdentity { role_arn: String, token_file: String, session: Option<String>, origin: String },
    Container { url: String, token: Option<String>, token_file: Option<String> },
    Profile { name: String, credentials_file: PathBuf, config_file: PathBuf },
    Imds { endpoint: String },
}

impl Source {
    /// What the INFO line says: kind and where, never a value.
    pub fn describe(&self, prefix: &str) -> String {
        match self {
            Source::Static { origin } => origin.clone(),
            Source::WebIdentity { role_arn, origin, .. } => format!("web identity ({origin}, role {role_arn})"),
            Source::Container { url, .. } => format!("the container credentials endpoint {}", display_url(url)),
            Source::Profile { name, .. } => format!("shared files profile {name} ({prefix}AWS_PROFILE)"),
            Source::Imds { endpoint } => format!("instance metadata (IMDSv2) at {endpoint}"),
        }
    }
}

/// A URL without userinfo or query, for messages.
pub fn display_url(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    match no_query.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((auth, path)) => format!("{scheme}://{}/{path}", auth.rsplit('@').next().unwrap_or(auth)),
            None => format!("{scheme}://{}", rest.rsplit('@').next().unwrap_or(rest)),
        },
        None => no_query.to_string(),
    }
}

impl ChainSpec {
    /// Capture the chain's variables with `prefix` from `env` (HOME unprefixed).
    pub fn from_env(prefix: &str, env: super::Env) -> ChainSpec {
        let mut vars = BTreeMap::new();
        for (name, _) in VARIABLES {
            if let Some(v) = env(&format!("{prefix}{name}")).filter(|v| !v.is_empty()) {
                vars.insert(name.to_string(), v);
            }
        }
        ChainSpec { prefix: prefix.to_string(), vars, home: env("HOME"), ..ChainSpec::default() }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The sources this endpoint is configured for, in the chain's order;
    /// IMDS last unless disabled. A shared-files profile counts when it is
    /// named or the files exist.
    pub fn sources(&self) -> Result<Vec<Source>, String> {
        let p = &self.prefix;
        let mut out = Vec::new();
        if let Some((_, origin)) = &self.fixed {
            out.push(Source::Static { origin: origin.clone() });
        }
        let session = self.var("AWS_ROLE_SESSION_NAME").map(str::to_string);
        if let Some((role_arn, token_file, origin)) = &self.json_web_identity {
            out.push(Source::WebIdentity {
                role_arn: role_arn.clone(),
                token_file: token_file.clone(),
                session: session.clone(),
                origin: origin.clone(),
            });
        }
        match (self.var("AWS_ROLE_ARN"), self.var("AWS_WEB_IDENTITY_TOKEN_FILE")) {
            (Some(role), Some(file)) => out.push(Source::WebIdentity {
                role_arn: role.to_string(),
                token_file: file.to_string(),
                session,
                origin: format!("{p}AWS_WEB_IDENTITY_TOKEN_FILE={file}"),
            }),
            (Some(_), None) => return Err(format!("{p}AWS_ROLE_ARN is set but {p}AWS_WEB_IDENTITY_TOKEN_FILE is not")),
            (None, Some(_)) => return Err(format!("{p}AWS_WEB_IDENTITY_TOKEN_FILE is set but {p}AWS_ROLE_ARN is not")),
            (None, None) => {}
        }
        let url = match (
            self.var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
            self.var("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        ) {
            (Some(rel), _) => Some(format!("http://169.254.170.2/{}", rel.trim_start_matches('/'))),
            (None, Some(full)) => Some(check_container_url(full, p)?),
            (None, None) => None,
        };
        if let Some(url) = url {
            out.push(Source::Container {
                url,
                token: self.var("AWS_CONTAINER_AUTHORIZATION_TOKEN").map(str::to_string),
                token_file: self.var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").map(str::to_string),
            });
        }
        let home = self.home.as_deref().map(|h| PathBuf::from(h).join(".aws"));
        let file = |var: &str, default: &str| {
            self.var(var).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(default)))
        };
        let (credentials_file, config_file) =
            (file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), file("AWS_CONFIG_FILE", "config"));
        let named = self.var("AWS_PROFILE").is_some()
            || self.var("AWS_SHARED_CREDENTIALS_FILE").is_some()
            || self.var("AWS_CONFIG_FILE").is_some();
        let exists = |f: &Option<PathBuf>| f.as_ref().is_some_and(|f| f.exists());
        if named || exists(&credentials_file) || exists(&config_file) {
            out.push(Source::Profile {
                name: self.var("AWS_PROFILE").unwrap_or("default").to_string(),
                credentials_file: credentials_file.unwrap_or_default(),
                config_file: config_file.unwrap_or_default(),
            });
        }
        if !self.var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            let endpoint = self.var("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or("http://169.254.169.254");
            out.push(Source::Imds { endpoint: endpoint.trim_end_matches('/').to_string() });
        }
        Ok(out)
    }

    /// Where STS is asked: `AWS_ENDPOINT_URL_STS`, else regional unless `legacy`.
    pub fn sts(&self, region: Option<&str>) -> Sts {
        let region = region.or(self.region.as_deref());
        let signing_region = region.unwrap_or("us-east-1").to_string();
        if let Some(url) = self.var("AWS_ENDPOINT_URL_STS") {
            return Sts { url: url.trim_end_matches('/').to_string() + "/", region: signing_region };
        }
        let legacy = self.var("AWS_STS_REGIONAL_ENDPOINTS").is_some_and(|v| v.eq_ignore_ascii_case("legacy"));
        match region {
            Some(r) if !legacy => Sts { url: format!("https://sts.{r}.amazonaws.com/"), region: signing_region },
            _ => Sts { url: "https://sts.amazonaws.com/".into(), region: "us-east-1".into() },
        }
    }

    /// Fetch keys from `source`.
    pub fn fetch(&self, source: &Source) -> Result<Keys, FetchError> {
        let p = &self.prefix;
        let perm = |message: String| FetchError { transient: false, message };
        let session_name = |s: &Option<String>| {
            s.clone().unwrap_or_else(|| {
                let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                format!("etcd-backup-restore-{now}")
            })
        };
        match source {
            Source::Static { .. } => {
                self.fixed.as_ref().map(|(k, _)| k.clone()).ok_or_else(|| perm("no static keys".into()))
            }
            Source::WebIdentity { role_arn, token_file, session, .. } => {
                // Re-read every time: the token is rotated by whoever mounts it.
                let token =
                    read_token(token_file).map_err(|e| perm(format!("web identity token file {token_file}: {e}")))?;
                fetch::assume_role_with_web_identity(&self.sts(None), role_arn, &session_name(session), &token)
            }
            Source::Container { url, token, token_file } => {
                let auth = match (token_file, token) {
                    (Some(f), _) => Some(
                        read_token(f)
                            .map_err(|e| perm(format!("{p}AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {f}: {e}")))?,
                    ),
                    (None, t) => t.clone(),
                };
                fetch::container(url, auth.as_deref())
            }
            Source::Profile { name, credentials_file, config_file } => {
                self.profile_keys(name, credentials_file, config_file, 0)
            }
            Source::Imds { endpoint } => fetch::imds(endpoint),
        }
    }

    fn profile_keys(
        &self,
        name: &str,
        credentials_file: &std::path::Path,
        config_file: &std::path::Path,
        depth: usize,
    ) -> Result<Keys, FetchError> {
        let perm = |message: String| FetchError { transient: false, message };
        let read = |path: &std::path::Path, is_config: bool| -> Result<profile::Profiles, FetchError> {
            match crate::userfile::read_to_string(path, crate::userfile::SMALL) {
                Ok(text) => Ok(profile::parse(&text, is_config)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(profile::Profiles::new()),
                Err(e) => Err(perm(format!("cannot read {}: {e}", path.display()))),
            }
        };
        let (creds, config) = (read(credentials_file, false)?, read(config_file, true)?);
        let keys = profile::merged(&config, &creds, name).ok_or_else(|| {
            perm(format!("no profile {name} in {} or {}", credentials_file.display(), config_file.display()))
        })?;
        let region = keys.get("region").filter(|r| !r.is_empty()).map(String::as_str);
        match profile::kind(name, &keys).map_err(perm)? {
            profile::Kind::Static { access_key_id, secret_access_key, session_token } => {
                Ok(Keys { access_key_id, secret_access_key, session_token, expires: None })
            }
            profile::Kind::WebIdentity { role_arn, token_file, session_name } => {
                let token = read_token(&token_file)
                    .map_err(|e| perm(format!("profile {name}: web_identity_token_file {token_file}: {e}")))?;
                let session = session_name.unwrap_or_else(|| "etcd-backup-restore".into());
                fetch::assume_role_with_web_identity(&self.sts(region), &role_arn, &session, &token)
            }
            profile::Kind::AssumeRole { role_arn, source_profile, session_name, external_id } => {
                if depth >= 4 {
                    return Err(perm(format!("profile {name}: source_profile chain longer than 4 (a loop?)")));
                }
                let source = if source_profile == name {
                    // A profile naming itself uses its own static keys.
                    match profile::kind(name, &{
                        let mut k = keys.clone();
                        k.remove("role_arn");
                        k
                    })
                    .map_err(perm)?
                    {
                        profile::Kind::Static { access_key_id, secret_access_key, session_token } => {
                            Keys { access_key_id, secret_access_key, session_token, expires: None }
                        }
                        _ => return Err(perm(format!("profile {name}: source_profile is itself but has no keys"))),
                    }
                } else {
                    self.profile_keys(&source_profile, credentials_file, config_file, depth + 1)?
                };
                let session = session_name.unwrap_or_else(|| "etcd-backup-restore".into());
                fetch::assume_role(&self.sts(region), &source, &role_arn, &session, external_id.as_deref())
            }
        }
    }
}

/// FULL_URI: https anywhere; http only to a loopback or the ECS/EKS agent
/// addresses (the SDKs' rule: a token is never sent in clear elsewhere).
fn check_container_url(url: &str, p: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{p}AWS_CONTAINER_CREDENTIALS_FULL_URI is not a URL"))?;
    let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let allowed = host == "localhost"
        || host == "169.254.170.2"
        || host == "169.254.170.23"
        || host == "fd00:ec2::23"
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(url.to_string()),
        Some("http") if allowed => Ok(url.to_string()),
        _ => Err(format!(
            "{p}AWS_CONTAINER_CREDENTIALS_FULL_URI {}: http only to a loopback address or 169.254.170.2/23; use https",
            display_url(url)
        )),
    }
}

fn read_token(path: &str) -> Result<String, String> {
    let text = crate::userfile::read_to_string(std::path::Path::new(path), crate::userfile::SMALL)
        .map_err(|e| e.to_string())?;
    let t = text.trim();
    if t.is_empty() { Err("empty".into()) } else { Ok(t.to_string()) }
}

/// Refresh this long before expiry: 5 minutes, or half the lifetime of
/// shorter-lived keys (15-minute STS keys are refreshed after 7.5 minutes).
fn margin(lifetime: Duration) -> Duration {
    (lifetime / 2).min(Duration::from_secs(300))
}

/// Keys still usable this long before they expire (clock skew, a slow request).
const USABLE_UNTIL: Duration = Duration::from_secs(5);

struct Current {
    keys: Arc<Keys>,
    /// When to fetch new keys (`None`: never).
    refresh_at: Option<SystemTime>,
}

#[derive(Default)]
struct State {
    current: Option<Current>,
    /// One thread fetches at a time; the others use the current keys or wait for it.
    fetching: bool,
    /// After a failed refresh, the next attempt is not before this.
    retry_after: Option<Instant>,
    /// The source last used, for the INFO line when it changes.
    last_source: Option<String>,
}

/// The keys of one endpoint, shared by all its requests (and siblings).
pub struct Provider {
    spec: ChainSpec,
    state: Mutex<State>,
    fetched: Condvar,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Provider({} endpoint)", self.spec.endpoint)
    }
}

impl Provider {
    pub fn new(spec: ChainSpec) -> Provider {
        Provider { spec, state: Mutex::new(State::default()), fetched: Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The secrets of the keys now in use, for scrubbing messages.
    pub fn current_secrets(&self) -> Vec<String> {
        let s = self.lock();
        match &s.current {
            Some(c) => {
                let k = &c.keys;
                let mut v = vec![k.access_key_id.clone(), k.secret_access_key.clone()];
                v.extend(k.session_token.clone());
                v
            }
            None => Vec::new(),
        }
    }

    /// The keys to sign the next request with: the current ones, or new
    /// ones when they are due. The lock is never held while fetching; a
    /// request that finds another thread fetching uses the current keys
    /// while they are usable, or waits for that fetch (bounded by its
    /// timeouts).
    pub fn get(&self) -> Result<Arc<Keys>, FetchError> {
        let mut s = self.lock();
        loop {
            let now = SystemTime::now();
            let usable = s.current.as_ref().filter(|c| c.keys.expires.is_none_or(|e| now + USABLE_UNTIL < e));
            let due = s.current.as_ref().is_none_or(|c| c.refresh_at.is_some_and(|r| now >= r));
            let backing_off = s.retry_after.is_some_and(|r| Instant::now() < r);
            match usable {
                Some(c) if !due || s.fetching || backing_off => return Ok(c.keys.clone()),
                None if s.fetching => {
                    s = self.fetched.wait_timeout(s, Duration::from_secs(60)).unwrap_or_else(|p| p.into_inner()).0;
                    continue;
                }
                _ => {}
            }
            s.fetching = true;
            drop(s);
            let result = self.fetch_once();
            s = self.lock();
            s.fetching = false;
            self.fetched.notify_all();
            let (source, result) = result;
            match result {
                Ok(keys) => {
                    let keys = Arc::new(keys);
                    let refresh_at = keys.expires.map(|e| {
                        let lifetime = e.duration_since(now).unwrap_or_default();
                        e - margin(lifetime)
                    });
                    let until = keys
                        .expires
                        .map(|e| format!(", valid until {}", crate::time::utc_rfc3339(e)))
                        .unwrap_or_default();
                    if s.last_source.as_deref() == Some(source.as_str()) {
                        log::info!("{} endpoint: credentials from {source} refreshed{until}", self.spec.endpoint);
                    } else {
                        log::info!("{} endpoint: credentials from {source}{until}", self.spec.endpoint);
                    }
                    s.last_source = Some(source);
                    s.retry_after = None;
                    s.current = Some(Current { keys: keys.clone(), refresh_at });
                    return Ok(keys);
                }
                Err(e) => {
                    let now = SystemTime::now();
                    let still_valid = s
                        .current
                        .as_ref()
                        .filter(|c| c.keys.expires.is_none_or(|x| now + USABLE_UNTIL < x))
                        .map(|c| c.keys.clone());
                    if let Some(keys) = still_valid {
                        // Still valid: keep signing with them, try again in a while.
                        let left = keys.expires.and_then(|x| x.duration_since(now).ok()).unwrap_or_default();
                        let wait = (left / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
                        s.retry_after = Some(Instant::now() + wait);
                        log::warn!(
                            "{} endpoint: refreshing credentials from {source} failed, using the current ones (retry in {wait:?}): {}",
                            self.spec.endpoint,
                            e.message
                        );
                        return Ok(keys);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One walk of the chain: the first configured source, fetched.
    fn fetch_once(&self) -> (String, Result<Keys, FetchError>) {
        let ep = &self.spec.endpoint;
        let sources = match self.spec.sources() {
            Ok(s) => s,
            Err(e) => {
                return (String::new(), Err(FetchError { transient: false, message: format!("{ep} endpoint: {e}") }));
            }
        };
        let Some(source) = sources.first() else {
            let p = &self.spec.prefix;
            return (
                String::new(),
                Err(FetchError {
                    transient: false,
                    message: format!(
                        "no credentials for the {ep} endpoint: no {p}AWS_APPLICATION_CREDENTIALS, keys, web identity, \
                         container endpoint or shared file, and {p}AWS_EC2_METADATA_DISABLED=true"
                    ),
                }),
            );
        };
        // The first configured source decides, as in the SDKs: one that is
        // set up but fails is an error, never a silent switch to another identity.
        let what = source.describe(&self.spec.prefix);
        let result = self.spec.fetch(source).map_err(|e| {
            log::warn!("{ep} endpoint: credentials from {what} failed: {}", e.message);
            FetchError { transient: e.transient, message: format!("credentials from {what}: {}", e.message) }
        });
        (what, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec(prefix: &str, pairs: &[(&str, &str)]) -> ChainSpec {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ChainSpec::from_env(prefix, &move |k: &str| m.get(k).cloned())
    }

    fn kinds(s: &ChainSpec) -> Vec<&'static str> {
        s.sources()
            .unwrap()
            .iter()
            .map(|s| match s {
                Source::Static { .. } => "static",
                Source::WebIdentity { .. } => "web",
                Source::Container { .. } => "container",
                Source::Profile { .. } => "profile",
                Source::Imds { .. } => "imds",
            })
            .collect()
    }

    #[test]
    fn chain_order_and_prefixes() {
        let d = crate::test_scratch::dir("chain-order");
        std::fs::create_dir_all(d.join(".aws")).unwrap();
        std::fs::write(d.join(".aws/credentials"), "[default]\naws_access_key_id=a\naws_secret_access_key=b\n")
            .unwrap();
        let home = d.to_str().unwrap();
        let all = [
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/creds"),
            ("HOME", home),
        ];
        assert_eq!(kinds(&spec("", &all)), ["web", "container", "profile", "imds"]);
        assert!(spec("", &all[1..]).sources().is_err(), "half a web identity is an error, not skipped");
        let mut with_keys = spec("", &all);
        with_keys.fixed = Some((
            Keys { access_key_id: "a".into(), secret_access_key: "b".into(), session_token: None, expires: None },
            "AWS_ACCESS_KEY_ID".into(),
        ));
        assert_eq!(kinds(&with_keys), ["static", "web", "container", "profile", "imds"]);
    }

    #[test]
    fn each_endpoint_reads_its_own_names() {
        let env = [
            ("SECONDARY_AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/c"),
            ("SECONDARY_AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
        ];
        assert_eq!(kinds(&spec("SECONDARY_", &env)), ["container"]);
        assert_eq!(kinds(&spec("", &env)), ["web", "imds"]);
        assert_eq!(kinds(&spec("SOURCE_", &env)), ["imds"]);
        let s = spec("", &[("AWS_EC2_METADATA_DISABLED", "TRUE"), ("AWS_PROFILE", "x")]);
        assert_eq!(kinds(&s), ["profile"]);
        let s = spec("", &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:7/")]);
        assert_eq!(s.sources().unwrap(), [Source::Imds { endpoint: "http://127.0.0.1:7".into() }]);
        let s = spec("", &[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/creds?id=1")]);
        assert!(
            matches!(&s.sources().unwrap()[0], Source::Container { url, .. } if url == "http://169.254.170.2/v2/creds?id=1")
        );
    }

    #[test]
    fn misconfigurations_say_which_variable() {
        let e = spec("SECONDARY_", &[("SECONDARY_AWS_ROLE_ARN", "r")]).sources().unwrap_err();
        assert_eq!(e, "SECONDARY_AWS_ROLE_ARN is set but SECONDARY_AWS_WEB_IDENTITY_TOKEN_FILE is not");
        let e = spec("", &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://user:pw@10.0.0.1/c?x=SECRET")])
            .sources()
            .unwrap_err();
        assert!(e.contains("http only to a loopback") && !e.contains("SECRET") && !e.contains("pw"), "{e}");
        assert!(spec("", &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", "https://10.0.0.1/c")]).sources().is_ok());
        assert!(spec("", &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://[::1]:8/c")]).sources().is_ok());
    }

    #[test]
    fn sts_endpoint_choice() {
        let s = spec("", &[]);
        assert_eq!(s.sts(None), Sts { url: "https://sts.amazonaws.com/".into(), region: "us-east-1".into() });
        assert_eq!(s.sts(Some("eu-west-1")).url, "https://sts.eu-west-1.amazonaws.com/");
        let legacy = spec("", &[("AWS_STS_REGIONAL_ENDPOINTS", "legacy")]);
        assert_eq!(legacy.sts(Some("eu-west-1")).url, "https://sts.amazonaws.com/");
        let mut custom = spec("SECONDARY_", &[("SECONDARY_AWS_ENDPOINT_URL_STS", "http://127.0.0.1:5")]);
        custom.region = Some("eu-central-1".into());
        assert_eq!(custom.sts(None), Sts { url: "http://127.0.0.1:5/".into(), region: "eu-central-1".into() });
    }

    #[test]
    fn refresh_margin() {
        assert_eq!(margin(Duration::from_secs(15)), Duration::from_millis(7500));
        assert_eq!(margin(Duration::from_secs(3600)), Duration::from_secs(300));
    }

    #[test]
    fn static_profile_through_the_provider_and_no_source_error() {
        let d = crate::test_scratch::dir("chain-profile");
        let creds = d.join("creds");
        std::fs::write(&creds, "[p]\naws_access_key_id = AKIDP\naws_secret_access_key = SP\n").unwrap();
        let mut s = spec(
            "",
            &[
                ("AWS_PROFILE", "p"),
                ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
        );
        s.endpoint = "primary".into();
        let p = Provider::new(s);
        let k = p.get().unwrap();
        assert_eq!((k.access_key_id.as_str(), k.expires), ("AKIDP", None));
        assert_eq!(p.current_secrets(), ["AKIDP", "SP"]);
        let mut none = spec("", &[("AWS_EC2_METADATA_DISABLED", "true")]);
        none.endpoint = "primary".into();
        let e = Provider::new(none).get().unwrap_err();
        assert!(e.message.starts_with("no credentials for the primary endpoint"), "{}", e.message);
        let mut missing =
            spec("", &[("AWS_PROFILE", "nope"), ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap())]);
        missing.endpoint = "primary".into();
        let e = Provider::new(missing).get().unwrap_err();
        assert!(
            e.message.contains("shared files profile nope") && e.message.contains("no profile nope"),
            "{}",
            e.message
        );
    }
}
