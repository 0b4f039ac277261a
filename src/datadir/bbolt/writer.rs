//! Writing a fresh bbolt file from sorted input, one page run at a time,
//! or committing new top-level buckets to an existing file copy-on-write.

use super::page::{
    BUCKET_HEADER_SIZE, ELEMENT_SIZE, FLAG_FREELIST, HEADER_SIZE, LEAF_BUCKET, LeafElem, MAX_ELEMENTS, MAX_KEY_SIZE,
    MAX_VALUE_SIZE, Meta, PageHeader, encode_branch_prefix, encode_leaf_prefix, pages_for, valid_page_size,
};
// With no free list page, bbolt rebuilds the list by scanning: pages no
// longer reachable after an append are free.
use super::check::NO_FREELIST;
use super::{Error, show_key};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Pages 0 and 1 are the metas, page 2 the (empty) free list.
const FIRST_DATA_PAGE: u64 = 3;
const FREELIST_PAGE: u64 = 2;

/// Builds a bbolt file from buckets and keys given in ascending order.
///
/// Memory per open bucket is its current leaf plus one (first key, page id)
/// per leaf already written, so a bucket of any size streams through.
pub struct Writer {
    out: BufWriter<File>,
    path: PathBuf,
    page_size: u32,
    /// Leaves and branches are packed up to this many bytes, as etcd's
    /// defrag does with bbolt's FillPercent 0.9.
    fill: usize,
    next_pgid: u64,
    /// Open buckets; `stack[0]` is the root bucket holding the top-level ones.
    stack: Vec<OpenBucket>,
    scratch: Vec<u8>,
    /// Set after a failed write: the file is then in an unknown state.
    failed: bool,
    /// Committing on top of an existing file ([`Writer::append`]): its root
    /// bucket's sequence; `None` for a fresh file.
    append: Option<u64>,
}

struct OpenBucket {
    name: Vec<u8>,
    /// Key of the last element added (data key or sub-bucket name).
    last_key: Vec<u8>,
    has_sub_buckets: bool,
    /// bbolt's per-bucket sequence (`NextSequence`), kept when resumed.
    sequence: u64,
    leaf: Node,
    /// (first key, page id) of each page written at the current level.
    children: Children,
}

/// A leaf being filled: element headers and their keys and values back to back.
#[derive(Default)]
struct Node {
    elems: Vec<LeafElem>,
    data: Vec<u8>,
}

impl Node {
    fn size(&self) -> usize {
        HEADER_SIZE + self.elems.len() * ELEMENT_SIZE + self.data.len()
    }
}

/// Page references in key order, with the keys packed in one buffer.
#[derive(Default)]
struct Children {
    keys: Vec<u8>,
    refs: Vec<(u32, u64)>,
}

impl Children {
    fn push(&mut self, key: &[u8], pgid: u64) {
        self.keys.extend_from_slice(key);
        self.refs.push((key.len() as u32, pgid));
    }
}

impl Writer {
    /// Creates `path` (which must not exist) with mode 0600.
    pub fn create(path: &Path, page_size: u32) -> Result<Writer, Error> {
        if !valid_page_size(page_size) {
            return Err(Error::new(format!(
                "{}: page size {page_size} is not a power of two from 1024 to 65536",
                path.display()
            )));
        }
        let ctx = |what: &str| format!("{what} {}", path.display());
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(ctx("creating"), e))?;
        file.seek(SeekFrom::Start(FIRST_DATA_PAGE * u64::from(page_size)))
            .map_err(|e| Error::io(ctx("seeking in"), e))?;
        Ok(Writer {
            out: BufWriter::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            page_size,
            fill: page_size as usize * 9 / 10,
            next_pgid: FIRST_DATA_PAGE,
            stack: vec![OpenBucket::new(Vec::new())],
            scratch: Vec::new(),
            failed: false,
            append: None,
        })
    }

    /// Opens `db`'s file for one copy-on-write commit, as bbolt commits:
    /// new pages go past its high-water mark, the top-level buckets are
    /// given again in order (new ones with [`Writer::begin_bucket`], kept
    /// ones with [`Writer::keep_bucket`]), and [`Writer::finish`] writes one
    /// meta page pointing at the new root. The old meta stays valid until
    /// then; the pages only the old root reached become free.
    pub fn append(db: &super::Db) -> Result<Writer, Error> {
        let (path, ps, hwm) = (db.path(), db.meta.page_size, db.meta.pgid);
        let ctx = |what: &str| format!("{what} {}", path.display());
        let mut file = File::options().write(true).open(path).map_err(|e| Error::io(ctx("opening"), e))?;
        // Nothing past the high-water mark is in use (bbolt's own file may be longer).
        let end = hwm * u64::from(ps);
        file.set_len(end).map_err(|e| Error::io(ctx("truncating"), e))?;
        file.seek(SeekFrom::Start(end)).map_err(|e| Error::io(ctx("seeking in"), e))?;
        Ok(Writer {
            out: BufWriter::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            page_size: ps,
            fill: ps as usize * 9 / 10,
            next_pgid: hwm,
            stack: vec![OpenBucket::new(Vec::new())],
            scratch: Vec::new(),
            failed: false,
            append: Some(db.meta.sequence),
        })
    }

    /// Keeps a top-level bucket of the file [`Writer::append`] opened as it
    /// is: `raw` is its value as the reader yields it ([`super::Value::Bucket`]).
    pub fn keep_bucket(&mut self, name: &[u8], raw: &[u8]) -> Result<(), Error> {
        if self.append.is_none() || self.stack.len() != 1 {
            return Err(self.err(format!("keep_bucket {} outside an append at the top level", show_key(name))));
        }
        if raw.len() < BUCKET_HEADER_SIZE {
            return Err(self.err(format!("bucket {}: value of {} bytes", show_key(name), raw.len())));
        }
        self.bucket_key(name)?;
        self.add(LEAF_BUCKET, name, raw)
    }

    /// Reopens top-level bucket `name` (raw value `raw`) of the file
    /// [`Writer::append`] opened, to [`Writer::put`] keys above its last
    /// one: its last leaf becomes the open leaf (the page it was on becomes
    /// free), its other leaves stay where they are, and [`Writer::end_bucket`]
    /// writes its branch levels anew. The bucket must have no sub-buckets.
    pub fn resume_bucket(&mut self, db: &super::Db, name: &[u8], raw: &[u8]) -> Result<(), Error> {
        if self.append.is_none() || self.stack.len() != 1 {
            return Err(self.err(format!("resume_bucket {} outside an append at the top level", show_key(name))));
        }
        let r = db.rightmost(name, raw)?;
        if r.last.iter().any(|(flags, _, _)| flags & LEAF_BUCKET != 0) {
            return Err(self.err(format!("bucket {} has sub-buckets: it cannot be resumed", show_key(name))));
        }
        self.begin_bucket(name)?;
        let b = self.stack.last_mut().unwrap();
        b.sequence = r.sequence;
        for (key, pgid) in &r.leaves {
            b.children.push(key, *pgid);
        }
        for (_, k, v) in &r.last {
            b.leaf.elems.push(LeafElem { flags: 0, ksize: k.len() as u32, vsize: v.len() as u32 });
            b.leaf.data.extend_from_slice(k);
            b.leaf.data.extend_from_slice(v);
        }
        if let Some((_, k, _)) = r.last.last() {
            b.last_key.clone_from(k);
        }
        Ok(())
    }

    /// Opens bucket `name` inside the innermost open bucket (the top level
    /// at first).
    pub fn begin_bucket(&mut self, name: &[u8]) -> Result<(), Error> {
        self.bucket_key(name)?;
        self.stack.push(OpenBucket::new(name.to_vec()));
        Ok(())
    }

    /// Checks a sub-bucket's `name` and records it as the innermost open
    /// bucket's last key.
    fn bucket_key(&mut self, name: &[u8]) -> Result<(), Error> {
        self.check_key(name)?;
        let parent = self.stack.last_mut().unwrap();
        parent.last_key.clear();
        parent.last_key.extend_from_slice(name);
        parent.has_sub_buckets = true;
        Ok(())
    }

    /// Adds a key to the innermost open bucket.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        if self.stack.len() < 2 {
            return Err(self.err(format!("put {} outside any bucket", show_key(key))));
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(self.err(format!("value of {} is {} bytes, over bbolt's limit", show_key(key), value.len())));
        }
        self.check_key(key)?;
        let b = self.stack.last_mut().unwrap();
        b.last_key.clear();
        b.last_key.extend_from_slice(key);
        self.add(0, key, value)
    }

    /// Closes the innermost open bucket and adds it to its parent, inline
    /// when bbolt would inline it.
    pub fn end_bucket(&mut self) -> Result<(), Error> {
        self.check_usable()?;
        if self.stack.len() < 2 {
            return Err(self.err("end_bucket without an open bucket".into()));
        }
        let mut b = self.stack.pop().unwrap();
        let ps = self.page_size as usize;
        let mut value = Vec::with_capacity(BUCKET_HEADER_SIZE);
        // bbolt's inlineable(): one leaf, no sub-buckets, at most a quarter page.
        if b.children.refs.is_empty() && !b.has_sub_buckets && b.leaf.size() <= ps / 4 {
            value.extend_from_slice(&0u64.to_le_bytes());
            value.extend_from_slice(&b.sequence.to_le_bytes());
            encode_leaf_prefix(&mut value, 0, 0, &b.leaf.elems);
            value.extend_from_slice(&b.leaf.data);
        } else {
            let root = self.write_tree(&mut b)?;
            value.extend_from_slice(&root.to_le_bytes());
            value.extend_from_slice(&b.sequence.to_le_bytes());
        }
        self.add(LEAF_BUCKET, &b.name, &value)
    }

    /// Writes the root bucket, the free list page and both meta pages
    /// (txids `txid` and `txid - 1`), and syncs the file; after
    /// [`Writer::append`], the root bucket and the one meta page of `txid`.
    pub fn finish(mut self, txid: u64) -> Result<(), Error> {
        self.check_usable()?;
        if self.stack.len() > 1 {
            let open: Vec<String> = self.stack[1..].iter().map(|b| show_key(&b.name)).collect();
            return Err(self.err(format!("finish with bucket {} still open", open.join("/"))));
        }
        if txid == 0 {
            return Err(self.err("finish needs a txid of at least 1 (the other meta gets txid - 1)".into()));
        }
        let mut root = self.stack.pop().unwrap();
        let root_pgid = self.write_tree(&mut root)?;
        let ps = self.page_size as usize;
        let hwm = self.next_pgid;
        let path = self.path.clone();
        let ctx = |what: &str| format!("{what} {}", path.display());
        self.out.flush().map_err(|e| Error::io(ctx("writing"), e))?;
        let file = self.out.get_ref();
        // Data first, then the metas that point at it.
        file.sync_data().map_err(|e| Error::io(ctx("syncing"), e))?;
        if let Some(sequence) = self.append {
            let meta = Meta {
                page_size: self.page_size,
                flags: 0,
                root: root_pgid,
                sequence,
                freelist: NO_FREELIST,
                pgid: hwm,
                txid,
            };
            file.write_all_at(&meta.encode(), (txid % 2) * ps as u64)
                .map_err(|e| Error::io(ctx("writing the meta page of"), e))?;
        } else {
            self.write_head(root_pgid, hwm, txid)?;
        }
        let file = self.out.get_ref();
        file.sync_all().map_err(|e| Error::io(ctx("syncing"), e))?;
        let len = file.metadata().map_err(|e| Error::io(ctx("checking"), e))?.len();
        if len != hwm * ps as u64 {
            return Err(self.err(format!("file is {len} bytes after writing {hwm} pages of {ps}")));
        }
        Ok(())
    }

    /// A fresh file's first three pages: the empty free list and both metas
    /// (txids `txid` and `txid - 1`).
    fn write_head(&self, root_pgid: u64, hwm: u64, txid: u64) -> Result<(), Error> {
        let ps = self.page_size as usize;
        let mut head = vec![0u8; 3 * ps];
        let mut freelist = Vec::with_capacity(HEADER_SIZE);
        PageHeader { id: FREELIST_PAGE, flags: FLAG_FREELIST, count: 0, overflow: 0 }.encode(&mut freelist);
        head[2 * ps..2 * ps + HEADER_SIZE].copy_from_slice(&freelist);
        for t in [txid, txid - 1] {
            let meta = Meta {
                page_size: self.page_size,
                flags: 0,
                root: root_pgid,
                sequence: 0,
                freelist: FREELIST_PAGE,
                pgid: hwm,
                txid: t,
            };
            let at = (t % 2) as usize * ps;
            head[at..at + super::page::META_SIZE].copy_from_slice(&meta.encode());
        }
        self.out
            .get_ref()
            .write_all_at(&head, 0)
            .map_err(|e| Error::io(format!("writing the meta pages of {}", self.path.display()), e))
    }

    fn err(&self, msg: String) -> Error {
        Error::new(format!("{}: {msg}", self.path.display()))
    }

    fn check_usable(&self) -> Result<(), Error> {
        if self.failed {
            return Err(self.err("an earlier write failed".into()));
        }
        Ok(())
    }

    /// A key must be non-empty, within bbolt's limit, and above the
    /// previous key of the innermost bucket.
    fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        self.check_usable()?;
        let b = self.stack.last().unwrap();
        let bucket =
            || if self.stack.len() > 1 { format!("bucket {}", show_key(&b.name)) } else { "the top level".into() };
        if key.is_empty() {
            return Err(self.err(format!("empty key in {}", bucket())));
        }
        if key.len() > MAX_KEY_SIZE {
            return Err(self.err(format!(
                "key {} in {} over bbolt's limit of {MAX_KEY_SIZE}",
                show_key(key),
                bucket()
            )));
        }
        if !b.last_key.is_empty() && key <= b.last_key.as_slice() {
            return Err(self.err(format!(
                "key {} in {} is not above the previous key {}",
                show_key(key),
                bucket(),
                show_key(&b.last_key)
            )));
        }
        Ok(())
    }

    /// Appends an element to the innermost bucket's leaf, writing the leaf
    /// out first if the element would take it past the fill size.
    fn add(&mut self, flags: u32, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let size = ELEMENT_SIZE + key.len() + value.len();
        let leaf = &self.stack.last().unwrap().leaf;
        if !leaf.elems.is_empty() && (leaf.size() + size > self.fill || leaf.elems.len() == MAX_ELEMENTS) {
            let mut b = self.stack.pop().unwrap();
            let r = self.flush_leaf(&mut b);
            self.stack.push(b);
            r?;
        }
        let leaf = &mut self.stack.last_mut().unwrap().leaf;
        leaf.elems.push(LeafElem { flags, ksize: key.len() as u32, vsize: value.len() as u32 });
        leaf.data.extend_from_slice(key);
        leaf.data.extend_from_slice(value);
        Ok(())
    }

    fn flush_leaf(&mut self, b: &mut OpenBucket) -> Result<(), Error> {
        let leaf = &b.leaf;
        let (id, overflow) = self.allocate(leaf.size());
        let mut prefix = std::mem::take(&mut self.scratch);
        prefix.clear();
        encode_leaf_prefix(&mut prefix, id, overflow, &leaf.elems);
        let r = self.write_page(&prefix, &leaf.data);
        self.scratch = prefix;
        r?;
        let first_key = leaf.elems.first().map_or(&[][..], |e| &leaf.data[..e.ksize as usize]);
        b.children.push(first_key, id);
        b.leaf.elems.clear();
        b.leaf.data.clear();
        Ok(())
    }

    /// Writes the bucket's last leaf and its branch levels; returns the root
    /// page id.
    fn write_tree(&mut self, b: &mut OpenBucket) -> Result<u64, Error> {
        // An empty leaf is written only as the root of an empty tree.
        if !b.leaf.elems.is_empty() || b.children.refs.is_empty() {
            self.flush_leaf(b)?;
        }
        let mut level = std::mem::take(&mut b.children);
        while level.refs.len() > 1 {
            let mut up = Children::default();
            let (mut start, mut key_start) = (0, 0);
            let mut size = HEADER_SIZE;
            let mut key_off = 0;
            for (i, &(ksize, _)) in level.refs.iter().enumerate() {
                let elem = ELEMENT_SIZE + ksize as usize;
                let n = i - start;
                // At least two children per branch so that every level shrinks.
                if n >= 2 && (size + elem > self.fill || n == MAX_ELEMENTS) {
                    self.write_branch(&level, start..i, key_start..key_off, &mut up)?;
                    (start, key_start, size) = (i, key_off, HEADER_SIZE);
                }
                size += elem;
                key_off += ksize as usize;
            }
            self.write_branch(&level, start..level.refs.len(), key_start..key_off, &mut up)?;
            level = up;
        }
        Ok(level.refs[0].1)
    }

    fn write_branch(
        &mut self,
        level: &Children,
        refs: std::ops::Range<usize>,
        keys: std::ops::Range<usize>,
        up: &mut Children,
    ) -> Result<(), Error> {
        let elems = &level.refs[refs];
        let keys = &level.keys[keys];
        let (id, overflow) = self.allocate(HEADER_SIZE + elems.len() * ELEMENT_SIZE + keys.len());
        let mut prefix = std::mem::take(&mut self.scratch);
        prefix.clear();
        encode_branch_prefix(&mut prefix, id, overflow, elems);
        let r = self.write_page(&prefix, keys);
        self.scratch = prefix;
        r?;
        up.push(&keys[..elems[0].0 as usize], id);
        Ok(())
    }

    /// Page id and overflow count for a node of `size` bytes.
    fn allocate(&mut self, size: usize) -> (u64, u32) {
        let pages = pages_for(size as u64, self.page_size);
        let id = self.next_pgid;
        self.next_pgid += pages;
        (id, (pages - 1) as u32)
    }

    /// Writes one page run: `prefix` (header and elements), `data`, then
    /// zeros up to the page boundary.
    fn write_page(&mut self, prefix: &[u8], data: &[u8]) -> Result<(), Error> {
        static ZEROS: [u8; 4096] = [0; 4096];
        let len = prefix.len() + data.len();
        let mut pad = pages_for(len as u64, self.page_size) as usize * self.page_size as usize - len;
        let mut r = self.out.write_all(prefix).and_then(|_| self.out.write_all(data));
        while r.is_ok() && pad > 0 {
            let n = pad.min(ZEROS.len());
            r = self.out.write_all(&ZEROS[..n]);
            pad -= n;
        }
        r.map_err(|e| {
            self.failed = true;
            Error::io(format!("writing {}", self.path.display()), e)
        })
    }
}

impl OpenBucket {
    fn new(name: Vec<u8>) -> OpenBucket {
        OpenBucket {
            name,
            last_key: Vec::new(),
            has_sub_buckets: false,
            sequence: 0,
            leaf: Node::default(),
            children: Children::default(),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::page::{FLAG_BRANCH, FLAG_LEAF, u16_at, u32_at, u64_at};
    use super::*;

    pub(crate) use super::super::temp_file::TempFile;

    pub(crate) fn temp_path(tag: &str) -> TempFile {
        // Files only, each removed when dropped: nothing accumulates.
        TempFile(crate::test_scratch::path(&format!("bbolt-{tag}")))
    }

    fn page(file: &[u8], ps: usize, id: usize) -> &[u8] {
        &file[id * ps..(id + 1) * ps]
    }

    #[test]
    fn empty_db_layout() {
        let path = temp_path("empty");
        Writer::create(&path, 4096).unwrap().finish(7).unwrap();
        let f = std::fs::read(&path).unwrap();
        assert_eq!(f.len(), 4 * 4096);
        // txid 7 on page 1, txid 6 on page 0, otherwise identical.
        let m1 = Meta::decode(page(&f, 4096, 1)).unwrap();
        let m0 = Meta::decode(page(&f, 4096, 0)).unwrap();
        assert_eq!((m0.txid, m1.txid), (6, 7));
        assert_eq!(m1, Meta { page_size: 4096, flags: 0, root: 3, sequence: 0, freelist: 2, pgid: 4, txid: 7 });
        assert_eq!(u64_at(&f, 0), 0);
        assert_eq!(u64_at(&f, 4096), 1);
        // Free list page: id 2, flags 0x10, count 0; then the empty root leaf.
        assert_eq!(&page(&f, 4096, 2)[..16], &[2, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&page(&f, 4096, 3)[..16], &[3, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0]);
        assert!(f[80..4096].iter().all(|&b| b == 0));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(Writer::create(&path, 4096).is_err(), "create_new");
    }

    #[test]
    fn inline_bucket_bytes() {
        let path = temp_path("inline");
        let mut w = Writer::create(&path, 4096).unwrap();
        w.begin_bucket(b"b").unwrap();
        w.put(b"k", b"v").unwrap();
        w.end_bucket().unwrap();
        w.finish(2).unwrap();
        let f = std::fs::read(&path).unwrap();
        assert_eq!(f.len(), 4 * 4096);
        let root = page(&f, 4096, 3);
        assert_eq!(PageHeader::decode(root), PageHeader { id: 3, flags: FLAG_LEAF, count: 1, overflow: 0 });
        // Element: bucket flag, pos 16, ksize 1, vsize 16 + 16 + 16 + 2.
        assert_eq!(&root[16..32], &[1, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0, 50, 0, 0, 0]);
        assert_eq!(root[32], b'b');
        #[rustfmt::skip]
        let value: Vec<u8> = [
            &[0u8; 16][..],                                   // root 0, sequence 0: inline
            &[0; 8], &[2, 0], &[1, 0], &[0; 4],               // page image header: id 0, leaf, 1 element
            &[0, 0, 0, 0], &[16, 0, 0, 0], &[1, 0, 0, 0], &[1, 0, 0, 0],
            b"kv",
        ].concat();
        assert_eq!(&root[33..33 + 50], &value[..]);
    }

    /// A bucket holding one key whose leaf is `size` bytes.
    fn one_key_bucket(size: usize, ps: u32) -> Vec<u8> {
        let path = temp_path("threshold");
        let mut w = Writer::create(&path, ps).unwrap();
        w.begin_bucket(b"b").unwrap();
        w.put(b"k", &vec![7; size - 16 - 16 - 1]).unwrap();
        w.end_bucket().unwrap();
        w.finish(1).unwrap();
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn inline_threshold_is_a_quarter_page() {
        for ps in [4096usize, 16384] {
            let f = one_key_bucket(ps / 4, ps as u32);
            assert_eq!(f.len(), 4 * ps, "at ps/4 the bucket is inline");
            let f = one_key_bucket(ps / 4 + 1, ps as u32);
            assert_eq!(f.len(), 5 * ps, "one byte more and it gets its own page");
            // Page 3 is the bucket's leaf, page 4 the root leaf pointing at it.
            let root = page(&f, ps, 4);
            assert_eq!(u32_at(root, 28), 16, "vsize: InBucket header only");
            assert_eq!(u64_at(root, 33), 3);
            assert_eq!(u16_at(page(&f, ps, 3), 8), FLAG_LEAF);
        }
    }

    #[test]
    fn overflow_pages() {
        let path = temp_path("overflow");
        let mut w = Writer::create(&path, 4096).unwrap();
        w.begin_bucket(b"b").unwrap();
        w.put(b"a", b"small").unwrap();
        w.put(b"big", &vec![0xAB; 5000]).unwrap();
        w.put(b"c", b"small").unwrap();
        w.end_bucket().unwrap();
        w.finish(1).unwrap();
        let f = std::fs::read(&path).unwrap();
        // 3: leaf [a], 4-5: leaf [big] (16+16+3+5000 bytes = 2 pages), 6: leaf [c], 7: branch, 8: root.
        assert_eq!(f.len(), 9 * 4096);
        assert_eq!(
            PageHeader::decode(page(&f, 4096, 4)),
            PageHeader { id: 4, flags: FLAG_LEAF, count: 1, overflow: 1 }
        );
        assert_eq!(&f[4 * 4096 + 35..4 * 4096 + 35 + 5000], &[0xAB; 5000][..]);
        assert!(f[4 * 4096 + 35 + 5000..6 * 4096].iter().all(|&b| b == 0));
        let branch = page(&f, 4096, 7);
        assert_eq!(PageHeader::decode(branch), PageHeader { id: 7, flags: FLAG_BRANCH, count: 3, overflow: 0 });
        let kids: Vec<(Vec<u8>, u64)> = (0..3)
            .map(|i| {
                let (k, p) = super::super::page::branch_element(branch, i).unwrap();
                (k.to_vec(), p)
            })
            .collect();
        assert_eq!(kids, vec![(b"a".to_vec(), 3), (b"big".to_vec(), 4), (b"c".to_vec(), 6)]);
        assert_eq!(Meta::decode(page(&f, 4096, 1)).unwrap().root, 8);
    }

    #[test]
    fn leaves_fill_to_ninety_percent() {
        let path = temp_path("fill");
        let mut w = Writer::create(&path, 4096).unwrap();
        w.begin_bucket(b"b").unwrap();
        // 16 + 4 + 80 = 100 bytes per element: 36 fit in 16 + 3600 <= 3686.
        for i in 0..100u32 {
            w.put(&i.to_be_bytes(), &[1; 80]).unwrap();
        }
        w.end_bucket().unwrap();
        w.finish(1).unwrap();
        let f = std::fs::read(&path).unwrap();
        let counts: Vec<u16> = (3..6).map(|p| PageHeader::decode(page(&f, 4096, p)).count).collect();
        assert_eq!(counts, vec![36, 36, 28]);
    }

    #[test]
    fn misuse_is_an_error() {
        let mut w = Writer::create(&temp_path("misuse"), 4096).unwrap();
        assert!(w.put(b"k", b"v").unwrap_err().to_string().contains("outside any bucket"));
        assert!(w.end_bucket().unwrap_err().to_string().contains("without an open bucket"));
        w.begin_bucket(b"m").unwrap();
        assert!(w.put(b"", b"v").unwrap_err().to_string().contains("empty key"));
        assert!(w.put(&vec![1; MAX_KEY_SIZE + 1], b"v").unwrap_err().to_string().contains("limit"));
        w.put(&vec![1; MAX_KEY_SIZE], b"v").unwrap();
        assert!(w.put(&vec![1; MAX_KEY_SIZE], b"v").unwrap_err().to_string().contains("not above"));
        assert!(w.put(b"\x00", b"v").unwrap_err().to_string().contains("not above"));
        w.put(b"\x02", b"v").unwrap();
        // Sub-bucket names share the key order of their parent.
        assert!(w.begin_bucket(b"\x02").is_err());
        w.begin_bucket(b"\x03").unwrap();
        w.end_bucket().unwrap();
        assert!(w.put(b"\x03", b"v").is_err());
        w.end_bucket().unwrap();
        assert!(w.begin_bucket(b"a").unwrap_err().to_string().contains("the top level"));
        w.begin_bucket(b"n").unwrap();
        assert!(w.finish(5).unwrap_err().to_string().contains("still open"));
        let w = Writer::create(&temp_path("txid0"), 4096).unwrap();
        assert!(w.finish(0).is_err());
        for ps in [512, 3000, 1 << 17] {
            assert!(Writer::create(&temp_path("ps"), ps).is_err());
        }
    }

    /// One copy-on-write commit on top of a written file: kept buckets are
    /// untouched (same pages), new ones and the root land past the old
    /// high-water mark, one meta page with the next txid points at them,
    /// and the pages only the old root reached count as free.
    #[test]
    fn append_commits_copy_on_write() {
        use super::super::{Db, Value};
        let path = temp_path("append");
        let mut w = Writer::create(&path, 1024).unwrap();
        for name in [&b"big"[..], b"small", b"swap"] {
            w.begin_bucket(name).unwrap();
            let n = if name == b"big" { 400 } else { 2 };
            for i in 0..n {
                w.put(format!("k{i:05}").as_bytes(), &[name[0]; 20]).unwrap();
            }
            w.end_bucket().unwrap();
        }
        w.finish(9).unwrap();
        let before = std::fs::read(&path).unwrap();
        let db = Db::open(&path).unwrap();
        let old = db.meta;
        let mut kept = Vec::new();
        db.for_each_path(&[], &mut |k, v| {
            if let Value::Bucket(raw) = v {
                kept.push((k.to_vec(), raw.to_vec()));
            }
            Ok(())
        })
        .unwrap();
        let mut w = Writer::append(&db).unwrap();
        w.keep_bucket(b"big", &kept[0].1).unwrap();
        assert!(w.keep_bucket(b"a", &kept[1].1).unwrap_err().to_string().contains("not above"));
        w.keep_bucket(b"small", &kept[1].1).unwrap();
        w.begin_bucket(b"swap").unwrap();
        w.put(b"new", b"value").unwrap();
        w.end_bucket().unwrap();
        w.finish(old.txid + 1).unwrap();

        let after = std::fs::read(&path).unwrap();
        // Old pages, including the other meta, are unchanged; one new root
        // leaf (the new swap bucket is inline in it) is appended.
        let ps = 1024;
        assert_eq!(after.len(), before.len() + ps);
        let new_meta = Meta::decode(page(&after, ps, 0)).unwrap();
        assert_eq!(page(&after, ps, 1), page(&before, ps, 1));
        assert_eq!(&after[2 * ps..before.len()], &before[2 * ps..]);
        assert_eq!(
            new_meta,
            Meta { root: old.pgid, freelist: NO_FREELIST, pgid: old.pgid + 1, txid: old.txid + 1, ..old }
        );
        let db = Db::open(&path).unwrap();
        let s = db.check_structure().unwrap();
        // Free: the old root and the empty free list page.
        assert_eq!((s.pages, s.free), (old.pgid + 1, 2));
        let rows = |bucket: &[u8]| {
            let mut rows = Vec::new();
            db.for_each(bucket, &mut |k, v| {
                rows.push((k.to_vec(), format!("{v:?}")));
                Ok(())
            })
            .unwrap();
            rows
        };
        assert_eq!(rows(b"big").len(), 400);
        assert_eq!(rows(b"small").len(), 2);
        assert_eq!(rows(b"swap"), vec![(b"new".to_vec(), format!("{:?}", Value::Data(b"value")))]);

        // keep_bucket is for appends only.
        let mut w = Writer::create(&temp_path("keep-fresh"), 1024).unwrap();
        assert!(w.keep_bucket(b"big", &kept[0].1).unwrap_err().to_string().contains("outside an append"));
    }

    /// A resumed bucket keeps every leaf but its last in place, takes keys
    /// above its last one, and gets new branch levels; a small inline one
    /// grows into a tree; bucket sequences survive; the structure checks.
    #[test]
    fn resume_appends_above_the_last_key_copy_on_write() {
        use super::super::{Db, Value};
        let path = temp_path("resume");
        let mut w = Writer::create(&path, 1024).unwrap();
        for (name, n) in [(&b"big"[..], 3000), (b"inline", 3), (b"other", 50)] {
            w.begin_bucket(name).unwrap();
            for i in 0..n {
                w.put(format!("k{i:06}").as_bytes(), &[name[0]; 20]).unwrap();
            }
            w.end_bucket().unwrap();
        }
        w.finish(4).unwrap();
        let rows = |db: &Db, bucket: &[u8]| {
            let mut rows = Vec::new();
            db.for_each(bucket, &mut |k, v| {
                let Value::Data(v) = v else { panic!("sub-bucket") };
                rows.push((String::from_utf8(k.to_vec()).unwrap(), v.to_vec()));
                Ok(())
            })
            .unwrap();
            rows
        };
        let db = Db::open(&path).unwrap();
        let (old, before) = (db.meta, std::fs::read(&path).unwrap());
        let raw: Vec<(Vec<u8>, Vec<u8>)> = db.root_buckets().unwrap();
        let mut w = Writer::append(&db).unwrap();
        let mut big = raw[0].1.clone();
        big[8..16].copy_from_slice(&77u64.to_le_bytes());
        w.resume_bucket(&db, b"big", &big).unwrap();
        assert!(w.put(b"k002999", b"x").unwrap_err().to_string().contains("not above"), "below the last key");
        for i in 3000..3100 {
            w.put(format!("k{i:06}").as_bytes(), b"new").unwrap();
        }
        w.end_bucket().unwrap();
        w.resume_bucket(&db, b"inline", &raw[1].1).unwrap();
        for i in 3..300 {
            w.put(format!("k{i:06}").as_bytes(), b"grown").unwrap();
        }
        w.end_bucket().unwrap();
        w.keep_bucket(b"other", &raw[2].1).unwrap();
        w.finish(old.txid + 1).unwrap();

        let after = std::fs::read(&path).unwrap();
        // The old pages are untouched: everything new lies past the old end.
        // (The new meta, txid 5, is page 1.)
        assert!(after[..1024] == before[..1024] && after[2048..before.len()] == before[2048..], "copy-on-write");
        let db = Db::open(&path).unwrap();
        assert_eq!(db.meta.txid, old.txid + 1);
        let s = db.check_structure().unwrap();
        assert_eq!(s.reachable + s.free, s.pages);
        // What is new is small: the appended rows, the grown bucket, the
        // branch levels of big and the root, not a copy of big.
        assert!(db.meta.pgid - old.pgid < 40, "{} new pages", db.meta.pgid - old.pgid);
        let big = rows(&db, b"big");
        assert_eq!(big.len(), 3100);
        assert!(big.iter().all(|(k, v)| {
            let i: usize = k[1..].parse().unwrap();
            v.as_slice() == if i < 3000 { &[b'b'; 20][..] } else { b"new" }
        }));
        let inline = rows(&db, b"inline");
        assert_eq!(
            (inline.len(), inline[2].1.as_slice(), inline[3].1.as_slice()),
            (300, &[b'i'; 20][..], &b"grown"[..])
        );
        assert_eq!(rows(&db, b"other").len(), 50);
        let seq = |name: &[u8]| {
            let raw = db.root_buckets().unwrap().into_iter().find(|(n, _)| n == name).unwrap().1;
            u64::from_le_bytes(raw[8..16].try_into().unwrap())
        };
        assert_eq!((seq(b"big"), seq(b"inline")), (77, 0));
        // Resuming is for appends only.
        let mut w = Writer::create(&temp_path("resume-fresh"), 1024).unwrap();
        assert!(w.resume_bucket(&db, b"big", &big_raw(&db)).unwrap_err().to_string().contains("outside an append"));
    }

    fn big_raw(db: &super::super::Db) -> Vec<u8> {
        db.root_buckets().unwrap().remove(0).1
    }
}
