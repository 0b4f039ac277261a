//! moto_server (`pip install 'moto[server]'`): an in-memory S3 with object
//! lock, versioning, SSE-KMS and storage classes, and STS. It accepts any
//! signature, so the tests create buckets with plain requests.

use super::free_port;
use super::restore::scratch;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// moto_server on a free port of 127.0.0.1, its log in a file; stopped by
/// PID on drop.
pub struct Moto {
    child: std::process::Child,
    pub url: String,
    pub log: std::path::PathBuf,
    agent: ureq::Agent,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let log = scratch("moto").join("log");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("moto_server (pip install 'moto[server]')");
        let url = format!("http://127.0.0.1:{port}");
        let end = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "moto_server did not start within 30s");
            std::thread::sleep(Duration::from_millis(100));
        }
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Moto { child, url, log, agent }
    }

    /// Create `bucket`; with `object_lock`, with object lock enabled (which
    /// makes it versioned).
    pub fn create_bucket(&self, bucket: &str, object_lock: bool) {
        let mut req = self.agent.put(&format!("{}/{bucket}", self.url));
        if object_lock {
            req = req.header("x-amz-bucket-object-lock-enabled", "true");
        }
        let resp = req.send_empty().unwrap();
        assert!(resp.status().is_success(), "create bucket {bucket}: {}", resp.status());
    }

    pub fn enable_versioning(&self, bucket: &str) {
        let body = r#"<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></VersioningConfiguration>"#;
        let resp = self.agent.put(&format!("{}/{bucket}?versioning", self.url)).send(body).unwrap();
        assert!(resp.status().is_success(), "versioning on {bucket}: {}", resp.status());
    }

    /// HeadObject's headers, lower-case names.
    pub fn head(&self, bucket: &str, key: &str) -> Vec<(String, String)> {
        let resp = self.agent.head(&format!("{}/{bucket}/{key}", self.url)).call().unwrap();
        assert!(resp.status().is_success(), "HEAD {bucket}/{key}: {}", resp.status());
        resp.headers().iter().map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect()
    }

    /// DeleteObject without a version: a delete marker on a versioned bucket.
    pub fn delete(&self, bucket: &str, key: &str) {
        let resp = self.agent.delete(&format!("{}/{bucket}/{key}", self.url)).call().unwrap();
        assert!(resp.status().is_success(), "DELETE {bucket}/{key}: {}", resp.status());
    }
}
