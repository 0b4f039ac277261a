//! etcd's mvcc store as its bbolt `key` bucket holds it: rows keyed by
//! revision, each value an mvccpb.KeyValue. A restore turns the watch
//! events of delta snapshots into such rows, so that etcd starts with them
//! without replaying anything.

use super::pb;
use crate::delta::{self, Event, EventKind};
use crate::signals;
use crate::snapshot::SnapshotName;
use anyhow::{Context, anyhow, bail};
use std::path::{Path, PathBuf};

/// etcd's mvcc revision key: 8-byte big-endian main, `_`, 8-byte sub.
pub fn revision_key(main: u64, sub: u64) -> Vec<u8> {
    // Room for the tombstone marker a delete appends.
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    k
}

/// Assigns etcd's `(main, sub)` revisions to a stream of events and encodes each
/// as its mvcc `key`-bucket row. Events sharing a mod_revision (one etcd txn)
/// get sub revisions 0, 1, 2... in the order given.
#[derive(Debug, Default)]
pub struct SubRevisions {
    main: Option<i64>,
    sub: u64,
}

impl SubRevisions {
    pub fn new() -> SubRevisions {
        SubRevisions::default()
    }

    /// The bbolt `(key, value)` etcd's `storeTxnWrite.put`/`delete` would store for `e`:
    /// key = [`revision_key`], plus `t` for a tombstone; value = the
    /// mvccpb.KeyValue protobuf (a DELETE stores `KeyValue{Key}` only).
    pub fn entry(&mut self, e: &Event) -> (Vec<u8>, Vec<u8>) {
        if self.main == Some(e.mod_revision) {
            self.sub += 1;
        } else {
            self.main = Some(e.mod_revision);
            self.sub = 0;
        }
        // A negative revision keeps its two's complement bytes, as Go's uint64 cast does.
        let mut key = revision_key(e.mod_revision as u64, self.sub);
        let mut value = Vec::with_capacity(e.key.len() + e.value.len() + 40);
        pb::nonempty_bytes(&mut value, 1, &e.key);
        match e.kind {
            EventKind::Delete => key.push(b't'),
            EventKind::Put => {
                pb::int64(&mut value, 2, e.create_revision);
                pb::int64(&mut value, 3, e.mod_revision);
                pb::int64(&mut value, 4, e.version);
                pb::nonempty_bytes(&mut value, 5, &e.value);
                pb::int64(&mut value, 6, e.lease);
            }
        }
        (key, value)
    }
}

/// Waits until a delta's file (name, path) is there: it may still be fetched.
pub type Ready<'a> = dyn Fn(&str, &Path) -> anyhow::Result<()> + 'a;

/// Ready at once: every file is already there.
pub fn all_there(_: &str, _: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Takes an event with its key-bucket key and value.
pub type EntrySink<'a> = dyn FnMut(&Event, &[u8], &[u8]) -> anyhow::Result<()> + 'a;

/// Read the deltas (name, plain file, in chain order; their SHA-256
/// trailers checked when they were fetched) and hand each new
/// event to `put` with its mvcc key-bucket entry. Events up to `base`
/// (already in the full snapshot, or in an overlapping earlier delta) are
/// skipped; every later revision must follow the previous one. Returns the
/// last revision.
pub fn apply_deltas(
    base: u64,
    deltas: &[(String, PathBuf)],
    ready: &Ready<'_>,
    put: &mut EntrySink<'_>,
) -> anyhow::Result<u64> {
    let mut applied = base;
    for (name, path) in deltas {
        signals::check()?;
        ready(name, path)?;
        let data = std::fs::read(path).with_context(|| format!("reading delta snapshot {name}"))?;
        let events = delta::parse_checked(&data).map_err(|e| anyhow!("delta snapshot {name}: {e}"))?;
        drop(data);
        let range = SnapshotName::parse(name).map(|n| (n.start_revision, n.last_revision));
        let (first, named) = range.ok_or_else(|| anyhow!("delta snapshot {name}: not a delta snapshot name"))?;
        // A revision's events always arrive in one watch response, so never
        // span two deltas: a revision seen before this delta is complete.
        let floor = applied;
        let mut subs = SubRevisions::new();
        for (i, e) in events.iter().enumerate() {
            // Every event, skipped or not: a delta that lies anywhere is not trusted.
            if let Err(why) = e.check(first, named) {
                let key = e.key.get(..80).unwrap_or(&e.key).escape_ascii();
                bail!("delta snapshot {name}: its event {i} (key \"{key}\") {why}");
            }
            let rev = e.mod_revision as u64;
            if rev <= floor {
                continue;
            }
            if rev < applied {
                bail!("delta snapshot {name}: its events go back from revision {applied} to {rev}");
            }
            if rev != applied && rev != applied + 1 {
                bail!(
                    "delta snapshot {name}: its events jump from revision {applied} to {rev}; revisions in between are \
                     missing"
                );
            }
            applied = rev;
            let (k, v) = subs.entry(e);
            put(e, &k, &v)?;
        }
        if applied < named {
            bail!("delta snapshot {name}: its events end at revision {applied}, before the {named} its name says");
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::tests::{GOLDEN, del, put};

    /// [`SubRevisions::entry`] for every event of `events`, in order.
    fn mvcc_entries(events: &[Event]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut subs = SubRevisions::new();
        events.iter().map(|e| subs.entry(e)).collect()
    }

    #[test]
    fn revision_keys_are_etcds() {
        assert_eq!(revision_key(0x0102, 3), b"\0\0\0\0\0\0\x01\x02_\0\0\0\0\0\0\0\x03".to_vec());
    }

    #[test]
    fn mvcc_put_bytes() {
        let (key, value) = SubRevisions::new().entry(&put(b"foo", b"bar", 5, 5, 1, 0));
        assert_eq!(key, [0, 0, 0, 0, 0, 0, 0, 5, b'_', 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(value, [0x0a, 3, b'f', b'o', b'o', 0x10, 5, 0x18, 5, 0x20, 1, 0x2a, 3, b'b', b'a', b'r']);
    }

    #[test]
    fn mvcc_put_with_lease_and_multibyte_varints() {
        let e = put(b"k", b"", 300, 0x1_0000, 2, 0x694d_71d8_1b6f_3c1e);
        let (key, value) = SubRevisions::new().entry(&e);
        assert_eq!(key, [0, 0, 0, 0, 0, 1, 0, 0, b'_', 0, 0, 0, 0, 0, 0, 0, 0]);
        // value is empty, so field 5 is absent; lease 0x694d71d81b6f3c1e as a 9-byte varint.
        let want = [
            0x0a, 1, b'k', // key
            0x10, 0xac, 0x02, // create_revision 300
            0x18, 0x80, 0x80, 0x04, // mod_revision 65536
            0x20, 2, // version
            0x30, 0x9e, 0xf8, 0xbc, 0xdb, 0x81, 0xbb, 0xdc, 0xa6, 0x69, // lease
        ];
        assert_eq!(value, want);
    }

    #[test]
    fn mvcc_negative_lease_is_ten_byte_varint() {
        let (_, value) = SubRevisions::new().entry(&put(b"k", b"v", 1, 1, 1, -1));
        assert_eq!(&value[value.len() - 11..], [0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    }

    #[test]
    fn mvcc_delete_is_tombstone_with_key_only() {
        let (key, value) = SubRevisions::new().entry(&del(b"foo", 7));
        assert_eq!(key, [0, 0, 0, 0, 0, 0, 0, 7, b'_', 0, 0, 0, 0, 0, 0, 0, 0, b't']);
        assert_eq!(value, [0x0a, 3, b'f', b'o', b'o']);
        // Even if a DELETE carried more fields, etcd stores KeyValue{Key} only.
        let noisy = Event { value: b"x".to_vec(), create_revision: 3, version: 2, lease: 9, ..del(b"foo", 7) };
        assert_eq!(SubRevisions::new().entry(&noisy).1, value);
    }

    #[test]
    fn mvcc_sub_revisions_across_groups() {
        let events = [
            put(b"a", b"1", 10, 10, 1, 0),
            put(b"b", b"1", 11, 11, 1, 0),
            del(b"a", 11),
            put(b"c", b"1", 11, 11, 1, 0),
            put(b"a", b"2", 12, 12, 1, 0),
            del(b"b", 13),
            del(b"c", 13),
        ];
        let got: Vec<(i64, i64, bool)> = mvcc_entries(&events)
            .iter()
            .map(|(k, _)| {
                let main = i64::from_be_bytes(k[..8].try_into().unwrap());
                let sub = i64::from_be_bytes(k[9..17].try_into().unwrap());
                (main, sub, k.len() == 18 && k[17] == b't')
            })
            .collect();
        let want = [
            (10, 0, false),
            (11, 0, false),
            (11, 1, true),
            (11, 2, false),
            (12, 0, false),
            (13, 0, true),
            (13, 1, true),
        ];
        assert_eq!(got, want);
        // The streaming form gives the same rows.
        let mut subs = SubRevisions::new();
        let streamed: Vec<_> = events.iter().map(|e| subs.entry(e)).collect();
        assert_eq!(streamed, mvcc_entries(&events));
    }

    #[test]
    fn mvcc_entries_of_golden() {
        let events = delta::parse(GOLDEN).unwrap();
        let rows = mvcc_entries(&events);
        let (k, v) = &rows[5]; // DELETE lease-key, second event of revision 9
        assert_eq!(k, &[0, 0, 0, 0, 0, 0, 0, 9, b'_', 0, 0, 0, 0, 0, 0, 0, 1, b't']);
        assert_eq!(v, b"\x0a\x09lease-key");
        let (k, v) = &rows[3]; // non-UTF-8 key, empty value
        assert_eq!(&k[..9], &[0, 0, 0, 0, 0, 0, 0, 8, b'_']);
        assert_eq!(v, &[0x0a, 5, 0xfb, 0xff, 0x00, 0x80, b'/', 0x10, 8, 0x18, 8, 0x20, 1]);
    }

    #[test]
    fn applying_deltas_skips_what_the_base_has_and_refuses_holes() {
        let d = crate::test_scratch::dir("apply");
        let write = |file: &str, revs: &[i64]| {
            let mut w = delta::Writer::new();
            for &r in revs {
                let e =
                    Event { key: b"k".to_vec(), mod_revision: r, create_revision: 1, version: r, ..Default::default() };
                w.push(&e, 0, 0);
            }
            std::fs::write(d.join(file), w.finish()).unwrap();
            (format!("Incr-00000001-{:08}-1", revs.last().unwrap()), d.join(file))
        };
        let deltas = [write("a", &[4, 5, 6, 6]), write("b", &[6, 7])];
        let mut seen = Vec::new();
        let last = apply_deltas(5, &deltas, &all_there, &mut |e, k, _| {
            seen.push((e.mod_revision, k[9..].to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(last, 7);
        // Revision 6 twice (sub-revisions 0 and 1); its repeat in "b" is skipped.
        let sub = |n: u64| n.to_be_bytes().to_vec();
        assert_eq!(seen, [(6, sub(0)), (6, sub(1)), (7, sub(0))]);

        let holes = [write("c", &[6, 8])];
        let e = apply_deltas(5, &holes, &all_there, &mut |_, _, _| Ok(())).unwrap_err().to_string();
        assert!(e.contains("jump from revision 6 to 8"), "{e}");
        let short = [(String::from("Incr-00000004-00000009-1"), d.join("a"))];
        let e = apply_deltas(5, &short, &all_there, &mut |_, _, _| Ok(())).unwrap_err().to_string();
        assert!(e.contains("end at revision 6, before the 9 its name says"), "{e}");
    }

    #[test]
    fn applying_deltas_refuses_events_their_name_does_not_cover() {
        let d = crate::test_scratch::dir("lying");
        let write = |file: &str, events: &[Event]| {
            let mut w = delta::Writer::new();
            events.iter().for_each(|e| w.push(e, 0, 0));
            std::fs::write(d.join(file), w.finish()).unwrap();
            d.join(file)
        };
        let good = put(b"k", b"v", 6, 6, 1, 0);
        let cases = [
            (
                "Incr-00000006-00000006-1",
                vec![good.clone(), put(b"k", b"v", 6, 7, 2, 0)],
                "its event 1 (key \"k\") is at revision 7, past the 6 its name says",
            ),
            ("Incr-00000006-00000007-1", vec![put(b"", b"v", 6, 6, 1, 0)], "its event 0 (key \"\") has an empty key"),
            (
                "Incr-00000006-00000006-1",
                vec![put(b"\xff/k", b"v", 6, 6, 1, -3)],
                "its event 0 (key \"\\xff/k\") has lease -3",
            ),
            // Below the base, so it would have been skipped: still refused.
            ("Incr-00000001-00000006-1", vec![del(b"k", -2), good.clone()], "its event 0 (key \"k\") has revision -2"),
            (
                "Incr-00000006-00000007-1",
                vec![good.clone(), put(b"k", b"v", 6, 7, 2, 0), good.clone()],
                "go back from revision 7 to 6",
            ),
        ];
        for (i, (name, events, want)) in cases.iter().enumerate() {
            let deltas = [(name.to_string(), write(&format!("d{i}"), events))];
            let mut applied = 0;
            let e = apply_deltas(5, &deltas, &all_there, &mut |_, _, _| {
                applied += 1;
                Ok(())
            })
            .unwrap_err()
            .to_string();
            assert!(e.starts_with(&format!("delta snapshot {name}: ")) && e.contains(want), "{e}");
            assert!(!e.contains("v\""), "no value in the error: {e}");
        }
    }
}
