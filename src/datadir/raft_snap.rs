//! The raft snapshot file (`member/snap/<term>-<index>.snap`) a restore
//! writes: the v2 store, as etcd 3.4/3.5 serialise it, holding nothing but
//! the membership that 3.4/3.5 read on start, byte for byte as etcdutl.
//! (Raft's snapshot, not a backup snapshot: those are `crate::snapshot`.)

use super::member::{Member, go_json_string};
use super::pb;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The v2 store's event history capacity, which bounds the member count.
const HISTORY: usize = super::member::MAX_MEMBERS;

/// Writes `<snap_dir>/0000000000000001-<n>.snap` (term 1, index n).
pub fn write_restore_snap(snap_dir: &Path, members: &[Member]) -> io::Result<PathBuf> {
    if members.len() > HISTORY {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "more than 1000 members"));
    }
    let mut members: Vec<&Member> = members.iter().collect();
    members.sort_by_key(|m| m.id);
    let n = members.len() as u64;
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();

    let mut metadata = Vec::new();
    pb::bytes(&mut metadata, 1, &pb::conf_state(&ids));
    pb::uint(&mut metadata, 2, n);
    pb::uint(&mut metadata, 3, 1);
    let mut snapshot = Vec::new();
    pb::bytes(&mut snapshot, 1, v2_store(&members).as_bytes());
    pb::bytes(&mut snapshot, 2, &metadata);
    let mut file_bytes = Vec::new();
    pb::uint(&mut file_bytes, 1, u64::from(pb::crc32c(0, &snapshot)));
    pb::bytes(&mut file_bytes, 2, &snapshot);

    fs::DirBuilder::new().recursive(true).mode(0o700).create(snap_dir)?;
    let path = snap_dir.join(format!("{:016x}-{n:016x}.snap", 1));
    let mut file = File::options().write(true).create_new(true).mode(0o644).open(&path)?;
    file.write_all(&file_bytes)?;
    file.sync_all()?;
    Ok(path)
}

/// Go's json.Marshal of the v2 store after adding each member (ascending
/// ID, v2 index = position) under /0/members, as etcd 3.4/3.5 restore does.
fn v2_store(members: &[&Member]) -> String {
    let raft_attributes = |m: &Member| {
        let urls: Vec<String> = m.peer_urls.iter().map(|u| go_json_string(u)).collect();
        go_json_string(&format!("{{\"peerURLs\":[{}]}}", urls.join(",")))
    };
    // Map keys come out sorted, as Go sorts map keys; the index follows ID order.
    let mut children: Vec<(String, String)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let id = format!("{:x}", m.id);
            let dir = format!("/0/members/{id}");
            let attrs = node(&format!("{dir}/raftAttributes"), i + 1, &raft_attributes(m), "null");
            (id, node(&dir, i + 1, "\"\"", &format!("{{\"raftAttributes\":{attrs}}}")))
        })
        .collect();
    children.sort();
    let entries: Vec<String> = children.iter().map(|(k, v)| format!("{}:{v}", go_json_string(k))).collect();
    let member_dir = node("/0/members", 1, "\"\"", &format!("{{{}}}", entries.join(",")));
    let zero = node("/0", 0, "\"\"", &format!("{{\"members\":{member_dir}}}"));
    let one = node("/1", 0, "\"\"", "{}");
    let root = node("/", 0, "\"\"", &format!("{{\"0\":{zero},\"1\":{one}}}"));

    let mut events: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                "{{\"action\":\"create\",\"node\":{{\"key\":\"/0/members/{:x}/raftAttributes\",\"value\":{},\"modifiedIndex\":{i},\"createdIndex\":{i}}}}}",
                m.id,
                raft_attributes(m),
                i = i + 1
            )
        })
        .collect();
    events.resize(HISTORY, "null".into());
    let n = members.len();
    let stats = [
        "getsSuccess",
        "getsFail",
        "setsSuccess",
        "setsFail",
        "deleteSuccess",
        "deleteFail",
        "updateSuccess",
        "updateFail",
        "createSuccess",
        "createFail",
        "compareAndSwapSuccess",
        "compareAndSwapFail",
        "compareAndDeleteSuccess",
        "compareAndDeleteFail",
        "expireCount",
        "watchers",
    ]
    .map(|k| format!("\"{k}\":{}", if k == "createSuccess" { n } else { 0 }));
    format!(
        "{{\"Root\":{root},\"WatcherHub\":{{\"EventHistory\":{{\"Queue\":{{\"Events\":[{}],\"Size\":{n},\"Front\":0,\"Back\":{n},\"Capacity\":{HISTORY}}},\"StartIndex\":1,\"LastIndex\":{n}}}}},\"CurrentIndex\":{n},\"Stats\":{{{}}},\"CurrentVersion\":2}}",
        events.join(","),
        stats.join(",")
    )
}

/// One v2 store node; `value` and `children` are already JSON.
fn node(path: &str, index: usize, value: &str, children: &str) -> String {
    format!(
        "{{\"Path\":{},\"CreatedIndex\":{index},\"ModifiedIndex\":{index},\"ExpireTime\":\"0001-01-01T00:00:00Z\",\"Value\":{value},\"Children\":{children}}}",
        go_json_string(path)
    )
}
