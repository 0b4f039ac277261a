//! One store endpoint, primary or secondary (or `copy`'s source): its settings, how it is opened,
//! and the one way every store call on it is retried and logged. Commands
//! open endpoints; the domain modules (backup, snapshotter, catalog, gc,
//! restore) take opened [`Endpoints`] and never see the flags.
//!
//! The endpoints of a run never wait for each other longer than
//! `--max-endpoint-lag`: [`Endpoints::each_within`] stops waiting for an
//! endpoint that far behind one that answered, and lets its call go on in
//! the background.

use crate::store::s3::S3Config;
use crate::store::{self, RetryPolicy, Store};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Primary,
    Secondary,
    /// Where `copy` reads from (`--source-*`, `SOURCE_*`); never written.
    Source,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
            Role::Source => "source",
        }
    }
    /// Prefix of the generated flag (`--secondary-<name>`).
    pub fn flag_prefix(self) -> &'static str {
        match self {
            Role::Primary => "",
            Role::Secondary => "secondary-",
            Role::Source => "source-",
        }
    }
    /// Prefix of the endpoint's environment variables (`SECONDARY_<VAR>`).
    pub fn env_prefix(self) -> &'static str {
        match self {
            Role::Primary => "",
            Role::Secondary => "SECONDARY_",
            Role::Source => "SOURCE_",
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
        let ep = Endpoint { role: self.role, store, parts: self.parts, retry: self.retry };
        // A definite answer (no object lock on the bucket) stops the run; an
        // endpoint that cannot be asked now is the writes' problem, as usual.
        match ep.store.preflight() {
            Err(e) if e.kind == store::ErrorKind::Permanent => return Err(format!("{} endpoint: {e}", ep.name())),
            Err(e) => log::warn!("{} endpoint: {e}; continuing", ep.name()),
            Ok(()) => {}
        }
        Ok(ep)
    }
}

/// The endpoints of a run, as configured, and how long one may hold back
/// the others.
#[derive(Debug, Clone)]
pub struct Configs {
    /// The primary, then the secondary when configured.
    pub each: Vec<Config>,
    pub max_lag: Duration,
    /// `--identity-file`: installed for every reader of the run on `open`.
    pub identities: Option<Arc<crate::encryption::Identities>>,
}

impl std::ops::Deref for Configs {
    type Target = [Config];
    fn deref(&self) -> &[Config] {
        &self.each
    }
}

impl Configs {
    /// Open every endpoint, in order; the first failure names its endpoint.
    pub fn open(&self) -> Result<Endpoints, String> {
        if let Some(ids) = &self.identities {
            crate::encryption::install(ids.clone());
        }
        Ok(Endpoints { each: self.each.iter().map(Config::open).collect::<Result<_, _>>()?, max_lag: self.max_lag })
    }
}

/// The opened endpoints of a run.
pub struct Endpoints {
    each: Vec<Endpoint>,
    /// How long an endpoint may hold back the others (`--max-endpoint-lag`).
    pub max_lag: Duration,
}

impl std::ops::Deref for Endpoints {
    type Target = [Endpoint];
    fn deref(&self) -> &[Endpoint] {
        &self.each
    }
}

impl Endpoints {
    /// The same endpoints seen through every object version (versioned
    /// buckets): snapshots hidden by a delete marker are listed and read.
    /// `None` when no endpoint has versions.
    pub fn all_versions(&self) -> Option<Endpoints> {
        let views: Vec<_> = self.each.iter().map(|ep| ep.store.all_versions()).collect();
        if views.iter().all(Option::is_none) {
            return None;
        }
        let each = self
            .each
            .iter()
            .zip(views)
            .map(|(ep, view)| Endpoint { store: view.unwrap_or_else(|| ep.store.clone()), ..ep.clone() })
            .collect();
        Some(Endpoints { each, max_lag: self.max_lag })
    }

    #[cfg(test)]
    pub(crate) fn new(each: Vec<Endpoint>, max_lag: Duration) -> Endpoints {
        Endpoints { each, max_lag }
    }

    /// Run `op` on every endpoint at once, each on its own thread. Once one
    /// has answered `Ok`, the others get at most `max_lag` more: one that
    /// has not answered by then is `None`, and its call goes on in the
    /// background, handing its result to `late` when it comes (e.g. to
    /// abort an upload nobody waits for). Without an `Ok`, every endpoint
    /// is waited for (each call is bounded by its own timeouts and retries).
    pub fn each_within<T, E>(
        &self,
        op: impl Fn(&Endpoint) -> Result<T, E> + Send + Sync + 'static,
        late: impl Fn(&Endpoint, Result<T, E>) + Send + Sync + 'static,
    ) -> Vec<Option<Result<T, E>>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        struct State<R> {
            slots: Vec<Option<R>>,
            first_ok: Option<Instant>,
            closed: bool,
        }
        let n = self.each.len();
        let state = Arc::new((
            Mutex::new(State { slots: (0..n).map(|_| None).collect(), first_ok: None, closed: false }),
            Condvar::new(),
        ));
        let (op, late) = (Arc::new(op), Arc::new(late));
        for (i, ep) in self.each.iter().enumerate() {
            let (ep, state, op, late) = (ep.clone(), state.clone(), op.clone(), late.clone());
            std::thread::spawn(move || {
                let result = op(&ep);
                let (lock, changed) = &*state;
                let mut s = lock.lock().unwrap();
                if s.closed {
                    drop(s);
                    late(&ep, result);
                    return;
                }
                if result.is_ok() && s.first_ok.is_none() {
                    s.first_ok = Some(Instant::now());
                }
                s.slots[i] = Some(result);
                changed.notify_all();
            });
        }
        let (lock, changed) = &*state;
        let mut s = lock.lock().unwrap();
        loop {
            if s.slots.iter().all(Option::is_some) {
                break;
            }
            match s.first_ok {
                Some(t) if t.elapsed() >= self.max_lag => break,
                Some(t) => s = changed.wait_timeout(s, self.max_lag - t.elapsed()).unwrap().0,
                None => s = changed.wait(s).unwrap(),
            }
        }
        s.closed = true;
        std::mem::take(&mut s.slots)
    }
}

/// How the result of an endpoint that was no longer waited for begins.
pub const LATE: &str = "more than --max-endpoint-lag behind the other endpoint";

/// Wait for `n` results `(endpoint index, result)` from `done`; once one
/// has succeeded, the others get at most `lag` more. Without a success,
/// wait for every one (each is bounded by its own timeouts and retries).
pub fn collect_within<T>(
    done: &crossbeam_channel::Receiver<(usize, Result<T, String>)>,
    n: usize,
    lag: Duration,
) -> Vec<(usize, Result<T, String>)> {
    let mut got = Vec::new();
    let mut deadline: Option<Instant> = None;
    while got.len() < n {
        let next = match deadline {
            Some(d) => done.recv_deadline(d).ok(),
            None => done.recv().ok(),
        };
        let Some((i, r)) = next else { break };
        if r.is_ok() && deadline.is_none() {
            deadline = Some(Instant::now() + lag);
        }
        got.push((i, r));
    }
    got
}

/// One opened endpoint.
#[derive(Clone)]
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

/// Run `op` on every endpoint at once, each on its own thread, and wait for
/// all; the results come back in the endpoints' order.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(lag: Duration) -> (crate::test_scratch::ScratchDir, Endpoints) {
        let dir = crate::test_scratch::dir("endpoints");
        let each = [Role::Primary, Role::Secondary]
            .map(|role| {
                std::fs::create_dir_all(dir.join(role.name())).unwrap();
                let backend = Backend::Local { container: dir.join(role.name()), prefix: "p".into() };
                let parts = Parts { max_parallel: 1, min_size: 1 };
                Config { role, backend, parts, retry: RetryPolicy::default() }.open().unwrap()
            })
            .to_vec();
        (dir, Endpoints::new(each, lag))
    }

    #[test]
    fn a_slow_endpoint_is_waited_for_at_most_the_lag_after_another_answered() {
        let (_dir, eps) = endpoints(Duration::from_millis(200));
        let (late_tx, late_rx) = crossbeam_channel::unbounded();
        let started = Instant::now();
        let got = eps.each_within(
            |ep| {
                if ep.role == Role::Secondary {
                    std::thread::sleep(Duration::from_secs(2));
                }
                Ok::<_, String>(ep.role)
            },
            move |ep, r| late_tx.send((ep.role, r)).unwrap(),
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_millis(1500), "{waited:?}");
        assert_eq!(got[0], Some(Ok(Role::Primary)));
        assert_eq!(got[1], None, "the secondary was not waited for");
        assert_eq!(late_rx.recv_timeout(Duration::from_secs(5)).unwrap(), (Role::Secondary, Ok(Role::Secondary)));
    }

    #[test]
    fn without_a_success_every_endpoint_is_waited_for() {
        let (_dir, eps) = endpoints(Duration::from_millis(10));
        let got = eps.each_within(
            |ep| {
                std::thread::sleep(Duration::from_millis(if ep.role == Role::Primary { 10 } else { 300 }));
                Err::<(), _>(ep.name())
            },
            |_, _| panic!("nothing is late"),
        );
        assert_eq!(got, [Some(Err("primary")), Some(Err("secondary"))]);
    }

    #[test]
    fn collecting_stops_the_lag_after_the_first_success() {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send((1, Err::<(), _>("refused".to_string()))).unwrap();
        tx.send((0, Ok(()))).unwrap();
        let started = Instant::now();
        let got = collect_within(&rx, 3, Duration::from_millis(100));
        assert_eq!(got.len(), 2);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
