//! age encryption and decryption throughput on standard input, as
//! `snapshot` encrypts (1 MiB pushes through `Sealer`) and `restore`
//! decrypts. Used by scripts/bench-encrypt.
use age::secrecy::ExposeSecret;
use etcd_backup_restore::encryption::{self, Identities, Recipients, Sealer};
use std::io::Read;

fn main() {
    let id = age::x25519::Identity::generate();
    let recipients = Recipients::new(&[id.to_public().to_string()], None).unwrap().unwrap();
    let identities = Identities::parse(id.to_string().expose_secret()).unwrap();
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).expect("reading standard input");
    let started = std::time::Instant::now();
    let mut sealer = Sealer::new(&recipients).unwrap();
    let mut sealed = Vec::with_capacity(input.len() + input.len() / 4096 + 4096);
    for chunk in input.chunks(1 << 20) {
        sealer.push(chunk, &mut |o| sealed.extend_from_slice(o)).unwrap();
    }
    sealer.finish(&mut |o| sealed.extend_from_slice(o)).unwrap();
    let seal_secs = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let mut reader = encryption::decrypt(&identities, &sealed[..]).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut plain = 0;
    loop {
        match reader.read(&mut buf).unwrap() {
            0 => break,
            n => plain += n,
        }
    }
    assert_eq!(plain, input.len());
    let open_secs = started.elapsed().as_secs_f64();
    println!("{} {} {seal_secs:.3} {open_secs:.3}", input.len(), sealed.len());
}
