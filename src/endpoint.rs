//! One store endpoint, primary or secondary: its settings, how it is opened,
//! and the one way every store call on it is retried and logged. Commands
//! open endpoints; the domain modules (backup, snapshotter, catalog, gc,
//! restore) take opened [`Endpoint`]s and never see the flags.

use crate::store::s3::S3Config;
use crate::store::{self, RetryPolicy, Store};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Primary,
    Secondary,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
    /// Prefix of the generated flag (`--secondary-<name>`).
    pub fn flag_prefix(self) -> &'static str {
        match self {
            Role::Primary => "",
            Role::Secondary => "secondary-",
        }
    }
    /// Prefix of the endpoint's environment variables (`SECONDARY_<VAR>`).
    pub fn env_prefix(self) -> &'static str {
        match self {
            Role::Primary => "",
            Role::Secondary => "SECONDARY_",
        }
    }
}

/// Where an endpoint keeps its snapshots.
#[derive(Debug, Clone)]
pub enum Backend {
    S3(Box<S3Config>),
    /// `<container>/<prefix>/v2/` on a local or mounted file system.
    Local {
        container: PathBuf,
        prefix: String,
    },
}

/// How an endpoint takes a full snapshot's multipart upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// Parts uploaded at once (`--max-parallel-chunk-uploads`).
    pub max_parallel: usize,
    /// Smallest part but the last (`--min-chunk-size`).
    pub min_size: u64,
}

/// One endpoint's settings, ready to open.
#[derive(Debug, Clone)]
pub struct Config {
    pub role: Role,
    pub backend: Backend,
    pub parts: Parts,
    pub retry: RetryPolicy,
}

impl Config {
    /// Open the store; an error names the endpoint.
    pub fn open(&self) -> Result<Endpoint, String> {
        let store: store::Result<Arc<dyn Store>> = match &self.backend {
            Backend::S3(c) => store::s3::S3Store::new((**c).clone()).map(|s| Arc::new(s) as _),
            Backend::Local { container, prefix } => {
                store::local::LocalStore::new(container, prefix).map(|s| Arc::new(s) as _)
            }
        };
        let store = store.map_err(|e| format!("{} endpoint: {e}", self.role.name()))?;
        Ok(Endpoint { role: self.role, store, parts: self.parts, retry: self.retry })
    }
}

/// Open every endpoint, in order; the first failure names its endpoint.
pub fn open_all(configs: &[Config]) -> Result<Vec<Endpoint>, String> {
    configs.iter().map(Config::open).collect()
}

/// One opened endpoint.
pub struct Endpoint {
    pub role: Role,
    pub store: Arc<dyn Store>,
    pub parts: Parts,
    pub retry: RetryPolicy,
}

impl Endpoint {
    pub fn name(&self) -> &'static str {
        self.role.name()
    }

    /// Run a store operation with this endpoint's retry policy; each retry
    /// is one WARN line saying what failed, where and when it is tried again.
    pub fn call<T>(&self, what: &str, op: impl FnMut() -> store::Result<T>) -> store::Result<T> {
        self.retry.run(op, |n, e, wait| {
            log::warn!(
                "{} endpoint: {what} failed (attempt {n}/{}), retrying in {wait:?}: {e}",
                self.name(),
                self.retry.attempts
            )
        })
    }
}

/// Run `op` on every endpoint at once, each on its own thread; the results
/// come back in the endpoints' order.
pub fn on_each<'a, T: Send>(endpoints: &'a [Endpoint], op: impl Fn(&'a Endpoint) -> T + Sync) -> Vec<T> {
    let op = &op;
    std::thread::scope(|s| {
        let handles: Vec<_> = endpoints.iter().map(|ep| s.spawn(move || op(ep))).collect();
        handles.into_iter().map(|h| h.join().expect("endpoint thread panicked")).collect()
    })
}

/// "primary endpoint s3://... or secondary endpoint s3://...", for errors.
pub fn describe(endpoints: &[Endpoint]) -> String {
    let each: Vec<String> = endpoints.iter().map(|e| format!("{} endpoint {}", e.name(), e.store.location())).collect();
    each.join(" or ")
}
