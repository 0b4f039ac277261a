//! Store names from the command line, checked before anything is sent: an
//! S3 bucket name that breaks S3's naming rules, or a prefix with `.`/`..`
//! segments, would otherwise be turned into a URL path that the HTTP client
//! normalises into another bucket or another key than the one listed.

/// The S3 bucket naming rules: 3–63 characters of lowercase letters,
/// digits, `.` and `-`, starting and ending with a letter or digit, no `..`,
/// and not an IPv4 address.
pub fn check_bucket(name: &str) -> Result<(), String> {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let why = if !(3..=63).contains(&name.len()) {
        "must be 3 to 63 characters long"
    } else if let Some(c) =
        name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        return Err(format!(
            "bucket name {name:?} contains {c:?}: only lowercase letters, digits, '.' and '-' are allowed"
        ));
    } else if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        "must start and end with a lowercase letter or a digit"
    } else if name.contains("..") {
        "must not contain \"..\""
    } else if name.parse::<std::net::Ipv4Addr>().is_ok() {
        "must not be an IP address"
    } else {
        return Ok(());
    };
    Err(format!("bucket name {name:?} {why}"))
}

/// The prefix as stored: segments joined by `/`. A leading or trailing `/`
/// is dropped (`/etcd/` is `etcd`), as upstream's `path.Join` drops a
/// trailing one; empty, `.` and `..` segments and control characters are
/// refused rather than cleaned away, since a cleaned `..` is how a prefix
/// reached another bucket and a cleaned `.` a key that listing never finds.
pub fn check_prefix(prefix: &str) -> Result<String, String> {
    if let Some(c) = prefix.chars().find(|c| c.is_control()) {
        return Err(format!("prefix {prefix:?} contains the control character {c:?}"));
    }
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for segment in trimmed.split('/') {
        match segment {
            "" => return Err(format!("prefix {prefix:?} has an empty segment (\"//\")")),
            "." | ".." => return Err(format!("prefix {prefix:?} must not have a {segment:?} segment")),
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3_rules() {
        for ok in ["abc", "etcd-backups", "my.bucket.1", "0ab", &"a".repeat(63)] {
            assert_eq!(check_bucket(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("..", "3 to 63"),
            ("ab", "3 to 63"),
            (&"a".repeat(64), "3 to 63"),
            ("Upper", "'U'"),
            ("a_b", "'_'"),
            ("a/b", "'/'"),
            ("-abc", "start and end"),
            ("abc.", "start and end"),
            ("a..b", "\"..\""),
            ("192.168.1.1", "IP address"),
        ] {
            let err = check_bucket(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn prefixes_keep_their_segments_or_are_refused() {
        for (given, stored) in
            [("", ""), ("/", ""), ("etcd", "etcd"), ("/etcd/", "etcd"), ("a/b c/ü+%", "a/b c/ü+%"), ("...", "...")]
        {
            assert_eq!(check_prefix(given).as_deref(), Ok(stored), "{given:?}");
        }
        for bad in ["../other/x", "./dot", "a/./b", "a/..", "a//b", "tab\there", "nl\n"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
