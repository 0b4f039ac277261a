//! What etcd had when each snapshot was stored: its `HashKV` at the
//! snapshot's last revision, kept so that `snapshot verify --deep` can prove
//! that the stored chain restores to exactly that keyspace.
//!
//! A record is a small JSON object `<prefix>/hashkv/<snapshot name>` beside
//! `v2/`, on every endpoint that stored the snapshot. Upstream's tool never
//! reads it: it parses only keys containing `v1`/`v2` and splits them at
//! `v2/` (a record's key has neither, unless the prefix does, and then it
//! is skipped as an unparsable name). The records travel with their
//! snapshots: reconcile copies them, garbage collection deletes them.
//!
//! Asking etcd costs a scan of its keyspace, during which etcd's writes
//! wait, so a [`Recorder`] thread does it in the background once a snapshot
//! is stored, a snapshot never waits for it, and it keeps etcd hashing a
//! tenth of the time at most.

use crate::endpoint::{Endpoint, Endpoints, Role};
use crate::etcd::{self, EtcdConfig, HashKv};
use crate::report::Outcome;
use crate::store::{self, ErrorKind, Store};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use log::{debug, warn};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The directory beside `v2/` holding the records.
pub const DIR: &str = "hashkv";

/// Larger objects under `hashkv/` are not records.
const MAX_SIZE: u64 = 4096;

/// Snapshots waiting for their record; beyond that, records are skipped.
const QUEUE: usize = 64;

pub fn store(ep: &Endpoint) -> Arc<dyn Store> {
    ep.store.sibling(DIR)
}

pub fn encode(h: &HashKv) -> Vec<u8> {
    let v = serde_json::json!({
        "revision": h.revision,
        "hash": h.hash,
        "compactRevision": h.compact_revision,
    });
    let mut out = serde_json::to_vec(&v).expect("plain JSON values");
    out.push(b'\n');
    out
}

pub fn decode(data: &[u8]) -> Result<HashKv, String> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| format!("not a HashKV record: {e}"))?;
    let int = |field: &str| v.get(field).and_then(serde_json::Value::as_i64);
    match (int("revision"), v.get("hash").and_then(serde_json::Value::as_u64), int("compactRevision")) {
        (Some(revision), Some(hash), Some(compact_revision))
            // etcd says -1 before its first compaction.
            if revision > 0 && compact_revision >= -1 && compact_revision <= revision =>
        {
            let hash = u32::try_from(hash).map_err(|_| format!("hash {hash} is not a 32-bit value"))?;
            Ok(HashKv { revision, hash, compact_revision })
        }
        _ => Err("a HashKV record needs revision > 0, hash and -1 <= compactRevision <= revision".into()),
    }
}

/// The record of snapshot `name` on `ep`: `Ok(None)` when there is none.
pub fn load(ep: &Endpoint, name: &str) -> Result<Option<HashKv>, String> {
    let records = store(ep);
    let read = ep.call(&format!("reading the HashKV record of {name}"), || {
        let mut data = Vec::new();
        records
            .load(name, 0, Some(MAX_SIZE + 1))?
            .take(MAX_SIZE + 1)
            .read_to_end(&mut data)
            .map_err(|e| store::Error::new(ErrorKind::Transient, format!("reading {name}: {e}")))?;
        Ok(data)
    });
    match read {
        Ok(data) if data.len() as u64 > MAX_SIZE => {
            Err(format!("HashKV record {DIR}/{name}: larger than {MAX_SIZE} bytes"))
        }
        Ok(data) => decode(&data).map(Some).map_err(|e| format!("HashKV record {DIR}/{name}: {e}")),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

pub fn save(ep: &Endpoint, name: &str, h: &HashKv) -> store::Result<()> {
    let (records, data) = (store(ep), encode(h));
    ep.call(&format!("saving the HashKV record of {name}"), || store::save(&*records, name, &data))
}

/// Remove the record of `name`, if any; a failure only leaves a small
/// orphan, so it is logged at debug level.
pub fn delete(ep: &Endpoint, name: &str) {
    if let Err(e) = store(ep).delete(name) {
        debug!("{} endpoint: cannot delete the HashKV record of {name}: {e}", ep.name());
    }
}

/// Copy the record of `name` from `src` to `dst` (as `dst_name`), when
/// `src` has one.
pub fn copy(src: &Endpoint, dst: &Endpoint, name: &str, dst_name: &str) {
    match load(src, name) {
        Ok(Some(h)) => {
            if let Err(e) = save(dst, dst_name, &h) {
                warn!("{} endpoint: cannot save the HashKV record of {name}: {e}", dst.name());
            }
        }
        Ok(None) => {}
        Err(e) => warn!("{} endpoint: {e}; not copied", src.name()),
    }
}

/// What the recorder thread is asked: hash at `revision` for snapshot
/// `name`, and save the record on `on`.
struct Request {
    name: String,
    revision: u64,
    on: Vec<Role>,
}

/// The share of time the recorder may keep etcd hashing. etcd holds its
/// backend's read transaction for a whole HashKV, and its commits wait for
/// it: writes stall meanwhile (measured on a 1 GB db of 290k keys: HashKV
/// 0.35-0.58 s, a put during it 0.36 s instead of 0.02 s).
const QUIET_FACTOR: u32 = 9;

/// Asks etcd for `HashKV` for stored snapshots, on a thread of its own with
/// its own etcd connection, and saves the record on each endpoint that
/// stored the snapshot. Only once a snapshot is stored: etcd serving a
/// full snapshot and a HashKV at once streamed a 7.9 GB snapshot at 1.52x
/// the time per GB of 1.0 GB, against 0.94x for the stream alone. After a
/// HashKV that took d, the next waits until QUIET_FACTOR x d later (etcd's
/// writes are stalled at most a tenth of the time); snapshots stored
/// meanwhile are coalesced to the newest, whose record stands for its chain.
pub struct Recorder {
    queue: Mutex<Option<Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

type HashFn = Box<dyn FnMut(&str, u64) -> Option<HashKv> + Send>;
type SaveFn = Box<dyn FnMut(&str, &HashKv, &[Role]) + Send>;

/// The recorder thread's state: what to ask (etcd in production) and where
/// to save, kept apart from the timing so that the timing is testable.
struct Hasher {
    hash_kv: HashFn,
    save: SaveFn,
    quiet_until: Instant,
}

/// etcd's HashKV at a revision over one connection kept between requests;
/// `None` when there is none to record.
fn etcd_hash_kv(etcd: EtcdConfig) -> HashFn {
    let mut client: Option<etcd::Client> = None;
    Box::new(move |name, revision| {
        if client.is_none() {
            match etcd::Client::connect(&etcd) {
                Ok(c) => client = Some(c),
                Err(e) => {
                    warn!("No HashKV recorded for snapshot {name}: {e:#}");
                    return None;
                }
            }
        }
        match client.as_mut().expect("connected above").hash_kv(revision as i64) {
            Ok(Some(h)) => Some(h),
            Ok(None) => {
                debug!("etcd has compacted revision {revision}: no HashKV recorded for snapshot {name}");
                None
            }
            Err(e) => {
                warn!("No HashKV recorded for snapshot {name}: {e:#}");
                client = None;
                None
            }
        }
    })
}

fn save_on(endpoints: Vec<Endpoint>) -> SaveFn {
    Box::new(move |name, h, on| {
        for ep in endpoints.iter().filter(|ep| on.contains(&ep.role)) {
            match save(ep, name, h) {
                Ok(()) => debug!("{} endpoint: HashKV {} recorded for snapshot {name}", ep.name(), h.hash),
                Err(e) => warn!("{} endpoint: cannot save the HashKV record of {name}: {e}", ep.name()),
            }
        }
    })
}

impl Hasher {
    fn hash(&mut self, name: &str, revision: u64) -> Option<HashKv> {
        let started = Instant::now();
        let h = (self.hash_kv)(name, revision);
        self.quiet_until = Instant::now() + started.elapsed() * QUIET_FACTOR;
        h
    }

    fn handle(&mut self, req: Request) {
        if let Some(h) = self.hash(&req.name, req.revision) {
            (self.save)(&req.name, &h, &req.on);
        }
    }

    fn run(mut self, rx: Receiver<Request>) {
        let mut deferred: Option<Request> = None;
        loop {
            let next = match &deferred {
                Some(_) => rx.recv_deadline(self.quiet_until),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match next {
                Ok(req) => {
                    if let Some(old) = deferred.take() {
                        debug!("No HashKV recorded for snapshot {}: a newer snapshot's stands for it", old.name);
                    }
                    if Instant::now() >= self.quiet_until {
                        self.handle(req);
                    } else {
                        deferred = Some(req);
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.handle(deferred.take().expect("waiting for it")),
                // `finish`: the last one is recorded without waiting.
                Err(RecvTimeoutError::Disconnected) => {
                    if let Some(req) = deferred.take() {
                        self.handle(req);
                    }
                    return;
                }
            }
        }
    }
}

impl Recorder {
    pub fn start(etcd: &EtcdConfig, endpoints: &Endpoints) -> Recorder {
        Recorder::spawn(etcd_hash_kv(etcd.clone()), save_on(endpoints.to_vec()))
    }

    fn spawn(hash_kv: HashFn, save: SaveFn) -> Recorder {
        let (tx, rx) = bounded::<Request>(QUEUE);
        let hasher = Hasher { hash_kv, save, quiet_until: Instant::now() };
        let thread = std::thread::spawn(move || hasher.run(rx));
        Recorder { queue: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) }
    }

    /// Record the keyspace at `revision` for `stored`, on each endpoint that
    /// stored it.
    pub fn record(&self, stored: &Outcome, revision: u64) {
        let on: Vec<Role> = stored.results.iter().filter(|(_, r)| r.is_ok()).map(|(role, _)| *role).collect();
        if !on.is_empty() {
            self.send(Request { name: stored.name.clone(), revision, on });
        }
    }

    fn send(&self, req: Request) {
        if let Some(tx) = &*self.queue.lock().unwrap()
            && let Err(TrySendError::Full(req)) = tx.try_send(req)
        {
            warn!("No HashKV recorded for snapshot {}: {QUEUE} snapshots are already waiting for theirs", req.name);
        }
    }

    /// Record what is queued, waiting at most `max`; later requests are ignored.
    pub fn finish(&self, max: Duration) {
        drop(self.queue.lock().unwrap().take());
        let Some(thread) = self.thread.lock().unwrap().take() else { return };
        let until = Instant::now() + max;
        while !thread.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !thread.is_finished() {
            warn!("Gave up waiting {max:?} for HashKV records: some snapshots may have none");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_nonsense() {
        let h = HashKv { revision: 42, hash: 0xDEAD_BEEF, compact_revision: 7 };
        assert_eq!(encode(&h), b"{\"compactRevision\":7,\"hash\":3735928559,\"revision\":42}\n");
        assert_eq!(decode(&encode(&h)).unwrap(), h);
        let never_compacted = HashKv { compact_revision: -1, ..h };
        assert_eq!(decode(&encode(&never_compacted)).unwrap(), never_compacted);
        for bad in [
            &b"{}"[..],
            b"not json",
            b"{\"revision\":0,\"hash\":1,\"compactRevision\":0}",
            b"{\"revision\":5,\"hash\":1,\"compactRevision\":6}",
            b"{\"revision\":5,\"hash\":1,\"compactRevision\":-2}",
            b"{\"revision\":5,\"hash\":4294967296,\"compactRevision\":0}",
            b"{\"revision\":5,\"hash\":-1,\"compactRevision\":0}",
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    type Log = Arc<Mutex<Vec<(&'static str, String, Instant)>>>;

    /// A recorder whose etcd takes `took` per HashKV; the log has each
    /// hash and save with when it ended.
    fn recorder(took: Duration) -> (Recorder, Log) {
        let log: Log = Arc::default();
        let (hl, sl) = (log.clone(), log.clone());
        let hash: HashFn = Box::new(move |name, revision| {
            std::thread::sleep(took);
            hl.lock().unwrap().push(("hash", name.to_string(), Instant::now()));
            Some(HashKv { revision: revision as i64, hash: 1, compact_revision: -1 })
        });
        let save: SaveFn = Box::new(move |name, _, on| {
            assert_eq!(on, [Role::Primary]);
            sl.lock().unwrap().push(("save", name.to_string(), Instant::now()));
        });
        (Recorder::spawn(hash, save), log)
    }

    fn stored(name: &str) -> Outcome {
        Outcome {
            name: name.into(),
            results: vec![(Role::Primary, Ok(())), (Role::Secondary, Err("down".into()))],
            bytes: 1,
        }
    }

    fn events(log: &Log) -> Vec<(&'static str, String)> {
        log.lock().unwrap().iter().map(|(what, name, _)| (*what, name.clone())).collect()
    }

    #[test]
    fn a_snapshot_is_hashed_once_stored_and_saved_where_it_was_stored() {
        let (r, log) = recorder(Duration::from_millis(50));
        r.record(&stored("Full-1"), 10);
        r.finish(Duration::from_secs(5));
        assert_eq!(events(&log), [("hash", "Full-1".to_string()), ("save", "Full-1".to_string())]);
    }

    #[test]
    fn etcd_hashes_a_tenth_of_the_time_and_the_newest_snapshot_waiting_is_recorded() {
        let took = Duration::from_millis(40);
        let (r, log) = recorder(took);
        for (i, name) in ["Incr-1", "Incr-2", "Incr-3", "Incr-4"].iter().enumerate() {
            r.record(&stored(name), i as u64 + 1);
            std::thread::sleep(Duration::from_millis(5));
        }
        // Wait for the quiet time to end and the newest waiting one to be recorded.
        let end = Instant::now() + Duration::from_secs(10);
        while log.lock().unwrap().len() < 4 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let got = log.lock().unwrap().clone();
        let names: Vec<_> = got.iter().map(|(what, name, _)| (*what, name.as_str())).collect();
        assert_eq!(names, [("hash", "Incr-1"), ("save", "Incr-1"), ("hash", "Incr-4"), ("save", "Incr-4")]);
        let gap = got[2].2 - got[0].2;
        assert!(gap >= took * (QUIET_FACTOR + 1), "the second hash ended {gap:?} after the first");
        // At exit, what waits is recorded at once.
        r.record(&stored("Incr-5"), 5);
        let exit = Instant::now();
        r.finish(Duration::from_secs(5));
        assert_eq!(events(&log).last(), Some(&("save", "Incr-5".to_string())));
        assert!(exit.elapsed() < took * 4, "finish took {:?}", exit.elapsed());
    }
}
