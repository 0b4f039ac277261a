//! The WAL and `.snap` writers against bytes that etcdutl 3.5.1 wrote for
//! the same memberships (tests/golden/README.md says how they were made).

use etcd_backup_restore::datadir::member::{self, Member};
use etcd_backup_restore::datadir::pb::crc32c;
use etcd_backup_restore::datadir::{raft_snap, wal};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

struct Case {
    tag: &'static str,
    cluster: &'static str,
    token: &'static str,
    name: &'static str,
    urls: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        tag: "one",
        cluster: "s1=http://127.0.0.1:24480",
        token: "tok-single",
        name: "s1",
        urls: "http://127.0.0.1:24480",
    },
    Case {
        tag: "three",
        cluster: "m1=http://127.0.0.1:24481,m2=http://127.0.0.1:24482,m3=http://127.0.0.1:24483",
        token: "tok-three",
        name: "m2",
        urls: "http://127.0.0.1:24482",
    },
    Case {
        tag: "two",
        cluster: "a=https://127.0.0.1:24490,a=http://127.0.0.1:24489",
        token: "tok-two",
        name: "a",
        urls: "https://127.0.0.1:24490,http://127.0.0.1:24489",
    },
];

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ebr-formats-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn members(c: &Case) -> (Vec<Member>, Member) {
    let m = member::parse_initial_cluster(c.cluster, c.token).unwrap();
    let local = member::local_member(&m, c.name, c.urls).unwrap().clone();
    (m, local)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn wal_is_byte_identical_to_etcdutl() {
    for c in &CASES {
        let (m, local) = members(c);
        let dir = scratch(c.tag);
        wal::write_restore_wal(&dir.join("wal"), &local, member::cluster_id(&m), &m).unwrap();
        let path = dir.join("wal").join(wal::FIRST_SEGMENT);
        let ours = std::fs::read(&path).unwrap();
        let want = std::fs::read(golden(&format!("{}.wal", c.tag))).unwrap();
        assert_eq!(ours.len() as u64, wal::SEGMENT_SIZE, "{}", c.tag);
        assert_eq!(hex(&ours[..want.len()]), hex(&want), "{}: WAL records", c.tag);
        assert!(ours[want.len()..].iter().all(|&b| b == 0), "{}: the rest is zeros", c.tag);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.join("wal")), 0o700);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn snap_is_byte_identical_to_etcdutl() {
    for c in &CASES {
        let (m, _) = members(c);
        let dir = scratch(&format!("snap-{}", c.tag));
        let path = raft_snap::write_restore_snap(&dir, &m).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name, format!("0000000000000001-{:016x}.snap", m.len()));
        let want = std::fs::read(golden(&format!("{}-{name}", c.tag))).unwrap();
        let ours = std::fs::read(&path).unwrap();
        assert!(
            ours == want,
            "{}: .snap differs\nours: {}\nwant: {}",
            c.tag,
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(mode(&path), 0o644);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn golden_wals_decode_with_valid_crcs() {
    for c in &CASES {
        let (m, local) = members(c);
        let records = read_records(&golden(&format!("{}.wal", c.tag))).unwrap();
        let kinds: Vec<u64> = records.iter().map(|r| r.kind).collect();
        let mut want = vec![wal::CRC, wal::METADATA, wal::SNAPSHOT];
        want.extend(std::iter::repeat_n(wal::ENTRY, m.len()));
        want.extend([wal::STATE, wal::SNAPSHOT]);
        assert_eq!(kinds, want, "{}", c.tag);
        // Metadata{NodeID, ClusterID} as etcd computed them.
        let mut pos = 1;
        let meta = &records[1].data;
        assert_eq!(read_varint(meta, &mut pos), Some(local.id), "{}: member id", c.tag);
        pos += 1;
        assert_eq!(read_varint(meta, &mut pos), Some(member::cluster_id(&m)), "{}: cluster id", c.tag);
    }
}

#[test]
fn ids_are_the_ones_etcd_computed() {
    let (m, _) = members(&CASES[0]);
    assert_eq!((m[0].id, member::cluster_id(&m)), (0xc340e2006ae8e270, 0x482a263d31c02ea0));
    let (m, local) = members(&CASES[1]);
    let ids: Vec<(u64, &str)> = m.iter().map(|m| (m.id, m.name.as_str())).collect();
    assert_eq!(ids, [(0xa4eb6b1efa00c63d, "m3"), (0xd76c63b579252229, "m1"), (0xf235ec07903a0549, "m2")]);
    assert_eq!(local.id, 0xf235ec07903a0549);
    let (m, _) = members(&CASES[2]);
    assert_eq!(m[0].id, 0x56d5020b395062d4);
}

#[test]
fn written_wal_decodes_and_a_flipped_bit_breaks_the_crc_chain() {
    let dir = scratch("crc-chain");
    let (m, local) = members(&CASES[0]);
    wal::write_restore_wal(&dir, &local, member::cluster_id(&m), &m).unwrap();
    let path = dir.join(wal::FIRST_SEGMENT);
    let kinds: Vec<u64> = read_records(&path).unwrap().iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [wal::CRC, wal::METADATA, wal::SNAPSHOT, wal::ENTRY, wal::STATE, wal::SNAPSHOT]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), wal::SEGMENT_SIZE);
    // One flipped bit in the entry's data breaks the chain from there.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[120] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = read_records(&path).unwrap_err().to_string();
    assert!(e.contains("CRC mismatch") || e.contains("malformed"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn varints_read_back() {
    assert_eq!(read_varint(&[0xac, 0x02], &mut 0), Some(300));
    let mut pos = 0;
    assert_eq!(read_varint(&[0xac, 0x02, 0x01], &mut pos), Some(300));
    assert_eq!(pos, 2);
    assert_eq!(read_varint(&[0x80], &mut 0), None);
}

/// One walpb.Record.
#[derive(Debug)]
struct Record {
    kind: u64,
    crc: u32,
    data: Vec<u8>,
}

/// Decodes a WAL segment up to its first zero length field, checking the
/// running CRC of every record but the CRC records.
fn read_records(path: &Path) -> std::io::Result<Vec<Record>> {
    use std::io::{Error, ErrorKind};
    let bytes = std::fs::read(path)?;
    let bad = |off: usize, what: &str| {
        Error::new(ErrorKind::InvalidData, format!("{}: offset {off}: {what}", path.display()))
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
        if rec.kind == wal::CRC {
            crc = rec.crc;
        } else {
            crc = crc32c(crc, &rec.data);
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
        let tag = read_varint(b, &mut pos)?;
        match tag {
            0x08 => rec.kind = read_varint(b, &mut pos)?,
            0x10 => rec.crc = u32::try_from(read_varint(b, &mut pos)?).ok()?,
            0x1a => {
                let len = usize::try_from(read_varint(b, &mut pos)?).ok()?;
                rec.data = b.get(pos..pos.checked_add(len)?)?.to_vec();
                pos += len;
            }
            _ => return None,
        }
        b = &b[pos..];
    }
    Some(rec)
}

/// Reads a varint at `*pos`, moving past it; `None` when truncated or too long.
fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
