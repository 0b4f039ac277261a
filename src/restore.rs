//! `restore`: pick the latest full snapshot (and the deltas after it) on
//! either endpoint, fetch each with failover (and ranged resume) to the
//! other endpoint, verify it, and have `datadir` write the etcd data
//! directory from it. The primary's own latest chain starts downloading as
//! soon as the primary has listed, and is kept if both listings choose it.
//!
//! Everything is built in a staging directory next to the target and
//! renamed into place only when complete; an error or a signal removes it.

use crate::catalog::{self, Catalog, Entry, Gap, NoChain};
use crate::datadir::{self, member};
use crate::endpoint::{self, Endpoint, Endpoints, Role};
use crate::snapshot::{Kind, SnapshotName, TRAILER_LEN, TrailerCheck};
use crate::{compression, signals, store};
use anyhow::{Context, anyhow, bail};
use log::{debug, info, warn};
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

mod lock;

/// A restore failure, and whether it was the caller's input (exit 2).
pub enum Failure {
    Usage(String),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Failed(e)
    }
}

/// What to restore and the data directory to write.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub data_dir: PathBuf,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub skip_hash_check: bool,
    /// `--bump-revision` with `--mark-compacted`.
    pub bump_revision: Option<u64>,
    /// `--snapshot`: restore up to this one instead of the latest.
    pub snapshot: Option<String>,
}

pub fn run(cfg: &Options, sources: &Endpoints) -> Result<(), Failure> {
    // Everything that can be checked without the network first.
    let members = member::parse_initial_cluster(&cfg.initial_cluster, &cfg.initial_cluster_token)
        .map_err(|e| Failure::Usage(format!("--initial-cluster: {e}")))?;
    let local = member::local_member(&members, &cfg.name, &cfg.initial_advertise_peer_urls.join(","))
        .map_err(Failure::Usage)?
        .clone();
    // Held until the end: the target is judged, and its leftovers removed,
    // only when no other restore can be writing next to it.
    let lock = lock::TargetLock::acquire(&cfg.data_dir).map_err(Failure::Usage)?;
    check_target(&cfg.data_dir).map_err(Failure::Usage)?;
    // Created first, so that an unwritable target fails before any download.
    let staging =
        Staging::create(&lock).map_err(|e| Failure::Usage(format!("--data-dir {}: {e:#}", cfg.data_dir.display())))?;

    // Downloads go to their own directory, removed before the commit, so
    // the data directory ends up holding `member/` only.
    let scratch = staging.path.join("fetch");
    fs::DirBuilder::new().mode(0o700).create(&scratch).context("creating the download directory")?;
    let snap_dir = staging.path.join("member/snap");
    let db = snap_dir.join("db");
    let verify = !cfg.skip_hash_check;
    // What the primary's early chain needs to go on past the primary: the
    // chain finally chosen (its sizes on the secondary), or being abandoned.
    let abandoned = AtomicBool::new(false);
    let chosen: OnceLock<Vec<Entry>> = OnceLock::new();
    let early_size = |e: &Entry, role: Role| match role {
        Role::Primary => e.primary_size,
        _ => chosen.wait().iter().find(|c| c.name == e.name).and_then(|c| c.size_on(role)),
    };
    let early_reach = Reach { endpoints: sources, size_on: &early_size, abandoned: &abandoned };
    let arrivals = Arrivals::default();
    let fetched = std::thread::scope(|s| -> Result<_, Failure> {
        let decision = Decision { chosen: &chosen, abandoned: &abandoned };
        let (early_tx, early_rx) = crossbeam_channel::bounded(1);
        let (listed_tx, listed_rx) = crossbeam_channel::bounded(1);
        s.spawn(move || listed_tx.send(Catalog::list_early(sources, Some(early_tx))));
        // The primary answers first (the secondary may hold a newer chain,
        // so both are still merged and chosen from): its own chain starts
        // downloading at once, kept when it is the one chosen. A slow
        // secondary listing (rclone takes 40 ms for 101 objects) then costs nothing.
        let mut listed = None;
        let early = crossbeam_channel::select! {
            recv(early_rx) -> primary => primary.ok(),
            recv(listed_rx) -> merged => { listed = merged.ok(); None }
        };
        let early = early.and_then(|primary| {
            let (full, deltas) = choose(&primary, cfg.snapshot.as_deref(), sources).ok()?;
            precheck(full, &deltas, cfg.bump_revision).ok()?;
            // A key that does not open it is refused before any download, with
            // the chain finally chosen.
            if full.snapshot.encrypted {
                check_key(full, sources).ok()?;
            }
            let names = (full.name.clone(), deltas.iter().map(|d| d.name.clone()).collect::<Vec<_>>());
            let (full, deltas) = (full.clone(), deltas.into_iter().cloned().collect::<Vec<_>>());
            let plain = scratch.join("early.db");
            let (reach, scratch, arrivals, to) = (&early_reach, &scratch, &arrivals, plain.clone());
            arrivals.start();
            let fetching_deltas = s.spawn(move || {
                let deltas: Vec<&Entry> = deltas.iter().collect();
                let fetched = fetch_deltas_from(&deltas, reach, scratch, "early", Some(arrivals));
                arrivals.finished();
                fetched
            });
            let fetching_full = s.spawn(move || {
                let download = if stored_as_is(&full.snapshot) { to.clone() } else { scratch.join("early.download") };
                fetch(&full, reach, &download, &to, verify)
            });
            Some((names, plain, fetching_full, fetching_deltas))
        });
        let listed = match listed {
            Some(listed) => listed,
            None => listed_rx.recv().map_err(|_| anyhow!("the listing thread ended without an answer"))?,
        };
        let mut catalog = listed.map_err(|e| anyhow!(e))?;
        // A `--snapshot` hidden by a delete marker (versioned bucket) is looked
        // for among the object versions, which are then what is read.
        let versions = match &cfg.snapshot {
            Some(name) if !catalog.entries.iter().any(|e| &e.name == name) => sources.all_versions(),
            _ => None,
        };
        if let Some(v) = &versions {
            info!(
                "Snapshot {} is not listed; looking among the object versions",
                cfg.snapshot.as_deref().unwrap_or("")
            );
            match Catalog::list(v) {
                Ok(c) => catalog = c,
                Err(e) => warn!("Cannot list the object versions: {e}"),
            }
        }
        let sources = versions.as_ref().unwrap_or(sources);
        let (entry, deltas) = choose(&catalog, cfg.snapshot.as_deref(), sources)?;
        precheck(entry, &deltas, cfg.bump_revision)?;
        // The early chain is kept when it is the chosen one's full snapshot
        // and a first part of its deltas (the secondary may have more).
        let keep = early.as_ref().is_some_and(|((full, early_deltas), _, _, _)| {
            versions.is_none()
                && *full == entry.name
                && early_deltas.iter().all(|d| deltas.iter().any(|c| &c.name == d))
        });
        decision.publish(std::iter::once(entry).chain(deltas.iter().copied()).cloned().collect(), keep);
        if entry.snapshot.encrypted && !keep {
            check_key(entry, sources)?;
        }
        // What the kept early chain lacks (everything, when there is none)
        // is fetched from here on; `stop` ends it once it is not needed. An
        // abandoned early fetch stops alongside: the scope waits for it,
        // which a read stalled on the primary only ends at its timeout.
        let stop = AtomicBool::new(false);
        let reach = Reach { endpoints: sources, size_on: &Entry::size_on, abandoned: &stop };
        let (early_deltas, early_db, early_full, early_fetching) = match early {
            Some((names, db, full, deltas)) if keep => (names.1, Some(db), Some(full), Some(deltas)),
            _ => (Vec::new(), None, None, None),
        };
        let rest: Vec<&Entry> = deltas.iter().copied().filter(|d| !early_deltas.contains(&d.name)).collect();
        let mut files = delta_paths(early_deltas.iter().map(String::as_str), &scratch, "early");
        files.extend(delta_paths(rest.iter().map(|d| d.name.as_str()), &scratch, "delta"));
        files.sort_by_key(|(name, _)| deltas.iter().position(|d| &d.name == name));
        // The events are applied as the deltas land, in chain order, once
        // the full snapshot is in place.
        std::thread::scope(|t| {
            arrivals.start();
            let fetching = t.spawn(|| {
                let fetched = fetch_deltas_from(&rest, &reach, &scratch, "delta", Some(&arrivals));
                arrivals.finished();
                fetched
            });
            let started = Instant::now();
            let full = match (early_full, &early_db) {
                (Some(early), Some(early_db)) => early
                    .join()
                    .expect("prefetch thread panicked")
                    .and_then(|_| fs::rename(early_db, &db).context("moving the fetched snapshot into place")),
                _ => {
                    // The snapshot lands where the db goes (downloaded there
                    // when stored as is) and is changed in place, as etcdutl does.
                    let download =
                        if stored_as_is(&entry.snapshot) { db.clone() } else { scratch.join("snapshot.download") };
                    fetch(entry, &reach, &download, &db, verify).map(drop)
                }
            };
            debug!("Fetched and verified the full snapshot in {:.2?}", started.elapsed());
            let started = Instant::now();
            let restored = full.and_then(|()| {
                let ready = |name: &str, path: &Path| arrivals.wait(name, path);
                datadir::db::restore_in_place(&db, &members, cfg.bump_revision, &files, &ready)
                    .with_context(|| format!("restoring snapshot {}", entry.name))
            });
            if restored.is_err() {
                // Nothing more is needed.
                stop.store(true, Ordering::SeqCst);
                abandoned.store(true, Ordering::SeqCst);
            }
            let fetched = fetching.join().expect("delta fetch thread panicked");
            let early_fetched = early_fetching.map(|h| h.join().expect("prefetch thread panicked"));
            let revision = match restored {
                // A delta that could not be fetched stopped the apply: the fetch says why.
                Err(e) if arrivals.missed() => {
                    Err(early_fetched.and_then(Result::err).or_else(|| fetched.err()).unwrap_or(e))
                }
                r => r,
            }
            .map_err(Failure::Failed)?;
            debug!("Committed the database in {:.2?}", started.elapsed());
            Ok((entry.clone(), files, revision))
        })
    })?;
    let (entry, delta_files, revision) = fetched;
    fs::remove_dir_all(&scratch).context("removing the downloads")?;
    let started = Instant::now();
    let cluster_id = member::cluster_id(&members);
    datadir::wal::write_restore_wal(&staging.path.join("member/wal"), &local, cluster_id, &members)
        .context("writing the WAL")?;
    datadir::raft_snap::write_restore_snap(&snap_dir, &members).context("writing the .snap file")?;
    signals::check()?;
    staging.commit(&cfg.data_dir)?;
    debug!("Wrote the WAL and .snap and committed in {:.2?}", started.elapsed());
    let applied = match delta_files.last() {
        Some((last, _)) => format!(" and {} delta snapshots up to {last}", delta_files.len()),
        None => String::new(),
    };
    info!(
        "Restored {}{applied} (revision {revision}) for member {} ({:x}) of cluster {cluster_id:x} into {}",
        entry.name,
        local.name,
        local.id,
        cfg.data_dir.display()
    );
    info!("Successfully restored the etcd data directory.");
    Ok(())
}

/// What can be refused from the names alone, before a byte is downloaded.
fn precheck(entry: &Entry, deltas: &[&Entry], bump: Option<u64>) -> Result<(), Failure> {
    if let Some(bump) = bump {
        let last = deltas.last().copied().unwrap_or(entry);
        let revision = last.snapshot.last_revision;
        if revision.checked_add(bump).is_none_or(|r| r > crate::snapshot::MAX_REVISION) {
            return Err(Failure::Usage(format!(
                "--bump-revision {bump}: snapshot {} ends at revision {revision}, and the sum exceeds etcd's \
                 largest revision {}",
                last.name,
                crate::snapshot::MAX_REVISION
            )));
        }
    }
    for e in std::iter::once(entry).chain(deltas.iter().copied()) {
        if let Err(why) = compression::decoder(&e.snapshot.compression, std::io::empty()) {
            return Err(Failure::Failed(anyhow!("snapshot {}: {why}", e.name)));
        }
        // No download without a key to read it.
        if e.snapshot.encrypted && crate::encryption::installed().is_none() {
            return Err(Failure::Failed(anyhow!("snapshot {}: {}", e.name, crate::encryption::MISSING)));
        }
    }
    Ok(())
}

/// The chain chosen from both listings, for the primary's early fetch
/// that waits on it (see [`Reach`]). On any way out before it is
/// published, the early fetch is abandoned, so that nothing waits forever.
struct Decision<'a> {
    chosen: &'a OnceLock<Vec<Entry>>,
    abandoned: &'a AtomicBool,
}

impl Decision<'_> {
    fn publish(&self, chain: Vec<Entry>, keep: bool) {
        // Abandoned first: a fetch woken by the chain must not go on with one it no longer needs.
        if !keep {
            self.abandoned.store(true, Ordering::SeqCst);
        }
        let _ = self.chosen.set(chain);
    }
}

impl Drop for Decision<'_> {
    fn drop(&mut self) {
        if self.chosen.get().is_none() {
            self.publish(Vec::new(), false);
        }
    }
}

/// The target must not exist, or be an empty directory; not a symlink,
/// which the commit would replace rather than fill.
fn check_target(dir: &Path) -> Result<(), String> {
    if fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        let to = fs::read_link(dir).map_or_else(|e| e.to_string(), |t| t.display().to_string());
        return Err(format!(
            "--data-dir {} is a symbolic link (to {to}); pass the directory it points to",
            dir.display()
        ));
    }
    match fs::read_dir(dir).map(|mut entries| entries.next().is_some()) {
        Ok(true) => Err(format!("--data-dir {} is not empty; refusing to restore over existing data", dir.display())),
        Ok(false) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("--data-dir {}: {e}", dir.display())),
    }
}

/// The full snapshot to restore and the delta snapshots to apply on top:
/// the latest chain, or with `--snapshot` the named full snapshot alone, or
/// the chain up to the named delta snapshot.
fn choose<'a>(
    catalog: &'a Catalog,
    wanted: Option<&str>,
    sources: &[Endpoint],
) -> Result<(&'a Entry, Vec<&'a Entry>), Failure> {
    let name = wanted.unwrap_or_default();
    let (full, candidates) = catalog::chain_to(&catalog.entries, wanted).map_err(|why| {
        Failure::Failed(match why {
            NoChain::NotFound => anyhow!("snapshot {name} was not found on {}", endpoint::describe(sources)),
            NoChain::NoFullBefore => anyhow!("no full snapshot precedes {name} on {}", endpoint::describe(sources)),
            NoChain::NoFull => {
                let failed = if catalog.failures.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (could not list: {})",
                        catalog.failures.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>().join("; ")
                    )
                };
                anyhow!("no full snapshot found on {}{failed}", endpoint::describe(sources))
            }
        })
    })?;
    let deltas = catalog::delta_chain(full, &candidates).map_err(|Gap { before, covered, next }| {
        Failure::Failed(anyhow!(
            "the snapshot chain has a gap: {before} ends at revision {covered} but the next delta snapshot, {}, \
             starts at revision {}; revisions {} to {} are on no endpoint (to restore up to revision {covered}, pass \
             --snapshot {before})",
            next.name,
            next.snapshot.start_revision,
            covered + 1,
            next.snapshot.start_revision - 1
        ))
    })?;
    Ok((full, deltas))
}

/// Ranged GETs of this size, this many at once: one S3 stream is limited
/// by the server (about 85 MB/s from s3s-fs here), several fill the link.
/// Eight rather than four (`aws s3 cp` runs ten): a 279 MB restore took
/// 1.17-1.19× the time of `aws s3 cp` alone, against 1.25-1.47× with four
/// (separate runs). Each holds a 256 KiB buffer.
const PART: u64 = 8 << 20;
const PARALLEL_PARTS: usize = 8;
/// How many parts a download may run ahead of the reader behind it: what
/// a scratch download can hold on disk at most (128 MiB).
const AHEAD: usize = 2 * PARALLEL_PARTS;
/// S3's largest object. A listed size beyond it is a broken listing, and
/// would size the part table and the sparse download file.
const MAX_OBJECT_SIZE: u64 = 5 << 40;

/// Where a fetch reads: the endpoints, in order; each entry's size on an
/// endpoint, asked only when the fetch turns to it (a prefetch from the
/// primary learns the secondary's once both listings are merged); and a
/// flag that abandons the fetch (that chain was not the one chosen).
struct Reach<'a> {
    endpoints: &'a [Endpoint],
    size_on: &'a (dyn Fn(&Entry, Role) -> Option<u64> + Sync),
    abandoned: &'a AtomicBool,
}

/// Download `entry` into `dest`, primary first, in parallel ranged parts,
/// and leave the plain (decompressed) snapshot in `plain` (which may be
/// `dest` itself for a snapshot stored as is). The object is decrypted,
/// decompressed and hashed in order right behind the parts as they land,
/// so the download and those steps overlap. When an endpoint fails, the
/// parts still missing come from the next one if its copy has the same
/// size, with the reader behind them going on where it was; the SHA-256
/// trailer, checked over the plain snapshot, still covers the whole result.
fn fetch(entry: &Entry, reach: &Reach<'_>, dest: &Path, plain: &Path, verify: bool) -> anyhow::Result<Role> {
    let name = &entry.name;
    let as_is = stored_as_is(&entry.snapshot);
    if dest == plain && !as_is {
        bail!("snapshot {name}: cannot decompress or decrypt a download into itself");
    }
    let sources = reach.endpoints;
    // The endpoints in turn; one that resumed a download whose bytes then
    // failed the checks is tried again alone at the end (the bad bytes may
    // be the first endpoint's).
    let mut plan: Vec<usize> = (0..sources.len()).collect();
    // Created for the first download in parts.
    let mut download_file: Option<File> = None;
    let mut causes = Vec::new();
    let mut step = 0;
    while step < plan.len() {
        let src = &sources[plan[step]];
        step += 1;
        let role = src.role.name();
        if reach.abandoned.load(Ordering::SeqCst) {
            bail!("snapshot {name}: fetch abandoned");
        }
        let Some(size) = (reach.size_on)(entry, src.role) else { continue };
        if size > MAX_OBJECT_SIZE {
            let e =
                format!("{} lists it with {size} bytes, more than an S3 object can hold (5 TiB)", src.store.location());
            warn!("Failed to fetch snapshot {name} from {role} endpoint: {e}");
            causes.push(format!("{role}: {e}"));
            continue;
        }
        // One part (a delta, a small db): one GET streamed through the checks
        // into `plain`, with no download file to write and read back.
        let (result, used) = if size <= PART {
            (fetch_whole(src, entry, size, plain, verify, reach.abandoned).map_err(|e| anyhow!(e)), vec![src])
        } else {
            let file = match &download_file {
                // Not on a new file: ext4 would flush a file truncated to 0 when it is closed.
                Some(file) => file.set_len(0).map(|()| file)?,
                None => download_file
                    .insert(File::options().read(true).write(true).create(true).truncate(true).mode(0o600).open(dest)?),
            };
            file.set_len(size)?;
            let landed = Landed::new(vec![false; size.div_ceil(PART) as usize], reach.abandoned);
            let check = verify.then(|| TrailerCheck::for_kind(entry.snapshot.kind));
            let bound = SizeBound::new(entry.snapshot.kind);
            let unpack = || {
                // The download is only scratch (not the db): each part read is released.
                let input = InOrder { file, landed: &landed, pos: 0, size, release: !as_is };
                let r = unpack(input, size, &entry.snapshot, plain, as_is.then_some(file), bound, check);
                if r.is_err() {
                    landed.stop(false);
                }
                landed.reader_at(usize::MAX);
                r
            };
            let mut used = vec![src];
            let (fetched, unpacked) = std::thread::scope(|s| {
                let reader = s.spawn(unpack);
                let fetched = loop {
                    let from = used[used.len() - 1];
                    let e = match download(from, name, size, file, &landed) {
                        Ok(()) => break Ok(()),
                        // The reader gave up (its error says why), or the fetch was abandoned.
                        Err(e) if landed.is_stopped() => break Err(e),
                        Err(e) => e,
                    };
                    let from = from.role.name();
                    warn!("Failed to fetch snapshot {name} from {from} endpoint: {e:#}");
                    causes.push(format!("{from}: {e:#}"));
                    let next =
                        plan.get(step).map(|&j| &sources[j]).filter(|n| (reach.size_on)(entry, n.role) == Some(size));
                    let Some(next) = next.filter(|_| !signals::interrupted()) else {
                        landed.stop(true);
                        break Err(e);
                    };
                    step += 1;
                    used.push(next);
                    let have = landed.bytes(size);
                    if have > 0 {
                        let to = next.role.name();
                        info!("Resuming snapshot {name} from {to} endpoint: {have} of {size} bytes already fetched");
                    }
                };
                (fetched, reader.join().expect("unpack thread panicked"))
            });
            let result = match (fetched, unpacked) {
                (Ok(()), Ok(())) => Ok(()),
                // Each endpoint's failure is already told.
                (Err(_), _) if landed.download_failed.load(Ordering::SeqCst) => {
                    if signals::interrupted() {
                        break;
                    }
                    continue;
                }
                (_, Err(e)) | (Err(e), Ok(())) => Err(e),
            };
            (result, used)
        };
        let last = used[used.len() - 1];
        match result {
            Ok(()) => {
                // A download in parts of a snapshot stored as is is the
                // snapshot; otherwise only `plain` is needed from here.
                if download_file.is_some() && dest != plain {
                    if as_is && size > PART {
                        fs::rename(dest, plain)?;
                    } else {
                        let _ = fs::remove_file(dest);
                    }
                }
                info!("Successfully fetched snapshot {name} from {} endpoint", last.role.name());
                return Ok(last.role);
            }
            Err(_) if reach.abandoned.load(Ordering::SeqCst) => bail!("snapshot {name}: fetch abandoned"),
            Err(e) => {
                // Bytes that fail the checks after a resume are either endpoint's.
                let role = used.iter().map(|u| u.role.name()).collect::<Vec<_>>().join(" and ");
                let endpoints = if used.len() > 1 { "endpoints" } else { "endpoint" };
                warn!("Failed to fetch snapshot {name} from {role} {endpoints}: {e:#}");
                causes.push(format!("{role}: {e:#}"));
                if signals::interrupted() {
                    break;
                }
                if used.len() > 1 {
                    plan.push(plan[step - 1]);
                }
            }
        }
    }
    signals::check()?;
    bail!("could not fetch snapshot {name} from any endpoint - {}", causes.join("; "))
}

/// Fetch `entry` (`size` bytes on `src`) with one GET, unpacked into
/// `plain` as it streams in; retried whole by the endpoint's policy when
/// the transfer breaks, not when the bytes are wrong.
fn fetch_whole(
    src: &Endpoint,
    entry: &Entry,
    size: u64,
    plain: &Path,
    verify: bool,
    abandoned: &AtomicBool,
) -> Result<(), store::Error> {
    let name = &entry.name;
    src.call(&format!("fetching {name}"), || {
        let stopped = || abandoned.load(Ordering::SeqCst) || signals::interrupted();
        let mut body = Body::new(src.store.load(name, 0, Some(size))?, 0, size, &stopped);
        let check = verify.then(|| TrailerCheck::for_kind(entry.snapshot.kind));
        let bound = SizeBound::new(entry.snapshot.kind);
        match (unpack(&mut body, size, &entry.snapshot, plain, None, bound, check), body.broken.take()) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(store::Error::new(store::ErrorKind::Permanent, format!("{e:#}"))),
        }
    })
}

/// Bytes `offset..offset+len` of an object as a GET answers them, read
/// until `stopped` says otherwise; it records why it broke: the transfer
/// (transient), an early end or a stop (permanent).
struct Body<'a> {
    inner: Box<dyn Read + Send>,
    offset: u64,
    len: u64,
    got: u64,
    stopped: &'a dyn Fn() -> bool,
    broken: Option<store::Error>,
}

impl<'a> Body<'a> {
    fn new(inner: Box<dyn Read + Send>, offset: u64, len: u64, stopped: &'a dyn Fn() -> bool) -> Body<'a> {
        Body { inner, offset, len, got: 0, stopped, broken: None }
    }

    /// Why a read failed: what it recorded, else `e` itself (transient).
    fn why(&mut self, e: std::io::Error) -> store::Error {
        self.broken.take().unwrap_or_else(|| store::Error::new(store::ErrorKind::Transient, e.to_string()))
    }

    fn fail(&mut self, kind: store::ErrorKind, msg: String) -> std::io::Error {
        let e = std::io::Error::other(msg.clone());
        self.broken = Some(store::Error::new(kind, msg));
        e
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len - self.got;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        if (self.stopped)() {
            let msg = "stopped (a signal, an abandoned fetch, or bad bytes before)".to_string();
            return Err(self.fail(store::ErrorKind::Permanent, msg));
        }
        let len = (buf.len() as u64).min(left) as usize;
        loop {
            match self.inner.read(&mut buf[..len]) {
                Ok(0) => {
                    let (start, end, got) = (self.offset, self.offset + self.len, self.got);
                    let msg = format!("bytes {start}..{end}: the object ended after {got} bytes");
                    return Err(self.fail(store::ErrorKind::Permanent, msg));
                }
                Ok(n) => {
                    self.got += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let msg = format!("broken after {} bytes: {e}", self.got);
                    return Err(self.fail(store::ErrorKind::Transient, msg));
                }
            }
        }
    }
}

/// Whether the object's bytes are the snapshot itself (no compression, no
/// encryption).
fn stored_as_is(snapshot: &SnapshotName) -> bool {
    snapshot.compression.is_empty() && !snapshot.encrypted
}

/// The parts of one download that have landed, shared by the threads
/// fetching them and the one reading the object in order behind them.
struct Landed<'a> {
    parts: Mutex<Vec<bool>>,
    changed: Condvar,
    /// Either side gave up: the other stops too.
    stopped: AtomicBool,
    /// It was the download that gave up (its finished parts stay usable).
    download_failed: AtomicBool,
    /// The whole fetch was abandoned ([`Reach::abandoned`]).
    abandoned: &'a AtomicBool,
    /// The part the reader is at (`usize::MAX` once it is done).
    reading: AtomicUsize,
}

impl Landed<'_> {
    fn new(parts: Vec<bool>, abandoned: &AtomicBool) -> Landed<'_> {
        Landed {
            parts: Mutex::new(parts),
            changed: Condvar::new(),
            stopped: AtomicBool::new(false),
            download_failed: AtomicBool::new(false),
            abandoned,
            reading: AtomicUsize::new(0),
        }
    }

    /// The reader is at `part` (`usize::MAX`: it is done, whatever the outcome).
    fn reader_at(&self, part: usize) {
        let _parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        self.reading.store(part, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Until `part` is at most [`AHEAD`] parts ahead of the reader; false
    /// once either side stopped.
    fn wait_turn(&self, part: usize) -> bool {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        while part >= self.reading.load(Ordering::SeqCst).saturating_add(AHEAD) {
            if self.is_stopped() {
                return false;
            }
            // Bounded, so that a signal is noticed without a notification.
            parts =
                self.changed.wait_timeout(parts, Duration::from_millis(200)).map_or_else(|p| p.into_inner().0, |r| r.0);
        }
        !self.is_stopped()
    }

    fn set(&self, part: usize) {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())[part] = true;
        self.changed.notify_all();
    }

    fn stop(&self, by_download: bool) {
        // Under the lock, so that a reader about to wait sees it, and a
        // download stopped by the reader is not taken for a failed one.
        let _parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        if by_download && !self.stopped.load(Ordering::SeqCst) {
            self.download_failed.store(true, Ordering::SeqCst);
        }
        self.stopped.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst) || self.abandoned.load(Ordering::SeqCst) || signals::interrupted()
    }

    /// Bytes of the `size`-byte object landed so far.
    fn bytes(&self, size: u64) -> u64 {
        let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        parts.iter().enumerate().filter(|&(_, &d)| d).map(|(p, _)| part_len(p, size)).sum()
    }
}

/// The download read from the start, each part once it has landed; with
/// `release`, each part read is punched out of the file, so that a
/// compressed download never needs its whole size on disk next to the db
/// (the reader never goes back, and a failover resumes behind it).
struct InOrder<'a> {
    file: &'a File,
    landed: &'a Landed<'a>,
    pos: u64,
    size: u64,
    release: bool,
}

impl Read for InOrder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let part = (self.pos / PART) as usize;
        let mut parts = self.landed.parts.lock().unwrap_or_else(|p| p.into_inner());
        while !parts[part] {
            if self.landed.is_stopped() {
                return Err(std::io::Error::other("the download stopped"));
            }
            // Bounded, so that a signal is noticed without a notification.
            parts = self
                .landed
                .changed
                .wait_timeout(parts, Duration::from_millis(200))
                .map_or_else(|p| p.into_inner().0, |r| r.0);
        }
        drop(parts);
        let end = ((part as u64 + 1) * PART).min(self.size);
        let n = (buf.len() as u64).min(end - self.pos) as usize;
        let n = self.file.read_at(&mut buf[..n], self.pos)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        if self.pos == end {
            if self.release {
                // A whole part even for the last: its partial last block is freed too.
                punch_hole(self.file, part as u64 * PART, PART);
            }
            self.landed.reader_at(part + 1);
        }
        Ok(n)
    }
}

/// Read the age header of `entry` (its first 64 KiB at most) from the first
/// endpoint that serves it and refuse a key that does not open it, once,
/// before the whole snapshot is downloaded from each endpoint in turn. A
/// store failure here is left to the fetch, with its failover.
fn check_key(entry: &Entry, sources: &[Endpoint]) -> anyhow::Result<()> {
    for src in sources {
        let Some(size) = entry.size_on(src.role) else { continue };
        let head = src.call("reading the age header", || src.store.load(&entry.name, 0, Some(size.min(64 << 10))));
        if let Ok(head) = head {
            return crate::encryption::unlocks(head).map_err(|e| anyhow!("snapshot {}: {e}", entry.name));
        }
    }
    Ok(())
}

/// Delta snapshots fetched at once: small objects, so latency-bound.
const PARALLEL_DELTAS: usize = 16;

/// Fetch every delta (each from the primary, else the secondary) into the
/// staging directory, verified; returns (name, plain file) in chain order.
pub(crate) fn fetch_deltas(
    deltas: &[&Entry],
    sources: &[Endpoint],
    dir: &Path,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let reach = Reach { endpoints: sources, size_on: &Entry::size_on, abandoned: &AtomicBool::new(false) };
    fetch_deltas_from(deltas, &reach, dir, "delta", None)
}

/// Where `fetch_deltas_from` puts each of `names`, in their order.
fn delta_paths<'n>(names: impl Iterator<Item = &'n str>, dir: &Path, stem: &str) -> Vec<(String, PathBuf)> {
    names.enumerate().map(|(i, name)| (name.to_string(), dir.join(format!("{stem}-{i:06}")))).collect()
}

/// Fetch `deltas` into `dir` as [`delta_paths`] names them, each announced
/// to `arrivals` as soon as it is there and verified.
fn fetch_deltas_from(
    deltas: &[&Entry],
    reach: &Reach<'_>,
    dir: &Path,
    stem: &str,
    arrivals: Option<&Arrivals>,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let files = delta_paths(deltas.iter().map(|d| d.name.as_str()), dir, stem);
    let indices: Vec<usize> = (0..deltas.len()).collect();
    let (_, error) = in_parallel(
        &indices,
        PARALLEL_DELTAS,
        || (),
        |(), i| {
            let plain = &files[i].1;
            fetch(deltas[i], reach, &plain.with_extension("download"), plain, true)?;
            if let Some(arrivals) = arrivals {
                arrivals.arrived(plain);
            }
            Ok(())
        },
    );
    if let Some(e) = error {
        return Err(e);
    }
    // A signal stops the workers without an error of their own.
    signals::check()?;
    Ok(files)
}

/// The delta files fetched so far, and how many fetchers are still at
/// work: the apply waits on each delta in turn while later ones are fetched.
#[derive(Default)]
struct Arrivals {
    state: Mutex<(HashSet<PathBuf>, usize)>,
    changed: Condvar,
    /// A wait ended without its file.
    missed: AtomicBool,
}

impl Arrivals {
    /// A fetcher starts; it calls [`Arrivals::finished`] when done, whatever the outcome.
    fn start(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 += 1;
    }

    fn arrived(&self, file: &Path) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0.insert(file.to_path_buf());
        self.changed.notify_all();
    }

    fn finished(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 -= 1;
        self.changed.notify_all();
    }

    fn missed(&self) -> bool {
        self.missed.load(Ordering::SeqCst)
    }

    /// Until delta `name` is in `file`; an error once no fetcher is left to bring it.
    fn wait(&self, name: &str, file: &Path) -> anyhow::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if state.0.contains(file) {
                return Ok(());
            }
            if state.1 == 0 {
                self.missed.store(true, Ordering::SeqCst);
                bail!("delta snapshot {name} was not fetched");
            }
            signals::check()?;
            // Bounded, so that a signal is noticed without a notification.
            state =
                self.changed.wait_timeout(state, Duration::from_millis(200)).map_or_else(|p| p.into_inner().0, |r| r.0);
        }
    }
}

/// Run `job` on each of `items`, `workers` threads at a time, each thread
/// with its own `state`; no job starts after one failed or a signal came.
/// Returns the items whose job succeeded and the first error.
fn in_parallel<T, S>(
    items: &[T],
    workers: usize,
    state: impl Fn() -> S + Sync,
    job: impl Fn(&mut S, T) -> anyhow::Result<()> + Sync,
) -> (Vec<T>, Option<anyhow::Error>)
where
    T: Copy + Send + Sync,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.min(items.len()))
            .map(|_| {
                s.spawn(|| {
                    let (mut state, mut done) = (state(), Vec::new());
                    while let Some(&item) = items.get(next.fetch_add(1, Ordering::SeqCst)) {
                        if failed.load(Ordering::SeqCst) || signals::interrupted() {
                            break;
                        }
                        if let Err(e) = job(&mut state, item) {
                            failed.store(true, Ordering::SeqCst);
                            return (done, Some(e));
                        }
                        done.push(item);
                    }
                    (done, None)
                })
            })
            .collect();
        let (mut done, mut first) = (Vec::new(), None);
        for h in handles {
            let (d, e) = h.join().expect("worker thread panicked");
            done.extend(d);
            first = first.or(e);
        }
        (done, first)
    })
}

/// Start writing `len` bytes of `file` at `offset` to disk without waiting
/// for it, so that the fsync before the commit finds little left to do
/// (for a large db most of it otherwise waits until then). Best effort.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `file` keeps open.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Free `len` bytes of `file` at `offset` (its size stays), dropping
/// their pages before they are written back. Best effort: a file system
/// without hole punching keeps them until the file is removed.
fn punch_hole(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `file` keeps open.
    unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as i64,
            len as i64,
        );
    }
}

/// A buffer of `max` bytes, less for a smaller object (sixteen deltas are
/// fetched at once).
fn buffer_for(size: u64, max: usize) -> usize {
    (size as usize).clamp(16 << 10, max)
}

fn part_len(part: usize, size: u64) -> u64 {
    PART.min(size - part as u64 * PART)
}

/// Fetch the parts not yet landed from `src`, `PARALLEL_PARTS` at a time,
/// in order, each retried by the endpoint's policy; stops at the first
/// part that still fails, or when the reader behind gave up.
fn download(src: &Endpoint, name: &str, size: u64, file: &File, landed: &Landed<'_>) -> anyhow::Result<()> {
    let missing: Vec<usize> = {
        let parts = landed.parts.lock().unwrap_or_else(|p| p.into_inner());
        (0..parts.len()).filter(|&p| !parts[p]).collect()
    };
    let job = |buf: &mut Vec<u8>, part: usize| {
        if !landed.wait_turn(part) {
            bail!("snapshot {name}: the download stopped");
        }
        let offset = part as u64 * PART;
        let len = part_len(part, size);
        src.call(&format!("fetching {name}"), || fetch_part(src, name, offset, len, file, buf, landed))
            .map_err(|e| anyhow!(e))?;
        landed.set(part);
        Ok(())
    };
    let error = if missing.len() <= 1 {
        // No worker thread for one part.
        missing.first().and_then(|&part| job(&mut vec![0u8; buffer_for(size, 256 << 10)], part).err())
    } else {
        in_parallel(&missing, PARALLEL_PARTS, || vec![0u8; 256 << 10], job).1
    };
    if let Some(e) = error {
        return Err(e);
    }
    signals::check()?;
    Ok(())
}

/// Bytes `offset..offset+len` of `name` into the same place of `file`.
fn fetch_part(
    src: &Endpoint,
    name: &str,
    offset: u64,
    len: u64,
    file: &File,
    buf: &mut [u8],
    landed: &Landed<'_>,
) -> store::Result<()> {
    let stopped = || landed.is_stopped();
    let mut body = Body::new(src.store.load(name, offset, Some(len))?, offset, len, &stopped);
    loop {
        let at = offset + body.got;
        let n = match body.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(body.why(e)),
        };
        file.write_all_at(&buf[..n], at).map_err(|e| {
            store::Error::new(store::ErrorKind::Permanent, format!("writing the downloaded snapshot: {e}"))
        })?;
    }
    // The connection is reused over TLS only (see `store::s3`).
    Ok(())
}

/// Decrypt and decompress `input` (`size` bytes; per the name) into
/// `plain`, checking etcd's SHA-256 trailer on the way unless `verify` is
/// off, and stopping (with `plain` removed) as soon as the output passes
/// `bound`. `in_place` is the download when it already is the snapshot
/// (stored as is): it is only read and checked.
fn unpack(
    input: impl Read,
    size: u64,
    snapshot: &SnapshotName,
    plain: &Path,
    in_place: Option<&File>,
    mut bound: SizeBound,
    verify: Option<TrailerCheck>,
) -> anyhow::Result<()> {
    let result = unpack_into(input, size, snapshot, plain, in_place, &mut bound, verify);
    if result.is_err() && in_place.is_none() {
        // A bomb's output must not stay on disk while the other endpoint is tried.
        let _ = fs::remove_file(plain);
    }
    result
}

fn unpack_into(
    raw: impl Read,
    size: u64,
    snapshot: &SnapshotName,
    plain: &Path,
    in_place: Option<&File>,
    bound: &mut SizeBound,
    verify: Option<TrailerCheck>,
) -> anyhow::Result<()> {
    let suffix = snapshot.compression.as_str();
    let as_is = stored_as_is(snapshot);
    if in_place.is_some() && verify.is_none() {
        // Nothing to check or write: the download is the snapshot.
        return Ok(());
    }
    let mut out = match in_place {
        Some(_) => None,
        None => Some(File::options().write(true).create(true).truncate(true).mode(0o600).open(plain)?),
    };
    let raw = std::io::BufReader::with_capacity(buffer_for(size, 1 << 20), raw);
    // Decrypted first (age after compression when stored), then decompressed.
    let mut input = if snapshot.encrypted {
        crate::encryption::reader(raw).and_then(|r| compression::decoder(suffix, r))
    } else {
        compression::decoder(suffix, raw)
    }
    .map_err(|e| anyhow!(e))?;
    let mut check = verify;
    let mut buf = vec![0u8; buffer_for(size, 1 << 20)];
    loop {
        signals::check()?;
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if as_is => return Err(e.into()),
            Err(e) if snapshot.encrypted => bail!("cannot decrypt or decompress (.age, {suffix}): {e}"),
            Err(e) => bail!("cannot decompress ({suffix}): {e}"),
        };
        bound.update(&buf[..n]).map_err(|e| anyhow!(e))?;
        if let Some(out) = out.as_mut() {
            out.write_all(&buf[..n]).context("writing the decompressed snapshot")?;
        }
        // Each PART of the db to disk once written, or, when the download
        // is the db, once hashed: behind the parts, the hash read pages
        // under writeback (a 1.4 GB restore took 60% longer).
        let end = bound.total;
        if end / PART != (end - n as u64) / PART
            && let Some(file) = out.as_ref().or(in_place)
        {
            start_writeback(file, (end / PART - 1) * PART, PART);
        }
        if let Some(c) = check.as_mut() {
            c.update(&buf[..n]);
        }
    }
    if let Some(c) = check {
        c.finish().map_err(|e| anyhow!(e))?;
    }
    Ok(())
}

/// `<parent>/.<name>.restore-<pid>`: built here, renamed onto the target
/// when complete, removed on any error or signal.
struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Staging {
    /// Made under the target's lock, after removing dead restores' leftovers.
    fn create(lock: &lock::TargetLock) -> anyhow::Result<Staging> {
        lock.remove_leftovers()?;
        let path = lock.staging_path();
        // Not recursive: a directory already there (a leftover that was
        // not provably ours) is never reused.
        fs::DirBuilder::new().mode(0o700).create(&path).with_context(|| format!("creating {}", path.display()))?;
        signals::remove_on_signal(&path);
        let staging = Staging { path, committed: false };
        let mut dirs = fs::DirBuilder::new();
        dirs.recursive(true).mode(0o700);
        dirs.create(staging.path.join("member/snap"))
            .with_context(|| format!("creating {}", staging.path.display()))?;
        Ok(staging)
    }

    fn commit(mut self, target: &Path) -> anyhow::Result<()> {
        for d in ["member/snap", "member/wal", "member", ""] {
            File::open(self.path.join(d))?.sync_all()?;
        }
        let mut on_signal = signals::cleanup_list();
        // rename(2) replaces an empty directory; check_target allowed only that.
        fs::rename(&self.path, target)
            .with_context(|| format!("moving the restored data into {}", target.display()))?;
        on_signal.retain(|d| d != &self.path);
        drop(on_signal);
        self.committed = true;
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
            signals::cleanup_list().retain(|d| d != &self.path);
        }
    }
}

/// The most a delta snapshot may decompress to. The snapshotter writes a
/// delta once its events reach `--delta-snapshot-memory-limit` (10 MiB
/// here, 100 MiB upstream) and holds them at most 4 × that long before
/// taking a full snapshot instead; 512 MiB covers upstream's default with
/// room for the event that crossed the limit, and `delta::parse` holds the
/// whole delta in memory, so a larger one could not be applied anyway.
const MAX_DELTA: u64 = 512 << 20;

/// Counts a snapshot's plain bytes as they are produced (decompressed) and
/// fails as soon as they pass what the snapshot can hold: for a full
/// snapshot exactly the size its bbolt meta page gives plus the trailer,
/// known after its first bytes; for a delta [`MAX_DELTA`].
struct SizeBound {
    kind: Kind,
    /// The first bytes of a full snapshot, until the meta page is complete.
    head: Vec<u8>,
    limit: Option<u64>,
    total: u64,
}

impl SizeBound {
    fn new(kind: Kind) -> SizeBound {
        let limit = (kind == Kind::Incr).then_some(MAX_DELTA);
        SizeBound { kind, head: Vec::new(), limit, total: 0 }
    }

    /// Count `data`, the next plain bytes; an error once there are too many.
    fn update(&mut self, data: &[u8]) -> Result<(), String> {
        self.total += data.len() as u64;
        if self.limit.is_none() {
            let want = crate::datadir::bbolt::META_HEAD - self.head.len();
            self.head.extend_from_slice(&data[..want.min(data.len())]);
            if self.head.len() == crate::datadir::bbolt::META_HEAD {
                let size = crate::datadir::bbolt::written_size(&self.head)
                    .map_err(|e| format!("not an etcd snapshot: its first bbolt meta page is invalid ({e})"))?;
                self.limit = Some(size.saturating_add(TRAILER_LEN as u64));
                self.head = Vec::new();
            }
        }
        match self.limit {
            Some(limit) if self.total > limit => Err(match self.kind {
                Kind::Full => format!(
                    "the snapshot is larger than the {limit} bytes its bbolt meta page gives (page count × page size + \
                     {TRAILER_LEN}-byte trailer); stopped after {} bytes",
                    self.total
                ),
                Kind::Incr => format!(
                    "the delta snapshot is larger than {limit} bytes, the most a delta snapshot can hold; stopped after \
                     {} bytes",
                    self.total
                ),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_must_be_missing_or_empty() {
        let scratch = crate::test_scratch::dir("target");
        let d = scratch.join("target");
        assert!(check_target(&d).is_ok());
        fs::create_dir_all(&d).unwrap();
        assert!(check_target(&d).is_ok());
        fs::write(d.join("x"), "").unwrap();
        let e = check_target(&d).unwrap_err();
        assert!(e.contains("is not empty") && e.contains(d.to_str().unwrap()), "{e}");
        for to in [scratch.join("empty"), scratch.join("missing")] {
            fs::create_dir_all(scratch.join("empty")).unwrap();
            let link = scratch.join("link");
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&to, &link).unwrap();
            let e = check_target(&link).unwrap_err();
            assert!(e.contains("is a symbolic link") && e.contains(to.to_str().unwrap()), "{e}");
        }
    }

    #[test]
    fn staging_is_removed_unless_committed() {
        let d = crate::test_scratch::dir("staging");
        let target = d.join("data");
        let lock = lock::TargetLock::acquire(&target).unwrap();
        let s = Staging::create(&lock).unwrap();
        let path = s.path.clone();
        assert!(path.join("member/snap").is_dir());
        drop(s);
        assert!(!path.exists());
        let s = Staging::create(&lock).unwrap();
        fs::create_dir_all(s.path.join("member/wal")).unwrap();
        s.commit(&target).unwrap();
        assert!(target.join("member/snap").is_dir());
    }

    #[test]
    fn parts_read_in_order_are_released_from_a_scratch_download() {
        use std::os::unix::fs::MetadataExt;
        let d = crate::test_scratch::dir("release");
        let size = 2 * PART + 5000;
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let on_disk = |f: &File| f.metadata().unwrap().blocks() * 512;
        for release in [false, true] {
            let path = d.join(format!("download-{release}"));
            fs::write(&path, &bytes).unwrap();
            let file = File::options().read(true).write(true).open(&path).unwrap();
            file.sync_all().unwrap();
            assert!(on_disk(&file) >= size, "{}", on_disk(&file));
            let abandoned = AtomicBool::new(false);
            let landed = Landed::new(vec![true; 3], &abandoned);
            let mut input = InOrder { file: &file, landed: &landed, pos: 0, size, release };
            // The first part and a bit of the second: only the first is released.
            let mut got = vec![0u8; (PART + 100) as usize];
            input.read_exact(&mut got).unwrap();
            assert_eq!(got, bytes[..got.len()]);
            let left = if release { size - PART } else { size };
            assert!(on_disk(&file) >= left && on_disk(&file) < left + (64 << 10), "{release}: {}", on_disk(&file));
            let mut rest = Vec::new();
            input.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, bytes[got.len()..]);
            assert_eq!(file.metadata().unwrap().len(), size, "the size stays");
            assert_eq!(on_disk(&file) == 0, release, "{release}: {}", on_disk(&file));
        }
    }

    #[test]
    fn a_download_runs_at_most_ahead_parts_in_front_of_the_reader() {
        let abandoned = AtomicBool::new(false);
        let landed = Landed::new(vec![false; 3 * AHEAD], &abandoned);
        assert!(landed.wait_turn(AHEAD - 1));
        std::thread::scope(|s| {
            let waiting = s.spawn(|| landed.wait_turn(AHEAD));
            std::thread::sleep(Duration::from_millis(300));
            assert!(!waiting.is_finished(), "part AHEAD waits while the reader is at part 0");
            landed.reader_at(1);
            assert!(waiting.join().unwrap());
            let stopped = s.spawn(|| landed.wait_turn(2 * AHEAD));
            landed.stop(false);
            assert!(!stopped.join().unwrap(), "a stop ends the wait");
        });
        landed.reader_at(usize::MAX);
        assert!(!landed.wait_turn(3 * AHEAD - 1), "stopped, even with the reader done");
    }
}
