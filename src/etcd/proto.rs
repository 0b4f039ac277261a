//! Hand-written prost messages for the few etcd v3 RPCs this client uses,
//! with the field numbers of etcd's `api/etcdserverpb/rpc.proto` (unchanged
//! from 3.4 to 3.6). Fields we never read are left out: prost skips unknown
//! fields when decoding.

/// gRPC method paths, `/<proto package>.<service>/<method>`.
pub(super) mod path {
    pub const MAINTENANCE_STATUS: &str = "/etcdserverpb.Maintenance/Status";
    pub const MAINTENANCE_SNAPSHOT: &str = "/etcdserverpb.Maintenance/Snapshot";
    pub const MAINTENANCE_HASH_KV: &str = "/etcdserverpb.Maintenance/HashKV";
    pub const MAINTENANCE_DEFRAGMENT: &str = "/etcdserverpb.Maintenance/Defragment";
    pub const CLUSTER_MEMBER_LIST: &str = "/etcdserverpb.Cluster/MemberList";
    pub const AUTH_AUTHENTICATE: &str = "/etcdserverpb.Auth/Authenticate";
    pub const WATCH_WATCH: &str = "/etcdserverpb.Watch/Watch";
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(int64, tag = "3")]
    pub db_size: i64,
    #[prost(uint64, tag = "4")]
    pub leader: u64,
    /// Bytes of the database file in use (etcd 3.4 and later; 0 before).
    #[prost(int64, tag = "9")]
    pub db_size_in_use: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct DefragmentRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct DefragmentResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct MemberListRequest {
    #[prost(bool, tag = "1")]
    pub linearizable: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct MemberListResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Member {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "4")]
    pub client_urls: Vec<String>,
    #[prost(bool, tag = "5")]
    pub is_learner: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct SnapshotRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct HashKvRequest {
    #[prost(int64, tag = "1")]
    pub revision: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct HashKvResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(uint32, tag = "2")]
    pub hash: u32,
    #[prost(int64, tag = "3")]
    pub compact_revision: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct SnapshotResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(uint64, tag = "2")]
    pub remaining_bytes: u64,
    #[prost(bytes = "vec", tag = "3")]
    pub blob: Vec<u8>,
}

/// Carries the password: no `Debug`, so it can't end up in a log by accident.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub(super) struct AuthenticateRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub password: String,
}

/// Carries the token: no `Debug`.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub(super) struct AuthenticateResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    pub token: String,
}

/// Only the create request of the `request_union` oneof is ever sent, so
/// it is modelled as a plain optional field with the oneof's tag.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WatchRequest {
    #[prost(message, optional, tag = "1")]
    pub create_request: Option<WatchCreateRequest>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub start_revision: i64,
    #[prost(bool, tag = "4")]
    pub progress_notify: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WatchResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

/// `mvccpb.Event`: type 0 is PUT, 1 is DELETE.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Event {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn snapshot_response_wire_format() {
        // header{revision: 7} remaining_bytes: 300 blob: "ab"
        let wire = [0x0a, 0x02, 0x18, 0x07, 0x10, 0xac, 0x02, 0x1a, 0x02, b'a', b'b'];
        let m = SnapshotResponse::decode(&wire[..]).unwrap();
        assert_eq!(m.header.unwrap().revision, 7);
        assert_eq!(m.remaining_bytes, 300);
        assert_eq!(m.blob, b"ab");
    }

    #[test]
    fn status_response_skips_unknown_fields() {
        let m = StatusResponse {
            header: Some(ResponseHeader { cluster_id: 1, member_id: 2, revision: 3, raft_term: 4 }),
            version: "3.5.1".into(),
            db_size: 20480,
            leader: 2,
            db_size_in_use: 8192,
        };
        let mut wire = m.encode_to_vec();
        // raftIndex = 5 (field 5, varint) and errors = ["x"] (field 8), unknown to us.
        wire.extend_from_slice(&[0x28, 0x05, 0x42, 0x01, b'x']);
        assert_eq!(StatusResponse::decode(&wire[..]).unwrap(), m);
    }

    #[test]
    fn watch_create_request_wire_format() {
        // Every key from revision 5: key "\0", range_end "\0", as clientv3's
        // WithPrefix on the empty key.
        let m = WatchRequest {
            create_request: Some(WatchCreateRequest {
                key: vec![0],
                range_end: vec![0],
                start_revision: 5,
                progress_notify: false,
            }),
        };
        assert_eq!(m.encode_to_vec(), [0x0a, 0x08, 0x0a, 0x01, 0x00, 0x12, 0x01, 0x00, 0x18, 0x05]);
    }

    #[test]
    fn watch_response_events() {
        // events[0] = {type: DELETE, kv: {key: "k", mod_revision: 9}}; compact_revision 0.
        let wire = [0x5a, 0x09, 0x08, 0x01, 0x12, 0x05, 0x0a, 0x01, b'k', 0x18, 0x09];
        let m = WatchResponse::decode(&wire[..]).unwrap();
        assert_eq!(m.events.len(), 1);
        assert_eq!(m.events[0].r#type, 1);
        let kv = m.events[0].kv.as_ref().unwrap();
        assert_eq!((kv.key.as_slice(), kv.mod_revision), (&b"k"[..], 9));
    }
}
