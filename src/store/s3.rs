//! S3-compatible object storage over ureq (blocking, pooled, rustls) with
//! rusty-s3 building the SigV4-signed requests.
//!
//! Every request is a presigned URL (query-string SigV4, `UNSIGNED-PAYLOAD`),
//! so part bodies are streamed without hashing them first. Presigned URLs
//! carry the access key id and the signature in their query string: they are
//! never logged nor put into an error, which name the bucket, key and
//! endpoint instead. No call retries by itself; callers use
//! [`RetryPolicy`](super::RetryPolicy).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use md5::Digest as _;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use super::{Error, ErrorKind, ObjectInfo, Result, Store, Upload};
use crate::credentials::chain::Provider;
use crate::xml;

/// What requests are signed with: fixed keys, or a chain's current ones.
#[derive(Clone)]
enum Keys {
    Fixed(Credentials),
    Chain(Arc<Provider>),
}

/// Everything needed to talk to one S3 endpoint. Each endpoint gets its own
/// HTTP agent built from its own `S3Config`, so one endpoint's TLS settings
/// never affect the other's.
#[derive(Clone)]
pub struct S3Config {
    /// Base URL of an S3-compatible server (`http://127.0.0.1:19000`), or
    /// `None` for AWS itself (`https://s3.<region>.amazonaws.com`).
    pub endpoint: Option<String>,
    pub bucket: String,
    /// The store prefix without `/v2`; may be empty.
    pub prefix: String,
    pub region: String,
    /// Path-style (`<endpoint>/<bucket>/<key>`) instead of virtual-host URLs.
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// PEM bundle that replaces the built-in web PKI roots.
    pub trusted_ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
    /// SSE-C: algorithm (`AES256`) and the base64 customer key.
    pub sse_customer: Option<(String, String)>,
    /// When set, the keys come from this chain (refreshed before they
    /// expire) and the three key fields above are not used.
    pub credential_chain: Option<crate::credentials::chain::ChainSpec>,
    pub connect_timeout: Duration,
    /// Deadline for one whole request, from connecting to the end of its
    /// response body: a part upload, a listing page, a ranged GET.
    pub request_timeout: Duration,
    /// How new objects are written: object lock, SSE-KMS, storage class.
    pub write: WriteOptions,
}

/// What every object this store writes gets, set on CreateMultipartUpload
/// (every write is a multipart upload, small ones included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Object lock: the mode (`GOVERNANCE` or `COMPLIANCE`) and how long
    /// after the upload starts each object is retained.
    pub object_lock: Option<(String, Duration)>,
    /// SSE-KMS: the key id or ARN (`aws:kms` encryption).
    pub sse_kms_key_id: Option<String>,
    /// `x-amz-storage-class`, e.g. `STANDARD_IA`.
    pub storage_class: Option<String>,
}

impl std::fmt::Debug for S3Config {
    // Hand-written so that secrets can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .field("trusted_ca_pem", &self.trusted_ca_pem.as_ref().map(|p| p.len()))
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("sse_customer", &self.sse_customer.as_ref().map(|(a, _)| a))
            .field("credential_chain", &self.credential_chain.as_ref().map(|c| &c.endpoint))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("write", &self.write)
            .finish()
    }
}

/// How long a presigned URL stays valid. It only has to outlive the start of
/// the request (S3 checks it when the request arrives), so an hour leaves
/// room for clock skew without keeping URLs valid for days.
const PRESIGN_EXPIRY: Duration = Duration::from_secs(3600);

/// At most this much of an error response body is read to find its code.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;

/// Idle connections kept per host: enough for ~16 parallel part uploads.
const POOL_PER_HOST: usize = 32;

/// ureq's resolver, except that an IP literal (`127.0.0.1:9000`, `[::1]`)
/// is taken as is: the default bounds each lookup by its timeout with a
/// thread per new connection, which a restore of 100 deltas opened 100 times.
#[derive(Debug, Default)]
struct LiteralResolver(DefaultResolver);

impl Resolver for LiteralResolver {
    fn resolve(
        &self,
        uri: &http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> std::result::Result<ResolvedSocketAddrs, ureq::Error> {
        let literal = uri.authority().and_then(|a| {
            let ip = a.host().trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok()?;
            let port = a.port_u16().or(match uri.scheme_str()? {
                "https" => Some(443),
                "http" => Some(80),
                _ => None,
            })?;
            Some(std::net::SocketAddr::new(ip, port))
        });
        match literal {
            Some(addr) => {
                let mut out = self.empty();
                out.push(addr);
                Ok(out)
            }
            None => self.0.resolve(uri, config, timeout),
        }
    }
}

/// A listing stops with an error beyond this many pages or objects: a
/// server handing out new continuation tokens forever would otherwise hold
/// `snapshot list` and `restore` for ever. 10,000 pages of S3's 1,000 keys
/// are ten million objects, far more than years of per-minute deltas.
const MAX_LIST_PAGES: usize = 10_000;
const MAX_LIST_OBJECTS: usize = 10_000_000;

/// S3 numbers parts 1..=10000.
pub const MAX_PARTS: u32 = 10_000;

const SSE_ALGORITHM: &str = "x-amz-server-side-encryption-customer-algorithm";
const SSE_KEY: &str = "x-amz-server-side-encryption-customer-key";
const SSE_KEY_MD5: &str = "x-amz-server-side-encryption-customer-key-md5";

/// A store bound to `s3://<bucket>/<prefix>/v2/` at one endpoint.
pub struct S3Store {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    agent: ureq::Agent,
    bucket: Bucket,
    credentials: Keys,
    /// `<prefix>/v2/`, or `v2/` for an empty prefix.
    key_prefix: String,
    /// The endpoint as shown in messages: no userinfo, no query.
    endpoint: String,
    /// SSE-C headers (name, value), sent (and signed) on create-multipart,
    /// upload-part and get.
    sse_headers: Vec<(&'static str, String)>,
    request_timeout: Duration,
    /// Strings that must never appear in a message.
    secrets: Vec<String>,
    write: WriteOptions,
    /// Set in the all-versions view: the version id of each name listed
    /// last, which `load` then reads.
    versions: Option<Arc<Mutex<HashMap<String, String>>>>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store").field("location", &self.location()).finish()
    }
}

impl S3Store {
    /// Build a store and its own HTTP agent from `cfg`. Nothing is sent.
    pub fn new(cfg: S3Config) -> Result<S3Store> {
        let endpoint_url = match &cfg.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://s3.{}.amazonaws.com", cfg.region),
        };
        let endpoint = display_endpoint(&endpoint_url);
        let style = if cfg.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let parsed = endpoint_url
            .parse()
            .map_err(|e| Error::new(ErrorKind::Permanent, format!("S3 endpoint {endpoint} is not a valid URL: {e}")))?;
        let bucket = Bucket::new(parsed, style, cfg.bucket.clone(), cfg.region.clone()).map_err(|e| {
            Error::new(ErrorKind::Permanent, format!("S3 endpoint {endpoint} with bucket {}: {e}", cfg.bucket))
        })?;

        let credentials = match cfg.credential_chain.clone() {
            // Shared by every request and sibling: one refresh serves them all.
            Some(spec) => Keys::Chain(Arc::new(Provider::new(spec))),
            None => Keys::Fixed(match cfg.session_token.as_deref().filter(|t| !t.is_empty()) {
                Some(token) => Credentials::new_with_token(&cfg.access_key_id, &cfg.secret_access_key, token),
                None => Credentials::new(&cfg.access_key_id, &cfg.secret_access_key),
            }),
        };

        let prefix = cfg.prefix.trim_end_matches('/');
        let key_prefix = if prefix.is_empty() { "v2/".to_string() } else { format!("{prefix}/v2/") };

        let mut secrets = vec![cfg.access_key_id.clone(), cfg.secret_access_key.clone()];
        secrets.extend(cfg.session_token.clone());

        let mut sse_headers = Vec::new();
        if let Some((algorithm, key_b64)) = &cfg.sse_customer {
            let key = B64
                .decode(key_b64.trim())
                .map_err(|_| Error::new(ErrorKind::Permanent, "the SSE-C customer key is not valid base64"))?;
            let md5 = B64.encode(md5::Md5::digest(&key));
            sse_headers.push((SSE_ALGORITHM, algorithm.clone()));
            sse_headers.push((SSE_KEY, key_b64.trim().to_string()));
            sse_headers.push((SSE_KEY_MD5, md5));
            secrets.push(key_b64.clone());
            secrets.push(key_b64.trim().to_string());
        }
        // Redacting a one- or two-letter string would mangle every message
        // and protect nothing.
        secrets.retain(|s| s.len() >= 3);

        let tls = tls_config(&cfg, &endpoint)?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_global(Some(cfg.request_timeout))
            .max_idle_connections(2 * POOL_PER_HOST)
            .max_idle_connections_per_host(POOL_PER_HOST)
            // A redirect means a wrong endpoint or region; following it
            // would re-send a presigned URL elsewhere. Report it instead.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .build();
        let agent = ureq::Agent::with_parts(agent, DefaultConnector::default(), LiteralResolver::default());

        Ok(S3Store {
            inner: Arc::new(Inner {
                agent,
                bucket,
                credentials,
                key_prefix,
                endpoint,
                sse_headers,
                request_timeout: cfg.request_timeout,
                secrets,
                write: cfg.write.clone(),
                versions: None,
            }),
        })
    }

    /// The object key for `name`: `<prefix>/v2/<name>`.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.inner.key_prefix)
    }
}

impl Store for S3Store {
    fn sibling(&self, dir: &str) -> Arc<dyn Store> {
        let base = self.inner.key_prefix.strip_suffix("v2/").unwrap_or(&self.inner.key_prefix);
        let key_prefix = format!("{base}{dir}/");
        Arc::new(S3Store { inner: Arc::new(Inner { key_prefix, versions: None, ..(*self.inner).clone() }) })
    }

    fn all_versions(&self) -> Option<Arc<dyn Store>> {
        let versions = Some(Arc::new(Mutex::new(HashMap::new())));
        Some(Arc::new(S3Store { inner: Arc::new(Inner { versions, ..(*self.inner).clone() }) }))
    }

    fn preflight(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.write.object_lock.is_none() {
            return Ok(());
        }
        let ctx = format!("GetObjectLockConfiguration of s3://{} at {}", inner.bucket.name(), inner.endpoint);
        let refuse = |why: &str| {
            inner.err(
                ErrorKind::Permanent,
                format!(
                    "{ctx}: {why}: --object-lock-mode needs a bucket created with object lock enabled \
                     (x-amz-bucket-object-lock-enabled: true)"
                ),
            )
        };
        let body = match inner.bucket_get(&ctx, &[("object-lock", "")]) {
            Ok(body) => body,
            Err(e) if e.msg.contains("ObjectLockConfigurationNotFound") => {
                return Err(refuse("object lock is not enabled on this bucket"));
            }
            Err(e) if e.msg.contains("HTTP 501") || e.msg.contains("NotImplemented") => {
                return Err(refuse("the server does not support object lock"));
            }
            Err(e) => return Err(e),
        };
        match xml::text(&body, "ObjectLockEnabled").as_deref() {
            Some("Enabled") => Ok(()),
            _ => Err(refuse("object lock is not enabled on this bucket")),
        }
    }

    fn location(&self) -> String {
        format!("s3://{}/{} at {}", self.inner.bucket.name(), self.inner.key_prefix, self.inner.endpoint)
    }

    fn begin(&self, name: &str) -> Result<Box<dyn Upload>> {
        let inner = &self.inner;
        check_name(name)?;
        let key = self.key(name);
        let ctx = inner.ctx("CreateMultipartUpload", &key);
        let creds = inner.creds(&ctx)?;
        let mut action = inner.bucket.create_multipart_upload(Some(&creds), &key);
        inner.add_sse(&mut action);
        let lock = inner.write.object_lock.as_ref().map(|(mode, retention)| {
            // Counted from the start of the upload: never later than asked.
            let until = std::time::SystemTime::now() + *retention;
            (mode.clone(), crate::time::utc_rfc3339(until))
        });
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if let Some((mode, until)) = &lock {
            extra.push(("x-amz-object-lock-mode", mode));
            extra.push(("x-amz-object-lock-retain-until-date", until));
        }
        if let Some(id) = &inner.write.sse_kms_key_id {
            extra.push(("x-amz-server-side-encryption", "aws:kms"));
            extra.push(("x-amz-server-side-encryption-aws-kms-key-id", id));
        }
        if let Some(class) = &inner.write.storage_class {
            extra.push(("x-amz-storage-class", class));
        }
        for (name, value) in &extra {
            action.headers_mut().insert(*name, *value);
        }
        let url = action.sign(PRESIGN_EXPIRY);
        let mut headers = inner.sse_refs();
        headers.extend(extra.iter().copied());
        let resp = inner.exec(&ctx, http::Method::POST, url.as_str(), &headers, Some(&[]), Kind::Object)?;
        let body = inner.read_small_body(&ctx, resp)?;
        if let Some(e) = inner.error_in_body(&ctx, &body) {
            return Err(e);
        }
        let upload_id = xml::text(&body, "UploadId")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| inner.err(ErrorKind::Permanent, format!("{ctx}: no UploadId in the response")))?;
        Ok(Box::new(S3Upload { inner: self.inner.clone(), key, upload_id, etags: Mutex::new(BTreeMap::new()), lock }))
    }

    fn load(&self, name: &str, offset: u64, length: Option<u64>) -> Result<Box<dyn Read + Send>> {
        let inner = &self.inner;
        let key = self.key(name);
        let range = match length {
            Some(0) => return Ok(Box::new(io::empty())),
            Some(n) => format!("bytes={offset}-{}", offset + n - 1),
            None if offset > 0 => format!("bytes={offset}-"),
            None => String::new(),
        };
        let ctx = match length {
            Some(n) => inner.ctx(&format!("GetObject of bytes {offset}..{}", offset + n), &key),
            None if offset > 0 => inner.ctx(&format!("GetObject from byte {offset}"), &key),
            None => inner.ctx("GetObject", &key),
        };
        let creds = inner.creds(&ctx)?;
        let mut action = inner.bucket.get_object(Some(&creds), &key);
        inner.add_sse(&mut action);
        let version = inner.version_of(name);
        if let Some(v) = &version {
            action.query_mut().insert("versionId", v.as_str());
        }
        let url = action.sign(PRESIGN_EXPIRY);
        let mut headers = inner.sse_refs();
        if !range.is_empty() {
            headers.push(("range", range.as_str()));
        }
        // A ranged GET is one request: `--chunk-upload-timeout` bounds it
        // with its body. Only an open-ended GET streams for as long as the
        // caller reads.
        let kind = if length.is_some() { Kind::Object } else { Kind::Download };
        let resp = inner.exec(&ctx, http::Method::GET, url.as_str(), &headers, None, kind)?;
        let status = resp.status().as_u16();
        // A 200 to a ranged GET is either the range anyway (rclone answers
        // 200 with a Content-Range) or the whole object (the range was
        // ignored), whose first `offset` bytes are then skipped.
        let skip = if !range.is_empty() && status == 200 {
            match header(&resp, "content-range") {
                Some(cr) if cr.starts_with(&format!("bytes {offset}-")) => 0,
                Some(_) => {
                    drain(resp);
                    return Err(inner.err(ErrorKind::Permanent, format!("{ctx}: the server answered another range")));
                }
                None => offset,
            }
        } else {
            0
        };
        // The body ends exactly where the range does in the usual answer.
        let release = inner.reuse_reads()
            && skip == 0
            && length.is_some()
            && header(&resp, "content-length").and_then(|v| v.parse().ok()) == length;
        let mut reader = ContextReader {
            inner: resp.into_body().into_reader(),
            ctx,
            secrets: inner.secrets.clone(),
            left: None,
            release,
        };
        if skip > 0 {
            let skipped = io::copy(&mut (&mut reader).take(skip), &mut io::sink())
                .map_err(|e| inner.err(ErrorKind::Transient, e.to_string()))?;
            if skipped < skip {
                return Err(inner.err(
                    ErrorKind::Permanent,
                    format!("{}: the object is shorter than the offset {offset}", reader.ctx),
                ));
            }
        }
        // Also bounds a server that ignored the end of the range.
        reader.left = length;
        Ok(Box::new(reader))
    }

    fn list(&self) -> Result<Vec<ObjectInfo>> {
        let inner = &self.inner;
        if let Some(versions) = &inner.versions {
            let mut out = Vec::new();
            let mut map = HashMap::new();
            // Each key's versions come newest first: its first `Version` is
            // the newest one that is not a delete marker.
            for v in inner.list_versions(&inner.key_prefix)?.into_iter().filter(|v| !v.delete_marker) {
                let Some(name) = v.key.strip_prefix(&inner.key_prefix) else { continue };
                if name.is_empty() || name.contains('/') || map.contains_key(name) {
                    continue;
                }
                map.insert(name.to_string(), v.version_id);
                out.push(ObjectInfo { name: name.to_string(), size: v.size });
            }
            *versions.lock().unwrap_or_else(|p| p.into_inner()) = map;
            return Ok(out);
        }
        let ctx = format!("ListObjectsV2 of s3://{}/{} at {}", inner.bucket.name(), inner.key_prefix, inner.endpoint);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut seen_tokens = std::collections::HashSet::new();
        for _page in 0..MAX_LIST_PAGES {
            let creds = inner.creds(&ctx)?;
            let mut action = inner.bucket.list_objects_v2(Some(&creds));
            action.with_prefix(inner.key_prefix.as_str());
            // Keys come back XML-escaped instead of URL-encoded: s3s-fs says
            // `EncodingType=url` but sends keys as they are, so decoding made
            // `+` a space and `%25` a `%`, and such keys were never listed.
            // Our keys have no control characters (the prefix is checked), so
            // XML carries them; a server that encodes anyway is still decoded.
            action.query_mut().remove("encoding-type");
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(PRESIGN_EXPIRY);
            let resp = inner.exec(&ctx, http::Method::GET, url.as_str(), &[], None, Kind::Bucket)?;
            let body = inner.read_small_body(&ctx, resp)?;
            if let Some(e) = inner.error_in_body(&ctx, &body) {
                return Err(e);
            }
            let url_encoded = xml::text(&body, "EncodingType").as_deref() == Some("url");
            for entry in xml::elements(&body, "Contents") {
                let Some(mut key) = xml::text(entry, "Key") else {
                    continue;
                };
                if url_encoded {
                    key = url_decode(&key);
                }
                let Some(name) = key.strip_prefix(&inner.key_prefix) else {
                    continue;
                };
                if name.is_empty() || name.contains('/') {
                    continue;
                }
                let size = xml::text(entry, "Size").and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
                    inner.err(ErrorKind::Permanent, format!("{ctx}: no valid Size for an object in the response"))
                })?;
                out.push(ObjectInfo { name: name.to_string(), size });
            }
            if out.len() > MAX_LIST_OBJECTS {
                return Err(inner.err(
                    ErrorKind::Permanent,
                    format!("{ctx}: more than {MAX_LIST_OBJECTS} objects listed; giving up"),
                ));
            }
            if xml::text(&body, "IsTruncated").as_deref() != Some("true") {
                return Ok(out);
            }
            let Some(t) = xml::text(&body, "NextContinuationToken").filter(|t| !t.is_empty()) else {
                return Err(
                    inner.err(ErrorKind::Transient, format!("{ctx}: truncated listing without a continuation token"))
                );
            };
            // Any earlier token again is a loop: asking again would repeat it.
            if !seen_tokens.insert(t.clone()) {
                return Err(inner.err(
                    ErrorKind::Permanent,
                    format!("{ctx}: the server repeated a continuation token after {} pages", seen_tokens.len()),
                ));
            }
            token = Some(t);
        }
        Err(inner.err(ErrorKind::Permanent, format!("{ctx}: still truncated after {MAX_LIST_PAGES} pages; giving up")))
    }

    fn delete(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        let key = self.key(name);
        if inner.write.object_lock.is_some() {
            // With object lock the bucket is versioned: a plain DELETE only
            // hides the object behind a delete marker. Its versions are
            // deleted instead, which object lock refuses while it retains one.
            return inner.delete_versions(&key);
        }
        let ctx = inner.ctx("DeleteObject", &key);
        let url = inner.bucket.delete_object(Some(&inner.creds(&ctx)?), &key).sign(PRESIGN_EXPIRY);
        match inner.exec(&ctx, http::Method::DELETE, url.as_str(), &[], None, Kind::Object) {
            Ok(resp) => {
                drain(resp);
                Ok(())
            }
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A multipart upload in progress.
struct S3Upload {
    inner: Arc<Inner>,
    key: String,
    upload_id: String,
    /// ETag (as returned, quotes included) per part number.
    etags: Mutex<BTreeMap<u32, String>>,
    /// Object lock mode and retain-until date (RFC 3339) of this object.
    lock: Option<(String, String)>,
}

impl Upload for S3Upload {
    fn put_part(&self, number: u32, offset: u64, data: &[&[u8]]) -> Result<()> {
        let inner = &self.inner;
        let ctx = inner.ctx(&format!("UploadPart {number}"), &self.key);
        if number == 0 || number > MAX_PARTS {
            return Err(Error::new(ErrorKind::Permanent, format!("{ctx}: part numbers go from 1 to {MAX_PARTS}")));
        }
        let len: u64 = data.iter().map(|s| s.len() as u64).sum();
        let creds = inner.creds(&ctx)?;
        let mut action = inner.bucket.upload_part(Some(&creds), &self.key, number as u16, &self.upload_id);
        inner.add_sse(&mut action);
        let mut headers = inner.sse_refs();
        // S3 wants Content-MD5 (or a checksum) on writes under object lock;
        // the part is in memory, so hashing it costs one pass.
        let md5 = self.lock.as_ref().map(|_| {
            let mut h = md5::Md5::new();
            data.iter().for_each(|s| h.update(s));
            B64.encode(h.finalize())
        });
        if let Some(m) = &md5 {
            action.headers_mut().insert("content-md5", m.as_str());
            headers.push(("content-md5", m));
        }
        let url = action.sign(PRESIGN_EXPIRY);
        log::trace!("part {number} of {}: bytes {offset}..{}", self.key, offset + len);
        let mut body = SlicesReader { slices: data, index: 0, pos: 0 };
        let resp = inner.exec_streaming(&ctx, http::Method::PUT, url.as_str(), &headers, &mut body, len)?;
        let etag = header(&resp, "etag").map(str::to_string);
        drain(resp);
        let etag = etag
            .filter(|e| !e.is_empty())
            .ok_or_else(|| inner.err(ErrorKind::Permanent, format!("{ctx}: no ETag in the response")))?;
        self.etags.lock().unwrap_or_else(|p| p.into_inner()).insert(number, etag);
        Ok(())
    }

    fn complete(&self) -> Result<()> {
        let inner = &self.inner;
        let ctx = inner.ctx("CompleteMultipartUpload", &self.key);
        let etags: Vec<String> = {
            let map = self.etags.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.keys().next_back().copied().unwrap_or(0);
            if n == 0 {
                return Err(Error::new(ErrorKind::Permanent, format!("{ctx}: no part was stored")));
            }
            if let Some(missing) = (1..=n).find(|k| !map.contains_key(k)) {
                return Err(Error::new(
                    ErrorKind::Permanent,
                    format!("{ctx}: part {missing} of 1..={n} was never stored"),
                ));
            }
            map.values().cloned().collect()
        };
        let creds = inner.creds(&ctx)?;
        let action = inner.bucket.complete_multipart_upload(
            Some(&creds),
            &self.key,
            &self.upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(PRESIGN_EXPIRY);
        let body = action.body();
        let resp = inner.exec(&ctx, http::Method::POST, url.as_str(), &[], Some(body.as_bytes()), Kind::Upload)?;
        // S3 may answer 200 and still fail: the body is then an <Error>.
        let body = inner.read_small_body(&ctx, resp)?;
        if let Some(e) = inner.error_in_body(&ctx, &body) {
            return Err(e);
        }
        match &self.lock {
            // Set again on the completed object: some servers (moto) ignore
            // the lock headers of CreateMultipartUpload, and an object
            // believed locked must be locked. The same date again is allowed.
            Some((mode, until)) => inner.put_retention(&self.key, mode, until),
            None => Ok(()),
        }
    }

    fn abort(&self) -> Result<()> {
        let inner = &self.inner;
        let ctx = inner.ctx("AbortMultipartUpload", &self.key);
        let url = inner
            .bucket
            .abort_multipart_upload(Some(&inner.creds(&ctx)?), &self.key, &self.upload_id)
            .sign(PRESIGN_EXPIRY);
        let resp = inner.exec(&ctx, http::Method::DELETE, url.as_str(), &[], None, Kind::Upload)?;
        drain(resp);
        Ok(())
    }
}

/// What a request addresses, which decides what a 404 means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The bucket itself (a listing): a 404 is a missing bucket.
    Bucket,
    /// An object: 404 NoSuchKey (or a bodiless 404 to HEAD) is NotFound.
    Object,
    /// An object streamed back whole, for as long as the caller reads: as
    /// `Object`, with each wait bounded instead of the whole transfer.
    Download,
    /// A multipart upload: NoSuchUpload is NotFound.
    Upload,
}

/// One entry of a ListObjectVersions answer.
struct VersionEntry {
    key: String,
    version_id: String,
    size: u64,
    delete_marker: bool,
}

impl Inner {
    /// The version id `load` reads `name` at (all-versions view only).
    fn version_of(&self, name: &str) -> Option<String> {
        let map = self.versions.as_ref()?.lock().unwrap_or_else(|p| p.into_inner());
        // `null` is an object written before versioning: the plain GET reads it.
        map.get(name).filter(|v| v.as_str() != "null").cloned()
    }

    /// GET on the bucket with these query parameters (a subresource such as
    /// `object-lock` or `versions`); the body of a success.
    fn bucket_get(&self, ctx: &str, query: &[(&str, &str)]) -> Result<String> {
        let creds = self.creds(ctx)?;
        // ListObjectsV2 is the bucket GET rusty-s3 signs; its own parameters go.
        let mut action = self.bucket.list_objects_v2(Some(&creds));
        action.query_mut().remove("list-type");
        action.query_mut().remove("encoding-type");
        for (k, v) in query {
            action.query_mut().insert(*k, *v);
        }
        let url = action.sign(PRESIGN_EXPIRY);
        let resp = self.exec(ctx, http::Method::GET, url.as_str(), &[], None, Kind::Bucket)?;
        let body = self.read_small_body(ctx, resp)?;
        match self.error_in_body(ctx, &body) {
            Some(e) => Err(e),
            None => Ok(body),
        }
    }

    /// Every version and delete marker under `prefix` (ListObjectVersions),
    /// in the server's order: by key, each key's newest first.
    fn list_versions(&self, prefix: &str) -> Result<Vec<VersionEntry>> {
        let ctx = format!("ListObjectVersions of s3://{}/{prefix} at {}", self.bucket.name(), self.endpoint);
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        for _page in 0..MAX_LIST_PAGES {
            let mut query = vec![("versions", ""), ("prefix", prefix)];
            if let Some((k, v)) = &marker {
                query.push(("key-marker", k));
                if !v.is_empty() {
                    query.push(("version-id-marker", v));
                }
            }
            let body = self.bucket_get(&ctx, &query)?;
            for (tag, delete_marker) in [("Version", false), ("DeleteMarker", true)] {
                for e in xml::elements(&body, tag) {
                    let (Some(key), Some(version_id)) = (xml::text(e, "Key"), xml::text(e, "VersionId")) else {
                        continue;
                    };
                    let size = xml::text(e, "Size").and_then(|s| s.trim().parse().ok()).unwrap_or(0);
                    out.push(VersionEntry { key, version_id, size, delete_marker });
                }
            }
            if out.len() > MAX_LIST_OBJECTS {
                return Err(self.err(ErrorKind::Permanent, format!("{ctx}: more than {MAX_LIST_OBJECTS} versions")));
            }
            if xml::text(&body, "IsTruncated").as_deref() != Some("true") {
                // Versions then markers were collected per page: restore the
                // key order, keeping each key's versions newest first.
                out.sort_by(|a, b| a.key.cmp(&b.key));
                return Ok(out);
            }
            let next = xml::text(&body, "NextKeyMarker").filter(|k| !k.is_empty()).ok_or_else(|| {
                self.err(ErrorKind::Transient, format!("{ctx}: truncated listing without a NextKeyMarker"))
            })?;
            let next = (next, xml::text(&body, "NextVersionIdMarker").unwrap_or_default());
            if marker.as_ref() == Some(&next) {
                return Err(self.err(ErrorKind::Permanent, format!("{ctx}: the server repeated its markers")));
            }
            marker = Some(next);
        }
        Err(self.err(ErrorKind::Permanent, format!("{ctx}: still truncated after {MAX_LIST_PAGES} pages; giving up")))
    }

    /// Delete every version (and delete marker) of `key`. A version object
    /// lock still retains is left: `Locked`, with the latest retain-until
    /// date among them, once the others are gone.
    fn delete_versions(&self, key: &str) -> Result<()> {
        let mut locked: Option<Error> = None;
        for v in self.list_versions(key)?.into_iter().filter(|v| v.key == key) {
            let ctx = self.ctx(&format!("DeleteObject of version {}", v.version_id), key);
            let creds = self.creds(&ctx)?;
            let mut action = self.bucket.delete_object(Some(&creds), key);
            action.query_mut().insert("versionId", v.version_id.as_str());
            let url = action.sign(PRESIGN_EXPIRY);
            match self.exec(&ctx, http::Method::DELETE, url.as_str(), &[], None, Kind::Object) {
                Ok(resp) => drain(resp),
                Err(e) if e.kind == ErrorKind::NotFound => {}
                // S3 answers 403 AccessDenied for a version under retention.
                Err(e) if e.msg.contains("HTTP 403") && !v.delete_marker => {
                    let until = self.retain_until(key, &v.version_id);
                    let mut e = Error::new(ErrorKind::Locked, format!("{ctx}: still locked: {}", e.msg));
                    e.retain_until = until.clone();
                    if locked.as_ref().is_none_or(|l| l.retain_until < until) {
                        locked = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        locked.map_or(Ok(()), Err)
    }

    /// HeadObject of one version: its `x-amz-object-lock-retain-until-date`.
    fn retain_until(&self, key: &str, version_id: &str) -> Option<String> {
        let ctx = self.ctx("HeadObject", key);
        let creds = self.creds(&ctx).ok()?;
        let mut action = self.bucket.head_object(Some(&creds), key);
        action.query_mut().insert("versionId", version_id);
        self.add_sse(&mut action);
        let url = action.sign(PRESIGN_EXPIRY);
        let resp = self.exec(&ctx, http::Method::HEAD, url.as_str(), &self.sse_refs(), None, Kind::Object).ok()?;
        header(&resp, "x-amz-object-lock-retain-until-date").map(str::to_string)
    }

    /// PutObjectRetention: `key` retained in `mode` until `until`.
    fn put_retention(&self, key: &str, mode: &str, until: &str) -> Result<()> {
        let ctx = self.ctx("PutObjectRetention", key);
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{mode}</Mode>\
             <RetainUntilDate>{until}</RetainUntilDate></Retention>"
        );
        let md5 = B64.encode(md5::Md5::digest(body.as_bytes()));
        let creds = self.creds(&ctx)?;
        let mut action = self.bucket.put_object(Some(&creds), key);
        action.query_mut().insert("retention", "");
        action.headers_mut().insert("content-md5", md5.as_str());
        let url = action.sign(PRESIGN_EXPIRY);
        let headers = [("content-md5", md5.as_str())];
        let resp = self.exec(&ctx, http::Method::PUT, url.as_str(), &headers, Some(body.as_bytes()), Kind::Object)?;
        drain(resp);
        Ok(())
    }

    /// Whether a GET read to its end hands its connection back to the pool:
    /// only over TLS. A new TLS connection costs a handshake (restoring 100
    /// deltas from rclone over TLS: median 0.22-0.23 s with a connection
    /// each, 0.17-0.20 s pooled). A new plain one costs a round trip, and
    /// saves the wait of a server that leaves Nagle on: s3s-fs sends the
    /// tail of an answer on a reused connection only after the client's
    /// delayed ACK (44 ms, in 4 of 10 reads of 100 kB; the same restore from
    /// it took 0.20-0.23 s with a connection each, 0.22-0.24 s pooled).
    fn reuse_reads(&self) -> bool {
        self.bucket.base_url().scheme() == "https"
    }

    fn ctx(&self, what: &str, key: &str) -> String {
        format!("{what} of s3://{}/{key} at {}", self.bucket.name(), self.endpoint)
    }

    /// An error whose message is scrubbed of secrets and URL queries.
    fn err(&self, kind: ErrorKind, msg: String) -> Error {
        match &self.credentials {
            Keys::Fixed(_) => Error::new(kind, sanitize(&msg, &self.secrets)),
            Keys::Chain(p) => {
                let mut secrets = self.secrets.clone();
                secrets.extend(p.current_secrets().into_iter().filter(|s| s.len() >= 3));
                Error::new(kind, sanitize(&msg, &secrets))
            }
        }
    }

    /// The keys to sign the next request with; fetched (or refreshed) here
    /// when the chain's are due, so a long upload's later parts are signed
    /// with fresh ones.
    fn creds(&self, ctx: &str) -> Result<Credentials> {
        match &self.credentials {
            Keys::Fixed(c) => Ok(c.clone()),
            Keys::Chain(p) => {
                let k = p.get().map_err(|e| {
                    let kind = if e.transient { ErrorKind::Transient } else { ErrorKind::Permanent };
                    Error::new(kind, format!("{ctx}: {}", e.message))
                })?;
                Ok(match &k.session_token {
                    Some(t) => Credentials::new_with_token(&k.access_key_id, &k.secret_access_key, t),
                    None => Credentials::new(&k.access_key_id, &k.secret_access_key),
                })
            }
        }
    }

    fn add_sse<'a, A: S3Action<'a>>(&'a self, action: &mut A) {
        for (name, value) in &self.sse_headers {
            action.headers_mut().insert(*name, value.as_str());
        }
    }

    fn sse_refs(&self) -> Vec<(&str, &str)> {
        self.sse_headers.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }

    /// Send a request with an in-memory body (or none).
    fn exec(
        &self,
        ctx: &str,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        kind: Kind,
    ) -> Result<http::Response<ureq::Body>> {
        match body {
            Some(bytes) => {
                let mut reader = bytes;
                self.send(ctx, method, url, headers, Some((&mut reader, bytes.len() as u64)), kind)
            }
            None => self.send(ctx, method, url, headers, None, kind),
        }
    }

    /// Send a request whose body is read from `body`, `len` bytes long.
    fn exec_streaming(
        &self,
        ctx: &str,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &mut dyn Read,
        len: u64,
    ) -> Result<http::Response<ureq::Body>> {
        self.send(ctx, method, url, headers, Some((body, len)), Kind::Upload)
    }

    fn send(
        &self,
        ctx: &str,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(&mut dyn Read, u64)>,
        kind: Kind,
    ) -> Result<http::Response<ureq::Body>> {
        log::trace!("{method} {}", strip_query(url));
        let mut builder = http::Request::builder().method(method.clone()).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let result = match body {
            Some((reader, len)) => {
                let request = builder.header("content-length", len).body(ureq::SendBody::from_reader(reader));
                self.run(ctx, request, kind)?
            }
            None => self.run(ctx, builder.body(ureq::SendBody::none()), kind)?,
        };
        let resp = result.map_err(|e| self.transport_error(ctx, e))?;
        let status = resp.status();
        log::trace!("{method} {} -> {}", strip_query(url), status.as_u16());
        if status.is_success() {
            return Ok(resp);
        }
        let is_head = method == http::Method::HEAD;
        let body = if is_head { String::new() } else { read_error_body(resp) };
        Err(self.http_error(ctx, status, &body, kind, is_head))
    }

    fn run<S: ureq::AsSendBody>(
        &self,
        ctx: &str,
        request: http::Result<http::Request<S>>,
        kind: Kind,
    ) -> Result<std::result::Result<http::Response<ureq::Body>, ureq::Error>> {
        let request =
            request.map_err(|e| self.err(ErrorKind::Permanent, format!("{ctx}: cannot build the request: {e}")))?;
        if kind == Kind::Download {
            // A download streams for as long as the caller reads: bound the
            // wait for the response and each read, not the whole transfer.
            let request = self
                .agent
                .configure_request(request)
                .timeout_global(None)
                .timeout_recv_response(Some(self.request_timeout))
                .timeout_per_read(Some(self.request_timeout))
                .build();
            Ok(self.agent.run(request))
        } else {
            Ok(self.agent.run(request))
        }
    }

    fn http_error(&self, ctx: &str, status: http::StatusCode, body: &str, kind: Kind, is_head: bool) -> Error {
        let code = xml::text(body, "Code").unwrap_or_default();
        let message = xml::text(body, "Message").unwrap_or_default();
        let s = status.as_u16();
        let error_kind = classify(s, &code, kind, is_head);
        let mut msg = format!("{ctx}: HTTP {s}");
        if code.is_empty() {
            if let Some(reason) = status.canonical_reason() {
                msg.push(' ');
                msg.push_str(reason);
            }
        } else {
            msg.push(' ');
            msg.push_str(&code);
        }
        if !message.is_empty() {
            msg.push_str(": ");
            msg.push_str(message.trim());
        }
        if s / 100 == 3 {
            msg.push_str(" (redirected: check the endpoint, region and addressing style)");
        }
        self.err(error_kind, msg)
    }

    /// An `<Error>` in the body of a 200 response.
    fn error_in_body(&self, ctx: &str, body: &str) -> Option<Error> {
        let error = xml::elements(body, "Error").into_iter().next()?;
        let code = xml::text(error, "Code").unwrap_or_default();
        let message = xml::text(error, "Message").unwrap_or_default();
        // S3's way to fail late (CompleteMultipartUpload): only the known
        // transient codes are worth repeating the request for.
        let kind = match code.as_str() {
            c if is_transient_code(c) => ErrorKind::Transient,
            "NoSuchUpload" => ErrorKind::NotFound,
            _ => ErrorKind::Permanent,
        };
        Some(self.err(kind, format!("{ctx}: HTTP 200 with error {code}: {}", message.trim())))
    }

    fn transport_error(&self, ctx: &str, e: ureq::Error) -> Error {
        let (kind, why) = describe_transport_error(&e);
        self.err(kind, format!("{ctx}: {why}"))
    }

    fn read_small_body(&self, ctx: &str, resp: http::Response<ureq::Body>) -> Result<String> {
        resp.into_body()
            .into_with_config()
            .limit(16 * 1024 * 1024)
            .lossy_utf8(true)
            .read_to_string()
            .map_err(|e| self.transport_error(&format!("{ctx} (reading the response)"), e))
    }
}

fn classify(status: u16, code: &str, kind: Kind, is_head: bool) -> ErrorKind {
    // 501: the server does not do that (rclone: replacing a part it
    // already streamed); asking again won't help.
    if status == 501 || code == "NotImplemented" {
        return ErrorKind::Permanent;
    }
    if status >= 500 || status == 429 || is_transient_code(code) {
        return ErrorKind::Transient;
    }
    let object = matches!(kind, Kind::Object | Kind::Download);
    match code {
        "NoSuchKey" if object => ErrorKind::NotFound,
        "NoSuchUpload" if kind == Kind::Upload => ErrorKind::NotFound,
        "" if status == 404 && object && is_head => ErrorKind::NotFound,
        _ => ErrorKind::Permanent,
    }
}

fn is_transient_code(code: &str) -> bool {
    matches!(code, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable" | "OperationAborted")
}

fn describe_transport_error(e: &ureq::Error) -> (ErrorKind, String) {
    use ureq::Error as E;
    match e {
        // rustls reports certificate and handshake failures through I/O.
        E::Io(io) => match io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(tls) => (ErrorKind::Permanent, format!("TLS: {tls}")),
            None => (ErrorKind::Transient, describe_io(io)),
        },
        E::Timeout(t) => (ErrorKind::Transient, format!("timed out ({t})")),
        E::HostNotFound => (ErrorKind::Transient, "host not found (DNS)".to_string()),
        E::ConnectionFailed => (ErrorKind::Transient, "connection failed".to_string()),
        E::Protocol(p) => (ErrorKind::Transient, format!("HTTP protocol error: {p}")),
        E::BodyStalled => (ErrorKind::Transient, "the connection stalled".to_string()),
        E::Tls(t) => (ErrorKind::Permanent, format!("TLS: {t}")),
        E::Pem(p) => (ErrorKind::Permanent, format!("TLS PEM: {p:?}")),
        E::Rustls(r) => (ErrorKind::Permanent, format!("TLS: {r}")),
        // Their Display would show the URL, query included.
        E::BadUri(_) => (ErrorKind::Permanent, "invalid request URL".to_string()),
        E::Http(_) => (ErrorKind::Permanent, "invalid HTTP request".to_string()),
        E::RequireHttpsOnly(_) => (ErrorKind::Permanent, "HTTPS required".to_string()),
        E::LargeResponseHeader(..) => (ErrorKind::Transient, e.to_string()),
        other => (ErrorKind::Permanent, other.to_string()),
    }
}

fn describe_io(e: &io::Error) -> String {
    use io::ErrorKind as K;
    let what = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted => "connection aborted",
        K::TimedOut => "timed out",
        K::UnexpectedEof => "connection closed early",
        K::BrokenPipe => "connection closed (broken pipe)",
        _ => return format!("I/O error: {e}"),
    };
    let detail = e.to_string();
    if detail.to_ascii_lowercase().contains(what) { what.to_string() } else { format!("{what} ({detail})") }
}

fn read_error_body(resp: http::Response<ureq::Body>) -> String {
    resp.into_body().into_with_config().limit(ERROR_BODY_LIMIT).lossy_utf8(true).read_to_string().unwrap_or_default()
}

/// Read what is left of a (small) response so its connection can be reused.
fn drain(resp: http::Response<ureq::Body>) {
    let _ = resp.into_body().into_with_config().limit(ERROR_BODY_LIMIT).read_to_vec();
}

fn header<'a>(resp: &'a http::Response<ureq::Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::new(ErrorKind::Permanent, "an object name must not be empty"));
    }
    Ok(())
}

fn tls_config(cfg: &S3Config, endpoint: &str) -> Result<ureq::tls::TlsConfig> {
    let mut tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
    if let Some(pem) = &cfg.trusted_ca_pem {
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Permanent,
                        format!("the trusted CA PEM for {endpoint} cannot be parsed: {e}"),
                    ));
                }
            }
        }
        if certs.is_empty() {
            return Err(Error::new(
                ErrorKind::Permanent,
                format!("the trusted CA PEM for {endpoint} holds no certificate"),
            ));
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    if cfg.insecure_skip_verify {
        tls = tls.disable_verification(true);
    }
    Ok(tls.build())
}

/// The endpoint without userinfo, query or trailing slash.
fn display_endpoint(url: &str) -> String {
    let url = strip_query(url);
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}{}", rest.trim_end_matches('/'))
}

fn strip_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Remove secrets and the query strings of URLs from a message.
fn sanitize(msg: &str, secrets: &[String]) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("://") {
        // Copy up to the end of the URL's path, then skip its query.
        let start = i + 3;
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let token_end = after.find(char::is_whitespace).unwrap_or(after.len());
        let token = &after[..token_end];
        match token.find('?') {
            Some(q) => {
                out.push_str(&token[..q]);
                // Keep trailing punctuation that ended the sentence.
                let tail = &token[q..];
                let keep = tail.len() - tail.trim_end_matches([':', ',', ';', ')']).len();
                out.push_str(&tail[tail.len() - keep..]);
            }
            None => out.push_str(token),
        }
        rest = &after[token_end..];
    }
    out.push_str(rest);
    for secret in secrets {
        if !secret.is_empty() && out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "<redacted>");
        }
    }
    out
}

/// Percent-decoding as `encoding-type=url` listings need it (`+` is a space).
fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The part's slices, read in order without copying them together.
struct SlicesReader<'a> {
    slices: &'a [&'a [u8]],
    index: usize,
    pos: usize,
}

impl Read for SlicesReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(slice) = self.slices.get(self.index) {
            let left = &slice[self.pos..];
            if left.is_empty() {
                self.index += 1;
                self.pos = 0;
                continue;
            }
            let n = left.len().min(buf.len());
            buf[..n].copy_from_slice(&left[..n]);
            self.pos += n;
            return Ok(n);
        }
        Ok(0)
    }
}

/// A GET's body, whose errors say which object they concern; it ends
/// after `left` bytes when set.
struct ContextReader {
    inner: ureq::BodyReader<'static>,
    ctx: String,
    secrets: Vec<String>,
    left: Option<u64>,
    /// The body ends where `left` does, and its connection goes back to the
    /// pool ([`Inner::reuse_reads`]). Only a body read to its end does so,
    /// which ureq sees on one more read (free then); one left unfinished is
    /// closed.
    release: bool,
}

impl Read for ContextReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = match self.left {
            Some(0) => return Ok(0),
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let n = self.inner.read(&mut buf[..want]).map_err(|e| {
            let why = describe_io(&e);
            io::Error::new(e.kind(), sanitize(&format!("{}: {why}", self.ctx), &self.secrets))
        })?;
        if let Some(left) = &mut self.left {
            *left -= n as u64;
            if *left == 0 && self.release {
                let _ = self.inner.read(&mut [0; 1]);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(prefix: &str) -> S3Config {
        S3Config {
            endpoint: Some("http://127.0.0.1:9/".to_string()),
            bucket: "bkt".to_string(),
            prefix: prefix.to_string(),
            region: "us-east-1".to_string(),
            path_style: true,
            access_key_id: "AKIDEXAMPLE".to_string(),
            secret_access_key: "wJalrXUtnFEMI".to_string(),
            session_token: Some("sessiontoken123".to_string()),
            trusted_ca_pem: None,
            insecure_skip_verify: false,
            sse_customer: None,
            credential_chain: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            write: WriteOptions::default(),
        }
    }

    #[test]
    fn sse_c_headers_carry_the_key_md5() {
        let key = B64.encode([7u8; 32]);
        let mut cfg = config("p");
        cfg.sse_customer = Some(("AES256".to_string(), key.clone()));
        let store = S3Store::new(cfg).unwrap();
        let h = &store.inner.sse_headers;
        assert_eq!(h[0], (SSE_ALGORITHM, "AES256".to_string()));
        assert_eq!(h[1], (SSE_KEY, key));
        // md5(32 × 0x07), base64, as `openssl md5 -binary | base64` gives it.
        assert_eq!(h[2], (SSE_KEY_MD5, "y4HAEFCYWuvAXWFTtA1Qpg==".to_string()));

        let mut bad = config("p");
        bad.sse_customer = Some(("AES256".to_string(), "not base64!".to_string()));
        let e = S3Store::new(bad).unwrap_err();
        assert!(!e.msg.contains("not base64!"), "{}", e.msg);
    }

    #[test]
    fn keys_and_location() {
        let s = S3Store::new(config("etcd/")).unwrap();
        assert_eq!(s.key("Full-1"), "etcd/v2/Full-1");
        assert_eq!(s.location(), "s3://bkt/etcd/v2/ at http://127.0.0.1:9");
        let s = S3Store::new(config("")).unwrap();
        assert_eq!(s.key("Full-1"), "v2/Full-1");
        assert_eq!(s.location(), "s3://bkt/v2/ at http://127.0.0.1:9");
        let mut aws = config("a");
        aws.endpoint = None;
        aws.region = "eu-west-1".to_string();
        assert_eq!(S3Store::new(aws).unwrap().location(), "s3://bkt/a/v2/ at https://s3.eu-west-1.amazonaws.com");
        assert!(!format!("{s:?}").contains("wJalr"));
    }

    #[test]
    fn endpoint_display_drops_userinfo_and_query() {
        assert_eq!(display_endpoint("https://user:pw@host:9000/base/?x=1"), "https://host:9000/base");
        assert_eq!(display_endpoint("http://127.0.0.1:19000"), "http://127.0.0.1:19000");
    }

    #[test]
    fn sanitize_strips_queries_and_secrets() {
        let secrets = vec!["AKIDEXAMPLE".to_string(), "wJalrXUtnFEMI".to_string()];
        let msg = "GET http://h:1/b/k?X-Amz-Credential=AKIDEXAMPLE%2F&X-Amz-Signature=ab: failed, key wJalrXUtnFEMI";
        assert_eq!(sanitize(msg, &secrets), "GET http://h:1/b/k: failed, key <redacted>");
        assert_eq!(sanitize("no url here", &secrets), "no url here");
    }

    #[test]
    fn xml_helpers() {
        let doc = r#"<?xml version="1.0"?><ListBucketResult xmlns="x"><IsTruncated>true</IsTruncated>
            <Contents><Key>a%2Fb+c</Key><Size>5</Size><ETag>&#34;e&#34;</ETag></Contents><Contents><Key>d&amp;e</Key><Size>7</Size></Contents>
            <NextContinuationToken>t/==</NextContinuationToken><Upload><UploadId>u1</UploadId></Upload><Empty/></ListBucketResult>"#;
        let c = xml::elements(doc, "Contents");
        assert_eq!(c.len(), 2);
        assert_eq!(xml::text(c[0], "ETag").unwrap(), "\"e\"");
        assert_eq!(url_decode(&xml::text(c[0], "Key").unwrap()), "a/b c");
        assert_eq!(xml::text(c[1], "Key").unwrap(), "d&e");
        assert_eq!(xml::text(doc, "NextContinuationToken").unwrap(), "t/==");
        assert_eq!(xml::elements(doc, "Upload").len(), 1);
        assert_eq!(xml::text(doc, "Empty").unwrap(), "");
        assert_eq!(xml::text(doc, "Missing"), None);
        assert_eq!(url_decode("100%"), "100%");
    }

    #[test]
    fn error_kinds() {
        assert_eq!(classify(503, "SlowDown", Kind::Object, false), ErrorKind::Transient);
        assert_eq!(classify(500, "", Kind::Bucket, false), ErrorKind::Transient);
        assert_eq!(classify(501, "NotImplemented", Kind::Upload, false), ErrorKind::Permanent);
        assert_eq!(classify(429, "", Kind::Bucket, false), ErrorKind::Transient);
        assert_eq!(classify(400, "RequestTimeout", Kind::Upload, false), ErrorKind::Transient);
        assert_eq!(classify(404, "NoSuchKey", Kind::Download, false), ErrorKind::NotFound);
        assert_eq!(classify(404, "", Kind::Object, true), ErrorKind::NotFound);
        assert_eq!(classify(404, "NoSuchBucket", Kind::Object, false), ErrorKind::Permanent);
        assert_eq!(classify(404, "NoSuchUpload", Kind::Upload, false), ErrorKind::NotFound);
        assert_eq!(classify(403, "SignatureDoesNotMatch", Kind::Bucket, false), ErrorKind::Permanent);
        assert_eq!(classify(400, "EntityTooSmall", Kind::Upload, false), ErrorKind::Permanent);
    }

    #[test]
    fn error_in_a_200_body() {
        let s = S3Store::new(config("p")).unwrap();
        let body = "<Error><Code>InternalError</Code><Message>try again</Message></Error>";
        let e = s.inner.error_in_body("CompleteMultipartUpload of x", body).unwrap();
        assert_eq!(e.kind, ErrorKind::Transient);
        assert_eq!(e.msg, "CompleteMultipartUpload of x: HTTP 200 with error InternalError: try again");
        let body = "<CompleteMultipartUploadResult><ETag>x</ETag></CompleteMultipartUploadResult>";
        assert!(s.inner.error_in_body("c", body).is_none());
    }

    #[test]
    fn slices_are_read_in_order() {
        let a = [1u8, 2, 3];
        let b: [u8; 0] = [];
        let c = [4u8, 5];
        let slices: [&[u8]; 3] = [&a, &b, &c];
        let mut r = SlicesReader { slices: &slices, index: 0, pos: 0 };
        let mut out = Vec::new();
        let mut buf = [0u8; 2];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn trusted_ca_without_certificate_is_an_error() {
        let mut cfg = config("p");
        cfg.trusted_ca_pem = Some(b"no pem here".to_vec());
        let e = S3Store::new(cfg).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(e.msg.contains("trusted CA"), "{}", e.msg);
    }

    #[test]
    fn complete_needs_every_part_and_calls_nothing_otherwise() {
        // The endpoint (port 9, discard) is never contacted: a call would
        // fail with a transport error instead of this message.
        let s = S3Store::new(config("p")).unwrap();
        let up = S3Upload {
            inner: s.inner.clone(),
            key: s.key("n"),
            upload_id: "u".into(),
            etags: Mutex::default(),
            lock: None,
        };
        assert!(up.complete().unwrap_err().msg.contains("no part was stored"));
        up.etags.lock().unwrap().insert(1, "\"a\"".into());
        up.etags.lock().unwrap().insert(3, "\"c\"".into());
        let e = up.complete().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(e.msg.contains("part 2 of 1..=3 was never stored"), "{}", e.msg);
    }
}
