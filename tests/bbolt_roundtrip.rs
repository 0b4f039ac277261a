//! bbolt Writer -> Db round trips, corrupt inputs, and real etcd snapshots
//! rewritten and checked with `etcdutl snapshot status` (bbolt's tx.Check).

#[path = "../src/datadir/bbolt/temp_file.rs"]
mod temp_file;

use etcd_backup_restore::datadir::bbolt::{Db, Error, Value, Writer};
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use temp_file::TempFile;

/// A bucket's contents in key order.
type Tree = Vec<(Vec<u8>, Item)>;

#[derive(Clone, Debug, PartialEq)]
enum Item {
    Data(Vec<u8>),
    Bucket(Tree),
}

fn tmp(tag: &str) -> TempFile {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    // Cargo's scratch directory for integration tests, under target/.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    TempFile(dir.join(format!("bbolt-{tag}-{}-{}.db", std::process::id(), N.fetch_add(1, Ordering::Relaxed))))
}

fn write_tree(w: &mut Writer, tree: &Tree) -> Result<(), Error> {
    for (k, item) in tree {
        match item {
            Item::Data(v) => w.put(k, v)?,
            Item::Bucket(t) => {
                w.begin_bucket(k)?;
                write_tree(w, t)?;
                w.end_bucket()?;
            }
        }
    }
    Ok(())
}

fn write_file(top: &Tree, ps: u32, txid: u64) -> TempFile {
    let path = tmp("rt");
    let mut w = Writer::create(&path, ps).unwrap();
    write_tree(&mut w, top).unwrap();
    w.finish(txid).unwrap();
    path
}

/// Everything under `path` (empty: the top-level buckets), recursively.
fn read_tree(db: &Db, path: &[&[u8]]) -> Result<Tree, Error> {
    let mut items: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    db.for_each_path(path, &mut |k, v| {
        items.push((k.to_vec(), if let Value::Data(v) = v { Some(v.to_vec()) } else { None }));
        Ok(())
    })?;
    let mut tree = Tree::new();
    for (k, v) in items {
        let item = match v {
            Some(v) => Item::Data(v),
            None => {
                let mut sub = path.to_vec();
                sub.push(&k);
                Item::Bucket(read_tree(db, &sub)?)
            }
        };
        tree.push((k, item));
    }
    Ok(tree)
}

/// Raw bucket values of the elements of `path` that are buckets.
fn raw_buckets(db: &Db, path: &[&[u8]]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    db.for_each_path(path, &mut |k, v| {
        if let Value::Bucket(raw) = v {
            out.push((k.to_vec(), raw.to_vec()));
        }
        Ok(())
    })
    .unwrap();
    out
}

fn root_of(raw: &[u8]) -> u64 {
    u64::from_le_bytes(raw[..8].try_into().unwrap())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[derive(Debug, Default)]
struct PageStats {
    pages: u64,
    leaves: u64,
    branches: u64,
    /// (page id, overflow) of each page run with overflow pages.
    overflowed: Vec<(u64, u32)>,
}

/// Reads the page headers of a Writer-made file in sequence (all its pages
/// are in use, so each header is followed by its overflow pages).
fn page_stats(path: &Path, ps: usize) -> PageStats {
    let f = std::fs::read(path).unwrap();
    assert_eq!(f.len() % ps, 0);
    let mut s = PageStats { pages: (f.len() / ps) as u64, ..Default::default() };
    let mut id = 3;
    while id < f.len() / ps {
        let p = &f[id * ps..];
        assert_eq!(u64_at(p, 0), id as u64, "page header id");
        let overflow = u32_at(p, 12);
        match u16_at(p, 8) {
            0x01 => s.branches += 1,
            0x02 => s.leaves += 1,
            other => panic!("page {id}: flags {other:#x}"),
        }
        if overflow > 0 {
            s.overflowed.push((id as u64, overflow));
        }
        id += 1 + overflow as usize;
    }
    assert_eq!(id, f.len() / ps, "the last run ends at the end of the file");
    s
}

/// Levels of branch pages above the leftmost leaf of the tree at `root`.
fn branch_levels(path: &Path, ps: usize, root: u64) -> usize {
    let f = std::fs::read(path).unwrap();
    let mut levels = 0;
    let mut id = root as usize;
    while u16_at(&f, id * ps + 8) == 0x01 {
        levels += 1;
        id = u64_at(&f, id * ps + 16 + 8) as usize;
    }
    levels
}

/// Key `i` of the leaf or branch page at `at` (pos is relative to the element).
fn page_key(f: &[u8], at: usize, i: usize) -> &[u8] {
    let e = at + 16 + i * 16;
    let (pos, ksize) =
        if u16_at(f, at + 8) == 0x01 { (u32_at(f, e), u32_at(f, e + 4)) } else { (u32_at(f, e + 4), u32_at(f, e + 8)) };
    &f[e + pos as usize..e + pos as usize + ksize as usize]
}

/// Checks, from the raw bytes, that every branch element's key is the first
/// key of its child and that the keys ascend; returns the number of leaves.
fn check_branch_keys(f: &[u8], ps: usize, id: usize) -> usize {
    let at = id * ps;
    if u16_at(f, at + 8) == 0x02 {
        return 1;
    }
    let n = u16_at(f, at + 10) as usize;
    let mut leaves = 0;
    for i in 0..n {
        let child = u64_at(f, at + 16 + i * 16 + 8) as usize;
        assert_eq!(page_key(f, at, i), page_key(f, child * ps, 0), "branch {id} element {i}");
        if i > 0 {
            assert!(page_key(f, at, i - 1) < page_key(f, at, i));
        }
        leaves += check_branch_keys(f, ps, child);
    }
    leaves
}

fn etcdutl() -> Option<String> {
    std::env::var("EBR_ETCDUTL35_BIN").ok()
}

/// `etcdutl snapshot status`, which runs bbolt's tx.Check(); the JSON, or
/// the failure output.
fn snapshot_status(util: &str, path: &Path) -> Result<serde_json::Value, String> {
    let out = Command::new(util).args(["snapshot", "status", "--write-out=json"]).arg(path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_str(stdout.trim()).map_err(|e| format!("{e}: {stdout}"))
}

/// Go bbolt's own consistency check on a file we wrote, when etcdutl is there.
fn bbolt_check(path: &Path) {
    if let Some(util) = etcdutl()
        && let Err(e) = snapshot_status(&util, path)
    {
        panic!("etcdutl snapshot status {}: {e}", path.display());
    }
}

fn roundtrip(top: &Tree, ps: u32) -> (TempFile, Db) {
    let path = write_file(top, ps, 42);
    let db = Db::open(&path).unwrap();
    assert_eq!((db.page_size(), db.txid()), (ps, 42));
    let names: Vec<Vec<u8>> = top.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(db.buckets().unwrap(), names);
    let back = read_tree(&db, &[]).unwrap();
    assert!(back == *top, "read back differs from what was written");
    (path, db)
}

fn data(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Tree {
    pairs.into_iter().map(|(k, v)| (k, Item::Data(v))).collect()
}

fn many_keys(n: usize) -> Tree {
    data((0..n).map(|i| {
        // 64-byte keys make branch fan-out small enough for three levels.
        let mut k = format!("/registry/things/{i:010}/").into_bytes();
        k.resize(64, b'x');
        let v = format!("value-{i}-{}", "v".repeat(i % 25)).into_bytes();
        (k, v)
    }))
}

fn many_keys_case(ps: u32, min_levels: usize) {
    let n = 200_000;
    let keys = many_keys(n);
    let top: Tree = vec![
        (b"a-small".to_vec(), Item::Bucket(data([(b"x".to_vec(), b"1".to_vec())]))),
        (b"big".to_vec(), Item::Bucket(keys.clone())),
        (b"z-empty".to_vec(), Item::Bucket(Tree::new())),
    ];
    let t0 = Instant::now();
    let path = write_file(&top, ps, 42);
    let written = t0.elapsed();
    let db = Db::open(&path).unwrap();
    let mut count = 0;
    let mut prev: Option<Vec<u8>> = None;
    db.for_each(b"big", &mut |k, v| {
        let (wk, Item::Data(wv)) = &keys[count] else { unreachable!() };
        assert_eq!((k, v), (&wk[..], Value::Data(wv)));
        assert!(prev.as_deref() < Some(k));
        prev = Some(k.to_vec());
        count += 1;
        Ok(())
    })
    .unwrap();
    let total = t0.elapsed();
    assert_eq!(count, n);
    let (lk, Item::Data(lv)) = keys.last().unwrap() else { unreachable!() };
    assert_eq!(db.last(b"big").unwrap(), Some((lk.clone(), lv.clone())));
    assert_eq!(db.last(b"a-small").unwrap(), Some((b"x".to_vec(), b"1".to_vec())));
    assert_eq!(db.last(b"z-empty").unwrap(), None);
    assert_eq!(db.last(b"missing").unwrap(), None);
    assert_eq!(read_tree(&db, &[]).unwrap(), top);

    let raws = raw_buckets(&db, &[]);
    let root = root_of(&raws[1].1);
    let levels = branch_levels(&path, ps as usize, root);
    let stats = page_stats(&path, ps as usize);
    eprintln!(
        "ps {ps}: {n} keys: {} pages ({} leaves, {} branches), {levels} branch levels; write {:?}, write+read {:?}",
        stats.pages, stats.leaves, stats.branches, written, total
    );
    assert!(levels >= min_levels, "{levels} branch levels");
    assert_eq!(check_branch_keys(&std::fs::read(&path).unwrap(), ps as usize, root as usize) as u64, stats.leaves - 1);
    assert_eq!(stats.pages, std::fs::metadata(&path).unwrap().len() / u64::from(ps));
    assert!(stats.overflowed.is_empty());
    // Two inline buckets and one tree; the root bucket's page is the last one.
    assert_eq!((root_of(&raws[0].1), root_of(&raws[2].1)), (0, 0));
    let meta = std::fs::read(&path).unwrap();
    assert_eq!(u64_at(&meta, 32), stats.pages - 1, "meta.root is the last page");
    bbolt_check(&path);
    // Large; kept only when the test fails.
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_many_keys_three_branch_levels_4k() {
    many_keys_case(4096, 3);
}

#[test]
fn e_many_keys_16k() {
    many_keys_case(16384, 2);
}

fn large_values_case(ps: u32) {
    let mut pairs = Vec::new();
    for (i, size) in [10, 5_000, 20, 100_000, 0, 1 << 20, 3, 4_080, 4_096, 16_384, 70_000, 7].into_iter().enumerate() {
        let v: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7) as u8).collect();
        pairs.push((format!("k{i:03}").into_bytes(), v));
    }
    let top = vec![(b"blobs".to_vec(), Item::Bucket(data(pairs)))];
    let (path, db) = roundtrip(&top, ps);
    let stats = page_stats(&path, ps as usize);
    // The 1 MiB value: 16 + 16 + 4 + 1 MiB bytes, in ceil(size / ps) pages.
    let run = (16 + 16 + 4 + (1u64 << 20)).div_ceil(u64::from(ps));
    assert!(stats.overflowed.iter().any(|&(_, o)| u64::from(o) == run - 1), "{:?}", stats.overflowed);
    assert_eq!(db.last(b"blobs").unwrap().unwrap().1.len(), 7);
    bbolt_check(&path);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn b_large_values_4k() {
    large_values_case(4096);
}

#[test]
fn e_large_values_16k() {
    large_values_case(16384);
}

/// A bucket of one key whose leaf (16 + 16 + 1 + value) is `size` bytes.
fn sized_bucket(size: usize) -> Item {
    Item::Bucket(data([(b"k".to_vec(), vec![9; size - 33])]))
}

fn inline_case(ps: u32) {
    let q = ps as usize / 4;
    let several = data((0..4).map(|i| (vec![b'a' + i], vec![i; (q - 16 - 4 * 17) / 4])));
    let top: Tree = vec![
        (b"at-quarter".to_vec(), sized_bucket(q)),
        (b"empty".to_vec(), Item::Bucket(Tree::new())),
        (b"over-quarter".to_vec(), sized_bucket(q + 1)),
        (b"several".to_vec(), Item::Bucket(several)),
        (b"tiny".to_vec(), Item::Bucket(data([(b"one".to_vec(), b"1".to_vec())]))),
    ];
    let (path, db) = roundtrip(&top, ps);
    let raws = raw_buckets(&db, &[]);
    let roots: Vec<(String, u64, usize)> =
        raws.iter().map(|(k, raw)| (String::from_utf8_lossy(k).into_owned(), root_of(raw), raw.len())).collect();
    assert_eq!(
        roots,
        vec![
            ("at-quarter".into(), 0, 16 + q),
            ("empty".into(), 0, 32),
            ("over-quarter".into(), 3, 16),
            ("several".into(), 0, 16 + 16 + 4 * 17 + 4 * ((q - 16 - 4 * 17) / 4)),
            ("tiny".into(), 0, 16 + 16 + 16 + 4),
        ]
    );
    // Inline image: header with id 0 and the leaf flag.
    assert_eq!(&raws[4].1[16..32], &[0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0, 0]);
    assert_eq!(page_stats(&path, ps as usize).pages, 5, "metas, free list, over-quarter, root");
    bbolt_check(&path);
}

#[test]
fn c_inline_buckets_4k() {
    inline_case(4096);
}

#[test]
fn e_inline_buckets_16k() {
    inline_case(16384);
}

fn nested_case(ps: u32) {
    let deeper = data((0..300u32).map(|i| (i.to_be_bytes().to_vec(), vec![1; 50])));
    let deep: Tree = vec![
        (b"c-deeper".to_vec(), Item::Bucket(deeper)),
        (b"d-tiny".to_vec(), Item::Bucket(data([(b"t".to_vec(), b"t".to_vec())]))),
        (b"e".to_vec(), Item::Data(b"after the buckets".to_vec())),
    ];
    let mut outer = data((0..500u32).map(|i| (format!("0-{i:05}").into_bytes(), vec![2; 30])));
    outer.push((b"a-inline".to_vec(), Item::Bucket(data([(b"x".to_vec(), b"y".to_vec())]))));
    outer.push((b"b-deep".to_vec(), Item::Bucket(deep)));
    outer.push((b"z-key".to_vec(), Item::Data(vec![3; 6000])));
    let top: Tree = vec![
        (b"outer".to_vec(), Item::Bucket(outer)),
        // Holds only a tiny bucket, yet is not inline: it has a sub-bucket.
        (b"parent".to_vec(), Item::Bucket(vec![(b"kid".to_vec(), Item::Bucket(Tree::new()))])),
    ];
    let (path, db) = roundtrip(&top, ps);
    let top_raw = raw_buckets(&db, &[]);
    assert!(root_of(&top_raw[0].1) != 0 && root_of(&top_raw[1].1) != 0);
    let in_outer = raw_buckets(&db, &[b"outer"]);
    assert_eq!(
        in_outer.iter().map(|(k, raw)| (&k[..], root_of(raw) == 0)).collect::<Vec<_>>(),
        vec![(&b"a-inline"[..], true), (&b"b-deep"[..], false)]
    );
    let in_deep = raw_buckets(&db, &[b"outer", b"b-deep"]);
    assert_eq!(in_deep.iter().map(|(_, raw)| root_of(raw) == 0).collect::<Vec<_>>(), vec![false, true]);
    assert_eq!(root_of(&raw_buckets(&db, &[b"parent"])[0].1), 0);
    // A sub-bucket's pages come before its parent's pages.
    assert!(root_of(&in_deep[0].1) < root_of(&in_outer[1].1));
    assert!(root_of(&in_outer[1].1) < root_of(&top_raw[0].1));
    // Paths through missing names or plain keys.
    let mut n = 0;
    db.for_each_path(&[b"outer", b"nope", b"x"], &mut |_, _| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 0);
    let e = db.for_each_path(&[b"outer", b"z-key"], &mut |_, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("not a bucket"), "{e}");
    let mut keys = Vec::new();
    db.for_each_path(&[b"outer", b"b-deep", b"d-tiny"], &mut |k, v| {
        keys.push((k.to_vec(), v == Value::Data(b"t")));
        Ok(())
    })
    .unwrap();
    assert_eq!(keys, vec![(b"t".to_vec(), true)]);
    bbolt_check(&path);
}

#[test]
fn d_nested_buckets_4k() {
    nested_case(4096);
}

#[test]
fn e_nested_buckets_16k() {
    nested_case(16384);
}

#[test]
fn many_top_level_buckets() {
    // Enough buckets for the root bucket itself to need branch pages, so
    // that finding a bucket goes through branch keys.
    let top: Tree = (0..3000u32)
        .map(|i| {
            let name = format!("bucket-{:08}-{}", i * 7, "n".repeat(30)).into_bytes();
            let items = data((0..(i % 4)).map(|j| (vec![b'k', j as u8], format!("{i}/{j}").into_bytes())));
            (name, Item::Bucket(items))
        })
        .collect();
    let (path, db) = roundtrip(&top, 4096);
    let f = std::fs::read(&path).unwrap();
    let root = u64_at(&f, 32) as usize;
    assert_eq!(u16_at(&f, root * 4096 + 8), 0x01, "the root bucket has a branch root");
    check_branch_keys(&f, 4096, root);
    for i in [0usize, 1, 777, 1500, 2998, 2999] {
        let (name, Item::Bucket(items)) = &top[i] else { unreachable!() };
        let mut got = Vec::new();
        db.for_each(name, &mut |k, v| {
            got.push((k.to_vec(), Item::Data(if let Value::Data(v) = v { v.to_vec() } else { panic!() })));
            Ok(())
        })
        .unwrap();
        assert_eq!(&got, items, "bucket {i}");
        let last = items.last().map(|(k, v)| (k.clone(), if let Item::Data(v) = v { v.clone() } else { panic!() }));
        assert_eq!(db.last(name).unwrap(), last);
    }
    // Names between and around existing ones are missing, not errors.
    for missing in [&b"bucket-"[..], b"bucket-00000001", b"zzz", b"\x00"] {
        assert_eq!(count_all(&db, missing).unwrap(), 0);
        assert_eq!(db.last(missing).unwrap(), None);
    }
    bbolt_check(&path);
}

fn corrupt_copy(src: &Path, f: impl FnOnce(&mut Vec<u8>)) -> TempFile {
    let mut b = std::fs::read(src).unwrap();
    f(&mut b);
    let path = tmp("corrupt");
    std::fs::write(&path, b).unwrap();
    path
}

fn count_all(db: &Db, bucket: &[u8]) -> Result<usize, Error> {
    let mut n = 0;
    db.for_each(bucket, &mut |_, _| {
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

#[test]
fn f_corrupt_inputs() {
    const PS: usize = 4096;
    let top = vec![
        (b"b".to_vec(), Item::Bucket(many_keys(3000))),
        (b"c".to_vec(), Item::Bucket(data([(b"k".to_vec(), b"v".to_vec())]))),
    ];
    // txid 7: the newer meta is page 1, the older (txid 6) page 0.
    let good = write_file(&top, PS as u32, 7);
    let db = Db::open(&good).unwrap();
    assert_eq!(count_all(&db, b"b").unwrap(), 3000);
    let hwm = std::fs::metadata(&good).unwrap().len() / PS as u64;

    // One bad meta: the other one is used, and the data is all there.
    let p = corrupt_copy(&good, |b| b[PS + 60] ^= 0x40);
    let db = Db::open(&p).unwrap();
    assert_eq!(db.txid(), 6);
    assert_eq!(count_all(&db, b"b").unwrap(), 3000);
    // Page 0 bad: the page size is found by probing for page 1.
    let p = corrupt_copy(&good, |b| b[20] = 9);
    let db = Db::open(&p).unwrap();
    assert_eq!((db.txid(), db.page_size()), (7, 4096));
    assert_eq!(count_all(&db, b"b").unwrap(), 3000);
    let p = corrupt_copy(&good, |b| b[16..24].fill(0));
    assert_eq!(Db::open(&p).unwrap().txid(), 7);

    // Both bad.
    let p = corrupt_copy(&good, |b| {
        b[60] ^= 1;
        b[PS + 60] ^= 1;
    });
    let e = Db::open(&p).unwrap_err().to_string();
    assert!(e.contains("meta pages invalid: page 0: bad checksum; page 1: bad checksum"), "{e}");

    // A branch child beyond the high-water mark, and a branch's last child
    // (the path `last` takes) as well.
    let raw = raw_buckets(&Db::open(&good).unwrap(), &[]);
    let root = root_of(&raw[0].1) as usize;
    let bytes = std::fs::read(&good).unwrap();
    assert_eq!(u16_at(&bytes, root * PS + 8), 0x01, "bucket b has a branch root");
    let n = u16_at(&bytes, root * PS + 10) as usize;
    let p = corrupt_copy(&good, |b| {
        for i in [0, n - 1] {
            let at = root * PS + 16 + i * 16 + 8;
            b[at..at + 8].copy_from_slice(&(hwm + 1000).to_le_bytes());
        }
    });
    let db = Db::open(&p).unwrap();
    let want = format!("page {} beyond high-water mark {hwm}", hwm + 1000);
    let e = count_all(&db, b"b").unwrap_err().to_string();
    assert!(e.contains(&want), "{e}");
    assert!(db.last(b"b").unwrap_err().to_string().contains(&want));
    // Other buckets are still readable.
    assert_eq!(count_all(&db, b"c").unwrap(), 1);

    // Truncated files.
    for len in [hwm as usize * PS - 1, hwm as usize * PS / 2, 2 * PS, PS + 40, 100, 0] {
        let p = corrupt_copy(&good, |b| b.truncate(len));
        let e = Db::open(&p).expect_err(&format!("truncated to {len}")).to_string();
        assert!(e.contains("truncated") || e.contains("meta pages invalid"), "{len}: {e}");
    }
    // Extra bytes at the end (like etcd's sha256 trailer) are fine.
    let p = corrupt_copy(&good, |b| b.extend_from_slice(&[0xEE; 32]));
    assert_eq!(count_all(&Db::open(&p).unwrap(), b"b").unwrap(), 3000);

    // Random damage to data pages: errors or (for harmless bytes) success,
    // never a panic or a hang.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rand = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut failures = 0;
    for _ in 0..300 {
        let (a, b_, c) = (rand(), rand(), rand());
        let p = corrupt_copy(&good, |b| {
            for x in [a, b_, c] {
                let at = 3 * PS + (x as usize % (b.len() - 3 * PS));
                b[at] = (x >> 40) as u8;
            }
        });
        let Ok(db) = Db::open(&p) else { continue };
        let r = read_tree(&db, &[]).and_then(|_| db.last(b"b"));
        failures += r.is_err() as u32;
        std::fs::remove_file(&p).unwrap();
    }
    eprintln!("random damage: {failures} of 300 reads failed cleanly");
    assert!(failures > 0);
}

#[test]
fn writer_errors_do_not_panic() {
    let path = tmp("errors");
    let mut w = Writer::create(&path, 4096).unwrap();
    assert!(w.put(b"k", b"v").is_err());
    w.begin_bucket(b"b").unwrap();
    w.put(b"2", b"").unwrap();
    assert!(w.put(b"2", b"").is_err());
    assert!(w.put(b"1", b"").is_err());
    assert!(w.put(b"", b"").is_err());
    assert!(w.put(&vec![b'3'; 32769], b"").is_err());
    w.put(&vec![b'3'; 32768], b"").unwrap();
    w.end_bucket().unwrap();
    assert!(w.end_bucket().is_err());
    assert!(w.begin_bucket(b"a").is_err());
    w.begin_bucket(b"c").unwrap();
    assert!(w.finish(3).is_err());
    assert!(Writer::create(&path, 4096).is_err(), "the file exists");

    // Keys at the size limit make branch pages with overflow; still valid.
    let big_keys = data((0..20u8).map(|i| (vec![i; 32768], vec![i])));
    let (path, _) = roundtrip(&vec![(b"b".to_vec(), Item::Bucket(big_keys))], 4096);
    assert!(page_stats(&path, 4096).branches > 0);
    bbolt_check(&path);
}

// --- real etcd ---------------------------------------------------------

struct EtcdEnv {
    ctl34: String,
    ep34: String,
    ctl35: String,
    ep35: String,
    util: String,
}

fn etcd_env() -> Option<EtcdEnv> {
    let v = |k: &str| std::env::var(k).ok();
    Some(EtcdEnv {
        ctl34: v("EBR_ETCDCTL34_BIN")?,
        ep34: v("EBR_ETCD34_ENDPOINT")?,
        ctl35: v("EBR_ETCDCTL35_BIN")?,
        ep35: v("EBR_ETCD35_ENDPOINT")?,
        util: v("EBR_ETCDUTL35_BIN")?,
    })
}

fn etcdctl(ctl: &str, ep: &str, args: &[&str], stdin: Option<&Path>) {
    let mut cmd = Command::new(ctl);
    cmd.env("ETCDCTL_API", "3").args(["--endpoints", ep, "--command-timeout", "20s"]).args(args);
    if let Some(p) = stdin {
        cmd.stdin(std::fs::File::open(p).unwrap());
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn real_etcd_case(ctl: &str, ep: &str, util: &str, tag: &str) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("/bbolt-test/{tag}-{}-{nanos:x}", std::process::id());
    for i in 0..40 {
        etcdctl(ctl, ep, &["put", &format!("{prefix}/small/{i:03}"), &format!("value {i}")], None);
    }
    etcdctl(ctl, ep, &["put", &format!("{prefix}/small/000"), "overwritten"], None);
    etcdctl(ctl, ep, &["del", &format!("{prefix}/small/001")], None);
    let mut large_sizes = Vec::new();
    for (i, size) in [5_000usize, 20_000, 300_000].into_iter().enumerate() {
        let f = tmp("value");
        std::fs::write(&f, (0..size).map(|j| b'a' + (j % 26) as u8).collect::<Vec<u8>>()).unwrap();
        etcdctl(ctl, ep, &["put", &format!("{prefix}/large/{i}")], Some(&f));
        large_sizes.push(size);
    }
    let snap = tmp(&format!("snapshot-{tag}"));
    etcdctl(ctl, ep, &["snapshot", "save", snap.to_str().unwrap()], None);
    let len = std::fs::metadata(&snap).unwrap().len();

    let db = Db::open(&snap).unwrap();
    let ps = db.page_size();
    eprintln!(
        "{tag}: snapshot of {len} bytes ({} mod page size), page size {ps}, txid {}",
        len % u64::from(ps),
        db.txid()
    );
    let orig = read_tree(&db, &[]).unwrap();
    let names = db.buckets().unwrap();
    assert!(names.iter().any(|n| n == b"key") && names.iter().any(|n| n == b"meta"), "{names:?}");
    let Some((_, Item::Bucket(keys))) = orig.iter().find(|(n, _)| n == b"key") else { panic!("no key bucket") };
    assert!(keys.iter().all(|(_, i)| matches!(i, Item::Data(_))), "etcd has no nested buckets");
    let (Some((lk, Item::Data(lv))), Some(last)) = (keys.last(), db.last(b"key").unwrap()) else {
        panic!("empty key bucket")
    };
    assert_eq!(last, (lk.clone(), lv.clone()));
    // Our values are in there: mvccpb.KeyValue carries the value bytes.
    for size in &large_sizes {
        assert!(keys.iter().any(|(_, i)| matches!(i, Item::Data(v) if v.len() > *size && v.len() < size + 200)));
    }
    let revision = u64::from_be_bytes(lk[..8].try_into().unwrap());

    // Rewrite every bucket, read it back, and let Go bbolt check it.
    let new = tmp(&format!("rewritten-{tag}"));
    let mut w = Writer::create(&new, ps).unwrap();
    for name in &names {
        w.begin_bucket(name).unwrap();
        db.for_each(name, &mut |k, v| match v {
            Value::Data(v) => w.put(k, v),
            Value::Bucket(_) => panic!("nested bucket in etcd"),
        })
        .unwrap();
        w.end_bucket().unwrap();
    }
    w.finish(db.txid() + 1).unwrap();
    let db2 = Db::open(&new).unwrap();
    assert_eq!((db2.page_size(), db2.txid()), (ps, db.txid() + 1));
    assert!(read_tree(&db2, &[]).unwrap() == orig, "rewritten file differs");

    let before = snapshot_status(util, &snap).unwrap();
    let after = snapshot_status(util, &new).unwrap_or_else(|e| panic!("etcdutl on the rewritten file: {e}"));
    eprintln!("{tag}: original {before}, rewritten {after}");
    assert_eq!(after["revision"], before["revision"]);
    assert_eq!(after["revision"], revision);
    assert_eq!(after["totalKey"], before["totalKey"]);
    // The hash covers bucket names, keys and values: same content, same hash.
    assert_eq!(after["hash"], before["hash"]);
    let total: usize = orig.iter().map(|(_, b)| if let Item::Bucket(t) = b { t.len() } else { 0 }).sum();
    assert_eq!(after["totalKey"], total);

    // Go bbolt's check must also be able to fail: an unreachable page.
    let bad = corrupt_copy(&new, |b| {
        let hwm = u64_at(b, 56) + 1;
        for m in [0, ps as usize] {
            b[m + 56..m + 64].copy_from_slice(&hwm.to_le_bytes());
            let sum = fnv1a64(&b[m + 16..m + 72]);
            b[m + 72..m + 80].copy_from_slice(&sum.to_le_bytes());
        }
        b.resize(b.len() + ps as usize, 0);
    });
    let e = snapshot_status(util, &bad).expect_err("etcdutl accepted an unreachable page");
    assert!(e.contains("unreachable unfreed"), "{e}");
    for p in [snap, new, bad] {
        std::fs::remove_file(p).unwrap();
    }
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[test]
fn real_etcd_34_snapshot_rewrite() {
    let Some(env) = etcd_env() else {
        eprintln!("SKIPPED real_etcd_34_snapshot_rewrite: EBR_* variables not set (source scripts/env print)");
        return;
    };
    real_etcd_case(&env.ctl34, &env.ep34, &env.util, "etcd34");
}

#[test]
fn real_etcd_35_snapshot_rewrite() {
    let Some(env) = etcd_env() else {
        eprintln!("SKIPPED real_etcd_35_snapshot_rewrite: EBR_* variables not set (source scripts/env print)");
        return;
    };
    real_etcd_case(&env.ctl35, &env.ep35, &env.util, "etcd35");
}
