//! On-disk layout shared by the reader and the writer: one definition of
//! each structure. All integers are little-endian.

/// Page header: `id u64 | flags u16 | count u16 | overflow u32`.
pub(crate) const HEADER_SIZE: usize = 16;
/// Leaf element `flags u32 | pos u32 | ksize u32 | vsize u32`, and branch
/// element `pos u32 | ksize u32 | pgid u64`: both 16 bytes.
pub(crate) const ELEMENT_SIZE: usize = 16;
/// Bucket value header `InBucket { root u64, sequence u64 }`.
pub(crate) const BUCKET_HEADER_SIZE: usize = 16;

pub(crate) const FLAG_BRANCH: u16 = 0x01;
pub(crate) const FLAG_LEAF: u16 = 0x02;
pub(crate) const FLAG_META: u16 = 0x04;
pub(crate) const FLAG_FREELIST: u16 = 0x10;
/// Leaf element flag: the value is a bucket.
pub(crate) const LEAF_BUCKET: u32 = 0x01;

pub(crate) const MAGIC: u32 = 0xED0C_DAED;
pub(crate) const VERSION: u32 = 2;
pub(crate) const MIN_PAGE_SIZE: u32 = 1024;
pub(crate) const MAX_PAGE_SIZE: u32 = 65536;
pub(crate) const MAX_KEY_SIZE: usize = 32768;
pub(crate) const MAX_VALUE_SIZE: usize = (1 << 31) - 2;
/// bbolt refuses to write a node with 0xFFFF or more elements.
pub(crate) const MAX_ELEMENTS: usize = 0xFFFE;

/// Bytes of a meta page that matter: header, body and checksum.
pub(crate) const META_SIZE: usize = 80;
const META_CHECKSUM_AT: usize = 72;

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

pub(crate) fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) fn valid_page_size(ps: u32) -> bool {
    ps.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps)
}

/// Pages needed for `bytes` bytes: a node larger than one page takes
/// `pages - 1` overflow pages.
pub(crate) fn pages_for(bytes: u64, page_size: u32) -> u64 {
    bytes.div_ceil(u64::from(page_size)).max(1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageHeader {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

impl PageHeader {
    /// `b` must hold at least [`HEADER_SIZE`] bytes.
    pub fn decode(b: &[u8]) -> PageHeader {
        PageHeader { id: u64_at(b, 0), flags: u16_at(b, 8), count: u16_at(b, 10), overflow: u32_at(b, 12) }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.overflow.to_le_bytes());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub page_size: u32,
    pub flags: u32,
    pub root: u64,
    pub sequence: u64,
    pub freelist: u64,
    /// High-water mark: number of pages in use.
    pub pgid: u64,
    pub txid: u64,
}

impl Meta {
    /// The first [`META_SIZE`] bytes of a meta page (page id = txid % 2);
    /// the rest of the page is zero.
    pub fn encode(&self) -> [u8; META_SIZE] {
        let mut b = Vec::with_capacity(META_SIZE);
        PageHeader { id: self.txid % 2, flags: FLAG_META, count: 0, overflow: 0 }.encode(&mut b);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.page_size.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        for v in [self.root, self.sequence, self.freelist, self.pgid, self.txid] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let sum = fnv1a64(&b[HEADER_SIZE..META_CHECKSUM_AT]);
        b.extend_from_slice(&sum.to_le_bytes());
        b.try_into().unwrap()
    }

    /// Checks what bbolt checks (magic, version, checksum) plus a usable
    /// page size; the error says which failed.
    pub fn decode(b: &[u8]) -> Result<Meta, String> {
        if b.len() < META_SIZE {
            return Err(format!("only {} bytes", b.len()));
        }
        let magic = u32_at(b, 16);
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#010x}"));
        }
        let version = u32_at(b, 20);
        if version != VERSION {
            return Err(format!("unsupported version {version}"));
        }
        if u64_at(b, META_CHECKSUM_AT) != fnv1a64(&b[HEADER_SIZE..META_CHECKSUM_AT]) {
            return Err("bad checksum".into());
        }
        let page_size = u32_at(b, 24);
        if !valid_page_size(page_size) {
            return Err(format!("page size {page_size} is not a power of two from 1024 to 65536"));
        }
        Ok(Meta {
            page_size,
            flags: u32_at(b, 28),
            root: u64_at(b, 32),
            sequence: u64_at(b, 40),
            freelist: u64_at(b, 48),
            pgid: u64_at(b, 56),
            txid: u64_at(b, 64),
        })
    }
}

/// One leaf element before encoding; its key and value sit back to back in
/// the data that follows the element array.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeafElem {
    pub flags: u32,
    pub ksize: u32,
    pub vsize: u32,
}

/// Header and element array of a leaf page whose key/value data (in element
/// order) will follow; `pos` is relative to each element's own start.
pub(crate) fn encode_leaf_prefix(out: &mut Vec<u8>, id: u64, overflow: u32, elems: &[LeafElem]) {
    let n = elems.len();
    PageHeader { id, flags: FLAG_LEAF, count: n as u16, overflow }.encode(out);
    let mut data_off = 0usize;
    for (i, e) in elems.iter().enumerate() {
        let pos = (n - i) * ELEMENT_SIZE + data_off;
        out.extend_from_slice(&e.flags.to_le_bytes());
        out.extend_from_slice(&(pos as u32).to_le_bytes());
        out.extend_from_slice(&e.ksize.to_le_bytes());
        out.extend_from_slice(&e.vsize.to_le_bytes());
        data_off += e.ksize as usize + e.vsize as usize;
    }
}

/// Header and element array of a branch page: `(ksize, child pgid)` per
/// element; the keys follow back to back.
pub(crate) fn encode_branch_prefix(out: &mut Vec<u8>, id: u64, overflow: u32, elems: &[(u32, u64)]) {
    let n = elems.len();
    PageHeader { id, flags: FLAG_BRANCH, count: n as u16, overflow }.encode(out);
    let mut data_off = 0usize;
    for (i, &(ksize, pgid)) in elems.iter().enumerate() {
        let pos = (n - i) * ELEMENT_SIZE + data_off;
        out.extend_from_slice(&(pos as u32).to_le_bytes());
        out.extend_from_slice(&ksize.to_le_bytes());
        out.extend_from_slice(&pgid.to_le_bytes());
        data_off += ksize as usize;
    }
}

/// Checks that `count` elements fit in `page` (header included).
pub(crate) fn check_count(page: &[u8], count: usize) -> Result<(), String> {
    if HEADER_SIZE + count * ELEMENT_SIZE > page.len() {
        return Err(format!("{count} elements overrun the {}-byte page", page.len()));
    }
    Ok(())
}

fn slice_at(page: &[u8], start: u64, len: u32, i: usize, what: &str) -> Result<std::ops::Range<usize>, String> {
    let end = start + u64::from(len);
    if end > page.len() as u64 {
        return Err(format!(
            "element {i}: {what} ({len} bytes at offset {start}) overruns the {}-byte page",
            page.len()
        ));
    }
    Ok(start as usize..end as usize)
}

/// Leaf element `i` of `page` as `(flags, key, value)`; `i` must be below
/// a count already checked with [`check_count`].
pub(crate) fn leaf_element(page: &[u8], i: usize) -> Result<(u32, &[u8], &[u8]), String> {
    let e = HEADER_SIZE + i * ELEMENT_SIZE;
    let (flags, pos, ksize, vsize) = (u32_at(page, e), u32_at(page, e + 4), u32_at(page, e + 8), u32_at(page, e + 12));
    let k = slice_at(page, (e as u64) + u64::from(pos), ksize, i, "key")?;
    let v = slice_at(page, k.end as u64, vsize, i, "value")?;
    Ok((flags, &page[k], &page[v]))
}

/// Branch element `i` of `page` as `(key, child pgid)`.
pub(crate) fn branch_element(page: &[u8], i: usize) -> Result<(&[u8], u64), String> {
    let e = HEADER_SIZE + i * ELEMENT_SIZE;
    let (pos, ksize, pgid) = (u32_at(page, e), u32_at(page, e + 4), u64_at(page, e + 8));
    let k = slice_at(page, (e as u64) + u64::from(pos), ksize, i, "key")?;
    Ok((&page[k], pgid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    fn sample_meta() -> Meta {
        Meta { page_size: 4096, flags: 0, root: 7, sequence: 0, freelist: 2, pgid: 9, txid: 5 }
    }

    #[test]
    fn meta_encode_layout() {
        let b = sample_meta().encode();
        // Header: id = txid % 2, flags meta.
        assert_eq!(&b[0..8], &1u64.to_le_bytes());
        assert_eq!(&b[8..10], &[0x04, 0x00]);
        assert_eq!(&b[10..16], &[0; 6]);
        assert_eq!(&b[16..20], &[0xED, 0xDA, 0x0C, 0xED]);
        assert_eq!(&b[20..24], &[2, 0, 0, 0]);
        assert_eq!(&b[24..28], &[0x00, 0x10, 0, 0]);
        assert_eq!(&b[28..32], &[0; 4]);
        assert_eq!(&b[32..40], &7u64.to_le_bytes());
        assert_eq!(&b[40..48], &[0; 8]);
        assert_eq!(&b[48..56], &2u64.to_le_bytes());
        assert_eq!(&b[56..64], &9u64.to_le_bytes());
        assert_eq!(&b[64..72], &5u64.to_le_bytes());
        assert_eq!(&b[72..80], &fnv1a64(&b[16..72]).to_le_bytes());
        assert_eq!(Meta::decode(&b), Ok(sample_meta()));
    }

    #[test]
    fn meta_decode_rejects_corruption() {
        let good = sample_meta().encode();
        let mut b = good;
        b[60] ^= 1; // pgid
        assert_eq!(Meta::decode(&b), Err("bad checksum".to_string()));
        let mut b = good;
        b[72] ^= 1; // the checksum itself
        assert_eq!(Meta::decode(&b), Err("bad checksum".to_string()));
        let mut b = good;
        b[16] = 0;
        assert!(Meta::decode(&b).unwrap_err().contains("magic"));
        let mut b = good;
        b[20] = 1;
        assert!(Meta::decode(&b).unwrap_err().contains("version"));
        // The header is outside the checksum, as in bbolt.
        let mut b = good;
        b[0] = 0x55;
        assert!(Meta::decode(&b).is_ok());
        assert!(Meta::decode(&good[..79]).is_err());
        for ps in [512, 3000, 131072] {
            let b = Meta { page_size: ps, ..sample_meta() }.encode();
            assert!(Meta::decode(&b).unwrap_err().contains("page size"), "{ps}");
        }
    }

    #[test]
    fn leaf_layout() {
        let elems = [LeafElem { flags: 0, ksize: 2, vsize: 3 }, LeafElem { flags: LEAF_BUCKET, ksize: 1, vsize: 0 }];
        let mut p = Vec::new();
        encode_leaf_prefix(&mut p, 42, 0, &elems);
        p.extend_from_slice(b"k1vvvB");
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &42u64.to_le_bytes()[..], &[2, 0], &[2, 0], &[0, 0, 0, 0],
            // element 0: flags 0, pos 32 (two elements from its start), ksize 2, vsize 3
            &[0, 0, 0, 0], &[32, 0, 0, 0], &[2, 0, 0, 0], &[3, 0, 0, 0],
            // element 1: bucket, pos 16 + 5 bytes of element 0's data
            &[1, 0, 0, 0], &[21, 0, 0, 0], &[1, 0, 0, 0], &[0, 0, 0, 0],
            b"k1vvvB",
        ].concat();
        assert_eq!(p, want);
        let h = PageHeader::decode(&p);
        assert_eq!(h, PageHeader { id: 42, flags: FLAG_LEAF, count: 2, overflow: 0 });
        check_count(&p, 2).unwrap();
        assert!(check_count(&p, 3).is_err());
        assert_eq!(leaf_element(&p, 0).unwrap(), (0, &b"k1"[..], &b"vvv"[..]));
        assert_eq!(leaf_element(&p, 1).unwrap(), (LEAF_BUCKET, &b"B"[..], &b""[..]));
        // A value running past the page end is an error, not a panic.
        let mut bad = p.clone();
        bad[28] = 200;
        assert!(leaf_element(&bad, 0).unwrap_err().contains("value"));
        let mut bad = p.clone();
        bad[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(leaf_element(&bad, 0).unwrap_err().contains("key"));
    }

    #[test]
    fn branch_layout() {
        let mut p = Vec::new();
        encode_branch_prefix(&mut p, 3, 1, &[(3, 10), (2, 0x0102_0304_0506)]);
        p.extend_from_slice(b"abcde");
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &3u64.to_le_bytes()[..], &[1, 0], &[2, 0], &[1, 0, 0, 0],
            &[32, 0, 0, 0], &[3, 0, 0, 0], &10u64.to_le_bytes(),
            &[19, 0, 0, 0], &[2, 0, 0, 0], &[6, 5, 4, 3, 2, 1, 0, 0],
            b"abcde",
        ].concat();
        assert_eq!(p, want);
        assert_eq!(branch_element(&p, 0).unwrap(), (&b"abc"[..], 10));
        assert_eq!(branch_element(&p, 1).unwrap(), (&b"de"[..], 0x0102_0304_0506));
        let mut bad = p.clone();
        bad[36] = 9; // element 1's ksize
        assert!(branch_element(&bad, 1).is_err());
    }

    #[test]
    fn overflow_page_count() {
        assert_eq!(pages_for(0, 4096), 1);
        assert_eq!(pages_for(4096, 4096), 1);
        assert_eq!(pages_for(4097, 4096), 2);
        assert_eq!(pages_for(16 + 16 + 3 + 5000, 4096), 2);
        assert_eq!(pages_for(1 << 20, 4096), 256);
        assert_eq!(pages_for((1 << 20) + 32, 16384), 65);
    }
}
