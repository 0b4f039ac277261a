//! bbolt (etcd backend) files: a page reader and a sequential bulk writer.
