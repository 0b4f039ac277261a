//! `snapshot list`: the merged list of both endpoints on standard output,
//! one line per snapshot, or a JSON array with `--output json`.

use crate::catalog::Catalog;
use crate::flags::hiargs::ListConfig;
use log::error;

pub fn run(cfg: &ListConfig) -> i32 {
    let endpoints = match super::open(&cfg.endpoints) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let versions = cfg.all_versions.then(|| endpoints.all_versions()).flatten();
    if cfg.all_versions && versions.is_none() {
        log::warn!("--all-versions: no endpoint keeps object versions (only S3 does); listing the current objects");
    }
    let catalog = match Catalog::list(versions.as_ref().unwrap_or(&endpoints)) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return crate::exit::FAILED;
        }
    };
    let out = if cfg.json { to_json(&catalog) } else { to_text(&catalog) };
    print!("{out}");
    if catalog.failures.is_empty() { crate::exit::OK } else { crate::exit::DEGRADED }
}

fn to_text(catalog: &Catalog) -> String {
    let mut out = format!(
        "{:<44} {:<4} {:>12} {:>12} {:<20} {:>14} {}\n",
        "NAME", "KIND", "START", "LAST", "CREATED", "SIZE", "ON"
    );
    for e in &catalog.entries {
        let s = &e.snapshot;
        let size = e.primary_size.or(e.secondary_size).unwrap_or(0);
        out.push_str(&format!(
            "{:<44} {:<4} {:>12} {:>12} {:<20} {:>14} {}\n",
            // Names come from the server's listing: shown as data.
            crate::logging::escape_controls(&e.name),
            s.kind.name(),
            s.start_revision,
            s.last_revision,
            crate::time::unix_rfc3339(s.created),
            size,
            e.location()
        ));
    }
    out
}

fn to_json(catalog: &Catalog) -> String {
    let rows: Vec<serde_json::Value> = catalog
        .entries
        .iter()
        .map(|e| {
            let s = &e.snapshot;
            serde_json::json!({
                "name": e.name,
                "kind": s.kind.name(),
                "startRevision": s.start_revision,
                "lastRevision": s.last_revision,
                "createdOn": s.created,
                "compression": s.compression,
                "encrypted": s.encrypted,
                "isFinal": s.is_final,
                "location": e.location(),
                "sizes": { "primary": e.primary_size, "secondary": e.secondary_size },
            })
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&rows).expect("plain JSON values");
    out.push('\n');
    out
}
