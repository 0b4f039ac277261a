//! A small blocking etcd v3 client: tonic gRPC on a private current-thread
//! tokio runtime, hidden behind plain method calls.
//!
//! Each RPC is an `async fn` on `Conn` (channel + auth token, cheap to
//! clone) driven by the client's runtime through `Client::call`, which adds
//! the deadline, one re-authentication when the token has expired, and an
//! error naming the endpoint. Streams keep their `tonic::Streaming` and call
//! `rt.block_on` per message. A new RPC (Range, Watch) is a message pair in
//! `proto.rs`, an `async fn` on `Conn` (`unary`, or `Grpc::streaming` for a
//! bidi Watch), and a blocking wrapper here.

mod proto;
mod tls;
pub(crate) use tls::{read_certs, read_key};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use http::uri::PathAndQuery;
use tokio::runtime::Runtime;
use tokio::time::Instant;
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

use proto::path;

/// How to reach etcd, as given by the `--endpoints`, TLS and auth flags
/// (which fill it in directly; `Default` is their starting point).
#[derive(Clone, Default)]
pub struct EtcdConfig {
    /// Tried in order; `host:port` without a scheme is allowed.
    pub endpoints: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub insecure_transport: bool,
    pub insecure_skip_tls_verify: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connection_timeout: Duration,
    pub snapshot_timeout: Duration,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("insecure_transport", &self.insecure_transport)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connection_timeout", &self.connection_timeout)
            .field("snapshot_timeout", &self.snapshot_timeout)
            .finish()
    }
}

/// The largest gRPC message accepted. etcd sends snapshot blobs of 32 KiB and
/// caps requests at 1.5 MiB by default, but a Range or Watch response can be
/// large; tonic's default of 4 MiB would be too tight for those.
const MAX_DECODING_MESSAGE_SIZE: usize = 64 << 20;

/// How often a blocked stream read looks for SIGINT/SIGTERM.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);

/// What `Maintenance/Status` reports about the member that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The member's current key-value store revision.
    pub revision: i64,
    /// The member's server version, e.g. "3.5.1".
    pub version: String,
    /// Size of the backend database file, in bytes.
    pub db_size: i64,
    /// Bytes of that file in use; the rest is free pages a defragmentation
    /// gives back (0 from etcd before 3.4).
    pub db_size_in_use: i64,
    /// The member ID of the cluster's leader, as this member sees it.
    pub leader: u64,
    pub member_id: u64,
    pub cluster_id: u64,
}

/// One member of the cluster, as `Cluster/MemberList` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// One message of the `Maintenance/Snapshot` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMsg {
    /// Database bytes still to come after this message (the trailing
    /// 32-byte sha256 is not counted).
    pub remaining_bytes: u64,
    pub blob: Vec<u8>,
}

/// A connection to one etcd member. Every method blocks the calling thread
/// on the client's own current-thread tokio runtime, so it must not be
/// called from inside another tokio runtime.
pub struct Client {
    rt: Runtime,
    conn: Conn,
    endpoint: String,
    credentials: Option<Credentials>,
    /// Bound for a unary RPC (and for connecting): `connection_timeout`.
    rpc_timeout: Duration,
    snapshot_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("user", &self.credentials.as_ref().map(|c| &c.user))
            .finish_non_exhaustive()
    }
}

/// User name and password, kept to get a new token when the old one expires.
/// Deliberately without `Debug`.
struct Credentials {
    user: String,
    password: String,
}

impl Client {
    /// Try `cfg.endpoints` in order, each within `cfg.connection_timeout`;
    /// the first that answers a Status RPC wins. When username and password
    /// are both set, authenticate there and send the token on every later
    /// call; a rejected login fails at once (the auth store is cluster-wide,
    /// so other endpoints would reject it too). If no endpoint answers, the
    /// error lists every endpoint with its own cause.
    pub fn connect(cfg: &EtcdConfig) -> anyhow::Result<Client> {
        if cfg.endpoints.is_empty() {
            bail!("no etcd endpoints given");
        }
        let credentials = match (&cfg.username, &cfg.password) {
            (Some(user), Some(password)) => Some(Credentials { user: user.clone(), password: password.clone() }),
            (None, None) => None,
            (Some(_), None) => bail!("an etcd user name is given without a password"),
            (None, Some(_)) => bail!("an etcd password is given without a user name"),
        };
        let default_https =
            cfg.ca_file.is_some() || cfg.cert_file.is_some() || cfg.key_file.is_some() || !cfg.insecure_transport;
        let targets =
            cfg.endpoints.iter().map(|e| Target::parse(e, default_https)).collect::<anyhow::Result<Vec<_>>>()?;
        let tls = if targets.iter().any(|t| t.https) { Some(tls::client_config(cfg)?) } else { None };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("starting the etcd client runtime")?;

        let timeout = cfg.connection_timeout;
        let mut failures = Vec::new();
        for target in &targets {
            let attempt = rt.block_on(async {
                tokio::time::timeout(timeout, async {
                    let channel = target.open_channel(tls.clone(), timeout).await.map_err(|e| error_chain(&e))?;
                    let conn = Conn { channel, token: None };
                    conn.status().await.map_err(|s| describe(&s))?;
                    Ok::<_, String>(conn)
                })
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {}", fmt_duration(timeout))))
            });
            match attempt {
                Ok(conn) => {
                    log::debug!("using etcd endpoint {}", target.url);
                    let mut client = Client {
                        rt,
                        conn,
                        endpoint: target.url.clone(),
                        credentials,
                        rpc_timeout: cfg.connection_timeout,
                        snapshot_timeout: cfg.snapshot_timeout,
                    };
                    if client.credentials.is_some() {
                        client.authenticate()?;
                    }
                    return Ok(client);
                }
                Err(cause) => {
                    log::debug!("etcd endpoint {} failed: {cause}", target.url);
                    failures.push(format!("{}: {cause}", target.url));
                }
            }
        }
        bail!("cannot reach etcd: {}", failures.join("; "))
    }

    /// The endpoint URL in use, normalised to `scheme://host:port`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `Maintenance/Status` of the member this client talks to.
    pub fn status(&mut self) -> anyhow::Result<Status> {
        let limit = self.rpc_timeout;
        let resp = self.call("status", Instant::now() + limit, limit, |conn| async move { conn.status().await })?;
        let header = resp.header.unwrap_or_default();
        Ok(Status {
            revision: header.revision,
            version: resp.version,
            db_size: resp.db_size,
            db_size_in_use: resp.db_size_in_use,
            leader: resp.leader,
            member_id: header.member_id,
            cluster_id: header.cluster_id,
        })
    }

    /// `Maintenance/HashKV` at `revision`: the hash etcd's own corruption
    /// check compares, over the keyspace as it was at that revision.
    /// `Ok(None)` when etcd has already compacted that revision away.
    pub fn hash_kv(&mut self, revision: i64) -> anyhow::Result<Option<HashKv>> {
        let limit = self.snapshot_timeout;
        let request = proto::HashKvRequest { revision };
        let result = self.call("HashKV", Instant::now() + limit, limit, |conn| {
            let request = request.clone();
            async move { conn.unary::<_, proto::HashKvResponse>(path::MAINTENANCE_HASH_KV, request).await }
        });
        match result {
            Ok(resp) => Ok(Some(HashKv { revision, hash: resp.hash, compact_revision: resp.compact_revision })),
            // etcd's ErrCompacted: "mvcc: required revision has been compacted".
            Err(e) if e.to_string().contains("required revision has been compacted") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `Maintenance/Defragment` of the member this client talks to, bounded
    /// by `timeout`; the member blocks its reads and writes meanwhile.
    pub fn defragment(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.call("defragment", Instant::now() + timeout, timeout, |conn| async move {
            conn.unary::<_, proto::DefragmentResponse>(path::MAINTENANCE_DEFRAGMENT, proto::DefragmentRequest {}).await
        })
        .map(drop)
    }

    /// `Cluster/MemberList`: every member with its client URLs.
    pub fn member_list(&mut self) -> anyhow::Result<Vec<Member>> {
        let limit = self.rpc_timeout;
        let resp = self.call("member list", Instant::now() + limit, limit, |conn| async move {
            let request = proto::MemberListRequest { linearizable: true };
            conn.unary::<_, proto::MemberListResponse>(path::CLUSTER_MEMBER_LIST, request).await
        })?;
        Ok(resp
            .members
            .into_iter()
            .map(|m| Member { id: m.id, name: m.name, client_urls: m.client_urls, is_learner: m.is_learner })
            .collect())
    }

    /// `Maintenance/Snapshot` as a blocking stream. The whole stream, from
    /// this call to its last message, is bounded by `snapshot_timeout`.
    pub fn snapshot(&mut self) -> anyhow::Result<SnapshotStream<'_>> {
        let limit = self.snapshot_timeout;
        let deadline = Instant::now() + limit;
        let stream = self.call("snapshot", deadline, limit, |conn| async move {
            conn.server_streaming::<_, proto::SnapshotResponse>(path::MAINTENANCE_SNAPSHOT, proto::SnapshotRequest {})
                .await
        })?;
        Ok(SnapshotStream { client: self, stream, deadline, remaining: None, state: StreamState::Open })
    }

    /// Runs one RPC on the runtime until `deadline` (`limit` from now, for
    /// the error message). When etcd says the auth token is no longer valid
    /// (simple tokens expire after 5 minutes unused), logs in again and
    /// retries once.
    fn call<T, F, Fut>(&mut self, what: &str, deadline: Instant, limit: Duration, rpc: F) -> anyhow::Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut reauthenticated = false;
        loop {
            let result = self.rt.block_on(async { tokio::time::timeout_at(deadline, rpc(self.conn.clone())).await });
            match result {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(status)) if !reauthenticated && self.credentials.is_some() && is_invalid_token(&status) => {
                    log::debug!("etcd auth token at {} expired; authenticating again", self.endpoint);
                    self.authenticate()?;
                    reauthenticated = true;
                }
                Ok(Err(status)) => bail!("etcd {what} at {}: {}", self.endpoint, describe(&status)),
                Err(_) => bail!("etcd {what} at {}: timed out after {}", self.endpoint, fmt_duration(limit)),
            }
        }
    }

    /// `Auth/Authenticate` with the configured credentials; stores the token
    /// for every later call. A cluster without auth enabled is fine: the
    /// client then goes on without a token, as etcd's own client does.
    fn authenticate(&mut self) -> anyhow::Result<()> {
        let Some(creds) = &self.credentials else {
            return Ok(());
        };
        let request = proto::AuthenticateRequest { name: creds.user.clone(), password: creds.password.clone() };
        let user = creds.user.clone();
        let timeout = self.rpc_timeout;
        let conn = Conn { token: None, ..self.conn.clone() };
        let result = self.rt.block_on(async move {
            let rpc = conn.unary::<_, proto::AuthenticateResponse>(path::AUTH_AUTHENTICATE, request);
            tokio::time::timeout(timeout, rpc).await
        });
        let what = || format!("authenticating to etcd at {} as user {user:?}", self.endpoint);
        match result {
            Ok(Ok(resp)) => {
                let token = AsciiMetadataValue::try_from(resp.token)
                    .map_err(|_| anyhow!("{}: etcd returned a token that is not valid metadata", what()))?;
                self.conn.token = Some(token);
                Ok(())
            }
            Ok(Err(status))
                if status.code() == Code::FailedPrecondition && status.message().contains("not enabled") =>
            {
                log::debug!("etcd at {} has authentication disabled; going on without a token", self.endpoint);
                self.conn.token = None;
                Ok(())
            }
            Ok(Err(status)) => bail!("{}: {}", what(), describe(&status)),
            Err(_) => bail!("{}: timed out after {}", what(), fmt_duration(self.rpc_timeout)),
        }
    }
}

/// What etcd's `HashKV` said of the keyspace at `revision`, with the
/// compaction it was computed under (rows below it count only as the
/// latest version of their key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    pub revision: i64,
    pub hash: u32,
    pub compact_revision: i64,
}

/// The `Maintenance/Snapshot` stream: the database (`remaining_bytes`
/// counting down to 0) and then one last message holding its sha256.
pub struct SnapshotStream<'a> {
    client: &'a mut Client,
    stream: tonic::Streaming<proto::SnapshotResponse>,
    deadline: Instant,
    /// `remaining_bytes` of the last message received.
    remaining: Option<u64>,
    state: StreamState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Open,
    Ended,
    Failed,
}

impl SnapshotStream<'_> {
    /// The next message; `Ok(None)` at the clean end of the stream. A broken
    /// stream, a gRPC error, a stream that ends while database bytes are
    /// still announced, or the snapshot deadline is an error naming the
    /// endpoint.
    // Not `Iterator`: the caller wants `?` on each step, and after an error
    // or the end there is nothing more to iterate.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> anyhow::Result<Option<SnapshotMsg>> {
        let endpoint = &self.client.endpoint;
        match self.state {
            StreamState::Open => {}
            StreamState::Ended => return Ok(None),
            StreamState::Failed => bail!("etcd snapshot stream from {endpoint} has already failed"),
        }
        let (deadline, stream) = (self.deadline, &mut self.stream);
        // Waits in slices, so that a signal is noticed while etcd sends
        // nothing; `Streaming::message` is cancel safe. The timer must be
        // made inside the runtime, hence the async block.
        let message = loop {
            let slice = deadline.min(Instant::now() + SIGNAL_CHECK);
            match self.client.rt.block_on(async { tokio::time::timeout_at(slice, stream.message()).await }) {
                Err(_) if slice < deadline && crate::signals::interrupted() => {
                    self.state = StreamState::Failed;
                    bail!("etcd snapshot stream from {endpoint}: interrupted by a signal");
                }
                Err(_) if slice < deadline => continue,
                other => break other,
            }
        };
        match message {
            Ok(Ok(Some(m))) => {
                self.remaining = Some(m.remaining_bytes);
                Ok(Some(SnapshotMsg { remaining_bytes: m.remaining_bytes, blob: m.blob }))
            }
            Ok(Ok(None)) => {
                self.state = StreamState::Failed;
                match self.remaining {
                    Some(0) => {
                        self.state = StreamState::Ended;
                        Ok(None)
                    }
                    Some(n) => {
                        bail!("etcd snapshot stream from {endpoint} ended early, {n} bytes short")
                    }
                    None => bail!("etcd snapshot stream from {endpoint} ended without any data"),
                }
            }
            Ok(Err(status)) => {
                self.state = StreamState::Failed;
                bail!("etcd snapshot stream from {endpoint} broke: {}", describe(&status))
            }
            Err(_) => {
                self.state = StreamState::Failed;
                bail!(
                    "etcd snapshot from {endpoint} did not finish within the snapshot timeout of {}",
                    fmt_duration(self.client.snapshot_timeout)
                )
            }
        }
    }
}

/// Why a watch ended.
#[derive(Debug)]
pub enum WatchError {
    /// The start revision is older than etcd's compaction: the events in
    /// between are gone, only a full snapshot can cover them.
    Compacted { compact_revision: i64 },
    /// The stream broke, etcd cancelled the watch, or the connection failed.
    Broken(anyhow::Error),
}

impl std::fmt::Display for WatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchError::Compacted { compact_revision } => {
                write!(f, "the watched revision was compacted (etcd compacted up to revision {compact_revision})")
            }
            WatchError::Broken(e) => write!(f, "{e:#}"),
        }
    }
}

/// A watch on every key, as a blocking stream of event batches.
pub struct Watch<'a> {
    client: &'a mut Client,
    stream: tonic::Streaming<proto::WatchResponse>,
}

impl Client {
    /// Watch every key from `start_revision` on. Waits until etcd confirms
    /// the watch, so a compacted start revision is reported here.
    pub fn watch(&mut self, start_revision: i64) -> Result<Watch<'_>, WatchError> {
        let limit = self.rpc_timeout;
        let request = proto::WatchRequest {
            create_request: Some(proto::WatchCreateRequest {
                key: vec![0],
                range_end: vec![0],
                start_revision,
                progress_notify: true,
            }),
        };
        let stream = self
            .call("watch", Instant::now() + limit, limit, |conn| {
                let request = request.clone();
                async move { conn.bidi_streaming(path::WATCH_WATCH, request).await }
            })
            .map_err(WatchError::Broken)?;
        let mut watch = Watch { client: self, stream };
        let deadline = std::time::Instant::now() + limit;
        loop {
            match watch.receive(deadline)? {
                Some(resp) if resp.created => {
                    return match watch.check(resp)? {
                        events if events.is_empty() => Ok(watch),
                        _ => Err(WatchError::Broken(anyhow!("etcd sent events before confirming the watch"))),
                    };
                }
                Some(_) => continue,
                None => {
                    return Err(WatchError::Broken(anyhow!(
                        "etcd at {} did not confirm the watch within {}",
                        watch.client.endpoint,
                        fmt_duration(limit)
                    )));
                }
            }
        }
    }
}

impl Watch<'_> {
    /// `Maintenance/Status` on the watch's own connection.
    pub fn status(&mut self) -> anyhow::Result<Status> {
        self.client.status()
    }

    /// The next batch of events, waiting at most until `deadline`; `Ok(None)`
    /// when nothing came by then. Progress notifications are empty batches.
    pub fn next(&mut self, deadline: std::time::Instant) -> Result<Option<Vec<crate::delta::Event>>, WatchError> {
        match self.receive(deadline)? {
            Some(resp) => self.check(resp).map(Some),
            None => Ok(None),
        }
    }

    fn receive(&mut self, deadline: std::time::Instant) -> Result<Option<proto::WatchResponse>, WatchError> {
        let endpoint = &self.client.endpoint;
        let stream = &mut self.stream;
        let deadline = Instant::from_std(deadline);
        // `Streaming::message` is cancel safe: a timeout loses nothing.
        match self.client.rt.block_on(async { tokio::time::timeout_at(deadline, stream.message()).await }) {
            Err(_) => Ok(None),
            Ok(Ok(Some(resp))) => Ok(Some(resp)),
            Ok(Ok(None)) => Err(WatchError::Broken(anyhow!("etcd at {endpoint} closed the watch stream"))),
            Ok(Err(status)) => {
                Err(WatchError::Broken(anyhow!("etcd watch stream from {endpoint} broke: {}", describe(&status))))
            }
        }
    }

    fn check(&self, resp: proto::WatchResponse) -> Result<Vec<crate::delta::Event>, WatchError> {
        if resp.compact_revision != 0 {
            return Err(WatchError::Compacted { compact_revision: resp.compact_revision });
        }
        if resp.canceled {
            let reason = if resp.cancel_reason.is_empty() { "no reason given" } else { &resp.cancel_reason };
            return Err(WatchError::Broken(anyhow!("etcd at {} cancelled the watch: {reason}", self.client.endpoint)));
        }
        resp.events
            .into_iter()
            .map(|e| {
                let kind = match e.r#type {
                    0 => crate::delta::EventKind::Put,
                    1 => crate::delta::EventKind::Delete,
                    t => return Err(WatchError::Broken(anyhow!("etcd sent a watch event of unknown type {t}"))),
                };
                let kv = e.kv.unwrap_or_default();
                Ok(crate::delta::Event {
                    kind,
                    key: kv.key,
                    value: kv.value,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                    lease: kv.lease,
                })
            })
            .collect()
    }
}

/// A tonic channel plus the auth token to send; what one RPC needs.
#[derive(Clone)]
struct Conn {
    channel: Channel,
    token: Option<AsciiMetadataValue>,
}

impl Conn {
    fn grpc(&self) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::new(self.channel.clone()).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.clone());
        }
        request
    }

    /// A connected client and the codec for one RPC's message types.
    async fn ready<Req, Resp>(
        &self,
    ) -> Result<(tonic::client::Grpc<Channel>, tonic_prost::ProstCodec<Req, Resp>), tonic::Status> {
        let mut grpc = self.grpc();
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(error_chain(&e)))?;
        Ok((grpc, tonic_prost::ProstCodec::default()))
    }

    async fn unary<Req, Resp>(&self, path: &'static str, message: Req) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let (mut grpc, codec) = self.ready::<Req, Resp>().await?;
        let response = grpc.unary(self.request(message), PathAndQuery::from_static(path), codec).await?;
        Ok(response.into_inner())
    }

    async fn server_streaming<Req, Resp>(
        &self,
        path: &'static str,
        message: Req,
    ) -> Result<tonic::Streaming<Resp>, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let (mut grpc, codec) = self.ready::<Req, Resp>().await?;
        let response = grpc.server_streaming(self.request(message), PathAndQuery::from_static(path), codec).await?;
        Ok(response.into_inner())
    }

    /// A bidirectional stream that sends `message` and then stays open
    /// without sending more: closing our side could end the watch.
    async fn bidi_streaming<Req, Resp>(
        &self,
        path: &'static str,
        message: Req,
    ) -> Result<tonic::Streaming<Resp>, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        use tonic::codegen::tokio_stream::{self, StreamExt as _};
        let (mut grpc, codec) = self.ready::<Req, Resp>().await?;
        let requests = tokio_stream::once(message).chain(tokio_stream::pending());
        let response = grpc.streaming(self.request(requests), PathAndQuery::from_static(path), codec).await?;
        Ok(response.into_inner())
    }

    async fn status(&self) -> Result<proto::StatusResponse, tonic::Status> {
        self.unary(path::MAINTENANCE_STATUS, proto::StatusRequest {}).await
    }
}

/// Whether `raw` can be an entry of `--endpoints`, checked when the flag is
/// read so that a bad one is a usage error before anything starts.
pub fn check_endpoint(raw: &str) -> Result<(), String> {
    Target::parse(raw, false).map(drop).map_err(|e| e.to_string())
}

/// One entry of `--endpoints`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// Normalised: `scheme://host:port`.
    url: String,
    https: bool,
    /// Host for TCP connect and TLS server name, IPv6 without brackets.
    host: String,
    port: u16,
}

impl Target {
    /// `http://host:port`, `https://host:port`, or `host:port`, which means
    /// https when `default_https` is set. A port is required.
    fn parse(raw: &str, default_https: bool) -> anyhow::Result<Target> {
        let trimmed = raw.trim();
        // Errors quote the endpoint, but never a password in it.
        let raw = &redact_userinfo(trimmed);
        let (https, rest) = match trimmed.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            Some((scheme, _)) if scheme.to_ascii_lowercase().starts_with("unix") => {
                bail!(
                    "etcd endpoint {raw:?} has an unsupported scheme: unix sockets are not supported; give an http:// or https:// URL"
                )
            }
            Some(_) => bail!("etcd endpoint {raw:?} has an unsupported scheme: only http:// and https:// are allowed"),
            None => (default_https, trimmed),
        };
        let uri: http::Uri = format!("{}://{rest}", if https { "https" } else { "http" })
            .parse()
            .map_err(|e| anyhow!("etcd endpoint {raw:?} is not a valid URL: {e}"))?;
        let authority = uri.authority().ok_or_else(|| anyhow!("etcd endpoint {raw:?} has no host"))?;
        if authority.as_str().contains('@') {
            bail!("etcd endpoint {raw:?} must not hold user info; give the user name and password separately");
        }
        let port = authority.port_u16().ok_or_else(|| anyhow!("etcd endpoint {raw:?} has no port"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            bail!("etcd endpoint {raw:?} must not have a path or query");
        }
        let host = authority.host();
        if host.is_empty() {
            bail!("etcd endpoint {raw:?} has no host");
        }
        Ok(Target {
            url: format!("{}://{host}:{port}", if https { "https" } else { "http" }),
            https,
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
        })
    }

    /// A connected channel. Plain http (h2c) uses tonic's own connector. For
    /// https our connector does TCP + TLS, and tonic is handed an `http://`
    /// URI: with a TLS feature compiled in, tonic refuses an `https://` URI
    /// on a custom connector unless its own TLS config is set. The origin
    /// (`:scheme` and `:authority` of every request) still says https.
    async fn open_channel(
        &self,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
    ) -> Result<Channel, tonic::transport::Error> {
        let authority = format!("{}:{}", uri_host(&self.host), self.port);
        if self.https {
            let config = tls.expect("Client::connect builds a TLS config for https endpoints");
            let origin: http::Uri = format!("https://{authority}").parse().expect("validated in Target::parse");
            Endpoint::from_shared(format!("http://{authority}"))?
                .origin(origin)
                .connect_timeout(connect_timeout)
                .connect_with_connector(tls::connector(config, self.host.clone(), self.port))
                .await
        } else {
            Endpoint::from_shared(format!("http://{authority}"))?.connect_timeout(connect_timeout).connect().await
        }
    }
}

/// `scheme://user:pw@host:port` → `scheme://***@host:port`; others as they are.
fn redact_userinfo(raw: &str) -> String {
    let start = raw.find("://").map_or(0, |i| i + 3);
    let end = raw[start..].find('/').map_or(raw.len(), |i| start + i);
    match raw[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &raw[..start], &raw[start + at..]),
        None => raw.to_string(),
    }
}

/// The host as it goes into a URI: IPv6 addresses in brackets.
fn uri_host(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_string() }
}

/// etcd's answer when the token has expired or was never valid: usually
/// `Unauthenticated` "etcdserver: invalid auth token", but a snapshot gets
/// the bare "auth: invalid auth token" with code `Unknown`.
fn is_invalid_token(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unauthenticated | Code::Unknown) && status.message().ends_with("invalid auth token")
}

/// A gRPC status as one line: etcd's message (or the code) and whatever
/// transport error lies beneath.
fn describe(status: &tonic::Status) -> String {
    let mut out =
        if status.message().is_empty() { format!("{:?}", status.code()) } else { status.message().to_string() };
    if let Some(source) = std::error::Error::source(status) {
        append_chain(&mut out, source);
    }
    out
}

/// An error and its sources, as "a: b: c", dropping parts already said.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    if let Some(source) = error.source() {
        append_chain(&mut out, source);
    }
    out.strip_prefix("transport error: ").map(str::to_string).unwrap_or(out)
}

fn append_chain(out: &mut String, mut error: &(dyn std::error::Error + 'static)) {
    loop {
        let text = error.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        match error.source() {
            Some(next) => error = next,
            None => break,
        }
    }
}

/// "30s" for whole seconds, otherwise Debug's "1.5s" / "200ms".
fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 { format!("{}s", d.as_secs()) } else { format!("{d:?}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_stream_are_send() {
        fn is_send<T: Send>() {}
        is_send::<Client>();
        is_send::<SnapshotStream<'static>>();
    }

    #[test]
    fn endpoints_are_normalised() {
        let t = Target::parse("127.0.0.1:2379", false).unwrap();
        assert_eq!(
            (t.url.as_str(), t.https, t.host.as_str(), t.port),
            ("http://127.0.0.1:2379", false, "127.0.0.1", 2379)
        );
        let t = Target::parse("etcd-0.local:2379", true).unwrap();
        assert_eq!(t.url, "https://etcd-0.local:2379");
        let t = Target::parse("https://127.0.0.1:2379/", false).unwrap();
        assert_eq!((t.url.as_str(), t.https), ("https://127.0.0.1:2379", true));
        let t = Target::parse("http://[::1]:2379", true).unwrap();
        assert_eq!((t.url.as_str(), t.https, t.host.as_str()), ("http://[::1]:2379", false, "::1"));
        assert_eq!(uri_host(&t.host), "[::1]");
    }

    #[test]
    fn bad_endpoints_are_rejected_by_name() {
        for (raw, why) in [
            ("unix:///run/etcd.sock", "unix sockets are not supported"),
            ("unixs://x:1", "unix sockets are not supported"),
            ("http://", "not a valid URL"),
            ("http://:2379", "host"),
            ("grpc://127.0.0.1:2379", "scheme"),
            ("http://127.0.0.1", "no port"),
            ("127.0.0.1", "no port"),
            ("http://127.0.0.1:2379/v3", "path"),
        ] {
            let err = Target::parse(raw, false).unwrap_err().to_string();
            assert!(err.contains(raw) && err.contains(why), "{raw}: {err}");
        }
        let err = Target::parse("http://root:s3cret@127.0.0.1:2379", false).unwrap_err().to_string();
        assert!(err.contains("http://***@127.0.0.1:2379") && err.contains("user info"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_secs(30)), "30s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_millis(200)), "200ms");
    }
}
