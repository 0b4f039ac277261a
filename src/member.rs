//! etcd cluster membership at bootstrap: initial-cluster parsing, member and cluster IDs, member JSON.
