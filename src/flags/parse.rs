//! argv → command + low-level arguments, and the help text, both driven by
//! the one flag table in `defs`; the credentials part of the help comes from
//! the credential loader's own list of variables.

use super::defs::{FLAGS, Flag, Group};
use super::lowargs::{LowArgs, Role};
use crate::credentials::{Env, VARIABLES};
use std::ffi::OsString;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Snapshot,
    Server,
    Restore,
    List,
    Gc,
    Reconcile,
    Verify,
    Copy,
}

impl Command {
    pub(super) fn words(self) -> &'static str {
        match self {
            Command::Snapshot => "snapshot",
            Command::Server => "server",
            Command::Restore => "restore",
            Command::List => "snapshot list",
            Command::Gc => "snapshot gc",
            Command::Reconcile => "snapshot reconcile",
            Command::Verify => "snapshot verify",
            Command::Copy => "copy",
        }
    }
    fn about(self) -> &'static str {
        match self {
            Command::Snapshot => {
                "Back up etcd to the primary and, when configured, the secondary endpoint at the same time: full \
                 snapshots on --schedule, delta snapshots of the changes in between, and garbage collection, until \
                 SIGTERM; or one full snapshot with --once."
            }
            Command::Server => {
                "Run the long-running `snapshot` (every flag of `snapshot` applies) and serve upstream's HTTP API \
                 on --server-port: /healthz, /metrics, /snapshot/latest, and /snapshot/full[?final=true] and \
                 /snapshot/delta to take one now. SIGTERM stops it after the final delta snapshot."
            }
            Command::Restore => {
                "Find the latest full snapshot and the delta snapshots after it on either endpoint (each from the \
                 primary when it has it), fetch them with failover to the other endpoint, verify them, and write an \
                 etcd data directory from them."
            }
            Command::List => "List the snapshots on both endpoints, merged, with where each one is stored.",
            Command::Gc => {
                "Run one garbage collection on both endpoints, as `snapshot` does every --garbage-collection-period, \
                 and exit; with --dry-run, only print what would be deleted."
            }
            Command::Reconcile => {
                "Copy every snapshot the garbage collection keeps that one endpoint lacks from the other endpoint, \
                 streamed and verified (SHA-256 trailer) before the copy completes, as `snapshot` does after each \
                 garbage collection; with --dry-run, only print what would be copied. Exit 0 when every copy needed \
                 was made, 1 when one failed."
            }
            Command::Verify => {
                "Check that the latest snapshot chain (--snapshot: the chain up to one snapshot; --all: every \
                 snapshot) can be restored from each endpoint on its own and from both together: every object \
                 present, as long as listed, its SHA-256 trailer matching, no gap in the chain. Exit 0 when every \
                 endpoint verifies, 3 when only one does, 1 when none does."
            }
            Command::Copy => {
                "Copy the snapshots of another location (the source: --source-* flags, SOURCE_* credentials) that \
                 the primary and, when configured, the secondary endpoint lack, as upstream's `copy` does: the newest \
                 --max-backups-to-copy full snapshots within --max-backup-age, each with its delta snapshots, \
                 streamed and verified (SHA-256 trailer) before the copy completes; a final snapshot is stored \
                 without its .final. An empty --source-store-prefix means --store-prefix, as upstream. Exit 0 when \
                 every destination holds every snapshot selected, 3 when one of two does, 1 when none does."
            }
        }
    }
}

#[derive(Debug)]
pub enum Parsed {
    Run(Command, Box<LowArgs>),
    Help(String),
    Version,
}

/// A command-line or configuration mistake: one line, exit code 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl From<String> for UsageError {
    fn from(s: String) -> Self {
        UsageError(s)
    }
}

/// A flag occurrence on the command line.
struct Given {
    flag: &'static Flag,
    role: Role,
    shown: String,
    value: String,
}

fn lookup(name: &str) -> Option<(&'static Flag, Role)> {
    let generated =
        [Role::Secondary, Role::Source].into_iter().find_map(|r| Some((name.strip_prefix(r.flag_prefix())?, r)));
    // Upstream's own `--secondary-backup-sync-*` are not generated ones.
    let generated = generated
        .and_then(|(base, role)| FLAGS.iter().find(|f| f.name == base && f.group == Group::Store).map(|f| (f, role)));
    generated.or_else(|| FLAGS.iter().find(|f| f.name == name).map(|f| (f, Role::Primary)))
}

fn utf8(v: OsString, what: &str) -> Result<String, UsageError> {
    v.into_string().map_err(|v| UsageError(format!("{what} is not valid UTF-8: {v:?}")))
}

pub fn parse(args: impl IntoIterator<Item = OsString>, env: Env) -> Result<Parsed, UsageError> {
    use lexopt::Arg::{Long, Short, Value};
    let mut p = lexopt::Parser::from_args(args);
    let (mut words, mut given, mut help, mut version) = (Vec::new(), Vec::new(), false, false);
    let lex = |e: lexopt::Error| UsageError(e.to_string());
    while let Some(arg) = p.next().map_err(lex)? {
        let (flag, role, shown) = match arg {
            Short('h') | Long("help") => {
                help = true;
                continue;
            }
            Short('v') | Long("version") => {
                version = true;
                continue;
            }
            Value(w) => {
                words.push(utf8(w, "argument")?);
                continue;
            }
            Short(c) => match FLAGS.iter().find(|f| f.short == Some(c)) {
                Some(f) => (f, Role::Primary, format!("-{c}")),
                None => return Err(UsageError(format!("unknown flag -{c} (see --help)"))),
            },
            Long(name) => match lookup(name) {
                Some((f, role)) => (f, role, format!("--{name}")),
                None => return Err(UsageError(format!("unknown flag --{name} (see --help)"))),
            },
        };
        let value = if flag.value.is_some() {
            let v = p.value().map_err(|_| UsageError(format!("{shown} needs a value")))?;
            utf8(v, &shown)?
        } else {
            match p.optional_value() {
                Some(v) => utf8(v, &shown)?,
                None => "true".to_string(),
            }
        };
        given.push(Given { flag, role, shown, value });
    }
    if version {
        return Ok(Parsed::Version);
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let (command, help) = match words.as_slice() {
        [] | ["help"] => {
            return if help || !words.is_empty() {
                Ok(Parsed::Help(top_help()))
            } else {
                Err(UsageError("missing command (see --help)".into()))
            };
        }
        ["help", rest @ ..] => (command_of(rest)?, true),
        rest => (command_of(rest)?, help),
    };
    if help {
        return Ok(Parsed::Help(command_help(command)));
    }
    Ok(Parsed::Run(command, Box::new(low_args(command, given, env)?)))
}

fn command_of(words: &[&str]) -> Result<Command, UsageError> {
    match words {
        ["snapshot"] => Ok(Command::Snapshot),
        ["server"] => Ok(Command::Server),
        ["snapshot", "list"] => Ok(Command::List),
        ["snapshot", "gc"] => Ok(Command::Gc),
        ["snapshot", "reconcile"] => Ok(Command::Reconcile),
        ["snapshot", "verify"] => Ok(Command::Verify),
        ["restore"] => Ok(Command::Restore),
        ["copy"] => Ok(Command::Copy),
        _ => Err(UsageError(format!("unknown command `{}` (see --help)", words.join(" ")))),
    }
}

/// Defaults, then environment fallbacks, then the command line.
fn low_args(command: Command, given: Vec<Given>, env: Env) -> Result<LowArgs, UsageError> {
    let mut low = LowArgs::default();
    for f in FLAGS {
        for &role in f.group.roles(command).iter().filter(|&&r| f.accepted_for(command, r)) {
            if let Some(d) = f.default {
                (f.set)(&mut low, role, d).unwrap_or_else(|e| panic!("default of --{}: {e}", f.name));
            }
            if let Some(var) = f.env {
                let var = format!("{}{var}", role.env_prefix());
                if let Some(v) = env(&var).filter(|v| !v.is_empty()) {
                    (f.set)(&mut low, role, &v)
                        .map_err(|e| UsageError(format!("invalid value {v:?} in {var}: {e}")))?;
                }
            }
        }
    }
    for g in given {
        if !g.flag.accepted_for(command, g.role) {
            return Err(UsageError(format!("{} is not a flag of `{}` (see --help)", g.shown, command.words())));
        }
        (g.flag.set)(&mut low, g.role, &g.value)
            .map_err(|e| UsageError(format!("invalid value {:?} for {}: {e}", g.value, g.shown)))?;
        if let Some(why) = g.flag.no_effect.filter(|_| !g.flag.used_for(command, g.role)) {
            let note = format!("{} has no effect here: {why}", g.shown);
            if !low.notes.contains(&note) {
                low.notes.push(note);
            }
        }
        if g.role == Role::Secondary {
            low.secondary_flags_given.push(g.shown);
        }
    }
    Ok(low)
}

pub fn top_help() -> String {
    format!(
        "etcd-backup-restore {}
Back up etcd to two S3-compatible endpoints in one streaming pass.

Usage: etcd-backup-restore <COMMAND> [FLAGS]

Commands:
  snapshot          Full snapshots on a schedule, delta snapshots in between, garbage collection
  snapshot --once   Take one full snapshot and store it on both endpoints
  server            snapshot, plus upstream's HTTP API (/healthz, /metrics, /snapshot/...)
  snapshot list     List the snapshots on both endpoints, merged
  snapshot gc       Delete old snapshots once, as the garbage collection does (--dry-run: only show)
  snapshot reconcile
                    Copy what one endpoint lacks from the other, verified (--dry-run: only show)
  snapshot verify   Check that each endpoint alone, and both together, can restore the latest chain
  restore           Write an etcd data directory from the latest snapshot on either endpoint
  copy              Copy the snapshots of a source location (--source-*) that the endpoints lack
  help [COMMAND]    Show the flags of a command

{}",
        env!("CARGO_PKG_VERSION"),
        footer()
    )
}

fn footer() -> String {
    let all = || VARIABLES.iter().chain(crate::credentials::chain::VARIABLES.iter());
    let width = all().map(|(name, _)| name.len()).max().unwrap_or(0) + 2;
    let vars: String = all().map(|(name, holds)| format!("  {name:width$}{holds}\n")).collect();
    format!(
        "Credentials, tried in this order (static keys, then the AWS SDK's chain; the secondary reads the same names with a SECONDARY_ prefix
and falls back to the primary's when it has none; copy's source reads them with a SOURCE_ prefix
and, as upstream, never falls back):
{vars}
Exit codes: 0 success, 1 failure, 2 usage or configuration error,
            3 stored on one endpoint only (with --require-all-endpoints),
              or only one endpoint verifies (snapshot verify),
              or only one of two destinations holds every snapshot (copy)"
    )
}

pub fn command_help(command: Command) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut out = format!("Usage: etcd-backup-restore {} [FLAGS]\n\n{}\n", command.words(), command.about());
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for group in Group::ALL {
        for &role in group.roles(command) {
            let flags: Vec<&Flag> = FLAGS.iter().filter(|f| f.group == group && f.used_for(command, role)).collect();
            if flags.is_empty() {
                continue;
            }
            let copy = command == Command::Copy;
            let title = match (group, role) {
                (Group::Store, Role::Source) => "Source store (copied from; read only)".to_string(),
                (Group::Store, Role::Primary) if copy => "Primary store (copied to)".to_string(),
                (Group::Store, Role::Primary) => "Primary store".to_string(),
                (Group::Store, Role::Secondary) if copy => {
                    "Secondary store (optional, copied to as well; needs --secondary-storage-provider)".to_string()
                }
                (Group::Store, Role::Secondary) => {
                    "Secondary store (optional; needs --secondary-storage-provider)".to_string()
                }
                _ => group.title().to_string(),
            };
            sections.push((title, flags.iter().map(|f| help_row(f, role)).collect()));
        }
    }
    for (_, r) in &sections {
        rows.extend(r.iter().cloned());
    }
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 2;
    for (title, flags) in sections {
        out.push_str(&format!("\n{title}:\n"));
        for (left, right) in flags {
            out.push_str(&format!("  {left:width$}{right}\n"));
        }
    }
    let compat: Vec<String> = FLAGS
        .iter()
        .filter(|f| f.no_effect.is_some() && f.accepted_by(command) && !f.uses.contains(&command))
        .map(|f| format!("--{}", f.name))
        .collect();
    if !compat.is_empty() {
        out.push_str(&format!(
            "\nAccepted as upstream accepts them, without effect here (one INFO line says why):\n{}",
            wrap(&compat, 100)
        ));
    }
    out.push_str(&format!("\n  -h, --help{:w$}Show this help\n\n{}\n", "", footer(), w = width.saturating_sub(8)));
    out
}

/// `words` as indented lines of at most `width` characters.
fn wrap(words: &[String], width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for w in words {
        if !line.is_empty() && line.len() + 1 + w.len() > width {
            out.push_str(&format!("  {line}\n"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    if !line.is_empty() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

fn help_row(f: &Flag, role: Role) -> (String, String) {
    let short = match f.short {
        Some(c) if role == Role::Primary => format!("-{c}, "),
        _ => "    ".to_string(),
    };
    let value = f.value.map(|v| format!(" {v}")).unwrap_or_default();
    let left = format!("{short}--{}{}{value}", role.flag_prefix(), f.name);
    let mut right = f.help.to_string();
    match f.default {
        Some(d) => right.push_str(&format!(" [default: {d}]")),
        None => right.push_str(" [default: none]"),
    }
    if let Some(var) = f.env {
        right.push_str(&format!(" [env: {}{var}]", role.env_prefix()));
    }
    (left, right)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn run(args: &[&str]) -> Result<LowArgs, UsageError> {
        match parse(args.iter().map(OsString::from), &no_env)? {
            Parsed::Run(Command::Snapshot, low) => Ok(*low),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_come_from_the_table() {
        let low = run(&["snapshot"]).unwrap();
        assert_eq!(low.etcd.endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(low.etcd.connection_timeout.as_secs(), 30);
        assert_eq!(low.etcd.snapshot_timeout.as_secs(), 900);
        assert!(low.etcd.insecure_transport && !low.etcd.insecure_skip_tls_verify);
        // The source (`copy` only) gets its defaults in `copy`.
        for s in &low.stores[..2] {
            assert_eq!((s.max_parallel_chunk_uploads, s.min_chunk_size), (5, 5 << 20));
        }
        assert_eq!(low.log_level, Some(log::LevelFilter::Info));
    }

    #[test]
    fn both_value_forms_and_generated_secondary_flags() {
        let low = run(&[
            "snapshot",
            "--once",
            "--min-chunk-size=8Mi",
            "--secondary-min-chunk-size",
            "6291456",
            "--secondary-max-parallel-chunk-uploads=3",
            "-e",
            "a:1,b:2",
            "--insecure-transport=false",
        ])
        .unwrap();
        assert!(low.once);
        assert_eq!(low.stores[0].min_chunk_size, 8 << 20);
        assert_eq!(low.stores[1].min_chunk_size, 6 << 20);
        assert_eq!(low.stores[1].max_parallel_chunk_uploads, 3);
        assert_eq!(low.stores[0].max_parallel_chunk_uploads, 5);
        assert_eq!(low.etcd.endpoints, vec!["a:1", "b:2"]);
        assert!(!low.etcd.insecure_transport);
        assert_eq!(
            low.secondary_flags_given,
            vec!["--secondary-min-chunk-size", "--secondary-max-parallel-chunk-uploads"]
        );
    }

    #[test]
    fn env_fallback_per_role_and_flag_wins() {
        let env = |k: &str| match k {
            "STORAGE_CONTAINER" => Some("from-env".to_string()),
            "SECONDARY_STORAGE_CONTAINER" => Some("second-env".to_string()),
            _ => None,
        };
        let Parsed::Run(_, low) = parse(["snapshot"].map(OsString::from), &env).unwrap() else { panic!() };
        assert_eq!(low.stores[0].container.as_deref(), Some("from-env"));
        assert_eq!(low.stores[1].container.as_deref(), Some("second-env"));
        assert!(low.secondary_flags_given.is_empty());
        let Parsed::Run(_, low) = parse(["snapshot", "--store-container=flag"].map(OsString::from), &env).unwrap()
        else {
            panic!()
        };
        assert_eq!(low.stores[0].container.as_deref(), Some("flag"));
    }

    #[test]
    fn one_line_errors_name_the_flag() {
        for (args, want) in [
            (&["snapshot", "--bogus"][..], "unknown flag --bogus"),
            (&["snapshot", "--secondary-endpoints=x"], "unknown flag --secondary-endpoints"),
            (&["snapshot", "--min-chunk-size=1"], "--min-chunk-size: must be at least 5242880"),
            (&["snapshot", "--secondary-min-chunk-size=1"], "--secondary-min-chunk-size"),
            (&["snapshot", "--max-parallel-chunk-uploads=0"], "--max-parallel-chunk-uploads"),
            (&["snapshot", "--etcd-connection-timeout=soon"], "--etcd-connection-timeout"),
            (&["snapshot", "--log-level=loud"], "--log-level"),
            (&["snapshot", "--once=maybe"], "--once"),
            (&["snapshot", "--store-prefix"], "--store-prefix needs a value"),
            (&["restoration"], "unknown command `restoration`"),
            (&[], "missing command"),
        ] {
            let err = parse(args.iter().map(OsString::from), &no_env).unwrap_err().0;
            assert!(err.contains(want), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn help_lists_every_flag_of_each_command_for_both_roles_with_defaults() {
        for (words, command) in [
            (&["snapshot"][..], Command::Snapshot),
            (&["restore"], Command::Restore),
            (&["snapshot", "list"], Command::List),
            (&["server"], Command::Server),
        ] {
            let mut args: Vec<&str> = words.to_vec();
            args.push("--help");
            let Parsed::Help(h) = parse(args.iter().map(OsString::from), &no_env).unwrap() else { panic!() };
            for f in FLAGS.iter().filter(|f| f.uses(command)) {
                let row = h.lines().find(|l| l.starts_with("  ") && l.contains(&format!("--{} ", f.name)));
                let row = row.unwrap_or_else(|| panic!("{words:?}: --{} missing", f.name));
                assert!(row.contains("[default: "), "{row}");
                if f.group == Group::Store {
                    assert!(h.contains(&format!("--secondary-{}", f.name)), "--secondary-{}", f.name);
                }
            }
        }
        let Parsed::Help(h) = parse(["snapshot", "--help"].map(OsString::from), &no_env).unwrap() else { panic!() };
        assert!(h.contains("[default: 5242880]"));
        assert!(h.contains("[env: SECONDARY_STORAGE_CONTAINER]"));
        assert!(!h.contains("--data-dir DIR"), "restore flags are not snapshot flags");
        let Parsed::Help(top) = parse(["help"].map(OsString::from), &no_env).unwrap() else { panic!() };
        assert!(top.contains("snapshot --once") && top.contains("restore"));
    }

    /// Every command accepts exactly the flags it accepted when acceptance
    /// went by help section; the table below is that old rule.
    #[test]
    fn accepted_flags_per_command_are_unchanged() {
        use Group::*;
        for (command, groups) in [
            (Command::Snapshot, &[Global, Etcd, Store, Snapshot, Gc][..]),
            (Command::Restore, &[Global, Store, Restore]),
            (Command::List, &[Global, Store, List]),
            (Command::Gc, &[Global, Store, Gc, GcOnce]),
            (Command::Reconcile, &[Global, Store, Gc, GcOnce]),
            (Command::Verify, &[Global, Store, Choice, List]),
            (Command::Copy, &[Global, Store, Copy]),
            (Command::Server, &[Global, Etcd, Store, Snapshot, Gc, Server]),
        ] {
            for f in FLAGS {
                // Reconcile's copies count in the metrics file too; `--snapshot`
                // moved to its own group when verify took it too; `--deep`
                // is verify's, and snapshot's for its scheduled verify.
                let extra = (command == Command::Reconcile && f.name == "metrics-file")
                    || (command == Command::Restore && f.name == "snapshot")
                    || (matches!(command, Command::Snapshot | Command::Server) && f.name == "deep");
                // `copy` came later, and no endpoint of its waits for another.
                let except = command == Command::Copy && f.name == "max-endpoint-lag"
                    // Only the commands that read snapshot content take the age identity.
                    || f.name == "identity-file" && [Command::List, Command::Gc].contains(&command)
                    // Versions are listed, never verified.
                    || f.name == "all-versions" && command == Command::Verify;
                // Upstream's flags without effect here, and the restore flags
                // upstream's server takes, which `snapshot` now accepts too.
                let long_running = matches!(command, Command::Snapshot | Command::Server);
                let extra = extra
                    || (f.group == Upstream && (long_running || command == Command::Restore))
                    || (f.group == Restore && long_running && f.no_effect.is_some());
                assert_eq!(
                    f.accepted_by(command),
                    (groups.contains(&f.group) || extra) && !except,
                    "--{} in {command:?}",
                    f.name
                );
            }
        }
    }

    #[test]
    fn help_lists_only_the_flags_a_command_uses_but_it_accepts_upstreams() {
        let help = |words: &[&str]| {
            let args = words.iter().chain(&["--help"]).map(OsString::from);
            let Parsed::Help(h) = parse(args, &no_env).unwrap() else { panic!() };
            h
        };
        for words in [&["restore"][..], &["snapshot", "list"], &["snapshot", "gc"]] {
            let h = help(words);
            assert!(!h.contains("--min-chunk-size") && !h.contains("--max-parallel-chunk-uploads"), "{words:?}");
            assert!(h.contains("--secondary-chunk-upload-timeout"), "{words:?}");
        }
        assert!(!help(&["snapshot", "gc"]).contains("--garbage-collection-period DURATION"));
        assert!(help(&["snapshot"]).contains("--secondary-min-chunk-size"));
        // Upstream's restore takes every snapstore flag: accepted, ignored.
        let args = ["restore", "--min-chunk-size=6Mi", "--secondary-max-parallel-chunk-uploads=2"];
        assert!(matches!(parse(args.map(OsString::from), &no_env), Ok(Parsed::Run(Command::Restore, _))));
    }

    #[test]
    fn help_footer_lists_what_the_credential_loader_reads() {
        for (name, _) in VARIABLES {
            assert!(top_help().contains(&format!("\n  {name} ")), "{name}");
            assert!(command_help(Command::Restore).contains(&format!("\n  {name} ")), "{name}");
        }
    }

    fn copy(args: &[&str], env: Env) -> Result<LowArgs, UsageError> {
        let args = ["copy"].iter().chain(args).map(OsString::from);
        match parse(args, env)? {
            Parsed::Run(Command::Copy, low) => Ok(*low),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn copy_generates_every_source_store_flag_and_source_env() {
        for f in FLAGS.iter().filter(|f| f.group == Group::Store) {
            let (found, role) = lookup(&format!("source-{}", f.name)).unwrap_or_else(|| panic!("--source-{}", f.name));
            assert_eq!((found.name, role), (f.name, Role::Source));
        }
        let env = |k: &str| match k {
            "SOURCE_STORAGE_CONTAINER" => Some("src-env".to_string()),
            "STORAGE_CONTAINER" => Some("dst-env".to_string()),
            _ => None,
        };
        let low = copy(&["--source-store-prefix=old", "--source-chunk-upload-attempts=2"], &env).unwrap();
        let src = &low.stores[Role::Source as usize];
        assert_eq!((src.container.as_deref(), src.prefix.as_str()), (Some("src-env"), "old"));
        assert_eq!((src.chunk_upload_attempts, src.min_chunk_size), (2, 5 << 20), "defaults per role");
        assert_eq!(low.stores[Role::Primary as usize].container.as_deref(), Some("dst-env"));
        assert_eq!(low.stores[Role::Primary as usize].chunk_upload_attempts, 6);
        let low = copy(&["--source-store-container=flag"], &env).unwrap();
        assert_eq!(low.stores[Role::Source as usize].container.as_deref(), Some("flag"), "the flag wins");
        // Upstream's copy takes the upload flags for its source too: accepted, ignored.
        assert!(copy(&["--source-min-chunk-size=6Mi", "--source-max-parallel-chunk-uploads=2"], &no_env).is_ok());
        // Only `copy` has a source.
        let err = parse(["snapshot", "--source-store-prefix=x"].map(OsString::from), &no_env).unwrap_err().0;
        assert!(err.contains("--source-store-prefix is not a flag of `snapshot`"), "{err}");
        let err = parse(["restore"].map(OsString::from), &|k: &str| {
            (k == "SOURCE_STORAGE_CONTAINER").then(|| "ignored".to_string())
        });
        assert!(err.is_ok(), "SOURCE_* means nothing to other commands");
    }

    #[test]
    fn copier_flags_have_upstreams_defaults_and_bounds() {
        let low = copy(&[], &no_env).unwrap();
        let c = &low.copy;
        assert_eq!((c.max_backups, c.max_age_days, c.parallel), (None, None, 10));
        assert_eq!((c.wait_for_final, c.wait_timeout), (false, std::time::Duration::ZERO));
        let low = copy(
            &[
                "--max-backups-to-copy=1",
                "--max-backup-age=0",
                "--max-parallel-copy-operations=64",
                "--wait-for-final-snapshot",
                "--wait-for-final-snapshot-timeout=90s",
            ],
            &no_env,
        )
        .unwrap();
        let c = &low.copy;
        assert_eq!((c.max_backups, c.max_age_days, c.parallel), (Some(1), Some(0), 64));
        assert_eq!((c.wait_for_final, c.wait_timeout.as_secs()), (true, 90));
        for (arg, want) in [
            ("--max-backups-to-copy=-2", "--max-backups-to-copy"),
            ("--max-backups-to-copy=all", "expected -1 or a whole number"),
            ("--max-backup-age=-3", "--max-backup-age"),
            ("--max-parallel-copy-operations=0", "greater than 0"),
            ("--max-parallel-copy-operations=65", "at most 64"),
            ("--wait-for-final-snapshot-timeout=soon", "--wait-for-final-snapshot-timeout"),
            ("--wait-for-final-snapshot=maybe", "--wait-for-final-snapshot"),
            ("--max-endpoint-lag=1s", "is not a flag of `copy`"),
        ] {
            let err = copy(&[arg], &no_env).unwrap_err().0;
            assert!(err.contains(want) && !err.contains('\n'), "{arg}: {err}");
        }
        let err = parse(["snapshot", "--max-backups-to-copy=1"].map(OsString::from), &no_env).unwrap_err().0;
        assert!(err.contains("is not a flag of `snapshot`"), "{err}");
    }

    #[test]
    fn copy_help_lists_only_what_copy_uses() {
        let Parsed::Help(h) = parse(["copy", "--help"].map(OsString::from), &no_env).unwrap() else { panic!() };
        for flag in [
            "--source-storage-provider",
            "--source-store-container",
            "--source-store-prefix",
            "--source-store-endpoint-override",
            "--source-chunk-upload-attempts",
            "--store-prefix",
            "--secondary-store-prefix",
            "--min-chunk-size",
            "--secondary-max-parallel-chunk-uploads",
            "--max-backups-to-copy",
            "--max-backup-age",
            "--max-parallel-copy-operations",
            "--wait-for-final-snapshot ",
            "--wait-for-final-snapshot-timeout",
        ] {
            assert!(h.contains(flag), "{flag} missing:\n{h}");
        }
        for flag in
            ["--source-min-chunk-size", "--source-max-parallel-chunk-uploads", "--max-endpoint-lag", "--data-dir"]
        {
            assert!(!h.contains(flag), "{flag} listed:\n{h}");
        }
        assert!(h.contains("[env: SOURCE_STORAGE_CONTAINER]") && h.contains("Source store"), "{h}");
        assert!(top_help().contains("\n  copy "), "{}", top_help());
    }

    /// The `backup-restore` container's args of upstream's Helm chart
    /// (gardener/etcd-backup-restore, chart/etcd-backup-restore/templates/etcd-statefulset.yaml),
    /// verbatim, with the chart's values filled in: the TLS branch, and the
    /// others with every optional value set. `--server-cert`/`--server-key`
    /// (TLS of upstream's HTTP server) are `server`'s, not `snapshot`'s.
    const CHART: &[&str] = &[
        "--schedule=0 */24 * * *",
        "--max-backups=7",
        "--garbage-collection-policy=LimitBased",
        "--garbage-collection-period=1m",
        "--data-dir=/var/etcd/data/new.etcd",
        "--storage-provider=S3",
        "--store-prefix=etcd-main-etcd",
        "--embedded-etcd-quota-bytes=8589934592",
        "--cert=/var/etcd/ssl/tls/tls.crt",
        "--key=/var/etcd/ssl/tls/tls.key",
        "--cacert=/var/etcd/ssl/ca/ca.crt",
        "--insecure-transport=false",
        "--insecure-skip-tls-verify=false",
        "--endpoints=https://etcd-main-etcd-0:2379",
        "--defragmentation-schedule=0 0 */3 * *",
        "--etcd-connection-timeout=30s",
        "--etcd-snapshot-timeout=8m",
        "--etcd-defrag-timeout=8m",
        "--delta-snapshot-period=60s",
        "--delta-snapshot-memory-limit=104857600",
        "--etcd-username=root",
        "--etcd-password=secret",
        "--compress-snapshots=true",
        "--compression-policy=gzip",
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=30m",
    ];

    #[test]
    fn upstream_chart_flags_parse_for_snapshot_server_and_restore() {
        // The chart runs `server`; its TLS branch adds the HTTP API's certificate.
        let tls = ["--server-cert=/var/etcdbr/ssl/tls.crt", "--server-key=/var/etcdbr/ssl/tls.key"];
        let args = ["server"].iter().chain(CHART).chain(&tls).map(OsString::from);
        let Parsed::Run(Command::Server, low) = parse(args, &no_env).unwrap() else { panic!() };
        assert_eq!((low.defrag_schedule.as_str(), low.notes.len()), ("0 0 */3 * *", 4), "{:?}", low.notes);
        let args = ["snapshot"].iter().chain(CHART).map(OsString::from);
        let Parsed::Run(Command::Snapshot, low) = parse(args, &no_env).unwrap() else { panic!() };
        assert_eq!(low.defrag_schedule, "0 0 */3 * *");
        assert_eq!(low.defrag_timeout.as_secs(), 480);
        assert_eq!(low.etcd.endpoints, vec!["https://etcd-main-etcd-0:2379"]);
        assert_eq!((low.gc_policy.as_str(), low.max_backups), ("LimitBased", 7));
        let noted: Vec<&str> = low.notes.iter().map(|n| n.split(' ').next().unwrap()).collect();
        assert_eq!(
            noted,
            ["--data-dir", "--embedded-etcd-quota-bytes", "--auto-compaction-mode", "--auto-compaction-retention"]
        );
        assert!(low.notes[0].contains("has no effect here: only restore writes a data directory"), "{:?}", low.notes);
        // Upstream's `restore` takes the restoration and snapstore flags among them.
        let restore_flags = ["--data-dir", "--storage-provider", "--store-prefix", "--embedded-etcd-quota-bytes"];
        let restore_flags =
            CHART.iter().filter(|a| restore_flags.iter().chain(&["--auto-compaction"]).any(|f| a.starts_with(f)));
        let args = ["restore"].iter().chain(restore_flags).map(OsString::from);
        let Parsed::Run(Command::Restore, low) = parse(args, &no_env).unwrap() else { panic!() };
        assert_eq!(low.restore.data_dir, std::path::PathBuf::from("/var/etcd/data/new.etcd"));
        assert_eq!(low.notes.len(), 3, "{:?}", low.notes);
        // Every upstream flag of the kind, with upstream's defaults as values.
        for f in FLAGS.iter().filter(|f| f.group == Group::Upstream) {
            let arg = format!("--{}={}", f.name, f.default.unwrap_or("x"));
            for command in ["snapshot", "restore"] {
                let r = parse([command, arg.as_str()].map(OsString::from), &no_env);
                assert!(matches!(r, Ok(Parsed::Run(..))), "{command} {arg}: {r:?}");
            }
        }
        let args = ["snapshot", "--max-fetchers=3", "--max-fetchers=3", "--secondary-backup-sync-enabled"];
        let Parsed::Run(_, low) = parse(args.map(OsString::from), &no_env).unwrap() else { panic!() };
        assert_eq!(low.notes.len(), 2, "one line per flag: {:?}", low.notes);
        assert!(low.notes[1].starts_with("--secondary-backup-sync-enabled has no effect here"));
        // The backoff flags act: the long-running snapshot's retry waits.
        let args = ["snapshot", "--backoff-multiplier=3", "--backoff-attempt-limit=2", "--backoff-threshold-time=7s"];
        let Parsed::Run(_, low) = parse(args.map(OsString::from), &no_env).unwrap() else { panic!() };
        let b = low.backoff;
        assert_eq!((b.wait(1).as_secs(), b.wait(2).as_secs(), b.wait(3).as_secs()), (1, 3, 7));
        assert!(low.notes.is_empty(), "{:?}", low.notes);
    }

    #[test]
    fn numeric_log_levels_are_logrus_levels() {
        use log::LevelFilter::*;
        for (n, level) in
            [("0", Error), ("2", Error), ("3", Warn), ("4", Info), ("5", Debug), ("6", Trace), ("warn", Warn)]
        {
            let arg = format!("--log-level={n}");
            let low = run(&["snapshot", &arg]).unwrap();
            assert_eq!(low.log_level, Some(level), "{n}");
        }
        assert!(run(&["snapshot", "--log-level=7"]).is_err());
    }

    #[test]
    fn help_names_the_flags_without_effect() {
        let h = command_help(Command::Restore);
        assert!(h.contains("--embedded-etcd-quota-bytes") && h.contains("without effect here"), "{h}");
        assert!(!h.contains("--embedded-etcd-quota-bytes BYTES"), "not listed as a flag of its own: {h}");
        assert!(command_help(Command::Snapshot).contains("--defragmentation-schedule CRON"));
    }

    /// A definition without its own `set` keeps `Flag::DEFAULT`'s, which fails.
    #[test]
    fn every_flag_sets_something() {
        for f in FLAGS {
            let mut low = LowArgs::default();
            let any = match f.value {
                Some("URLS") => "127.0.0.1:2379",
                Some("CRON") => "@hourly",
                Some("MODE") => "GOVERNANCE",
                Some("DURATION") => "1h",
                _ => "x",
            };
            (f.set)(&mut low, Role::Primary, f.default.unwrap_or(any)).unwrap_or_else(|e| panic!("--{}: {e}", f.name));
        }
    }
}
