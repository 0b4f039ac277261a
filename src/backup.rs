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
use crate::endpoint::{Endpoint, on_each};
use crate::etcd::{self, EtcdConfig};
use crate::report::{MetricsFile, Outcome, report, unix_now};
use crate::snapshot::{SnapshotName, TRAILER_LEN, TrailerCheck};
use crate::store::Upload;
use crate::store::s3::MAX_PARTS;
use crossbeam_channel::{Receiver, Sender, bounded};
use log::{debug, error, info};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    pub metrics: MetricsFile,
}

impl Job {
    /// Take one full snapshot, record it in the metrics file and log what
    /// each endpoint did. Returns the exit code and, when at least one
    /// endpoint stored it, the snapshot's name.
    pub fn take(&self, endpoints: &[Endpoint], require_all_endpoints: bool) -> (i32, Option<SnapshotName>) {
        let started = Instant::now();
        let result = full_snapshot(&self.etcd, endpoints, self.compression);
        self.metrics.record(crate::snapshot::Kind::Full, result.as_ref().ok(), started);
        match result {
            Ok(o) => {
                let code = report(&o, require_all_endpoints);
                (code, o.stored_anywhere().then(|| SnapshotName::parse(&o.name)).flatten())
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
    endpoints: &[Endpoint],
    compression: Option<Policy>,
) -> anyhow::Result<Outcome> {
    let mut client = etcd::Client::connect(etcd_cfg)?;
    let status = client.status()?;
    let mut snapshot_name = SnapshotName::full(status.revision.max(0) as u64, unix_now());
    snapshot_name.compression = compression.map_or("", Policy::suffix).to_string();
    let name = snapshot_name.to_string();
    info!(
        "Taking snapshot {name} from etcd {} (version {}, revision {})",
        client.endpoint(),
        status.version,
        status.revision
    );

    // Start every upload first, in parallel, so that a slow or dead endpoint
    // is known before etcd starts streaming.
    let uploads = on_each(endpoints, |ep| {
        ep.call("starting the upload", || ep.store.begin(&name)).map_err(|e| format!("cannot start the upload: {e}"))
    });
    let mut results: Vec<Option<Result<(), String>>> = vec![None; endpoints.len()];
    let mut live = Vec::new();
    for (i, u) in uploads.into_iter().enumerate() {
        match u {
            Ok(u) => live.push((i, u)),
            Err(e) => results[i] = Some(Err(e)),
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
        let ended = std::thread::scope(|s| {
            let mut senders = Vec::new();
            let mut handles = Vec::new();
            let mut bpps = Vec::new();
            // Compressed output can exceed its input a little (stored blocks).
            let stored = if compression.is_some() { size + size / 64 + (1 << 20) } else { size };
            for (i, upload) in live.drain(..) {
                let ep = &endpoints[i];
                let bpp = buffers_per_part(ep.parts.min_size, stored);
                bpps.push((ep.parts.max_parallel, bpp));
                let (tx, rx) = bounded(bpp);
                senders.push(tx);
                let name = &name;
                handles.push((i, s.spawn(move || endpoint_upload(ep, name, upload, rx, bpp))));
            }
            let packer = compression.map(Packer::new);
            let bound = memory_bound(&bpps) + packer.as_ref().map_or(0, Packer::memory_bound);
            debug!("etcd announced {size} bytes; buffers are bounded to {} MiB", bound >> 20);
            let ended = read_and_broadcast(&mut stream, first, size, &Pool::new(pool_capacity(&bpps)), senders, packer);
            for (i, h) in handles {
                results[i] = Some(h.join().unwrap_or_else(|_| Err("uploader thread panicked".into())));
            }
            ended
        });
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
    live: Vec<Sender<Msg>>,
    mut packer: Option<Packer>,
) -> Ended {
    let mut check = TrailerCheck::default();
    let mut out = Emitter { buf: pool.take(), pool, live, stored: 0 };
    let mut blob = first;
    let mut broken = loop {
        // The trailer is checked on etcd's bytes; compression comes after.
        check.update(&blob);
        let packed = match packer.as_mut() {
            Some(p) => p.push(&blob, &mut |o| out.emit(o)).map_err(|e| format!("compressing: {e}")),
            None => {
                out.emit(&blob);
                Ok(())
            }
        };
        if let Err(e) = packed {
            break Some(e);
        }
        if out.live.is_empty() {
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
        && let Err(e) = p.finish(&mut |o| out.emit(o))
    {
        broken = Some(format!("compressing: {e}"));
    }
    out.flush();
    let total = check.total();
    let verdict = match broken {
        Some(e) => Err(e),
        None if total != size => Err(format!("etcd announced {size} bytes but sent {total}")),
        None => check.finish(),
    };
    broadcast(&mut out.live, Msg::End(verdict.clone()));
    match verdict {
        Ok(()) => Ended::Verified(total, out.stored),
        Err(e) => Ended::Bad(e),
    }
}

/// Fills pool buffers with the bytes to store and broadcasts each full one.
struct Emitter<'a> {
    buf: Vec<u8>,
    pool: &'a Arc<Pool>,
    live: Vec<Sender<Msg>>,
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
                broadcast(&mut self.live, Msg::Data(Buffer::new(full, self.pool)));
            }
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            broadcast(&mut self.live, Msg::Data(Buffer::new(last, self.pool)));
        }
    }
}

/// Send to every endpoint still listening; forget the ones that hung up.
fn broadcast(live: &mut Vec<Sender<Msg>>, msg: Msg) {
    live.retain(|tx| {
        let m = match &msg {
            Msg::Data(c) => Msg::Data(Arc::clone(c)),
            Msg::End(v) => Msg::End(v.clone()),
        };
        tx.send(m).is_ok()
    });
}

/// One endpoint's side: parts to uploader threads, then complete or abort.
fn endpoint_upload(
    ep: &Endpoint,
    name: &str,
    upload: Box<dyn Upload>,
    rx: Receiver<Msg>,
    bpp: usize,
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
                Err(_) => break Some(Err("the snapshot reader stopped".into())),
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
