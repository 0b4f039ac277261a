//! `copy`: upstream's copier on this tool's verified copy. The snapshots of
//! a source location (`--source-*`) that a destination (the primary, and the
//! secondary when configured) lacks are copied to it with
//! [`reconcile::copy_as`]: ranged GETs streamed into a multipart upload,
//! completed only when etcd's SHA-256 trailer matches, so a bad source
//! object never becomes a bad copy.
//!
//! What is copied mirrors gardener/etcd-backup-restore
//! `pkg/snapshot/copier/copier.go` (`copyBackups`, `getSnapshots`,
//! `doWaitForFinalSnapshot`) and `pkg/miscellaneous` (`GetFilteredBackups`,
//! `getStructuredBackupList`); see [`select`] and [`wait_for_final`].
//! Unlike upstream, a final snapshot's name is compared without `.final` on
//! both sides (upstream strips it from the source name only), the copies
//! start in a fixed order (upstream starts them in parallel in any order),
//! and a destination that refuses a write is given up for this run.

use crate::catalog::{self, Entry};
use crate::endpoint::{Endpoint, Role};
use crate::reconcile::{self, Failure};
use crate::record;
use crate::snapshot::{Kind, SnapshotName};
use log::{debug, error, info, warn};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Whether to wait for a final full snapshot on the source before copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitForFinal {
    No,
    /// `--wait-for-final-snapshot-timeout=0`: upstream sets no deadline.
    Forever,
    AtMost(Duration),
}

/// `copy`'s own settings (upstream's copier options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `--max-backups-to-copy`; `None` is upstream's -1 (all).
    pub max_backups: Option<u64>,
    /// `--max-backup-age` in days; `None` is upstream's -1 (any age).
    pub max_age_days: Option<u64>,
    /// `--max-parallel-copy-operations`, over all destinations.
    pub parallel: usize,
    pub wait_for_final: WaitForFinal,
}

/// How often the source is listed while waiting for a final snapshot
/// (upstream's `finalSnapshotCheckInterval`).
pub const FINAL_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// What one run did for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub role: Role,
    /// The destination could be listed (else nothing was copied to it).
    pub listed: bool,
    /// Selected snapshots it held already.
    pub present: usize,
    /// Selected snapshots it lacked.
    pub needed: usize,
    pub copied: usize,
    /// Copies that failed (a bad or unreadable source object, a refused write).
    pub failed: usize,
}

impl Summary {
    /// The destination now holds every selected snapshot.
    pub fn complete(&self) -> bool {
        self.listed && self.copied == self.needed
    }
}

/// Upstream's `GetFilteredBackups` on the source's list (in
/// [`catalog::order`], oldest first): each full snapshot with the delta
/// snapshots after it up to the next full snapshot is one backup (deltas
/// before the first full snapshot belong to none and are never copied);
/// backups are taken newest full snapshot first (by creation time); a
/// backup whose full snapshot is not created after `now` minus
/// `max_age_days` × 24 h is skipped (upstream's
/// `CreatedOn.After(now.AddDate(0, 0, -age))`, in UTC, so whole 24-hour
/// days; a delta's own age does not matter) and does not count; the first
/// `max_backups` backups that pass are taken (0 takes none).
///
/// Returns the snapshots to copy, newest backup first (so an interrupted
/// copy has the latest restorable chain soonest), each backup's full
/// snapshot before its deltas, the deltas in order.
pub fn select(entries: &[Entry], now: u64, max_backups: Option<u64>, max_age_days: Option<u64>) -> Vec<&Entry> {
    let mut backups: Vec<(&Entry, Vec<&Entry>)> = Vec::new();
    let mut deltas: Vec<&Entry> = Vec::new();
    for e in entries.iter().rev() {
        match e.snapshot.kind {
            Kind::Incr => deltas.push(e),
            Kind::Full => {
                deltas.reverse();
                backups.push((e, std::mem::take(&mut deltas)));
            }
        }
    }
    // Stable: among equal creation times the list's order stands.
    backups.sort_by_key(|(full, _)| std::cmp::Reverse(full.snapshot.created));
    let recent = |full: &Entry| match max_age_days {
        None => true,
        Some(days) => i128::from(full.snapshot.created) > i128::from(now) - i128::from(days) * 86_400,
    };
    let mut out = Vec::new();
    let mut taken = 0u64;
    for (full, deltas) in backups {
        if max_backups.is_some_and(|max| taken == max) {
            break;
        }
        if !recent(full) {
            continue;
        }
        out.push(full);
        out.extend(deltas);
        taken += 1;
    }
    out
}

/// The name a snapshot gets on a destination: upstream's copier stores a
/// final snapshot as an ordinary one (`SetFinal(false)`).
pub fn destination_name(name: &str) -> &str {
    name.strip_suffix(".final").unwrap_or(name)
}

/// One endpoint's snapshots, in [`catalog::order`]. The entries' primary
/// size is this endpoint's (a catalog of one endpoint).
fn list(ep: &Endpoint) -> Result<Vec<Entry>, String> {
    let objects = ep
        .call("listing", || ep.store.list())
        .map_err(|e| format!("cannot list the {} endpoint ({}): {e}", ep.name(), ep.store.location()))?;
    let mut entries: Vec<Entry> = objects
        .into_iter()
        .filter_map(|o| match SnapshotName::parse(&o.name) {
            Some(snapshot) => Some(Entry { snapshot, name: o.name, primary_size: Some(o.size), secondary_size: None }),
            None => {
                debug!("{} endpoint: skipping {}: not a snapshot name", ep.name(), o.name);
                None
            }
        })
        .collect();
    catalog::order(&mut entries);
    Ok(entries)
}

/// Upstream's `doWaitForFinalSnapshot`: list the source every `interval`
/// until its latest full snapshot is a final one. When `wait` runs out,
/// the copy goes on with what is there (upstream logs "Timed out waiting
/// for final full snapshot" and copies); a listing that fails ends the
/// run (upstream returns the error), as does SIGINT/SIGTERM.
pub fn wait_for_final(src: &Endpoint, wait: WaitForFinal, interval: Duration) -> Result<(), String> {
    let limit = match wait {
        WaitForFinal::No => return Ok(()),
        WaitForFinal::Forever => None,
        WaitForFinal::AtMost(d) => Some(d),
    };
    info!("Waiting for a final full snapshot on the source endpoint ({})", src.store.location());
    let started = Instant::now();
    loop {
        let entries = list(src)?;
        if let Some(full) = entries.iter().rev().find(|e| e.snapshot.kind == Kind::Full)
            && full.snapshot.is_final
        {
            info!("Final full snapshot {} found on the source endpoint", full.name);
            return Ok(());
        }
        let pause = match limit {
            None => interval,
            Some(limit) => match limit.checked_sub(started.elapsed()).filter(|left| !left.is_zero()) {
                Some(left) => interval.min(left),
                None => {
                    warn!(
                        "No final full snapshot on the source endpoint after {limit:?} \
                         (--wait-for-final-snapshot-timeout); copying what is there"
                    );
                    return Ok(());
                }
            },
        };
        crate::signals::sleep(pause);
        if crate::signals::interrupted() {
            return Err("stopped by a signal while waiting for a final full snapshot; nothing copied".into());
        }
    }
}

/// One copy to make.
struct Job<'a> {
    entry: &'a Entry,
    to: usize,
}

/// Copy what each destination lacks of the selected source snapshots, up to
/// `opts.parallel` at once. `Err` when the source cannot be listed (or the
/// wait for a final snapshot failed): nothing was copied.
pub fn run(src: &Endpoint, destinations: &[Endpoint], now: u64, opts: &Options) -> Result<Vec<Summary>, String> {
    wait_for_final(src, opts.wait_for_final, FINAL_CHECK_INTERVAL)?;
    let entries = list(src)?;
    let selected = select(&entries, now, opts.max_backups, opts.max_age_days);
    let fulls = selected.iter().filter(|e| e.snapshot.kind == Kind::Full).count();
    if selected.is_empty() {
        warn!(
            "No snapshot to copy: the source endpoint ({}) lists {} snapshots, none selected \
             (--max-backups-to-copy, --max-backup-age)",
            src.store.location(),
            entries.len()
        );
    } else {
        info!(
            "Selected {} snapshots ({fulls} full) of {} on the source endpoint ({})",
            selected.len(),
            entries.len(),
            src.store.location()
        );
    }
    let mut summaries: Vec<Summary> = destinations
        .iter()
        .map(|d| Summary { role: d.role, listed: false, present: 0, needed: 0, copied: 0, failed: 0 })
        .collect();
    let mut held: Vec<Option<HashSet<String>>> = Vec::new();
    for (dst, summary) in destinations.iter().zip(&mut summaries) {
        match list(dst) {
            Ok(listed) => {
                summary.listed = true;
                held.push(Some(listed.iter().map(|e| destination_name(&e.name).to_string()).collect()));
            }
            Err(e) => {
                error!("Nothing copied to the {} endpoint: {e}", dst.name());
                held.push(None);
            }
        }
    }
    let mut jobs = Vec::new();
    for entry in &selected {
        for (to, held) in held.iter().enumerate() {
            let Some(held) = held else { continue };
            if held.contains(destination_name(&entry.name)) {
                debug!("Skipping snapshot {}: the {} endpoint has it", entry.name, destinations[to].name());
                summaries[to].present += 1;
            } else {
                summaries[to].needed += 1;
                jobs.push(Job { entry, to });
            }
        }
    }
    let outcomes = copy_all(src, destinations, jobs, opts.parallel);
    for (to, ok) in outcomes {
        if ok {
            summaries[to].copied += 1;
        } else {
            summaries[to].failed += 1;
        }
    }
    for (dst, s) in destinations.iter().zip(&summaries) {
        if !s.listed {
            continue;
        }
        let line = format!(
            "Copy to the {} endpoint: {} copied, {} already there, {} failed, {} not attempted",
            dst.name(),
            s.copied,
            s.present,
            s.failed,
            s.needed - s.copied - s.failed
        );
        if s.complete() { info!("{line}") } else { error!("{line}") }
    }
    Ok(summaries)
}

/// Run `jobs` in their order on at most `parallel` threads; `(destination,
/// copied)` per job attempted. A destination that refuses a write gets no
/// further copies in this run; after SIGINT/SIGTERM no copy starts.
fn copy_all(src: &Endpoint, destinations: &[Endpoint], jobs: Vec<Job>, parallel: usize) -> Vec<(usize, bool)> {
    let workers = parallel.max(1).min(jobs.len());
    let queue = Mutex::new(jobs.into_iter());
    let given_up: Vec<AtomicBool> = destinations.iter().map(|_| AtomicBool::new(false)).collect();
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let Some(job) = queue.lock().unwrap().next() else { return };
                    if crate::signals::interrupted() || given_up[job.to].load(Ordering::SeqCst) {
                        continue;
                    }
                    let dst = &destinations[job.to];
                    let (name, size) = (job.entry.name.as_str(), job.entry.primary_size.unwrap_or(0));
                    let to_name = destination_name(name);
                    let ok = match reconcile::copy_as(src, dst, name, to_name, size) {
                        Ok(()) => {
                            let renamed = if to_name == name { String::new() } else { format!(" as {to_name}") };
                            info!("Copied snapshot {name} from source to {} endpoint{renamed}", dst.name());
                            record::copy(src, dst, name, to_name);
                            true
                        }
                        Err(Failure::Source(e)) => {
                            error!("Cannot copy snapshot {name} from source to {} endpoint: {e}", dst.name());
                            false
                        }
                        Err(Failure::Destination(e)) => {
                            given_up[job.to].store(true, Ordering::SeqCst);
                            error!(
                                "Copying to the {} endpoint stopped: cannot write snapshot {to_name} to it: {e}",
                                dst.name()
                            );
                            false
                        }
                    };
                    outcomes.lock().unwrap().push((job.to, ok));
                }
            });
        }
    });
    outcomes.into_inner().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(names: &[&str]) -> Vec<Entry> {
        let mut v: Vec<Entry> = names
            .iter()
            .map(|n| Entry {
                snapshot: SnapshotName::parse(n).unwrap(),
                name: n.to_string(),
                primary_size: Some(1),
                secondary_size: None,
            })
            .collect();
        catalog::order(&mut v);
        v
    }

    fn names<'a>(v: &[&'a Entry]) -> Vec<&'a str> {
        v.iter().map(|e| e.name.as_str()).collect()
    }

    const DAY: u64 = 86_400;
    const NOW: u64 = 100 * DAY;

    /// Three backups a day apart, the newest final; a stray delta before the first full.
    fn store() -> Vec<Entry> {
        let t = |days_ago: u64, s: u64| (NOW - days_ago * DAY + s).to_string();
        let names = [
            format!("Incr-00000001-00000004-{}.gz", t(4, 0)),
            format!("Full-00000000-00000010-{}.gz", t(3, 0)),
            format!("Incr-00000011-00000020-{}.gz", t(3, 10)),
            format!("Full-00000000-00000030-{}.gz", t(2, 0)),
            format!("Incr-00000031-00000040-{}.gz", t(2, 10)),
            format!("Incr-00000041-00000050-{}.gz", t(2, 20)),
            format!("Full-00000000-00000060-{}.gz.final", t(1, 0)),
        ];
        entries(&names.iter().map(String::as_str).collect::<Vec<_>>())
    }

    #[test]
    fn all_by_default_newest_backup_first_full_before_its_deltas() {
        let s = store();
        let got = names(&select(&s, NOW, None, None));
        let rev: Vec<u64> = got.iter().map(|n| SnapshotName::parse(n).unwrap().last_revision).collect();
        assert_eq!(rev, [60, 30, 40, 50, 10, 20], "{got:?}");
        assert!(!got.iter().any(|n| n.starts_with("Incr-00000001")), "a delta before any full is in no backup");
    }

    #[test]
    fn max_backups_counts_full_snapshots_with_their_deltas() {
        let s = store();
        let rev = |v: Vec<&Entry>| v.iter().map(|e| e.snapshot.last_revision).collect::<Vec<_>>();
        assert_eq!(rev(select(&s, NOW, Some(1), None)), [60]);
        assert_eq!(rev(select(&s, NOW, Some(2), None)), [60, 30, 40, 50]);
        assert!(select(&s, NOW, Some(0), None).is_empty(), "0 copies nothing, as upstream");
        assert_eq!(rev(select(&s, NOW, Some(99), None)).len(), 6);
    }

    #[test]
    fn age_is_the_full_snapshots_strictly_within_whole_days_and_skipped_ones_do_not_count() {
        let s = store();
        let rev = |v: Vec<&Entry>| v.iter().map(|e| e.snapshot.last_revision).collect::<Vec<_>>();
        // The backup of 2 days ago was created exactly at the cutoff: not after it.
        assert_eq!(rev(select(&s, NOW, None, Some(2))), [60]);
        assert_eq!(rev(select(&s, NOW + 1, None, Some(2))), [60], "one second later, still out");
        assert_eq!(rev(select(&s, NOW - 1, None, Some(2))), [60, 30, 40, 50], "one second earlier, in");
        assert!(select(&s, NOW, None, Some(0)).is_empty(), "0 days: nothing is newer than now");
        // Too-old backups are skipped without counting toward the maximum.
        let old_newest = entries(&[
            &format!("Full-00000000-00000010-{}", NOW - 10 * DAY),
            &format!("Full-00000000-00000020-{}", NOW - DAY),
        ]);
        assert_eq!(rev(select(&old_newest, NOW, Some(1), Some(3))), [20]);
        assert_eq!(rev(select(&store(), NOW, Some(1), Some(u64::MAX))), [60], "a huge age does not overflow");
    }

    #[test]
    fn backups_are_ordered_by_their_full_snapshots_creation_time() {
        // Revision order and time order disagree within one history? Not
        // possible; across a history split (etcd restored) time wins, as upstream.
        let s = entries(&["Full-00000000-00000100-1000", "Incr-00000101-00000200-1010", "Full-00000000-00000050-1020"]);
        assert_eq!(names(&select(&s, 2000, Some(1), None)), ["Full-00000000-00000050-1020"]);
    }

    #[test]
    fn final_is_stripped_for_the_destination_only() {
        assert_eq!(destination_name("Full-00000000-00000060-100.gz.final"), "Full-00000000-00000060-100.gz");
        assert_eq!(destination_name("Full-00000000-00000060-100.final"), "Full-00000000-00000060-100");
        assert_eq!(destination_name("Incr-00000001-00000002-100.gz"), "Incr-00000001-00000002-100.gz");
    }

    fn local(dir: &std::path::Path, role: Role) -> Endpoint {
        use crate::endpoint::{Backend, Config, Parts};
        std::fs::create_dir_all(dir.join(role.name())).unwrap();
        let backend = Backend::Local { container: dir.join(role.name()), prefix: "p".into() };
        let parts = Parts { max_parallel: 2, min_size: 5 << 20 };
        Config { role, backend, parts, retry: crate::store::RetryPolicy::default() }.open().unwrap()
    }

    /// A full snapshot as etcd makes one: pages and a SHA-256 trailer.
    fn full_bytes(fill: u8) -> Vec<u8> {
        use sha2::{Digest, Sha256};
        let mut v = vec![fill; 4096];
        let sum = Sha256::digest(&v);
        v.extend_from_slice(&sum);
        v
    }

    #[test]
    fn waiting_ends_at_a_final_snapshot_or_the_timeout() {
        let dir = crate::test_scratch::dir("copy-wait");
        let src = local(&dir, Role::Source);
        crate::store::save(src.store.as_ref(), "Full-00000000-00000010-100", &full_bytes(1)).unwrap();
        let started = Instant::now();
        let limit = WaitForFinal::AtMost(Duration::from_millis(300));
        wait_for_final(&src, limit, Duration::from_millis(50)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300), "waited the timeout out");
        crate::store::save(src.store.as_ref(), "Full-00000000-00000020-200.final", &full_bytes(2)).unwrap();
        let started = Instant::now();
        wait_for_final(&src, WaitForFinal::Forever, Duration::from_secs(60)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "a final snapshot ends the wait at once");
    }

    #[test]
    fn copies_what_each_destination_lacks_strips_final_and_refuses_a_bad_source() {
        let dir = crate::test_scratch::dir("copy-run");
        let (src, a, b) = (local(&dir, Role::Source), local(&dir, Role::Primary), local(&dir, Role::Secondary));
        let save =
            |ep: &Endpoint, name: &str, bytes: &[u8]| crate::store::save(ep.store.as_ref(), name, bytes).unwrap();
        save(&src, "Full-00000000-00000010-100", &full_bytes(1));
        let mut bad = full_bytes(2);
        bad[7] ^= 1;
        save(&src, "Full-00000000-00000020-200", &bad);
        save(&src, "Full-00000000-00000030-300.final", &full_bytes(3));
        save(&b, "Full-00000000-00000010-100", &full_bytes(1));
        let opts = Options { max_backups: None, max_age_days: None, parallel: 3, wait_for_final: WaitForFinal::No };
        let got = run(&src, &[a.clone(), b.clone()], 1000, &opts).unwrap();
        let listed = |ep: &Endpoint| {
            let mut v: Vec<String> = ep.store.list().unwrap().into_iter().map(|o| o.name).collect();
            v.sort();
            v
        };
        assert_eq!(listed(&a), ["Full-00000000-00000010-100", "Full-00000000-00000030-300"]);
        assert_eq!(listed(&b), ["Full-00000000-00000010-100", "Full-00000000-00000030-300"]);
        let s = |r: Role| got.iter().find(|s| s.role == r).unwrap().clone();
        assert_eq!((s(Role::Primary).copied, s(Role::Primary).failed, s(Role::Primary).present), (2, 1, 0));
        assert_eq!((s(Role::Secondary).copied, s(Role::Secondary).failed, s(Role::Secondary).present), (1, 1, 1));
        assert!(!s(Role::Primary).complete() && !s(Role::Secondary).complete());
        // The bad object repaired: a second run copies only it.
        save(&src, "Full-00000000-00000020-200", &full_bytes(2));
        let got = run(&src, &[a.clone(), b.clone()], 1000, &opts).unwrap();
        assert!(got.iter().all(|s| s.complete() && s.copied == 1 && s.present == 2), "{got:?}");
        let got = run(&src, &[a, b], 1000, &opts).unwrap();
        assert!(got.iter().all(|s| s.complete() && s.copied == 0 && s.needed == 0), "{got:?}");
    }
}
