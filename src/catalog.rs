//! The snapshots on both endpoints: listed in parallel, parsed, merged by
//! name, ordered as upstream orders them (last revision, then creation).

use crate::endpoint::{Endpoints, Role};
use crate::snapshot::{Kind, SnapshotName};
use crate::store::ObjectInfo;
use crossbeam_channel::Sender;
use log::{debug, error, info};
use std::sync::Mutex;

/// One snapshot, with its size on each endpoint that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub snapshot: SnapshotName,
    /// The object name under `<prefix>/v2/`.
    pub name: String,
    pub primary_size: Option<u64>,
    pub secondary_size: Option<u64>,
}

impl Entry {
    pub fn size_on(&self, role: Role) -> Option<u64> {
        match role {
            Role::Primary => self.primary_size,
            Role::Secondary => self.secondary_size,
            // `copy` lists its source on its own; the catalog merges the two backup endpoints.
            Role::Source => None,
        }
    }

    /// `primary`, `secondary` or `both`.
    pub fn location(&self) -> &'static str {
        match (self.primary_size, self.secondary_size) {
            (Some(_), Some(_)) => "both",
            (Some(_), None) => "primary",
            _ => "secondary",
        }
    }
}

/// The merged list, oldest first.
#[derive(Debug, Default)]
pub struct Catalog {
    pub entries: Vec<Entry>,
    /// Endpoints whose listing failed, with the cause.
    pub failures: Vec<(Role, String)>,
}

impl Catalog {
    /// List every endpoint in parallel and merge; an endpoint that has not
    /// answered `max_lag` after another did counts as failed. `Err` only
    /// when no endpoint could be listed; it names each endpoint's cause.
    pub fn list(endpoints: &Endpoints) -> Result<Catalog, String> {
        Catalog::list_early(endpoints, None)
    }

    /// As [`Catalog::list`]; with two endpoints, the primary's own catalog
    /// also goes to `early` as soon as its listing is in, for work that can
    /// start on it while the secondary is still listing.
    pub fn list_early(endpoints: &Endpoints, early: Option<Sender<Catalog>>) -> Result<Catalog, String> {
        let lag = endpoints.max_lag;
        let early = Mutex::new(early.filter(|_| endpoints.len() > 1));
        let listed = endpoints.each_within(
            move |ep| {
                let listed = ep.call("listing", || ep.store.list()).map_err(|e| e.to_string());
                // Taken by the primary whatever its answer: the receiver
                // then learns that nothing early is coming.
                if let Some(tx) = (ep.role == Role::Primary).then(|| early.lock().unwrap().take()).flatten()
                    && let Ok(objects) = &listed
                {
                    let mut own = Catalog::default();
                    own.add_listing(ep.role, objects, false);
                    order(&mut own.entries);
                    let _ = tx.send(own);
                }
                listed
            },
            |ep, _| debug!("{} endpoint: a listing answered after it was no longer waited for", ep.name()),
        );
        let listed = listed.into_iter().map(|r| {
            r.unwrap_or_else(|| Err(format!("no answer within {lag:?} (--max-endpoint-lag) of the other endpoint")))
        });
        let mut catalog = Catalog::default();
        let mut counts = Vec::new();
        for (ep, result) in endpoints.iter().zip(listed) {
            let role = ep.name();
            match result {
                Ok(objects) => {
                    let n = catalog.add_listing(ep.role, &objects, true);
                    info!("Listed {n} snapshots from {role} endpoint");
                    counts.push((ep.role, n));
                }
                Err(e) => {
                    error!("Failed to list snapshots from {role} endpoint: {e}");
                    catalog.failures.push((ep.role, format!("{role}: {e}")));
                }
            }
        }
        if counts.is_empty() {
            let causes: Vec<_> = catalog.failures.iter().map(|(_, e)| e.as_str()).collect();
            return Err(format!("cannot list snapshots on any endpoint - {}", causes.join("; ")));
        }
        order(&mut catalog.entries);
        if endpoints.len() > 1 {
            let count = |r: Role| counts.iter().find(|(role, _)| *role == r).map_or(0, |(_, n)| *n);
            info!(
                "Merged snapshot list: {} snapshots total (Primary: {}, Secondary: {})",
                catalog.entries.len(),
                count(Role::Primary),
                count(Role::Secondary)
            );
        }
        Ok(catalog)
    }

    /// Adds the snapshots among one endpoint's `objects` (others are
    /// skipped) and returns how many; `log` names each at debug level.
    fn add_listing(&mut self, role: Role, objects: &[ObjectInfo], log: bool) -> usize {
        let mut n = 0;
        for o in objects {
            let Some(snapshot) = SnapshotName::parse(&o.name) else {
                if log {
                    debug!("{} endpoint: skipping {}: not a snapshot name", role.name(), o.name);
                }
                continue;
            };
            if log {
                debug!("{} endpoint: {} ({} bytes)", role.name(), o.name, o.size);
            }
            n += 1;
            self.add(role, snapshot, o.name.clone(), o.size);
        }
        n
    }

    fn add(&mut self, role: Role, snapshot: SnapshotName, name: String, size: u64) {
        let i = match self.entries.iter().position(|e| e.name == name) {
            Some(i) => i,
            None => {
                self.entries.push(Entry { snapshot, name, primary_size: None, secondary_size: None });
                self.entries.len() - 1
            }
        };
        match role {
            Role::Primary => self.entries[i].primary_size = Some(size),
            Role::Secondary => self.entries[i].secondary_size = Some(size),
            Role::Source => unreachable!("the copy source is never merged into the catalog"),
        }
    }

    /// The newest full snapshot and the delta snapshots after it.
    pub fn latest_full(&self) -> Option<(&Entry, Vec<&Entry>)> {
        let i = self.entries.iter().rposition(|e| e.snapshot.kind == Kind::Full)?;
        Some((&self.entries[i], self.entries[i + 1..].iter().filter(|e| e.snapshot.kind == Kind::Incr).collect()))
    }
}

/// Put snapshots in the order every reader of the store uses (list,
/// restore, GC, the snapshotter's resume): by history, then upstream's order
/// within a history (last revision, creation time; on a tie a full snapshot
/// goes after the delta it covers, so that it heads the chain that follows).
///
/// etcd's revisions only grow, which is why upstream orders by revision
/// alone. When etcd goes back in time (restored from an older snapshot into a
/// cluster that keeps backing up to the same prefix, or re-created from
/// scratch), the snapshots taken from then on have lower revisions than the
/// abandoned ones, and revision order would keep restoring, resuming from
/// and protecting the abandoned history. So: a full snapshot whose revision
/// is below that of a snapshot created in an earlier second starts a new
/// history; every snapshot belongs to the newest history started at or
/// before its creation time (in the very second a history starts, only
/// deltas that continue its first full snapshot join it), and a newer
/// history sorts after an older one. The older history stays reachable by
/// name (`restore --snapshot`). This relies on the snapshotting hosts'
/// clocks: a clock set back by more than the full-snapshot interval can
/// split one history in two.
pub fn order(entries: &mut [Entry]) {
    entries.sort_by_key(|e| (e.snapshot.created, e.snapshot.last_revision));
    // (creation time, revision) of each full snapshot that starts a history.
    let mut starts: Vec<(u64, u64)> = Vec::new();
    let (mut high_before, mut high_in_second, mut second) = (0u64, 0u64, None);
    for e in entries.iter() {
        let s = &e.snapshot;
        if second != Some(s.created) {
            high_before = high_before.max(high_in_second);
            high_in_second = 0;
            second = Some(s.created);
        }
        if s.kind == Kind::Full && s.last_revision < high_before {
            starts.push((s.created, s.last_revision));
        }
        high_in_second = high_in_second.max(s.last_revision);
    }
    let history = |s: &SnapshotName| {
        starts
            .iter()
            .filter(|&&(at, rev)| {
                at < s.created || (at == s.created && (s.kind == Kind::Full || s.start_revision <= rev + 1))
            })
            .count()
    };
    entries.sort_by_cached_key(|e| {
        let s = &e.snapshot;
        (history(s), s.last_revision, s.created, s.kind == Kind::Full, e.name.clone())
    });
}

/// Why no chain leads to the snapshot asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoChain {
    /// The named snapshot is not in the list.
    NotFound,
    /// No full snapshot comes before the named one.
    NoFullBefore,
    /// There is no full snapshot at all.
    NoFull,
}

/// The full snapshot to restore up to `wanted` and the deltas that may
/// extend it (for [`delta_chain`]): the named full snapshot alone, the deltas
/// after the last full snapshot up to the named delta, or with `None` the
/// latest full snapshot and every delta after it. `entries` is in [`order`].
pub fn chain_to<'a>(entries: &'a [Entry], wanted: Option<&str>) -> Result<(&'a Entry, Vec<&'a Entry>), NoChain> {
    let upto = match wanted {
        Some(name) => 1 + entries.iter().position(|e| e.name == name).ok_or(NoChain::NotFound)?,
        None => entries.len(),
    };
    let entries = &entries[..upto];
    let Some(i) = entries.iter().rposition(|e| e.snapshot.kind == Kind::Full) else {
        return Err(if wanted.is_some() { NoChain::NoFullBefore } else { NoChain::NoFull });
    };
    let full = &entries[i];
    if wanted == Some(full.name.as_str()) {
        return Ok((full, Vec::new()));
    }
    Ok((full, entries[i + 1..].iter().filter(|e| e.snapshot.kind == Kind::Incr).collect()))
}

/// Where a chain of delta snapshots breaks: `before` ends at revision
/// `covered`, and the next delta, `next`, starts after `covered + 1`.
#[derive(Debug)]
pub struct Gap<'a> {
    pub before: &'a str,
    pub covered: u64,
    pub next: &'a Entry,
}

/// The deltas that extend `full`, in order, as their names describe them:
/// a delta wholly covered by what comes before is dropped (two writers
/// around a leader change can store overlapping ones), and a delta starting
/// after the next revision needed is a gap.
pub fn delta_chain<'a>(full: &'a Entry, deltas: &[&'a Entry]) -> Result<Vec<&'a Entry>, Gap<'a>> {
    let mut chain = Vec::new();
    let mut covered = full.snapshot.last_revision;
    let mut before = full.name.as_str();
    for d in deltas {
        if d.snapshot.last_revision <= covered {
            debug!("Skipping delta snapshot {}: revisions up to {covered} are already covered", d.name);
            continue;
        }
        if d.snapshot.start_revision > covered + 1 {
            return Err(Gap { before, covered, next: d });
        }
        covered = d.snapshot.last_revision;
        before = &d.name;
        chain.push(*d);
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(objects: &[(Role, &str, u64)]) -> Catalog {
        let mut c = Catalog::default();
        for &(role, name, size) in objects {
            c.add(role, SnapshotName::parse(name).unwrap(), name.to_string(), size);
        }
        order(&mut c.entries);
        c
    }

    fn names(c: &Catalog) -> Vec<&str> {
        c.entries.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn a_history_started_after_etcd_went_back_in_time_comes_last() {
        let c = catalog(&[
            (Role::Primary, "Full-00000000-00000100-1000", 5),
            (Role::Primary, "Incr-00000101-00000200-1010", 1),
            // etcd restored to revision 50 (or re-created): a new history.
            (Role::Primary, "Full-00000000-00000050-1020", 5),
            (Role::Secondary, "Incr-00000051-00000060-1030", 1),
        ]);
        assert_eq!(
            names(&c),
            [
                "Full-00000000-00000100-1000",
                "Incr-00000101-00000200-1010",
                "Full-00000000-00000050-1020",
                "Incr-00000051-00000060-1030"
            ]
        );
        let (full, deltas) = c.latest_full().unwrap();
        assert_eq!(full.name, "Full-00000000-00000050-1020");
        assert_eq!(deltas.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["Incr-00000051-00000060-1030"]);
    }

    #[test]
    fn in_the_second_a_history_starts_only_its_own_deltas_join_it() {
        let c = catalog(&[
            (Role::Primary, "Full-00000000-00000100-1000", 5),
            (Role::Primary, "Incr-00000101-00000200-1020", 1),
            (Role::Primary, "Full-00000000-00000050-1020", 5),
            (Role::Primary, "Incr-00000051-00000055-1020", 1),
        ]);
        assert_eq!(
            names(&c),
            [
                "Full-00000000-00000100-1000",
                "Incr-00000101-00000200-1020",
                "Full-00000000-00000050-1020",
                "Incr-00000051-00000055-1020"
            ]
        );
    }

    #[test]
    fn one_history_keeps_upstreams_order() {
        // A full snapshot taken while deltas go on (its name is its start):
        // deltas created after it may cover revisions before and after it.
        let c = catalog(&[
            (Role::Primary, "Full-00000000-00000010-100", 5),
            (Role::Primary, "Incr-00000011-00000020-105", 1),
            (Role::Primary, "Full-00000000-00000020-106", 5),
            (Role::Primary, "Incr-00000021-00000025-106", 1),
            (Role::Primary, "Incr-00000015-00000030-107", 1),
        ]);
        assert_eq!(
            names(&c),
            [
                "Full-00000000-00000010-100",
                "Incr-00000011-00000020-105",
                "Full-00000000-00000020-106",
                "Incr-00000021-00000025-106",
                "Incr-00000015-00000030-107"
            ]
        );
    }

    #[test]
    fn merges_by_name_and_picks_the_latest_full_across_endpoints() {
        let c = catalog(&[
            (Role::Primary, "Full-00000000-00000010-100", 5),
            (Role::Secondary, "Full-00000000-00000010-100", 5),
            (Role::Secondary, "Full-00000000-00000020-200", 7),
            (Role::Primary, "Incr-00000011-00000015-150", 1),
        ]);
        assert_eq!(c.entries.len(), 3);
        assert_eq!(c.entries[0].location(), "both");
        let (latest, deltas) = c.latest_full().unwrap();
        assert_eq!(latest.name, "Full-00000000-00000020-200");
        assert_eq!(latest.location(), "secondary");
        assert!(deltas.is_empty());
    }

    #[test]
    fn deltas_after_the_latest_full_are_reported() {
        let c = catalog(&[
            (Role::Primary, "Full-00000000-00000010-100", 5),
            (Role::Primary, "Incr-00000011-00000015-150", 1),
            (Role::Secondary, "Incr-00000016-00000020-160", 1),
        ]);
        let (latest, deltas) = c.latest_full().unwrap();
        assert_eq!(latest.snapshot.last_revision, 10);
        assert_eq!(deltas.len(), 2);
        assert!(catalog(&[(Role::Primary, "Incr-00000011-00000015-150", 1)]).latest_full().is_none());
    }

    #[test]
    fn same_revision_orders_by_creation_time() {
        let c = catalog(&[
            (Role::Primary, "Full-00000000-00000010-300", 5),
            (Role::Secondary, "Full-00000000-00000010-200", 5),
        ]);
        assert_eq!(c.latest_full().unwrap().0.name, "Full-00000000-00000010-300");
    }

    fn entry(name: &str) -> Entry {
        Entry {
            snapshot: SnapshotName::parse(name).unwrap(),
            name: name.into(),
            primary_size: Some(1),
            secondary_size: None,
        }
    }

    #[test]
    fn delta_chain_skips_covered_deltas_and_stops_at_a_gap() {
        let full = entry("Full-00000000-00000010-100");
        let ds: Vec<Entry> = ["Incr-00000005-00000009-99", "Incr-00000011-00000020-101", "Incr-00000015-00000025-102"]
            .into_iter()
            .map(entry)
            .collect();
        let refs: Vec<&Entry> = ds.iter().collect();
        let chain: Vec<&str> = delta_chain(&full, &refs).unwrap().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(chain, ["Incr-00000011-00000020-101", "Incr-00000015-00000025-102"]);

        let gap = entry("Incr-00000027-00000030-103");
        let refs: Vec<&Entry> = ds.iter().chain([&gap]).collect();
        let e = delta_chain(&full, &refs).unwrap_err();
        assert_eq!((e.before, e.covered, e.next.name.as_str()), ("Incr-00000015-00000025-102", 25, gap.name.as_str()));
    }
}
