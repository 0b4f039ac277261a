//! `server`'s HTTP API, on upstream's paths: `/healthz`, `/metrics`,
//! `/snapshot/latest`, `/snapshot/full[?final=true]`, `/snapshot/delta`.
//!
//! A small synchronous HTTP/1.1 server over std's `TcpListener`, with TLS
//! terminated by the rustls 0.23 (ring) the etcd and S3 clients already use.
//! Every request is one connection (`Connection: close`), no request body is
//! read beyond a small bound. One accept thread hands connections to a fixed
//! pool of workers through a bounded queue (a full queue refuses with 503);
//! every read and write has a timeout and a request head a deadline. The
//! snapshotter never waits for this side: it shares only `Control`'s and the
//! metrics model's short locks, never held across I/O.

use crate::catalog::{Catalog, Entry};
use crate::continuous::{Answer, Control, Taken};
use crate::endpoint::{Endpoints, Role};
use crate::metrics::Model;
use crate::snapshot::SnapshotName;
use anyhow::Context as _;
use crossbeam_channel::{RecvTimeoutError, TrySendError, bounded};
use log::{debug, info, warn};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where and how the API listens.
#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    /// Certificate chain and key files (PEM): HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long a request for a snapshot waits for it.
    pub request_timeout: Duration,
}

/// How long a `/snapshot/latest` listing is reused: polling it must not
/// load the S3 servers the snapshots are uploaded to (each answer lists
/// both endpoints).
const LATEST_FOR: Duration = Duration::from_secs(2);

/// What the handlers read.
pub struct Api<'a> {
    pub control: &'a Control,
    pub endpoints: &'a Endpoints,
    pub metrics: &'a Model,
    pub deltas: bool,
    /// Each endpoint's `<prefix>/v2`, upstream's `prefix` field.
    pub prefixes: Vec<(Role, String)>,
    pub request_timeout: Duration,
    /// The last `/snapshot/latest` answer and when it was listed.
    pub latest: std::sync::Mutex<Option<(Instant, Value)>>,
}

/// Connections handled at once; a snapshot request holds its worker while
/// it waits, so the others keep answering.
const WORKERS: usize = 8;
/// Connections accepted but not yet handled.
const QUEUE: usize = 64;
/// Each read and write of a connection.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole request head (and TLS handshake), against slow senders.
const HEAD_DEADLINE: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 16 << 10;
/// Request headers parsed; more is a 431.
const MAX_HEADERS: usize = 64;
const MAX_BODY: u64 = 64 << 10;
/// How often the accept loop and idle workers look for a signal.
const POLL: Duration = Duration::from_millis(50);

/// A bound listening socket, ready to serve.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Bind the socket and load the certificate now, so a mistake is reported
/// before the snapshotter starts.
pub fn bind(opts: &Options) -> anyhow::Result<Listener> {
    let tls = match &opts.tls {
        Some((cert, key)) => Some(tls_config(cert, key)?),
        None => None,
    };
    let tcp = TcpListener::bind(opts.addr).with_context(|| format!("cannot listen on {}", opts.addr))?;
    tcp.set_nonblocking(true).context("setting up the listening socket")?;
    Ok(Listener { tcp, tls })
}

fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = crate::etcd::read_certs(cert, "server certificate file")?;
    let key_der = crate::etcd::read_key(key, "server key file")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| {
            format!("server certificate {} and key {} cannot be used together", cert.display(), key.display())
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serve until SIGTERM/SIGINT.
    pub fn serve(self, api: &Api) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match self.tcp.local_addr() {
            Ok(a) => info!("HTTP API listening on {scheme}://{a}"),
            Err(e) => warn!("HTTP API listening (address unknown: {e})"),
        }
        let (tx, rx) = bounded::<TcpStream>(QUEUE);
        std::thread::scope(|scope| {
            for i in 0..WORKERS {
                let (rx, tls) = (rx.clone(), self.tls.clone());
                let spawned = std::thread::Builder::new().name(format!("http-{i}")).spawn_scoped(scope, move || {
                    loop {
                        match rx.recv_timeout(POLL) {
                            Ok(stream) => connection(stream, tls.as_ref(), api),
                            Err(RecvTimeoutError::Timeout) if !crate::signals::interrupted() => {}
                            Err(_) => return,
                        }
                    }
                });
                if let Err(e) = spawned {
                    warn!("Cannot start HTTP worker {i}: {e}");
                }
            }
            while !crate::signals::interrupted() {
                match self.tcp.accept() {
                    Ok((stream, peer)) => match tx.try_send(stream) {
                        Ok(()) => {}
                        Err(TrySendError::Full(mut stream)) | Err(TrySendError::Disconnected(mut stream)) => {
                            debug!("HTTP API busy: refusing a connection from {peer}");
                            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                            // A plain answer; on HTTPS the client just sees the connection end.
                            if self.tls.is_none() {
                                let _ = write_response(&mut stream, &Response::json(503, json!({"error": "busy"})));
                            }
                        }
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(e) => {
                        debug!("HTTP API: accept failed: {e}");
                        std::thread::sleep(POLL);
                    }
                }
            }
            drop(tx);
        });
        info!("HTTP API stopped");
    }
}

fn connection(stream: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>, api: &Api) {
    let set_up = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)));
    if let Err(e) = set_up {
        debug!("HTTP API: cannot set up a connection: {e}");
        return;
    }
    let _ = stream.set_nodelay(true);
    match tls {
        None => exchange(&mut &stream, api),
        Some(config) => {
            let conn = match rustls::ServerConnection::new(config.clone()) {
                Ok(c) => c,
                Err(e) => return warn!("HTTP API: TLS setup failed: {e}"),
            };
            let mut tls = rustls::StreamOwned::new(conn, stream);
            exchange(&mut tls, api);
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    }
}

/// Read one request, answer it.
fn exchange(stream: &mut (impl Read + Write), api: &Api) {
    let response = match read_request(stream) {
        Ok(req) => {
            let started = Instant::now();
            let r = route(&req, api);
            debug!("HTTP {} {} -> {} in {:?}", req.method, req.target, r.status, started.elapsed());
            r
        }
        Err(Bad::Status(status, why)) => Response::json(status, json!({ "error": why })),
        Err(Bad::Gone(e)) => return debug!("HTTP API: request not read: {e}"),
    };
    if let Err(e) = write_response(stream, &response) {
        debug!("HTTP API: response not sent: {e}");
    }
}

struct Request {
    method: String,
    target: String,
}

impl Request {
    fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The value of query parameter `key` (first occurrence), undecoded.
    fn query(&self, key: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then_some(v)
        })
    }
}

enum Bad {
    /// Answer with this status.
    Status(u16, String),
    /// The connection failed or timed out: nothing to answer.
    Gone(String),
}

fn read_request(stream: &mut impl Read) -> Result<Request, Bad> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(Bad::Status(431, "request head too large".into()));
        }
        if Instant::now() > deadline {
            return Err(Bad::Gone("request head not complete in time".into()));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(Bad::Gone("connection closed before the request head ended".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Bad::Gone(e.to_string())),
        }
    };
    // httparse (hyper's parser) reads the head; this loop only bounds it.
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let malformed = |what: &str| Bad::Status(400, format!("malformed request: {what}"));
    match req.parse(&buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(Bad::Status(431, "too many request headers".into())),
        Err(e) => return Err(malformed(&e.to_string())),
    }
    let (Some(method), Some(target)) = (req.method, req.path) else { return Err(malformed("no request line")) };
    if !target.starts_with('/') {
        return Err(malformed("the target is not a path"));
    }
    let mut body_len = 0u64;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            body_len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| Bad::Status(400, "invalid Content-Length".into()))?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Bad::Status(411, "request bodies need a Content-Length".into()));
        }
    }
    if body_len > MAX_BODY {
        return Err(Bad::Status(413, "request body too large".into()));
    }
    // The API takes no body: read and drop one, so the client sees no reset.
    let mut left = body_len.saturating_sub((buf.len() - head_end - 4) as u64);
    while left > 0 {
        if Instant::now() > deadline {
            return Err(Bad::Gone("request body not complete in time".into()));
        }
        let want = left.min(chunk.len() as u64) as usize;
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Err(Bad::Gone("connection closed in the request body".into())),
            Ok(n) => left -= n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Bad::Gone(e.to_string())),
        }
    }
    let request = Request { method: method.to_string(), target: target.to_string() };
    Ok(request)
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    allow: Option<&'static str>,
}

impl Response {
    fn json(status: u16, v: Value) -> Response {
        Response { status, content_type: "application/json", body: v.to_string().into_bytes(), allow: None }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn write_response(stream: &mut impl Write, r: &Response) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if let Some(allow) = r.allow {
        head.push_str(&format!("Allow: {allow}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&r.body)?;
    stream.flush()
}

fn route(req: &Request, api: &Api) -> Response {
    let allow = match req.path() {
        "/healthz" | "/metrics" | "/snapshot/latest" => "GET",
        "/snapshot/full" | "/snapshot/delta" => "GET, POST",
        _ => return Response::json(404, json!({"error": "not found"})),
    };
    if !allow.split(", ").any(|m| m == req.method) {
        let mut r = Response::json(405, json!({"error": format!("{} takes {allow}", req.path())}));
        r.allow = Some(allow);
        return r;
    }
    match req.path() {
        "/healthz" => {
            let health = api.control.healthy();
            Response::json(if health { 200 } else { 503 }, json!({ "health": health }))
        }
        "/metrics" => {
            let mut text = api.metrics.render();
            text.push_str(&crate::metrics::process_metrics());
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: text.into_bytes(),
                allow: None,
            }
        }
        "/snapshot/latest" => latest(api),
        "/snapshot/full" => {
            let is_final = match req.query("final").map(go_bool) {
                None => false,
                Some(Some(b)) => b,
                Some(None) => return Response::json(400, json!({"error": "final must be true or false"})),
            };
            answer(api, api.control.full_snapshot(is_final, api.request_timeout))
        }
        _ => {
            if !api.deltas {
                return Response::json(500, json!({"error": "delta snapshots are off (--delta-snapshot-period)"}));
            }
            answer(api, api.control.delta_snapshot(api.request_timeout))
        }
    }
}

/// Go's `strconv.ParseBool`, which upstream applies to `final`.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn answer(api: &Api, a: Answer) -> Response {
    // A snapshot asked for here shows in the next /snapshot/latest.
    *api.latest.lock().unwrap_or_else(|p| p.into_inner()) = None;
    match a {
        Ok(Some(Taken { name, stored_on })) => match SnapshotName::parse(&name) {
            Some(n) => Response::json(200, snapshot_json(api, &name, &n, &stored_on)),
            None => Response::json(500, json!({"error": format!("unexpected snapshot name {name}")})),
        },
        // Nothing changed since the last delta: upstream's nil snapshot.
        Ok(None) => Response::json(200, Value::Null),
        Err(e) => {
            warn!("Snapshot requested over HTTP not taken: {e}");
            Response::json(500, json!({ "error": e }))
        }
    }
}

/// The latest full snapshot and the delta snapshots after it, as listed at
/// most [`LATEST_FOR`] ago, or since the last snapshot asked for over HTTP
/// (`{"fullSnapshot": null, "deltaSnapshots": []}` when none).
fn latest(api: &Api) -> Response {
    // Held while listing: requests arriving meanwhile share that listing.
    let mut cached = api.latest.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, answer)) = &*cached
        && at.elapsed() < LATEST_FOR
    {
        return Response::json(200, answer.clone());
    }
    let catalog = match Catalog::list(api.endpoints) {
        Ok(c) => c,
        Err(e) => return Response::json(500, json!({ "error": e })),
    };
    let (full, deltas) = match catalog.latest_full() {
        Some((full, deltas)) => (entry_json(api, full), deltas.iter().map(|d| entry_json(api, d)).collect()),
        None => (Value::Null, Vec::new()),
    };
    let answer = json!({ "fullSnapshot": full, "deltaSnapshots": deltas });
    *cached = Some((Instant::now(), answer.clone()));
    Response::json(200, answer)
}

fn entry_json(api: &Api, e: &Entry) -> Value {
    let on: Vec<Role> = api.endpoints.iter().map(|ep| ep.role).filter(|&r| e.size_on(r).is_some()).collect();
    snapshot_json(api, &e.name, &e.snapshot, &on)
}

/// Upstream's `brtypes.Snapshot` JSON, plus `storedOn`: the endpoints that
/// hold it.
fn snapshot_json(api: &Api, name: &str, n: &SnapshotName, on: &[Role]) -> Value {
    // Upstream's prefix is its one store's; here the first endpoint's that has it.
    let prefix = on.iter().find_map(|r| api.prefixes.iter().find(|(p, _)| p == r)).map_or("", |(_, p)| p.as_str());
    json!({
        "kind": n.kind.name(),
        "startRevision": n.start_revision,
        "lastRevision": n.last_revision,
        "createdOn": crate::time::unix_rfc3339(n.created),
        "snapDir": "",
        "snapName": name,
        "prefix": prefix,
        "compressionSuffix": n.compression,
        "isChunk": false,
        "isFinal": n.is_final,
        // Upstream's spelling; no immutability here: Go's zero time.
        "immutabilityExpriyTime": "0001-01-01T00:00:00Z",
        "versionID": "",
        "storedOn": on.iter().map(|r| r.name()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, Bad> {
        read_request(&mut std::io::Cursor::new(raw.to_vec()))
    }

    #[test]
    fn request_heads_are_parsed_and_bounded() {
        let r = parse(b"POST /snapshot/full?final=true&x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
            .ok()
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path(), r.query("final"), r.query("x")),
            ("POST", "/snapshot/full", Some("true"), Some(""))
        );
        for (raw, status) in [
            (&b"GET /x\r\n\r\n"[..], 400),
            (b"GET x HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
            (b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        ] {
            assert!(matches!(parse(raw), Err(Bad::Status(s, _)) if s == status), "{}", String::from_utf8_lossy(raw));
        }
        let big = [b"GET / HTTP/1.1\r\nX: ".to_vec(), vec![b'a'; MAX_HEAD + 10]].concat();
        assert!(matches!(parse(&big), Err(Bad::Status(431, _))));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Err(Bad::Gone(_))));
    }

    #[test]
    fn final_takes_gos_booleans() {
        assert_eq!(go_bool("True"), Some(true));
        assert_eq!(go_bool("0"), Some(false));
        assert_eq!(go_bool("yes"), None);
    }
}
