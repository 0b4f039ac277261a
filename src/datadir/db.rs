//! The restored bbolt database (`member/snap/db`), with the membership and
//! `meta` keys etcdutl 3.5 writes on restore: the snapshot file changed in
//! place as etcdutl does (one copy-on-write commit), with the events of
//! delta snapshots appended to its `key` bucket as etcd's mvcc would have
//! stored them.

use super::bbolt;
use super::member::{self, Member};
use super::mvcc::{Ready, apply_deltas, revision_key};
use crate::signals;
use crate::snapshot::TRAILER_LEN;
use anyhow::anyhow;
use log::{info, warn};
use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// Turns the snapshot file at `path` into the restored db, as etcdutl 3.5
/// leaves it: `members` replaced, `members_removed` emptied, `meta`
/// consistent_index = member count and term = 1; the events of `deltas`
/// (name, plain file, in chain order) appended to the `key` bucket as
/// etcd's mvcc would have stored them; optionally the revision bumped and
/// marked compacted. Done as etcdutl does it, by one copy-on-write commit:
/// new pages past the high-water mark for the buckets it writes and for the
/// rightmost path of `key` when rows are appended, a new root, then one
/// meta page. Costs the new rows and a few pages, whatever the db size.
/// Returns the (possibly bumped) revision.
pub fn restore_in_place(
    path: &Path,
    members: &[Member],
    bump: Option<u64>,
    deltas: &[(String, PathBuf)],
    ready: &Ready<'_>,
) -> anyhow::Result<u64> {
    strip_trailer(path)?;
    let db = bbolt::Db::open(path)?;
    let latest = latest_revision(&db)?;
    // The deltas are read once, as they are written: what they reach, and
    // the bumped revision, is known once the `key` bucket is done, which
    // sorts before `meta`, the one other bucket that needs it.
    let mut revision = latest;
    let append_keys = !deltas.is_empty() || bump.is_some();
    let mut buckets = root_buckets(&db)?;
    if append_keys && !buckets.iter().any(|(n, _)| n == b"key") {
        buckets.push((b"key".to_vec(), None));
        buckets.sort();
    }
    let mut w = bbolt::Writer::append(&db)?;
    for (name, raw) in buckets {
        signals::check()?;
        if name == b"key" && append_keys {
            match &raw {
                Some(raw) => w.resume_bucket(&db, &name, raw)?,
                None => w.begin_bucket(&name)?,
            }
            // An empty `key` bucket is etcd's revision 1 (a new etcd starts
            // there): the first delta after it starts at 2.
            let applied = apply_checked(&db, latest.max(1), deltas, ready, &mut w)?;
            // The db can be ahead of its name's revision, which restore checked.
            revision =
                applied.checked_add(bump.unwrap_or(0)).filter(|&r| r <= crate::snapshot::MAX_REVISION).ok_or_else(
                    || anyhow::anyhow!("revision {applied} plus --bump-revision exceeds etcd's largest revision"),
                )?;
            if bump.is_some() {
                // An empty entry at the bumped revision makes it the latest.
                w.put(&revision_key(revision, 0), b"")?;
            }
            w.end_bucket()?;
            continue;
        }
        match raw {
            Some(raw) if !RESTORED.contains(&name.as_slice()) => w.keep_bucket(&name, &raw)?,
            _ => {
                w.begin_bucket(&name)?;
                write_restored(&db, &mut w, &name, members, bump.map(|_| revision))?;
                w.end_bucket()?;
            }
        }
    }
    w.finish(db.txid() + 1)?;
    Ok(revision)
}

/// The buckets a restore writes anew, whatever the snapshot holds.
const RESTORED: [&[u8]; 3] = [b"members", b"members_removed", b"meta"];

/// Writes the restored content of bucket `name`, one of [`RESTORED`].
fn write_restored(
    db: &bbolt::Db,
    w: &mut bbolt::Writer,
    name: &[u8],
    members: &[Member],
    bumped: Option<u64>,
) -> anyhow::Result<()> {
    match name {
        b"members" => write_members(w, members)?,
        b"members_removed" => {}
        b"meta" => write_meta(db, w, members.len(), bumped)?,
        _ => unreachable!("only the restored buckets are written anew"),
    }
    Ok(())
}

/// The downloaded file still ends in the 32-byte trailer when it had one.
pub(crate) fn strip_trailer(src: &Path) -> anyhow::Result<()> {
    let len = fs::metadata(src)?.len();
    if len % 512 == TRAILER_LEN as u64 {
        File::options().write(true).open(src)?.set_len(len - TRAILER_LEN as u64)?;
    }
    Ok(())
}

/// The main revision of the snapshot's last `key` row (0 when empty).
fn latest_revision(db: &bbolt::Db) -> anyhow::Result<u64> {
    Ok(match db.last(b"key")? {
        Some((k, _)) if k.len() >= 8 => u64::from_be_bytes(k[..8].try_into().unwrap()),
        _ => 0,
    })
}

/// Appends the deltas' events after `latest` to the `key` bucket `w` is
/// writing: they must follow on from `latest`, and leases they name but
/// the snapshot lacks are reported. Returns the last revision they reach.
fn apply_checked(
    db: &bbolt::Db,
    latest: u64,
    deltas: &[(String, PathBuf)],
    ready: &Ready<'_>,
    w: &mut bbolt::Writer,
) -> anyhow::Result<u64> {
    let known = leases(db);
    let mut unknown = BTreeSet::new();
    let applied = apply_deltas(latest, deltas, ready, &mut |e, k, v| {
        if e.lease != 0 && !known.contains(&e.lease) {
            unknown.insert(e.lease);
        }
        w.put(k, v).map_err(Into::into)
    })?;
    if applied > latest {
        info!("Applied the events of revisions {} to {applied} from {} delta snapshots", latest + 1, deltas.len());
    }
    // Dropping such lease IDs (as upstream does) would change the data, and
    // etcd's HashKV, against the source.
    if let Some(first) = unknown.first() {
        warn!(
            "Keys restored from delta snapshots refer to {} leases not in the full snapshot (e.g. {first:x}); etcd \
             keeps those keys, without expiry",
            unknown.len()
        );
    }
    Ok(applied)
}

/// The snapshot's buckets with their raw values, and the three a restore
/// always writes (no value when the snapshot lacks them), sorted as bbolt
/// keeps them.
#[allow(clippy::type_complexity)] // (name, raw value) pairs, spelled out
fn root_buckets(db: &bbolt::Db) -> anyhow::Result<Vec<(Vec<u8>, Option<Vec<u8>>)>> {
    let mut buckets: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        db.root_buckets()?.into_iter().map(|(name, raw)| (name, Some(raw))).collect();
    for required in RESTORED {
        if !buckets.iter().any(|(n, _)| n == required) {
            buckets.push((required.to_vec(), None));
        }
    }
    buckets.sort();
    Ok(buckets)
}

/// The `members` bucket: the new membership only, by hex ID.
fn write_members(w: &mut bbolt::Writer, members: &[Member]) -> anyhow::Result<()> {
    let mut rows: Vec<(String, String)> =
        members.iter().map(|m| (format!("{:x}", m.id), member::member_json(m))).collect();
    rows.sort();
    for (k, v) in rows {
        w.put(k.as_bytes(), v.as_bytes())?;
    }
    Ok(())
}

/// The `meta` bucket: the snapshot's keys with consistent_index = member
/// count and term = 1, and `scheduledCompactRev` at a `bumped` revision.
fn write_meta(db: &bbolt::Db, w: &mut bbolt::Writer, members: usize, bumped: Option<u64>) -> anyhow::Result<()> {
    let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    copy_bucket(db, b"meta", &mut |k, v| {
        rows.push((k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    let mut set = |k: &[u8], v: Vec<u8>| {
        rows.retain(|(rk, _)| rk != k);
        rows.push((k.to_vec(), v));
    };
    set(b"consistent_index", (members as u64).to_be_bytes().to_vec());
    set(b"term", 1u64.to_be_bytes().to_vec());
    if let Some(revision) = bumped {
        set(b"scheduledCompactRev", revision_key(revision, 0));
    }
    rows.sort();
    for (k, v) in rows {
        w.put(&k, &v)?;
    }
    Ok(())
}

/// The lease IDs in the full snapshot's `lease` bucket.
fn leases(db: &bbolt::Db) -> HashSet<i64> {
    let mut known = HashSet::new();
    let _ = copy_bucket(db, b"lease", &mut |k, _| {
        if let Ok(id) = <[u8; 8]>::try_from(k) {
            known.insert(i64::from_be_bytes(id));
        }
        Ok(())
    });
    known
}

/// Hand every row of `bucket` to `f`, in key order.
fn copy_bucket<F>(db: &bbolt::Db, bucket: &[u8], f: &mut F) -> anyhow::Result<()>
where
    F: FnMut(&[u8], &[u8]) -> anyhow::Result<()>,
{
    let mut err = None;
    db.for_each(bucket, &mut |k, v| match v {
        bbolt::Value::Data(v) => match f(k, v) {
            Ok(()) => Ok(()),
            Err(e) => {
                err = Some(e);
                Err(bbolt::Error::stop())
            }
        },
        bbolt::Value::Bucket(_) => {
            err = Some(anyhow!("nested bucket {:?} in {:?}: etcd databases have none", k, bucket));
            Err(bbolt::Error::stop())
        }
    })
    .map_err(|e| err.take().unwrap_or_else(|| e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::mvcc::all_there;
    use crate::delta::{self, tests::put};

    /// A full snapshot of an etcd that never had a key: an empty `key`
    /// bucket, and `meta`.
    fn empty_db(path: &Path) {
        let mut w = bbolt::Writer::create(path, 4096).unwrap();
        w.begin_bucket(b"key").unwrap();
        w.end_bucket().unwrap();
        w.begin_bucket(b"meta").unwrap();
        w.put(b"consistent_index", &3u64.to_be_bytes()).unwrap();
        w.end_bucket().unwrap();
        w.finish(2).unwrap();
    }

    /// A new etcd is at revision 1, so the first delta after its empty
    /// snapshot starts at 2 (this was refused as a jump from 0 to 2).
    #[test]
    fn deltas_after_an_empty_snapshot_start_at_revision_2() {
        let d = crate::test_scratch::dir("emptydb");
        let db = d.join("db");
        empty_db(&db);
        let mut w = delta::Writer::new();
        w.push(&put(b"k", b"v", 2, 2, 1, 0), 0, 0);
        w.push(&put(b"k", b"w", 2, 3, 2, 0), 0, 0);
        std::fs::write(d.join("delta"), w.finish()).unwrap();
        let deltas = [("Incr-00000002-00000003-1".to_string(), d.join("delta"))];
        let members = member::parse_initial_cluster("a=http://127.0.0.1:2380", "t").unwrap();
        assert_eq!(restore_in_place(&db, &members, None, &deltas, &all_there).unwrap(), 3);
        let restored = bbolt::Db::open(&db).unwrap();
        let mut revisions = Vec::new();
        copy_bucket(&restored, b"key", &mut |k, _| {
            revisions.push(u64::from_be_bytes(k[..8].try_into().unwrap()));
            Ok(())
        })
        .unwrap();
        assert_eq!(revisions, [2, 3]);

        // A chain that starts past revision 2 still has a hole.
        fs::remove_file(&db).unwrap();
        empty_db(&db);
        let mut w = delta::Writer::new();
        w.push(&put(b"k", b"v", 3, 3, 1, 0), 0, 0);
        std::fs::write(d.join("late"), w.finish()).unwrap();
        let late = [("Incr-00000003-00000003-1".to_string(), d.join("late"))];
        let e = restore_in_place(&db, &members, None, &late, &all_there).unwrap_err();
        assert!(format!("{e:#}").contains("jump from revision 1 to 3"), "{e:#}");
    }
}
