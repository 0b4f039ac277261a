//! Snapshot objects: upstream's names (`Full-%08d-%08d-<unix>[.gz][.final]`)
//! and etcd's SHA-256 trailer, checked while the bytes stream past.

use sha2::{Digest, Sha256};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Full,
    Incr,
}

impl Kind {
    /// Upstream's word, as in object names and `etcdbr_*` labels.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Full => "Full",
            Kind::Incr => "Incr",
        }
    }
}

/// The largest etcd revision (int64).
pub const MAX_REVISION: u64 = i64::MAX as u64;
/// 9999-12-31T23:59:59Z: later creation times are no time a snapshot was
/// taken, and cannot be shown as an RFC 3339 date.
pub const MAX_CREATED: u64 = 253_402_300_799;

/// A parsed snapshot object name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotName {
    pub kind: Kind,
    pub start_revision: u64,
    pub last_revision: u64,
    /// Unix seconds when the snapshot was taken.
    pub created: u64,
    /// Compression suffix including its dot (`.gz`, `.Z`, `.zlib`, `.zst`), or empty.
    pub compression: String,
    /// Encrypted with age after compression: `.age` after the compression suffix.
    pub encrypted: bool,
    pub is_final: bool,
}

impl SnapshotName {
    /// A full snapshot of everything up to `last_revision`.
    pub fn full(last_revision: u64, created: u64) -> SnapshotName {
        SnapshotName {
            kind: Kind::Full,
            start_revision: 0,
            last_revision,
            created,
            compression: String::new(),
            encrypted: false,
            is_final: false,
        }
    }

    /// A delta snapshot of the revisions `start_revision..=last_revision`.
    pub fn delta(start_revision: u64, last_revision: u64, created: u64) -> SnapshotName {
        SnapshotName { kind: Kind::Incr, start_revision, ..SnapshotName::full(last_revision, created) }
    }

    /// Parse an object name as upstream does: `Kind-Start-Last-Unix[.ext][.final]`
    /// with `Kind` Full or Incr and `Start <= Last`. Anything else is `None`.
    pub fn parse(name: &str) -> Option<SnapshotName> {
        let mut it = name.split('-');
        let (kind, start, last, rest) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        let kind = match kind {
            "Full" => Kind::Full,
            "Incr" => Kind::Incr,
            _ => return None,
        };
        let digits = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        // etcd revisions are int64: a bigger one is no etcd snapshot, and
        // would overflow wherever the revision meets etcd's arithmetic.
        let revision = |s: &str| digits(s).filter(|&r| r <= MAX_REVISION);
        let (start_revision, last_revision) = (revision(start)?, revision(last)?);
        if start_revision > last_revision {
            return None;
        }
        let mut parts = rest.splitn(2, '.');
        let created = digits(parts.next()?).filter(|&t| t <= MAX_CREATED)?;
        let mut tail = parts.next().map(|t| format!(".{t}")).unwrap_or_default();
        let is_final = tail.ends_with(".final");
        if is_final {
            tail.truncate(tail.len() - ".final".len());
        }
        let encrypted = tail.ends_with(crate::encryption::SUFFIX);
        if encrypted {
            tail.truncate(tail.len() - crate::encryption::SUFFIX.len());
        }
        if !tail.is_empty() && crate::compression::Policy::from_suffix(&tail).is_none() {
            return None;
        }
        Some(SnapshotName { kind, start_revision, last_revision, created, compression: tail, encrypted, is_final })
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Full => "Full",
            Kind::Incr => "Incr",
        };
        write!(f, "{kind}-{:08}-{:08}-{}{}", self.start_revision, self.last_revision, self.created, self.compression)?;
        if self.encrypted {
            f.write_str(crate::encryption::SUFFIX)?;
        }
        if self.is_final {
            f.write_str(".final")?;
        }
        Ok(())
    }
}

/// Size of etcd's SHA-256 trailer after the bbolt bytes of a snapshot.
pub const TRAILER_LEN: usize = 32;

/// Decompress `raw` by `snapshot`'s suffix and check the plain bytes
/// against its SHA-256 trailer, running `each` with every decompressed
/// piece (e.g. to write it somewhere, or pass on what was read meanwhile;
/// empty when there is none); then read `raw` to its end, as a
/// decompressor may stop before it. `Err` is what `each` failed
/// with; `Ok(Err)` what is wrong with the content, or why `raw` could not be
/// read to its end (a caller whose reader knows better says so instead).
pub fn check_content<E>(
    snapshot: &SnapshotName,
    raw: &mut dyn std::io::Read,
    mut each: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Result<(), String>, E> {
    let suffix = &snapshot.compression;
    let mut check = TrailerCheck::for_kind(snapshot.kind);
    if snapshot.encrypted && crate::encryption::installed().is_none() {
        // No key: only the age framing can be checked (see encryption::check_framing).
        crate::encryption::note_framing_only();
        let mut pumped = Pumped { raw, each: &mut each, failed: None };
        let framed = crate::encryption::check_framing(&mut pumped);
        if let Some(e) = pumped.failed {
            return Err(e);
        }
        each(&[])?;
        return Ok(framed.map_err(|e| format!("{e} (framing checked only: {})", crate::encryption::MISSING)));
    }
    // In a block: the decryptor borrows `raw` until it is dropped.
    let decoded = {
        let opened = if snapshot.encrypted {
            crate::encryption::reader(&mut *raw).and_then(|plain| crate::compression::decoder(suffix, plain))
        } else {
            crate::compression::decoder(suffix, &mut *raw)
        };
        match opened {
            Err(e) => Err(e),
            Ok(mut plain) => {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match plain.read(&mut buf) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            check.update(&buf[..n]);
                            each(&buf[..n])?;
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) if snapshot.encrypted => {
                            break Err(format!("cannot decrypt or decompress (.age, {suffix}): {e}"));
                        }
                        Err(e) => break Err(format!("cannot decompress ({suffix}): {e}")),
                    }
                }
            }
        }
    };
    let drained = std::io::copy(raw, &mut std::io::sink()).map_err(|e| format!("reading it to its end: {e}"));
    each(&[])?;
    Ok(decoded.and(drained.map(drop)).and_then(|()| check.finish()))
}

/// `raw`, running `each` after every read (as `check_content` does after
/// every decompressed piece); its first failure ends the reading.
struct Pumped<'a, E, F> {
    raw: &'a mut dyn std::io::Read,
    each: &'a mut F,
    failed: Option<E>,
}

impl<E, F: FnMut(&[u8]) -> Result<(), E>> std::io::Read for Pumped<'_, E, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.raw.read(buf)?;
        if let Err(e) = (self.each)(&[]) {
            self.failed = Some(e);
            return Err(std::io::Error::other("stopped"));
        }
        Ok(n)
    }
}

/// Checks etcd's snapshot trailer while the bytes stream through: every byte
/// but the last 32 is hashed, and the last 32 must equal that hash.
pub struct TrailerCheck {
    hasher: Sha256,
    tail: Vec<u8>,
    total: u64,
    /// etcd snapshots are whole 512-byte blocks before the trailer; delta
    /// snapshots (JSON) are any length.
    blocks: bool,
}

impl Default for TrailerCheck {
    fn default() -> Self {
        TrailerCheck { hasher: Sha256::new(), tail: Vec::with_capacity(2 * TRAILER_LEN), total: 0, blocks: true }
    }
}

impl TrailerCheck {
    /// The same SHA-256 trailer on a delta snapshot's JSON.
    pub fn delta() -> Self {
        TrailerCheck { blocks: false, ..TrailerCheck::default() }
    }

    /// The check for a snapshot of this kind.
    pub fn for_kind(kind: Kind) -> Self {
        match kind {
            Kind::Full => TrailerCheck::default(),
            Kind::Incr => TrailerCheck::delta(),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if data.len() >= TRAILER_LEN {
            // The held-back tail is now known not to be the trailer.
            self.hasher.update(&self.tail);
            let split = data.len() - TRAILER_LEN;
            self.hasher.update(&data[..split]);
            self.tail.clear();
            self.tail.extend_from_slice(&data[split..]);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > TRAILER_LEN {
                let excess = self.tail.len() - TRAILER_LEN;
                self.hasher.update(&self.tail[..excess]);
                self.tail.drain(..excess);
            }
        }
    }

    /// Bytes seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Verify the stream that ended: a whole number of 512-byte blocks plus
    /// the trailer (etcd's own `hasChecksum` rule), and a matching digest.
    pub fn finish(self) -> Result<(), String> {
        if self.blocks && self.total % 512 != TRAILER_LEN as u64 || self.total <= TRAILER_LEN as u64 {
            return Err(format!("snapshot of {} bytes has no SHA-256 trailer (size % 512 must be 32)", self.total));
        }
        let digest = self.hasher.finalize();
        if digest.as_slice() != self.tail.as_slice() {
            return Err(format!(
                "SHA-256 trailer mismatch: the data hashes to {} but the trailer says {}",
                hex::encode(digest),
                hex::encode(&self.tail)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_upstream_names() {
        assert_eq!(SnapshotName::full(10, 1640995200).to_string(), "Full-00000000-00000010-1640995200");
        let mut n = SnapshotName::full(13002039293, 7);
        n.compression = ".gz".into();
        n.is_final = true;
        assert_eq!(n.to_string(), "Full-00000000-13002039293-7.gz.final");
        assert_eq!(SnapshotName::delta(11, 20, 1640995260).to_string(), "Incr-00000011-00000020-1640995260");
    }

    #[test]
    fn parses_what_it_formats_and_upstream_variants() {
        for s in [
            "Full-00000000-00000010-1640995200",
            "Incr-00000011-00000020-1640995300.gz",
            "Incr-13002039293-13002039300-1.Z",
            "Full-00000000-00000042-1700000000.zlib.final",
            "Full-00000000-00000042-1700000000.final",
            "Full-00000000-00000042-1700000000.zst",
            "Full-00000000-00000042-1700000000.gz.age",
            "Incr-00000011-00000020-1640995300.zst.age.final",
            "Full-00000000-00000042-1700000000.age",
        ] {
            let n = SnapshotName::parse(s).unwrap_or_else(|| panic!("{s} should parse"));
            assert_eq!(n.to_string(), s);
        }
        let n = SnapshotName::parse("Full-00000000-9223372036854775807-253402300799").unwrap();
        assert_eq!((n.last_revision, n.created), (MAX_REVISION, MAX_CREATED));
        let n = SnapshotName::parse("Incr-00000011-00000020-1640995300.gz").unwrap();
        assert_eq!((n.kind, n.start_revision, n.last_revision, n.created), (Kind::Incr, 11, 20, 1640995300));
        assert_eq!(n.compression, ".gz");
        assert!(!n.encrypted);
        let n = SnapshotName::parse("Full-00000000-00000042-1700000000.gz.age.final").unwrap();
        assert_eq!((n.compression.as_str(), n.encrypted, n.is_final), (".gz", true, true));
        let mut n = SnapshotName::full(42, 1700000000);
        n.encrypted = true;
        assert_eq!(n.to_string(), "Full-00000000-00000042-1700000000.age");
    }

    #[test]
    fn rejects_what_upstream_rejects() {
        for s in [
            "",
            "Full-00000000-00000010",
            "Part-00000000-00000010-1",
            "Full-00000020-00000010-1",
            "Full-0000000a-00000010-1",
            "Full-00000000-00000010-1.bz2",
            // `.age` goes after the compression suffix, once.
            "Full-00000000-00000010-1.age.gz",
            "Full-00000000-00000010-1.gz.age.age",
            "Full-00000000-00000010-1-2",
            "Full--00000010-1",
            "Full-00000000-00000010-",
            "notes.txt",
            // Beyond int64 revisions, or after the year 9999.
            "Full-00000000-9223372036854775808-1",
            "Incr-9223372036854775808-9223372036854775809-1",
            "Full-00000000-00000010-18446744073709551615",
            "Full-00000000-00000010-253402300800",
            "Full-00000000-00000010-99999999999999999999",
        ] {
            assert_eq!(SnapshotName::parse(s), None, "{s:?} must not parse");
        }
    }

    fn with_trailer(db: &[u8]) -> Vec<u8> {
        let mut v = db.to_vec();
        v.extend_from_slice(&Sha256::digest(db));
        v
    }

    fn check_in_pieces(bytes: &[u8], piece: usize) -> Result<(), String> {
        let mut c = TrailerCheck::default();
        for p in bytes.chunks(piece.max(1)) {
            c.update(p);
        }
        assert_eq!(c.total(), bytes.len() as u64);
        c.finish()
    }

    #[test]
    fn trailer_verifies_for_any_piece_size() {
        let db: Vec<u8> = (0..8192u32).map(|i| (i * 31 % 251) as u8).collect();
        let snap = with_trailer(&db);
        for piece in [1, 7, 31, 32, 33, 512, 4096, 32768, snap.len()] {
            check_in_pieces(&snap, piece).unwrap_or_else(|e| panic!("piece {piece}: {e}"));
        }
    }

    #[test]
    fn one_flipped_byte_anywhere_is_detected() {
        let db = vec![7u8; 4096];
        let snap = with_trailer(&db);
        for at in [0, 100, 4095, 4096, snap.len() - 1] {
            let mut bad = snap.clone();
            bad[at] ^= 1;
            let err = check_in_pieces(&bad, 1000).unwrap_err();
            assert!(err.contains("mismatch"), "{err}");
        }
    }

    #[test]
    fn truncated_or_trailerless_streams_are_rejected() {
        let snap = with_trailer(&vec![1u8; 4096]);
        let err = check_in_pieces(&snap[..snap.len() - 100], 4096).unwrap_err();
        assert!(err.contains("no SHA-256 trailer"), "{err}");
        let err = check_in_pieces(&vec![1u8; 4096], 4096).unwrap_err();
        assert!(err.contains("no SHA-256 trailer"), "{err}");
    }
}
