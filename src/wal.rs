//! etcd write-ahead log (member/wal): record framing, CRC-32C, and the records a restore writes.
