//! etcd's write-ahead log (`member/wal`): record framing, the running
//! CRC-32C, and the records `etcdutl snapshot restore` writes, byte for byte.

use crate::member::{Member, member_json};
use crate::pb;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// etcd's SegmentSizeBytes: 64 * 1000 * 1000, not MiB.
pub const SEGMENT_SIZE: u64 = 64_000_000;
pub const FIRST_SEGMENT: &str = "0000000000000000-0000000000000000.wal";

pub const METADATA: u64 = 1;
pub const ENTRY: u64 = 2;
pub const STATE: u64 = 3;
pub const CRC: u64 = 4;
pub const SNAPSHOT: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: u64,
    pub crc: u32,
    pub data: Vec<u8>,
}

/// The WAL of a freshly restored member: the cluster's members as the
/// committed conf-change entries 1..n, hard state {term 1, commit n} and a
/// snapshot marker at index n, so etcd replays nothing on start.
pub fn write_restore_wal(wal_dir: &Path, local: &Member, cluster_id: u64, members: &[Member]) -> io::Result<()> {
    let mut members: Vec<&Member> = members.iter().collect();
    members.sort_by_key(|m| m.id);
    let n = members.len() as u64;
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();

    let mut enc = Encoder::default();
    enc.record(CRC, None);
    let mut meta = Vec::new();
    pb::uint(&mut meta, 1, local.id);
    pb::uint(&mut meta, 2, cluster_id);
    enc.record(METADATA, Some(&meta));
    enc.record(SNAPSHOT, Some(&snapshot(0, 0, None)));
    for (i, m) in members.iter().enumerate() {
        // raftpb.ConfChange{ID 0, Type AddNode, NodeID, Context member JSON}
        let mut cc = Vec::new();
        pb::uint(&mut cc, 1, 0);
        pb::uint(&mut cc, 2, 0);
        pb::uint(&mut cc, 3, m.id);
        pb::bytes(&mut cc, 4, member_json(m).as_bytes());
        // raftpb.Entry{Type EntryConfChange, Term 1, Index i+1, Data}
        let mut entry = Vec::new();
        pb::uint(&mut entry, 1, 1);
        pb::uint(&mut entry, 2, 1);
        pb::uint(&mut entry, 3, i as u64 + 1);
        pb::bytes(&mut entry, 4, &cc);
        enc.record(ENTRY, Some(&entry));
    }
    let mut state = Vec::new();
    pb::uint(&mut state, 1, 1);
    pb::uint(&mut state, 2, ids[0]);
    pb::uint(&mut state, 3, n);
    enc.record(STATE, Some(&state));
    // 3.4 leaves the ConfState out; 3.5+ writes it and 3.7 needs it.
    enc.record(SNAPSHOT, Some(&snapshot(n, 1, Some(&ids))));

    fs::DirBuilder::new().recursive(true).mode(0o700).create(wal_dir)?;
    let path = wal_dir.join(FIRST_SEGMENT);
    let mut file = File::options().write(true).create_new(true).mode(0o600).open(&path)?;
    file.write_all(&enc.buf)?;
    preallocate(&file)?;
    file.sync_all()?;
    File::open(wal_dir)?.sync_all()
}

/// walpb.Snapshot{index, term, conf_state}.
fn snapshot(index: u64, term: u64, voters: Option<&[u64]>) -> Vec<u8> {
    let mut b = Vec::new();
    pb::uint(&mut b, 1, index);
    pb::uint(&mut b, 2, term);
    if let Some(ids) = voters {
        pb::bytes(&mut b, 3, &pb::conf_state(ids));
    }
    b
}

/// Reserve the whole segment as etcd does, so the first writes after start
/// cannot fail for lack of space; a sparse length where fallocate is missing.
fn preallocate(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a file descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, SEGMENT_SIZE as libc::off_t) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(SEGMENT_SIZE),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

#[derive(Default)]
struct Encoder {
    buf: Vec<u8>,
    crc: u32,
}

impl Encoder {
    /// One frame: u64 LE length (with the pad count in the top byte when
    /// padded), the walpb.Record, zero padding to 8 bytes.
    fn record(&mut self, kind: u64, data: Option<&[u8]>) {
        // A CRC record carries the previous segment's CRC (0 in the first)
        // and restarts the running value; the others store the running CRC
        // after their own data.
        if kind != CRC {
            self.crc = pb::crc32c(self.crc, data.unwrap_or_default());
        }
        let mut rec = Vec::new();
        pb::uint(&mut rec, 1, kind);
        pb::uint(&mut rec, 2, u64::from(self.crc));
        if let Some(d) = data {
            pb::bytes(&mut rec, 3, d);
        }
        self.buf.extend_from_slice(&frame_len(rec.len()).to_le_bytes());
        self.buf.extend_from_slice(&rec);
        self.buf.resize(self.buf.len() + pad(rec.len()), 0);
    }
}

fn pad(len: usize) -> usize {
    (8 - len % 8) % 8
}

fn frame_len(len: usize) -> u64 {
    match pad(len) {
        0 => len as u64,
        p => len as u64 | ((0x80 | p as u64) << 56),
    }
}

/// Decodes a WAL segment up to its first zero length field, checking the
/// running CRC of every record but the CRC records.
pub fn read_records(path: &Path) -> io::Result<Vec<Record>> {
    let bytes = fs::read(path)?;
    let bad = |off: usize, what: &str| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: offset {off}: {what}", path.display()))
    };
    let mut records = Vec::new();
    let mut off = 0;
    let mut crc = 0u32;
    while off + 8 <= bytes.len() {
        let field = u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap());
        if field == 0 {
            break;
        }
        let len = (field & 0x00ff_ffff_ffff_ffff) as usize;
        let pad = if field >> 63 == 1 { ((field >> 56) & 0x7) as usize } else { 0 };
        let body = bytes.get(off + 8..off + 8 + len).ok_or_else(|| bad(off, "record runs past the end"))?;
        let rec = decode_record(body).ok_or_else(|| bad(off, "malformed record"))?;
        if rec.kind == CRC {
            crc = rec.crc;
        } else {
            crc = pb::crc32c(crc, &rec.data);
            if crc != rec.crc {
                return Err(bad(off, &format!("CRC mismatch: stored {:08x}, computed {crc:08x}", rec.crc)));
            }
        }
        records.push(rec);
        off += 8 + len + pad;
    }
    Ok(records)
}

fn decode_record(mut b: &[u8]) -> Option<Record> {
    let mut rec = Record { kind: 0, crc: 0, data: Vec::new() };
    while !b.is_empty() {
        let mut pos = 0;
        let tag = pb::read_varint(b, &mut pos)?;
        match tag {
            0x08 => rec.kind = pb::read_varint(b, &mut pos)?,
            0x10 => rec.crc = u32::try_from(pb::read_varint(b, &mut pos)?).ok()?,
            0x1a => {
                let len = usize::try_from(pb::read_varint(b, &mut pos)?).ok()?;
                rec.data = b.get(pos..pos.checked_add(len)?)?.to_vec();
                pos += len;
            }
            _ => return None,
        }
        b = &b[pos..];
    }
    Some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_length_field() {
        assert_eq!(frame_len(4), 0x8400_0000_0000_0004);
        assert_eq!(frame_len(8), 8);
        assert_eq!(frame_len(9), 0x8700_0000_0000_0009);
    }

    #[test]
    fn the_first_record_is_etcds() {
        let mut e = Encoder::default();
        e.record(CRC, None);
        assert_eq!(e.buf, [0x04, 0, 0, 0, 0, 0, 0, 0x84, 0x08, 0x04, 0x10, 0x00, 0, 0, 0, 0]);
    }

    #[test]
    fn records_decode_and_crcs_chain() {
        let dir = std::env::temp_dir().join(format!("ebr-wal-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let m = crate::member::parse_initial_cluster("s1=http://127.0.0.1:24480", "tok-single").unwrap();
        write_restore_wal(&dir, &m[0], crate::member::cluster_id(&m), &m).unwrap();
        let path = dir.join(FIRST_SEGMENT);
        let kinds: Vec<u64> = read_records(&path).unwrap().iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [CRC, METADATA, SNAPSHOT, ENTRY, STATE, SNAPSHOT]);
        assert_eq!(fs::metadata(&path).unwrap().len(), SEGMENT_SIZE);
        // One flipped bit in the entry's data breaks the chain from there.
        let mut bytes = fs::read(&path).unwrap();
        bytes[120] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let e = read_records(&path).unwrap_err().to_string();
        assert!(e.contains("CRC mismatch") || e.contains("malformed"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
