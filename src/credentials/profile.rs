//! The AWS shared files (`~/.aws/credentials`, `~/.aws/config`): sections of
//! `key = value` lines. Only what the credential chain needs is read.

use std::collections::BTreeMap;

/// Profile name → its keys (lower case) and values.
pub type Profiles = BTreeMap<String, BTreeMap<String, String>>;

/// Parse one shared file. In the config file a section is `[profile NAME]`
/// (or `[default]`); in the credentials file it is `[NAME]`. Other section
/// kinds of the config file (`[sso-session x]`, `[services x]`) are skipped.
pub fn parse(text: &str, is_config: bool) -> Profiles {
    let mut out = Profiles::new();
    let mut current: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            let name = section.split(']').next().unwrap_or("").trim();
            current = if !is_config || name == "default" {
                Some(name.to_string())
            } else {
                name.strip_prefix("profile").filter(|r| r.starts_with([' ', '\t'])).map(|r| r.trim().to_string())
            };
            if let Some(c) = &current {
                out.entry(c.clone()).or_default();
            }
            continue;
        }
        // An indented line continues a nested block (`s3 =` and its settings): not ours.
        if raw.starts_with([' ', '\t']) {
            continue;
        }
        let (Some(profile), Some((key, value))) = (&current, line.split_once('=')) else {
            continue;
        };
        let mut value = value.trim();
        // An inline comment needs whitespace before it, as in the SDKs.
        if let Some(i) = value.find(" #").or_else(|| value.find(" ;")).or_else(|| value.find("\t#")) {
            value = value[..i].trim_end();
        }
        if let Some(p) = out.get_mut(profile) {
            p.insert(key.trim().to_ascii_lowercase(), value.to_string());
        }
    }
    out
}

/// A profile's keys: the config file's, overridden by the credentials
/// file's (the SDKs' precedence). `None` when neither file has it.
pub fn merged(config: &Profiles, credentials: &Profiles, name: &str) -> Option<BTreeMap<String, String>> {
    let (a, b) = (config.get(name), credentials.get(name));
    if a.is_none() && b.is_none() {
        return None;
    }
    let mut out = a.cloned().unwrap_or_default();
    out.extend(b.cloned().unwrap_or_default());
    Some(out)
}

/// What a profile gives credentials by.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Static {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
    WebIdentity {
        role_arn: String,
        token_file: String,
        session_name: Option<String>,
    },
    /// `role_arn` assumed with the credentials of `source_profile`.
    AssumeRole {
        role_arn: String,
        source_profile: String,
        session_name: Option<String>,
        external_id: Option<String>,
    },
}

/// How profile `name` gives credentials, in the SDKs' order: a role
/// (by web identity, or from a source profile) before static keys.
pub fn kind(name: &str, p: &BTreeMap<String, String>) -> Result<Kind, String> {
    let get = |k: &str| p.get(k).filter(|v| !v.is_empty()).cloned();
    if let Some(role_arn) = get("role_arn") {
        let session_name = get("role_session_name");
        if let Some(token_file) = get("web_identity_token_file") {
            return Ok(Kind::WebIdentity { role_arn, token_file, session_name });
        }
        if let Some(source_profile) = get("source_profile") {
            return Ok(Kind::AssumeRole { role_arn, source_profile, session_name, external_id: get("external_id") });
        }
        if get("credential_source").is_some() {
            return Err(format!("profile {name}: credential_source is not supported; use source_profile"));
        }
        return Err(format!("profile {name}: role_arn needs source_profile or web_identity_token_file"));
    }
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(access_key_id), Some(secret_access_key)) => {
            Ok(Kind::Static { access_key_id, secret_access_key, session_token: get("aws_session_token") })
        }
        (Some(_), None) => Err(format!("profile {name}: aws_access_key_id without aws_secret_access_key")),
        (None, Some(_)) => Err(format!("profile {name}: aws_secret_access_key without aws_access_key_id")),
        (None, None) => Err(format!("profile {name}: no credentials (no aws_access_key_id, no role_arn)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
# comment
[default]
region = eu-west-1

[profile deployer]
role_arn = arn:aws:iam::123456789012:role/deployer ; inline comment
source_profile = base
role_session_name=etcd
s3 =
  max_concurrent_requests = 20

[profile ci]
role_arn = arn:aws:iam::123456789012:role/ci
web_identity_token_file = /var/run/token

[sso-session corp]
sso_region = us-east-1

[profile broken]
role_arn = arn:aws:iam::1:role/x
credential_source = Ec2InstanceMetadata
";
    const CREDENTIALS: &str = "\
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = secret=with=equals

[base]
aws_access_key_id=AKIDBASE
aws_secret_access_key=SBASE
aws_session_token = TBASE
[profile not-a-profile-here]
aws_access_key_id = X
";

    #[test]
    fn sections_keys_comments_and_nesting() {
        let c = parse(CONFIG, true);
        assert_eq!(c.keys().collect::<Vec<_>>(), ["broken", "ci", "default", "deployer"]);
        let d = &c["deployer"];
        assert_eq!(d["role_arn"], "arn:aws:iam::123456789012:role/deployer");
        assert_eq!(d["role_session_name"], "etcd");
        assert!(!d.contains_key("max_concurrent_requests"));
        let k = parse(CREDENTIALS, false);
        assert_eq!(k["default"]["aws_secret_access_key"], "secret=with=equals");
        // In the credentials file the section name is the profile name as written.
        assert!(k.contains_key("profile not-a-profile-here"));
    }

    #[test]
    fn kinds_and_precedence() {
        let (c, k) = (parse(CONFIG, true), parse(CREDENTIALS, false));
        let default = merged(&c, &k, "default").unwrap();
        assert_eq!(default["region"], "eu-west-1");
        assert_eq!(
            kind("default", &default).unwrap(),
            Kind::Static {
                access_key_id: "AKIDDEFAULT".into(),
                secret_access_key: "secret=with=equals".into(),
                session_token: None
            }
        );
        assert_eq!(
            kind("deployer", &merged(&c, &k, "deployer").unwrap()).unwrap(),
            Kind::AssumeRole {
                role_arn: "arn:aws:iam::123456789012:role/deployer".into(),
                source_profile: "base".into(),
                session_name: Some("etcd".into()),
                external_id: None
            }
        );
        assert!(matches!(kind("ci", &merged(&c, &k, "ci").unwrap()).unwrap(), Kind::WebIdentity { .. }));
        let base = kind("base", &merged(&c, &k, "base").unwrap()).unwrap();
        assert!(matches!(base, Kind::Static { session_token: Some(ref t), .. } if t == "TBASE"));
        let err = kind("broken", &merged(&c, &k, "broken").unwrap()).unwrap_err();
        assert!(err.contains("credential_source is not supported"), "{err}");
        assert!(merged(&c, &k, "nope").is_none());
        // The credentials file wins over the config file for the same key.
        let mut both = parse("[profile p]\naws_access_key_id = FROMCONFIG\naws_secret_access_key = s", true);
        both.extend(parse("", false));
        let creds = parse("[p]\naws_access_key_id = FROMCREDS", false);
        assert_eq!(merged(&both, &creds, "p").unwrap()["aws_access_key_id"], "FROMCREDS");
    }
}
