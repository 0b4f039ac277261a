//! Fault injection for the tests, on loopback, with threads.
//!
//! `S3Faults` is an HTTP-aware proxy in front of one S3 server. Every
//! forwarded request gets `Connection: close`, so each client connection
//! carries exactly one request and responses can be piped back unparsed.
//! Rules match a kind of S3 request and its count (the 3rd UploadPart, or
//! every one) and answer with a status (500/503 SlowDown) or an error of
//! the test's choosing, reset the connection mid-body, stall forever, drip
//! the response body, answer listings with endless continuation tokens,
//! rewrite a listing's sizes, or cut a response body short. The rules can be switched off
//! (everything forwarded) and on again while the proxy runs: an endpoint
//! that is down for a while, then back.
//! (`CutProxy` in the parent module works on plain TCP streams.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    CreateUpload,
    UploadPart,
    CompleteUpload,
    AbortUpload,
    Get,
    List,
    Other,
}

#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Answer with this status and an S3 error body (`SlowDown` for 503).
    Status(u16),
    /// Read this many bytes of the body, then reset the connection.
    ResetAfter(usize),
    /// Read the request, then never answer.
    Stall,
    /// Forward, taking the request body at most this many bytes a second
    /// (per connection): a slow link.
    Throttle(usize),
    /// Forward, then replace every `<Size>` in the response with this
    /// number: a listing no real server would send.
    ListedSize(u64),
    /// Forward, passing the response back at this many bytes a second (per
    /// connection): a server that drips its answer.
    Drip(usize),
    /// Answer a listing with an empty page that is truncated: the same
    /// continuation token every time (`false`) or a new one each time.
    EndlessList { fresh_tokens: bool },
    /// Answer with this status and an S3 error whose `<Message>` is this
    /// text, as is (a server forging log lines).
    Error(u16, &'static str),
    /// Forward, but answer with at most this many bytes of the response
    /// body, its Content-Length cut to match: an object shorter than listed.
    Truncate(u64),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub kind: Request,
    /// 1-based counts of that kind to hit; empty means every one.
    pub nth: Vec<usize>,
    pub action: Action,
}

pub struct S3Faults {
    pub url: String,
    /// Requests seen, by kind, and whether a rule hit them.
    pub log: Arc<Mutex<Vec<(Request, bool)>>>,
    /// Whether the rules apply; off, every request is forwarded.
    active: Arc<AtomicBool>,
}

/// Every kind of request, for rules that hit them all.
pub const ALL_REQUESTS: [Request; 7] = [
    Request::CreateUpload,
    Request::UploadPart,
    Request::CompleteUpload,
    Request::AbortUpload,
    Request::Get,
    Request::List,
    Request::Other,
];

impl S3Faults {
    pub fn start(target: &str, rules: Vec<Rule>) -> S3Faults {
        let target = target.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log: Arc<Mutex<Vec<(Request, bool)>>> = Arc::default();
        let seen = log.clone();
        let active = Arc::new(AtomicBool::new(true));
        let on = active.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let rules = if on.load(Ordering::SeqCst) { rules.clone() } else { Vec::new() };
                let (target, seen) = (target.clone(), seen.clone());
                std::thread::spawn(move || serve(client, &target, &rules, &seen));
            }
        });
        S3Faults { url, log, active }
    }

    /// A server that answers every request with 503 SlowDown until
    /// [`S3Faults::set_active`] switches it back to forwarding.
    pub fn down(target: &str) -> S3Faults {
        let rules = ALL_REQUESTS.map(|kind| Rule { kind, nth: Vec::new(), action: Action::Status(503) });
        S3Faults::start(target, rules.to_vec())
    }

    /// Apply the rules to the connections from now on (`true`, as started),
    /// or forward every request (`false`).
    pub fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::SeqCst);
    }

    pub fn hits(&self, kind: Request) -> usize {
        self.log.lock().unwrap().iter().filter(|(k, hit)| *k == kind && *hit).count()
    }
}

fn classify(method: &str, target: &str) -> Request {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let has = |p: &str| query.split('&').any(|kv| kv == p || kv.starts_with(&format!("{p}=")));
    match method {
        "PUT" if has("partNumber") => Request::UploadPart,
        "POST" if has("uploads") => Request::CreateUpload,
        "POST" if has("uploadId") => Request::CompleteUpload,
        "DELETE" if has("uploadId") => Request::AbortUpload,
        "GET" if has("list-type") || has("uploads") => Request::List,
        "GET" => Request::Get,
        _ => Request::Other,
    }
}

fn serve(client: TcpStream, target: &str, rules: &[Rule], seen: &Mutex<Vec<(Request, bool)>>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = Vec::new();
    let (mut method, mut path, mut length, mut chunked) = (String::new(), String::new(), 0usize, false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if method.is_empty() {
            let mut parts = line.split_whitespace();
            method = parts.next().unwrap_or_default().to_string();
            path = parts.next().unwrap_or_default().to_string();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let kind = classify(&method, &path);
    let action = {
        let mut seen = seen.lock().unwrap();
        let n = seen.iter().filter(|(k, _)| *k == kind).count() + 1;
        let action =
            rules.iter().find(|r| r.kind == kind && (r.nth.is_empty() || r.nth.contains(&n))).map(|r| r.action);
        seen.push((kind, action.is_some()));
        action
    };
    let mut client = client;
    match action {
        Some(Action::ResetAfter(bytes)) => {
            let mut buf = vec![0u8; bytes];
            let _ = reader.read_exact(&mut buf);
            reset(&client);
        }
        Some(Action::Stall) => {
            let _ = read_body(&mut reader, length, chunked);
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        Some(Action::Status(code)) => {
            let _ = read_body(&mut reader, length, chunked);
            let (reason, s3) =
                if code == 503 { ("Slow Down", "SlowDown") } else { ("Internal Server Error", "InternalError") };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{s3}</Code><Message>injected</Message></Error>"
            );
            respond(&mut client, code, reason, &body);
        }
        Some(Action::ListedSize(size)) => {
            let Ok(mut server) = TcpStream::connect(target) else { return reset(&client) };
            if server.write_all(&head).is_err() || read_body(&mut reader, length, chunked).is_err() {
                return;
            }
            // `Connection: close`: the whole response is what arrives before EOF.
            let mut response = Vec::new();
            let _ = server.read_to_end(&mut response);
            let _ = client.write_all(&with_listed_size(&response, size));
        }
        Some(Action::EndlessList { fresh_tokens }) => {
            let token = if fresh_tokens { format!("token-{}", seen.lock().unwrap().len()) } else { "again".into() };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><IsTruncated>true</IsTruncated>\
                 <KeyCount>0</KeyCount><NextContinuationToken>{token}</NextContinuationToken></ListBucketResult>"
            );
            respond(&mut client, 200, "OK", &body);
        }
        Some(Action::Error(code, message)) => {
            let _ = read_body(&mut reader, length, chunked);
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>{message}</Message></Error>"
            );
            respond(&mut client, code, "Forbidden", &body);
        }
        Some(Action::Truncate(limit)) => {
            let Ok(server) = TcpStream::connect(target) else { return reset(&client) };
            // A GET has no body: the head is the whole request.
            let _ = (&server).write_all(&head);
            let mut answer = BufReader::new(server);
            let mut out = Vec::new();
            loop {
                let mut line = String::new();
                if answer.read_line(&mut line).unwrap_or(0) == 0 {
                    return reset(&client);
                }
                match line.to_ascii_lowercase().strip_prefix("content-length:") {
                    Some(v) => {
                        let cut = v.trim().parse::<u64>().unwrap_or(0).min(limit);
                        out.extend_from_slice(format!("Content-Length: {cut}\r\n").as_bytes());
                    }
                    None => out.extend_from_slice(line.as_bytes()),
                }
                if line == "\r\n" {
                    break;
                }
            }
            let _ = client.write_all(&out);
            let _ = std::io::copy(&mut answer.take(limit), &mut client);
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        None | Some(Action::Throttle(_) | Action::Drip(_)) => {
            let Ok(mut server) = TcpStream::connect(target) else { return reset(&client) };
            if server.write_all(&head).is_err() {
                return;
            }
            let mut upstream = server.try_clone().unwrap();
            // Whatever the client still sends (the body) goes up as it comes.
            let rate = match action {
                Some(Action::Throttle(rate)) => Some(rate),
                _ => None,
            };
            std::thread::spawn(move || match rate {
                None => {
                    let _ = std::io::copy(&mut reader, &mut upstream);
                }
                Some(rate) => {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n @ 1..) = reader.read(&mut buf) {
                        std::thread::sleep(std::time::Duration::from_secs_f64(n as f64 / rate as f64));
                        if upstream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            });
            match action {
                Some(Action::Drip(rate)) => {
                    // Small steps, so a slow rate still means a steady trickle.
                    let mut buf = vec![0u8; rate.clamp(1, 16 << 10).div_ceil(10)];
                    while let Ok(n @ 1..) = server.read(&mut buf) {
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_secs_f64(n as f64 / rate as f64));
                    }
                }
                _ => {
                    let _ = std::io::copy(&mut server, &mut client);
                }
            }
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = server.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// `response` with every `<Size>` replaced and a matching Content-Length
/// (a chunked body is sent as a plain one).
fn with_listed_size(response: &[u8], size: u64) -> Vec<u8> {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return response.to_vec() };
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let mut body = body.to_string();
    if chunked {
        let (mut plain, mut rest) = (String::new(), body.as_str());
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            plain.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        body = plain;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    while let Some(at) = rest.find("<Size>") {
        out.push_str(&rest[..at]);
        out.push_str(&format!("<Size>{size}</Size>"));
        rest = rest[at..].split_once("</Size>").map_or("", |(_, r)| r);
    }
    out.push_str(rest);
    let head: Vec<&str> = head
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("content-length:") && !l.starts_with("transfer-encoding:")
        })
        .collect();
    format!("{}\r\nContent-Length: {}\r\n\r\n{out}", head.join("\r\n"), out.len()).into_bytes()
}

fn respond(client: &mut TcpStream, code: u16, reason: &str, body: &str) {
    let _ = write!(
        client,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn read_body(reader: &mut BufReader<TcpStream>, length: usize, chunked: bool) -> std::io::Result<()> {
    if !chunked {
        return std::io::copy(&mut reader.take(length as u64), &mut std::io::sink()).map(|_| ());
    }
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        std::io::copy(&mut reader.take(n as u64 + 2), &mut std::io::sink())?;
        if n == 0 {
            return Ok(());
        }
    }
}

/// Close with SO_LINGER 0: the peer sees a reset, not an orderly end.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
