//! Log lines as the spec shows them: `<UTC time> INFO <message>`, with the
//! upstream (logrus) four-letter level tags, on standard error.
//!
//! Every message is one line: messages carry text from outside (S3 error
//! messages, object names, etcd errors), and a newline or terminal escape in
//! it could forge a line or rewrite the screen, so control characters are
//! shown as visible escapes ([`escape_controls`]), here and wherever the
//! program prints outside the logger.

use log::{Level, LevelFilter};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;

use crate::time::utc_rfc3339;

pub fn init(level: LevelFilter) {
    let mut b = env_logger::Builder::new();
    // Our own lines at the chosen level; the libraries' only when tracing.
    let deps = if level == LevelFilter::Trace { LevelFilter::Debug } else { LevelFilter::Warn };
    b.filter_level(deps).filter_module("etcd_backup_restore", level);
    b.format(|buf, r| {
        let tag = match r.level() {
            Level::Error => "ERRO",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBU",
            Level::Trace => "TRAC",
        };
        let msg = r.args().to_string();
        writeln!(buf, "{} {tag} {}", utc_rfc3339(std::time::SystemTime::now()), escape_controls(&msg))
    });
    b.target(env_logger::Target::Stderr);
    let _ = b.try_init();
}

/// `s` with every control character (C0, DEL, C1) as a visible escape:
/// `\n`, `\r`, `\t`, else `\x1b` / `\u{9b}`. Borrowed when there is none.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_escapes() {
        assert!(matches!(escape_controls("plain text, ünïcode"), Cow::Borrowed(_)));
        let forged = "denied\n2026-01-01T00:00:00Z INFO Successfully restored\r\x1b[31mred\u{9b}2J\x7f\tend";
        let shown = escape_controls(forged);
        assert_eq!(
            shown,
            "denied\\n2026-01-01T00:00:00Z INFO Successfully restored\\r\\x1b[31mred\\u{9b}2J\\x7f\\tend"
        );
        assert!(!shown.chars().any(char::is_control));
    }
}
