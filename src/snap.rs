//! The raft snapshot file (member/snap/*.snap) with the v2 store JSON that etcd 3.4/3.5 read membership from.
