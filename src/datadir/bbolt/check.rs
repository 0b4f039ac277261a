//! A full structural check of a bbolt file, as Go bbolt's `Tx.Check`
//! does it: every page accounted for exactly once.
//!
//! Memory: two bitmaps of one bit per page below the high-water mark
//! (reachable, free), the tree walk's stack of page runs, and a 64 KiB
//! buffer for the free list; `Db::open` has already checked the high-water
//! mark against the file size, so the bitmaps are bounded by the file.

use super::page::{
    FLAG_BRANCH, FLAG_FREELIST, FLAG_META, HEADER_SIZE, LEAF_BUCKET, PageHeader, branch_element, u64_at,
};
use super::reader::{Bucket, show_path};
use super::{Db, Error, show_key};
use std::cell::{Cell, RefCell};

/// `meta.freelist` of a file written with bbolt's `NoFreelistSync`: no free
/// list is stored, every unreachable page is free.
pub(crate) const NO_FREELIST: u64 = u64::MAX;

/// Nested buckets deeper than this are taken for corruption.
const MAX_NESTING: usize = 64;

/// Free-list ids read at a time.
const IDS_PER_READ: usize = 8192;

/// What [`Db::check_structure`] counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Structure {
    /// The meta's high-water mark: pages `0..pages` are in use.
    pub pages: u64,
    /// The two meta pages, the free-list page run and every page of every
    /// bucket tree, overflow pages included.
    pub reachable: u64,
    /// Pages in the stored free list, or, without one, the unreachable ones.
    pub free: u64,
}

struct Bitmap(Vec<u64>);

impl Bitmap {
    fn new(bits: u64) -> Bitmap {
        Bitmap(vec![0; bits.div_ceil(64) as usize])
    }

    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i` and says whether it was already set.
    fn test_and_set(&mut self, i: u64) -> bool {
        let was = self.get(i);
        self.0[(i / 64) as usize] |= 1 << (i % 64);
        was
    }
}

struct Walk {
    reachable: RefCell<Bitmap>,
    count: Cell<u64>,
}

impl Walk {
    /// Marks pages `first..first + n` reachable; `what` names the referrer.
    fn mark(&self, db: &Db, first: u64, n: u64, what: &dyn Fn() -> String) -> Result<(), Error> {
        let mut bits = self.reachable.borrow_mut();
        for id in first..first + n {
            if bits.test_and_set(id) {
                return Err(db.err(format!("page {id}: referenced twice (again by {})", what())));
            }
        }
        self.count.set(self.count.get() + n);
        Ok(())
    }
}

impl Db {
    /// Proves the file's page accounting: the two metas, the free-list page
    /// run and every page of every bucket tree (nested ones too) are each
    /// reachable exactly once, below the high-water mark, with the header
    /// their place expects; every other page below the high-water mark is
    /// in the free list (or, when none is stored, counted free), and no
    /// free page is reachable. Keys ascend strictly within each page and
    /// across siblings, branch keys within each branch page. The first
    /// problem found is the error, naming the page.
    pub fn check_structure(&self) -> Result<Structure, Error> {
        // At least 3: open() checked that the root lies in 2..hwm.
        let hwm = self.meta.pgid;
        let walk = Walk { reachable: RefCell::new(Bitmap::new(hwm)), count: Cell::new(0) };
        let mut head = [0u8; HEADER_SIZE];
        for id in 0..2 {
            self.read_at(id, 0, &mut head)?;
            let h = PageHeader::decode(&head);
            if h.id != id || h.flags != FLAG_META {
                return Err(self.err(format!(
                    "page {id}: not a meta page (header says page {} with flags {:#06x})",
                    h.id, h.flags
                )));
            }
            walk.mark(self, id, 1, &|| "the meta pages".into())?;
        }
        let freelist = self.meta.freelist;
        let mut buf = Vec::new();
        if freelist != NO_FREELIST {
            if freelist < 2 {
                return Err(self.err(format!("meta: free list at page {freelist}, a meta page")));
            }
            let h = self.read_head(freelist, &mut buf)?;
            if h.flags != FLAG_FREELIST {
                return Err(self.err(format!("page {freelist}: expected the free list, found flags {:#06x}", h.flags)));
            }
            walk.mark(self, freelist, 1 + u64::from(h.overflow), &|| "the meta's free list".into())?;
        }
        self.check_tree(&Bucket::Tree(self.meta.root), &[], &walk, 0)?;
        let reachable = walk.reachable.into_inner();
        let pages_reachable = walk.count.get();
        let free = if freelist == NO_FREELIST {
            hwm - pages_reachable
        } else {
            let mut free = Bitmap::new(hwm);
            let n = self.free_ids(freelist, &mut |id| {
                if id < 2 || id >= hwm {
                    let why = if id < 2 { "a meta page".to_string() } else { format!("beyond high-water mark {hwm}") };
                    return Err(self.err(format!("page {id}: in the free list (page {freelist}) but {why}")));
                }
                if free.test_and_set(id) {
                    return Err(self.err(format!("page {id}: listed twice in the free list (page {freelist})")));
                }
                if reachable.get(id) {
                    return Err(self.err(format!("page {id}: reachable and in the free list (page {freelist})")));
                }
                Ok(())
            })?;
            for (w, (r, f)) in reachable.0.iter().zip(&free.0).enumerate() {
                let missing = !(r | f);
                if missing != 0 {
                    let id = w as u64 * 64 + u64::from(missing.trailing_zeros());
                    if id < hwm {
                        return Err(self.err(format!("page {id}: neither reachable nor in the free list")));
                    }
                }
            }
            n
        };
        Ok(Structure { pages: hwm, reachable: pages_reachable, free })
    }

    /// Marks the pages of `bucket`'s tree and of every bucket nested in it.
    fn check_tree(&self, bucket: &Bucket, path: &[&[u8]], walk: &Walk, nesting: usize) -> Result<(), Error> {
        if nesting > MAX_NESTING {
            return Err(self.err(format!("{}: buckets nested more than {MAX_NESTING} deep", show_path(path))));
        }
        let mut on_page = |pgid: u64, h: PageHeader, page: &[u8]| -> Result<(), Error> {
            walk.mark(self, pgid, 1 + u64::from(h.overflow), &|| format!("{} at page {pgid}", show_path(path)))?;
            if h.flags == FLAG_BRANCH {
                let key = |i| branch_element(page, i).map_err(|e| self.err(format!("page {pgid}: {e}")));
                for i in 1..h.count as usize {
                    let (prev, k) = (key(i - 1)?.0, key(i)?.0);
                    if prev >= k {
                        return Err(self.err(format!(
                            "page {pgid}: branch key {i} {} not above the previous key {}",
                            show_key(k),
                            show_key(prev)
                        )));
                    }
                }
            }
            Ok(())
        };
        self.walk(bucket, path, &mut on_page, &mut |flags, k, v| {
            if flags & LEAF_BUCKET != 0 {
                let mut inner = path.to_vec();
                inner.push(k);
                let sub = self.bucket_value(v, &inner)?;
                self.check_tree(&sub, &inner, walk, nesting + 1)?;
            }
            Ok(())
        })
    }

    /// Calls `f` with each page id of the free list at `pgid`, in stored
    /// order, reading a bounded chunk at a time; returns their number.
    fn free_ids(&self, pgid: u64, f: &mut dyn FnMut(u64) -> Result<(), Error>) -> Result<u64, Error> {
        let mut buf = Vec::new();
        let h = self.read_head(pgid, &mut buf)?;
        // bbolt stores a count of 0xFFFF or more in the first id slot.
        let (count, start) = match h.count {
            0xFFFF => (u64_at(&buf, HEADER_SIZE), HEADER_SIZE as u64 + 8),
            n => (u64::from(n), HEADER_SIZE as u64),
        };
        let run = (1 + u64::from(h.overflow)) * u64::from(self.meta.page_size);
        if count.checked_mul(8).and_then(|b| b.checked_add(start)).is_none_or(|end| end > run) {
            return Err(self.err(format!(
                "page {pgid}: free list of {count} ids overruns its {} pages",
                1 + u64::from(h.overflow)
            )));
        }
        let mut chunk = vec![0u8; 8 * IDS_PER_READ.min(count as usize)];
        let mut done = 0;
        while done < count {
            let n = (count - done).min(IDS_PER_READ as u64) as usize;
            self.read_at(pgid, start + done * 8, &mut chunk[..n * 8])?;
            for i in 0..n {
                f(u64_at(&chunk, i * 8))?;
            }
            done += n as u64;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Writer;
    use super::super::page::Meta;
    use super::super::writer::tests::{TempFile, temp_path};
    use super::*;

    const PS: usize = 4096;

    /// Bucket "b" of 100 keys of 200 bytes: leaves 3..=9, branch 10, root
    /// leaf 11, high-water mark 12 (the layout the reader tests use).
    fn simple() -> Vec<u8> {
        let path = temp_path("check-simple");
        let mut w = Writer::create(&path, PS as u32).unwrap();
        w.begin_bucket(b"b").unwrap();
        for i in 0..100u32 {
            w.put(&i.to_be_bytes(), &[i as u8; 200]).unwrap();
        }
        w.end_bucket().unwrap();
        w.finish(9).unwrap();
        std::fs::read(&path).unwrap()
    }

    fn write(bytes: &[u8]) -> (TempFile, Db) {
        let path = temp_path("check");
        std::fs::write(&path, bytes).unwrap();
        let db = Db::open(&path).unwrap();
        (path, db)
    }

    fn check(bytes: &[u8]) -> Result<Structure, String> {
        let (_path, db) = write(bytes);
        db.check_structure().map_err(|e| e.to_string())
    }

    fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Both metas rewritten by `f` (checksums recomputed).
    fn with_metas(bytes: &mut [u8], f: impl Fn(&mut Meta)) {
        for id in 0..2 {
            let at = id * PS;
            let mut m = Meta::decode(&bytes[at..]).unwrap();
            f(&mut m);
            let b = m.encode();
            bytes[at..at + b.len()].copy_from_slice(&b);
        }
    }

    /// `simple()` with one more page (12, zeros) below the high-water mark.
    fn with_extra_page() -> Vec<u8> {
        let mut b = simple();
        b.resize(13 * PS, 0);
        with_metas(&mut b, |m| m.pgid = 13);
        b
    }

    /// Sets the free list (page 2) to `ids`.
    fn set_free(b: &mut [u8], ids: &[u64]) {
        b[2 * PS + 10..2 * PS + 12].copy_from_slice(&(ids.len() as u16).to_le_bytes());
        for (i, &id) in ids.iter().enumerate() {
            put_u64(b, 2 * PS + 16 + i * 8, id);
        }
    }

    #[test]
    fn written_files_pass() {
        assert_eq!(check(&simple()), Ok(Structure { pages: 12, reachable: 12, free: 0 }));
        // Nested tree and inline buckets, overflow pages, several branch levels.
        let path = temp_path("check-rich");
        let mut w = Writer::create(&path, 1024).unwrap();
        w.begin_bucket(b"a").unwrap();
        w.put(b"small", b"v").unwrap();
        w.end_bucket().unwrap(); // inline
        w.begin_bucket(b"key").unwrap();
        for i in 0..3000u32 {
            w.put(&i.to_be_bytes(), b"value").unwrap();
        }
        w.put(b"\xff big", &vec![7u8; 10_000]).unwrap();
        w.begin_bucket(b"\xff nested").unwrap();
        for i in 0..200u32 {
            w.put(&i.to_be_bytes(), &[1; 100]).unwrap();
        }
        w.begin_bucket(b"deeper").unwrap();
        w.put(b"x", b"y").unwrap();
        w.end_bucket().unwrap();
        w.end_bucket().unwrap();
        w.end_bucket().unwrap();
        w.finish(3).unwrap();
        let db = Db::open(&path).unwrap();
        let s = db.check_structure().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(s, Structure { pages: len / 1024, reachable: len / 1024, free: 0 });
        assert!(s.pages > 100, "{s:?}");
    }

    #[test]
    fn free_list_accounts_for_pages() {
        let mut b = with_extra_page();
        set_free(&mut b, &[12]);
        assert_eq!(check(&b), Ok(Structure { pages: 13, reachable: 12, free: 1 }));
        // The large-count form: 0xFFFF, then the real count in the first slot.
        b[2 * PS + 10..2 * PS + 12].copy_from_slice(&[0xFF, 0xFF]);
        put_u64(&mut b, 2 * PS + 16, 1);
        put_u64(&mut b, 2 * PS + 24, 12);
        assert_eq!(check(&b), Ok(Structure { pages: 13, reachable: 12, free: 1 }));
        put_u64(&mut b, 2 * PS + 16, 1 << 60);
        assert!(check(&b).unwrap_err().contains("page 2: free list of 1152921504606846976 ids overruns its 1 pages"));
    }

    #[test]
    fn no_freelist_counts_unreachable_pages_free() {
        let mut b = with_extra_page();
        with_metas(&mut b, |m| m.freelist = NO_FREELIST);
        // Page 2 (the stored but unused free list) and page 12.
        assert_eq!(check(&b), Ok(Structure { pages: 13, reachable: 11, free: 2 }));
    }

    #[test]
    fn unaccounted_page_is_an_error() {
        let e = check(&with_extra_page()).unwrap_err();
        assert!(e.ends_with("page 12: neither reachable nor in the free list"), "{e}");
    }

    #[test]
    fn page_referenced_twice_is_an_error() {
        let mut b = simple();
        // The branch's second child -> its first (leaf 3).
        put_u64(&mut b, 10 * PS + 16 + 16 + 8, 3);
        let e = check(&b).unwrap_err();
        assert!(e.ends_with("page 3: referenced twice (again by bucket \"b\" at page 3)"), "{e}");
        // The root bucket's leaf also used as a bucket root: b's root -> 11.
        let mut b = simple();
        let e = check(&{
            // The root leaf holds one element, bucket "b": value = root u64 ‖ sequence.
            let pos = u32::from_le_bytes(b[11 * PS + 20..11 * PS + 24].try_into().unwrap()) as usize;
            put_u64(&mut b, 11 * PS + 16 + pos + 1, 11);
            b
        })
        .unwrap_err();
        assert!(e.ends_with("page 11: referenced twice (again by bucket \"b\" at page 11)"), "{e}");
    }

    #[test]
    fn free_and_reachable_is_an_error() {
        let mut b = simple();
        set_free(&mut b, &[5]);
        let e = check(&b).unwrap_err();
        assert!(e.ends_with("page 5: reachable and in the free list (page 2)"), "{e}");
        set_free(&mut b, &[2]);
        assert!(check(&b).unwrap_err().ends_with("page 2: reachable and in the free list (page 2)"));
        let mut b = with_extra_page();
        set_free(&mut b, &[12, 12]);
        assert!(check(&b).unwrap_err().ends_with("page 12: listed twice in the free list (page 2)"));
        set_free(&mut b, &[1]);
        assert!(check(&b).unwrap_err().ends_with("page 1: in the free list (page 2) but a meta page"));
    }

    #[test]
    fn pages_beyond_the_high_water_mark_are_errors() {
        let mut b = simple();
        put_u64(&mut b, 10 * PS + 16 + 8, 12);
        let e = check(&b).unwrap_err();
        assert!(e.ends_with("page 12 beyond high-water mark 12"), "{e}");
        let mut b = with_extra_page();
        set_free(&mut b, &[12, 13]);
        assert!(check(&b).unwrap_err().ends_with("page 13: in the free list (page 2) but beyond high-water mark 13"));
        // An overflow run past the mark.
        let mut b = simple();
        b[9 * PS + 12..9 * PS + 16].copy_from_slice(&3u32.to_le_bytes());
        assert!(check(&b).unwrap_err().ends_with("page 9: 3 overflow pages run past high-water mark 12"));
    }

    #[test]
    fn bad_headers_and_key_order_are_errors() {
        let mut b = simple();
        b[PS + 8] = 0x02; // page 1 flags: leaf (outside the meta checksum)
        assert!(check(&b).unwrap_err().ends_with("page 1: not a meta page (header says page 1 with flags 0x0002)"));
        let mut b = simple();
        b[2 * PS + 8] = 0x02;
        assert!(check(&b).unwrap_err().ends_with("page 2: expected the free list, found flags 0x0002"));
        let mut b = simple();
        put_u64(&mut b, 6 * PS, 7);
        assert!(check(&b).unwrap_err().ends_with("page 6: header says page 7"));
        // A leaf key out of order (first byte of the 17th key of leaf 3).
        let mut b = simple();
        b[3 * PS + 16 + 16 * 16] = 0xFF;
        let e = check(&b).unwrap_err();
        assert!(e.contains("page 3: key") && e.contains("not above the previous key"), "{e}");
        // Across siblings: leaf 4's first key below leaf 3's last.
        let mut b = simple();
        let n4 = u16::from_le_bytes([b[4 * PS + 10], b[4 * PS + 11]]) as usize;
        let pos = u32::from_le_bytes(b[4 * PS + 20..4 * PS + 24].try_into().unwrap()) as usize;
        b[4 * PS + 16 + pos..4 * PS + 16 + pos + 4].copy_from_slice(&[0, 0, 0, 0]);
        assert!(n4 > 1);
        let e = check(&b).unwrap_err();
        assert!(e.contains("page 4: key \"\\x00\\x00\\x00\\x00\" not above the previous key"), "{e}");
        // Branch keys out of order.
        let mut b = simple();
        let pos = u32::from_le_bytes(b[10 * PS + 16 + 16..10 * PS + 16 + 20].try_into().unwrap()) as usize;
        b[10 * PS + 32 + pos..10 * PS + 32 + pos + 4].copy_from_slice(&[0, 0, 0, 0]);
        let e = check(&b).unwrap_err();
        assert!(e.contains("page 10: branch key 1 \"\\x00\\x00\\x00\\x00\" not above the previous key"), "{e}");
    }
}
