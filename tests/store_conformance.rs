//! The store conformance suite: every `Store` implementation must pass the
//! `check_*` functions, which only use the `Store`/`Upload` traits. Each
//! provider is one `conformance!` line at the bottom of the generic part.
//!
//! S3 providers run against the two servers `scripts/env up` starts:
//! A = s3s-fs (`EBR_S3A_*`), B = `rclone serve s3` (`EBR_S3B_*`). The
//! S3-only tests after the generic part exercise errors, credentials
//! hygiene, pagination, and the servers' own behaviour through the
//! test-only calls of `common::s3_admin`.

mod common;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use common::s3_admin::{S3Admin, admin};
use common::{Server, s3_config, s3_store};
use etcd_backup_restore::store::local::LocalStore;
use etcd_backup_restore::store::s3::{S3Config, S3Store};
use etcd_backup_restore::store::{self, ErrorKind, ObjectInfo, Store};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;
/// S3's minimum size for every part but the last.
const PART: usize = 5 * MIB;

/// Makes a store bound to the given prefix (`<prefix>/v2/`).
type Make<'a> = &'a dyn Fn(&str) -> Box<dyn Store>;

// ---------------------------------------------------------------------------
// Helpers

/// Deterministic, incompressible test bytes.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn read_all(store: &dyn Store, name: &str, offset: u64) -> Vec<u8> {
    read_range(store, name, offset, None)
}

fn read_range(store: &dyn Store, name: &str, offset: u64, length: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .load(name, offset, length)
        .unwrap_or_else(|e| panic!("load {name} from {offset} at {}: {e}", store.location()))
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("reading {name} at {}: {e}", store.location()));
    out
}

fn sorted(mut list: Vec<ObjectInfo>) -> Vec<(String, u64)> {
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list.into_iter().map(|o| (o.name, o.size)).collect()
}

fn listed(store: &dyn Store) -> Vec<(String, u64)> {
    sorted(store.list().unwrap_or_else(|e| panic!("list {}: {e}", store.location())))
}

fn assert_not_found(store: &dyn Store, name: &str) {
    match store.load(name, 0, None) {
        Err(e) => assert_eq!(e.kind, ErrorKind::NotFound, "load of missing {name}: {e}"),
        Ok(_) => panic!("{name} is visible at {}", store.location()),
    }
    assert!(!listed(store).iter().any(|(n, _)| n == name), "{name} is listed at {}", store.location());
}

/// Split `data` into uneven slices, as the backup's ring buffer hands them over.
fn slices(data: &[u8]) -> Vec<&[u8]> {
    let cut1 = data.len() / 3;
    let cut2 = cut1 + data.len() / 5;
    vec![&data[..cut1], &data[cut1..cut1], &data[cut1..cut2], &data[cut2..]]
}

// ---------------------------------------------------------------------------
// Generic checks (Store trait only)

/// 3 parts of exactly 5 MiB and a short last one, stored out of order from
/// several threads; invisible until complete; byte-identical afterwards.
fn check_multipart_round_trip(make: Make) {
    let store = make(&common::unique("mp"));
    let store = &*store;
    let name = "Full-00000000-00000010-1640995200";
    let data = bytes(3 * PART + 12_345, 1);
    let parts: Vec<(u32, usize, &[u8])> =
        data.chunks(PART).enumerate().map(|(i, c)| (i as u32 + 1, i * PART, c)).collect();
    assert_eq!(parts.len(), 4);

    let upload = store.begin(name).unwrap();
    let upload = &*upload;
    std::thread::scope(|s| {
        // Last part first, then the others concurrently.
        let (n, off, chunk) = parts[3];
        upload.put_part(n, off as u64, &slices(chunk)).unwrap();
        for &(n, off, chunk) in [parts[1], parts[2], parts[0]].iter() {
            s.spawn(move || upload.put_part(n, off as u64, &slices(chunk)).unwrap());
        }
    });
    assert_not_found(store, name);

    upload.complete().unwrap();
    let back = read_all(store, name, 0);
    assert_eq!(back.len(), data.len());
    assert_eq!(sha256(&back), sha256(&data));
    assert_eq!(listed(store), vec![(name.to_string(), data.len() as u64)]);

    // A tail that starts inside part 2.
    let offset = PART as u64 + 17;
    let tail = read_all(store, name, offset);
    assert_eq!(sha256(&tail), sha256(&data[offset as usize..]));
    // A range across the boundary of parts 1 and 2, as a parallel restore reads it.
    let (from, len) = (PART as u64 - 1000, 5000u64);
    let range = read_range(store, name, from, Some(len));
    assert_eq!(range, &data[from as usize..(from + len) as usize]);

    store.delete(name).unwrap();
}

/// Storing a part again replaces it: before later parts arrive, and (the
/// retry of a request whose answer was lost) with the same bytes after.
fn check_part_can_be_stored_again(make: Make) {
    let store = make(&common::unique("again"));
    let data = bytes(2 * PART + 100, 2);
    let upload = store.begin("obj").unwrap();
    upload.put_part(3, 2 * PART as u64, &[&bytes(100, 99)]).unwrap();
    upload.put_part(3, 2 * PART as u64, &[&data[2 * PART..]]).unwrap();
    upload.put_part(1, 0, &[&data[..PART]]).unwrap();
    upload.put_part(1, 0, &[&data[..PART]]).unwrap();
    upload.put_part(2, PART as u64, &slices(&data[PART..2 * PART])).unwrap();
    upload.put_part(2, PART as u64, &[&data[PART..2 * PART]]).unwrap();
    upload.complete().unwrap();
    assert_eq!(sha256(&read_all(&*store, "obj", 0)), sha256(&data));
    store.delete("obj").unwrap();
}

fn check_abort_leaves_nothing(make: Make) {
    let store = make(&common::unique("abort"));
    let upload = store.begin("aborted").unwrap();
    upload.put_part(1, 0, &[&bytes(PART, 3)]).unwrap();
    upload.put_part(2, PART as u64, &[b"short"]).unwrap();
    upload.abort().unwrap();
    assert_not_found(&*store, "aborted");
    assert_eq!(listed(&*store), vec![]);
}

fn check_complete_needs_contiguous_parts(make: Make) {
    let store = make(&common::unique("gap"));
    let upload = store.begin("gappy").unwrap();
    upload.put_part(1, 0, &[&bytes(PART, 4)]).unwrap();
    upload.put_part(3, 2 * PART as u64, &[b"tail"]).unwrap();
    let e = upload.complete().unwrap_err();
    assert_ne!(e.kind, ErrorKind::Transient, "{e}");
    upload.abort().unwrap();
    assert_not_found(&*store, "gappy");
}

fn check_save_round_trips(make: Make) {
    let store = make(&common::unique("save"));
    let store = &*store;
    let data = bytes(1000, 5);
    store::save(store, "small", &data).unwrap();
    store::save(store, "empty", b"").unwrap();
    assert_eq!(read_all(store, "small", 0), data);
    assert_eq!(read_all(store, "small", 10), &data[10..]);
    assert_eq!(read_all(store, "small", 999), &data[999..]);
    assert_eq!(read_range(store, "small", 0, Some(10)), &data[..10]);
    assert_eq!(read_range(store, "small", 10, Some(1)), &data[10..11]);
    assert_eq!(read_range(store, "small", 990, Some(100)), &data[990..], "a range past the end stops at the end");
    assert_eq!(read_range(store, "small", 5, Some(0)), b"");
    assert_eq!(read_all(store, "empty", 0), b"");
    assert_eq!(listed(store), vec![("empty".to_string(), 0), ("small".to_string(), 1000)]);

    // Saving again replaces the object.
    store::save(store, "small", b"second").unwrap();
    assert_eq!(read_all(store, "small", 0), b"second");
    assert_eq!(listed(store), vec![("empty".to_string(), 0), ("small".to_string(), 6)]);

    store.delete("small").unwrap();
    store.delete("empty").unwrap();
}

fn check_missing_is_not_found(make: Make) {
    let store = make(&common::unique("missing"));
    let e = store.load("never-written", 0, None).err().expect("load of a missing object succeeded");
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let e = store.load("never-written", 5, None).err().expect("ranged load of a missing object succeeded");
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

fn check_delete(make: Make) {
    let store = make(&common::unique("del"));
    let store = &*store;
    store::save(store, "doomed", b"bye").unwrap();
    store::save(store, "kept", b"stay").unwrap();
    store.delete("doomed").unwrap();
    assert_not_found(store, "doomed");
    assert_eq!(listed(store), vec![("kept".to_string(), 4)]);
    store.delete("doomed").unwrap();
    store.delete("never-existed").unwrap();
    store.delete("kept").unwrap();
}

/// `list` sees only names directly under `<prefix>/v2/`.
fn check_list_scope(make: Make) {
    let p = common::unique("scope");
    let store = make(&p);
    let sibling = make(&format!("{p}-old"));
    let nested = make(&format!("{p}/v2/a"));
    assert_eq!(listed(&*store), vec![]);
    store::save(&*store, "mine", b"1").unwrap();
    store::save(&*sibling, "x", b"22").unwrap();
    store::save(&*nested, "b", b"333").unwrap();
    assert_eq!(listed(&*store), vec![("mine".to_string(), 1)]);
    assert_eq!(listed(&*sibling), vec![("x".to_string(), 2)]);
    assert_eq!(listed(&*nested), vec![("b".to_string(), 3)]);
    store.delete("mine").unwrap();
    sibling.delete("x").unwrap();
    nested.delete("b").unwrap();
}

/// A sibling (`<prefix>/<dir>/`) is its own namespace beside `v2/`.
fn check_sibling_is_separate(make: Make) {
    let store = make(&common::unique("sibling"));
    let records = store.sibling("hashkv");
    assert!(records.location().contains("/hashkv/"), "{}", records.location());
    store::save(&*store, "Full-00000000-00000001-1", b"snap").unwrap();
    store::save(&*records, "Full-00000000-00000001-1", b"rec").unwrap();
    assert_eq!(listed(&*store), vec![("Full-00000000-00000001-1".to_string(), 4)]);
    assert_eq!(listed(&*records), vec![("Full-00000000-00000001-1".to_string(), 3)]);
    assert_eq!(read_all(&*records, "Full-00000000-00000001-1", 0), b"rec");
    records.delete("Full-00000000-00000001-1").unwrap();
    assert_eq!(read_all(&*store, "Full-00000000-00000001-1", 0), b"snap");
    store.delete("Full-00000000-00000001-1").unwrap();
}

fn check_fresh_prefix_is_empty(make: Make) {
    let store = make(&common::unique("fresh"));
    assert_eq!(listed(&*store), vec![]);
    assert!(store.location().contains("/v2/"), "{}", store.location());
}

macro_rules! conformance {
    ($provider:ident, $make:expr) => {
        mod $provider {
            use super::*;

            fn make(prefix: &str) -> Box<dyn Store> {
                ($make)(prefix)
            }

            #[test]
            fn multipart_round_trip() {
                check_multipart_round_trip(&make)
            }
            #[test]
            fn part_can_be_stored_again() {
                check_part_can_be_stored_again(&make)
            }
            #[test]
            fn abort_leaves_nothing() {
                check_abort_leaves_nothing(&make)
            }
            #[test]
            fn complete_needs_contiguous_parts() {
                check_complete_needs_contiguous_parts(&make)
            }
            #[test]
            fn save_round_trips() {
                check_save_round_trips(&make)
            }
            #[test]
            fn missing_is_not_found() {
                check_missing_is_not_found(&make)
            }
            #[test]
            fn delete() {
                check_delete(&make)
            }
            #[test]
            fn list_scope() {
                check_list_scope(&make)
            }
            #[test]
            fn sibling_is_separate() {
                check_sibling_is_separate(&make)
            }
            #[test]
            fn fresh_prefix_is_empty() {
                check_fresh_prefix_is_empty(&make)
            }
        }
    };
}

conformance!(s3a, |p: &str| -> Box<dyn Store> { Box::new(s3_store(Server::A, p)) });
conformance!(s3b, |p: &str| -> Box<dyn Store> { Box::new(s3_store(Server::B, p)) });
conformance!(local, |p: &str| -> Box<dyn Store> { Box::new(LocalStore::new(&local_container(), p).unwrap()) });

/// One directory for every Local store of this run (the container must exist).
fn local_container() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("local-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------
// Local-only

#[test]
fn local_missing_container_is_an_error_not_a_new_directory() {
    let gone = local_container().join("not-mounted");
    let e = LocalStore::new(&gone, "p").err().unwrap();
    assert!(e.msg.contains("not-mounted"), "{e}");
    assert!(!gone.exists());
}

#[test]
fn local_upload_is_a_hidden_file_until_complete() {
    let prefix = common::unique("hidden");
    let store = LocalStore::new(&local_container(), &prefix).unwrap();
    let dir = local_container().join(&prefix).join("v2");
    let upload = store.begin("snap").unwrap();
    upload.put_part(1, 0, &[b"abc"]).unwrap();
    assert_eq!(listed(&store), vec![]);
    let files: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].starts_with(".snap.upload-"), "{files:?}");
    upload.complete().unwrap();
    assert_eq!(std::fs::read(dir.join("snap")).unwrap(), b"abc");
    // Dropped without complete or abort: nothing left.
    let upload = store.begin("dropped").unwrap();
    upload.put_part(1, 0, &[b"x"]).unwrap();
    drop(upload);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    assert!(store.begin("../escape").is_err());
    let e = LocalStore::new(&local_container(), "a/../b").err().unwrap();
    assert!(e.msg.contains(".."), "{e}");
}

// ---------------------------------------------------------------------------
// S3 providers and S3-only tests

fn wrong_secret_is_permanent_and_redacted(server: Server) {
    let mut cfg = s3_config(server, &common::unique("badsecret"));
    let secret = "NotTheSecret-4f1c9e2d7b";
    cfg.secret_access_key = secret.to_string();
    let access_key = cfg.access_key_id.clone();
    let endpoint = cfg.endpoint.clone().unwrap();
    let bucket = cfg.bucket.clone();
    let store = S3Store::new(cfg).unwrap();

    let list = store.list().unwrap_err();
    let load = store.load("x", 0, None).err().unwrap();
    let begin = store.begin("x").err().unwrap();
    for e in [list, load, begin] {
        assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
        assert!(e.msg.contains("HTTP 403"), "{e}");
        assert!(e.msg.contains("SignatureDoesNotMatch"), "{e}");
        assert!(e.msg.contains(&endpoint) && e.msg.contains(&format!("s3://{bucket}/")), "{e}");
        assert!(!e.msg.contains(secret), "{e}");
        assert!(!e.msg.contains(&access_key), "{e}");
        assert!(!e.msg.contains("X-Amz-"), "{e}");
    }
}

fn missing_bucket_is_permanent(server: Server) {
    let mut cfg = s3_config(server, "p");
    let bucket = common::unique("nobucket");
    cfg.bucket = bucket.clone();
    let store = S3Store::new(cfg).unwrap();
    let e = store.list().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(e.msg.contains("NoSuchBucket") && e.msg.contains(&bucket), "{e}");
    let e = store.load("x", 0, None).err().unwrap();
    if server == Server::A {
        // s3s-fs answers GetObject in a missing bucket with 404 NoSuchKey.
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.msg.contains("NoSuchKey") && e.msg.contains(&bucket), "{e}");
    } else {
        assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
        assert!(e.msg.contains("NoSuchBucket") && e.msg.contains(&bucket), "{e}");
    }
    // s3s-fs 0.14.1 completes a multipart upload into a missing bucket,
    // creating the bucket's directory on the way: not checked there.
    if server == Server::B {
        let e = store.begin("x").err().unwrap();
        assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
        assert!(e.msg.contains("NoSuchBucket") && e.msg.contains(&bucket), "{e}");
    }
}

fn nothing_listening_is_transient() {
    let mut cfg = s3_config(Server::A, "p");
    cfg.endpoint = Some("http://127.0.0.1:1".to_string());
    let store = S3Store::new(cfg).unwrap();
    let errors = [store.list().unwrap_err(), store.load("x", 0, None).err().unwrap(), store.begin("x").err().unwrap()];
    for e in errors {
        assert_eq!(e.kind, ErrorKind::Transient, "{e}");
        assert!(e.msg.contains("connection refused") && e.msg.contains("http://127.0.0.1:1"), "{e}");
    }
}

fn multipart_etag(server: Server) -> String {
    let prefix = common::unique("etag");
    let store = s3_store(server, &prefix);
    let data = bytes(PART + 10, 6);
    let upload = store.begin("obj").unwrap();
    upload.put_part(1, 0, &[&data[..PART]]).unwrap();
    upload.put_part(2, PART as u64, &[&data[PART..]]).unwrap();
    upload.complete().unwrap();
    let admin = S3Admin::new(&s3_config(server, &prefix));
    let (size, etag) = admin.head("obj").unwrap();
    assert_eq!(size, data.len() as u64);
    assert!(!etag.contains('"'), "{etag}");
    let e = admin.head("missing").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    store.delete("obj").unwrap();
    etag
}

fn list_paginates(server: Server) {
    let prefix = common::unique("pages");
    let store = s3_store(server, &prefix);
    // The store itself never asks for small pages: it lists through a proxy
    // that asks the real server for two keys per page.
    let mut paged = s3_config(server, &prefix);
    paged.endpoint = Some(S3Admin::new(&paged).paging_proxy(2));
    let paged = S3Store::new(paged).unwrap();
    let names: Vec<String> = (0..5).map(|i| format!("obj-{i}")).collect();
    for n in &names {
        store::save(&store, n, n.as_bytes()).unwrap();
    }
    let got: Vec<String> = listed(&paged).into_iter().map(|(n, _)| n).collect();
    assert_eq!(got, names);
    for n in &names {
        store.delete(n).unwrap();
    }
}

fn create_bucket_then_use_it(server: Server) {
    let mut cfg = s3_config(server, "p");
    cfg.bucket = common::unique("newbucket");
    let admin = S3Admin::new(&cfg);
    let store = S3Store::new(cfg).unwrap();
    admin.create_bucket().unwrap();
    assert_eq!(listed(&store), vec![]);
    store::save(&store, "x", b"in a new bucket").unwrap();
    assert_eq!(read_all(&store, "x", 0), b"in a new bucket");
    admin.create_bucket().unwrap();
    store.delete("x").unwrap();
    admin.delete_bucket().unwrap();
    let e = store.list().unwrap_err();
    assert!(e.kind == ErrorKind::Permanent && e.msg.contains("NoSuchBucket"), "{e}");
}

mod s3_only {
    use super::*;

    #[test]
    fn a_wrong_secret_is_permanent_and_redacted() {
        wrong_secret_is_permanent_and_redacted(Server::A)
    }
    #[test]
    fn b_wrong_secret_is_permanent_and_redacted() {
        wrong_secret_is_permanent_and_redacted(Server::B)
    }
    #[test]
    fn a_missing_bucket_is_permanent() {
        missing_bucket_is_permanent(Server::A)
    }
    #[test]
    fn b_missing_bucket_is_permanent() {
        missing_bucket_is_permanent(Server::B)
    }
    #[test]
    fn nothing_listening_is_transient_and_names_the_endpoint() {
        nothing_listening_is_transient()
    }
    #[test]
    fn a_list_paginates() {
        list_paginates(Server::A)
    }
    #[test]
    fn b_list_paginates() {
        list_paginates(Server::B)
    }
    #[test]
    fn a_create_bucket() {
        create_bucket_then_use_it(Server::A)
    }
    #[test]
    fn b_create_bucket() {
        create_bucket_then_use_it(Server::B)
    }

    /// s3s-fs keeps S3's `<md5 of part md5s>-<parts>` ETag.
    #[test]
    fn a_multipart_etag_counts_parts() {
        let etag = multipart_etag(Server::A);
        assert!(etag.ends_with("-2"), "{etag}");
    }

    /// rclone answers `-2` to CompleteMultipartUpload, but HEAD (and the
    /// listing) then show the MD5 of the whole object.
    #[test]
    fn b_multipart_etag_is_a_plain_md5() {
        let etag = multipart_etag(Server::B);
        assert!(etag.len() == 32 && etag.chars().all(|c| c.is_ascii_hexdigit()), "{etag}");
    }

    /// rclone streams parts to its backend in order as soon as it can, and
    /// then refuses to replace one with different bytes (501), which must
    /// not be retried.
    #[test]
    fn b_replacing_a_streamed_part_is_refused_permanently() {
        let store = s3_store(Server::B, &common::unique("replace"));
        let upload = store.begin("obj").unwrap();
        upload.put_part(1, 0, &[&bytes(PART, 7)]).unwrap();
        let e = upload.put_part(1, 0, &[&bytes(PART, 8)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
        assert!(e.msg.contains("HTTP 501") && e.msg.contains("UploadPart 1 of s3://"), "{e}");
        upload.abort().unwrap();
    }

    /// rclone lists pending uploads, and no longer once aborted.
    #[test]
    fn b_aborted_upload_is_not_listed() {
        let prefix = common::unique("mpu");
        let (store, admin) = (s3_store(Server::B, &prefix), admin(Server::B, &prefix));
        let key = admin.key("pending");
        let upload = store.begin("pending").unwrap();
        upload.put_part(1, 0, &[b"some bytes"]).unwrap();
        let before = admin.list_multipart_uploads().unwrap();
        assert_eq!(before.iter().filter(|(k, _)| *k == key).count(), 1, "{before:?}");
        upload.abort().unwrap();
        let after = admin.list_multipart_uploads().unwrap();
        assert!(!after.iter().any(|(k, _)| *k == key), "{after:?}");
    }

    /// s3s-fs does not implement ListMultipartUploads (501).
    #[test]
    fn a_list_multipart_uploads_is_unsupported() {
        let e = admin(Server::A, &common::unique("mpu")).list_multipart_uploads().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
        assert!(e.msg.contains("501") && e.msg.contains("does not support ListMultipartUploads"), "{e}");
    }
}

// ---------------------------------------------------------------------------
// Misbehaving servers: a socket that stalls, resets or stops mid-body

mod faults {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    /// Serve every connection to a fresh port with `handle`, in the background.
    fn serve(handle: fn(TcpStream)) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || handle(conn));
            }
        });
        endpoint
    }

    /// Read the request head (enough for a bodiless GET).
    fn read_head(conn: &mut TcpStream) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
            head.push(byte[0]);
        }
    }

    fn store(endpoint: String) -> S3Store {
        S3Store::new(S3Config {
            endpoint: Some(endpoint),
            bucket: "b".to_string(),
            prefix: "p".to_string(),
            region: "us-east-1".to_string(),
            path_style: true,
            access_key_id: "AKIDFAULTS".to_string(),
            secret_access_key: "faults-secret".to_string(),
            session_token: None,
            trusted_ca_pem: None,
            insecure_skip_verify: false,
            sse_customer: None,
            credential_chain: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_millis(700),
            write: Default::default(),
        })
        .unwrap()
    }

    #[test]
    fn a_silent_server_times_out_transiently() {
        let endpoint = serve(|mut conn| {
            read_head(&mut conn);
            std::thread::sleep(Duration::from_secs(5));
        });
        let e = store(endpoint.clone()).list().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient, "{e}");
        assert!(e.msg.contains("timed out") && e.msg.contains(&endpoint), "{e}");
        assert!(!e.msg.contains("AKIDFAULTS") && !e.msg.contains("X-Amz"), "{e}");
    }

    #[test]
    fn a_closed_connection_is_transient() {
        let endpoint = serve(|mut conn| {
            read_head(&mut conn);
            drop(conn);
        });
        let e = store(endpoint).load("x", 0, None).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    }

    #[test]
    fn a_5xx_without_s3_body_is_transient() {
        let endpoint = serve(|mut conn| {
            read_head(&mut conn);
            let _ = conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 5\r\n\r\noops!");
        });
        let e = store(endpoint).list().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient, "{e}");
        assert!(e.msg.contains("HTTP 502 Bad Gateway"), "{e}");
    }

    #[test]
    fn slow_down_is_transient() {
        let endpoint = serve(|mut conn| {
            read_head(&mut conn);
            let body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            let head = format!("HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n", body.len());
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body.as_bytes());
        });
        let e = store(endpoint).load("x", 0, None).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Transient, "{e}");
        assert!(e.msg.contains("HTTP 503 SlowDown: Please reduce your request rate."), "{e}");
    }

    /// A download that stops mid-body fails the read, naming the object,
    /// after `request_timeout` without data.
    #[test]
    fn a_stalled_download_fails_the_read() {
        let endpoint = serve(|mut conn| {
            read_head(&mut conn);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789");
            std::thread::sleep(Duration::from_secs(5));
        });
        let mut reader = store(endpoint).load("x", 0, None).unwrap();
        let mut got = Vec::new();
        let e = reader.read_to_end(&mut got).unwrap_err();
        assert_eq!(got, b"0123456789");
        assert!(e.to_string().contains("GetObject of s3://b/p/v2/x"), "{e}");
    }

    /// The overall timeout does not cut a download that keeps flowing.
    #[test]
    fn a_slow_but_steady_download_is_not_cut() {
        let endpoint = serve(|mut conn| {
            read_head(&mut conn);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n");
            for b in b"steadily" {
                std::thread::sleep(Duration::from_millis(200));
                let _ = conn.write_all(&[*b]);
            }
        });
        let mut got = Vec::new();
        store(endpoint).load("x", 0, None).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, b"steadily");
    }
}

// ---------------------------------------------------------------------------
// TLS: a throwaway CA and a throwaway `rclone serve s3 --cert --key`

mod tls {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    struct TlsServer {
        child: Child,
        dir: PathBuf,
        endpoint: String,
        ca_pem: Vec<u8>,
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A CA (`ca.pem`) and a server certificate for IP 127.0.0.1 signed by it.
    fn make_ca_and_cert(dir: &Path, tag: &str) {
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let subj = format!("/CN=ebr-test-ca-{tag}");
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        a.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", &subj]);
        openssl(dir, &a);
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
        openssl(dir, &a);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
    }

    fn start() -> TlsServer {
        let dir = std::env::temp_dir().join(common::unique("ebr-store-tls"));
        std::fs::create_dir_all(dir.join("root/tls")).unwrap();
        make_ca_and_cert(&dir, "server");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(common::env("EBR_RCLONE_BIN"))
            .env_remove("AWS_CA_BUNDLE")
            .args(["serve", "s3", "--config", "/dev/null", "--addr", &addr, "--auth-key", "tlskey,tlssecret"])
            .args(["--cert", "server.pem", "--key", "server.key", "root"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rclone serve s3");
        let ca_pem = std::fs::read(dir.join("ca.pem")).unwrap();
        let server = TlsServer { child, dir, endpoint: format!("https://{addr}"), ca_pem };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "rclone serve s3 did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn config(server: &TlsServer) -> S3Config {
        S3Config {
            endpoint: Some(server.endpoint.clone()),
            bucket: "tls".to_string(),
            prefix: common::unique("tls"),
            region: "us-east-1".to_string(),
            path_style: true,
            access_key_id: "tlskey".to_string(),
            secret_access_key: "tlssecret".to_string(),
            session_token: None,
            trusted_ca_pem: None,
            insecure_skip_verify: false,
            sse_customer: None,
            credential_chain: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            write: Default::default(),
        }
    }

    fn round_trip(store: &S3Store) {
        store::save(store, "x", b"over tls").unwrap();
        assert_eq!(read_all(store, "x", 0), b"over tls");
        assert_eq!(read_all(store, "x", 5), b"tls");
        store.delete("x").unwrap();
    }

    #[test]
    fn trusted_ca_no_ca_wrong_ca_and_skip_verify() {
        let server = start();

        // The CA (after an unrelated certificate: every one in the PEM counts).
        let other_dir = server.dir.join("other");
        std::fs::create_dir_all(&other_dir).unwrap();
        make_ca_and_cert(&other_dir, "other");
        let other_ca = std::fs::read(other_dir.join("ca.pem")).unwrap();
        let mut bundle = other_ca.clone();
        bundle.extend_from_slice(&server.ca_pem);
        let mut cfg = config(&server);
        cfg.trusted_ca_pem = Some(bundle);
        round_trip(&S3Store::new(cfg).unwrap());

        // The built-in roots do not know the throwaway CA.
        let store = S3Store::new(config(&server)).unwrap();
        let e = store.list().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
        assert!(e.msg.contains("certificate") && e.msg.contains(&server.endpoint), "{e}");

        // Another CA only.
        let mut cfg = config(&server);
        cfg.trusted_ca_pem = Some(other_ca);
        let e = S3Store::new(cfg).unwrap().load("x", 0, None).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
        assert!(e.msg.contains("certificate"), "{e}");

        let mut cfg = config(&server);
        cfg.insecure_skip_verify = true;
        round_trip(&S3Store::new(cfg).unwrap());
    }
}
