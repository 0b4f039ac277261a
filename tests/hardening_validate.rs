//! Issue 11, items 2, 3 and 8: bad input from flags, object names and
//! servers. Every bad flag is one line and exit 2 before a request reaches a
//! store; names beyond int64 or the year 9999 and absurd listed sizes are
//! refused instead of panicking or aborting; keys that need URL encoding
//! list exactly as written. Against the real servers and etcd.

mod common;

use common::cli::{as_refs, creds, primary, refs, run, store_args};
use common::fault::{Action, Request, Rule, S3Faults};
use common::{Server, env, s3_store, unique};
use etcd_backup_restore::store::{self, Store};

/// The store flags of both endpoints, the primary reached through `faults`.
fn args_via(faults: &S3Faults, prefix: &str) -> Vec<String> {
    let mut args = store_args(prefix);
    for a in args.iter_mut() {
        if a.starts_with("--store-endpoint-override=") {
            *a = format!("--store-endpoint-override={}", faults.url);
        }
    }
    args
}

fn assert_no_crash(stderr: &str, code: i32) {
    assert!(code != 101 && code != 134, "crashed with {code}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A usage error: exit 2, exactly one line, `etcd-backup-restore: ...`
/// naming `want`, and no request sent to the primary's store.
fn assert_usage(args: &[String], want: &str) {
    let faults = S3Faults::start(&env("EBR_S3A_ENDPOINT"), vec![]);
    // The flags under test come last, so that they win over the store flags.
    let mut all = args_via(&faults, &unique("usage"));
    all.extend_from_slice(args);
    let r = run(&refs(&all), &as_refs(&creds()));
    assert_no_crash(&r.stderr, r.code);
    assert_eq!(r.code, 2, "{args:?}:\n{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line expected:\n{}", r.stderr);
    assert!(lines[0].starts_with("etcd-backup-restore: ") && lines[0].contains(want), "{args:?}: {}", lines[0]);
    assert!(faults.log.lock().unwrap().is_empty(), "{args:?}: a request reached the store");
}

#[test]
fn bad_flags_are_one_line_exit_2_naming_the_flag_before_any_request() {
    // Short entries: one argument may hold at most 128 KiB.
    let members: Vec<String> = (0..5001).map(|i| format!("m{i}=http://h{i}:1")).collect();
    let cluster = format!("--initial-cluster={}", members.join(","));
    let snapshot = |flag: &str| vec!["snapshot".to_string(), "--once".into(), flag.to_string()];
    let restore = |flags: &[&str]| {
        let mut v = vec!["restore".to_string()];
        v.extend(flags.iter().map(|f| f.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        // Item 2: names that escape.
        (snapshot("--store-prefix=../other/x"), "--store-prefix"),
        (snapshot("--store-prefix=./dot"), "--store-prefix"),
        (snapshot("--store-prefix=a//b"), "--store-prefix"),
        (snapshot("--store-prefix=a\tb"), "--store-prefix"),
        (snapshot("--secondary-store-prefix=x/../../y"), "--secondary-store-prefix"),
        (snapshot("--store-container=.."), "--store-container"),
        (snapshot("--store-container=Bad_Bucket"), "--store-container"),
        (snapshot("--secondary-store-container=192.168.0.1"), "--secondary-store-container"),
        (restore(&["--store-container=a..b"]), "--store-container"),
        // Item 3: numbers.
        (snapshot("--max-parallel-chunk-uploads=1000000000"), "--max-parallel-chunk-uploads"),
        (snapshot("--secondary-max-parallel-chunk-uploads=65"), "--secondary-max-parallel-chunk-uploads"),
        (snapshot("--chunk-upload-timeout=0s"), "--chunk-upload-timeout"),
        (snapshot("--secondary-chunk-upload-timeout=0"), "--secondary-chunk-upload-timeout"),
        (snapshot("--chunk-upload-attempts=101"), "--chunk-upload-attempts"),
        (snapshot("--chunk-upload-backoff=2h"), "--chunk-upload-backoff"),
        (snapshot("--min-chunk-size=99999Gi"), "--min-chunk-size"),
        (snapshot("--min-chunk-size=6Gi"), "--min-chunk-size"),
        (snapshot("--etcd-connection-timeout=0s"), "--etcd-connection-timeout"),
        (snapshot("--etcd-snapshot-timeout=0"), "--etcd-snapshot-timeout"),
        (vec!["snapshot".into(), "--schedule=@every 0s".into()], "--schedule"),
        (restore(&["--bump-revision=18446744073709551615", "--mark-compacted"]), "--bump-revision"),
        (restore(&["--bump-revision=9223372036854775808", "--mark-compacted"]), "--bump-revision"),
        (restore(&[&cluster, "--name=m0", "--initial-advertise-peer-urls=http://h0:1"]), "--initial-cluster"),
        // Item 8: endpoints and an empty --snapshot.
        (snapshot("--endpoints=http://"), "--endpoints"),
        (snapshot("--endpoints=unix:///x"), "unix sockets are not supported"),
        (snapshot("--endpoints=http://127.0.0.1:2379,unixs://y:1"), "--endpoints"),
        (restore(&["--snapshot="]), "--snapshot"),
    ];
    for (args, want) in cases {
        assert_usage(&args, want);
    }
}

/// Objects with these names must not stop `snapshot list`: each is skipped
/// as not a snapshot name, and the good one is still listed.
#[test]
fn snapshot_list_skips_names_beyond_int64_and_the_year_9999() {
    let prefix = unique("names");
    let good = "Full-00000000-00000005-1700000000";
    let bad = [
        "Full-00000000-00000010-18446744073709551615",
        "Full-00000000-00000010-253402300800",
        "Full-00000000-9223372036854775808-1700000000",
        "Incr-9223372036854775808-9223372036854775809-1700000000",
    ];
    for name in bad.iter().chain([&good]) {
        store::save(&primary(&prefix), name, b"x").unwrap();
    }
    let mut args = vec!["snapshot".to_string(), "list".into()];
    args.extend(store_args(&prefix));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etcd-backup-restore"))
        .args(&args)
        .env_clear()
        .envs(creds())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let code = out.status.code().unwrap_or(-1);
    assert_no_crash(&stderr, code);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(good) && stdout.contains("2023-11-14T22:13:20Z"), "{stdout}");
    for name in bad {
        assert!(!stdout.contains(name), "{name} listed:\n{stdout}");
    }
}

/// Full snapshot of etcd 3.5 into `prefix` on both servers; its name.
fn snapshot_once(prefix: &str) -> String {
    let mut args = vec!["snapshot".to_string(), "--once".into(), format!("--endpoints={}", env("EBR_ETCD35_ENDPOINT"))];
    args.extend(store_args(prefix));
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let names = common::cli::listed(&primary(prefix));
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].name.clone()
}

fn restore_via(faults: &S3Faults, prefix: &str, data: &std::path::Path, extra: &[&str]) -> common::cli::Run {
    let mut args = vec!["restore".to_string(), format!("--data-dir={}", data.display())];
    args.extend(args_via(faults, prefix));
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&refs(&args), &as_refs(&creds()))
}

#[test]
fn an_absurd_listed_size_is_refused_naming_the_endpoint_and_object() {
    let prefix = unique("size");
    let name = snapshot_once(&prefix);
    let lying = Rule { kind: Request::List, nth: vec![], action: Action::ListedSize(u64::MAX) };
    let dir = common::restore::scratch("size");

    // The primary lists 2^64-1 bytes: skipped with one WARN, the secondary's copy restores.
    let faults = S3Faults::start(&env("EBR_S3A_ENDPOINT"), vec![lying.clone()]);
    let r = restore_via(&faults, &prefix, &dir.join("both"), &[]);
    assert_no_crash(&r.stderr, r.code);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let warn = r.stderr.lines().find(|l| l.contains("WARN") && l.contains("bytes")).unwrap_or_default();
    assert!(
        warn.contains(&name) && warn.contains("18446744073709551615") && warn.contains("s3://primary/"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&format!("Successfully fetched snapshot {name} from secondary endpoint")));
    assert!(faults.log.lock().unwrap().iter().all(|(k, _)| *k != Request::Get), "no GET of the absurd object");

    // Only the lying endpoint: exit 1, one ERRO line naming it, no data directory.
    let mut args = vec!["restore".to_string(), format!("--data-dir={}", dir.join("one").display())];
    args.extend(args_via(&faults, &prefix).into_iter().filter(|a| !a.starts_with("--secondary")));
    let r = run(&refs(&args), &as_refs(&creds()));
    assert_no_crash(&r.stderr, r.code);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let errors: Vec<&str> = r.stderr.lines().filter(|l| l.contains("ERRO")).collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(errors[0].contains(&name) && errors[0].contains("more than an S3 object can hold"), "{}", errors[0]);
    assert!(!dir.join("one").exists());
}

#[test]
fn a_bump_beyond_int64_is_refused_from_the_name_before_any_download() {
    let prefix = unique("bump");
    let name = snapshot_once(&prefix);
    let faults = S3Faults::start(&env("EBR_S3A_ENDPOINT"), vec![]);
    let data = common::restore::scratch("bump").join("data");
    let r = restore_via(&faults, &prefix, &data, &["--bump-revision=9223372036854775807", "--mark-compacted"]);
    assert_no_crash(&r.stderr, r.code);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let errors: Vec<&str> = r.stderr.lines().filter(|l| l.contains("ERRO")).collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(errors[0].contains("--bump-revision 9223372036854775807") && errors[0].contains(&name), "{}", errors[0]);
    assert!(faults.log.lock().unwrap().iter().all(|(k, _)| *k != Request::Get), "nothing downloaded");
    let left: Vec<_> = std::fs::read_dir(data.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "no data or staging directory left behind: {left:?}");
}

/// Store conformance: a prefix and a name with characters that need URL
/// encoding are written and listed back byte for byte, on both servers.
#[test]
fn keys_needing_encoding_list_exactly_as_written_on_both_servers() {
    let prefix = format!("{}/sp ace+plus%25(x)=ü&'~*", unique("enc"));
    let name = "Full-00000000-00000001-1 a+b%c!$,;@é";
    for server in [Server::A, Server::B] {
        let s = s3_store(server, &prefix);
        store::save(&s, name, b"payload").unwrap_or_else(|e| panic!("{server:?}: {e}"));
        let listed = s.list().unwrap();
        assert_eq!(listed.len(), 1, "{server:?}: {listed:?}");
        assert_eq!((listed[0].name.as_str(), listed[0].size), (name, 7), "{server:?}");
        assert_eq!(common::cli::load(&s, name), b"payload", "{server:?}");
        s.delete(name).unwrap();
        assert!(s.list().unwrap().is_empty(), "{server:?}");
    }
}

/// Two `*.json` files in a credentials directory: the first by name is read,
/// as upstream does, and one WARN line says which and what was ignored.
#[test]
fn two_json_credential_files_the_first_by_name_is_used_and_logged() {
    let dir = common::restore::scratch("creds");
    std::fs::create_dir_all(&dir).unwrap();
    let json = |key: &str, secret: &str| format!(r#"{{"accessKeyID":"{key}","secretAccessKey":"{secret}"}}"#);
    std::fs::write(dir.join("a.json"), json(&env("EBR_S3A_ACCESS_KEY"), &env("EBR_S3A_SECRET_KEY"))).unwrap();
    std::fs::write(dir.join("b.json"), json("wrong", "wrong-secret")).unwrap();
    let mut args = vec!["snapshot".to_string(), "list".into()];
    args.extend(store_args(&unique("creds")).into_iter().filter(|a| !a.starts_with("--secondary")));
    let r = run(&refs(&args), &[("AWS_APPLICATION_CREDENTIALS", dir.to_str().unwrap())]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let warns: Vec<&str> = r.stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warns.len(), 1, "{}", r.stderr);
    assert!(warns[0].contains("using a.json") && warns[0].contains("ignoring b.json"), "{}", warns[0]);
    assert!(!r.stderr.contains(&env("EBR_S3A_SECRET_KEY")) && !r.stderr.contains("wrong-secret"));
}
