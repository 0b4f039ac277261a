//! The manifests in contrib/kubernetes, read as JSON (PyYAML, which
//! kubernetes-validate brings, parses them: no YAML parser in the crate).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/kubernetes")
}

/// Every document of `file` (in contrib/kubernetes).
pub fn docs(file: &str) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(dir().join(file))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "cannot read {file} (python3 -m pip install kubernetes-validate brings PyYAML; scripts/test does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one document of `kind` in `file`.
pub fn doc(file: &str, kind: &str) -> Value {
    let mut found: Vec<Value> = docs(file).into_iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected in {file}");
    found.remove(0)
}

/// The pod spec of a Deployment, Job or CronJob.
pub fn pod_spec(workload: &Value) -> &Value {
    match workload["kind"].as_str().unwrap() {
        "CronJob" => &workload["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &workload["spec"]["template"]["spec"],
    }
}

/// A pod spec's only container.
pub fn container(workload: &Value) -> &Value {
    let containers = pod_spec(workload)["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    &containers[0]
}

pub fn args(workload: &Value) -> Vec<String> {
    container(workload)["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
}

/// The container's environment as name/value pairs.
pub fn env(workload: &Value) -> Vec<(String, String)> {
    container(workload)["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap().to_string()))
        .collect()
}
