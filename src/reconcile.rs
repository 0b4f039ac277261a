//! Self-healing reconcile: each endpoint alone must be able to restore, so
//! every snapshot the garbage collection keeps that one endpoint lacks is
//! copied to it from the other (`snapshot reconcile`, and the long-running
//! `snapshot` after each garbage collection cycle).
//!
//! A copy streams: the source is read in ranged GETs of the destination's
//! part size, each range becomes one part of the destination's multipart
//! upload, and the bytes are decompressed on the fly and checked against
//! etcd's SHA-256 trailer. The upload completes only when the check passes,
//! so a bad source object never becomes a second bad copy. Up to the
//! destination's `--max-parallel-chunk-uploads` parts are uploaded at once;
//! memory stays at that many parts plus two; nothing touches the disk.

use crate::catalog::{Catalog, Entry};
use crate::endpoint::{Endpoint, Endpoints, Role, on_each};
use crate::snapshot::{SnapshotName, check_content};
use crate::store::{self, ErrorKind};
use crate::verify::{self, Fault};
use crate::{gc, record};
use log::{error, info, warn};
use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What GC keeps, and whether to only say what would be copied.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub policy: gc::Policy,
    pub delta_retention: Duration,
    pub dry_run: bool,
}

/// What one cycle did for one destination endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub role: Role,
    /// Snapshots copied to it (or that would be, with `dry_run`).
    pub copied: usize,
    /// Copies that failed: a bad or unreadable source object, or a refused write.
    pub failed: usize,
    /// The endpoint could not be listed or written: left for the next cycle.
    pub skipped: bool,
}

impl Summary {
    /// Every copy needed was made.
    pub fn complete(&self) -> bool {
        self.failed == 0 && !self.skipped
    }
}

/// `(endpoint, copies)` of a cycle, for the `etcdbr_reconciled_total` counter.
pub fn copied(summaries: &[Summary]) -> Vec<(Role, u64)> {
    summaries.iter().map(|s| (s.role, s.copied as u64)).collect()
}

/// One copy to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub name: String,
    pub from: Role,
    pub to: Role,
    /// The source object's listed size.
    pub size: u64,
    /// Why: the destination lacks it, or holds a copy that does not verify.
    pub why: Why,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    Missing,
    Corrupt(String),
}

/// Every snapshot GC keeps on the merged list (as `gc::collect` decides
/// it, `keep` included), in the catalog's order: a full snapshot before
/// the deltas that follow it.
pub fn kept<'a>(catalog: &'a Catalog, now: i64, opts: &Options, keep: &dyn Fn(&str) -> bool) -> Vec<&'a Entry> {
    let names: Vec<SnapshotName> = catalog.entries.iter().map(|e| e.snapshot.clone()).collect();
    let retention = opts.delta_retention.as_secs() as i64;
    let mut dropped = vec![false; names.len()];
    gc::select(&names, now, opts.policy, retention).into_iter().for_each(|i| dropped[i] = true);
    catalog.entries.iter().zip(dropped).filter(|(e, dropped)| !dropped || keep(&e.name)).map(|(e, _)| e).collect()
}

/// The copies that make both endpoints hold every snapshot in `kept`.
pub fn plan(kept: &[&Entry]) -> Vec<Transfer> {
    let copy = |e: &Entry, from: Role, to: Role, size: u64| Transfer {
        name: e.name.clone(),
        from,
        to,
        size,
        why: Why::Missing,
    };
    kept.iter()
        .filter_map(|e| match (e.primary_size, e.secondary_size) {
            (Some(size), None) => Some(copy(e, Role::Primary, Role::Secondary, size)),
            (None, Some(size)) => Some(copy(e, Role::Secondary, Role::Primary, size)),
            _ => None,
        })
        .collect()
}

/// Copies known to verify, `(endpoint, name, size)`: each is read once per
/// process, not on every cycle. The long-running `snapshot` adds what it
/// stores (checked against etcd's trailer on the way) and its scheduled
/// verify forgets what it finds bad, so that the next cycle replaces it.
#[derive(Debug, Default)]
pub struct Verified(Mutex<HashSet<(Role, String, u64)>>);

impl Verified {
    pub fn insert(&self, role: Role, name: &str, size: u64) {
        self.0.lock().unwrap().insert((role, name.to_string(), size));
    }
    pub fn forget(&self, role: Role, name: &str) {
        self.0.lock().unwrap().retain(|(r, n, _)| !(*r == role && n == name));
    }
    fn contains(&self, role: Role, e: &Entry) -> bool {
        let Some(size) = e.size_on(role) else { return false };
        self.0.lock().unwrap().contains(&(role, e.name.clone(), size))
    }
}

/// Check both copies of each snapshot in `kept` that both endpoints hold
/// and `verified` does not vouch for; a copy that is wrong where the other
/// verifies is to be replaced from it. A copy that cannot be read is left
/// for the next cycle; one bad on both endpoints is an error.
fn check_shared(endpoints: &Endpoints, kept: &[&Entry], verified: &Verified) -> (Vec<Transfer>, usize) {
    let (mut repairs, mut lost) = (Vec::new(), 0);
    for e in kept.iter().filter(|e| e.primary_size.is_some() && e.secondary_size.is_some()) {
        if crate::signals::interrupted() {
            break;
        }
        let results =
            on_each(endpoints, |ep| if verified.contains(ep.role, e) { Ok(()) } else { verify::check_object(ep, e) });
        for (ep, r) in endpoints.iter().zip(&results) {
            if r.is_ok() {
                verified.insert(ep.role, &e.name, e.size_on(ep.role).unwrap_or_default());
            }
        }
        let good = endpoints.iter().zip(&results).find(|(_, r)| r.is_ok()).map(|(ep, _)| ep.role);
        for (ep, r) in endpoints.iter().zip(results) {
            match (r, good) {
                (Ok(()), _) => {}
                (Err((Fault::Corrupt, what)), Some(from)) => repairs.push(Transfer {
                    name: e.name.clone(),
                    from,
                    to: ep.role,
                    size: e.size_on(from).unwrap_or_default(),
                    why: Why::Corrupt(what),
                }),
                (Err((Fault::Corrupt, what)), None) => {
                    error!(
                        "Snapshot {} does not verify on the {} endpoint ({what}) nor on the other",
                        e.name,
                        ep.name()
                    );
                    lost += 1;
                }
                (Err((_, what)), _) => {
                    warn!("{} endpoint: snapshot {}: {what}; checked again next cycle", ep.name(), e.name)
                }
            }
        }
    }
    (repairs, lost)
}

/// One reconcile cycle: list both endpoints, copy what one lacks. Returns
/// a summary per endpoint (the destination), in the endpoints' order.
pub fn run(
    endpoints: &Endpoints,
    now: i64,
    opts: &Options,
    keep: &dyn Fn(&str) -> bool,
    verified: &Verified,
) -> Vec<Summary> {
    let mut summaries: Vec<Summary> =
        endpoints.iter().map(|ep| Summary { role: ep.role, copied: 0, failed: 0, skipped: false }).collect();
    if endpoints.len() < 2 {
        return summaries;
    }
    let catalog = match Catalog::list(endpoints) {
        Ok(c) => c,
        Err(e) => {
            warn!("Reconcile skipped until the next cycle: {e}");
            summaries.iter_mut().for_each(|s| s.skipped = true);
            return summaries;
        }
    };
    if !catalog.failures.is_empty() {
        // What the other endpoint lacks depends on what this one holds.
        for (role, why) in &catalog.failures {
            warn!("Reconcile skipped until the next cycle: cannot list the {} endpoint ({why})", role.name());
        }
        summaries.iter_mut().for_each(|s| s.skipped = true);
        return summaries;
    }
    let by_role = |r: Role| endpoints.iter().position(|ep| ep.role == r);
    let kept = kept(&catalog, now, opts, keep);
    let mut transfers = plan(&kept);
    let (repairs, lost) = check_shared(endpoints, &kept, verified);
    transfers.extend(repairs);
    if lost > 0 {
        summaries.iter_mut().for_each(|s| s.failed += lost);
    }
    for c in transfers {
        let (Some(from), Some(to)) = (by_role(c.from), by_role(c.to)) else { continue };
        if summaries[to].skipped || crate::signals::interrupted() {
            continue;
        }
        let (src, dst) = (&endpoints[from], &endpoints[to]);
        let (verb, done) = match &c.why {
            Why::Missing => ("copy", "Copied"),
            Why::Corrupt(what) => {
                warn!("{} endpoint: snapshot {} does not verify: {what}", dst.name(), c.name);
                ("replace its bad copy of", "Replaced the bad copy of")
            }
        };
        if opts.dry_run {
            info!("Reconcile would {verb} snapshot {} from {} to {} endpoint", c.name, src.name(), dst.name());
            summaries[to].copied += 1;
            continue;
        }
        match copy(src, dst, &c.name, c.size) {
            Ok(()) => {
                info!("{done} snapshot {} from {} to {} endpoint", c.name, src.name(), dst.name());
                verified.insert(c.to, &c.name, c.size);
                record::copy(src, dst, &c.name, &c.name);
                summaries[to].copied += 1;
            }
            Err(Failure::Source(e)) => {
                error!("Cannot copy snapshot {} from {} to {} endpoint: {e}", c.name, src.name(), dst.name());
                summaries[to].failed += 1;
            }
            Err(Failure::Destination(e)) => {
                warn!(
                    "Reconcile of the {} endpoint skipped until the next cycle: cannot write snapshot {} to it: {e}",
                    dst.name(),
                    c.name
                );
                summaries[to].failed += 1;
                summaries[to].skipped = true;
            }
        }
    }
    for s in &summaries {
        if s.copied + s.failed > 0 && !opts.dry_run {
            info!("Reconcile of the {} endpoint: {} copied, {} failed", s.role.name(), s.copied, s.failed);
        }
    }
    summaries
}

/// Why a copy failed: the source (bad or unreadable: try the next object)
/// or the destination (refused: leave it for the next cycle).
#[derive(Debug)]
pub enum Failure {
    Source(String),
    Destination(String),
}

/// S3 allows at most this many parts in one upload.
const MAX_PARTS: u64 = 10_000;

/// Copy object `name` (`size` bytes as listed) from `src` to `dst`,
/// streamed and verified; on any failure the upload is aborted.
pub fn copy(src: &Endpoint, dst: &Endpoint, name: &str, size: u64) -> Result<(), Failure> {
    copy_as(src, dst, name, name, size)
}

/// [`copy`] to object `dst_name` on `dst` (`copy` strips `.final`, as upstream does).
pub fn copy_as(src: &Endpoint, dst: &Endpoint, name: &str, dst_name: &str, size: u64) -> Result<(), Failure> {
    let snapshot =
        SnapshotName::parse(name).ok_or_else(|| Failure::Source(format!("{name} is not a snapshot name")))?;
    let part_size = dst.parts.min_size.max(size.div_ceil(MAX_PARTS)).max(1);
    let upload = dst
        .call(&format!("starting the upload of {dst_name}"), || dst.store.begin(dst_name))
        .map_err(|e| Failure::Destination(e.to_string()))?;
    let result = stream(src, dst, &snapshot, name, size, part_size, upload.as_ref())
        .and_then(|()| dst.call(&format!("completing {dst_name}"), || upload.complete()).map_err(dest));
    if result.is_err()
        && let Err(e) = dst.call(&format!("aborting the upload of {dst_name}"), || upload.abort())
    {
        warn!("{} endpoint: cannot abort the upload of {dst_name}: {e}", dst.name());
    }
    result
}

fn dest(e: store::Error) -> Failure {
    Failure::Destination(e.to_string())
}

/// Read, verify and store every part, up to the destination's
/// `max_parallel` parts at once; the caller completes or aborts.
fn stream(
    src: &Endpoint,
    dst: &Endpoint,
    snapshot: &SnapshotName,
    name: &str,
    size: u64,
    part_size: u64,
    upload: &dyn store::Upload,
) -> Result<(), Failure> {
    let failed: Mutex<Option<Failure>> = Mutex::new(None);
    let first_failure = || failed.lock().unwrap().take();
    let result = std::thread::scope(|scope| {
        // Unbuffered: a part is handed over only when an uploader is free,
        // which bounds memory to the parts being uploaded plus two.
        let (tx, rx) = crossbeam_channel::bounded::<(u32, u64, Arc<[u8]>)>(0);
        for _ in 0..dst.parts.max_parallel.max(1) {
            let (rx, failed) = (rx.clone(), &failed);
            scope.spawn(move || {
                for (part, offset, bytes) in rx {
                    if failed.lock().unwrap().is_some() {
                        continue;
                    }
                    let what = format!("uploading part {part} of {name}");
                    if let Err(e) = dst.call(&what, || upload.put_part(part, offset, &[&bytes])) {
                        failed.lock().unwrap().get_or_insert(dest(e));
                    }
                }
            });
        }
        let (mut part, mut offset) = (1u32, 0u64);
        let mut send = |bytes: Arc<[u8]>| {
            if let Some(f) = first_failure() {
                return Err(f);
            }
            let len = bytes.len() as u64;
            // The uploaders only stop after this function returns.
            tx.send((part, offset, bytes)).expect("uploaders run until the channel closes");
            part += 1;
            offset += len;
            Ok(())
        };
        let read = read_verified(src, snapshot, name, size, part_size, &mut send);
        if read.is_ok() && size == 0 {
            // An empty object still needs one part.
            send(Arc::from(Vec::new()))?;
        }
        read
    });
    // A refused part is the cause even when reading stopped because of it.
    match first_failure() {
        Some(f) => Err(f),
        None => result,
    }
}

/// Read the source in parts, hand each to `send`, and verify the content
/// (decompressed by the name's suffix) against etcd's SHA-256 trailer.
fn read_verified(
    src: &Endpoint,
    snapshot: &SnapshotName,
    name: &str,
    size: u64,
    part_size: u64,
    send: &mut dyn FnMut(Arc<[u8]>) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let fetched = Rc::new(RefCell::new(VecDeque::new()));
    let read_error = Rc::new(RefCell::new(None));
    let mut source = Ranges {
        ep: src,
        name,
        size,
        part_size,
        next: 0,
        current: Arc::from(Vec::new()),
        pos: 0,
        fetched: fetched.clone(),
        error: read_error.clone(),
    };
    let send_fetched = |_: &[u8]| -> Result<(), Failure> {
        while let Some(bytes) = fetched.borrow_mut().pop_front() {
            send(bytes)?;
        }
        Ok(())
    };
    check_content(snapshot, &mut source, send_fetched)?.map_err(|what| {
        let on = src.name();
        match read_error.borrow_mut().take() {
            Some(e) => Failure::Source(format!("cannot read it from the {on} endpoint: {e}")),
            None => Failure::Source(format!("the {on} endpoint's copy is bad ({what}); not copied")),
        }
    })
}

/// The source object as a reader over ranged GETs of one part each, every
/// range fetched (with the source's retries) also queued for upload.
struct Ranges<'a> {
    ep: &'a Endpoint,
    name: &'a str,
    size: u64,
    part_size: u64,
    next: u64,
    current: Arc<[u8]>,
    pos: usize,
    fetched: Rc<RefCell<VecDeque<Arc<[u8]>>>>,
    /// Why the last read failed, to tell a store error from bad content.
    error: Rc<RefCell<Option<store::Error>>>,
}

impl Ranges<'_> {
    fn fetch(&self, offset: u64, len: u64) -> store::Result<Vec<u8>> {
        let what = format!("reading {} at byte {offset}", self.name);
        self.ep.call(&what, || {
            let mut v = Vec::with_capacity(len as usize);
            let r = self.ep.store.load(self.name, offset, Some(len))?;
            r.take(len).read_to_end(&mut v).map_err(|e| {
                store::Error::new(ErrorKind::Transient, format!("reading {} at byte {offset}: {e}", self.name))
            })?;
            if (v.len() as u64) < len {
                return Err(store::Error::new(
                    ErrorKind::Permanent,
                    format!("{} ended at byte {} of the {} listed", self.name, offset + v.len() as u64, self.size),
                ));
            }
            Ok(v)
        })
    }
}

impl Read for Ranges<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.current.len() {
            if self.next >= self.size {
                return Ok(0);
            }
            let len = self.part_size.min(self.size - self.next);
            // A stop does not wait for a large copy: it is aborted, and redone next time.
            let fetched = if crate::signals::interrupted() {
                Err(store::Error::new(ErrorKind::Permanent, "stopped by a signal; the copy is aborted"))
            } else {
                self.fetch(self.next, len)
            };
            let bytes = fetched.map_err(|e| {
                let io = std::io::Error::other(e.msg.clone());
                *self.error.borrow_mut() = Some(e);
                io
            })?;
            self.next += len;
            self.current = Arc::from(bytes);
            self.pos = 0;
            self.fetched.borrow_mut().push_back(self.current.clone());
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Backend, Config, Parts};
    use crate::store::RetryPolicy;
    use sha2::{Digest, Sha256};

    fn catalog(objects: &[(Role, &str)]) -> Catalog {
        let mut entries: Vec<Entry> = Vec::new();
        for &(role, name) in objects {
            let i = entries.iter().position(|e| e.name == name).unwrap_or_else(|| {
                entries.push(Entry {
                    snapshot: SnapshotName::parse(name).unwrap(),
                    name: name.into(),
                    primary_size: None,
                    secondary_size: None,
                });
                entries.len() - 1
            });
            match role {
                Role::Primary => entries[i].primary_size = Some(10),
                Role::Secondary => entries[i].secondary_size = Some(10),
                Role::Source => unreachable!(),
            }
        }
        crate::catalog::order(&mut entries);
        Catalog { entries, failures: Vec::new() }
    }

    const LIMIT_1: Options =
        Options { policy: gc::Policy::LimitBased { max_backups: 1 }, delta_retention: Duration::ZERO, dry_run: false };

    #[test]
    fn plans_only_what_gc_keeps_and_one_endpoint_lacks() {
        let c = catalog(&[
            (Role::Primary, "Full-00000000-00000010-100"),
            (Role::Primary, "Incr-00000011-00000020-110"),
            (Role::Primary, "Full-00000000-00000030-200"),
            (Role::Secondary, "Full-00000000-00000030-200"),
            (Role::Primary, "Incr-00000031-00000040-210"),
            (Role::Secondary, "Incr-00000041-00000050-220.gz"),
        ]);
        let got: Vec<(String, Role)> =
            plan(&kept(&c, 300, &LIMIT_1, &|_| false)).into_iter().map(|c| (c.name, c.to)).collect();
        assert_eq!(
            got,
            [
                ("Incr-00000031-00000040-210".to_string(), Role::Secondary),
                ("Incr-00000041-00000050-220.gz".to_string(), Role::Primary)
            ]
        );
        // What the running snapshotter protects from GC is kept, so copied.
        let kept = plan(&kept(&c, 300, &LIMIT_1, &|n| n == "Full-00000000-00000010-100"));
        assert_eq!(kept[0].name, "Full-00000000-00000010-100");
        assert_eq!((kept[0].from, kept[0].to, kept[0].size), (Role::Primary, Role::Secondary, 10));
    }

    fn endpoints(dir: &std::path::Path, min_size: u64) -> Endpoints {
        let each = [Role::Primary, Role::Secondary]
            .map(|role| {
                std::fs::create_dir_all(dir.join(role.name())).unwrap();
                let backend = Backend::Local { container: dir.join(role.name()), prefix: "p".into() };
                let retry = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
                Config { role, backend, parts: Parts { max_parallel: 1, min_size }, retry }.open().unwrap()
            })
            .to_vec();
        Endpoints::new(each, Duration::from_secs(5))
    }

    fn snapshot_bytes(len: usize) -> Vec<u8> {
        let mut db: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let sum = Sha256::digest(&db);
        db.extend_from_slice(&sum);
        db
    }

    fn load(ep: &Endpoint, name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        ep.store.load(name, 0, None).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn copies_in_parts_byte_identical_compressed_or_not() {
        let dir = crate::test_scratch::dir("reconcile");
        let eps = endpoints(&dir, 1000);
        let plain = snapshot_bytes(512 * 9);
        let gz = crate::compression::compress(crate::compression::Policy::Gzip, &plain).unwrap();
        for (name, bytes) in [("Full-00000000-00000010-100", &plain), ("Full-00000000-00000011-101.gz", &gz)] {
            store::save(eps[0].store.as_ref(), name, bytes).unwrap();
            copy(&eps[0], &eps[1], name, bytes.len() as u64).unwrap();
            assert_eq!(&load(&eps[1], name), bytes, "{name}");
        }
    }

    #[test]
    fn a_bad_source_is_refused_and_nothing_is_left() {
        let dir = crate::test_scratch::dir("reconcile-bad");
        let eps = endpoints(&dir, 1000);
        let mut bad = snapshot_bytes(512 * 9);
        bad[2000] ^= 1;
        let name = "Full-00000000-00000010-100";
        store::save(eps[0].store.as_ref(), name, &bad).unwrap();
        let Err(Failure::Source(e)) = copy(&eps[0], &eps[1], name, bad.len() as u64) else { panic!("copied") };
        assert!(e.contains("primary endpoint's copy is bad") && e.contains("mismatch"), "{e}");
        assert!(eps[1].store.list().unwrap().is_empty());
    }
}
