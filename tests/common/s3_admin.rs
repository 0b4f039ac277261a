//! S3 calls that only tests make: create and delete a bucket, HEAD an
//! object, list pending multipart uploads, and a proxy that serves listings
//! in small pages. They stay out of the shipped `S3Store`, which never needs
//! them. Requests are presigned by rusty-s3 from the test's own `S3Config`
//! and sent by ureq, as the store does; errors name the operation, bucket,
//! key and endpoint, never the presigned URL (it carries the access key).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use etcd_backup_restore::store::s3::S3Config;
use etcd_backup_restore::store::{Error, ErrorKind, Result};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::{Server, s3_config};

/// Presigned URLs are used at once; a short validity is plenty.
const EXPIRY: Duration = Duration::from_secs(600);

/// Test-only S3 operations on one bucket and `<prefix>/v2/`. Plain HTTP
/// without SSE-C: what the local servers of `scripts/env` need.
pub struct S3Admin {
    bucket: Bucket,
    credentials: Credentials,
    agent: ureq::Agent,
    endpoint: String,
    key_prefix: String,
}

/// `server`'s own bucket and credentials, under `prefix`.
pub fn admin(server: Server, prefix: &str) -> S3Admin {
    S3Admin::new(&s3_config(server, prefix))
}

/// A response: status, ETag and Content-Length headers, and the body.
struct Reply {
    status: u16,
    etag: Option<String>,
    length: Option<u64>,
    body: String,
}

impl S3Admin {
    pub fn new(cfg: &S3Config) -> S3Admin {
        let endpoint = cfg.endpoint.as_deref().expect("tests run against a given endpoint").trim_end_matches('/');
        let style = if cfg.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let url = endpoint.parse().unwrap_or_else(|e| panic!("S3 endpoint {endpoint}: {e}"));
        let bucket = Bucket::new(url, style, cfg.bucket.clone(), cfg.region.clone())
            .unwrap_or_else(|e| panic!("bucket {} at {endpoint}: {e}", cfg.bucket));
        let credentials = match &cfg.session_token {
            Some(token) => Credentials::new_with_token(&cfg.access_key_id, &cfg.secret_access_key, token),
            None => Credentials::new(&cfg.access_key_id, &cfg.secret_access_key),
        };
        let prefix = cfg.prefix.trim_end_matches('/');
        let key_prefix = if prefix.is_empty() { "v2/".to_string() } else { format!("{prefix}/v2/") };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(cfg.request_timeout))
            .build()
            .into();
        S3Admin { bucket, credentials, agent, endpoint: endpoint.to_string(), key_prefix }
    }

    /// The object key for `name`: `<prefix>/v2/<name>`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.key_prefix)
    }

    /// CreateBucket. A bucket that already exists and that we can use is fine.
    pub fn create_bucket(&self) -> Result<()> {
        let what = format!("CreateBucket s3://{} at {}", self.bucket.name(), self.endpoint);
        let action = self.bucket.create_bucket(&self.credentials);
        let body = action.body();
        match self.call(&what, "PUT", action.sign(EXPIRY), Some(body.as_bytes())) {
            Ok(_) => Ok(()),
            Err(e) if e.msg.contains("BucketAlreadyOwnedByYou") => Ok(()),
            // What s3s-fs and rclone say about a bucket of ours: fine if we can use it.
            Err(e) if e.msg.contains("BucketAlreadyExists") => {
                let url = self.bucket.head_bucket(Some(&self.credentials)).sign(EXPIRY);
                self.call(&what, "HEAD", url, None).map(drop).map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }

    /// DeleteBucket; the bucket must be empty.
    pub fn delete_bucket(&self) -> Result<()> {
        let what = format!("DeleteBucket s3://{} at {}", self.bucket.name(), self.endpoint);
        self.call(&what, "DELETE", self.bucket.delete_bucket(&self.credentials).sign(EXPIRY), None).map(drop)
    }

    /// HeadObject: the object's size and its ETag without quotes.
    pub fn head(&self, name: &str) -> Result<(u64, String)> {
        let key = self.key(name);
        let what = format!("HeadObject of s3://{}/{key} at {}", self.bucket.name(), self.endpoint);
        let reply =
            self.call(&what, "HEAD", self.bucket.head_object(Some(&self.credentials), &key).sign(EXPIRY), None)?;
        let size = reply
            .length
            .ok_or_else(|| Error::new(ErrorKind::Permanent, format!("{what}: no Content-Length in the response")))?;
        Ok((size, reply.etag.unwrap_or_default().trim_matches('"').to_string()))
    }

    /// ListMultipartUploads under `<prefix>/v2/`: (key, upload id) of every
    /// upload begun and neither completed nor aborted. Not every server
    /// implements it (s3s-fs answers 501 NotImplemented).
    pub fn list_multipart_uploads(&self) -> Result<Vec<(String, String)>> {
        let what =
            format!("ListMultipartUploads of s3://{}/{} at {}", self.bucket.name(), self.key_prefix, self.endpoint);
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        loop {
            // rusty-s3 has no ListMultipartUploads; it is ListObjectsV2's
            // `GET /<bucket>/` with another query string.
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            let q = action.query_mut();
            q.remove("list-type");
            q.remove("encoding-type");
            q.insert("uploads", "");
            q.insert("prefix", self.key_prefix.as_str());
            if let Some((k, u)) = &marker {
                q.insert("key-marker", k.clone());
                q.insert("upload-id-marker", u.clone());
            }
            let body = match self.call(&what, "GET", action.sign(EXPIRY), None) {
                Err(e) if e.msg.contains(": HTTP 501 ") => {
                    let msg = format!("{}; this server does not support ListMultipartUploads", e.msg);
                    return Err(Error::new(ErrorKind::Permanent, msg));
                }
                other => other?.body,
            };
            for upload in elements(&body, "Upload") {
                let key = text(upload, "Key");
                if key.starts_with(&self.key_prefix) {
                    out.push((key.to_string(), text(upload, "UploadId").to_string()));
                }
            }
            if text(&body, "IsTruncated") != "true" {
                return Ok(out);
            }
            let next = (text(&body, "NextKeyMarker").to_string(), text(&body, "NextUploadIdMarker").to_string());
            if next.0.is_empty() || marker.as_ref() == Some(&next) {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!("{what}: truncated listing without a next marker"),
                ));
            }
            marker = Some(next);
        }
    }

    /// Start a proxy on 127.0.0.1 that answers each ListObjectsV2 request
    /// with the real server's answer to the same listing re-signed with
    /// `max-keys=page`; returns its endpoint. The shipped `S3Store` never
    /// asks for small pages (the server's default is 1000 keys), so this is
    /// how a test makes its listing paginate after a few keys. Listings
    /// only: anything else gets 501. Stops with the test process.
    pub fn paging_proxy(self, page: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn);
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let reply = self.relay_listing(&request_line, page);
                let (status, body) = match &reply {
                    Ok(r) => (r.status, r.body.as_str()),
                    Err(e) => (501, e.msg.as_str()),
                };
                let head =
                    format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = reader.get_mut().write_all(format!("{head}{body}").as_bytes());
            }
        });
        url
    }

    /// `GET <target> HTTP/1.1` of a listing, sent on with `max-keys=page`.
    fn relay_listing(&self, request_line: &str, page: usize) -> Result<Reply> {
        let what = format!("paged ListObjectsV2 of s3://{} at {}", self.bucket.name(), self.endpoint);
        let refused = || Error::new(ErrorKind::Permanent, format!("{what}: only listings pass this proxy"));
        let target = match request_line.split_whitespace().collect::<Vec<_>>()[..] {
            ["GET", target, _] => target,
            _ => return Err(refused()),
        };
        let asked = self.bucket.base_url().join(target).map_err(|_| refused())?;
        let query: Vec<(String, String)> = asked.query_pairs().into_owned().collect();
        let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        if param("list-type") != Some("2") {
            return Err(refused());
        }
        let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
        action.with_max_keys(page);
        if let Some(prefix) = param("prefix") {
            action.with_prefix(prefix);
        }
        if let Some(token) = param("continuation-token") {
            action.with_continuation_token(token);
        }
        self.send(&what, "GET", action.sign(EXPIRY), None)
    }

    /// Send a request and fail on a status other than 2xx.
    fn call(&self, what: &str, method: &str, url: impl AsRef<str>, body: Option<&[u8]>) -> Result<Reply> {
        let reply = self.send(what, method, url, body)?;
        if (200..300).contains(&reply.status) {
            return Ok(reply);
        }
        let code = text(&reply.body, "Code");
        let kind = match reply.status {
            404 if code != "NoSuchBucket" => ErrorKind::NotFound,
            // 501: the server does not do that; asking again won't help.
            501 => ErrorKind::Permanent,
            s if s >= 500 || s == 429 => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        };
        Err(Error::new(kind, format!("{what}: HTTP {} {code}", reply.status).trim_end()))
    }

    /// Send a request; any answer is a `Reply`, only a transport failure an error.
    fn send(&self, what: &str, method: &str, url: impl AsRef<str>, body: Option<&[u8]>) -> Result<Reply> {
        let request = ureq::http::Request::builder().method(method).uri(url.as_ref());
        let sent = match body {
            Some(bytes) => self.agent.run(request.body(bytes).expect("a valid request")),
            None => self.agent.run(request.body(()).expect("a valid request")),
        };
        // Only the error's kind: its text may quote the presigned URL.
        let resp = sent.map_err(|e| Error::new(ErrorKind::Transient, format!("{what}: {}", transport(&e))))?;
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (etag, length) = (header("etag"), header("content-length").and_then(|v| v.parse().ok()));
        let status = resp.status().as_u16();
        let body = if method == "HEAD" { String::new() } else { resp.into_body().read_to_string().unwrap_or_default() };
        Ok(Reply { status, etag, length, body })
    }
}

/// What went wrong in transport, without the text of ureq's error (which
/// may quote the presigned URL).
fn transport(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => format!("I/O error: {}", io.kind()),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        _ => "the request failed in transport".to_string(),
    }
}

/// The raw content of each `<tag>…</tag>` in `doc`. The few answers read
/// here carry test-made keys and ids, which need no unescaping.
fn elements<'a>(doc: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    doc.split(open.as_str())
        .skip(1)
        .filter_map(|rest| rest.split_once(close.as_str()).map(|(content, _)| content))
        .collect()
}

/// The content of the first `<tag>` in `doc`, or "".
fn text<'a>(doc: &'a str, tag: &str) -> &'a str {
    elements(doc, tag).first().copied().unwrap_or_default()
}
