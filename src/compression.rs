//! Decompression of the snapshot formats upstream writes, chosen by the
//! name's suffix: `.gz` (gzip; several members allowed), `.zlib`, and `.Z`
//! (Go's compress/lzw: LSB bit order, 8-bit literals, codes up to 12 bits,
//! no header: not the Unix `compress` format despite the suffix).

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use flate2::read::{MultiGzDecoder, ZlibDecoder};
use flate2::{Compress, Compression, FlushCompress, Status};
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};

/// A reader that decompresses `inner` as the suffix says ("" = as is).
pub fn decoder<'a>(suffix: &str, inner: impl Read + 'a) -> Result<Box<dyn Read + 'a>, String> {
    if suffix.is_empty() {
        return Ok(Box::new(inner));
    }
    match Policy::from_suffix(suffix) {
        Some(Policy::Gzip) => Ok(Box::new(MultiGzDecoder::new(inner))),
        Some(Policy::Zlib) => Ok(Box::new(ZlibDecoder::new(inner))),
        Some(Policy::Lzw) => Ok(Box::new(LzwReader::new(inner))),
        Some(Policy::Zstd) => Ok(Box::new(zstd::stream::read::Decoder::new(inner).map_err(|e| format!("zstd: {e}"))?)),
        None => Err(format!("compression {suffix:?} is not supported")),
    }
}

/// How `snapshot` compresses (`--compression-policy`), as upstream names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    Gzip,
    Zlib,
    Lzw,
    /// Not written by upstream (which cannot read it); multithreaded.
    Zstd,
}

/// Every compression: its `--compression-policy` name and the object name
/// suffix upstream gives it. Names are parsed, written and decoded by this
/// one table, in the order of [`Policy`].
const FORMATS: [(Policy, &str, &str); 4] = [
    (Policy::Gzip, "gzip", ".gz"),
    (Policy::Zlib, "zlib", ".zlib"),
    (Policy::Lzw, "lzw", ".Z"),
    (Policy::Zstd, "zstd", ".zst"),
];

// `Policy::suffix` indexes the table by the enum's value.
const _: () = {
    let mut i = 0;
    while i < FORMATS.len() {
        assert!(FORMATS[i].0 as usize == i, "FORMATS is in the order of Policy");
        i += 1;
    }
};

impl Policy {
    pub fn parse(s: &str) -> Result<Policy, String> {
        FORMATS
            .iter()
            .find(|(_, name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(p, ..)| p)
            .ok_or_else(|| format!("unknown compression policy {s:?}: use gzip, zlib, lzw or zstd"))
    }

    /// The object name suffix upstream uses.
    pub fn suffix(self) -> &'static str {
        FORMATS[self as usize].2
    }

    /// The compression an object name suffix (with its dot) stands for.
    pub fn from_suffix(suffix: &str) -> Option<Policy> {
        FORMATS.iter().find(|&&(.., s)| s == suffix).map(|&(p, ..)| p)
    }
}

/// Raw snapshot bytes in, compressed bytes out through a callback, in order.
/// gzip and zlib are compressed in parallel, `BLOCK` bytes at a time, each
/// block deflated at `LEVEL` or, when a sample says it would not shrink
/// enough, stored but for its runs of zeros (see [`Deflater`]): gzip
/// as independent members (one valid file that Go's and every multi-stream
/// reader reads), zlib as one stream of independently deflated segments
/// joined with sync flushes, as pigz does. LZW runs on the calling thread.
pub struct Packer {
    inner: Inner,
}

enum Inner {
    Lzw(LzwWriter<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Deflate(ParallelDeflate),
}

/// Raw bytes per gzip member.
pub const BLOCK: usize = 1 << 20;

impl Packer {
    pub fn new(policy: Policy) -> Packer {
        let inner = match policy {
            Policy::Gzip => Inner::Deflate(ParallelDeflate::new(false)),
            Policy::Zlib => Inner::Deflate(ParallelDeflate::new(true)),
            Policy::Lzw => Inner::Lzw(LzwWriter::new(Vec::new())),
            Policy::Zstd => Inner::Zstd(zstd_encoder()),
        };
        Packer { inner }
    }

    /// Bytes this packer holds at most, whatever the snapshot size: gzip and
    /// zlib blocks queued, being compressed and waiting to be emitted in
    /// order, plus each worker's two deflate states (under 1 MiB); LZW only
    /// its table and a small output buffer.
    pub fn memory_bound(&self) -> usize {
        match self.inner {
            Inner::Deflate(_) => ParallelDeflate::workers() * 7 * BLOCK,
            Inner::Lzw(_) => 1 << 20,
            // Per worker: a job (4 × the window at level 3) in and out.
            Inner::Zstd(_) => ParallelDeflate::workers() * 8 * (1 << 21),
        }
    }

    pub fn push(&mut self, raw: &[u8], out: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        match &mut self.inner {
            Inner::Lzw(e) => {
                e.write_all(raw)?;
                out(e.get_ref());
                e.get_mut().clear();
            }
            Inner::Zstd(e) => {
                e.write_all(raw)?;
                out(e.get_ref());
                e.get_mut().clear();
            }
            Inner::Deflate(d) => d.push(raw, out)?,
        }
        Ok(())
    }

    pub fn finish(self, out: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        match self.inner {
            Inner::Lzw(e) => out(&e.finish()?),
            Inner::Zstd(e) => out(&e.finish()?),
            Inner::Deflate(d) => d.finish(out)?,
        }
        Ok(())
    }
}

/// zstd at its default level 3, on one worker thread per core (zstd's own
/// multithreading), so it keeps up with the other policies.
fn zstd_encoder() -> zstd::stream::write::Encoder<'static, Vec<u8>> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd level 3 is valid");
    let workers = ParallelDeflate::workers() as u32;
    if workers > 1 {
        // Only fails when libzstd was built without threads; one thread then.
        let _ = e.multithread(workers);
    }
    e
}

/// Compress a small object (a delta snapshot) in one go.
pub fn compress(policy: Policy, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 2);
    let mut packer = Packer::new(policy);
    packer.push(data, &mut |o| out.extend_from_slice(o))?;
    packer.finish(&mut |o| out.extend_from_slice(o))?;
    Ok(out)
}

/// A block to compress: sequence number, bytes, whether it is the last.
type Job = (u64, Vec<u8>, bool);
/// A block compressed: sequence number, the member or segment, and (zlib)
/// the Adler-32 and length of its raw bytes, combined in order when emitted.
type Packed = (u64, io::Result<Vec<u8>>, u32, usize);

/// Level for blocks worth compressing. Measured on the `k8s` dataset
/// (scripts/bench-data; zlib-rs, CPU s per GB of snapshot, output/input):
/// 1: 2.7 s, 0.306; 2: 5.5 s, 0.246; 3: 5.9 s, 0.233; 6: 8.5 s, 0.218.
/// Level 1 is zlib-rs' "quick" strategy (static Huffman codes only), 25%
/// larger than level 2; above 2 every level costs more CPU than the bytes
/// it saves take to upload to two endpoints on 2 cores.
const LEVEL: u32 = 2;
/// The sample that decides a block: `SAMPLES` slices of `SAMPLE` bytes
/// spread over it (1/64 of a full block), deflated at level 1.
const SAMPLES: usize = 4;
const SAMPLE: usize = 4096;
/// A block is deflated only when its sample shrinks to at most
/// `WORTH_NUM / WORTH_DEN` of its size. Deflating what saves less costs more
/// (random bytes: 8-18 CPU s per GB) than uploading the bytes it saves; such
/// blocks are stored but for their runs of zeros ([`sparse_into`]: a copy,
/// a scan and a CRC).
const WORTH_NUM: usize = 7;
const WORTH_DEN: usize = 10;

/// gzip member header: deflate, no name, no time, unknown OS (as flate2's).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// One compression worker's reusable deflate states.
struct Deflater {
    sample: Compress,
    block: Compress,
}

impl Deflater {
    fn new() -> Deflater {
        Deflater {
            sample: Compress::new(Compression::new(1), false),
            block: Compress::new(Compression::new(LEVEL), false),
        }
    }

    /// Whether deflating `raw` is worth its CPU, from a sample of it.
    fn worth_compressing(&mut self, raw: &[u8]) -> io::Result<bool> {
        let sample = sample_ranges(raw.len());
        let len: usize = sample.iter().map(|(a, b)| b - a).sum();
        if len == 0 {
            return Ok(false);
        }
        self.sample.reset();
        let mut out = Vec::with_capacity(len + 1024);
        for (i, &(a, b)) in sample.iter().enumerate() {
            let flush = if i + 1 == sample.len() { FlushCompress::Finish } else { FlushCompress::None };
            deflate_into(&mut self.sample, &raw[a..b], flush, &mut out)?;
        }
        Ok(out.len() * WORTH_DEN <= len * WORTH_NUM)
    }

    /// A gzip member (`zlib` false) or a zlib segment of `raw`, deflated or
    /// stored (zero runs packed) as the sample says. A segment ends
    /// byte-aligned and not final unless `last`, so segments concatenate
    /// into one stream.
    fn pack(&mut self, raw: &[u8], last: bool, zlib: bool) -> io::Result<Vec<u8>> {
        let final_block = last || !zlib;
        let mut out = Vec::with_capacity(raw.len() + raw.len() / STORED_MAX * 5 + 64);
        if !zlib {
            out.extend_from_slice(&GZIP_HEADER);
        }
        if self.worth_compressing(raw)? {
            self.block.reset();
            let flush = if final_block { FlushCompress::Finish } else { FlushCompress::Sync };
            deflate_into(&mut self.block, raw, flush, &mut out)?;
        } else {
            sparse_into(raw, final_block, &mut out);
        }
        if !zlib {
            out.extend_from_slice(&zlib_rs::crc32::crc32(0, raw).to_le_bytes());
            out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        }
        Ok(out)
    }
}

/// The slices of a block of `len` bytes that its sample takes: all of a
/// short block, else `SAMPLES` slices evenly spread from start to end.
fn sample_ranges(len: usize) -> Vec<(usize, usize)> {
    if len <= SAMPLES * SAMPLE {
        return vec![(0, len)];
    }
    let step = (len - SAMPLE) / (SAMPLES - 1);
    (0..SAMPLES).map(|i| (i * step, i * step + SAMPLE)).collect()
}

/// Most bytes a stored deflate block holds.
const STORED_MAX: usize = 65_535;
/// Shortest run of zeros given its own block: a zero block and the stored
/// block after it cost about 10 bytes (literal, matches, end code, the
/// stored header and its alignment).
const ZERO_RUN_MIN: usize = 64;
/// Zero runs are looked for by one 8-byte probe per `PROBE` bytes; every
/// run of `ZERO_RUN_MIN` bytes holds a whole probe.
const PROBE: usize = 32;
const _: () = assert!(ZERO_RUN_MIN >= PROBE + 8);

/// Deflate's bits, least significant first (RFC 1951 §3.1.1), also LZW's.
#[derive(Default)]
struct Bits {
    acc: u32,
    n: u32,
}

impl Bits {
    /// Appends the low `width` (at most 24) bits of `value`.
    fn put(&mut self, out: &mut Vec<u8>, value: u32, width: u32) {
        self.acc |= value << self.n;
        self.n += width;
        while self.n >= 8 {
            out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, which deflate packs from its most significant bit.
    fn put_code(&mut self, out: &mut Vec<u8>, code: u32, width: u32) {
        self.put(out, code.reverse_bits() >> (32 - width), width);
    }

    /// Pads with zero bits to the next byte boundary.
    fn align(&mut self, out: &mut Vec<u8>) {
        if self.n > 0 {
            out.push(self.acc as u8);
        }
        *self = Bits::default();
    }
}

/// `raw` as deflate blocks that cost no search: stored blocks (deflate's
/// level 0, RFC 1951 §3.2.4), except runs of zeros, which become each one
/// fixed-Huffman block (a literal 0, then matches at distance 1: 2 bytes per
/// 258). bbolt leaves the end of each page zero: in a snapshot of values
/// that do not compress (Secrets encrypted at rest), about a fifth of it.
/// The output ends byte-aligned, its last block final when `final_block`
/// (an empty `raw` then still makes one empty final block).
fn sparse_into(raw: &[u8], final_block: bool, out: &mut Vec<u8>) {
    let mut bits = Bits::default();
    let mut at = 0;
    for (start, end) in zero_runs(raw) {
        if start > at {
            stored_blocks(&mut bits, &raw[at..start], false, out);
        }
        zero_block(&mut bits, end - start, final_block && end == raw.len(), out);
        at = end;
    }
    if at < raw.len() || raw.is_empty() || !final_block {
        // A non-final ending is an empty stored block, as a sync flush's.
        stored_blocks(&mut bits, &raw[at..], final_block, out);
    } else {
        bits.align(out);
    }
}

/// The runs of at least `ZERO_RUN_MIN` zero bytes in `raw`, in order.
fn zero_runs(raw: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let (mut p, mut done) = (0, 0);
    while p + 8 <= raw.len() {
        if raw[p..p + 8] != [0; 8] {
            p += PROBE;
            continue;
        }
        let start = p - raw[done..p].iter().rev().take_while(|&&b| b == 0).count();
        let mut end = p + 8;
        while end + 8 <= raw.len() && raw[end..end + 8] == [0; 8] {
            end += 8;
        }
        end += raw[end..].iter().take_while(|&&b| b == 0).count();
        if end - start >= ZERO_RUN_MIN {
            runs.push((start, end));
            done = end;
        }
        p = (end / PROBE + 1) * PROBE;
    }
    runs
}

/// Stored blocks of `raw`, at least one (an empty one when `raw` is).
fn stored_blocks(bits: &mut Bits, mut raw: &[u8], final_block: bool, out: &mut Vec<u8>) {
    loop {
        let (chunk, rest) = raw.split_at(raw.len().min(STORED_MAX));
        // BFINAL, then BTYPE 00; LEN and NLEN start at the next byte.
        bits.put(out, u32::from(final_block && rest.is_empty()), 3);
        bits.align(out);
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
        raw = rest;
        if raw.is_empty() {
            return;
        }
    }
}

/// Lengths of a match, by length code 257 + i (RFC 1951 §3.2.5): the
/// shortest length of each code and how many extra bits it takes.
const LENGTH_BASE: [u32; 29] =
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LENGTH_EXTRA: [u32; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];

/// `len` zero bytes (`len` > 0) as one block with the fixed Huffman codes
/// (RFC 1951 §3.2.6): a literal 0 and matches of the byte before it.
fn zero_block(bits: &mut Bits, len: usize, final_block: bool, out: &mut Vec<u8>) {
    bits.put(out, u32::from(final_block) | 1 << 1, 3);
    let literal_zero = |bits: &mut Bits, out: &mut Vec<u8>| bits.put_code(out, 0x30, 8);
    literal_zero(bits, out);
    let mut left = len - 1;
    while left >= 3 {
        // Leave no 1 or 2 bytes after a 258: shorter than any match.
        let m = (if left == 259 || left == 260 { left - 3 } else { left.min(258) }) as u32;
        let i = LENGTH_BASE.iter().rposition(|&b| b <= m).expect("m >= 3");
        let sym = 257 + i as u32;
        if sym < 280 {
            bits.put_code(out, sym - 256, 7);
        } else {
            bits.put_code(out, 0xc0 + sym - 280, 8);
        }
        bits.put(out, m - LENGTH_BASE[i], LENGTH_EXTRA[i]);
        bits.put_code(out, 0, 5); // distance code 0: distance 1
        left -= m as usize;
    }
    for _ in 0..left {
        literal_zero(bits, out);
    }
    bits.put_code(out, 0, 7); // end of block (256)
}

/// Deflate all of `raw` with `flush`, appending to `out`.
fn deflate_into(c: &mut Compress, raw: &[u8], flush: FlushCompress, out: &mut Vec<u8>) -> io::Result<()> {
    let start = c.total_in();
    loop {
        let consumed = (c.total_in() - start) as usize;
        out.reserve(4096);
        let status = c.compress_vec(&raw[consumed..], out, flush).map_err(io::Error::other)?;
        let all_in = (c.total_in() - start) as usize == raw.len();
        // Output space left over means the flush is complete.
        if all_in
            && (status == Status::StreamEnd || (!matches!(flush, FlushCompress::Finish) && out.len() < out.capacity()))
        {
            return Ok(());
        }
        out.reserve(out.capacity().max(4096));
    }
}

struct ParallelDeflate {
    /// zlib: the running Adler-32 of the raw bytes, and whether the header is out.
    zlib: Option<(u32, bool)>,
    block: Vec<u8>,
    sent: u64,
    emitted: u64,
    to_workers: Option<Sender<Job>>,
    from_workers: Receiver<Packed>,
    ready: BTreeMap<u64, (Vec<u8>, u32, usize)>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl ParallelDeflate {
    fn workers() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8)
    }

    fn new(zlib: bool) -> ParallelDeflate {
        let n = Self::workers();
        let (to_workers, jobs) = bounded::<Job>(n);
        let (results, from_workers) = unbounded();
        let workers = (0..n)
            .map(|_| {
                let (jobs, results) = (jobs.clone(), results.clone());
                std::thread::spawn(move || {
                    let mut deflater = Deflater::new();
                    for (seq, raw, last) in jobs {
                        let packed = deflater.pack(&raw, last, zlib);
                        let adler = if zlib { zlib_rs::adler32::adler32(1, &raw) } else { 0 };
                        if results.send((seq, packed, adler, raw.len())).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        ParallelDeflate {
            zlib: zlib.then_some((1, false)),
            block: Vec::with_capacity(BLOCK),
            sent: 0,
            emitted: 0,
            to_workers: Some(to_workers),
            from_workers,
            ready: BTreeMap::new(),
            workers,
        }
    }

    fn push(&mut self, mut raw: &[u8], out: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        while !raw.is_empty() {
            let n = (BLOCK - self.block.len()).min(raw.len());
            self.block.extend_from_slice(&raw[..n]);
            raw = &raw[n..];
            if self.block.len() == BLOCK {
                self.send(false)?;
            }
        }
        while let Ok((seq, member, adler, len)) = self.from_workers.try_recv() {
            self.ready.insert(seq, (member?, adler, len));
        }
        self.emit(out);
        Ok(())
    }

    fn send(&mut self, last: bool) -> io::Result<()> {
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let tx = self.to_workers.as_ref().expect("not finished");
        tx.send((self.sent, block, last)).map_err(|_| io::Error::other("compression worker stopped"))?;
        self.sent += 1;
        Ok(())
    }

    fn emit(&mut self, out: &mut dyn FnMut(&[u8])) {
        if let Some((_, header @ false)) = self.zlib.as_mut()
            && self.ready.contains_key(&0)
        {
            // zlib header: deflate, 32 KiB window, default level.
            out(&[0x78, 0x9c]);
            *header = true;
        }
        while let Some((member, adler, len)) = self.ready.remove(&self.emitted) {
            if let Some((running, _)) = self.zlib.as_mut() {
                *running = zlib_rs::adler32::adler32_combine(*running, adler, len as u64);
            }
            out(&member);
            self.emitted += 1;
        }
    }

    fn finish(mut self, out: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        // zlib always ends with a final (maybe empty) segment; gzip needs at
        // least one member.
        if !self.block.is_empty() || self.sent == 0 || self.zlib.is_some() {
            self.send(true)?;
        }
        self.to_workers = None;
        while self.emitted < self.sent {
            let (seq, member, adler, len) =
                self.from_workers.recv().map_err(|_| io::Error::other("compression worker stopped"))?;
            self.ready.insert(seq, (member?, adler, len));
            self.emit(out);
        }
        if let Some((adler, _)) = &self.zlib {
            out(&adler.to_be_bytes());
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        Ok(())
    }
}

const CLEAR: u16 = 256;
const EOF: u16 = 257;
const MAX_WIDTH: u32 = 12;
const TABLE: usize = 1 << MAX_WIDTH;
const INVALID: u16 = u16::MAX;

/// Go's `lzw.NewReader(r, lzw.LSB, 8)`, code for code.
pub struct LzwReader<R> {
    /// Codes are taken a byte at a time.
    inner: BufReader<R>,
    bits: u32,
    n_bits: u32,
    width: u32,
    hi: u16,
    overflow: u16,
    last: u16,
    suffix: Box<[u8; TABLE]>,
    prefix: Box<[u16; TABLE]>,
    /// One code's expansion, written back to front; `pending` is what is
    /// not yet handed to the caller.
    scratch: Box<[u8; TABLE]>,
    pending: std::ops::Range<usize>,
    done: bool,
}

impl<R: Read> LzwReader<R> {
    pub fn new(inner: R) -> LzwReader<R> {
        LzwReader {
            inner: BufReader::new(inner),
            bits: 0,
            n_bits: 0,
            width: 9,
            hi: EOF,
            overflow: 1 << 9,
            last: INVALID,
            suffix: Box::new([0; TABLE]),
            prefix: Box::new([0; TABLE]),
            scratch: Box::new([0; TABLE]),
            pending: 0..0,
            done: false,
        }
    }

    fn code(&mut self) -> io::Result<u16> {
        while self.n_bits < self.width {
            let byte = match self.inner.fill_buf()? {
                [] => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "lzw: stream ends without an EOF code")),
                [b, ..] => *b,
            };
            self.inner.consume(1);
            self.bits |= u32::from(byte) << self.n_bits;
            self.n_bits += 8;
        }
        let code = (self.bits & ((1 << self.width) - 1)) as u16;
        self.bits >>= self.width;
        self.n_bits -= self.width;
        Ok(code)
    }

    /// Decode codes until one produces output (or the stream ends).
    fn step(&mut self) -> io::Result<()> {
        loop {
            let code = self.code()?;
            let end = TABLE;
            let start;
            if code < CLEAR {
                self.scratch[end - 1] = code as u8;
                start = end - 1;
                if self.last != INVALID {
                    self.suffix[self.hi as usize] = code as u8;
                    self.prefix[self.hi as usize] = self.last;
                }
            } else if code == CLEAR {
                self.width = 9;
                self.hi = EOF;
                self.overflow = 1 << 9;
                self.last = INVALID;
                continue;
            } else if code == EOF {
                self.done = true;
                return Ok(());
            } else if code <= self.hi {
                let mut i = end - 1;
                let mut c = code;
                // code == hi: the last expansion followed by its own head.
                if code == self.hi && self.last != INVALID {
                    c = self.last;
                    while c >= CLEAR {
                        c = self.prefix[c as usize];
                    }
                    self.scratch[i] = c as u8;
                    i -= 1;
                    c = self.last;
                }
                while c >= CLEAR {
                    self.scratch[i] = self.suffix[c as usize];
                    // A chain longer than the table means a corrupt stream.
                    i = i.checked_sub(1).ok_or_else(|| invalid("lzw: corrupt code chain"))?;
                    c = self.prefix[c as usize];
                }
                self.scratch[i] = c as u8;
                start = i;
                if self.last != INVALID {
                    self.suffix[self.hi as usize] = c as u8;
                    self.prefix[self.hi as usize] = self.last;
                }
            } else {
                return Err(invalid("lzw: invalid code"));
            }
            self.last = code;
            self.hi += 1;
            if self.hi >= self.overflow {
                if self.width == MAX_WIDTH {
                    self.last = INVALID;
                    self.hi -= 1;
                } else {
                    self.width += 1;
                    self.overflow = 1 << self.width;
                }
            }
            self.pending = start..end;
            return Ok(());
        }
    }
}

impl<R: Read> Read for LzwReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            self.step()?;
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.scratch[self.pending.start..self.pending.start + n]);
        self.pending.start += n;
        Ok(n)
    }
}

const MAX_CODE: u32 = (1 << MAX_WIDTH) - 1;
const HASH_SIZE: usize = 4 << MAX_WIDTH;
const HASH_MASK: u32 = HASH_SIZE as u32 - 1;

/// Go's `lzw.NewWriter(w, lzw.LSB, 8)`, byte for byte (same hash table, so
/// the same codes), for writing `.Z` snapshots upstream can read.
pub struct LzwWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    bits: Bits,
    width: u32,
    hi: u32,
    overflow: u32,
    saved: Option<u32>,
    /// (prefix code << 8 | byte) << 12 | code, open addressing; 0 = empty.
    table: Box<[u32; HASH_SIZE]>,
}

impl<W: Write> LzwWriter<W> {
    pub fn new(out: W) -> LzwWriter<W> {
        LzwWriter {
            out,
            buf: Vec::with_capacity(64 << 10),
            bits: Bits::default(),
            width: 9,
            hi: u32::from(EOF),
            overflow: 1 << 9,
            saved: None,
            table: Box::new([0; HASH_SIZE]),
        }
    }

    fn put(&mut self, code: u32) {
        self.bits.put(&mut self.buf, code, self.width);
    }

    /// Next code; true when the table was full and has been cleared.
    fn inc_hi(&mut self) -> bool {
        self.hi += 1;
        if self.hi == self.overflow {
            self.width += 1;
            self.overflow <<= 1;
        }
        if self.hi == MAX_CODE {
            self.put(u32::from(CLEAR));
            self.width = 9;
            self.hi = u32::from(EOF);
            self.overflow = 1 << 9;
            self.table.fill(0);
            return true;
        }
        false
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Flush the last code, the EOF code and the final bits; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        match self.saved {
            Some(code) => {
                self.put(code);
                self.inc_hi();
            }
            None => self.put(u32::from(CLEAR)),
        }
        self.put(u32::from(EOF));
        self.bits.align(&mut self.buf);
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for LzwWriter<W> {
    fn write(&mut self, mut p: &[u8]) -> io::Result<usize> {
        let n = p.len();
        if n == 0 {
            return Ok(0);
        }
        let mut code = match self.saved {
            Some(code) => code,
            None => {
                self.put(u32::from(CLEAR));
                let first = u32::from(p[0]);
                p = &p[1..];
                first
            }
        };
        'bytes: for &x in p {
            let literal = u32::from(x);
            let key = (code << 8) | literal;
            let mut hash = ((key >> 12) ^ key) & HASH_MASK;
            let mut h = hash;
            while self.table[h as usize] != 0 {
                let t = self.table[h as usize];
                if key == t >> 12 {
                    code = t & MAX_CODE;
                    continue 'bytes;
                }
                h = (h + 1) & HASH_MASK;
            }
            self.put(code);
            code = literal;
            if self.inc_hi() {
                continue;
            }
            while self.table[hash as usize] != 0 {
                hash = (hash + 1) & HASH_MASK;
            }
            self.table[hash as usize] = (key << 12) | self.hi;
        }
        self.saved = Some(code);
        if self.buf.len() >= 32 << 10 {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack(suffix: &str, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(suffix, data).unwrap().read_to_end(&mut out)?;
        Ok(out)
    }

    /// Written by Go 1.19's compress/lzw, gzip and zlib from the same input
    /// (tests/golden/compression/README.md).
    #[test]
    fn go_written_streams_decode() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/compression");
        let want = std::fs::read(dir.join("input")).unwrap();
        for suffix in [".Z", ".gz", ".zlib"] {
            let packed = std::fs::read(dir.join(format!("input{suffix}"))).unwrap();
            assert!(unpack(suffix, &packed).unwrap() == want, "{suffix}");
        }
        let tiny = std::fs::read(dir.join("tiny.Z")).unwrap();
        assert_eq!(unpack(".Z", &tiny).unwrap(), b"TOBEORNOTTOBEORTOBEORNOT");
    }

    #[test]
    fn lzw_writer_matches_go_byte_for_byte() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/compression");
        let input = std::fs::read(dir.join("input")).unwrap();
        let mut w = LzwWriter::new(Vec::new());
        // Uneven writes: the saved code must carry across calls.
        for chunk in input.chunks(7777) {
            w.write_all(chunk).unwrap();
        }
        let ours = w.finish().unwrap();
        assert!(ours == std::fs::read(dir.join("input.Z")).unwrap(), "differs from Go's compress/lzw");
        let mut w = LzwWriter::new(Vec::new());
        w.write_all(b"TOBEORNOTTOBEORTOBEORNOT").unwrap();
        assert_eq!(w.finish().unwrap(), std::fs::read(dir.join("tiny.Z")).unwrap());
        assert_eq!(unpack(".Z", &LzwWriter::new(Vec::new()).finish().unwrap()).unwrap(), b"");
    }

    #[test]
    fn packer_round_trips_every_policy() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/compression");
        let input: Vec<u8> = std::fs::read(dir.join("input")).unwrap().repeat(20); // 3 MB: several gzip members
        for policy in [Policy::Gzip, Policy::Zlib, Policy::Lzw, Policy::Zstd] {
            let mut packed = Vec::new();
            let mut p = Packer::new(policy);
            for chunk in input.chunks(65_537) {
                p.push(chunk, &mut |o| packed.extend_from_slice(o)).unwrap();
            }
            p.finish(&mut |o| packed.extend_from_slice(o)).unwrap();
            assert!(packed.len() < input.len(), "{policy:?} did not compress");
            assert!(unpack(policy.suffix(), &packed).unwrap() == input, "{policy:?}");
        }
        let mut empty = Vec::new();
        Packer::new(Policy::Gzip).finish(&mut |o| empty.extend_from_slice(o)).unwrap();
        assert_eq!(unpack(".gz", &empty).unwrap(), b"");
        assert_eq!(Policy::parse("GZIP"), Ok(Policy::Gzip));
        assert_eq!(Policy::parse("zstd"), Ok(Policy::Zstd));
        assert_eq!(unpack(".zst", &compress(Policy::Zstd, b"small delta").unwrap()).unwrap(), b"small delta");
        assert!(Policy::parse("brotli").is_err());
        assert_eq!(Policy::from_suffix(".zlib"), Some(Policy::Zlib));
        assert!(decoder(".bz2", &b""[..]).is_err_and(|e| e == "compression \".bz2\" is not supported"));
    }

    /// Incompressible bytes (xorshift64*), reproducible.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            v.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        v.truncate(len);
        v
    }

    fn text(len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0.. {
            if v.len() >= len {
                break;
            }
            v.extend_from_slice(
                format!("{{\"kind\":\"Pod\",\"metadata\":{{\"name\":\"pod-{i}\",\"uid\":\"{}\"}}}}\n", i * 7919)
                    .as_bytes(),
            );
        }
        v.truncate(len);
        v
    }

    fn pack(policy: Policy, input: &[u8]) -> Vec<u8> {
        let mut packed = Vec::new();
        let mut p = Packer::new(policy);
        for chunk in input.chunks(65_537) {
            p.push(chunk, &mut |o| packed.extend_from_slice(o)).unwrap();
        }
        p.finish(&mut |o| packed.extend_from_slice(o)).unwrap();
        packed
    }

    /// Runs `cmd` with `input` on standard input; its standard output.
    fn filter(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        use std::process::{Command, Stdio};
        let mut child = Command::new(cmd)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "{cmd} {args:?} failed");
        out.stdout
    }

    #[test]
    fn sample_decides_what_is_deflated() {
        let mut d = Deflater::new();
        assert!(!d.worth_compressing(&noise(BLOCK, 1)).unwrap(), "random bytes are stored");
        assert!(d.worth_compressing(&text(BLOCK)).unwrap());
        assert!(d.worth_compressing(&vec![0; BLOCK]).unwrap());
        assert!(d.worth_compressing(&text(100)).unwrap(), "a short block is sampled whole");
        assert!(!d.worth_compressing(b"").unwrap());
        // Text in half of the slices: ~0.55 of the sample's size, deflated.
        let mixed = [noise(BLOCK / 2, 2), text(BLOCK / 2)].concat();
        assert!(d.worth_compressing(&mixed).unwrap());
        assert_eq!(sample_ranges(100), [(0, 100)]);
        let r = sample_ranges(BLOCK);
        assert_eq!((r.len(), r[0].0, r[SAMPLES - 1].1), (SAMPLES, 0, BLOCK), "first and last bytes are sampled");
    }

    /// `sparse_into`'s output, made final by an empty stored block when it
    /// is not, inflated by flate2 and by python's zlib.
    fn sparse_round_trip(raw: &[u8], last: bool) -> Vec<u8> {
        let mut out = Vec::new();
        sparse_into(raw, last, &mut out);
        let mut stream = out.clone();
        if !last {
            stream.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        }
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(&stream[..]).read_to_end(&mut back).unwrap();
        assert!(back == raw, "flate2: {} bytes, last {last}", raw.len());
        let py = "import zlib, sys; sys.stdout.buffer.write(zlib.decompress(sys.stdin.buffer.read(), -15))";
        assert!(filter("python3", &["-c", py], &stream) == raw, "python zlib: {} bytes", raw.len());
        out
    }

    #[test]
    fn stored_blocks_are_valid_deflate() {
        for (len, last) in
            [(0, true), (0, false), (1, true), (STORED_MAX, false), (STORED_MAX + 1, true), (BLOCK, true)]
        {
            let raw = noise(len, len as u64 + 1);
            let out = sparse_round_trip(&raw, last);
            assert_eq!(out.len(), raw.len() + 5 * len.div_ceil(STORED_MAX).max(1), "{len}");
        }
        // Byte level: header byte (BFINAL, BTYPE 00), LEN, NLEN, data.
        let mut out = Vec::new();
        sparse_into(b"abc", true, &mut out);
        assert_eq!(out, [1, 3, 0, 0xfc, 0xff, b'a', b'b', b'c']);
    }

    #[test]
    fn zero_runs_are_packed() {
        // Byte level: BFINAL 1, BTYPE 01 (3 bits); literal 0 (8-bit code
        // 00110000); length 99 (code 279: 7 bits 0010111, 4 extra bits 0);
        // distance code 0 (5 bits); end of block (7 bits 0); zero padding.
        let mut out = Vec::new();
        sparse_into(&[0; 100], true, &mut out);
        assert_eq!(out, [0x63, 0xa0, 0x03, 0, 0]);
        assert_eq!(zero_runs(&[0; 100]), [(0, 100)]);
        assert_eq!(zero_runs(&[[1].as_slice(), &[0; 63], &[1]].concat()), [], "63 zeros stay stored");
        assert_eq!(zero_runs(&[[1].as_slice(), &[0; 64], &[1]].concat()), [(1, 65)]);

        // Every run length a match split can end on, at a block's start and
        // end and between stored bytes, final or not.
        for run in [64, 65, 66, 67, 258, 259, 260, 261, 262, 263, 516, 517, 518, 519, 1000, 4096, 70_000] {
            for last in [true, false] {
                let data = noise(2 * STORED_MAX, run as u64);
                let raw = [&data[..100], &vec![0; run][..], &data[100..STORED_MAX + 7], &vec![0; run]].concat();
                let out = sparse_round_trip(&raw, last);
                // Framing: 15 bytes of stored headers, 2 bytes per 258 zeros.
                assert!(out.len() < raw.len() - 2 * run + 32 + run / 50, "run {run}: {} of {}", out.len(), raw.len());
                sparse_round_trip(&raw[100..], last);
            }
        }
        // bbolt-like pages: 3.2 KB of noise and a zero tail each.
        let page = |i: u64| [noise(3200, i), vec![0; 896]].concat();
        let raw: Vec<u8> = (0..256).flat_map(page).collect();
        let out = sparse_round_trip(&raw, true);
        assert!(out.len() * 100 < raw.len() * 79, "{} of {}", out.len(), raw.len());
    }

    /// Incompressible blocks cost a copy: the stored output is the input
    /// plus framing, and every gzip reader reads it: flate2, python's gzip
    /// module (zlib) and the gzip CLI.
    #[test]
    fn stored_path_round_trips_through_other_readers() {
        let input = noise(3 * BLOCK + 12_345, 7);
        let gz = pack(Policy::Gzip, &input);
        let members = input.len().div_ceil(BLOCK);
        let framing = members * 18 + 5 * input.len().div_ceil(STORED_MAX) + 5 * members;
        assert!(gz.len() <= input.len() + framing, "{} stored for {}", gz.len(), input.len());
        let mut back = Vec::new();
        MultiGzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert!(back == input, "MultiGzDecoder");
        let py = "import gzip, sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))";
        assert!(filter("python3", &["-c", py], &gz) == input, "python gzip");
        assert!(filter("gzip", &["-dc"], &gz) == input, "gzip -d");
        let z = pack(Policy::Zlib, &input);
        assert!(z.len() <= input.len() + framing);
        assert!(unpack(".zlib", &z).unwrap() == input);
        let py = "import zlib, sys; sys.stdout.buffer.write(zlib.decompress(sys.stdin.buffer.read()))";
        assert!(filter("python3", &["-c", py], &z) == input, "python zlib");
    }

    /// Stored and deflated blocks in one stream, and a block mixing both
    /// kinds of bytes, decode to the input in every reader.
    #[test]
    fn mixed_stream_round_trips() {
        let input =
            [noise(BLOCK, 3), text(BLOCK), [noise(BLOCK / 2, 4), vec![0; BLOCK / 2]].concat(), noise(1000, 5)].concat();
        for policy in [Policy::Gzip, Policy::Zlib] {
            let packed = pack(policy, &input);
            // Block 1 stored, 2 and 3 deflated, the tail stored.
            assert!(packed.len() < input.len() * 3 / 4 && packed.len() > BLOCK, "{policy:?}: {}", packed.len());
            assert!(unpack(policy.suffix(), &packed).unwrap() == input, "{policy:?}");
        }
        let gz = pack(Policy::Gzip, &input);
        assert!(filter("gzip", &["-dc"], &gz) == input, "gzip -d");
    }

    #[test]
    fn broken_streams_are_errors_not_panics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/compression");
        let packed = std::fs::read(dir.join("input.Z")).unwrap();
        assert_eq!(unpack(".Z", &packed[..packed.len() / 2]).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        // Every single-byte corruption either decodes to something or fails cleanly.
        for i in (0..packed.len()).step_by(4999) {
            let mut bad = packed.clone();
            bad[i] ^= 0x5a;
            let _ = unpack(".Z", &bad);
        }
        assert!(unpack(".Z", &[0xff, 0xff, 0xff]).is_err(), "a code above hi");
        assert!(unpack(".gz", b"not gzip").is_err());
        assert!(unpack(".zst", b"not zstd").is_err());
        assert!(decoder(".br", &b""[..]).is_err());
    }
}
