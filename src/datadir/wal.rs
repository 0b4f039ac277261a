//! etcd's write-ahead log (`member/wal`): record framing, the running
//! CRC-32C, and the records `etcdutl snapshot restore` writes, byte for byte.
//! Only tests read WAL records back: the reader is in tests/restore_formats.rs.

use super::member::{Member, member_json};
use super::pb;
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
}
