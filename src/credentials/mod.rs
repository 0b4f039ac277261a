//! S3 credentials, found the way the upstream tool finds them, per endpoint:
//! from the variables in `VARIABLES`, each read with the endpoint's prefix
//! (empty for the primary, `SECONDARY_` for the secondary). That list is the
//! only one: the help footer and the README's table are rendered from it.
//!
//! Errors name the variable and the file, never what the file holds.

pub mod chain;
mod fetch;
pub mod profile;

use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub region: Option<String>,
    /// Deprecated upstream in favour of `--store-endpoint-override`.
    pub endpoint: Option<String>,
    pub force_path_style: Option<bool>,
    pub insecure_skip_verify: bool,
    /// PEM text of a CA to trust instead of the public roots.
    pub trusted_ca_cert: Option<String>,
    pub sse_customer_key: Option<String>,
    pub sse_customer_algorithm: Option<String>,
    /// `sseKMSKeyId`: SSE-KMS with this key (`--sse-kms-key-id` wins).
    pub sse_kms_key_id: Option<String>,
    /// Where these came from, for messages: `AWS_APPLICATION_CREDENTIALS=/path`.
    pub source: String,
    /// The endpoint's credential chain: static keys first when there are
    /// any, then the sources that fetch temporary keys.
    pub chain: Option<chain::ChainSpec>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Credentials(from {}, region {:?})", self.source, self.region)
    }
}

/// The upstream JSON form (field names as in the upstream tool).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsonCredentials {
    #[serde(rename = "accessKeyID")]
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    s3_force_path_style: Option<bool>,
    insecure_skip_verify: Option<bool>,
    trusted_ca_cert: Option<String>,
    sse_customer_key: Option<String>,
    sse_customer_algorithm: Option<String>,
    #[serde(rename = "sseKMSKeyId")]
    sse_kms_key_id: Option<String>,
    #[serde(rename = "roleARN")]
    role_arn: Option<String>,
    token_path: Option<String>,
}

/// The variables `load` reads, in the order it tries them (the first three
/// are alternatives, upstream's order), with what each one holds.
pub const VARIABLES: [(&str, &str); 7] = [
    ("AWS_APPLICATION_CREDENTIALS_JSON", "path of a JSON file"),
    (
        "AWS_APPLICATION_CREDENTIALS",
        "path of a JSON file, or of a directory (a Kubernetes secret volume) holding a *.json file or one file per \
         field",
    ),
    ("AWS_ACCESS_KEY_ID", "access key ID (with AWS_SECRET_ACCESS_KEY)"),
    ("AWS_SECRET_ACCESS_KEY", "secret access key"),
    ("AWS_SESSION_TOKEN", "session token (optional)"),
    ("AWS_REGION", "region (default us-east-1)"),
    ("AWS_DEFAULT_REGION", "region when AWS_REGION is not set"),
];

/// Look up an environment variable (a function so tests need no process env).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Load the credentials for the endpoint whose variables start with `prefix`.
/// `Ok(None)` when none of the variables is set.
pub fn load(prefix: &str, env: Env) -> Result<Option<S3Credentials>, String> {
    let var = |name: &str| {
        let full = format!("{prefix}{name}");
        env(&full).filter(|v| !v.is_empty()).map(|v| (full, v))
    };
    let [json, dir, key_id, secret, token, region, default_region] = VARIABLES.map(|(name, _)| name);
    let creds = if let Some((name, path)) = var(json) {
        from_json_file(&name, Path::new(&path))?
    } else if let Some((name, path)) = var(dir) {
        let p = Path::new(&path);
        if p.is_dir() { from_dir(&name, p)? } else { from_json_file(&name, p)? }
    } else if let Some((name, key)) = var(key_id) {
        let (_, secret_value) = var(secret).ok_or_else(|| format!("{name} is set but {prefix}{secret} is not"))?;
        S3Credentials {
            access_key_id: key,
            secret_access_key: secret_value,
            session_token: var(token).map(|v| v.1),
            region: var(region).or_else(|| var(default_region)).map(|v| v.1),
            source: format!("{prefix}{key_id}/{prefix}{secret}"),
            ..S3Credentials::default()
        }
    } else if let Some((name, _)) = var(secret) {
        return Err(format!("{name} is set but {prefix}{key_id} is not"));
    } else {
        return Ok(None);
    };
    validate(&creds)?;
    Ok(Some(creds))
}

/// The endpoint's credentials with its chain: static keys (from `load`),
/// else a configured chain source (web identity, container endpoint, shared
/// files). `Ok(None)` when there is neither: the caller then falls back
/// (the secondary to the primary's) or to [`instance_metadata`].
pub fn resolve(prefix: &str, env: Env) -> Result<Option<S3Credentials>, String> {
    let mut spec = chain::ChainSpec::from_env(prefix, env);
    let region = [format!("{prefix}AWS_REGION"), format!("{prefix}AWS_DEFAULT_REGION")]
        .iter()
        .find_map(|n| env(n).filter(|v| !v.is_empty()));
    let mut creds = match load(prefix, env)? {
        Some(c) => c,
        None => {
            let sources = spec.sources()?;
            if !sources.iter().any(|s| !matches!(s, chain::Source::Imds { .. })) {
                return Ok(None);
            }
            S3Credentials { region, source: format!("{prefix}AWS_* credential chain"), ..S3Credentials::default() }
        }
    };
    spec.region = creds.region.clone();
    spec.json_web_identity = creds.chain.take().and_then(|c| c.json_web_identity);
    if !creds.access_key_id.is_empty() {
        let keys = chain::Keys {
            access_key_id: creds.access_key_id.clone(),
            secret_access_key: creds.secret_access_key.clone(),
            session_token: creds.session_token.clone(),
            expires: None,
        };
        spec.fixed = Some((keys, creds.source.clone()));
    }
    spec.sources()?;
    creds.chain = Some(spec);
    Ok(Some(creds))
}

/// The chain's last resort: instance metadata (IMDSv2), unless
/// `<prefix>AWS_EC2_METADATA_DISABLED=true`.
pub fn instance_metadata(prefix: &str, env: Env) -> Result<Option<S3Credentials>, String> {
    let mut spec = chain::ChainSpec::from_env(prefix, env);
    if spec.sources()?.is_empty() {
        return Ok(None);
    }
    let region = [format!("{prefix}AWS_REGION"), format!("{prefix}AWS_DEFAULT_REGION")]
        .iter()
        .find_map(|n| env(n).filter(|v| !v.is_empty()));
    spec.region = region.clone();
    Ok(Some(S3Credentials {
        region,
        source: format!("{prefix}AWS_EC2_METADATA_SERVICE_ENDPOINT (instance metadata)"),
        chain: Some(spec),
        ..S3Credentials::default()
    }))
}

fn from_json_file(var: &str, path: &Path) -> Result<S3Credentials, String> {
    let source = format!("{var}={}", path.display());
    let text = crate::userfile::read(path, crate::userfile::SMALL)
        .map_err(|e| format!("{source}: cannot read the credentials file: {e}"))?;
    let json: JsonCredentials = serde_json::from_slice(&text).map_err(|e| {
        // serde's message can quote a value, which may be a secret: keep only where and what kind.
        let what = match e.classify() {
            serde_json::error::Category::Data => "a field has the wrong type",
            serde_json::error::Category::Eof => "unexpected end of file",
            _ => "not valid JSON",
        };
        format!("{source}: malformed credentials JSON at line {} column {}: {what}", e.line(), e.column())
    })?;
    Ok(from_fields(json, source))
}

/// Upstream's secret-volume form: a `*.json` file, or one file per field.
fn from_dir(var: &str, dir: &Path) -> Result<S3Credentials, String> {
    let source = format!("{var}={}", dir.display());
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("{source}: cannot read the credentials directory: {e}"))?;
    let mut names: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    names.sort();
    let jsons: Vec<_> = names.iter().filter(|n| n.to_string_lossy().ends_with(".json")).collect();
    if let Some(json) = jsons.first() {
        // Upstream reads the first *.json in name order and ignores the rest;
        // the same file is read here, so a secret that works there works
        // here, but the choice is said out loud.
        if jsons.len() > 1 {
            let ignored: Vec<String> = jsons[1..].iter().map(|n| n.to_string_lossy().into_owned()).collect();
            log::warn!(
                "{source}: {} *.json files; using {} (the first by name, as upstream does), ignoring {}",
                jsons.len(),
                json.to_string_lossy(),
                ignored.join(", ")
            );
        }
        return from_json_file(var, &dir.join(json));
    }
    let field = |name: &str| -> Result<Option<String>, String> {
        let p = dir.join(name);
        match crate::userfile::read_to_string(&p, crate::userfile::SMALL) {
            Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{source}: cannot read {}: {e}", p.display())),
        }
    };
    let flag = |name: &str| -> Result<Option<bool>, String> {
        match field(name)? {
            None => Ok(None),
            Some(v) => v
                .parse::<bool>()
                .map(Some)
                .map_err(|_| format!("{var}: {} must be true or false", dir.join(name).display())),
        }
    };
    let json = JsonCredentials {
        access_key_id: field("accessKeyID")?,
        secret_access_key: field("secretAccessKey")?,
        session_token: field("sessionToken")?,
        region: field("region")?,
        endpoint: field("endpoint")?,
        s3_force_path_style: flag("s3ForcePathStyle")?,
        insecure_skip_verify: flag("insecureSkipVerify")?,
        trusted_ca_cert: field("trustedCaCert")?,
        sse_customer_key: field("sseCustomerKey")?,
        sse_customer_algorithm: field("sseCustomerAlgorithm")?,
        sse_kms_key_id: field("sseKMSKeyId")?,
        role_arn: field("roleARN")?,
        // Upstream's directory form: a `token` file is the web identity token.
        token_path: dir.join("token").is_file().then(|| dir.join("token").display().to_string()),
    };
    Ok(from_fields(json, source))
}

fn from_fields(j: JsonCredentials, source: String) -> S3Credentials {
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let web_identity = match (non_empty(j.role_arn.clone()), non_empty(j.token_path.clone())) {
        (Some(role), Some(token)) => Some((role, token, format!("{source} roleARN/tokenPath"))),
        _ => None,
    };
    S3Credentials {
        chain: web_identity.map(|w| chain::ChainSpec { json_web_identity: Some(w), ..Default::default() }),
        access_key_id: j.access_key_id.unwrap_or_default(),
        secret_access_key: j.secret_access_key.unwrap_or_default(),
        session_token: non_empty(j.session_token),
        region: non_empty(j.region),
        endpoint: non_empty(j.endpoint),
        force_path_style: j.s3_force_path_style,
        insecure_skip_verify: j.insecure_skip_verify.unwrap_or(false),
        trusted_ca_cert: non_empty(j.trusted_ca_cert),
        sse_customer_key: non_empty(j.sse_customer_key),
        sse_customer_algorithm: non_empty(j.sse_customer_algorithm),
        sse_kms_key_id: non_empty(j.sse_kms_key_id).map(|k| k.trim().to_string()),
        source: if j.role_arn.is_some() { format!("{source} (roleARN)") } else { source },
    }
}

fn validate(c: &S3Credentials) -> Result<(), String> {
    let web_identity = c.chain.as_ref().is_some_and(|ch| ch.json_web_identity.is_some());
    if c.source.ends_with("(roleARN)") && c.access_key_id.is_empty() && !web_identity {
        return Err(format!(
            "{}: roleARN needs tokenPath (or a token file), or give accessKeyID and secretAccessKey",
            c.source
        ));
    }
    if c.sse_customer_key.is_some() != c.sse_customer_algorithm.is_some() {
        return Err(format!("{}: sseCustomerKey and sseCustomerAlgorithm must be given together", c.source));
    }
    if web_identity && c.access_key_id.is_empty() {
        return Ok(());
    }
    if c.access_key_id.is_empty() {
        return Err(format!("{}: accessKeyID is missing or empty", c.source));
    }
    if c.secret_access_key.is_empty() {
        return Err(format!("{}: secretAccessKey is missing or empty", c.source));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    const JSON: &str = r#"{"accessKeyID":"AKID","secretAccessKey":"S3CR3T","region":"eu-west-1",
        "endpoint":"http://127.0.0.1:9","s3ForcePathStyle":true,"insecureSkipVerify":true,
        "trustedCaCert":"-----BEGIN CERTIFICATE-----","sseCustomerKey":"k","sseCustomerAlgorithm":"AES256","bucketName":"ignored"}"#;

    #[test]
    fn nothing_set_is_none() {
        assert_eq!(load("", &env_of(&[])).unwrap(), None);
        assert_eq!(
            load("SECONDARY_", &env_of(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")])).unwrap(),
            None
        );
    }

    #[test]
    fn plain_env_vars_with_prefix() {
        let env = env_of(&[
            ("SECONDARY_AWS_ACCESS_KEY_ID", "k2"),
            ("SECONDARY_AWS_SECRET_ACCESS_KEY", "s2"),
            ("SECONDARY_AWS_REGION", "us-west-2"),
            ("SECONDARY_AWS_SESSION_TOKEN", "t2"),
        ]);
        let c = load("SECONDARY_", &env).unwrap().unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str()), ("k2", "s2"));
        assert_eq!(c.region.as_deref(), Some("us-west-2"));
        assert_eq!(c.session_token.as_deref(), Some("t2"));
        let err = load("", &env_of(&[("AWS_ACCESS_KEY_ID", "k")])).unwrap_err();
        assert!(err.contains("AWS_SECRET_ACCESS_KEY is not"), "{err}");
    }

    #[test]
    fn json_file_and_dir_with_json_and_field_files_agree() {
        let d = crate::test_scratch::dir("cred-forms");
        let file = d.join("creds.json");
        std::fs::write(&file, JSON).unwrap();
        let dir_json = d.join("secret-json");
        std::fs::create_dir(&dir_json).unwrap();
        std::fs::write(dir_json.join("credentials.json"), JSON).unwrap();
        let dir_fields = d.join("secret-fields");
        std::fs::create_dir(&dir_fields).unwrap();
        for (k, v) in [
            ("accessKeyID", "AKID\n"),
            ("secretAccessKey", "S3CR3T"),
            ("region", "eu-west-1"),
            ("endpoint", "http://127.0.0.1:9"),
            ("s3ForcePathStyle", "true"),
            ("insecureSkipVerify", "true"),
            ("trustedCaCert", "-----BEGIN CERTIFICATE-----\n"),
            ("sseCustomerKey", "k"),
            ("sseCustomerAlgorithm", "AES256"),
        ] {
            std::fs::write(dir_fields.join(k), v).unwrap();
        }
        let mut seen = Vec::new();
        for (var, path) in [
            ("AWS_APPLICATION_CREDENTIALS_JSON", &file),
            ("AWS_APPLICATION_CREDENTIALS", &file),
            ("AWS_APPLICATION_CREDENTIALS", &dir_json),
            ("AWS_APPLICATION_CREDENTIALS", &dir_fields),
        ] {
            let c = load("", &env_of(&[(var, path.to_str().unwrap())])).unwrap().unwrap();
            assert_eq!(c.access_key_id, "AKID");
            assert_eq!(c.secret_access_key, "S3CR3T");
            assert_eq!(c.region.as_deref(), Some("eu-west-1"));
            assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9"));
            assert_eq!(c.force_path_style, Some(true));
            assert!(c.insecure_skip_verify);
            assert_eq!(c.sse_customer_algorithm.as_deref(), Some("AES256"));
            assert!(c.source.starts_with(var), "{}", c.source);
            seen.push(c);
        }
    }

    #[test]
    fn of_two_json_files_in_a_directory_the_first_by_name_is_read() {
        let d = crate::test_scratch::dir("cred-two-json");
        std::fs::write(d.join("b.json"), r#"{"accessKeyID":"from-b","secretAccessKey":"x"}"#).unwrap();
        std::fs::write(d.join("a.json"), r#"{"accessKeyID":"from-a","secretAccessKey":"x"}"#).unwrap();
        let c = load("", &env_of(&[("AWS_APPLICATION_CREDENTIALS", d.to_str().unwrap())])).unwrap().unwrap();
        assert_eq!(c.access_key_id, "from-a");
        assert!(c.source.ends_with("a.json"), "{}", c.source);
    }

    #[test]
    fn json_var_wins_over_directory_var() {
        let d = crate::test_scratch::dir("cred-order");
        let a = d.join("a.json");
        std::fs::write(&a, r#"{"accessKeyID":"from-json-var","secretAccessKey":"x"}"#).unwrap();
        let b = d.join("b.json");
        std::fs::write(&b, r#"{"accessKeyID":"from-dir-var","secretAccessKey":"x"}"#).unwrap();
        let env = env_of(&[
            ("AWS_APPLICATION_CREDENTIALS_JSON", a.to_str().unwrap()),
            ("AWS_APPLICATION_CREDENTIALS", b.to_str().unwrap()),
        ]);
        assert_eq!(load("", &env).unwrap().unwrap().access_key_id, "from-json-var");
    }

    #[test]
    fn errors_name_the_file_but_never_the_secret() {
        let d = crate::test_scratch::dir("cred-errors");
        let bad = d.join("bad.json");
        std::fs::write(&bad, r#"{"accessKeyID":"AKID","secretAccessKey":"TOPSECRET" "#).unwrap();
        let wrong_type = d.join("wrong.json");
        std::fs::write(&wrong_type, r#"{"accessKeyID":"AKID","secretAccessKey":"x","s3ForcePathStyle":"TOPSECRET"}"#)
            .unwrap();
        let no_secret = d.join("nosecret.json");
        std::fs::write(&no_secret, r#"{"accessKeyID":"TOPSECRET"}"#).unwrap();
        let missing = d.join("missing.json");
        for (path, want) in [
            (&bad, "malformed credentials JSON"),
            (&wrong_type, "wrong type"),
            (&no_secret, "secretAccessKey is missing"),
            (&missing, "cannot read"),
        ] {
            let err = load("SECONDARY_", &env_of(&[("SECONDARY_AWS_APPLICATION_CREDENTIALS", path.to_str().unwrap())]))
                .unwrap_err();
            assert!(err.contains(want), "{err}");
            assert!(err.contains("SECONDARY_AWS_APPLICATION_CREDENTIALS"), "{err}");
            assert!(err.contains(path.to_str().unwrap()), "{err}");
            assert!(!err.contains("TOPSECRET"), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = S3Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "S3CR3T".into(),
            session_token: Some("TOKEN".into()),
            sse_customer_key: Some("SSEKEY".into()),
            source: "AWS_ACCESS_KEY_ID".into(),
            ..Default::default()
        };
        let s = format!("{c:?}");
        for secret in ["AKID", "S3CR3T", "TOKEN", "SSEKEY"] {
            assert!(!s.contains(secret), "{s}");
        }
    }
}
