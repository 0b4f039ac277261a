//! Client-side encryption end to end: the snapshotter (full snapshot and
//! deltas) encrypting with age against real etcd 3.5 and both real S3
//! servers; Debian's `age` CLI decrypting our objects, and our restore
//! reading an object the `age` CLI encrypted.

mod common;

use common::cli::*;
use common::restore::{kvs, restore, restore_and_start, scratch, v35};
use common::{snapshotter, unique};
use etcd_backup_restore::snapshot::{Kind, SnapshotName};
use etcd_backup_restore::store;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh X25519 key pair from `age-keygen`: (identity file, recipient).
fn keygen(dir: &Path, tag: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{tag}.key"));
    let out = Command::new("age-keygen").arg("-o").arg(&key).output().expect("age-keygen (apt-get install age)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("age-keygen").arg("-y").arg(&key).output().unwrap();
    assert!(out.status.success());
    (key, String::from_utf8(out.stdout).unwrap().trim().to_string())
}

/// Run `program` with `args` on `input`; its standard output.
fn pipe(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn errors(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(" ERRO ")).collect()
}

#[test]
fn encrypted_chain_is_unreadable_in_store_and_restores_with_the_identity_etcd35() {
    let v = v35();
    let dir = scratch("enc");
    let (key, recipient) = keygen(&dir, "ops");
    let (wrong_key, _) = keygen(&dir, "other");
    // A second recipient from a file: either identity may decrypt.
    let (_, backup_recipient) = keygen(&dir, "backup");
    let recipients = dir.join("recipients");
    std::fs::write(&recipients, format!("# backup team\n{backup_recipient}\n")).unwrap();

    let prefix = unique("enc");
    let top = format!("/{}/", unique("enc"));
    let (full_key, full_value) = (format!("{top}full"), unique("plaintext-full-value"));
    let (delta_key, delta_value) = (format!("{top}delta"), unique("plaintext-delta-value"));
    etcdctl_put(&v.ctl, &v.endpoint, &full_key, &full_value);
    let encrypt_to = format!("--encrypt-to={recipient}");
    let encrypt_file = format!("--encrypt-to-file={}", recipients.display());
    let s = snapshotter::start(&v.endpoint, &prefix, &["--schedule=0 0 1 1 *", &encrypt_to, &encrypt_file]);
    s.wait_for_lines(&["INFO Snapshot Full-", ".gz.age successfully saved to both endpoints"], 1);
    etcdctl_put(&v.ctl, &v.endpoint, &delta_key, &delta_value);
    s.wait_for_lines(&["INFO Snapshot Incr-", ".gz.age successfully saved to both endpoints"], 1);
    s.stop();

    let (p, sec) = (primary(&prefix), secondary(&prefix));
    let names: Vec<String> = listed(&p).into_iter().map(|o| o.name).collect();
    assert_eq!(names, listed(&sec).into_iter().map(|o| o.name).collect::<Vec<_>>());
    assert!(names.len() >= 2, "{names:?}");
    let mut full = None;
    for name in &names {
        assert!(name.ends_with(".gz.age"), "{name}");
        let n = SnapshotName::parse(name).unwrap();
        assert!(n.encrypted && n.compression == ".gz");
        let (a, b) = (load(&p, name), load(&sec, name));
        assert!(a == b, "{name}: encrypted once, byte-identical on both endpoints");
        assert!(a.starts_with(b"age-encryption.org/v1\n"));
        for plain in [&full_key, &full_value, &delta_key, &delta_value] {
            assert!(!contains(&a, plain.as_bytes()), "{name} contains {plain}");
        }
        if n.kind == Kind::Full {
            full = Some(a);
        }
    }

    // Debian's age CLI decrypts our object, with either recipient's identity.
    let full = full.expect("a full snapshot");
    let snapshot = pipe("gzip", &["-dc"], &pipe("age", &["-d", "-i", key.to_str().unwrap()], &full));
    assert_eq!(snapshot.len() % 512, 32, "etcd snapshot = pages + 32-byte trailer");
    let (db, trailer) = snapshot.split_at(snapshot.len() - 32);
    assert_eq!(Sha256::digest(db).as_slice(), trailer, "SHA-256 trailer must verify");
    assert!(contains(db, full_value.as_bytes()));

    // verify: with the identity, the content; without, the framing only.
    let id = format!("--identity-file={}", key.display());
    for extra in [vec![id.as_str()], vec![id.as_str(), "--deep"], vec![]] {
        let mut args = vec!["snapshot".to_string(), "verify".into()];
        args.extend(store_args(&prefix));
        args.extend(extra.iter().map(|s| s.to_string()));
        let r = run(&refs(&args), &as_refs(&creds()));
        assert_eq!(r.code, 0, "verify {extra:?}: {}", r.stderr);
    }

    // restore: without an identity and with the wrong one, one error line naming the snapshot.
    let full_name = names.iter().find(|n| n.starts_with("Full-")).unwrap();
    let wrong = format!("--identity-file={}", wrong_key.display());
    for (extra, why) in
        [(vec![], "no --identity-file"), (vec![wrong.as_str()], "no identity of --identity-file matches")]
    {
        let r = restore(&prefix, &dir.join("never"), &refs(&with(restore_flags(), &extra)), &creds());
        assert_eq!(r.code, 1, "{}", r.stderr);
        let errs = errors(&r.stderr);
        assert_eq!(errs.len(), 1, "{}", r.stderr);
        assert!(!r.stderr.contains(" WARN "), "refused before any download: {}", r.stderr);
        assert!(errs[0].contains(full_name.as_str()) && errs[0].contains(why), "{}", errs[0]);
        assert!(!dir.join("never").exists());
    }
    // The identity given by EBR_AGE_IDENTITY_FILE instead of the flag works alike.
    let mut envs = creds();
    envs.push(("EBR_AGE_IDENTITY_FILE".into(), key.display().to_string()));
    let r = restore(&prefix, &dir.join("by-env"), &refs(&restore_flags()), &envs);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // restore with the identity: etcd starts with the full snapshot and the delta applied.
    let restored = restore_and_start(&v, &prefix, &dir, "enc", &[&id]);
    assert_eq!(restored.run.code, 0, "{}", restored.run.stderr);
    let etcd = restored.etcd.unwrap();
    let got = kvs(&v, &etcd.client_url, &top);
    let values: Vec<String> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            use base64::Engine;
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(kv["value"].as_str().unwrap()).unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(values, [delta_value, full_value]);
}

/// Flags of a single-member restore that needs no etcd started afterwards.
fn restore_flags() -> Vec<String> {
    vec![
        "--name=enc".into(),
        "--initial-cluster=enc=http://127.0.0.1:2380".into(),
        "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
    ]
}

#[test]
fn restore_reads_an_object_the_age_cli_encrypted_etcd35() {
    let v = v35();
    let dir = scratch("agecli");
    let (key, recipient) = keygen(&dir, "cli");
    let plain_prefix = unique("agecli-plain");
    let top = format!("/{}/", unique("agecli"));
    let value = unique("agecli-value");
    etcdctl_put(&v.ctl, &v.endpoint, &format!("{top}k"), &value);
    // An ordinary gzip snapshot, then encrypted by the age CLI and stored as `.gz.age`.
    let args = with(dual_args(&v.endpoint, &plain_prefix), &["--compress-snapshots=true"]);
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let listing = listed(&primary(&plain_prefix));
    assert_eq!(listing.len(), 1);
    let name = &listing[0].name;
    assert!(name.ends_with(".gz"), "{name}");
    let sealed = pipe("age", &["-r", &recipient], &load(&primary(&plain_prefix), name));
    let prefix = unique("agecli");
    store::save(&primary(&prefix), &format!("{name}.age"), &sealed).unwrap();

    let restored = restore_and_start(&v, &prefix, &dir, "agecli", &[&format!("--identity-file={}", key.display())]);
    assert_eq!(restored.run.code, 0, "{}", restored.run.stderr);
    assert!(restored.run.stderr.contains(&format!("{name}.age")), "{}", restored.run.stderr);
    let got = kvs(&v, &restored.etcd.unwrap().client_url, &top);
    assert_eq!(got.as_array().unwrap().len(), 1, "{got}");
}

#[test]
fn reconcile_copies_ciphertext_as_is_checking_the_framing_without_a_key() {
    let dir = scratch("encrec");
    let (key, recipient) = keygen(&dir, "rec");
    let v = v35();
    let src = unique("encrec-src");
    let args = with(dual_args(&v.endpoint, &src), &["--compress-snapshots=true", &format!("--encrypt-to={recipient}")]);
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let name = listed(&primary(&src)).remove(0).name;
    let sealed = load(&primary(&src), &name);
    // On the primary only, then reconciled: without a key (as a snapshotter
    // holding only recipients runs it), and with one.
    for (tag, extra) in [("nokey", None), ("key", Some(format!("--identity-file={}", key.display())))] {
        let prefix = unique(&format!("encrec-{tag}"));
        store::save(&primary(&prefix), &name, &sealed).unwrap();
        let mut args = vec!["snapshot".to_string(), "reconcile".into()];
        args.extend(store_args(&prefix));
        args.extend(extra);
        let r = run(&refs(&args), &as_refs(&creds()));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(load(&secondary(&prefix), &name) == sealed, "copied as is");
    }
    // Without the key only the framing is checked: a copy cut to 8 bytes
    // into a chunk (less than its tag) is refused. (Most cuts within a
    // chunk need the key to be seen: the README says so.)
    let header = sealed.windows(5).position(|w| w == b"\n--- ").unwrap() + 5 + 44;
    let cut = header + 16 + 8;
    let prefix = unique("encrec-cut");
    store::save(&primary(&prefix), &name, &sealed[..cut]).unwrap();
    let mut args = vec!["snapshot".to_string(), "reconcile".into()];
    args.extend(store_args(&prefix));
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("framing checked only"), "{}", r.stderr);
    assert!(listed(&secondary(&prefix)).is_empty());
}
