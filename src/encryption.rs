//! Client-side encryption in the age format (age-encryption.org/v1), X25519
//! recipients only: applied after compression, streamed in age's 64 KiB
//! chunks, so neither store operator can read etcd's data.
//!
//! Writers ([`Sealer`], [`seal`]) encrypt to the recipients of
//! `--encrypt-to`/`--encrypt-to-file`. Readers ([`reader`]) decrypt with the
//! identities of `--identity-file`, installed once per process by
//! [`install`] (like the signal state: every reader of the run uses the same
//! keys, and threading them through every fetch path would add nothing).
//! Without identities, [`check_framing`] checks what can be checked of an
//! encrypted object: its header and the STREAM chunk sizes. Errors never
//! show key material, only where it came from.

use std::io::{self, Read, Write};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

/// The object name suffix of an encrypted snapshot, after the compression's.
pub const SUFFIX: &str = ".age";

/// Plaintext bytes per STREAM chunk, and the tag each chunk adds.
const CHUNK: u64 = 64 << 10;
const TAG: u64 = 16;
/// The payload nonce after the header.
const NONCE: u64 = 16;
/// A header larger than this is no header of ours (one stanza per recipient).
const MAX_HEADER: usize = 1 << 20;

/// Where recipients come from, to say so in an error.
fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, String> {
    age::x25519::Recipient::from_str(s).map_err(|e| format!("not an age X25519 recipient (age1...): {e}"))
}

/// The public keys every snapshot is encrypted to.
#[derive(Clone)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipients({})", self.0.len())
    }
}

impl Recipients {
    /// `--encrypt-to` values and the lines of `--encrypt-to-file` (one per
    /// line, `#` comments and blank lines skipped). `None` when both are empty.
    pub fn new(given: &[String], file: Option<&Path>) -> Result<Option<Recipients>, String> {
        let mut out = Vec::new();
        for (i, r) in given.iter().enumerate() {
            out.push(parse_recipient(r.trim()).map_err(|e| format!("--encrypt-to value {}: {e}", i + 1))?);
        }
        if let Some(path) = file {
            let text = crate::userfile::read_to_string(path, crate::userfile::SMALL)
                .map_err(|e| format!("--encrypt-to-file {}: {e}", path.display()))?;
            let before = out.len();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                out.push(
                    parse_recipient(line)
                        .map_err(|e| format!("--encrypt-to-file {} line {}: {e}", path.display(), n + 1))?,
                );
            }
            if out.len() == before {
                return Err(format!("--encrypt-to-file {}: no recipient in it", path.display()));
            }
        }
        Ok((!out.is_empty()).then_some(Recipients(out)))
    }

    fn encryptor(&self) -> io::Result<age::Encryptor> {
        age::Encryptor::with_recipients(self.0.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| io::Error::other(format!("age: {e}")))
    }
}

/// The private keys readers decrypt with.
pub struct Identities(Vec<age::x25519::Identity>);

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({})", self.0.len())
    }
}

impl Identities {
    /// An age identity file as `age-keygen` writes it: `AGE-SECRET-KEY-1...`
    /// lines, `#` comments, blank lines. The error names the line, never its text.
    pub fn load(path: &Path) -> Result<Identities, String> {
        let text = crate::userfile::read_to_string(path, crate::userfile::SMALL)
            .map_err(|e| format!("identity file {}: {e}", path.display()))?;
        Identities::parse(&text).map_err(|e| format!("identity file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Identities, String> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(
                age::x25519::Identity::from_str(line)
                    .map_err(|_| format!("line {} is not an age X25519 identity (AGE-SECRET-KEY-1...)", n + 1))?,
            );
        }
        if out.is_empty() {
            return Err("no identity in it".into());
        }
        Ok(Identities(out))
    }
}

static INSTALLED: OnceLock<Arc<Identities>> = OnceLock::new();

/// Make `identities` the ones every reader of this process decrypts with.
/// The first installation wins (a process has one `--identity-file`).
pub fn install(identities: Arc<Identities>) {
    let _ = INSTALLED.set(identities);
}

/// The installed identities, if any.
pub fn installed() -> Option<&'static Identities> {
    INSTALLED.get().map(|i| &**i)
}

/// Why an age file could not be opened, in one line.
fn decrypt_error(e: age::DecryptError) -> String {
    use age::DecryptError as D;
    match e {
        D::NoMatchingKeys => "no identity of --identity-file matches its recipients (wrong key?)".into(),
        D::InvalidHeader | D::UnknownFormat => "not an age-encrypted file (bad header)".into(),
        D::InvalidMac => "age header MAC mismatch (tampered or wrong key)".into(),
        D::DecryptionFailed | D::KeyDecryptionFailed => "age decryption failed (corrupt data or wrong key)".into(),
        D::Io(e) => format!("reading the age header: {e}"),
        other => format!("age: {other}"),
    }
}

/// A reader of the plaintext of the age file `raw`, decrypted with
/// `identities`. Reads fail (`InvalidData`) at a chunk that does not
/// authenticate, including a truncated last chunk.
pub fn decrypt<'a>(identities: &Identities, raw: impl Read + 'a) -> Result<Box<dyn Read + 'a>, String> {
    let d = age::Decryptor::new(raw).map_err(decrypt_error)?;
    let r = d.decrypt(identities.0.iter().map(|i| i as &dyn age::Identity)).map_err(decrypt_error)?;
    Ok(Box::new(r))
}

/// Whether the installed identities open the age header at the start of
/// `raw` (the header alone is read): a wrong key is known before a download.
pub fn unlocks(raw: impl Read) -> Result<(), String> {
    reader(raw).map(drop)
}

/// [`decrypt`] with the installed identities; without them, an error
/// saying what is missing.
pub fn reader<'a>(raw: impl Read + 'a) -> Result<Box<dyn Read + 'a>, String> {
    match installed() {
        Some(ids) => decrypt(ids, raw),
        None => Err(MISSING.into()),
    }
}

/// Why an encrypted snapshot cannot be read.
pub const MISSING: &str = "it is encrypted (.age) and no --identity-file (or EBR_AGE_IDENTITY_FILE) was given";

/// Say once per process that encrypted objects are checked for their
/// framing only (the snapshotter's reconcile runs so by design).
pub fn note_framing_only() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::info!(
            "No --identity-file (or EBR_AGE_IDENTITY_FILE) was given: encrypted (.age) snapshots are checked for \
             their age framing only, not decrypted"
        )
    });
}

/// What can be checked of an age file without its key: the header parses
/// (version line, stanzas, MAC line), and after the payload nonce the
/// length is a whole number of full STREAM chunks plus one last chunk of
/// 1 to 64 KiB (or an empty last chunk for an empty plaintext). Neither the
/// header MAC nor the chunks' tags can be checked: a flipped byte passes.
pub fn check_framing(raw: &mut dyn Read) -> Result<(), String> {
    let counted = Counted { inner: &mut *raw, n: 0 };
    let mut counted = io::BufReader::with_capacity(1, counted);
    let mut line = Vec::new();
    let mut header = 0usize;
    let mut first = true;
    loop {
        line.clear();
        let n = io::BufRead::read_until(&mut counted, b'\n', &mut line).map_err(|e| format!("reading it: {e}"))?;
        header += n;
        if n == 0 || !line.ends_with(b"\n") || header > MAX_HEADER {
            return Err("not an age-encrypted file (truncated or oversized header)".into());
        }
        if first {
            if line != b"age-encryption.org/v1\n" {
                return Err("not an age-encrypted file (no age-encryption.org/v1 line)".into());
            }
            first = false;
        } else if let Some(mac) = line.strip_prefix(b"--- ") {
            // 32 bytes of HMAC-SHA-256, unpadded base64.
            if mac.len() != 44 {
                return Err("not an age-encrypted file (bad header MAC line)".into());
            }
            break;
        }
    }
    // The BufReader's capacity of 1 byte means nothing past the header is buffered.
    let payload = io::copy(&mut counted, &mut io::sink()).map_err(|e| format!("reading it: {e}"))?;
    if payload < NONCE + TAG {
        return Err(format!("age payload of {payload} bytes is truncated"));
    }
    let chunks = payload - NONCE;
    let full = CHUNK + TAG;
    let last = match chunks % full {
        0 => full,
        r => r,
    };
    // An empty last chunk is only valid as the only chunk.
    if last < TAG || last == TAG && chunks > TAG {
        return Err(format!("age payload of {payload} bytes does not end in a whole chunk (truncated?)"));
    }
    Ok(())
}

struct Counted<'a> {
    inner: &'a mut dyn Read,
    n: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Output of the age writer, drained to the caller after every write.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encrypts a stream for the recipients, passing ciphertext on through a
/// callback as it is produced (the shape of `compression::Packer`): at
/// most one 64 KiB chunk plus what one push gave is held.
pub struct Sealer {
    writer: age::stream::StreamWriter<Shared>,
    out: Shared,
}

impl Sealer {
    pub fn new(recipients: &Recipients) -> io::Result<Sealer> {
        let out = Shared::default();
        let writer = recipients.encryptor()?.wrap_output(out.clone())?;
        Ok(Sealer { writer, out })
    }

    /// Bytes this sealer holds at most besides the ciphertext of one push
    /// (held until the push returns).
    pub fn memory_bound() -> usize {
        2 * (CHUNK + TAG) as usize
    }

    fn drain(&self, out: &mut dyn FnMut(&[u8])) {
        let mut held = self.out.0.lock().unwrap();
        if !held.is_empty() {
            out(&held);
            held.clear();
        }
    }

    pub fn push(&mut self, plain: &[u8], out: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        self.writer.write_all(plain)?;
        self.drain(out);
        Ok(())
    }

    pub fn finish(self, out: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let shared = self.writer.finish()?;
        let held = std::mem::take(&mut *shared.0.lock().unwrap());
        if !held.is_empty() {
            out(&held);
        }
        Ok(())
    }
}

/// Encrypt a small object (a delta snapshot) in one go.
pub fn seal(recipients: &Recipients, plain: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(plain.len() + 256 + plain.len() / 4096);
    let mut s = Sealer::new(recipients)?;
    s.push(plain, &mut |o| out.extend_from_slice(o))?;
    s.finish(&mut |o| out.extend_from_slice(o))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (Recipients, Identities) {
        let id = age::x25519::Identity::generate();
        (Recipients(vec![id.to_public()]), Identities(vec![id]))
    }

    fn open(ids: &Identities, data: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        decrypt(ids, data)?.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn streams_round_trip_for_any_size_and_piece() {
        let (r, ids) = keys();
        for size in [0usize, 1, 65_535, 65_536, 65_537, 3 * 65_536, 1_000_003] {
            let plain: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            for piece in [1000, 65_536, 1 << 20] {
                let mut s = Sealer::new(&r).unwrap();
                let mut sealed = Vec::new();
                let mut most = 0;
                for p in plain.chunks(piece) {
                    s.push(p, &mut |o| {
                        most = most.max(o.len());
                        sealed.extend_from_slice(o)
                    })
                    .unwrap();
                }
                s.finish(&mut |o| sealed.extend_from_slice(o)).unwrap();
                // Ciphertext leaves as it is made: nothing accumulates.
                assert!(most <= piece + Sealer::memory_bound(), "{most} held for pieces of {piece}");
                assert!(open(&ids, &sealed).unwrap() == plain, "size {size} piece {piece}");
                check_framing(&mut &sealed[..]).unwrap_or_else(|e| panic!("size {size}: {e}"));
            }
        }
    }

    #[test]
    fn truncation_tampering_and_wrong_keys_are_errors() {
        let (r, ids) = keys();
        let (_, other) = keys();
        let plain = vec![42u8; 200_000];
        let sealed = seal(&r, &plain).unwrap();
        let e = open(&other, &sealed).unwrap_err();
        assert!(e.contains("no identity"), "{e}");
        assert!(!e.contains('\n'));
        // Cut off mid-chunk and at a chunk boundary: decryption notices both.
        let header = sealed.len() - 16 - 4 * 16 - 200_000; // 4 chunks
        for cut in [sealed.len() - 1, header + 16 + 65_552 * 2] {
            assert!(open(&ids, &sealed[..cut]).is_err(), "cut at {cut}");
        }
        assert!(check_framing(&mut &sealed[..sealed.len() - 1]).is_ok(), "within the last chunk: only a key sees it");
        assert!(check_framing(&mut &sealed[..header + 16 + 65_552 + 10]).is_err());
        assert!(check_framing(&mut &sealed[..header + 16 + 65_552 * 2 + 16]).is_err(), "empty last chunk");
        let mut bad = sealed.clone();
        bad[header + 100] ^= 1;
        assert!(open(&ids, &bad).is_err());
        assert!(check_framing(&mut &b"Full snapshot bytes"[..]).is_err());
        assert!(check_framing(&mut &sealed[..header - 5]).is_err());
    }

    #[test]
    fn key_files_parse_and_errors_hide_the_key() {
        let (_, ids) = keys();
        let secret = age::secrecy::ExposeSecret::expose_secret(&ids.0[0].to_string()).to_string();
        let public = ids.0[0].to_public().to_string();
        let text = format!("# created: now\n# public key: {public}\n{secret}\n\n");
        assert_eq!(Identities::parse(&text).unwrap().0.len(), 1);
        let broken = format!("# c\n{}\n", &secret[..secret.len() - 2]);
        let e = Identities::parse(&broken).unwrap_err();
        assert!(e.contains("line 2") && !e.contains(&secret[..20]), "{e}");
        assert!(Identities::parse("# nothing\n").is_err());

        let d = crate::test_scratch::dir("encryption");
        let file = d.join("recipients");
        std::fs::write(&file, format!("# ops team\n{public}\n\n  {public}  \n")).unwrap();
        assert_eq!(Recipients::new(std::slice::from_ref(&public), Some(&file)).unwrap().unwrap().0.len(), 3);
        assert!(Recipients::new(&[], None).unwrap().is_none());
        let e = Recipients::new(&["age1nope".into()], None).unwrap_err();
        assert!(e.starts_with("--encrypt-to value 1:"), "{e}");
        std::fs::write(&file, "# nothing\n").unwrap();
        assert!(Recipients::new(&[], Some(&file)).unwrap_err().contains("no recipient"));
        std::fs::write(&file, format!("{public}\n{secret}\n")).unwrap();
        let e = Recipients::new(&[], Some(&file)).unwrap_err();
        assert!(e.contains("line 2") && !e.contains(&secret[..20]), "{e}");
    }
}
