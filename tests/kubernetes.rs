//! contrib/kubernetes: the manifests pass kubernetes-validate's strict check
//! against a current Kubernetes, offline; the ServiceMonitor (a CRD that
//! kubernetes-validate has no schema for) is checked against the Service and
//! Deployment it scrapes; every pod runs as the image's user, read-only, with
//! both endpoints' credentials from Secrets; memory limits cover the README's
//! bound. tests/image.rs runs the CronJob's and restore Job's command lines.

mod common;

use common::kube::{self, args, container, doc, env, pod_spec};
use serde_json::Value;
use std::process::Command;

/// The Kubernetes version validated against: the newest kubernetes-validate
/// (pinned in scripts/test) carries.
const KUBERNETES: &str = "1.37.0";

const BUILTIN: [&str; 4] = ["secrets.yaml", "deployment.yaml", "cronjob.yaml", "restore-job.yaml"];

fn validate(files: &[std::path::PathBuf]) -> (bool, String) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES])
        .args(files)
        .output()
        .expect("kubernetes-validate (python3 -m pip install kubernetes-validate; scripts/test does)");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn manifests_validate_strictly_against_a_current_kubernetes() {
    let (ok, out) = validate(&BUILTIN.map(|f| kube::dir().join(f)));
    eprintln!("{out}");
    assert!(ok, "{out}");
    assert!(!out.contains("WARN") && !out.contains("ERROR"), "{out}");
    for resource in [
        "secret/etcd-backup-primary",
        "secret/etcd-backup-secondary",
        "deployment/etcd-backup-restore",
        "service/etcd-backup-restore",
        "cronjob/etcd-backup-restore",
        "job/etcd-restore-etcd-0",
    ] {
        assert!(out.contains(&format!("passed for resource {resource} against version 1.37")), "{resource}: {out}");
    }
}

#[test]
fn the_validator_rejects_a_misspelt_field() {
    let text = std::fs::read_to_string(kube::dir().join("deployment.yaml")).unwrap();
    let bad = std::env::temp_dir().join(format!("ebr-bad-deployment-{}.yaml", std::process::id()));
    std::fs::write(&bad, text.replace("readOnlyRootFilesystem", "readOnlyRootFilesytem")).unwrap();
    let (ok, out) = validate(std::slice::from_ref(&bad));
    std::fs::remove_file(&bad).unwrap();
    assert!(!ok && out.contains("'readOnlyRootFilesytem' was unexpected"), "{out}");
}

fn subset(small: &Value, big: &Value) -> bool {
    small.as_object().unwrap().iter().all(|(k, v)| big.get(k) == Some(v))
}

/// kubernetes-validate has only the built-in kinds' schemas (it answers
/// "Couldn't find schema for kind ServiceMonitor"), and the Prometheus
/// Operator's CRD cannot be fetched offline: check what would make the scrape
/// fail silently instead, the chain ServiceMonitor -> Service -> pod port.
#[test]
fn service_monitor_scrapes_the_servers_metrics_port() {
    let (_, out) = validate(&[kube::dir().join("servicemonitor.yaml")]);
    assert!(out.contains("Couldn't find schema for kind ServiceMonitor"), "{out}");

    let monitor = doc("servicemonitor.yaml", "ServiceMonitor");
    let service = doc("deployment.yaml", "Service");
    let deployment = doc("deployment.yaml", "Deployment");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert!(subset(&monitor["spec"]["selector"]["matchLabels"], &service["metadata"]["labels"]));
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let port = service["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == endpoint["port"]).unwrap();

    assert!(subset(&service["spec"]["selector"], &deployment["spec"]["template"]["metadata"]["labels"]));
    assert!(subset(
        &deployment["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
    let c = container(&deployment);
    let pod_port = c["ports"].as_array().unwrap().iter().find(|p| p["name"] == port["targetPort"]).unwrap();
    let a = args(&deployment);
    assert_eq!(a[0], "server");
    assert!(a.contains(&format!("--server-port={}", pod_port["containerPort"])), "{a:?}");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], pod_port["name"], "{probe}");
    }
    // Two snapshotters on the same prefixes would store every snapshot twice.
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
}

fn image_user() -> u64 {
    let containerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Containerfile")).unwrap();
    let user = containerfile.lines().find_map(|l| l.strip_prefix("USER ")).unwrap();
    user.split(':').next().unwrap().parse().unwrap()
}

#[test]
fn pods_run_as_the_images_user_read_only_with_both_credentials_from_secrets() {
    let secrets = kube::docs("secrets.yaml");
    let workloads =
        [doc("deployment.yaml", "Deployment"), doc("cronjob.yaml", "CronJob"), doc("restore-job.yaml", "Job")];
    for w in &workloads {
        let name = format!("{} {}", w["kind"], w["metadata"]["name"]);
        let pod = pod_spec(w);
        let c = container(w);
        assert_eq!(pod["securityContext"]["runAsUser"], image_user(), "{name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL", "{name}");
        let volumes = pod["volumes"].as_array().unwrap();
        let volume_at = |path: &str| {
            let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == path);
            let mount = mount.unwrap_or_else(|| panic!("{name}: nothing mounted at {path}"));
            volumes.iter().find(|v| v["name"] == mount["name"]).unwrap().clone()
        };
        assert!(volume_at("/tmp").get("emptyDir").is_some(), "{name}: /tmp must be writable");
        let env = env(w);
        for var in ["AWS_APPLICATION_CREDENTIALS", "SECONDARY_AWS_APPLICATION_CREDENTIALS"] {
            let path = &env.iter().find(|(k, _)| k == var).unwrap_or_else(|| panic!("{name}: no {var}")).1;
            let secret = &volume_at(path)["secret"];
            let s = secrets.iter().find(|s| s["metadata"]["name"] == secret["secretName"]).unwrap();
            // Upstream's secret-volume form: one file per field.
            for field in ["accessKeyID", "secretAccessKey"] {
                assert!(s["stringData"].get(field).is_some(), "{name}: {var}: {field}");
            }
        }
        let primary = env.iter().find(|(k, _)| k == "AWS_APPLICATION_CREDENTIALS").unwrap();
        let secondary = env.iter().find(|(k, _)| k == "SECONDARY_AWS_APPLICATION_CREDENTIALS").unwrap();
        assert_ne!(volume_at(&primary.1)["secret"], volume_at(&secondary.1)["secret"], "{name}: two Secrets");
    }
    let cron = args(&workloads[1]);
    assert_eq!(cron[..3], ["snapshot", "--once", "--require-all-endpoints"]);
    assert_eq!(pod_spec(&workloads[1])["restartPolicy"], "Never");
    assert_eq!(args(&workloads[2])[0], "restore");
}

fn mib(quantity: &Value) -> u64 {
    quantity.as_str().unwrap().strip_suffix("Mi").unwrap().parse().unwrap()
}

/// The bound of README "Memory bound", from its own formula with the
/// defaults the manifests keep, and its stated total checked against it.
#[test]
fn memory_limits_cover_the_documented_bound() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (uploads, part, reader, gzip_per_core) = (5, 5, 1, 7);
    let two_endpoints = 2 * (uploads + 3) * part + reader;
    assert!(readme.contains(&format!("{two_endpoints} MiB for two")), "README's bound changed: update the manifests");
    assert!(readme.contains(&format!("{gzip_per_core} MiB of blocks in flight per core")));
    // Deltas held while no endpoint takes them (4 x --delta-snapshot-memory-limit)
    // and one reconcile copy ((uploads + 2) parts), as README says.
    let (deltas, reconcile) = (4 * 10, (uploads + 2) * part);
    assert!(readme.contains("four times the memory limit") && readme.contains("that many parts plus two"));

    // Room for the process itself (static binary, threads, HTTP API).
    let process = 16;
    for (file, kind, bound) in [
        ("deployment.yaml", "Deployment", two_endpoints + deltas + reconcile),
        ("cronjob.yaml", "CronJob", two_endpoints),
    ] {
        let w = doc(file, kind);
        let resources = &container(&w)["resources"];
        let cpus: u64 = resources["limits"]["cpu"].as_str().unwrap().parse().unwrap();
        let bound = bound + gzip_per_core * cpus + process;
        let limit = mib(&resources["limits"]["memory"]);
        assert!(limit >= bound && limit <= bound * 3 / 2, "{kind}: limit {limit} MiB for a bound of {bound} MiB");
        assert_eq!(resources["requests"]["memory"], resources["limits"]["memory"], "{kind}");
        let a = args(&w);
        assert!(!a.iter().any(|a| a.contains("chunk") || a.contains("memory-limit")), "{kind}: defaults assumed");
    }
}
