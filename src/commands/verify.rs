//! `snapshot verify`: check that each endpoint's snapshots (and both
//! together) can be restored; the report on standard output, as text or
//! with `--output json`, and the exit code saying how many endpoints verify.

use crate::flags::hiargs::VerifyConfig;
use crate::verify::{Report, View};
use log::error;

pub fn run(cfg: &VerifyConfig) -> i32 {
    let endpoints = match super::open(&cfg.endpoints) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let report = match crate::verify::run(&endpoints, &cfg.options) {
        Ok(r) => r,
        Err(e) => {
            error!("{e}");
            return crate::exit::FAILED;
        }
    };
    print!("{}", if cfg.json { to_json(&report) } else { to_text(&report) });
    report.exit_code()
}

fn time(unix: u64) -> String {
    crate::time::utc_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
}

fn to_text(report: &Report) -> String {
    let mut out = String::new();
    for v in report.endpoints.iter().chain([&report.merged]) {
        let status = if v.verified() { "OK" } else { "FAILED" };
        let upto = match &v.restorable {
            Some(r) => format!("restorable up to revision {} ({}, {})", r.revision, r.snapshot, time(r.created)),
            None => "nothing restorable".into(),
        };
        out.push_str(&format!("{}: {status}: {} objects checked, {upto}\n", v.name(), v.checked));
        if let Some(deep) = &v.deep {
            out.push_str(&format!("  deep: {deep}\n"));
        }
        for p in &v.problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    out
}

fn view_json(v: &View) -> serde_json::Value {
    let r = v.restorable.as_ref();
    serde_json::json!({
        "endpoint": v.name(),
        "verified": v.verified(),
        "objectsChecked": v.checked,
        "lastVerifiedRevision": r.map(|r| r.revision),
        "lastVerifiedSnapshot": r.map(|r| r.snapshot.as_str()),
        "lastVerifiedTime": r.map(|r| time(r.created)),
        "deep": v.deep,
        "problems": v.problems.iter().map(|p| serde_json::json!({
            "endpoint": p.endpoint.map_or("both", |r| r.name()),
            "object": p.object,
            "problem": p.what,
        })).collect::<Vec<_>>(),
    })
}

fn to_json(report: &Report) -> String {
    let value = serde_json::json!({
        "endpoints": report.endpoints.iter().map(view_json).collect::<Vec<_>>(),
        "merged": view_json(&report.merged),
        "exitCode": report.exit_code(),
    });
    let mut out = serde_json::to_string_pretty(&value).expect("plain JSON values");
    out.push('\n');
    out
}
