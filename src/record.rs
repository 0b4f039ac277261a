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
//! Asking etcd costs a scan of its keyspace, so a [`Recorder`] thread does
//! it in the background and a snapshot never waits for it.

use crate::endpoint::{Endpoint, Endpoints, Role};
use crate::etcd::{self, EtcdConfig, HashKv};
use crate::report::Outcome;
use crate::store::{self, ErrorKind, Store};
use crossbeam_channel::{Sender, TrySendError, bounded};
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

struct Request {
    name: String,
    revision: u64,
    on: Vec<Role>,
}

/// Asks etcd for `HashKV` after each stored snapshot, on a thread of its
/// own with its own etcd connection, and saves the record on each endpoint
/// that stored the snapshot.
pub struct Recorder {
    queue: Mutex<Option<Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Recorder {
    pub fn start(etcd: &EtcdConfig, endpoints: &Endpoints) -> Recorder {
        let (tx, rx) = bounded::<Request>(QUEUE);
        let (etcd, endpoints): (EtcdConfig, Vec<Endpoint>) = (etcd.clone(), endpoints.to_vec());
        let thread = std::thread::spawn(move || {
            let mut client: Option<etcd::Client> = None;
            for req in rx {
                let name = &req.name;
                if client.is_none() {
                    match etcd::Client::connect(&etcd) {
                        Ok(c) => client = Some(c),
                        Err(e) => {
                            warn!("No HashKV recorded for snapshot {name}: {e:#}");
                            continue;
                        }
                    }
                }
                let c = client.as_mut().expect("connected above");
                let h = match c.hash_kv(req.revision as i64) {
                    Ok(Some(h)) => h,
                    Ok(None) => {
                        debug!("etcd has compacted revision {}: no HashKV recorded for snapshot {name}", req.revision);
                        continue;
                    }
                    Err(e) => {
                        warn!("No HashKV recorded for snapshot {name}: {e:#}");
                        client = None;
                        continue;
                    }
                };
                for ep in endpoints.iter().filter(|ep| req.on.contains(&ep.role)) {
                    match save(ep, name, &h) {
                        Ok(()) => debug!("{} endpoint: HashKV {} recorded for snapshot {name}", ep.name(), h.hash),
                        Err(e) => warn!("{} endpoint: cannot save the HashKV record of {name}: {e}", ep.name()),
                    }
                }
            }
        });
        Recorder { queue: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) }
    }

    /// Record the keyspace at `revision` for `stored`, on each endpoint that
    /// stored it.
    pub fn record(&self, stored: &Outcome, revision: u64) {
        let on: Vec<Role> = stored.results.iter().filter(|(_, r)| r.is_ok()).map(|(role, _)| *role).collect();
        if on.is_empty() {
            return;
        }
        let req = Request { name: stored.name.clone(), revision, on };
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
}
