//! A small credentials service for the credential-chain tests, on
//! 127.0.0.1: STS (AssumeRoleWithWebIdentity, AssumeRole: form POSTs, XML
//! answers), the container credentials endpoint (`GET /creds`, checks the
//! Authorization header) and IMDSv2 (`PUT /latest/api/token`, then the
//! role and its credentials). Every answer hands out the same keys (the
//! ones the S3 server accepts) with a fresh session token and a short
//! lifetime; every request is recorded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// A form field of the body, decoded.
    pub fn form(&self, name: &str) -> Option<String> {
        self.body.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| decode(v))
        })
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub struct CredServer {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl CredServer {
    /// Serve `(access key, secret)` valid for `lifetime`; the container
    /// endpoint wants `Authorization: <container_token>`.
    pub fn start(keys: (String, String), lifetime: Duration, container_token: &str) -> CredServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let (recorded, token) = (requests.clone(), container_token.to_string());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let Some(req) = read_request(&mut stream) else { continue };
                let n = {
                    let mut r = recorded.lock().unwrap();
                    r.push(req.clone());
                    r.len()
                };
                let (status, body) = answer(&req, &keys, lifetime, &token, n);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        CredServer { url, requests }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request { method, path, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

fn rfc3339(t: SystemTime) -> String {
    etcd_backup_restore::time::utc_rfc3339(t)
}

fn answer(req: &Request, keys: &(String, String), lifetime: Duration, token: &str, n: usize) -> (&'static str, String) {
    let expires = rfc3339(SystemTime::now() + lifetime);
    let json = format!(
        r#"{{"Code":"Success","AccessKeyId":"{}","SecretAccessKey":"{}","Token":"session-{n}","Expiration":"{expires}"}}"#,
        keys.0, keys.1
    );
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/") => {
            let action = req.form("Action").unwrap_or_default();
            if action == "AssumeRole"
                && !req.header("authorization").is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 "))
            {
                return (
                    "403 Forbidden",
                    "<ErrorResponse><Error><Code>MissingAuthenticationToken</Code></Error></ErrorResponse>".into(),
                );
            }
            (
                "200 OK",
                format!(
                    "<{action}Response><{action}Result><Credentials><AccessKeyId>{}</AccessKeyId>\
                     <SecretAccessKey>{}</SecretAccessKey><SessionToken>session-{n}</SessionToken>\
                     <Expiration>{expires}</Expiration></Credentials></{action}Result></{action}Response>",
                    keys.0, keys.1
                ),
            )
        }
        ("GET", "/creds") if req.header("authorization") == Some(token) => ("200 OK", json),
        ("GET", "/creds") => ("403 Forbidden", r#"{"message":"bad token"}"#.into()),
        ("PUT", "/latest/api/token") => ("200 OK", "imds-session".into()),
        ("GET", p) if p.starts_with("/latest/meta-data/iam/security-credentials/") => {
            if req.header("x-aws-ec2-metadata-token") != Some("imds-session") {
                return ("401 Unauthorized", String::new());
            }
            match p.trim_start_matches("/latest/meta-data/iam/security-credentials/") {
                "" => ("200 OK", "etcd-role\n".into()),
                "etcd-role" => ("200 OK", json),
                _ => ("404 Not Found", String::new()),
            }
        }
        _ => ("404 Not Found", String::new()),
    }
}
