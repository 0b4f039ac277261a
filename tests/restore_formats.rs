//! The WAL and `.snap` writers against bytes that etcdutl 3.5.1 wrote for
//! the same memberships (tests/golden/README.md says how they were made).

use etcd_backup_restore::member::{self, Member};
use etcd_backup_restore::{snap, wal};
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
        let path = snap::write_restore_snap(&dir, &m).unwrap();
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
        let records = wal::read_records(&golden(&format!("{}.wal", c.tag))).unwrap();
        let kinds: Vec<u64> = records.iter().map(|r| r.kind).collect();
        let mut want = vec![wal::CRC, wal::METADATA, wal::SNAPSHOT];
        want.extend(std::iter::repeat_n(wal::ENTRY, m.len()));
        want.extend([wal::STATE, wal::SNAPSHOT]);
        assert_eq!(kinds, want, "{}", c.tag);
        // Metadata{NodeID, ClusterID} as etcd computed them.
        let mut pos = 1;
        let meta = &records[1].data;
        assert_eq!(varint(meta, &mut pos), local.id, "{}: member id", c.tag);
        pos += 1;
        assert_eq!(varint(meta, &mut pos), member::cluster_id(&m), "{}: cluster id", c.tag);
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

fn varint(b: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0;
    for shift in (0..64).step_by(7) {
        let byte = b[*pos];
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            break;
        }
    }
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
