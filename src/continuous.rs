//! The long-running `snapshot`: full snapshots on the cron schedule, delta
//! snapshots from an etcd watch in between, garbage collection on a timer.
//!
//! The chain is never left with a gap: every delta starts right after the
//! last revision stored (on at least one endpoint), events are kept in
//! memory until a delta holding them is stored, and when the watch cannot
//! resume from there (compacted, or etcd went back in time) the next step
//! is a full snapshot.

use crate::backup::Job;
use crate::catalog::{self, Catalog};
use crate::compression::{self, Policy};
use crate::endpoint::{Endpoints, LATE, Role, collect_within};
use crate::etcd::{self, WatchError};
use crate::record::Recorder;
use crate::report::{self, Outcome, unix_now};
use crate::signals::{self, sleep};
use crate::snapshot::{Kind, SnapshotName};
use crate::{delta, gc, reconcile};
use crossbeam_channel::{Sender, TrySendError, bounded, unbounded};
use log::{debug, error, info, warn};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the long-running `snapshot` does besides full snapshots.
#[derive(Debug, Clone)]
pub struct Settings {
    pub schedule: crate::cron::Schedule,
    /// `None` when delta snapshots are off (period below 1s).
    pub delta_period: Option<Duration>,
    pub delta_memory_limit: usize,
    /// `None` when garbage collection is off (period of 1s or less).
    pub gc: Option<gc::Periodic>,
    /// `--verify-schedule`, when given: when and how to verify.
    pub verify: Option<(crate::cron::Schedule, crate::verify::Options)>,
    /// `--defragmentation-schedule`, unless empty: defragment every member,
    /// then take a full snapshot.
    pub defrag: Option<crate::defrag::Options>,
    pub backoff: Backoff,
}

/// Upstream's `--backoff-*` (its snapshotter's restarts): how long the
/// snapshotter waits after a failed full snapshot or a lost etcd
/// connection, growing with the failures in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backoff {
    pub multiplier: u32,
    pub attempt_limit: u32,
    pub threshold: Duration,
}

impl Backoff {
    /// The wait after `failures` (1 or more) failures in a row: 1s, then
    /// `multiplier` times longer each time, never above `threshold`, and
    /// `threshold` once `attempt_limit` is passed.
    pub fn wait(&self, failures: u32) -> Duration {
        if failures > self.attempt_limit {
            return self.threshold;
        }
        let factor = u64::from(self.multiplier.max(1)).saturating_pow(failures.saturating_sub(1));
        Duration::from_secs(factor).min(self.threshold)
    }
}

/// How often waits wake up to notice a signal.
const TICK: Duration = Duration::from_millis(200);
/// When the next scheduled full snapshot is tried after a failed one
/// taken alongside the watch (the watch itself goes on).
const RETRY: Duration = Duration::from_secs(5);
/// Unsaved events are dropped (and a full snapshot taken instead) beyond
/// this many times the memory limit, when no endpoint takes deltas.
const HOLD_LIMITS: usize = 4;
/// How long a stop waits for events still on their way.
const DRAIN: Duration = Duration::from_secs(3);

/// Run until SIGTERM/SIGINT; the exit code.
pub fn run(job: &Job, endpoints: &Endpoints, sch: &Settings, recorder: &Recorder) -> i32 {
    run_controlled(job, endpoints, sch, recorder, &Control::default())
}

/// `run`, taking snapshot requests from and reporting health to `control`
/// (the server's side).
pub fn run_controlled(job: &Job, endpoints: &Endpoints, sch: &Settings, recorder: &Recorder, control: &Control) -> i32 {
    control.health(|h| h.delta_period = sch.delta_period);
    info!(
        "Snapshotter started: full snapshots on {}, delta snapshots {}, garbage collection {}",
        sch.schedule,
        sch.delta_period.map_or("off".to_string(), |p| format!("every {p:?}")),
        sch.gc.map_or("off".to_string(), |g| format!("every {:?} ({:?})", g.period, g.policy)),
    );
    let chain = CurrentChain::default();
    let deltas = DeltaWriters::start(endpoints);
    let mut s = Snapshotter {
        job,
        sch,
        endpoints,
        deltas,
        chain: &chain,
        recorder,
        control,
        last_revision: 0,
        last_full: None,
        last_delta: None,
    };
    std::thread::scope(|scope| {
        if let Some(periodic) = sch.gc {
            let chain = &chain;
            let keep = |name: &str| chain.contains(name);
            // Reconcile after each collection: it copies only what the
            // collection keeps, and only objects listed, so complete.
            let reconcile = move |now: i64| {
                if endpoints.len() < 2 || signals::interrupted() {
                    return;
                }
                let opts = reconcile::Options {
                    policy: periodic.policy,
                    delta_retention: periodic.delta_retention,
                    dry_run: false,
                };
                let summaries = reconcile::run(endpoints, now, &opts, &keep, &chain.1);
                job.metrics.record_reconciled(&reconcile::copied(&summaries));
            };
            scope.spawn(move || gc::run_periodically(endpoints, periodic, &keep, &reconcile));
        }
        if let Some((schedule, opts)) = &sch.verify {
            let chain = &chain;
            scope.spawn(move || verify_periodically(job, endpoints, schedule, opts, &chain.1));
        }
        if let Some(opts) = &sch.defrag {
            scope.spawn(move || defrag_periodically(job, opts, control));
        }
        s.run();
        control.stop();
    });
    info!("Snapshotter stopped");
    crate::exit::OK
}

/// The snapshots a restore of what this process has stored needs: the
/// latest full snapshot it took or resumed from, and the deltas after it.
/// Garbage collection never deletes them, whatever the listing says.
/// Also every copy this process stored, which reconcile need not re-read.
#[derive(Default)]
struct CurrentChain(std::sync::Mutex<Vec<(String, u64)>>, reconcile::Verified);

impl CurrentChain {
    /// What this process stored was checked against etcd's trailer on the
    /// way: reconcile need not read it back.
    fn verified(&self, stored: &Outcome) {
        for (role, _) in stored.results.iter().filter(|(_, r)| r.is_ok()) {
            self.1.insert(*role, &stored.name, stored.bytes);
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.0.lock().unwrap().iter().any(|(n, _)| n == name)
    }

    /// A new full snapshot heads the chain; deltas stored while it was
    /// taken stay when they reach past it, unless etcd went back in time.
    fn start(&self, full: &str, revision: u64) {
        let mut chain = self.0.lock().unwrap();
        let same_history = chain.first().is_some_and(|&(_, head)| revision >= head);
        chain.retain(|(name, last)| same_history && name.starts_with("Incr-") && *last > revision);
        chain.insert(0, (full.to_string(), revision));
    }

    fn push(&self, delta: &str, last_revision: u64) {
        self.0.lock().unwrap().push((delta.to_string(), last_revision));
    }
}

struct Snapshotter<'a> {
    job: &'a Job,
    sch: &'a Settings,
    endpoints: &'a Endpoints,
    deltas: DeltaWriters,
    chain: &'a CurrentChain,
    recorder: &'a Recorder,
    control: &'a Control,
    /// Everything up to this revision is stored on at least one endpoint.
    last_revision: u64,
    /// Creation time of the latest full snapshot (unix seconds).
    last_full: Option<u64>,
    /// The latest delta snapshot stored, and when, for a request's answer.
    last_delta: Option<(Instant, Taken)>,
}

/// Why watching stopped.
enum Next {
    FullSnapshot,
    Reconnect,
    Stop,
}

impl Snapshotter<'_> {
    fn run(&mut self) {
        let mut full_now = self.resume_point();
        // Failures in a row (full snapshots, etcd connections), for the backoff.
        let mut failures = 0;
        let backoff = self.sch.backoff;
        let back_off = |failures: &mut u32, what: &str| {
            *failures += 1;
            let wait = backoff.wait(*failures);
            info!("Trying again in {wait:?} ({what}; {failures} in a row)");
            sleep(wait);
        };
        while !signals::interrupted() {
            if full_now {
                if self.full_snapshot().is_none() {
                    back_off(&mut failures, "the full snapshot failed");
                    continue;
                }
                failures = 0;
                full_now = false;
            }
            let watched = Instant::now();
            let next = match self.sch.delta_period {
                None => self.full_snapshots_only(),
                Some(period) => self.watch(period),
            };
            // A connection that worked for a while ends the run of failures.
            if watched.elapsed() > backoff.threshold {
                failures = 0;
            }
            match next {
                Next::FullSnapshot => full_now = true,
                Next::Reconnect => {
                    self.control.health(|h| h.etcd_ok = false);
                    back_off(&mut failures, "the etcd connection was lost")
                }
                Next::Stop => break,
            }
        }
    }

    fn due(&self) -> i64 {
        due_after(&self.sch.schedule, self.last_full)
    }

    fn full_snapshots_only(&mut self) -> Next {
        loop {
            while !past(self.due()) && !self.control.full_requested() {
                if signals::interrupted() {
                    return Next::Stop;
                }
                std::thread::sleep(TICK);
            }
            let requested = self.control.take_full();
            let is_final = requested.as_ref().is_some_and(|r| r.0);
            let result = self.full_snapshot_marked(is_final);
            if let Some((_, tickets)) = requested {
                self.control.answer(&tickets, &result.as_ref().map(|(_, t)| Some(t.clone())).ok_or_else(not_stored));
            }
            if result.is_none() {
                sleep(RETRY);
            }
        }
    }

    /// Where to go on from what is stored: the end of the newest chain, or
    /// `true` for a full snapshot first (none stored, or one was missed).
    fn resume_point(&mut self) -> bool {
        let catalog = match Catalog::list(self.endpoints) {
            Ok(c) => c,
            Err(e) => {
                warn!("Cannot list the stored snapshots ({e}); starting with a full snapshot");
                return true;
            }
        };
        let Some((full, deltas)) = catalog.latest_full() else {
            info!("No full snapshot stored yet; taking one now");
            return true;
        };
        self.last_full = Some(full.snapshot.created);
        let chain = match catalog::delta_chain(full, &deltas) {
            Ok(chain) => chain,
            Err(gap) => {
                warn!("Stored delta snapshots have a gap before {}; taking a full snapshot now", gap.next.name);
                return true;
            }
        };
        let last = chain.last().unwrap_or(&full).snapshot.last_revision;
        self.last_revision = last;
        self.control.health(|h| h.full_stored = Some(true));
        self.chain.start(&full.name, full.snapshot.last_revision);
        for d in &chain {
            self.chain.push(&d.name, d.snapshot.last_revision);
        }
        let missed = self.sch.schedule.next_after(full.snapshot.created as i64).is_some_and(|t| t <= unix_now() as i64);
        if missed {
            info!("The latest full snapshot {} is older than the schedule allows; taking one now", full.name);
            return true;
        }
        info!("Resuming after {} and {} delta snapshots, at revision {}", full.name, deltas.len(), last + 1);
        false
    }

    /// Take a full snapshot now and go on from it.
    fn full_snapshot(&mut self) -> Option<SnapshotName> {
        self.full_snapshot_marked(false).map(|(name, _)| name)
    }

    fn full_snapshot_marked(&mut self, is_final: bool) -> Option<(SnapshotName, Taken)> {
        let taken = take_full(self.job, self.endpoints, self.chain, self.recorder, self.control, is_final);
        // Nothing is being watched now: no change waits for a delta.
        self.control.pending(false);
        let (name, taken) = taken?;
        if name.last_revision < self.last_revision {
            warn!(
                "etcd went back in time: snapshot {name} is at revision {}, below revision {} already stored. etcd \
                 was restored from an older snapshot or re-created; this snapshot starts a new history, which restore, \
                 snapshot list and garbage collection now treat as the latest (the older history stays reachable with \
                 restore --snapshot). To keep revisions monotonic, restore with --bump-revision and --mark-compacted",
                name.last_revision, self.last_revision
            );
        }
        self.last_revision = name.last_revision;
        self.last_full = Some(name.created);
        Some((name, taken))
    }

    /// Watch etcd from the last stored revision and save delta snapshots
    /// every `period`, or sooner at the memory limit. Scheduled full
    /// snapshots run on their own thread meanwhile, so deltas go on during a
    /// long full snapshot; the chain needs no break for them, as a restore
    /// skips what the full snapshot already holds.
    fn watch(&mut self, period: Duration) -> Next {
        let (job, endpoints, chain, recorder, control) =
            (self.job, self.endpoints, self.chain, self.recorder, self.control);
        let schedule = &self.sch.schedule;
        let mut last_full = self.last_full;
        let next = std::thread::scope(|scope| {
            type Full<'s> = std::thread::ScopedJoinHandle<'s, Option<(SnapshotName, Taken)>>;
            // The full snapshot running, and the requests it answers.
            let mut full: Option<(Full<'_>, Vec<u64>)> = None;
            let mut due = due_after(schedule, last_full);
            let finish = |(handle, tickets): (Full<'_>, Vec<u64>)| {
                let result = handle.join().expect("full snapshot thread panicked");
                control.answer(&tickets, &result.as_ref().map(|(_, t)| Some(t.clone())).ok_or_else(not_stored));
                result.map(|(name, _)| name)
            };
            let next = self.watch_with(period, &mut || {
                if full.as_ref().is_some_and(|(h, _)| h.is_finished()) {
                    match finish(full.take().unwrap()) {
                        Some(name) => {
                            last_full = Some(name.created);
                            due = due_after(schedule, last_full);
                        }
                        None => due = unix_now() as i64 + RETRY.as_secs() as i64,
                    }
                }
                if full.is_some() {
                    return;
                }
                // A request goes first; it also serves as the scheduled one
                // when that is due.
                let (is_final, tickets) = match control.take_full() {
                    Some(requested) => requested,
                    None if past(due) => (false, Vec::new()),
                    None => return,
                };
                let handle = scope.spawn(move || take_full(job, endpoints, chain, recorder, control, is_final));
                full = Some((handle, tickets));
            });
            // A signal aborts it; otherwise it completes normally.
            if let Some(name) = full.and_then(&finish) {
                last_full = Some(name.created);
            }
            next
        });
        self.last_full = last_full;
        next
    }

    /// The watch loop of `watch`; `tick` runs on every wake-up.
    fn watch_with(&mut self, period: Duration, tick: &mut dyn FnMut()) -> Next {
        let mut client = match etcd::Client::connect(&self.job.etcd) {
            Ok(c) => c,
            Err(e) => {
                error!("Cannot watch etcd for delta snapshots: {e:#}");
                return Next::Reconnect;
            }
        };
        match client.status() {
            Ok(s) if (s.revision.max(0) as u64) < self.last_revision => {
                info!(
                    "etcd at {} is at revision {}, behind the {} already stored; taking a full snapshot",
                    client.endpoint(),
                    s.revision,
                    self.last_revision
                );
                return Next::FullSnapshot;
            }
            Ok(_) => {}
            Err(e) => {
                error!("Cannot watch etcd for delta snapshots: {e:#}");
                return Next::Reconnect;
            }
        }
        let start = self.last_revision + 1;
        let endpoint = client.endpoint().to_string();
        let mut watch = match client.watch(start as i64) {
            Ok(w) => w,
            Err(WatchError::Compacted { compact_revision }) => {
                compacted(&endpoint, start, compact_revision);
                return Next::FullSnapshot;
            }
            Err(e) => {
                error!("Cannot watch etcd at {endpoint} from revision {start}: {e}");
                return Next::Reconnect;
            }
        };
        debug!("Watching etcd at {endpoint} from revision {start}");
        self.control.health(|h| h.etcd_ok = true);
        let limit = self.sch.delta_memory_limit;
        let mut pending = delta::Writer::new();
        let mut period_end = Instant::now() + period;
        let mut due = false;
        let next = loop {
            self.control.pending(!pending.is_empty());
            if let Some((tickets, asked)) = self.control.take_delta() {
                let answer = self.requested_delta(&mut watch, &mut pending, asked);
                self.control.answer(&tickets, &answer);
            }
            let wake = period_end.min(Instant::now() + TICK);
            match watch.next(wake) {
                Ok(Some(events)) => {
                    push_all(&mut pending, &events);
                    if pending.len() >= limit {
                        debug!("Delta buffer reached {} bytes (limit {limit})", pending.len());
                        if let Some(next) = self.save_or_give_up(&mut pending) {
                            break next;
                        }
                    }
                }
                Ok(None) => {}
                Err(WatchError::Compacted { compact_revision }) => {
                    compacted(&endpoint, start, compact_revision);
                    break Next::FullSnapshot;
                }
                Err(e) => {
                    warn!("The etcd watch from {endpoint} ended: {e}");
                    break Next::Reconnect;
                }
            }
            if signals::interrupted() {
                self.drain(&mut watch, &mut pending);
                break Next::Stop;
            }
            if Instant::now() >= period_end {
                period_end = Instant::now() + period;
                due = true;
            }
            // Once a period is over, the first events after it are saved at
            // once (they may still be on their way after a long save).
            if due && !pending.is_empty() {
                due = false;
                if let Some(next) = self.save_or_give_up(&mut pending) {
                    break next;
                }
            }
            tick();
        };
        // What was watched is saved before anything else happens, also on
        // a signal: the events after the last delta are in memory only.
        if !pending.is_empty() && !self.save_delta(&mut pending) {
            error!(
                "{} watched events (revisions {} to {}) could not be stored on any endpoint",
                pending.events(),
                start,
                pending.last_revision().unwrap_or(0)
            );
            if !matches!(next, Next::Stop) {
                return Next::FullSnapshot;
            }
        }
        next
    }

    /// On a stop: events etcd committed before it may still be on their
    /// way; read them up to etcd's current revision (for at most `DRAIN`),
    /// so that the final delta holds every write made before the signal.
    fn drain(&self, watch: &mut etcd::Watch<'_>, pending: &mut delta::Writer) {
        let target = match watch.status() {
            Ok(s) => s.revision.max(0) as u64,
            Err(e) => {
                warn!("Cannot ask etcd for its revision before stopping: {e:#}");
                return;
            }
        };
        let end = Instant::now() + DRAIN;
        let seen = |p: &delta::Writer| p.last_revision().map_or(self.last_revision, |r| r as u64);
        while seen(pending) < target && Instant::now() < end {
            match watch.next(end) {
                Ok(Some(events)) => push_all(pending, &events),
                Ok(None) => {}
                Err(e) => {
                    warn!("The etcd watch ended while stopping: {e}");
                    return;
                }
            }
        }
        if seen(pending) < target {
            warn!(
                "Stopping before etcd's events up to revision {target} arrived; the last delta ends at {}",
                seen(pending)
            );
        }
    }

    /// A delta snapshot on request: the changes up to etcd's revision now,
    /// saved at once. With none pending, the delta stored since the request
    /// arrived (at `asked`) already holds them; `None` when there is none.
    fn requested_delta(&mut self, watch: &mut etcd::Watch<'_>, pending: &mut delta::Writer, asked: Instant) -> Answer {
        self.drain(watch, pending);
        if pending.is_empty() {
            return Ok(self.last_delta.as_ref().filter(|(at, _)| *at >= asked).map(|(_, t)| t.clone()));
        }
        if !self.save_delta(pending) {
            return Err("the delta snapshot was not stored on any endpoint (see the log)".into());
        }
        Ok(self.last_delta.as_ref().map(|(_, t)| t.clone()))
    }

    /// Save `pending`; when no endpoint takes it and too much is held,
    /// drop it and ask for a full snapshot instead.
    fn save_or_give_up(&mut self, pending: &mut delta::Writer) -> Option<Next> {
        if self.save_delta(pending) || pending.len() <= HOLD_LIMITS * self.sch.delta_memory_limit {
            return None;
        }
        error!(
            "No endpoint has taken a delta snapshot and {} bytes of events are waiting; dropping them and \
             taking a full snapshot instead",
            pending.len()
        );
        *pending = delta::Writer::new();
        Some(Next::FullSnapshot)
    }

    /// Store `pending` as one delta snapshot on every endpoint. On success
    /// (at least one endpoint), the buffer is emptied and the chain moves
    /// on; otherwise the events stay for the next try.
    fn save_delta(&mut self, pending: &mut delta::Writer) -> bool {
        let Some(last) = pending.last_revision() else { return true };
        let mut name = SnapshotName::delta(self.last_revision + 1, last as u64, unix_now());
        name.compression = self.job.compression.map_or("", Policy::suffix).to_string();
        name.encrypted = self.job.encryption.is_some();
        let name = name.to_string();
        let events = pending.events();
        let raw = pending.clone().finish();
        let data = match self.job.compression {
            Some(p) => match compression::compress(p, &raw) {
                Ok(d) => d,
                Err(e) => {
                    error!("Failed to compress delta snapshot {name}: {e}");
                    return false;
                }
            },
            None => raw,
        };
        // Sealed once, so both endpoints store the same ciphertext.
        let data = match &self.job.encryption {
            Some(r) => match crate::encryption::seal(r, &data) {
                Ok(d) => d,
                Err(e) => {
                    error!("Failed to encrypt delta snapshot {name}: {e}");
                    return false;
                }
            },
            None => data,
        };
        let started = Instant::now();
        let outcome = self.deltas.save(&name, data);
        self.job.metrics.record(Kind::Incr, Some(&outcome), started);
        debug!("Delta snapshot {name}: {events} events, {} bytes stored", outcome.bytes);
        report::report(&outcome, false);
        let stored = outcome.stored_anywhere();
        if stored {
            self.recorder.record(&outcome, last as u64);
            self.chain.verified(&outcome);
            self.chain.push(&name, last as u64);
            self.last_revision = last as u64;
            self.last_delta = Some((Instant::now(), taken(&outcome)));
            *pending = delta::Writer::new();
        }
        stored
    }
}

/// Add a watch response's events, stamped with the time they arrived.
fn push_all(pending: &mut delta::Writer, events: &[delta::Event]) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    for e in events {
        pending.push(e, now.as_secs() as i64, now.subsec_nanos());
    }
}

fn compacted(endpoint: &str, start: u64, compact_revision: i64) {
    warn!(
        "etcd at {endpoint} has compacted past revision {start} (to {compact_revision}); taking a full snapshot \
         instead of a delta"
    );
}

/// Take a full snapshot; its name when at least one endpoint stored it,
/// which then heads the current chain.
fn take_full(
    job: &Job,
    endpoints: &Endpoints,
    chain: &CurrentChain,
    recorder: &Recorder,
    control: &Control,
    is_final: bool,
) -> Option<(SnapshotName, Taken)> {
    let result = job.take_marked(endpoints, false, recorder, is_final).1;
    control.health(|h| h.full_stored = Some(result.is_some()));
    let (name, outcome) = result?;
    chain.verified(&outcome);
    chain.start(&name.to_string(), name.last_revision);
    Some((name, taken(&outcome)))
}

fn not_stored() -> String {
    "the full snapshot was not stored on any endpoint (see the log)".into()
}

/// Counts a finished delta when dropped, also when saving panicked.
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Delta snapshots waiting for one endpoint before the next one is left
/// out for it.
const DELTA_QUEUE: usize = 4;

/// One thread per endpoint saving delta snapshots in order, each with its
/// endpoint's retries, so that a slow or failing endpoint never delays the
/// other's deltas (a delta counts as stored once one endpoint has it).
struct DeltaWriters {
    queues: Vec<Sender<DeltaJob>>,
    /// Deltas each writer has not finished yet.
    busy: Vec<Arc<AtomicUsize>>,
    roles: Vec<Role>,
    max_lag: Duration,
}

struct DeltaJob {
    name: Arc<str>,
    data: Arc<Vec<u8>>,
    index: usize,
    reply: Sender<(usize, Result<(), String>)>,
}

impl DeltaWriters {
    fn start(endpoints: &Endpoints) -> DeltaWriters {
        let (queues, busy) = endpoints
            .iter()
            .map(|ep| {
                let (tx, rx) = bounded::<DeltaJob>(DELTA_QUEUE);
                let busy = Arc::new(AtomicUsize::new(0));
                let (ep, working) = (ep.clone(), busy.clone());
                std::thread::spawn(move || {
                    for job in rx {
                        let done = Decrement(&working);
                        let name = &*job.name;
                        let saved =
                            ep.call(&format!("saving {name}"), || crate::store::save(&*ep.store, name, &job.data));
                        let saved = saved.map_err(|e| e.to_string());
                        // Not busy any more before the reply, so the next save sees it.
                        drop(done);
                        report::reply_or_log(&job.reply, job.index, name, ep.role, saved);
                    }
                });
                (tx, busy)
            })
            .unzip();
        DeltaWriters { queues, busy, roles: endpoints.iter().map(|e| e.role).collect(), max_lag: endpoints.max_lag }
    }

    /// Store one delta snapshot on every endpoint; wait for them all, but
    /// once one has it, at most `max_lag` more for the others, and not at
    /// all for an endpoint still busy with earlier deltas (it is behind:
    /// waiting for it would only slow the others' deltas down).
    fn save(&self, name: &str, data: Vec<u8>) -> Outcome {
        let (bytes, name_arc, data) = (data.len() as u64, Arc::<str>::from(name), Arc::new(data));
        let (reply, done) = unbounded();
        let mut results: Vec<Option<Result<(), String>>> = vec![None; self.queues.len()];
        let mut waiting = 0;
        for (index, q) in self.queues.iter().enumerate() {
            let behind = self.busy[index].load(Ordering::SeqCst) > 0;
            // A writer that is behind replies to nobody: it logs its result.
            let reply = if behind { unbounded().0 } else { reply.clone() };
            let job = DeltaJob { name: name_arc.clone(), data: data.clone(), index, reply };
            self.busy[index].fetch_add(1, Ordering::SeqCst);
            match q.try_send(job) {
                Ok(()) if behind => {
                    results[index] = Some(Err(format!("{LATE}: still saving earlier delta snapshots; queued")))
                }
                Ok(()) => waiting += 1,
                Err(TrySendError::Full(_)) => {
                    self.busy[index].fetch_sub(1, Ordering::SeqCst);
                    results[index] = Some(Err(format!(
                        "{LATE}: {DELTA_QUEUE} earlier delta snapshots are still waiting for it; detached from this one"
                    )))
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.busy[index].fetch_sub(1, Ordering::SeqCst);
                    results[index] = Some(Err("its writer stopped".into()))
                }
            }
        }
        drop(reply);
        for (i, r) in collect_within(&done, waiting, self.max_lag) {
            results[i] = Some(r);
        }
        let results = self
            .roles
            .iter()
            .zip(results)
            .map(|(&role, r)| (role, r.unwrap_or_else(|| Err(format!("{LATE}: still saving it in the background")))))
            .collect();
        Outcome { name: name.to_string(), results, bytes }
    }
}

/// `--verify-schedule`: verify every endpoint at each scheduled time, export
/// the result, and let reconcile re-check (and so replace) what was bad.
fn verify_periodically(
    job: &Job,
    endpoints: &Endpoints,
    schedule: &crate::cron::Schedule,
    opts: &crate::verify::Options,
    verified: &reconcile::Verified,
) {
    loop {
        let Some(due) = schedule.next_after(unix_now() as i64) else { return };
        if let Next::Stop = wait_until(due) {
            return;
        }
        let report = match crate::verify::run(endpoints, opts) {
            Ok(r) => r,
            Err(e) => {
                error!("Scheduled verify failed: {e}");
                let failed: Vec<_> = endpoints.iter().map(|ep| (ep.role, None, false)).collect();
                job.metrics.record_verified(&failed);
                continue;
            }
        };
        for p in report.endpoints.iter().flat_map(|v| &v.problems) {
            if let Some(role) = p.endpoint {
                verified.forget(role, &p.object);
            }
        }
        let views: Vec<_> = report
            .endpoints
            .iter()
            .filter_map(|v| Some((v.endpoint?, v.restorable.as_ref().map(|r| r.revision), v.verified())))
            .collect();
        job.metrics.record_verified(&views);
    }
}

/// `--defragmentation-schedule`: defragment every member at each scheduled
/// time, then have the snapshotter take a full snapshot, as upstream does
/// (the first snapshot of the compact database, and a fresh base for deltas).
fn defrag_periodically(job: &Job, opts: &crate::defrag::Options, control: &Control) {
    loop {
        let Some(due) = opts.schedule.next_after(unix_now() as i64) else { return };
        if let Next::Stop = wait_until(due) {
            return;
        }
        if let Some(members) = crate::defrag::run_once(&job.etcd, opts) {
            job.metrics.record_defragmented(&members.iter().map(|m| (m.member.clone(), m.seconds)).collect::<Vec<_>>());
            info!("Defragmentation done; taking a full snapshot");
            control.request_full();
        }
    }
}

/// When the next scheduled full snapshot is due (unix seconds), after the
/// one taken at `last_full` (or from now).
fn due_after(schedule: &crate::cron::Schedule, last_full: Option<u64>) -> i64 {
    schedule.next_after(last_full.unwrap_or_else(unix_now) as i64).unwrap_or(i64::MAX)
}

fn past(unix: i64) -> bool {
    unix_now() as i64 >= unix
}

/// Sleep until `unix` seconds (then a full snapshot is due) or a signal.
fn wait_until(unix: i64) -> Next {
    while !past(unix) {
        if signals::interrupted() {
            return Next::Stop;
        }
        std::thread::sleep(TICK);
    }
    Next::FullSnapshot
}

/// A snapshot taken on request, as the server reports it.
#[derive(Debug, Clone)]
pub struct Taken {
    pub name: String,
    /// The endpoints that stored it.
    pub stored_on: Vec<Role>,
}

/// What a request for a snapshot got: `Ok(None)` for a delta when nothing
/// changed since the last one.
pub type Answer = Result<Option<Taken>, String>;

/// What the server asks of, and learns from, the running snapshotter.
/// Requests and health are plain data under short locks: the snapshotter
/// only ever takes a request and posts an answer, never waits for the
/// server, and no lock is held across I/O.
#[derive(Default)]
pub struct Control {
    requests: std::sync::Mutex<Requests>,
    answered: std::sync::Condvar,
    health: std::sync::Mutex<Health>,
}

#[derive(Default)]
struct Requests {
    next: u64,
    /// Waiting full snapshot requests: ticket and whether final.
    full: Vec<(u64, bool)>,
    /// Waiting delta snapshot requests: ticket and arrival.
    delta: Vec<(u64, Instant)>,
    answers: std::collections::HashMap<u64, Answer>,
    stopped: bool,
}

/// Inputs of `/healthz`.
#[derive(Default, Debug, Clone)]
struct Health {
    /// The snapshotter's last contact with etcd (its watch) worked.
    etcd_ok: bool,
    /// The last full snapshot attempt (or the one resumed from) is stored
    /// on at least one endpoint; `None` before the first.
    full_stored: Option<bool>,
    /// Since when watched events wait in memory for a delta snapshot.
    pending_since: Option<Instant>,
    delta_period: Option<Duration>,
}

/// The ticket of a request nobody waits for; real tickets start at 1.
const UNANSWERED: u64 = 0;

/// How often a waiting request re-checks that the process is not stopping.
const REQUEST_TICK: Duration = Duration::from_millis(200);

impl Control {
    /// Healthy: a full snapshot is stored (the last attempt, or the one
    /// resumed from, reached at least one endpoint), and, with deltas on,
    /// etcd answered the snapshotter's last contact (its watch is up) and
    /// no watched change has waited more than two delta periods for a delta
    /// to store it.
    pub fn healthy(&self) -> bool {
        let h = self.health.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let deltas_ok = match (h.pending_since, h.delta_period) {
            (Some(since), Some(period)) => since.elapsed() <= 2 * period,
            _ => true,
        };
        // Without deltas, the full snapshots are the only contact with etcd.
        let etcd_ok = h.etcd_ok || h.delta_period.is_none();
        h.full_stored == Some(true) && etcd_ok && deltas_ok
    }

    fn health(&self, change: impl FnOnce(&mut Health)) {
        change(&mut self.health.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn pending(&self, waiting: bool) {
        self.health(|h| match (waiting, h.pending_since) {
            (true, None) => h.pending_since = Some(Instant::now()),
            (false, Some(_)) => h.pending_since = None,
            _ => {}
        });
    }

    /// Ask for a full snapshot (`final`: named `.final`) and wait up to
    /// `timeout` for it. A request is answered by the first full snapshot
    /// started after it arrived, so it holds every write acknowledged
    /// before the request: requests waiting together share one snapshot; one
    /// arriving while a snapshot runs waits for it and gets the next one.
    pub fn full_snapshot(&self, is_final: bool, timeout: Duration) -> Answer {
        self.ask(|r, ticket| r.full.push((ticket, is_final)), timeout)
    }

    /// Ask for a delta snapshot of the changes so far (up to etcd's revision
    /// when the snapshotter takes the request) and wait up to `timeout`.
    pub fn delta_snapshot(&self, timeout: Duration) -> Answer {
        self.ask(|r, ticket| r.delta.push((ticket, Instant::now())), timeout)
    }

    /// Ask for a full snapshot nobody waits for (after a defragmentation).
    /// Like a server request, it waits for a full snapshot already running
    /// to end: that one may have started before the defragmentation.
    pub fn request_full(&self) {
        let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if !r.stopped {
            r.full.push((UNANSWERED, false));
        }
    }

    fn ask(&self, push: impl FnOnce(&mut Requests, u64), timeout: Duration) -> Answer {
        let end = Instant::now() + timeout;
        let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if r.stopped {
            return Err("the snapshotter is stopping".into());
        }
        r.next += 1;
        let ticket = r.next;
        push(&mut r, ticket);
        loop {
            if let Some(answer) = r.answers.remove(&ticket) {
                return answer;
            }
            let now = Instant::now();
            if r.stopped || signals::interrupted() || now >= end {
                r.full.retain(|&(t, _)| t != ticket);
                r.delta.retain(|&(t, _)| t != ticket);
                return Err(if now >= end {
                    format!("no snapshot within {timeout:?}")
                } else {
                    "the snapshotter is stopping".into()
                });
            }
            let wait = (end - now).min(REQUEST_TICK);
            r = self.answered.wait_timeout(r, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// The waiting full snapshot requests one snapshot serves: all those
    /// asking for the same finality as the oldest one.
    fn take_full(&self) -> Option<(bool, Vec<u64>)> {
        let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let is_final = r.full.first()?.1;
        let (batch, rest): (Vec<_>, Vec<_>) = r.full.iter().partition(|&&(_, f)| f == is_final);
        r.full = rest;
        Some((is_final, batch.into_iter().map(|(t, _)| t).collect()))
    }

    /// The waiting delta requests, and when the oldest arrived.
    fn take_delta(&self) -> Option<(Vec<u64>, Instant)> {
        let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = r.delta.iter().map(|&(_, at)| at).min()?;
        Some((std::mem::take(&mut r.delta).into_iter().map(|(t, _)| t).collect(), oldest))
    }

    fn answer(&self, tickets: &[u64], answer: &Answer) {
        let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for &t in tickets.iter().filter(|&&t| t != UNANSWERED) {
            r.answers.insert(t, answer.clone());
        }
        self.answered.notify_all();
    }

    /// No more requests are taken; those waiting are told.
    fn stop(&self) {
        let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        r.stopped = true;
        r.full.clear();
        r.delta.clear();
        self.answered.notify_all();
    }

    fn full_requested(&self) -> bool {
        !self.requests.lock().unwrap_or_else(|p| p.into_inner()).full.is_empty()
    }
}

fn taken(outcome: &Outcome) -> Taken {
    let stored_on = outcome.results.iter().filter(|(_, r)| r.is_ok()).map(|(role, _)| *role).collect();
    Taken { name: outcome.name.clone(), stored_on }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_up_to_the_threshold_and_stays_there_past_the_limit() {
        let b = Backoff { multiplier: 2, attempt_limit: 6, threshold: Duration::from_secs(128) };
        let waits: Vec<u64> = (1..=8).map(|n| b.wait(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 128, 128]);
        let b = Backoff { multiplier: 10, attempt_limit: 6, threshold: Duration::from_secs(30) };
        assert_eq!(b.wait(3).as_secs(), 30);
        assert_eq!(b.wait(60).as_secs(), 30, "no overflow");
    }
}
