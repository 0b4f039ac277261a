//! `snapshot verify`: prove, for each endpoint on its own and for both
//! together, that the stored snapshots can be restored, before the day they
//! are needed. Bit rot, truncation and lost objects at rest are otherwise
//! found only by the restore that fails.
//!
//! Every object of the chosen chains is streamed once per endpoint that
//! holds it (with the endpoint's retries), its length compared with the
//! listing, decompressed by its name's suffix and checked against its
//! SHA-256 trailer; the chain is checked for gaps. Memory stays bounded
//! whatever the object size: [`WORKERS`] streams per endpoint, each with one
//! 64 KiB buffer ([`check_content`]) and its decompressor's window.

use crate::catalog::{self, Catalog, Entry, Gap, NoChain};
use crate::datadir::{bbolt, hashkv};
use crate::endpoint::{Endpoint, Endpoints, Role, on_each};
use crate::record;
use crate::snapshot::{Kind, check_content};
use crate::{signals, store};
use log::{info, warn};
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Objects streamed at once per endpoint.
pub const WORKERS: usize = 2;

/// Which snapshots to verify.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Selection {
    /// The latest full snapshot and the deltas after it.
    #[default]
    Latest,
    /// Every snapshot, and the continuity of every full snapshot's deltas.
    All,
    /// The chain up to this snapshot, as `restore --snapshot` chooses it.
    UpTo(String),
}

/// What to verify, and how deeply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    pub selection: Selection,
    /// `--deep`: the directory for the one temporary database.
    pub deep: Option<PathBuf>,
}

/// One thing wrong, naming the endpoint (`None`: the merged view) and the
/// object (or the chain) it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub endpoint: Option<Role>,
    pub object: String,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.endpoint {
            Some(role) => write!(f, "{} endpoint: {}: {}", role.name(), self.object, self.what),
            None => write!(f, "both endpoints: {}: {}", self.object, self.what),
        }
    }
}

/// The newest point a view can be restored to with every object up to it verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restorable {
    pub snapshot: String,
    pub revision: u64,
    /// Unix seconds the snapshot was taken.
    pub created: u64,
}

/// The outcome for one endpoint (`endpoint: Some`) or the merged view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub endpoint: Option<Role>,
    /// Objects of this view that were checked.
    pub checked: usize,
    pub restorable: Option<Restorable>,
    pub problems: Vec<Problem>,
    /// With `--deep`: what applying the restorable chain showed.
    pub deep: Option<String>,
}

impl View {
    /// Restorable, and nothing found wrong.
    pub fn verified(&self) -> bool {
        self.restorable.is_some() && self.problems.is_empty()
    }

    /// `primary`, `secondary` or `merged`.
    pub fn name(&self) -> &'static str {
        self.endpoint.map_or("merged", Role::name)
    }
}

/// Each configured endpoint's view, in order, then the merged one.
#[derive(Debug)]
pub struct Report {
    pub endpoints: Vec<View>,
    pub merged: View,
}

impl Report {
    /// 0 when every endpoint verifies, 3 when some do, 1 when none does.
    pub fn exit_code(&self) -> i32 {
        match self.endpoints.iter().filter(|v| v.verified()).count() {
            n if n == self.endpoints.len() => crate::exit::OK,
            0 => crate::exit::FAILED,
            _ => crate::exit::DEGRADED,
        }
    }
}

/// Verify `selection` on every endpoint and in the merged view. `Err` only
/// when no endpoint could be listed.
pub fn run(endpoints: &Endpoints, opts: &Options) -> Result<Report, String> {
    let selection = &opts.selection;
    let catalog = Catalog::list(endpoints)?;
    let roles: Vec<Role> = endpoints.iter().map(|e| e.role).collect();
    // Each endpoint's own list, in the merged order.
    let own: Vec<Vec<Entry>> =
        roles.iter().map(|&r| catalog.entries.iter().filter(|e| e.size_on(r).is_some()).cloned().collect()).collect();
    let plans: Vec<Plan> = own.iter().map(|entries| plan(entries, selection)).collect();
    let merged_plan = plan(&catalog.entries, selection);

    // Every object each endpoint must stream: its own plan's, and its copies
    // of the merged plan's.
    let wanted: Vec<Vec<&Entry>> = roles
        .iter()
        .zip(&plans)
        .map(|(&role, p)| {
            let mut names = BTreeSet::new();
            let mine = p.objects.iter().copied();
            let shared = merged_plan.objects.iter().copied().filter(|e| e.size_on(role).is_some());
            mine.chain(shared).filter(|e| names.insert(e.name.as_str())).collect()
        })
        .collect();
    let results = on_each(endpoints, |ep| {
        let i = roles.iter().position(|&r| r == ep.role).expect("a listed endpoint");
        check_all(ep, &wanted[i])
    });

    let mut views = Vec::new();
    for (i, &role) in roles.iter().enumerate() {
        let ok = |e: &Entry| results[i].get(&e.name).is_some_and(Result::is_ok);
        let mut problems: Vec<Problem> = Vec::new();
        if let Some((_, why)) = catalog.failures.iter().find(|(r, _)| *r == role) {
            // Nothing else can be said about an endpoint that could not be listed.
            problems.push(Problem { endpoint: Some(role), object: "(listing)".into(), what: why.clone() });
        } else {
            for e in &plans[i].objects {
                if let Some(Err(p)) = results[i].get(&e.name) {
                    problems.push(p.clone());
                }
            }
            problems.extend(plans[i].chain_problems(Some(role)));
        }
        let mut restorable = plans[i].restorable(ok);
        let mut deep = None;
        if let (Some(dir), Some(upto), Some(chain)) = (&opts.deep, &restorable, plans[i].chains.first()) {
            let objects: Vec<&Entry> = std::iter::once(chain.full).chain(chain.deltas.iter().copied()).collect();
            let end = objects.iter().position(|e| e.name == upto.snapshot).map_or(0, |p| p + 1);
            match deep_check(&endpoints[i], &objects[..end], dir) {
                Ok(summary) => deep = Some(summary),
                Err(p) => {
                    // What the chain restores to is not what etcd had (or unknown).
                    restorable = None;
                    problems.push(p);
                }
            }
        }
        views.push(View { endpoint: Some(role), checked: plans[i].objects.len(), restorable, problems, deep });
    }
    // Merged: an object counts when any endpoint holding it verified it.
    let ok_anywhere = |e: &Entry| results.iter().any(|r| r.get(&e.name).is_some_and(Result::is_ok));
    let mut problems: Vec<Problem> = merged_plan
        .objects
        .iter()
        .filter(|e| !ok_anywhere(e))
        .map(|e| {
            let why: Vec<String> = results
                .iter()
                .filter_map(|r| r.get(&e.name)?.as_ref().err())
                .map(|p| format!("{}: {}", p.endpoint.map_or("both", Role::name), p.what))
                .collect();
            Problem {
                endpoint: None,
                object: e.name.clone(),
                what: format!("verifies on no endpoint ({})", why.join("; ")),
            }
        })
        .collect();
    problems.extend(merged_plan.chain_problems(None));
    let merged = View {
        endpoint: None,
        checked: merged_plan.objects.len(),
        restorable: merged_plan.restorable(ok_anywhere),
        problems,
        deep: None,
    };
    for v in views.iter().chain([&merged]) {
        for p in &v.problems {
            warn!("{p}");
        }
        info!(
            "Verified {} ({} objects): {}",
            v.name(),
            v.checked,
            match &v.restorable {
                Some(r) => format!("restorable up to revision {} ({})", r.revision, r.snapshot),
                None => "nothing restorable".into(),
            }
        );
    }
    Ok(Report { endpoints: views, merged })
}

/// `--deep` on one endpoint's chain (objects that verified, in order):
/// fetch it from this endpoint alone into a temporary directory under
/// `dir`, check the database's bbolt structure and mvcc rows, and compute
/// etcd's HashKV over the rows a restore would write (the snapshot's, then
/// the deltas' events, without writing them) at the latest revision of the
/// chain that has a record, to compare with what etcd said. Temporary disk:
/// the one database (streamed in plain) and the deltas; removed on every
/// way out.
fn deep_check(ep: &Endpoint, chain: &[&Entry], dir: &std::path::Path) -> Result<String, Problem> {
    let last = chain.last().map_or(String::new(), |e| e.name.clone());
    let problem = |object: &str, what: String| Problem { endpoint: Some(ep.role), object: object.into(), what };
    let Some((full, deltas)) = chain.split_first() else { return Ok(String::new()) };
    let tmp = TempDir::create(dir, ep.role).map_err(|e| problem(&last, format!("deep check: {e}")))?;
    let sources = std::slice::from_ref(ep);
    if chain.iter().any(|e| e.snapshot.encrypted) && crate::encryption::installed().is_none() {
        return Err(problem(&last, "deep check: the chain is encrypted; it needs --identity-file".into()));
    }
    let plain = tmp.0.join("snapshot.db");
    fetch_plain(ep, full, &plain)
        .and_then(|()| crate::datadir::db::strip_trailer(&plain).map_err(|e| format!("{e:#}")))
        .map_err(|e| problem(&full.name, format!("deep check: {e}")))?;
    let delta_files = crate::restore::fetch_deltas(deltas, sources, &tmp.0)
        .map_err(|e| problem(&last, format!("deep check: {e:#}")))?;
    let db = bbolt::Db::open(&plain).map_err(|e| problem(&full.name, format!("not a bbolt database: {e:#}")))?;
    let structure =
        db.check_structure().map_err(|e| problem(&full.name, format!("bbolt structure is broken: {e:#}")))?;
    let rows = hashkv::Rows { db: &db, deltas: &delta_files };
    let top = chain.last().map_or(0, |e| e.snapshot.last_revision) as i64;
    let mvcc = hashkv::check_mvcc(&rows, top).map_err(|e| problem(&last, format!("mvcc rows: {e}")))?;
    let mut summary = format!(
        "{} pages ({} free), {} rows of {} keys up to revision {}",
        structure.pages, structure.free, mvcc.rows, mvcc.keys, mvcc.highest_revision
    );
    // The latest record of the chain: a HashKV at an earlier revision is
    // computed over the same rows, those above it left out.
    let mut recorded = None;
    for e in chain.iter().rev() {
        match record::load(ep, &e.name) {
            Ok(Some(h)) => {
                recorded = Some((e, h));
                break;
            }
            Ok(None) => {}
            Err(why) => return Err(problem(&e.name, why)),
        }
    }
    match recorded {
        Some((e, h)) => {
            let ours = hashkv::hash_kv(&rows, h.revision, h.compact_revision)
                .map_err(|why| problem(&e.name, format!("HashKV: {why}")))?;
            if ours != h.hash {
                return Err(problem(
                    &e.name,
                    format!(
                        "HashKV at revision {} is {ours}, but etcd said {} when it was stored: the chain does not \
                         restore to what etcd had",
                        h.revision, h.hash
                    ),
                ));
            }
            summary.push_str(&format!("; HashKV {ours} at revision {} equals etcd's", h.revision));
        }
        None => summary.push_str("; no HashKV recorded for this chain (etcd had compacted it, or it predates records)"),
    }
    Ok(summary)
}

/// The full snapshot's plain bytes (decrypted, decompressed, its trailer
/// checked) streamed into `dest` as they arrive: the temporary disk holds
/// the database alone, never a compressed download beside it.
fn fetch_plain(ep: &Endpoint, full: &Entry, dest: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let size = full.size_on(ep.role).ok_or("not listed on this endpoint")?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut raw = Resuming { ep, name: &full.name, size, inner: None, bytes: 0, broken: None };
    let verdict = check_content(&full.snapshot, &mut raw, |piece| out.write_all(piece))
        .and_then(|v| out.flush().map(|()| v))
        .map_err(|e| format!("writing {}: {e}", dest.display()))?;
    if let Some(e) = raw.broken {
        return Err(format!("cannot be read: {e}"));
    }
    verdict
}

/// A directory of its own under `--snapstore-temp-directory`, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create(parent: &std::path::Path, role: Role) -> Result<TempDir, String> {
        use std::os::unix::fs::DirBuilderExt;
        let path = parent.join(format!(".etcdbr-verify-{}-{}", std::process::id(), role.name()));
        // Upstream creates its temporary directory when missing.
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            warn!("Cannot remove the temporary directory {}: {e}", self.0.display());
        }
    }
}

/// What one view checks: its chains (a full snapshot and the deltas that
/// continue it, or where they break) and every object to stream.
struct Plan<'a> {
    /// The chain restore would use (`Latest`/`UpTo`), or the latest one (`All`).
    chains: Vec<Chain<'a>>,
    /// Set when the snapshot asked for leads to no chain.
    no_chain: Option<String>,
    objects: Vec<&'a Entry>,
}

struct Chain<'a> {
    full: &'a Entry,
    deltas: Vec<&'a Entry>,
    gap: Option<Gap<'a>>,
}

fn plan<'a>(entries: &'a [Entry], selection: &Selection) -> Plan<'a> {
    let chain = |full: &'a Entry, candidates: Vec<&'a Entry>| match catalog::delta_chain(full, &candidates) {
        Ok(deltas) => Chain { full, deltas, gap: None },
        Err(gap) => {
            // Up to the break the chain still restores.
            let before: Vec<&Entry> = candidates.iter().copied().take_while(|d| d.name != gap.next.name).collect();
            let deltas = catalog::delta_chain(full, &before).unwrap_or_default();
            Chain { full, deltas, gap: Some(gap) }
        }
    };
    let wanted = match selection {
        Selection::UpTo(name) => Some(name.as_str()),
        _ => None,
    };
    let mut p = Plan { chains: Vec::new(), no_chain: None, objects: Vec::new() };
    match catalog::chain_to(entries, wanted) {
        Ok((full, candidates)) => {
            p.objects = std::iter::once(full).chain(candidates.iter().copied()).collect();
            p.chains.push(chain(full, candidates));
        }
        Err(why) => {
            p.no_chain = Some(match why {
                NoChain::NotFound => format!("snapshot {} is not stored here", wanted.unwrap_or_default()),
                NoChain::NoFullBefore => format!("no full snapshot precedes {}", wanted.unwrap_or_default()),
                NoChain::NoFull => "no full snapshot is stored here".into(),
            })
        }
    }
    if *selection == Selection::All {
        p.objects = entries.iter().collect();
        // Older chains too: each full snapshot's deltas up to the next one.
        let fulls: Vec<usize> = (0..entries.len()).filter(|&i| entries[i].snapshot.kind == Kind::Full).collect();
        for (n, &i) in fulls.iter().enumerate().rev().skip(1) {
            let next = fulls[n + 1];
            let candidates = entries[i + 1..next].iter().filter(|e| e.snapshot.kind == Kind::Incr).collect();
            p.chains.push(chain(&entries[i], candidates));
        }
    }
    p
}

impl Plan<'_> {
    /// The chain's last point whose every object up to it verified.
    fn restorable(&self, ok: impl Fn(&Entry) -> bool) -> Option<Restorable> {
        let chain = self.chains.first()?;
        let verified = std::iter::once(chain.full).chain(chain.deltas.iter().copied()).take_while(|e| ok(e)).last()?;
        let s = &verified.snapshot;
        Some(Restorable { snapshot: verified.name.clone(), revision: s.last_revision, created: s.created })
    }

    fn chain_problems(&self, endpoint: Option<Role>) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Some(why) = &self.no_chain {
            out.push(Problem { endpoint, object: "(chain)".into(), what: why.clone() });
        }
        for c in &self.chains {
            let Some(Gap { before, covered, next }) = &c.gap else { continue };
            let (from, to) = (covered + 1, next.snapshot.start_revision - 1);
            let missing = if from == to {
                format!("revision {from} is missing")
            } else {
                format!("revisions {from} to {to} are missing")
            };
            let what = format!(
                "gap in the chain of {}: {before} ends at revision {covered} but {} starts at revision {}; {missing}",
                c.full.name, next.name, next.snapshot.start_revision,
            );
            out.push(Problem { endpoint, object: next.name.clone(), what });
        }
        out
    }
}

/// [`verify_object`] on each of `entries`, [`WORKERS`] at a time.
fn check_all(ep: &Endpoint, entries: &[&Entry]) -> HashMap<String, Result<(), Problem>> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(HashMap::new());
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(entries.len()) {
            s.spawn(|| {
                while let Some(e) = entries.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let r = verify_object(ep, e);
                    results.lock().unwrap().insert(e.name.clone(), r);
                }
            });
        }
    });
    results.into_inner().unwrap()
}

/// Check one object on one endpoint: present, as long as listed, and its
/// content (decompressed by the name's suffix) matching its SHA-256
/// trailer. Streamed with bounded memory; a failed request is retried by
/// the endpoint's policy and a broken stream resumed, a wrong object is not.
pub fn verify_object(ep: &Endpoint, entry: &Entry) -> Result<(), Problem> {
    check_object(ep, entry).map_err(|(_, what)| Problem { endpoint: Some(ep.role), object: entry.name.clone(), what })
}

/// What is wrong with one endpoint's copy of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Missing,
    /// The endpoint failed (after its retries): nothing is known of the copy.
    Unreadable,
    /// Read to its end, and wrong: length, compression or SHA-256 trailer.
    Corrupt,
}

/// [`verify_object`], with the kind of fault.
pub fn check_object(ep: &Endpoint, entry: &Entry) -> Result<(), (Fault, String)> {
    let Some(size) = entry.size_on(ep.role) else {
        return Err((Fault::Missing, "missing: not listed on this endpoint".into()));
    };
    match stream(ep, entry, size) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(what)) => Err((Fault::Corrupt, what)),
        Err(e) if e.kind == store::ErrorKind::NotFound => {
            Err((Fault::Missing, format!("missing: listed but not found: {e}")))
        }
        Err(e) => Err((Fault::Unreadable, format!("cannot be read: {e}"))),
    }
}

/// The raw object, counted, read on from where a broken connection left
/// off: the decompressor and the hash carry on over the reconnection, so a
/// large object on a flaky link is not streamed again from its start. Its
/// errors are kept apart from the decompressor's: a broken connection is a
/// store failure, bad data is a problem with the object.
struct Resuming<'a> {
    ep: &'a Endpoint,
    name: &'a str,
    size: u64,
    inner: Option<Box<dyn Read + Send>>,
    bytes: u64,
    broken: Option<store::Error>,
}

impl Resuming<'_> {
    fn fail(&mut self, e: store::Error) -> std::io::Error {
        let io = std::io::Error::other(e.msg.clone());
        self.broken = Some(e);
        io
    }
}

impl Read for Resuming<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Failed after the endpoint's retries: it stays failed, so reading
        // on (to the end of the object) does not start them over.
        if let Some(e) = &self.broken {
            return Err(std::io::Error::other(e.msg.clone()));
        }
        let mut failures = 0;
        loop {
            if signals::interrupted() {
                return Err(self.fail(store::Error::new(store::ErrorKind::Permanent, "interrupted by a signal")));
            }
            let inner = match &mut self.inner {
                Some(r) => r,
                None => {
                    let (ep, name, offset) = (self.ep, self.name, self.bytes);
                    match ep.call(&format!("verifying {name}"), || ep.store.load(name, offset, None)) {
                        Ok(r) => self.inner.insert(r),
                        Err(e) => return Err(self.fail(e)),
                    }
                }
            };
            match inner.read(buf) {
                Ok(n) => {
                    self.bytes += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.inner = None;
                    // Broken right at the listed end: a range starting there would be refused.
                    if self.bytes == self.size {
                        return Ok(0);
                    }
                    failures += 1;
                    let msg = format!("broken after {} bytes: {e}", self.bytes);
                    if failures >= self.ep.retry.attempts.max(1) {
                        return Err(self.fail(store::Error::new(store::ErrorKind::Transient, msg)));
                    }
                    warn!("{} endpoint: verifying {}: {msg}; resuming from there", self.ep.name(), self.name);
                }
            }
        }
    }
}

/// Stream the object once: `Err` is a store failure (after the endpoint's
/// retries), `Ok(Err)` what is wrong with the object.
fn stream(ep: &Endpoint, entry: &Entry, size: u64) -> store::Result<Result<(), String>> {
    let mut raw = Resuming { ep, name: &entry.name, size, inner: None, bytes: 0, broken: None };
    let Ok(verdict) = check_content(&entry.snapshot, &mut raw, |_| Ok::<(), std::convert::Infallible>(()));
    if let Some(e) = raw.broken {
        return Err(e);
    }
    if raw.bytes != size {
        return Ok(Err(format!("the object has {} bytes but is listed with {size}", raw.bytes)));
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression;
    use crate::endpoint::{Backend, Config, Parts};
    use crate::snapshot::SnapshotName;
    use crate::store::RetryPolicy;
    use sha2::{Digest, Sha256};
    use std::time::Duration;

    fn with_trailer(mut data: Vec<u8>) -> Vec<u8> {
        let sum = Sha256::digest(&data);
        data.extend_from_slice(&sum);
        data
    }

    /// A local endpoint holding `objects`.
    fn endpoints(objects: &[(&str, Vec<u8>)]) -> (crate::test_scratch::ScratchDir, Endpoints) {
        let dir = crate::test_scratch::dir("verify");
        let backend = Backend::Local { container: dir.to_path_buf(), prefix: "p".into() };
        let parts = Parts { max_parallel: 1, min_size: 1 };
        let retry = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
        let ep = Config { role: Role::Primary, backend, parts, retry }.open().unwrap();
        for (name, bytes) in objects {
            store::save(&*ep.store, name, bytes).unwrap();
        }
        (dir, Endpoints::new(vec![ep], Duration::from_secs(1)))
    }

    fn full() -> Vec<u8> {
        with_trailer((0..4096u32).map(|i| (i % 253) as u8).collect())
    }

    fn delta() -> Vec<u8> {
        with_trailer(b"[{\"revision\":11}]".to_vec())
    }

    #[test]
    fn a_healthy_chain_verifies_to_its_last_delta() {
        let gz = compression::compress(compression::Policy::Gzip, &delta()).unwrap();
        let (_d, eps) = endpoints(&[
            ("Full-00000000-00000010-100", full()),
            ("Incr-00000011-00000020-101.gz", gz),
            ("Incr-00000021-00000030-102", delta()),
        ]);
        let r = run(&eps, &Options { selection: Selection::Latest, deep: None }).unwrap();
        assert_eq!(r.endpoints[0].problems, []);
        let last = r.endpoints[0].restorable.as_ref().unwrap();
        assert_eq!((last.revision, last.created), (30, 102));
        assert_eq!(r.exit_code(), crate::exit::OK);
        assert_eq!(r.merged.restorable, r.endpoints[0].restorable);
    }

    #[test]
    fn a_flipped_byte_stops_the_restorable_point_before_it() {
        let mut bad = delta();
        bad[3] ^= 1;
        let (_d, eps) = endpoints(&[
            ("Full-00000000-00000010-100", full()),
            ("Incr-00000011-00000020-101", delta()),
            ("Incr-00000021-00000030-102", bad),
        ]);
        let r = run(&eps, &Options { selection: Selection::Latest, deep: None }).unwrap();
        let v = &r.endpoints[0];
        assert_eq!(v.restorable.as_ref().unwrap().snapshot, "Incr-00000011-00000020-101");
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert_eq!(v.problems[0].object, "Incr-00000021-00000030-102");
        assert!(v.problems[0].what.contains("SHA-256 trailer mismatch"), "{}", v.problems[0]);
        let (object, what) = (&v.problems[0].object, &v.problems[0].what);
        let want = format!("both endpoints: {object}: verifies on no endpoint (primary: {what})");
        assert_eq!(r.merged.problems[0].to_string(), want);
        assert_eq!(r.exit_code(), crate::exit::FAILED);
    }

    #[test]
    fn a_gap_names_the_missing_revisions_and_all_checks_older_chains() {
        let (_d, eps) = endpoints(&[
            ("Full-00000000-00000010-100", full()),
            ("Incr-00000011-00000020-101", delta()),
            ("Incr-00000031-00000040-102", delta()),
            ("Full-00000000-00000050-103", full()),
        ]);
        let r = run(&eps, &Options { selection: Selection::Latest, deep: None }).unwrap();
        assert!(r.endpoints[0].verified(), "{:?}", r.endpoints[0]);
        assert_eq!(r.endpoints[0].checked, 1);
        let r = run(&eps, &Options { selection: Selection::All, deep: None }).unwrap();
        let v = &r.endpoints[0];
        assert_eq!(v.checked, 4);
        assert_eq!(v.restorable.as_ref().unwrap().revision, 50);
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert!(v.problems[0].what.contains("revisions 21 to 30 are missing"), "{}", v.problems[0]);
        let r = run(&eps, &Options { selection: Selection::UpTo("Incr-00000031-00000040-102".into()), deep: None })
            .unwrap();
        let v = &r.endpoints[0];
        assert_eq!(v.restorable.as_ref().unwrap().revision, 20, "the chain restores up to the gap");
        assert_eq!(v.problems[0].object, "Incr-00000031-00000040-102");
        let r =
            run(&eps, &Options { selection: Selection::UpTo("Full-00000000-00000099-1".into()), deep: None }).unwrap();
        assert!(r.endpoints[0].problems[0].what.contains("is not stored here"));
        assert_eq!(r.exit_code(), crate::exit::FAILED);
    }

    #[test]
    fn an_object_shorter_than_listed_is_named() {
        let (_d, eps) = endpoints(&[("Full-00000000-00000010-100", full())]);
        let ep = &eps[0];
        let name = "Full-00000000-00000010-100";
        let entry = Entry {
            snapshot: SnapshotName::parse(name).unwrap(),
            name: name.into(),
            primary_size: Some(full().len() as u64 + 7),
            secondary_size: None,
        };
        let p = verify_object(ep, &entry).unwrap_err();
        assert_eq!(p.object, name);
        assert!(p.what.contains("has 4128 bytes but is listed with 4135"), "{p}");
        let gone = Entry { name: "Full-00000000-00000011-100".into(), ..entry };
        assert!(verify_object(ep, &gone).unwrap_err().what.starts_with("missing"));
    }
}
