//! One full snapshot, streamed from etcd to every store endpoint at once.
//!
//! The reader (the calling thread) fills fixed-size buffers from a bounded
//! pool and broadcasts each one, shared and never copied, over a bounded
//! channel per endpoint. Each endpoint's coordinator groups buffers into
//! parts of its own size and hands them to its own pool of uploader threads.
//! An endpoint that fails is aborted and drops its channel, which detaches
//! it: the reader skips it from then on. Uploads are completed only after
//! the stream ended and etcd's SHA-256 trailer matched; otherwise they are
//! aborted, so nothing partial ever becomes visible.

use crate::compression::{Packer, Policy};
use crate::encryption::{Recipients, Sealer};
use crate::endpoint::{Endpoint, Endpoints, LATE, Role, collect_within};
use crate::etcd::{self, EtcdConfig};
use crate::record::Recorder;
use crate::report::{MetricsFile, Outcome, report, unix_now};
use crate::snapshot::{SnapshotName, TRAILER_LEN, TrailerCheck};
use crate::store::Upload;
use crate::store::s3::MAX_PARTS;
use anyhow::Context;
use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError, bounded};
use log::{debug, error, info, warn};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Size of one shared buffer. Parts are whole numbers of buffers.
pub const BUFFER: usize = 1 << 20;

/// Buffers in a part for this endpoint: its own minimum, grown so that a
/// snapshot of `size` bytes needs at most 10,000 parts.
pub fn buffers_per_part(min_part_size: u64, size: u64) -> usize {
    let part = min_part_size.max(size.div_ceil(MAX_PARTS as u64));
    part.div_ceil(BUFFER as u64) as usize
}

/// Peak bytes held in buffers: per endpoint, one part being assembled, one
/// being handed over, one queued in its channel and one per uploader, plus
/// the reader's own buffer. Independent of the snapshot size (up to
/// 10,000 parts of the minimum size).
pub fn memory_bound(endpoints: &[(usize, usize)]) -> usize {
    pool_capacity(endpoints) * BUFFER
}

/// `endpoints` holds (max parallel uploads, buffers per part) per endpoint.
fn pool_capacity(endpoints: &[(usize, usize)]) -> usize {
    1 + endpoints.iter().map(|&(parallel, bpp)| (parallel + 2) * bpp + bpp).sum::<usize>()
}

/// What every full snapshot needs besides the endpoints.
#[derive(Debug)]
pub struct Job {
    pub etcd: EtcdConfig,
    /// `None` with `--compress-snapshots=false`.
    pub compression: Option<Policy>,
    /// `--encrypt-to`/`--encrypt-to-file`: age after compression.
    pub encryption: Option<Recipients>,
    pub metrics: MetricsFile,
}

impl Job {
    /// Take one full snapshot, record it in the metrics file and log what
    /// each endpoint did. Returns the exit code and, when at least one
    /// endpoint stored it, the snapshot's name and what each endpoint did.
    /// `recorder` then records etcd's HashKV with it.
    pub fn take(
        &self,
        endpoints: &Endpoints,
        require_all_endpoints: bool,
        recorder: &Recorder,
    ) -> (i32, Option<(SnapshotName, Outcome)>) {
        self.take_marked(endpoints, require_all_endpoints, recorder, false)
    }

    /// `take`, named `<name>.final` when `is_final` (upstream's final full
    /// snapshot, `/snapshot/full?final=true`).
    pub fn take_marked(
        &self,
        endpoints: &Endpoints,
        require_all_endpoints: bool,
        recorder: &Recorder,
        is_final: bool,
    ) -> (i32, Option<(SnapshotName, Outcome)>) {
        let started = Instant::now();
        let result = full_snapshot(&self.etcd, endpoints, self.compression, self.encryption.as_ref(), is_final);
        self.metrics.record(crate::snapshot::Kind::Full, result.as_ref().ok(), started);
        match result {
            Ok(o) => {
                let code = report(&o, require_all_endpoints);
                match o.stored_anywhere().then(|| SnapshotName::parse(&o.name)).flatten() {
                    Some(name) => {
                        recorder.record(&o, name.last_revision);
                        (code, Some((name, o)))
                    }
                    None => (code, None),
                }
            }
            Err(e) => {
                error!("Failed to take snapshot: {e:#}");
                (crate::exit::FAILED, None)
            }
        }
    }
}

/// Take one full snapshot and store it on every endpoint. `Err` means no
/// upload was attempted (etcd unreachable) or the snapshot itself was bad;
/// per-endpoint failures are in the `Outcome`.
pub fn full_snapshot(
    etcd_cfg: &EtcdConfig,
    endpoints: &Endpoints,
    compression: Option<Policy>,
    encryption: Option<&Recipients>,
    is_final: bool,
) -> anyhow::Result<Outcome> {
    let mut client = etcd::Client::connect(etcd_cfg)?;
    let status = client.status()?;
    let mut snapshot_name = SnapshotName::full(status.revision.max(0) as u64, unix_now());
    snapshot_name.compression = compression.map_or("", Policy::suffix).to_string();
    snapshot_name.is_final = is_final;
    snapshot_name.encrypted = encryption.is_some();
    // Sealed once here, before the broadcast: every endpoint gets the same
    // ciphertext (one file key), as it gets the same compressed bytes.
    let sealer = encryption.map(Sealer::new).transpose().context("starting age encryption")?;
    let name = snapshot_name.to_string();
    info!(
        "Taking snapshot {name} from etcd {} (version {}, revision {})",
        client.endpoint(),
        status.version,
        status.revision
    );

    // Start every upload at once, so that a slow or dead endpoint is known
    // before etcd starts streaming. One that has not started `max_lag`
    // after another did is left out; an upload it starts later is aborted.
    let lag = endpoints.max_lag;
    let (begin_name, late_name) = (name.clone(), name.clone());
    let uploads = endpoints.each_within(
        move |ep| {
            ep.call("starting the upload", || ep.store.begin(&begin_name))
                .map_err(|e| format!("cannot start the upload: {e}"))
        },
        move |ep, started| {
            if let Ok(upload) = started {
                abort(ep, &late_name, &*upload);
            }
        },
    );
    let mut results: Vec<Option<Result<(), String>>> = vec![None; endpoints.len()];
    let mut live = Vec::new();
    for (i, u) in uploads.into_iter().enumerate() {
        match u {
            Some(Ok(u)) => live.push((i, u)),
            Some(Err(e)) => results[i] = Some(Err(e)),
            None => results[i] = Some(Err(format!("{LATE} starting the upload: detached from this snapshot"))),
        }
    }
    let mut bytes = 0;
    if !live.is_empty() {
        let opened = client.snapshot().and_then(|mut stream| first_message(&mut stream).map(|f| (stream, f)));
        let (mut stream, (first, size)) = match opened {
            Ok(v) => v,
            Err(e) => {
                for (i, u) in &live {
                    abort(&endpoints[*i], &name, &**u);
                }
                return Err(e.context(format!("snapshot {name}: nothing was stored")));
            }
        };
        let started = Instant::now();
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let mut lanes = Vec::new();
        let mut bpps = Vec::new();
        // Compressed output can exceed its input a little (stored blocks).
        let mut stored = if compression.is_some() { size + size / 64 + (1 << 20) } else { size };
        if sealer.is_some() {
            // 16 bytes per 64 KiB chunk, the nonce and a header (one stanza per recipient).
            stored += stored / 4096 + (64 << 10);
        }
        for (i, upload) in live.drain(..) {
            let ep = endpoints[i].clone();
            let bpp = buffers_per_part(ep.parts.min_size, stored);
            bpps.push((ep.parts.max_parallel, bpp));
            let (tx, rx) = bounded(bpp);
            let why = Arc::new(Mutex::new(None));
            lanes.push(Lane { tx, role: ep.role, held: Duration::ZERO, why: why.clone() });
            let (name, done_tx) = (name.clone(), done_tx.clone());
            // Not scoped: an endpoint that falls behind must not hold this
            // function (and so the other endpoint's outcome) until it ends.
            let _running = Background::enter();
            std::thread::spawn(move || {
                let _running = _running;
                let result = endpoint_upload(&ep, &name, upload, rx, bpp, &why);
                crate::report::reply_or_log(&done_tx, i, &name, ep.role, result);
            });
        }
        drop(done_tx);
        let packer = compression.map(Packer::new);
        let bound = memory_bound(&bpps)
            + packer.as_ref().map_or(0, Packer::memory_bound)
            + sealer.as_ref().map_or(0, |_| Sealer::memory_bound() + BUFFER);
        debug!("etcd announced {size} bytes; buffers are bounded to {} MiB", bound >> 20);
        let pool = Pool::new(pool_capacity(&bpps));
        let ended = read_and_broadcast(&mut stream, first, size, &pool, Lanes { lanes, max_lag: lag }, packer, sealer);
        for (i, r) in collect_within(&done_rx, results.iter().filter(|r| r.is_none()).count(), lag) {
            results[i] = Some(r);
        }
        for r in results.iter_mut().filter(|r| r.is_none()) {
            *r = Some(Err(format!("{LATE} finishing the upload: it goes on in the background")));
        }
        match ended {
            Ended::Verified(total, stored) => {
                bytes = stored;
                let secs = started.elapsed().as_secs_f64();
                debug!(
                    "streamed {total} bytes in {secs:.2}s ({:.1} MB/s), stored {stored} bytes",
                    total as f64 / secs.max(1e-9) / 1e6
                );
            }
            Ended::Bad(reason) => anyhow::bail!(
                "snapshot {name} from etcd {}: {reason}; every upload was aborted, nothing was stored",
                client.endpoint()
            ),
            Ended::NobodyListening => {}
        }
    }
    let results =
        endpoints.iter().zip(results).map(|(ep, r)| (ep.role, r.expect("every endpoint has a result"))).collect();
    Ok(Outcome { name, results, bytes })
}

/// Uploads still running on their own threads, so that `snapshot --once`
/// can let a detached upload finish (or abort) before the process exits.
struct Background;

static BACKGROUND: (Mutex<usize>, std::sync::Condvar) = (Mutex::new(0), std::sync::Condvar::new());

impl Background {
    fn enter() -> Background {
        *BACKGROUND.0.lock().unwrap() += 1;
        Background
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        *BACKGROUND.0.lock().unwrap() -= 1;
        BACKGROUND.1.notify_all();
    }
}

/// Wait up to `max` for uploads detached from their snapshot to end;
/// returns how many are still running.
pub fn wait_for_background_uploads(max: Duration) -> usize {
    let (lock, ended) = &BACKGROUND;
    let guard = lock.lock().unwrap();
    let (running, _) = ended.wait_timeout_while(guard, max, |n| *n > 0).unwrap();
    *running
}

/// Skip leading empty messages (etcd 3.6 announces its version first) and
/// learn the snapshot size: bytes still to come plus this message's bytes.
fn first_message(stream: &mut etcd::SnapshotStream<'_>) -> anyhow::Result<(Vec<u8>, u64)> {
    loop {
        match stream.next()? {
            Some(m) if m.blob.is_empty() && m.remaining_bytes == 0 => continue,
            Some(m) => {
                let size = m.remaining_bytes + m.blob.len() as u64 + TRAILER_LEN as u64;
                return Ok((m.blob, size));
            }
            None => anyhow::bail!("etcd ended the snapshot stream before sending any data"),
        }
    }
}

enum Msg {
    Data(Arc<Buffer>),
    /// The stream ended; `Ok` only when the trailer matched.
    End(Result<(), String>),
}

/// How the reading ended.
enum Ended {
    /// The whole snapshot went out and its trailer matched.
    /// etcd's bytes, and the bytes stored (compressed or not).
    Verified(u64, u64),
    /// Broken stream, wrong size or trailer mismatch: nothing may be kept.
    Bad(String),
    /// Every endpoint failed and hung up; their own errors say why.
    NobodyListening,
}

/// Reads the whole stream into shared buffers and broadcasts them, then
/// tells every endpoint still listening whether the snapshot verified.
fn read_and_broadcast(
    stream: &mut etcd::SnapshotStream<'_>,
    first: Vec<u8>,
    size: u64,
    pool: &Arc<Pool>,
    live: Lanes,
    mut packer: Option<Packer>,
    sealer: Option<Sealer>,
) -> Ended {
    let mut check = TrailerCheck::default();
    let mut out = Emitter { buf: pool.take(), pool, live, stored: 0 };
    // What compression emits is sealed, when encrypting, then stored.
    let mut sealed = Sealed { sealer, failed: None };
    let mut blob = first;
    let mut broken = loop {
        // The trailer is checked on etcd's bytes; compression comes after.
        check.update(&blob);
        let packed = match packer.as_mut() {
            Some(p) => p.push(&blob, &mut |o| sealed.put(o, &mut out)).map_err(|e| format!("compressing: {e}")),
            None => {
                sealed.put(&blob, &mut out);
                Ok(())
            }
        };
        if let Err(e) = packed.and(sealed.result()) {
            break Some(e);
        }
        if out.live.lanes.is_empty() {
            return Ended::NobodyListening;
        }
        if crate::signals::interrupted() {
            break Some("interrupted by a signal".to_string());
        }
        match stream.next() {
            Ok(Some(m)) => blob = m.blob,
            Ok(None) => break None,
            Err(e) => break Some(format!("{e:#}")),
        }
    };
    if let (None, Some(p)) = (&broken, packer.take())
        && let Err(e) = p.finish(&mut |o| sealed.put(o, &mut out))
    {
        broken = Some(format!("compressing: {e}"));
    }
    if broken.is_none() {
        broken = sealed.finish(&mut out).err();
    }
    out.flush();
    let total = check.total();
    let verdict = match broken {
        Some(e) => Err(e),
        None if total != size => Err(format!("etcd announced {size} bytes but sent {total}")),
        None => check.finish(),
    };
    out.live.broadcast(Msg::End(verdict.clone()));
    match verdict {
        Ok(()) => Ended::Verified(total, out.stored),
        Err(e) => Ended::Bad(e),
    }
}

/// The age sealer between compression and the emitter, if encrypting; its
/// first error is kept for the reader loop to end on.
struct Sealed {
    sealer: Option<Sealer>,
    failed: Option<std::io::Error>,
}

impl Sealed {
    fn put(&mut self, o: &[u8], out: &mut Emitter) {
        match self.sealer.as_mut() {
            None => out.emit(o),
            Some(s) if self.failed.is_none() => {
                if let Err(e) = s.push(o, &mut |c| out.emit(c)) {
                    self.failed = Some(e);
                }
            }
            Some(_) => {}
        }
    }

    fn result(&self) -> Result<(), String> {
        self.failed.as_ref().map_or(Ok(()), |e| Err(format!("encrypting: {e}")))
    }

    fn finish(mut self, out: &mut Emitter) -> Result<(), String> {
        self.result()?;
        match self.sealer.take() {
            Some(s) => s.finish(&mut |c| out.emit(c)).map_err(|e| format!("encrypting: {e}")),
            None => Ok(()),
        }
    }
}

/// Fills pool buffers with the bytes to store and broadcasts each full one.
struct Emitter<'a> {
    buf: Vec<u8>,
    pool: &'a Arc<Pool>,
    live: Lanes,
    stored: u64,
}

impl Emitter<'_> {
    fn emit(&mut self, mut rest: &[u8]) {
        self.stored += rest.len() as u64;
        while !rest.is_empty() {
            let n = (BUFFER - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == BUFFER {
                let full = std::mem::replace(&mut self.buf, self.pool.take());
                self.live.broadcast(Msg::Data(Buffer::new(full, self.pool)));
            }
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            self.live.broadcast(Msg::Data(Buffer::new(last, self.pool)));
        }
    }
}

/// The endpoints still taking the stream, each through its bounded channel.
struct Lanes {
    lanes: Vec<Lane>,
    max_lag: Duration,
}

struct Lane {
    tx: Sender<Msg>,
    role: Role,
    /// How long the reader has waited for this endpoint while another one
    /// had room: the time it held the others back.
    held: Duration,
    /// Why the reader let go of it, for its result.
    why: Arc<Mutex<Option<String>>>,
}

impl Lanes {
    /// Send to every endpoint still listening; forget the ones that hung
    /// up, and let go of one that has held the others back for `max_lag`.
    /// Waiting while every endpoint is full is the pipeline's own pace and
    /// is not held against anyone.
    fn broadcast(&mut self, msg: Msg) {
        let copy = || match &msg {
            Msg::Data(c) => Msg::Data(Arc::clone(c)),
            Msg::End(v) => Msg::End(v.clone()),
        };
        // Every endpoint with room first; a full one is then waited for
        // only as long as it keeps the others from going on.
        let (mut full, mut gone) = (Vec::new(), Vec::new());
        for (i, lane) in self.lanes.iter().enumerate() {
            match lane.tx.try_send(copy()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => full.push(i),
                Err(TrySendError::Disconnected(_)) => gone.push(i),
            }
        }
        for i in full {
            if !self.wait_send(i, copy(), &gone) {
                gone.push(i);
            }
        }
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            self.lanes.remove(i);
        }
    }

    /// Whether lane `i` took `m`; `gone` are the lanes known to be gone.
    fn wait_send(&mut self, i: usize, mut m: Msg, gone: &[usize]) -> bool {
        loop {
            let waited = Instant::now();
            match self.lanes[i].tx.send_timeout(m, TICK) {
                Ok(()) => return true,
                Err(SendTimeoutError::Disconnected(_)) => return false,
                Err(SendTimeoutError::Timeout(back)) => m = back,
            }
            let others_have_room =
                self.lanes.iter().enumerate().any(|(j, l)| j != i && !gone.contains(&j) && !l.tx.is_full());
            if !others_have_room {
                continue;
            }
            let lane = &mut self.lanes[i];
            lane.held += waited.elapsed();
            if lane.held >= self.max_lag {
                let why = format!(
                    "{LATE} (it held the snapshot stream back for {:.1?}): detached from this snapshot",
                    lane.held
                );
                warn!("{} endpoint is {why}", lane.role.name());
                *lane.why.lock().unwrap() = Some(why);
                return false;
            }
        }
    }
}

/// How often a wait on one endpoint looks at the others.
const TICK: Duration = Duration::from_millis(20);

/// One endpoint's side: parts to uploader threads, then complete or abort.
fn endpoint_upload(
    ep: &Endpoint,
    name: &str,
    upload: Box<dyn Upload>,
    rx: Receiver<Msg>,
    bpp: usize,
    why: &Mutex<Option<String>>,
) -> Result<(), String> {
    let failed: Mutex<Option<String>> = Mutex::new(None);
    let upload = &*upload;
    let verdict = std::thread::scope(|s| {
        let (work_tx, work_rx) = bounded::<Part>(0);
        for _ in 0..ep.parts.max_parallel {
            let (work_rx, failed) = (work_rx.clone(), &failed);
            s.spawn(move || {
                for part in work_rx {
                    if failed.lock().unwrap().is_some() {
                        continue; // drain, so the coordinator never blocks
                    }
                    let slices: Vec<&[u8]> = part.buffers.iter().map(|c| &c.data[..]).collect();
                    let what = format!("uploading part {}", part.number);
                    let r = ep.call(&what, || upload.put_part(part.number, part.offset, &slices));
                    if let Err(e) = r {
                        failed.lock().unwrap().get_or_insert(format!("part {}: {e}", part.number));
                    }
                }
            });
        }
        let mut part = Part { number: 1, offset: 0, buffers: Vec::with_capacity(bpp) };
        let verdict = loop {
            if failed.lock().unwrap().is_some() {
                break None;
            }
            match rx.recv() {
                Ok(Msg::Data(buffer)) => {
                    part.buffers.push(buffer);
                    if part.buffers.len() == bpp {
                        let next =
                            Part { number: part.number + 1, offset: part.end(), buffers: Vec::with_capacity(bpp) };
                        let _ = work_tx.send(std::mem::replace(&mut part, next));
                    }
                }
                Ok(Msg::End(v)) => {
                    if v.is_ok() && !part.buffers.is_empty() {
                        let _ = work_tx.send(part);
                    }
                    break Some(v);
                }
                Err(_) => {
                    let why = why.lock().unwrap().clone();
                    break Some(Err(why.unwrap_or_else(|| "the snapshot reader stopped".into())));
                }
            }
        };
        // Hanging up detaches this endpoint from the broadcast at once,
        // before waiting for the uploads still running.
        drop(rx);
        drop(work_tx);
        verdict
    });
    let result = match (failed.into_inner().unwrap(), verdict) {
        (Some(cause), _) => Err(cause),
        (None, Some(Ok(()))) => {
            ep.call("completing the upload", || upload.complete()).map_err(|e| format!("completing the upload: {e}"))
        }
        (None, Some(Err(e))) => Err(e),
        (None, None) => Err("upload failed".into()),
    };
    if result.is_err() {
        abort(ep, name, upload);
    }
    result
}

fn abort(ep: &Endpoint, name: &str, upload: &dyn Upload) {
    if let Err(e) = ep.call("aborting the upload", || upload.abort()) {
        error!(
            "{} endpoint: could not abort the multipart upload of {name}; an incomplete upload may remain: {e}",
            ep.name()
        );
    }
}

struct Part {
    number: u32,
    offset: u64,
    buffers: Vec<Arc<Buffer>>,
}

impl Part {
    fn end(&self) -> u64 {
        self.offset + self.buffers.iter().map(|c| c.data.len() as u64).sum::<u64>()
    }
}

/// A filled buffer, shared by every endpoint; back to the pool when the
/// last one lets go.
struct Buffer {
    data: Vec<u8>,
    pool: Arc<Pool>,
}

impl Buffer {
    fn new(data: Vec<u8>, pool: &Arc<Pool>) -> Arc<Buffer> {
        Arc::new(Buffer { data, pool: Arc::clone(pool) })
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut data = std::mem::take(&mut self.data);
        data.clear();
        let _ = self.pool.give.send(data);
    }
}

/// A fixed number of `BUFFER`-sized buffers, made on first use. Taking one
/// blocks while all are in use: that is the memory bound.
struct Pool {
    give: Sender<Vec<u8>>,
    free: Receiver<Vec<u8>>,
    made: Mutex<usize>,
    capacity: usize,
}

impl Pool {
    fn new(capacity: usize) -> Arc<Pool> {
        let (give, free) = bounded(capacity);
        Arc::new(Pool { give, free, made: Mutex::new(0), capacity })
    }

    fn take(&self) -> Vec<u8> {
        if let Ok(b) = self.free.try_recv() {
            return b;
        }
        {
            let mut made = self.made.lock().unwrap();
            if *made < self.capacity {
                *made += 1;
                return Vec::with_capacity(BUFFER);
            }
        }
        self.free.recv().expect("the pool owns a sender")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_respects_minimum_and_part_limit() {
        assert_eq!(buffers_per_part(5 << 20, 200 << 20), 5);
        assert_eq!(buffers_per_part((5 << 20) + 1, 200 << 20), 6);
        assert_eq!(buffers_per_part(8 << 20, 20 << 20), 8);
        // 100 GiB with 5 MiB parts would need 20,480 parts: grow to stay under 10,000.
        let bpp = buffers_per_part(5 << 20, 100 << 30);
        assert!((100u64 << 30).div_ceil((bpp * BUFFER) as u64) <= MAX_PARTS as u64, "{bpp}");
        assert_eq!(bpp, 11);
    }

    #[test]
    fn memory_bound_of_the_defaults() {
        // Two endpoints with 5 uploaders and 5 MiB parts each.
        assert_eq!(memory_bound(&[(5, 5), (5, 5)]) >> 20, 81);
        assert_eq!(memory_bound(&[(5, 5)]) >> 20, 41);
    }

    /// Lanes of capacity 1; each consumer takes a message every `pace` (or
    /// never); returns what each got and whether it was let go, and how
    /// long the broadcasting took.
    fn stream(paces: &[Option<Duration>], messages: usize, max_lag: Duration) -> (Vec<(usize, bool)>, Duration) {
        let mut lanes = Vec::new();
        let mut consumers = Vec::new();
        for pace in paces {
            let (tx, rx) = bounded(1);
            let why = Arc::new(Mutex::new(None));
            lanes.push(Lane { tx, role: Role::Primary, held: Duration::ZERO, why: why.clone() });
            let pace = *pace;
            consumers.push((
                why,
                std::thread::spawn(move || {
                    let Some(pace) = pace else {
                        std::thread::sleep(Duration::from_secs(3));
                        return 0;
                    };
                    let mut n = 0;
                    while rx.recv().is_ok() {
                        n += 1;
                        std::thread::sleep(pace);
                    }
                    n
                }),
            ));
        }
        let mut lanes = Lanes { lanes, max_lag };
        let started = Instant::now();
        for _ in 0..messages {
            lanes.broadcast(Msg::End(Ok(())));
        }
        let took = started.elapsed();
        drop(lanes);
        (consumers.into_iter().map(|(why, h)| (h.join().unwrap(), why.lock().unwrap().is_some())).collect(), took)
    }

    #[test]
    fn a_stalled_endpoint_is_let_go_after_holding_the_other_back_for_the_lag() {
        let (got, took) = stream(&[Some(Duration::ZERO), None], 100, Duration::from_millis(200));
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(1), "{took:?}");
        assert_eq!(got[0], (100, false), "the healthy endpoint got everything");
        assert!(got[1].1, "the stalled one was let go");
    }

    #[test]
    fn the_pipelines_own_pace_is_held_against_nobody() {
        // Both equally slow: 30 messages take ~0.6 s, far over the lag.
        let pace = Some(Duration::from_millis(20));
        assert_eq!(stream(&[pace, pace], 30, Duration::from_millis(100)).0, [(30, false), (30, false)]);
        // Alone, an endpoint is never let go.
        assert_eq!(stream(&[pace], 20, Duration::from_millis(50)).0, [(20, false)]);
    }

    #[test]
    fn pool_blocks_at_capacity_and_recycles() {
        let pool = Pool::new(2);
        let a = Buffer::new(pool.take(), &pool);
        let b = pool.take();
        assert!(pool.free.try_recv().is_err());
        let p2 = Arc::clone(&pool);
        let waiter = std::thread::spawn(move || p2.take().capacity());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a third buffer must wait");
        drop(a);
        assert!(waiter.join().unwrap() >= BUFFER);
        assert_eq!(*pool.made.lock().unwrap(), 2);
        drop(b);
    }
}
