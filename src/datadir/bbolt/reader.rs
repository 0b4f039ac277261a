//! Reading a bbolt file page by page with positioned reads.

use super::page::{
    BUCKET_HEADER_SIZE, FLAG_BRANCH, FLAG_LEAF, LEAF_BUCKET, MAX_PAGE_SIZE, META_SIZE, MIN_PAGE_SIZE, Meta, PageHeader,
    branch_element, check_count, leaf_element, u64_at,
};
use super::{Error, Value, show_key};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Deeper trees are corrupt (or cyclic): bbolt's fan-out makes 64 levels
/// impossible for any file that fits on a disk.
const MAX_DEPTH: usize = 64;

/// A bbolt file opened read-only at its latest valid meta page.
#[derive(Debug)]
pub struct Db {
    file: File,
    path: PathBuf,
    pub(super) meta: Meta,
}

/// Where a bucket's elements live.
pub(super) enum Bucket {
    /// Root page of the bucket's B+tree.
    Tree(u64),
    /// The page image stored in the parent's value (`root` 0).
    Inline(Vec<u8>),
}

/// A bucket as [`Db::rightmost`] reads it.
pub(super) struct Rightmost {
    pub sequence: u64,
    pub leaves: Vec<(Vec<u8>, u64)>,
    pub last: Elems,
}

/// Leaf elements as (flags, key, value).
pub(super) type Elems = Vec<(u32, Vec<u8>, Vec<u8>)>;

type ElemFn<'f> = dyn FnMut(u32, &[u8], &[u8]) -> Result<(), Error> + 'f;
/// Called by [`Db::walk`] for each page it reads: `(pgid, header, page run)`.
pub(super) type PageFn<'f> = dyn FnMut(u64, PageHeader, &[u8]) -> Result<(), Error> + 'f;

pub(super) fn show_path(path: &[&[u8]]) -> String {
    if path.is_empty() {
        return "the root bucket".into();
    }
    let parts: Vec<String> = path.iter().map(|p| show_key(p)).collect();
    format!("bucket {}", parts.join("/"))
}

impl Db {
    /// Opens `path` and selects its meta page as bbolt does: the one with
    /// the higher txid if it validates, otherwise the other.
    pub fn open(path: &Path) -> Result<Db, Error> {
        let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| Error::io(format!("reading the size of {}", path.display()), e))?.len();
        let read_meta = |off: u64| -> Result<Meta, String> {
            if off + META_SIZE as u64 > len {
                return Err(format!("file ends at {len} bytes, before the meta page at offset {off}"));
            }
            let mut b = [0u8; META_SIZE];
            file.read_exact_at(&mut b, off).map_err(|e| format!("reading offset {off}: {e}"))?;
            Meta::decode(&b)
        };
        let m0 = read_meta(0);
        let m1 = match &m0 {
            Ok(m0) => read_meta(u64::from(m0.page_size)).and_then(|m1| {
                if m1.page_size == m0.page_size {
                    Ok(m1)
                } else {
                    Err(format!("page size {} differs from page 0's {}", m1.page_size, m0.page_size))
                }
            }),
            // Without page 0 the page size is unknown: page 1 is wherever a
            // valid meta states its own offset as the page size.
            Err(_) => {
                let mut reason = None;
                let mut found = None;
                let mut off = u64::from(MIN_PAGE_SIZE);
                while off <= u64::from(MAX_PAGE_SIZE) && found.is_none() {
                    match read_meta(off) {
                        Ok(m) if u64::from(m.page_size) == off => found = Some(m),
                        Ok(m) => reason = Some(format!("page size {} does not match offset {off}", m.page_size)),
                        Err(e) if !e.starts_with("bad magic") && !e.starts_with("file ends") => {
                            reason = Some(format!("{e} (at offset {off})"))
                        }
                        Err(_) => {}
                    }
                    off *= 2;
                }
                found.ok_or_else(|| reason.unwrap_or_else(|| "no meta page at any offset from 1 KiB to 64 KiB".into()))
            }
        };
        let meta = match (m0, m1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(m), Err(e)) | (Err(e), Ok(m)) => {
                log::warn!("{}: one meta page is invalid ({e}); using the one with txid {}", path.display(), m.txid);
                m
            }
            (Err(a), Err(b)) => {
                return Err(Error::new(format!("{}: meta pages invalid: page 0: {a}; page 1: {b}", path.display())));
            }
        };
        let db = Db { file, path: path.to_path_buf(), meta };
        let (ps, hwm) = (u64::from(meta.page_size), meta.pgid);
        match hwm.checked_mul(ps) {
            Some(need) if need <= len => {}
            _ => {
                return Err(db.err(format!(
                    "file is truncated: {len} bytes, but the high-water mark of {hwm} pages of {ps} bytes needs {}",
                    hwm.saturating_mul(ps)
                )));
            }
        }
        if meta.root < 2 || meta.root >= hwm {
            return Err(db.err(format!(
                "meta (txid {}): root page {} outside the data pages 2..{hwm} (high-water mark)",
                meta.txid, meta.root
            )));
        }
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn page_size(&self) -> u32 {
        self.meta.page_size
    }

    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    /// Names of the top-level buckets, in ascending order.
    pub fn buckets(&self) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.root_buckets()?.into_iter().map(|(name, _)| name).collect())
    }

    /// The top-level buckets in ascending order, each with its raw value
    /// (as [`Value::Bucket`] gives it).
    #[allow(clippy::type_complexity)] // (name, raw value) pairs, spelled out
    pub fn root_buckets(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        let mut buckets = Vec::new();
        self.walk(&Bucket::Tree(self.meta.root), &[], &mut |_, _, _| Ok(()), &mut |flags, k, v| {
            if flags & LEAF_BUCKET == 0 {
                return Err(self.err(format!("the root bucket holds a plain key {}", show_key(k))));
            }
            buckets.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(buckets)
    }

    /// Calls `f` for every element of top-level `bucket` in ascending key
    /// order; a missing bucket visits nothing.
    #[allow(clippy::type_complexity)] // spelled out: the signature callers are written against
    pub fn for_each(
        &self,
        bucket: &[u8],
        f: &mut dyn FnMut(&[u8], Value<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.for_each_path(&[bucket], f)
    }

    /// [`Db::for_each`] for a nested bucket: `path[0]` is top-level, each
    /// further name a bucket inside the previous one. An empty path visits
    /// the top-level buckets themselves.
    #[allow(clippy::type_complexity)]
    pub fn for_each_path(
        &self,
        path: &[&[u8]],
        f: &mut dyn FnMut(&[u8], Value<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let Some(bucket) = self.open_bucket(path)? else {
            return Ok(());
        };
        self.walk(&bucket, path, &mut |_, _, _| Ok(()), &mut |flags, k, v| {
            f(k, if flags & LEAF_BUCKET != 0 { Value::Bucket(v) } else { Value::Data(v) })
        })
    }

    /// The greatest key of top-level `bucket` and its value (the raw bucket
    /// value if it is a sub-bucket), reading only the rightmost path.
    #[allow(clippy::type_complexity)]
    pub fn last(&self, bucket: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>, Error> {
        let found = match self.open_bucket(&[bucket])? {
            None => None,
            Some(Bucket::Inline(image)) => {
                let n = PageHeader::decode(&image).count as usize;
                match n {
                    0 => None,
                    _ => {
                        let (_, k, v) = leaf_element(&image, n - 1)
                            .map_err(|e| self.err(format!("inline {}: {e}", show_path(&[bucket]))))?;
                        Some((k.to_vec(), v.to_vec()))
                    }
                }
            }
            Some(Bucket::Tree(root)) => {
                let mut buf = Vec::new();
                let mut pgid = root;
                let mut depth = 0;
                loop {
                    if depth == MAX_DEPTH {
                        return Err(self.err(format!("page {pgid}: tree deeper than {MAX_DEPTH} levels (a cycle?)")));
                    }
                    depth += 1;
                    let h = self.read_page(pgid, &mut buf)?;
                    let n = h.count as usize;
                    if h.flags == FLAG_BRANCH {
                        pgid = branch_element(&buf, n - 1).map_err(|e| self.err(format!("page {pgid}: {e}")))?.1;
                        continue;
                    }
                    break match n {
                        0 => None,
                        _ => {
                            let (_, k, v) =
                                leaf_element(&buf, n - 1).map_err(|e| self.err(format!("page {pgid}: {e}")))?;
                            Some((k.to_vec(), v.to_vec()))
                        }
                    };
                }
            }
        };
        Ok(found)
    }

    /// What [`super::Writer::resume_bucket`] needs to add keys above the
    /// last one of top-level bucket `name` (raw value `raw`): its sequence,
    /// the (first key, page id) of every leaf but the last, and the last
    /// leaf's elements. Reads the branch pages and the last leaf only.
    pub(super) fn rightmost(&self, name: &[u8], raw: &[u8]) -> Result<Rightmost, Error> {
        let here: &[&[u8]] = &[name];
        let sequence = if raw.len() >= BUCKET_HEADER_SIZE { u64_at(raw, 8) } else { 0 };
        let elems = |page: &[u8], at: &dyn Fn() -> String| -> Result<Elems, Error> {
            (0..PageHeader::decode(page).count as usize)
                .map(|i| {
                    let (flags, k, v) = leaf_element(page, i).map_err(|e| self.err(format!("{}: {e}", at())))?;
                    Ok((flags, k.to_vec(), v.to_vec()))
                })
                .collect()
        };
        let root = match self.bucket_value(raw, here)? {
            Bucket::Inline(image) => {
                let last = elems(&image, &|| format!("inline {}", show_path(here)))?;
                return Ok(Rightmost { sequence, leaves: Vec::new(), last });
            }
            Bucket::Tree(root) => root,
        };
        // bbolt keeps every leaf at the same depth: the leftmost path gives it.
        let mut buf = Vec::new();
        let (mut pgid, mut depth) = (root, 0);
        while self.read_page(pgid, &mut buf)?.flags == FLAG_BRANCH {
            depth += 1;
            if depth == MAX_DEPTH {
                return Err(self.err(format!("page {pgid}: tree deeper than {MAX_DEPTH} levels (a cycle?)")));
            }
            pgid = branch_element(&buf, 0).map_err(|e| self.err(format!("page {pgid}: {e}")))?.1;
        }
        let mut leaves = Vec::new();
        // Branch pages still to read, with their depth, rightmost last.
        let mut stack = vec![(root, 0)];
        let mut visits: u64 = 0;
        while let Some((pgid, d)) = stack.pop() {
            visits += 1;
            if visits > self.meta.pgid {
                return Err(self.err(format!("{}: more branch visits than pages (a cycle?)", show_path(here))));
            }
            if d == depth {
                leaves.push((Vec::new(), pgid));
                continue;
            }
            let h = self.read_page(pgid, &mut buf)?;
            if h.flags != FLAG_BRANCH {
                return Err(self.err(format!("page {pgid}: a leaf above the leaf level of {}", show_path(here))));
            }
            let at = |e: String| self.err(format!("page {pgid}: {e}"));
            if d + 1 == depth {
                for i in 0..h.count as usize {
                    let (k, child) = branch_element(&buf, i).map_err(at)?;
                    leaves.push((k.to_vec(), child));
                }
            } else {
                for i in (0..h.count as usize).rev() {
                    stack.push((branch_element(&buf, i).map_err(at)?.1, d + 1));
                }
            }
        }
        let (_, last_pgid) = leaves.pop().expect("a tree has a leaf");
        let h = self.read_page(last_pgid, &mut buf)?;
        if h.flags != FLAG_LEAF {
            return Err(self.err(format!("page {last_pgid}: a branch at the leaf level of {}", show_path(here))));
        }
        let last = elems(&buf, &|| format!("page {last_pgid}"))?;
        Ok(Rightmost { sequence, leaves, last })
    }

    pub(super) fn err(&self, msg: String) -> Error {
        Error::new(format!("{}: {msg}", self.path.display()))
    }

    /// Reads `buf.len()` bytes at page `pgid`, `skip` bytes in.
    pub(super) fn read_at(&self, pgid: u64, skip: u64, buf: &mut [u8]) -> Result<(), Error> {
        let at = pgid * u64::from(self.meta.page_size) + skip;
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| Error::io(format!("{}: reading page {pgid}", self.path.display()), e))
    }

    /// Reads the first page of the run at `pgid` into `buf` (one page long
    /// afterwards) and checks that its header carries its own id and that
    /// its overflow pages stay below the high-water mark.
    pub(super) fn read_head(&self, pgid: u64, buf: &mut Vec<u8>) -> Result<PageHeader, Error> {
        let hwm = self.meta.pgid;
        if pgid >= hwm {
            return Err(self.err(format!("page {pgid} beyond high-water mark {hwm}")));
        }
        let ps = self.meta.page_size as usize;
        // Do not keep a large overflow run allocated for the next, small page.
        if buf.capacity() > 64 * ps {
            *buf = Vec::new();
        }
        buf.resize(ps, 0);
        self.read_at(pgid, 0, buf)?;
        let h = PageHeader::decode(buf);
        if h.id != pgid {
            return Err(self.err(format!("page {pgid}: header says page {}", h.id)));
        }
        if h.overflow > 0 && pgid + 1 + u64::from(h.overflow) > hwm {
            return Err(self.err(format!("page {pgid}: {} overflow pages run past high-water mark {hwm}", h.overflow)));
        }
        Ok(h)
    }

    /// Reads the page run starting at `pgid` into `buf` and checks that it
    /// is a leaf or branch whose header and element array are sound.
    fn read_page(&self, pgid: u64, buf: &mut Vec<u8>) -> Result<PageHeader, Error> {
        let h = self.read_head(pgid, buf)?;
        if h.flags != FLAG_LEAF && h.flags != FLAG_BRANCH {
            return Err(self.err(format!("page {pgid}: expected leaf or branch, found flags {:#06x}", h.flags)));
        }
        if h.flags == FLAG_BRANCH && h.count == 0 {
            return Err(self.err(format!("page {pgid}: branch page without elements")));
        }
        if h.overflow > 0 {
            let ps = self.meta.page_size as usize;
            // Bounded by the high-water mark, which open() checked against the file size.
            buf.resize((1 + h.overflow as usize) * ps, 0);
            self.read_at(pgid + 1, 0, &mut buf[ps..])?;
        }
        check_count(buf, h.count as usize).map_err(|e| self.err(format!("page {pgid}: {e}")))?;
        Ok(h)
    }

    /// The bucket at `path` (empty: the root bucket), or None if a name on
    /// the way is missing.
    fn open_bucket(&self, path: &[&[u8]]) -> Result<Option<Bucket>, Error> {
        let mut bucket = Bucket::Tree(self.meta.root);
        for (i, name) in path.iter().enumerate() {
            let Some((flags, value)) = self.get(&bucket, name, &path[..i])? else {
                return Ok(None);
            };
            let here = &path[..=i];
            if flags & LEAF_BUCKET == 0 {
                return Err(self.err(format!("{} is a plain key, not a bucket", show_path(here))));
            }
            bucket = self.bucket_value(&value, here)?;
        }
        Ok(Some(bucket))
    }

    /// The bucket a bucket element's value (at `here`) describes: a tree
    /// root, or an inline leaf page whose header and element array are sound.
    pub(super) fn bucket_value(&self, value: &[u8], here: &[&[u8]]) -> Result<Bucket, Error> {
        let here = || show_path(here);
        if value.len() < BUCKET_HEADER_SIZE {
            return Err(self.err(format!("{}: bucket value of {} bytes has no header", here(), value.len())));
        }
        Ok(match u64_at(value, 0) {
            0 => {
                let image = value[BUCKET_HEADER_SIZE..].to_vec();
                if image.len() < super::page::HEADER_SIZE {
                    return Err(self.err(format!("{}: inline page of {} bytes", here(), image.len())));
                }
                let h = PageHeader::decode(&image);
                if h.flags != FLAG_LEAF {
                    return Err(self.err(format!("{}: inline page has flags {:#06x}, not leaf", here(), h.flags)));
                }
                check_count(&image, h.count as usize).map_err(|e| self.err(format!("{}: inline page: {e}", here())))?;
                Bucket::Inline(image)
            }
            root => Bucket::Tree(root),
        })
    }

    /// `key`'s element in `bucket` as (flags, value).
    fn get(&self, bucket: &Bucket, key: &[u8], path: &[&[u8]]) -> Result<Option<(u32, Vec<u8>)>, Error> {
        let find = |page: &[u8], n: usize| -> Result<Option<(u32, Vec<u8>)>, String> {
            for i in 0..n {
                let (flags, k, v) = leaf_element(page, i)?;
                if k == key {
                    return Ok(Some((flags, v.to_vec())));
                }
            }
            Ok(None)
        };
        let root = match bucket {
            Bucket::Inline(image) => {
                let n = PageHeader::decode(image).count as usize;
                return find(image, n).map_err(|e| self.err(format!("inline {}: {e}", show_path(path))));
            }
            Bucket::Tree(root) => *root,
        };
        let mut buf = Vec::new();
        let mut pgid = root;
        for _ in 0..MAX_DEPTH {
            let h = self.read_page(pgid, &mut buf)?;
            let n = h.count as usize;
            let in_page = |e: String| self.err(format!("page {pgid}: {e}"));
            if h.flags == FLAG_LEAF {
                return find(&buf, n).map_err(in_page);
            }
            // The child whose first key is the greatest one <= key (the first child if none).
            let mut child = branch_element(&buf, 0).map_err(in_page)?.1;
            for i in 1..n {
                let (k, p) = branch_element(&buf, i).map_err(in_page)?;
                if k > key {
                    break;
                }
                child = p;
            }
            pgid = child;
        }
        Err(self.err(format!("page {pgid}: tree deeper than {MAX_DEPTH} levels (a cycle?)")))
    }

    /// Calls `f(flags, key, value)` for every element of `bucket` in order,
    /// checking that keys ascend strictly, and `on_page` for every page of
    /// its tree when it is read (a branch before its children).
    pub(super) fn walk(
        &self,
        bucket: &Bucket,
        path: &[&[u8]],
        on_page: &mut PageFn<'_>,
        f: &mut ElemFn<'_>,
    ) -> Result<(), Error> {
        let mut prev: Option<Vec<u8>> = None;
        let mut visit = |flags: u32, k: &[u8], v: &[u8], at: &dyn Fn() -> String| -> Result<(), Error> {
            match &mut prev {
                Some(p) if p.as_slice() >= k => {
                    return Err(self.err(format!(
                        "{}: key {} not above the previous key {}",
                        at(),
                        show_key(k),
                        show_key(p)
                    )));
                }
                Some(p) => {
                    p.clear();
                    p.extend_from_slice(k);
                }
                None => prev = Some(k.to_vec()),
            }
            f(flags, k, v)
        };
        let root = match bucket {
            Bucket::Inline(image) => {
                let at = || format!("inline {}", show_path(path));
                for i in 0..PageHeader::decode(image).count as usize {
                    let (flags, k, v) = leaf_element(image, i).map_err(|e| self.err(format!("{}: {e}", at())))?;
                    visit(flags, k, v, &at)?;
                }
                return Ok(());
            }
            Bucket::Tree(root) => *root,
        };
        // One page buffer per depth, and for each branch on the current path
        // the index of the next child to visit.
        let mut bufs: Vec<Vec<u8>> = Vec::new();
        let mut branches: Vec<(u64, usize, usize)> = Vec::new();
        let mut visits: u64 = 0;
        let mut pgid = root;
        loop {
            let depth = branches.len();
            if depth == MAX_DEPTH {
                return Err(self.err(format!("page {pgid}: tree deeper than {MAX_DEPTH} levels (a cycle?)")));
            }
            // A sound tree reaches each page once; more visits than pages
            // means pages shared between subtrees, which could loop for ages.
            visits += 1;
            if visits > self.meta.pgid {
                return Err(self.err(format!(
                    "page {pgid}: the tree references more pages than the file holds (a cycle or shared pages)"
                )));
            }
            if bufs.len() == depth {
                bufs.push(Vec::new());
            }
            let h = self.read_page(pgid, &mut bufs[depth])?;
            let page = &bufs[depth];
            on_page(pgid, h, page)?;
            if h.flags == FLAG_BRANCH {
                let child = branch_element(page, 0).map_err(|e| self.err(format!("page {pgid}: {e}")))?.1;
                branches.push((pgid, 1, h.count as usize));
                pgid = child;
                continue;
            }
            let at = || format!("page {pgid}");
            for i in 0..h.count as usize {
                let (flags, k, v) = leaf_element(page, i).map_err(|e| self.err(format!("page {pgid}: {e}")))?;
                visit(flags, k, v, &at)?;
            }
            // Up to the nearest branch with children left.
            loop {
                let d = branches.len().wrapping_sub(1);
                let Some((bpgid, next, count)) = branches.last_mut() else {
                    return Ok(());
                };
                if *next < *count {
                    pgid = branch_element(&bufs[d], *next).map_err(|e| self.err(format!("page {bpgid}: {e}")))?.1;
                    *next += 1;
                    break;
                }
                branches.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Writer;
    use super::super::writer::tests::temp_path;
    use super::*;

    /// A file with bucket "b" of `n` keys of 200 bytes (several leaves
    /// under one branch at page size 4096), and its bytes.
    fn sample(n: u32) -> (super::super::temp_file::TempFile, Vec<u8>) {
        let path = temp_path("reader");
        let mut w = Writer::create(&path, 4096).unwrap();
        w.begin_bucket(b"b").unwrap();
        for i in 0..n {
            w.put(&i.to_be_bytes(), &[i as u8; 200]).unwrap();
        }
        w.end_bucket().unwrap();
        w.finish(9).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes)
    }

    fn count(db: &Db) -> Result<usize, Error> {
        let mut n = 0;
        db.for_each(b"b", &mut |_, _| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    fn patched(bytes: &[u8], at: usize, new: &[u8]) -> Db {
        let path = temp_path("patched");
        let mut b = bytes.to_vec();
        b[at..at + new.len()].copy_from_slice(new);
        std::fs::write(&path, b).unwrap();
        Db::open(&path).unwrap()
    }

    #[test]
    fn reads_back_and_stops() {
        let (path, _) = sample(100);
        let db = Db::open(&path).unwrap();
        assert_eq!((db.page_size(), db.txid()), (4096, 9));
        assert_eq!(count(&db).unwrap(), 100);
        assert_eq!(db.last(b"b").unwrap().unwrap().0, 99u32.to_be_bytes());
        assert_eq!(db.last(b"nope").unwrap(), None);
        let mut seen = 0;
        let e = db
            .for_each(b"b", &mut |_, _| {
                seen += 1;
                if seen == 3 { Err(Error::stop()) } else { Ok(()) }
            })
            .unwrap_err();
        assert!(e.is_stop());
        assert_eq!(seen, 3);
    }

    // Layout of sample(100): leaves 3..=9 (16 keys of 220 bytes fit in
    // 90% of a page), branch 10, root leaf 11.
    const BRANCH: usize = 10 * 4096;

    #[test]
    fn branch_cycle_is_an_error() {
        let (_, bytes) = sample(100);
        // First child of the branch -> the branch itself.
        let db = patched(&bytes, BRANCH + 16 + 8, &10u64.to_le_bytes());
        let e = count(&db).unwrap_err().to_string();
        // Caught by the page-visit bound (12 pages) before the depth bound.
        assert!(e.contains("page 10: the tree references more pages than the file holds"), "{e}");
        assert!(db.get(&Bucket::Tree(10), b"", &[]).unwrap_err().to_string().contains("deeper"));
        assert!(db.last(b"b").is_ok());
    }

    #[test]
    fn shared_pages_are_an_error() {
        let (_, bytes) = sample(100);
        // Every child of the branch -> the first leaf: keys repeat.
        let mut b = bytes.clone();
        let n = u16_at_test(&b, BRANCH + 10);
        for i in 0..n {
            let at = BRANCH + 16 + i * 16 + 8;
            b[at..at + 8].copy_from_slice(&3u64.to_le_bytes());
        }
        let db = patched(&b, 0, &b[..1]);
        assert!(count(&db).unwrap_err().to_string().contains("not above the previous key"));
    }

    fn u16_at_test(b: &[u8], at: usize) -> usize {
        u16::from_le_bytes([b[at], b[at + 1]]) as usize
    }

    #[test]
    fn bad_pages_name_the_page() {
        let (_, bytes) = sample(100);
        let db = patched(&bytes, 4 * 4096 + 8, &[0x10, 0]);
        let e = count(&db).unwrap_err().to_string();
        assert!(e.contains("page 4: expected leaf or branch, found flags 0x0010"), "{e}");
        let db = patched(&bytes, 4 * 4096, &5u64.to_le_bytes());
        assert!(count(&db).unwrap_err().to_string().contains("page 4: header says page 5"));
        let db = patched(&bytes, 4 * 4096 + 10, &[0xFF, 0xFF]);
        assert!(count(&db).unwrap_err().to_string().contains("page 4: 65535 elements overrun"));
        let db = patched(&bytes, 4 * 4096 + 12, &[0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(count(&db).unwrap_err().to_string().contains("page 4: 2147483647 overflow pages run past"));
        let db = patched(&bytes, BRANCH + 16 + 8, &1_000_000u64.to_le_bytes());
        let e = count(&db).unwrap_err().to_string();
        assert!(e.contains("page 1000000 beyond high-water mark 12"), "{e}");
        // Keys out of order inside a leaf.
        let db = patched(&bytes, 3 * 4096 + 16 + 16 * 16, &[0xFF]);
        assert!(count(&db).unwrap_err().to_string().contains("page 3: key"));
    }
}
