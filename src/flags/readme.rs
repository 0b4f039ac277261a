//! README.md's flag and credential tables, rendered from `defs::FLAGS` and
//! `credentials::VARIABLES` so the README cannot drift from the code. The
//! test below fails when README.md's copy differs; `EBR_UPDATE_README=1
//! cargo test --lib readme` rewrites it.

use super::defs::{ALL, FLAGS};
use super::lowargs::Role;
use crate::credentials::VARIABLES;

/// Markdown-escape help text: it has `<prefix>`, `*.json` and the like.
fn md(text: &str) -> String {
    text.chars().flat_map(|c| if matches!(c, '\\' | '<' | '*' | '|') { vec!['\\', c] } else { vec![c] }).collect()
}

/// `| flag | default | commands | meaning |`, one row per flag, in `FLAGS` order.
pub fn flag_table() -> String {
    let mut out = String::from("| flag | default | commands | meaning |\n|---|---|---|---|\n");
    for f in FLAGS {
        let short = f.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        let mut default: Vec<String> = f.default.iter().filter(|d| !d.is_empty()).map(|d| format!("`{d}`")).collect();
        default.extend(f.env.map(|e| format!("env `{e}`")));
        let commands = if f.uses.len() == ALL.len() {
            "all".to_string()
        } else {
            ALL.iter()
                .filter(|&&c| f.used_for(c, Role::Primary))
                .map(|c| format!("`{}`", c.words()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut help = md(f.help);
        if let Some(why) = f.no_effect {
            let ignoring: Vec<String> = f.ignored_by.iter().map(|c| format!("`{}`", c.words())).collect();
            help.push_str(&format!(" Accepted without effect by {}: {}.", ignoring.join(", "), md(why)));
        }
        let commands = if commands.is_empty() { "none".to_string() } else { commands };
        out.push_str(&format!("| `{short}--{}` | {} | {commands} | {help} |\n", f.name, default.join(", ")));
    }
    out
}

/// `| variable | content |`, in the order the loader tries them.
pub fn credential_table() -> String {
    let mut out = String::from("| variable | content |\n|---|---|\n");
    for (name, holds) in VARIABLES.iter().chain(crate::credentials::chain::VARIABLES.iter()) {
        out.push_str(&format!("| `{name}` | {} |\n", md(holds)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replace what follows the `<!-- {tag}:begin ... -->` line up to
    /// `<!-- {tag}:end -->` with `body`.
    fn splice(readme: &str, tag: &str, body: &str) -> String {
        let begin = format!("<!-- {tag}:begin");
        let end = format!("<!-- {tag}:end -->");
        let start = readme.find(&begin).unwrap_or_else(|| panic!("README.md has no `{begin} -->` marker"));
        let start = start + readme[start..].find('\n').expect("a line after the begin marker") + 1;
        let stop = readme[start..].find(&end).unwrap_or_else(|| panic!("README.md has no `{end}` marker")) + start;
        format!("{}{body}{}", &readme[..start], &readme[stop..])
    }

    #[test]
    fn readme_tables_match_the_definitions() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = std::fs::read_to_string(&file).unwrap();
        let rendered = splice(&splice(&readme, "flags", &flag_table()), "credentials", &credential_table());
        if rendered == readme {
            return;
        }
        if std::env::var_os("EBR_UPDATE_README").is_some() {
            std::fs::write(&file, rendered).unwrap();
            return;
        }
        panic!(
            "README.md's flag or credential table differs from src/flags/defs.rs and src/credentials.rs; \
             regenerate it with `EBR_UPDATE_README=1 cargo test --lib readme`"
        );
    }

    #[test]
    fn markdown_escapes() {
        assert_eq!(md("<prefix>/v2/*.json a|b"), "\\<prefix>/v2/\\*.json a\\|b");
    }
}
