//! Compression throughput of each policy on standard input, as `snapshot`
//! compresses (1 MiB pushes). Used by scripts/bench-compress.
use etcd_backup_restore::compression::{Packer, Policy};
use std::io::Read;

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "gzip".into());
    let policy = Policy::parse(&arg).unwrap_or_else(|e| panic!("{e}"));
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).expect("reading standard input");
    let started = std::time::Instant::now();
    let mut packer = Packer::new(policy);
    let mut out = 0usize;
    for chunk in input.chunks(1 << 20) {
        packer.push(chunk, &mut |o| out += o.len()).expect("compressing");
    }
    packer.finish(&mut |o| out += o.len()).expect("compressing");
    let secs = started.elapsed().as_secs_f64();
    println!("{arg} {} {out} {secs:.3}", input.len());
}
