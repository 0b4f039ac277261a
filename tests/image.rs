//! The container image, built offline by scripts/build-image: podman (vfs
//! storage) lists it; its config runs the binary as uid 65532; its one layer
//! holds exactly the binary and a CA bundle; and its root filesystem,
//! exported with `podman image save`, backs etcd 3.5 up to both local S3
//! endpoints and restores from them as uid 65532, in a root holding nothing
//! else but what the Kubernetes manifests mount (credentials laid out as the
//! kubelet lays out a Secret volume, /tmp, the data volume), with the
//! CronJob's and restore Job's own command lines. `podman run` cannot be
//! used here (it fails at setrlimit), so the root runs under `unshare --root`.
//! Slow: the image is built once per run; needs EBR_STATIC_BIN (scripts/test).

mod common;

use common::cli::{primary, secondary};
use common::kube::{self, doc};
use common::restore::{kvs, scratch, v35};
use common::{Etcd, env, free_port, unique, var};
use serde_json::Value;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const UID: u32 = 65532;

struct Image {
    name: String,
    /// `tar -tv` of every layer of the saved image, in order.
    root_tar_listing: Vec<String>,
    /// The saved image's layer tarballs, in order.
    layers: Vec<PathBuf>,
}

fn podman(args: &[&str]) -> String {
    let out = Command::new("podman").args(["--storage-driver", "vfs"]).args(args).output().expect("podman");
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Built and saved once for all tests; None when podman cannot be installed.
fn image() -> Option<&'static Image> {
    static IMAGE: OnceLock<Option<Image>> = OnceLock::new();
    IMAGE.get_or_init(build).as_ref()
}

/// scripts/build-image with the static binary scripts/test built.
fn build_image() -> std::process::Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image"))
        .env("EBR_STATIC_BIN", env("EBR_STATIC_BIN"))
        .output()
        .unwrap()
}

fn build() -> Option<Image> {
    let started = std::time::Instant::now();
    let out = build_image();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(4) {
        eprintln!("SKIPPED: podman is not installed and apt-get cannot install it: {stderr}");
        return None;
    }
    assert!(out.status.success(), "scripts/build-image: {stderr}");
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(name, format!("etcd-backup-restore:{}", env!("CARGO_PKG_VERSION")));
    eprintln!("image {name} built in {:.1} s", started.elapsed().as_secs_f64());

    let dir = scratch("image-save");
    let archive = dir.join("image.tar");
    podman(&["image", "save", "--format", "docker-archive", "-o", archive.to_str().unwrap(), &name]);
    let unpacked = dir.join("archive");
    std::fs::create_dir(&unpacked).unwrap();
    tar(&["-xf", archive.to_str().unwrap(), "-C", unpacked.to_str().unwrap()]);
    let saved = std::fs::metadata(&archive).unwrap().len();
    std::fs::remove_file(&archive).unwrap();
    let manifest: Value = serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    let layers: Vec<PathBuf> =
        manifest[0]["Layers"].as_array().unwrap().iter().map(|l| unpacked.join(l.as_str().unwrap())).collect();
    let mut root_tar_listing = Vec::new();
    for layer in &layers {
        let listing = tar(&["--numeric-owner", "-tvf", layer.to_str().unwrap()]);
        root_tar_listing.extend(listing.lines().map(|l| l.to_string()));
    }
    eprintln!("image {name}: {saved} bytes as saved ({} layer(s))", layers.len());
    Some(Image { name, root_tar_listing, layers })
}

fn tar(args: &[&str]) -> String {
    let out = Command::new("tar").args(args).output().expect("tar");
    assert!(out.status.success(), "tar {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_image_builds_offline_runs_as_65532_and_holds_only_the_binary_and_a_ca_bundle() {
    let Some(image) = image() else { return };
    // Listed by the storage a user's own `podman --storage-driver vfs` uses.
    let listed = podman(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}"]);
    assert!(listed.lines().any(|l| l.starts_with(&format!("localhost/{} ", image.name))), "{listed}");

    let inspect: Value = serde_json::from_str(&podman(&["image", "inspect", &image.name])).unwrap();
    let i = &inspect[0];
    assert_eq!(i["Config"]["User"], "65532:65532");
    assert_eq!(i["Config"]["Entrypoint"], serde_json::json!(["/etcd-backup-restore"]));
    assert_eq!(i["Config"]["Cmd"], serde_json::json!(["--help"]));
    assert_eq!(i["Config"]["Labels"]["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!((i["Os"].as_str(), i["Architecture"].as_str()), (Some("linux"), Some("amd64")));
    let size = i["Size"].as_u64().unwrap();
    let bin = std::fs::metadata(env("EBR_STATIC_BIN")).unwrap().len();
    let ca = std::fs::metadata("/etc/ssl/certs/ca-certificates.crt").unwrap().len();
    eprintln!("image size {size} bytes: binary {bin} + CA bundle {ca}");
    assert!(size >= bin + ca && size < bin + ca + 64 * 1024, "{size} vs {bin} + {ca}");

    // The last commit's time is the creation time: the same inputs rebuild the same image.
    let id = |name: &str| podman(&["image", "inspect", "--format", "{{.Id}}", name]);
    let before = id(&image.name);
    let out = build_image();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(id(&image.name), before, "a rebuild gave another image");

    // Exactly these entries, owned by root (uid 65532 can read, never change them).
    let mut entries: Vec<(String, String)> = image
        .root_tar_listing
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f[1], "0/0", "{l}");
            (f[5].trim_start_matches("./").to_string(), f[0].to_string())
        })
        .filter(|(path, _)| !path.is_empty())
        .collect();
    entries.sort();
    let expected = [
        ("etc/", "drwxr-xr-x"),
        ("etc/ssl/", "drwxr-xr-x"),
        ("etc/ssl/certs/", "drwxr-xr-x"),
        ("etc/ssl/certs/ca-certificates.crt", "-rw-r--r--"),
        ("etcd-backup-restore", "-rwxr-xr-x"),
    ];
    assert_eq!(entries, expected.map(|(p, m)| (p.to_string(), m.to_string())), "{:#?}", image.root_tar_listing);
}

/// `dir` as the kubelet lays out a Secret volume: the files in a timestamped
/// directory, `..data` pointing at it, each name a symlink through `..data`;
/// group `fsGroup`, mode `defaultMode` 0440 (as deployment.yaml sets).
fn secret_volume(dir: &Path, fields: &[(&str, String)]) {
    let data = dir.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir_all(&data).unwrap();
    for (name, value) in fields {
        let file = data.join(name);
        std::fs::write(&file, value).unwrap();
        chown(&file, Some(0), Some(UID)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
        symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    symlink(data.file_name().unwrap(), dir.join("..data")).unwrap();
}

/// A directory owned by the pod's user, as an emptyDir or a volume with fsGroup.
fn writable(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    chown(dir, Some(UID), Some(UID)).unwrap();
}

/// The image's command in `root` as uid/gid 65532 with no supplementary
/// groups, in its own pid, ipc and uts namespaces, with only `envs`; the
/// network is the host's, used only towards 127.0.0.1.
fn contained(root: &Path, args: &[String], envs: &[(String, String)]) -> (i32, String) {
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--ipc", "--uts", "--setuid", "65532", "--setgid", "65532"])
        .arg(format!("--root={}", root.display()))
        .arg("/etcd-backup-restore")
        .args(args)
        .env_clear()
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("unshare (the tests run as root)");
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    eprintln!("$ unshare --root={} etcd-backup-restore {}\n{text}", root.display(), args.join(" "));
    (out.status.code().unwrap_or(-1), text)
}

/// The local servers in place of the manifests' site-specific values (a
/// later flag of the same name wins).
fn local_store(prefix: &str) -> Vec<String> {
    use common::Server::{A, B};
    vec![
        format!("--store-container={}", var(A, "BUCKET")),
        format!("--store-prefix={prefix}"),
        format!("--store-endpoint-override={}", var(A, "ENDPOINT")),
        format!("--secondary-store-container={}", var(B, "BUCKET")),
        format!("--secondary-store-prefix={prefix}"),
        format!("--secondary-store-endpoint-override={}", var(B, "ENDPOINT")),
    ]
}

/// The image's files in a fresh directory, with what a pod of `manifest`
/// mounts (both Secrets, /tmp, the data volume) and nothing else; the
/// pod's environment.
fn pod_root(image: &Image, tag: &str, manifest: &Value) -> (PathBuf, Vec<(String, String)>) {
    let root = scratch(tag);
    for layer in &image.layers {
        tar(&["--numeric-owner", "-xf", layer.to_str().unwrap(), "-C", root.to_str().unwrap()]);
    }
    let envs = kube::env(manifest);
    for (var, server) in envs.iter().map(|(k, v)| (v, if k.starts_with("SECONDARY_") { "B" } else { "A" })) {
        let dir = root.join(var.trim_start_matches('/'));
        let key = |what: &str| env(&format!("EBR_S3{server}_{what}"));
        secret_volume(
            &dir,
            &[
                ("accessKeyID", key("ACCESS_KEY")),
                ("secretAccessKey", key("SECRET_KEY")),
                ("region", "us-east-1".into()),
            ],
        );
    }
    writable(&root.join("tmp"));
    writable(&root.join("var/etcd/data"));
    (root, envs)
}

#[test]
fn the_images_root_backs_up_to_both_endpoints_and_restores_as_65532_with_the_manifests_command_lines() {
    let Some(image) = image() else { return };
    let v = v35();
    let cron = doc("cronjob.yaml", "CronJob");
    let job = doc("restore-job.yaml", "Job");
    let (root, envs) = pod_root(image, "image-root", &cron);
    assert_eq!(envs, kube::env(&job));

    let key = format!("/{}", unique("image"));
    common::cli::etcdctl_put(&v.ctl, &v.endpoint, &key, "from the image");
    let prefix = unique("image");
    let mut args = kube::args(&cron);
    args.push(format!("--endpoints={}", v.endpoint));
    args.extend(local_store(&prefix));
    let started = std::time::Instant::now();
    let (code, out) = contained(&root, &args, &envs);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("successfully saved to both endpoints"), "{out}");
    eprintln!("backup from the image's root: {:.2} s", started.elapsed().as_secs_f64());
    let names = |s: &dyn etcd_backup_restore::store::Store| -> Vec<String> {
        common::cli::listed(s).into_iter().map(|o| o.name).collect()
    };
    let on_primary = names(&primary(&prefix));
    assert_eq!(on_primary.len(), 1, "{on_primary:?}");
    assert_eq!(on_primary, names(&secondary(&prefix)));

    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut args = kube::args(&job);
    let data_dir = args.iter().find_map(|a| a.strip_prefix("--data-dir=")).unwrap().to_string();
    args.extend([
        "--name=s1".into(),
        format!("--initial-cluster=s1={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
    ]);
    args.extend(local_store(&prefix));
    let (code, out) = contained(&root, &args, &envs);
    assert_eq!(code, 0, "{out}");
    let restored = root.join(data_dir.trim_start_matches('/'));
    let db = restored.join("member/snap/db");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&db).unwrap()), UID, "written as 65532");
    let e = Etcd::start(&v.etcd, &v.ctl, &restored, "s1", &peer, &format!("s1={peer}"));
    let got = kvs(&v, &e.client_url, &key);
    assert_eq!(got[0]["value"], base64(b"from the image"), "{got}");
    drop(e);
    // The restored database is as large as etcd's (tens of MB): not left in /tmp.
    std::fs::remove_dir_all(&root).unwrap();
}

fn base64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// One plain HTTP/1.1 GET to 127.0.0.1: the status and the body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string())))
}

#[test]
fn the_images_root_runs_the_deployments_server_and_turns_healthy() {
    let Some(image) = image() else { return };
    let v = v35();
    let deployment = doc("deployment.yaml", "Deployment");
    let (root, envs) = pod_root(image, "image-server", &deployment);
    let port = free_port();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    let prefix = unique("image-server");
    let mut args = kube::args(&deployment);
    assert_eq!(args[0], "server", "{args:?}");
    args.extend([
        format!("--endpoints={}", v.endpoint),
        format!("--server-port={port}"),
        "--server-address=127.0.0.1".into(),
    ]);
    args.extend(local_store(&prefix));
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child=SIGKILL", "--ipc", "--uts", "--setuid", "65532", "--setgid", "65532"])
        // A pod has /proc, where the process metrics come from.
        .arg("--mount-proc=/proc")
        .arg(format!("--root={}", root.display()))
        .arg("/etcd-backup-restore")
        .args(&args)
        .env_clear()
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(root.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    let mut child = Unshared(child);
    let log = || std::fs::read_to_string(root.with_extension("log")).unwrap_or_default();
    // The manifests' probes: /healthz turns 200 once the first full snapshot is stored.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some((200, body)) = get(port, "/healthz") {
            assert_eq!(body.trim(), r#"{"health":true}"#);
            break;
        }
        assert!(child.0.try_wait().unwrap().is_none(), "the server exited:\n{}", log());
        assert!(std::time::Instant::now() < end, "/healthz not 200 within 60s:\n{}", log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (status, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("etcdbr_snapshot_latest_revision{endpoint=\"secondary\",kind=\"Full\"}"), "{metrics}");
    assert!(metrics.contains("process_resident_memory_bytes"), "{metrics}");
    // SIGTERM to the server itself (pid 1 of its namespace); unshare then exits with it.
    let server = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.0.id())).unwrap();
    let server: i32 = server.trim().parse().unwrap();
    assert_eq!(unsafe { libc::kill(server, libc::SIGTERM) }, 0);
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", log());
    assert!(log().contains("Snapshotter stopped"), "{}", log());
    eprintln!("{}\nexit: {status:?}", log());
    std::fs::remove_dir_all(&root).unwrap();
}

/// `unshare` with the server under it, killed (with the server, by
/// `--kill-child`) when the test ends, also by a panic.
struct Unshared(std::process::Child);

impl Drop for Unshared {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
