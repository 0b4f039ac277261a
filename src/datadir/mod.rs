//! What a restore writes into an etcd data directory, byte for byte as
//! `etcdutl snapshot restore` does, without etcd: the bbolt database
//! ([`db`], over the [`bbolt`] reader and writer, with delta snapshots'
//! events turned into etcd's [`mvcc`] rows), the [`wal`], the raft
//! `.snap` file ([`raft_snap`]), and the [`member`]ship all three record.
//! [`pb`] is the little protobuf encoding they share. [`hashkv`] computes
//! etcd's HashKV of a db and checks its mvcc rows.

pub mod bbolt;
pub mod db;
pub mod hashkv;
pub mod member;
pub mod mvcc;
pub mod pb;
pub mod raft_snap;
pub mod wal;
