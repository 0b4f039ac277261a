//! etcd's `HashKV` of a bbolt db, computed without etcd, and a check of the
//! mvcc rows it hashes.
//!
//! etcd (mvcc `unsafeHashByRev` with `kvHasher.WriteKeyValue`, and
//! `kvindex.Keep`) hashes with CRC-32C the bucket name `key`, then, in key
//! order, each row's key and value for every row whose revision is below
//! `{main: revision + 1}`, except:
//! - a row below `{main: compact_revision + 1}` that is not in `keep`,
//!   unless `keep` is empty; `keep` holds, for each user key, its latest
//!   revision at or below `revision`, unless that revision is a deletion;
//! - a tombstone at main revision `compact_revision` (etcd after 3.5.15 and
//!   3.4.33 keeps that row when it compacts, older ones delete it; the
//!   hash skips it so that both agree).
//!
//! Memory: the `keep` map holds a 64-bit hash of each user key (never the
//! key) and its latest main revision, 16 bytes a key in a hash table (about
//! 36 MiB for a million keys); it is built only when there was a
//! compaction. Rows stream through [`Db::for_each`] twice.

use super::bbolt::{Db, Error, Value};
use super::mvcc::apply_deltas;
use super::pb::{self, Field, crc32c};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, DefaultHasher, Hasher};
use std::path::PathBuf;

/// The mvcc revision of a `key`-bucket row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rev {
    main: i64,
    sub: i64,
}

/// A row key: `BE64 main ‖ '_' ‖ BE64 sub [‖ 't']`.
fn row_rev(k: &[u8]) -> Result<(Rev, bool), String> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return Err(format!("row key {} is not an mvcc revision (17 bytes, or 18 ending in 't')", show(k))),
    };
    if k[8] != b'_' {
        return Err(format!("row key {} has no '_' after the main revision", show(k)));
    }
    let main = i64::from_be_bytes(k[..8].try_into().unwrap());
    let sub = i64::from_be_bytes(k[9..17].try_into().unwrap());
    if main < 0 || sub < 0 {
        return Err(format!("row key {} has a negative revision", show(k)));
    }
    Ok((Rev { main, sub }, tombstone))
}

fn show(k: &[u8]) -> String {
    format!("\"{}\"", k.escape_ascii())
}

/// How a row is named in errors: `revision 7` or `revision 7 sub 2`, and
/// `(tombstone)`.
fn row_name(rev: Rev, tombstone: bool) -> String {
    let sub = if rev.sub == 0 { String::new() } else { format!(" sub {}", rev.sub) };
    let tomb = if tombstone { " (tombstone)" } else { "" };
    format!("revision {}{sub}{tomb}", rev.main)
}

/// The fields of an mvccpb.KeyValue row value; `other` counts fields that
/// are not KeyValue's (or of another wire type).
#[derive(Default)]
struct Kv<'a> {
    key: &'a [u8],
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    value: &'a [u8],
    lease: i64,
    other: usize,
}

fn decode_kv(mut v: &[u8]) -> Result<Kv<'_>, String> {
    let mut kv = Kv::default();
    while let Some((field, value)) = pb::next_field(&mut v)? {
        match (field, value) {
            (1, Field::Bytes(b)) => kv.key = b,
            (2, Field::Varint(n)) => kv.create_revision = n as i64,
            (3, Field::Varint(n)) => kv.mod_revision = n as i64,
            (4, Field::Varint(n)) => kv.version = n as i64,
            (5, Field::Bytes(b)) => kv.value = b,
            (6, Field::Varint(n)) => kv.lease = n as i64,
            _ => kv.other += 1,
        }
    }
    Ok(kv)
}

/// Field 1 of a KeyValue, reading no further than needed.
fn user_key(mut v: &[u8]) -> Result<&[u8], String> {
    let mut key: &[u8] = &[];
    while let Some((field, value)) = pb::next_field(&mut v)? {
        if let (1, Field::Bytes(b)) = (field, value) {
            key = b;
        }
    }
    Ok(key)
}

fn key_hash(key: &[u8]) -> u64 {
    // SipHash with fixed keys: the same for every run.
    let mut h = DefaultHasher::new();
    h.write(key);
    h.finish()
}

/// The tables' keys are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type ByKeyHash<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

/// Marks a tombstone in a [`ByKeyHash`] value next to the main revision
/// (which [`row_rev`] checked is not negative).
const TOMBSTONE: u64 = 1 << 63;

/// Takes a row's (key, revision, tombstone, value); false stops the rows.
type RowFn<'f> = dyn FnMut(&[u8], Rev, bool, &[u8]) -> Result<bool, String> + 'f;

/// The `key` rows etcd would hold: a db's, then those the events of delta
/// snapshots (name, plain file, in chain order) add after its latest
/// revision, as a restore writes them. Nothing is written anywhere.
pub struct Rows<'a> {
    pub db: &'a Db,
    pub deltas: &'a [(String, PathBuf)],
}

impl<'a> From<&'a Db> for Rows<'a> {
    fn from(db: &'a Db) -> Rows<'a> {
        Rows { db, deltas: &[] }
    }
}

/// Calls `f` for each row in order until it returns false.
fn rows(src: &Rows<'_>, f: &mut RowFn<'_>) -> Result<(), String> {
    let (db, mut highest, mut stopped) = (src.db, 0u64, false);
    each_db_row(db, &mut |k, rev, tomb, v| {
        highest = rev.main as u64;
        let go_on = f(k, rev, tomb, v)?;
        stopped = !go_on;
        Ok(go_on)
    })?;
    if stopped || src.deltas.is_empty() {
        return Ok(());
    }
    // As the restore does: an empty `key` bucket is etcd's revision 1.
    apply_deltas(highest.max(1), src.deltas, &super::mvcc::all_there, &mut |_, k, v| {
        if !stopped {
            let (rev, tomb) = row_rev(k).map_err(|e| anyhow::anyhow!(e))?;
            stopped = !f(k, rev, tomb, v).map_err(|e| anyhow::anyhow!("{}: {e}", row_name(rev, tomb)))?;
        }
        Ok(())
    })
    .map(drop)
    .map_err(|e| format!("{e:#}"))
}

fn each_db_row(db: &Db, f: &mut RowFn<'_>) -> Result<(), String> {
    let mut failed = None;
    let r = db.for_each(b"key", &mut |k, v| {
        let step = match v {
            Value::Data(v) => row_rev(k).and_then(|(rev, tomb)| {
                f(k, rev, tomb, v).map_err(|e| format!("key bucket, {}: {e}", row_name(rev, tomb)))
            }),
            Value::Bucket(_) => Err(format!("key bucket: {} is a bucket, not a row", show(k))),
        };
        match step {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::stop()),
            Err(e) => {
                failed = Some(e);
                Err(Error::stop())
            }
        }
    });
    match (r, failed) {
        (_, Some(e)) => Err(e),
        (Err(e), None) if !e.is_stop() => Err(format!("{e:#}")),
        _ => Ok(()),
    }
}

/// etcd's `HashKV` at `revision` when its compact revision is
/// `compact_revision` (0 or less: never compacted): what
/// `Maintenance.HashKV{revision}` returns as `hash` in etcd 3.4, 3.5 and 3.6
/// for this db.
pub fn hash_kv(db: &Rows<'_>, revision: i64, compact_revision: i64) -> Result<u32, String> {
    let upper = Rev { main: revision.saturating_add(1), sub: 0 };
    let lower = Rev { main: compact_revision.saturating_add(1), sub: 0 };
    // For each user key, its latest row below `upper` (main | TOMBSTONE).
    let mut latest: ByKeyHash<u64> = HashMap::default();
    if compact_revision > 0 {
        rows(db, &mut |_, rev, tomb, v| {
            if rev >= upper {
                return Ok(false);
            }
            let main = rev.main as u64;
            let previous = latest.insert(key_hash(user_key(v)?), main | if tomb { TOMBSTONE } else { 0 });
            if previous.is_some_and(|p| p & !TOMBSTONE == main) {
                return Err("a second row for the same key in one revision (or two keys with one 64-bit hash)".into());
            }
            Ok(true)
        })?;
    }
    // etcd's `len(keep) > 0`: some key's latest row is not a deletion.
    let keep_nonempty = latest.values().any(|&m| m & TOMBSTONE == 0);
    let mut crc = crc32c(0, b"key");
    rows(db, &mut |k, rev, tomb, v| {
        // Rows come in revision order: none after this one is below `upper`.
        if rev >= upper {
            return Ok(false);
        }
        if rev < lower && keep_nonempty {
            let kept = !tomb && latest.get(&key_hash(user_key(v)?)) == Some(&(rev.main as u64));
            if !kept {
                return Ok(true);
            }
        }
        if tomb && rev.main == compact_revision {
            return Ok(true);
        }
        crc = crc32c(crc32c(crc, k), v);
        Ok(true)
    })?;
    Ok(crc)
}

/// What [`check_mvcc`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MvccSummary {
    /// Rows of the `key` bucket.
    pub rows: u64,
    /// Distinct user keys among them (counted by 64-bit hash).
    pub keys: u64,
    /// The highest main revision of a row (0 without rows).
    pub highest_revision: i64,
}

/// Checks every row of the `key` bucket as etcd writes it: a revision key
/// (17 bytes, or 18 ending in 't' for a deletion, '_' after the main
/// revision), a KeyValue value with a non-empty key; a put's mod_revision
/// is its main revision, 1 <= create_revision <= mod_revision, version >= 1;
/// a deletion stores the key only. The highest revision must reach
/// `revision`, and the `meta` bucket must exist.
pub fn check_mvcc(db: &Rows<'_>, revision: i64) -> Result<MvccSummary, String> {
    let buckets = db.db.buckets().map_err(|e| format!("{e:#}"))?;
    for name in [&b"key"[..], b"meta"] {
        if !buckets.iter().any(|b| b == name) {
            return Err(format!("no {} bucket", show(name)));
        }
    }
    let mut keys: HashSet<u64, BuildHasherDefault<Prehashed>> = HashSet::default();
    let (mut count, mut highest) = (0u64, 0i64);
    rows(db, &mut |_, rev, tomb, v| {
        let kv = decode_kv(v).map_err(|e| format!("value is not an mvccpb.KeyValue: {e}"))?;
        if kv.key.is_empty() {
            return Err("the KeyValue has an empty key".into());
        }
        if tomb {
            if kv.create_revision != 0
                || kv.mod_revision != 0
                || kv.version != 0
                || !kv.value.is_empty()
                || kv.lease != 0
                || kv.other != 0
            {
                return Err(format!("key {}: a deletion stores more than its key", show(kv.key)));
            }
        } else {
            let what = if kv.mod_revision != rev.main {
                format!("mod_revision {} is not the row's revision", kv.mod_revision)
            } else if kv.create_revision < 1 || kv.create_revision > kv.mod_revision {
                format!("create_revision {} is not from 1 to the mod_revision {}", kv.create_revision, kv.mod_revision)
            } else if kv.version < 1 {
                format!("version {} is below 1", kv.version)
            } else {
                String::new()
            };
            if !what.is_empty() {
                return Err(format!("key {}: {what}", show(kv.key)));
            }
        }
        keys.insert(key_hash(kv.key));
        count += 1;
        highest = highest.max(rev.main);
        Ok(true)
    })?;
    if highest < revision {
        return Err(format!("the key bucket ends at revision {highest}, below revision {revision}"));
    }
    Ok(MvccSummary { rows: count, keys: keys.len() as u64, highest_revision: highest })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::bbolt::Writer;
    use crate::datadir::mvcc::revision_key;
    use crate::test_scratch::ScratchDir;

    /// A row: (main, sub, tombstone, user key, value, create, version, lease).
    #[derive(Clone)]
    struct Row {
        main: u64,
        sub: u64,
        tomb: bool,
        key: &'static [u8],
        value: &'static [u8],
        create: i64,
        version: i64,
        lease: i64,
    }

    fn put(main: u64, sub: u64, key: &'static [u8], value: &'static [u8], create: i64, version: i64) -> Row {
        Row { main, sub, tomb: false, key, value, create, version, lease: 0 }
    }

    fn del(main: u64, sub: u64, key: &'static [u8]) -> Row {
        Row { main, sub, tomb: true, key, value: b"", create: 0, version: 0, lease: 0 }
    }

    impl Row {
        fn leased(self, lease: i64) -> Row {
            Row { lease, ..self }
        }

        fn bytes(&self) -> (Vec<u8>, Vec<u8>) {
            let mut k = revision_key(self.main, self.sub);
            let mut v = Vec::new();
            pb::nonempty_bytes(&mut v, 1, self.key);
            if self.tomb {
                k.push(b't');
            } else {
                pb::int64(&mut v, 2, self.create);
                pb::int64(&mut v, 3, self.main as i64);
                pb::int64(&mut v, 4, self.version);
                pb::nonempty_bytes(&mut v, 5, self.value);
                pb::int64(&mut v, 6, self.lease);
            }
            (k, v)
        }

        fn id(&self) -> (u64, u64) {
            (self.main, self.sub)
        }
    }

    /// A db with `rows` (in order) in bucket "key", a lease and a meta bucket.
    fn db_of(rows: &[Row]) -> (ScratchDir, Db) {
        db_of_raw(&rows.iter().map(Row::bytes).collect::<Vec<_>>())
    }

    fn db_of_raw(rows: &[(Vec<u8>, Vec<u8>)]) -> (ScratchDir, Db) {
        let dir = crate::test_scratch::dir("hashkv");
        let path = dir.join("db");
        let mut w = Writer::create(&path, 4096).unwrap();
        w.begin_bucket(b"key").unwrap();
        for (k, v) in rows {
            w.put(k, v).unwrap();
        }
        w.end_bucket().unwrap();
        w.begin_bucket(b"lease").unwrap();
        w.put(&0x1234u64.to_be_bytes(), b"\x08\xb4\x24\x10\x3c").unwrap();
        w.end_bucket().unwrap();
        w.begin_bucket(b"meta").unwrap();
        w.put(b"consistent_index", &9u64.to_be_bytes()).unwrap();
        w.end_bucket().unwrap();
        w.finish(2).unwrap();
        let db = Db::open(&path).unwrap();
        (dir, db)
    }

    /// CRC-32C of "key" and the rows of `rows` whose (main, sub) is in
    /// `included`, in that order: the hash computed straight from the rule.
    fn expected(rows: &[Row], included: &[(u64, u64)]) -> u32 {
        let mut crc = crc32c(0, b"key");
        for id in included {
            let row = rows.iter().find(|r| r.id() == *id).unwrap();
            let (k, v) = row.bytes();
            crc = crc32c(crc32c(crc, &k), &v);
        }
        crc
    }

    /// The lease etcd granted when it wrote `history()` for the golden test.
    const LEASE: i64 = 0x06c4_a236_cf93_6f05;

    /// Puts, an overwrite, a leased key, a deletion and re-creation of b,
    /// a two-row txn, a deletion of a, nothing compacted.
    fn history() -> Vec<Row> {
        vec![
            put(2, 0, b"a", b"1", 2, 1),
            put(3, 0, b"b", b"1", 3, 1).leased(LEASE),
            put(4, 0, b"a", b"2", 2, 2),
            del(5, 0, b"b"),
            put(6, 0, b"c", b"1", 6, 1),
            put(6, 1, b"d", b"", 6, 1),
            put(7, 0, b"b", b"2", 7, 1),
            del(8, 0, b"a"),
            put(9, 0, b"e", b"1", 9, 1).leased(LEASE),
        ]
    }

    /// `history()` as etcd's compaction at `at` leaves it: per key, rows at
    /// or below `at` go except the latest, which goes too if it is a
    /// deletion, unless (`keep_tomb`, etcd > 3.5.15) it is at `at` itself.
    fn compacted(rows: &[Row], at: u64, keep_tomb: bool) -> Vec<Row> {
        rows.iter()
            .filter(|r| {
                if r.main > at {
                    return true;
                }
                let latest = rows.iter().filter(|o| o.key == r.key && o.main <= at).map(Row::id).max().unwrap();
                r.id() == latest && (!r.tomb || (keep_tomb && r.main == at))
            })
            .cloned()
            .collect()
    }

    #[test]
    fn uncompacted_hash_covers_every_row_up_to_the_revision() {
        let rows = history();
        let (_p, db) = db_of(&rows);
        let all: Vec<_> = rows.iter().map(Row::id).collect();
        assert_eq!(hash_kv(&Rows::from(&db), 9, 0), Ok(expected(&rows, &all)));
        assert_eq!(hash_kv(&Rows::from(&db), 9, -1), Ok(expected(&rows, &all)));
        assert_eq!(hash_kv(&Rows::from(&db), 100, 0), Ok(expected(&rows, &all)));
        assert_eq!(hash_kv(&Rows::from(&db), 5, 0), Ok(expected(&rows, &all[..4])));
        assert_eq!(hash_kv(&Rows::from(&db), 6, 0), Ok(expected(&rows, &all[..6])));
        assert_eq!(hash_kv(&Rows::from(&db), 1, 0), Ok(crc32c(0, b"key")));
        // Distinct hashes for distinct revisions.
        assert_ne!(hash_kv(&Rows::from(&db), 5, 0), hash_kv(&Rows::from(&db), 6, 0));
    }

    #[test]
    fn compacted_at_a_deletion() {
        let full = history();
        // Compacted at 5, where b's deletion is: both etcd behaviours.
        for keep_tomb in [false, true] {
            let rows = compacted(&full, 5, keep_tomb);
            let ids: Vec<_> = rows.iter().map(Row::id).collect();
            let want_ids = if keep_tomb { vec![(4, 0), (5, 0)] } else { vec![(4, 0)] };
            assert_eq!(ids[..want_ids.len()], want_ids);
            let (_p, db) = db_of(&rows);
            // keep(9): b@7, c@6, d@6.1, e@9 (a's latest is a deletion): a@4 and
            // the tombstone b@5 are left out.
            let got = hash_kv(&Rows::from(&db), 9, 5).unwrap();
            assert_eq!(got, expected(&rows, &[(6, 0), (6, 1), (7, 0), (8, 0), (9, 0)]), "keep_tomb {keep_tomb}");
            // keep(6): a@4, c, d.
            assert_eq!(hash_kv(&Rows::from(&db), 6, 5), Ok(expected(&rows, &[(4, 0), (6, 0), (6, 1)])));
            assert_eq!(hash_kv(&Rows::from(&db), 5, 5), Ok(expected(&rows, &[(4, 0)])));
        }
    }

    #[test]
    fn compacted_after_delete_and_recreate() {
        let rows = compacted(&history(), 6, true);
        let ids: Vec<_> = rows.iter().map(Row::id).collect();
        assert_eq!(ids, [(4, 0), (6, 0), (6, 1), (7, 0), (8, 0), (9, 0)]);
        let (_p, db) = db_of(&rows);
        assert_eq!(hash_kv(&Rows::from(&db), 7, 6), Ok(expected(&rows, &[(4, 0), (6, 0), (6, 1), (7, 0)])));
        // a deleted at 8: its row at 4 drops out of keep(9).
        assert_eq!(hash_kv(&Rows::from(&db), 9, 6), Ok(expected(&rows, &[(6, 0), (6, 1), (7, 0), (8, 0), (9, 0)])));
        // A compact revision without rows below it changes nothing.
        assert_eq!(hash_kv(&Rows::from(&db), 9, 3), hash_kv(&Rows::from(&db), 9, 0));
    }

    #[test]
    fn keep_empty_skips_nothing_but_the_compacted_tombstone() {
        // Every key deleted by revision 5; compacted at 4.
        let full = vec![put(2, 0, b"x", b"1", 2, 1), put(3, 0, b"y", b"1", 3, 1), del(4, 0, b"x"), del(5, 0, b"y")];
        for keep_tomb in [false, true] {
            let rows = compacted(&full, 4, keep_tomb);
            let (_p, db) = db_of(&rows);
            // keep(5) is empty: y@3 is hashed though keep(5) would not hold
            // it; x's tombstone at the compact revision is not.
            assert_eq!(
                hash_kv(&Rows::from(&db), 5, 4),
                Ok(expected(&rows, &[(3, 0), (5, 0)])),
                "keep_tomb {keep_tomb}"
            );
            // keep(4) = {y@3}.
            assert_eq!(hash_kv(&Rows::from(&db), 4, 4), Ok(expected(&rows, &[(3, 0)])));
        }
        // Uncompacted, nothing is skipped, deletions included.
        let (_p, db) = db_of(&full);
        assert_eq!(hash_kv(&Rows::from(&db), 5, 0), Ok(expected(&full, &[(2, 0), (3, 0), (4, 0), (5, 0)])));
    }

    /// The hashes etcd 3.4.23 returned (`etcdctl endpoint hashkv --rev`)
    /// for the same rows: `history()` written with etcdctl; compactions
    /// with `--physical`, after which its db held the rows `compacted()`
    /// gives (checked with `check_mvcc` on `etcdctl snapshot save` files).
    #[test]
    fn golden_hashes_from_etcd() {
        let full = history();
        let (_p, db) = db_of(&full);
        for (rev, want) in [(9, 257908993), (6, 3425667755), (5, 2386484818), (2, 2587454935)] {
            assert_eq!(hash_kv(&Rows::from(&db), rev, -1), Ok(want), "revision {rev}");
        }
        let (_p, db) = db_of(&compacted(&full, 5, false));
        assert_eq!(hash_kv(&Rows::from(&db), 9, 5), Ok(243045599));
        assert_eq!(hash_kv(&Rows::from(&db), 6, 5), Ok(610375359));
        let (_p, db) = db_of(&compacted(&full, 6, false));
        assert_eq!(hash_kv(&Rows::from(&db), 9, 6), Ok(243045599));
        assert_eq!(hash_kv(&Rows::from(&db), 7, 6), Ok(3775951029));
        // keep empty: put x, put y, delete x, delete y, compact 4.
        let rows = [put(3, 0, b"y", b"1", 3, 1), del(5, 0, b"y")];
        let (_p, db) = db_of(&rows);
        assert_eq!(hash_kv(&Rows::from(&db), 5, 4), Ok(3588791141));
        // Then put z, put w, delete z, compact 7, delete w: keep(9) empty.
        let rows = [put(6, 0, b"z", b"1", 6, 1), put(7, 0, b"w", b"1", 7, 1), del(8, 0, b"z"), del(9, 0, b"w")];
        let (_p, db) = db_of(&rows);
        assert_eq!(hash_kv(&Rows::from(&db), 9, 7), Ok(1522238847));
    }

    #[test]
    fn mvcc_check_summarises_and_names_bad_rows() {
        let rows = history();
        let (_p, db) = db_of(&rows);
        assert_eq!(check_mvcc(&Rows::from(&db), 9), Ok(MvccSummary { rows: 9, keys: 5, highest_revision: 9 }));
        assert_eq!(
            check_mvcc(&Rows::from(&db), 10).unwrap_err(),
            "the key bucket ends at revision 9, below revision 10"
        );

        let good = put(3, 0, b"k", b"v", 3, 1);
        let with = |k: Vec<u8>, v: Vec<u8>| {
            let (_p, db) = db_of_raw(&[put(2, 0, b"k", b"v", 2, 1).bytes(), (k, v)]);
            check_mvcc(&Rows::from(&db), 0).unwrap_err()
        };
        let (k, v) = good.bytes();
        let mut short = k.clone();
        short.pop();
        assert!(with(short, v.clone()).contains("is not an mvcc revision"));
        let mut ext = k.clone();
        ext.push(b'x');
        assert!(with(ext, v.clone()).contains("is not an mvcc revision"));
        let mut nosep = k.clone();
        nosep[8] = b'-';
        assert!(with(nosep, v.clone()).contains("has no '_' after the main revision"));
        let cases: [(Row, &str); 5] = [
            (put(3, 0, b"", b"v", 3, 1), "key bucket, revision 3: the KeyValue has an empty key"),
            (put(3, 1, b"k", b"v", 4, 1), "key bucket, revision 3 sub 1: key \"k\": create_revision 4 is not from 1"),
            (put(3, 0, b"k", b"v", 0, 1), "create_revision 0 is not from 1 to the mod_revision 3"),
            (put(3, 0, b"k", b"v", 2, 0), "key bucket, revision 3: key \"k\": version 0 is below 1"),
            (del(3, 0, b""), "key bucket, revision 3 (tombstone): the KeyValue has an empty key"),
        ];
        for (row, want) in cases {
            let (k, v) = row.bytes();
            let e = with(k, v);
            assert!(e.contains(want), "{e}");
        }
        // mod_revision that is not the row's.
        let (_, v) = put(4, 0, b"k", b"v", 3, 1).bytes();
        assert!(with(k.clone(), v.clone()).contains("key \"k\": mod_revision 4 is not the row's revision"));
        // A deletion with more than the key; a value that is not protobuf.
        let (mut dk, _) = del(3, 0, b"k").bytes();
        assert!(with(dk.clone(), v.clone()).contains("revision 3 (tombstone): key \"k\": a deletion stores more"));
        dk.truncate(17);
        assert!(with(dk, b"\x0a\x05k".to_vec()).contains("revision 3: value is not an mvccpb.KeyValue: field 1: 5"));
        // No meta bucket.
        let dir = crate::test_scratch::dir("hashkv-nometa");
        let path = dir.join("db");
        let mut w = Writer::create(&path, 4096).unwrap();
        w.begin_bucket(b"key").unwrap();
        w.end_bucket().unwrap();
        w.finish(2).unwrap();
        assert_eq!(check_mvcc(&Rows::from(&Db::open(&path).unwrap()), 0).unwrap_err(), "no \"meta\" bucket");
    }

    #[test]
    fn malformed_rows_are_errors_for_the_hash_too() {
        let (_p, db) = db_of_raw(&[(b"short".to_vec(), b"x".to_vec())]);
        assert!(hash_kv(&Rows::from(&db), 5, 0).unwrap_err().contains("row key \"short\" is not an mvcc revision"));
        // Two rows of one key in one revision cannot be told apart by main revision.
        let rows = [put(2, 0, b"k", b"1", 2, 1), put(2, 1, b"k", b"2", 2, 2)];
        let (_p, db) = db_of(&rows);
        assert!(
            hash_kv(&Rows::from(&db), 2, 1).unwrap_err().contains("revision 2 sub 1: a second row for the same key")
        );
        assert_eq!(hash_kv(&Rows::from(&db), 2, 0), Ok(expected(&rows, &[(2, 0), (2, 1)])));
    }

    /// Timing on a larger db: `cargo test --lib hashkv::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let n: u64 = 100_000;
        let dir = crate::test_scratch::dir("hashkv-timing");
        let path = dir.join("db");
        let t = std::time::Instant::now();
        let mut w = Writer::create(&path, 4096).unwrap();
        w.begin_bucket(b"key").unwrap();
        let keys: Vec<Vec<u8>> = (0..n / 4).map(|i| format!("/registry/pods/ns/pod-{i:06}").into_bytes()).collect();
        for rev in 2..n + 2 {
            let key = &keys[(rev as usize * 7919) % keys.len()];
            let (k, v) = Row {
                main: rev,
                sub: 0,
                tomb: rev % 10 == 0,
                key: Box::leak(key.clone().into_boxed_slice()),
                value: &[b'v'; 300],
                create: 2,
                version: 1,
                lease: 0,
            }
            .bytes();
            w.put(&k, &v).unwrap();
        }
        w.end_bucket().unwrap();
        w.begin_bucket(b"meta").unwrap();
        w.end_bucket().unwrap();
        w.finish(2).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        eprintln!("wrote {n} rows, {size} bytes in {:?}", t.elapsed());
        let db = Db::open(&path).unwrap();
        let t = std::time::Instant::now();
        let s = db.check_structure().unwrap();
        eprintln!("check_structure {s:?}: {:?}", t.elapsed());
        let t = std::time::Instant::now();
        let m = check_mvcc(&Rows::from(&db), n as i64).unwrap();
        eprintln!("check_mvcc {m:?}: {:?}", t.elapsed());
        let t = std::time::Instant::now();
        hash_kv(&Rows::from(&db), n as i64, 0).unwrap();
        eprintln!("hash_kv uncompacted: {:?}", t.elapsed());
        let t = std::time::Instant::now();
        hash_kv(&Rows::from(&db), n as i64, n as i64 / 2).unwrap();
        eprintln!("hash_kv compacted (two passes): {:?}", t.elapsed());
    }
}
