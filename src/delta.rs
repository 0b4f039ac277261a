//! Delta ("incremental") snapshots, byte-compatible with gardener/etcd-backup-restore.
//!
//! A delta is the JSON array upstream's snapshotter builds from watch events,
//! `[{"etcdEvent":<clientv3.Event>,"time":<RFC3339Nano>},...]`, followed by the
//! raw SHA-256 of those JSON bytes. Compression happens outside this module;
//! `datadir::mvcc` turns the events into the rows a restore writes.

use std::fmt::{self, Write as _};

use base64::Engine as _;
use base64::engine::GeneralPurpose;
use base64::engine::general_purpose::{PAD, STANDARD};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use sha2::{Digest, Sha256};

const SHA_LEN: usize = 32;

/// Go's `base64.StdEncoding` (what encoding/json uses for `[]byte`) ignores
/// non-zero trailing bits, so decoding must too.
const GO_STD: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::STANDARD, PAD.with_decode_allow_trailing_bits(true));

/// mvccpb.Event_EventType.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventKind {
    #[default]
    Put,
    Delete,
}

/// One watch event: its type and its `kv` (a DELETE carries only key and mod_revision).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub kind: EventKind,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Event {
    /// Whether etcd could have produced this event in a delta named for
    /// revisions `first..=last`; `Err` says why not, to follow "its event N
    /// (key K)". The rules, from etcd's mvcc (`storeTxnWrite.put`/`delete`,
    /// `kvsToEvents`) and its request checks:
    /// - the key is never empty (etcd refuses one: "key is not provided");
    /// - mod_revision is a real revision (etcd's start at 1) within the
    ///   range the name says;
    /// - a PUT has version >= 1, 1 <= create_revision <= mod_revision, and
    ///   version 1 exactly when the key was created by this very put
    ///   (create_revision == mod_revision); its lease is 0 (none) or a
    ///   positive ID, as etcd generates them;
    /// - a DELETE carries the key and mod_revision only (etcd's tombstone
    ///   is `KeyValue{Key}` plus the revision).
    ///
    /// The value is not judged: etcd stores any bytes.
    pub fn check(&self, first: u64, last: u64) -> Result<(), String> {
        let rev = self.mod_revision;
        if self.key.is_empty() {
            return Err("has an empty key".into());
        }
        if rev < 1 {
            return Err(format!("has revision {rev}; etcd's revisions start at 1"));
        }
        if (rev as u64) < first {
            return Err(format!("is at revision {rev}, before the {first} its name starts at"));
        }
        if rev as u64 > last {
            return Err(format!("is at revision {rev}, past the {last} its name says"));
        }
        let (create, version, lease) = (self.create_revision, self.version, self.lease);
        match self.kind {
            EventKind::Put if version < 1 => Err(format!("is a PUT with version {version}; etcd's start at 1")),
            EventKind::Put if create < 1 || create > rev => {
                Err(format!("is a PUT at revision {rev} with create_revision {create}, not in 1..={rev}"))
            }
            EventKind::Put if (version == 1) != (create == rev) => Err(format!(
                "is a PUT with version {version} and create_revision {create} at revision {rev}; etcd gives \
                 version 1 exactly to the put that creates the key"
            )),
            EventKind::Put if lease < 0 => Err(format!("has lease {lease}; etcd's lease IDs are positive")),
            EventKind::Put => Ok(()),
            EventKind::Delete if !self.value.is_empty() || create != 0 || version != 0 || lease != 0 => {
                Err("is a DELETE with a value, create_revision, version or lease; etcd's carry the key and \
                     mod_revision only"
                    .into())
            }
            EventKind::Delete => Ok(()),
        }
    }
}

/// Accumulates events into upstream's JSON incrementally, as `handleDeltaWatchEvents` does.
#[derive(Debug, Clone, Default)]
pub struct Writer {
    // Everything written is ASCII (base64, numbers, fixed names), so a String is exact.
    buf: String,
    events: usize,
    first: Option<i64>,
    last: Option<i64>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Appends `e` observed at `unix_secs` + `nanos` (UTC), the way Go's
    /// `json.Marshal(event{EtcdEvent, Time})` renders it.
    pub fn push(&mut self, e: &Event, unix_secs: i64, nanos: u32) {
        let b = &mut self.buf;
        b.push(if self.events == 0 { '[' } else { ',' });
        b.push_str(r#"{"etcdEvent":{"#);
        // `type` is omitempty: PUT (0) is left out.
        if e.kind == EventKind::Delete {
            b.push_str(r#""type":1,"#);
        }
        b.push_str(r#""kv":{"#);
        let mut kv = JsonFields { buf: b, any: false };
        kv.bytes("key", &e.key);
        kv.int("create_revision", e.create_revision);
        kv.int("mod_revision", e.mod_revision);
        kv.int("version", e.version);
        kv.bytes("value", &e.value);
        kv.int("lease", e.lease);
        b.push_str(r#"}},"time":""#);
        // Go's MarshalJSON refuses years outside [0,9999]; callers pass clock times.
        debug_assert!((-62_167_219_200..=253_402_300_799).contains(&unix_secs), "{unix_secs} out of RFC 3339 range");
        crate::time::push_rfc3339_nano(b, unix_secs, nanos);
        b.push_str("\"}");

        self.events += 1;
        self.first.get_or_insert(e.mod_revision);
        self.last = Some(e.mod_revision);
    }

    /// Bytes so far: `[` and the comma-separated events, without the closing `]`,
    /// i.e. what upstream compares with its delta memory limit.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// No events pushed.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    pub fn events(&self) -> usize {
        self.events
    }

    /// mod_revision of the first event.
    pub fn first_revision(&self) -> Option<i64> {
        self.first
    }

    /// mod_revision of the last event (upstream's `lastEventRevision`).
    pub fn last_revision(&self) -> Option<i64> {
        self.last
    }

    /// Closes the array and appends the SHA-256 trailer. Zero events give `[]`
    /// (upstream never saves an empty delta).
    pub fn finish(mut self) -> Vec<u8> {
        if self.events == 0 {
            self.buf.push('[');
        }
        self.buf.push(']');
        let mut out = self.buf.into_bytes();
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }
}

/// Writes `"name":value` members of a Go struct with `omitempty` fields.
struct JsonFields<'a> {
    buf: &'a mut String,
    any: bool,
}

impl JsonFields<'_> {
    fn name(&mut self, name: &str) {
        if self.any {
            self.buf.push(',');
        }
        self.any = true;
        self.buf.push('"');
        self.buf.push_str(name);
        self.buf.push_str("\":");
    }

    fn int(&mut self, name: &str, v: i64) {
        if v != 0 {
            self.name(name);
            let _ = write!(self.buf, "{v}");
        }
    }

    fn bytes(&mut self, name: &str, v: &[u8]) {
        if !v.is_empty() {
            self.name(name);
            self.buf.push('"');
            STANDARD.encode_string(v, self.buf);
            self.buf.push('"');
        }
    }
}

// Parsing: small structs only; `time` and `prev_kv` are skipped without being built.

#[derive(Deserialize)]
struct RawEntry {
    #[serde(rename = "etcdEvent")]
    etcd_event: Option<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    // Go's json leaves zero for null as well as for a missing member.
    #[serde(rename = "type", default)]
    kind: Option<i32>,
    kv: Option<RawKv>,
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default, deserialize_with = "b64_key")]
    key: Vec<u8>,
    #[serde(default)]
    create_revision: Option<i64>,
    #[serde(default)]
    mod_revision: Option<i64>,
    #[serde(default)]
    version: Option<i64>,
    #[serde(default, deserialize_with = "b64_value")]
    value: Vec<u8>,
    #[serde(default)]
    lease: Option<i64>,
}

fn b64_key<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_option(Base64(" key"))
}

fn b64_value<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_option(Base64(" value"))
}

/// Decodes a base64 JSON string (or null) straight into bytes, borrowed or not;
/// the field name goes into the error.
struct Base64(&'static str);

impl<'de> Visitor<'de> for Base64 {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a base64 string for{}", self.0)
    }

    fn visit_none<E>(self) -> Result<Vec<u8>, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E>(self) -> Result<Vec<u8>, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_str(self)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<u8>, E> {
        GO_STD.decode(s).map_err(|e| E::custom(format_args!("invalid base64 in{}: {e}", self.0)))
    }
}

/// Verifies the SHA-256 trailer and decodes the events, as upstream's
/// `getEventsDataFromDeltaSnapshot` + `json.Unmarshal` do. Unknown members are ignored.
pub fn parse(data: &[u8]) -> Result<Vec<Event>, String> {
    let (json, sha) = split_trailer(data)?;
    if Sha256::digest(json).as_slice() != sha {
        return Err("delta snapshot SHA-256 mismatch".into());
    }
    decode(json)
}

/// As [`parse`], for a delta whose trailer was checked as it was fetched
/// (a restore hashes each delta once, not once more per pass).
pub fn parse_checked(data: &[u8]) -> Result<Vec<Event>, String> {
    decode(split_trailer(data)?.0)
}

/// The JSON and the SHA-256 trailer after it.
fn split_trailer(data: &[u8]) -> Result<(&[u8], &[u8]), String> {
    // Upstream also rejects exactly 32 bytes (`bufSize <= sha256.Size`).
    if data.len() <= SHA_LEN {
        return Err(format!("delta snapshot is missing hash: {} bytes, need more than {SHA_LEN}", data.len()));
    }
    Ok(data.split_at(data.len() - SHA_LEN))
}

fn decode(json: &[u8]) -> Result<Vec<Event>, String> {
    let raw: Vec<RawEntry> = serde_json::from_slice(json).map_err(|e| json_error(json, &e))?;
    raw.into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let ev = entry.etcd_event.ok_or_else(|| format!("delta event {i} has no etcdEvent"))?;
            let kind = match ev.kind.unwrap_or(0) {
                0 => EventKind::Put,
                1 => EventKind::Delete,
                t => return Err(format!("delta event {i} has unknown event type {t}")),
            };
            let kv = ev.kv.ok_or_else(|| format!("delta event {i} has no kv"))?;
            Ok(Event {
                kind,
                key: kv.key,
                value: kv.value,
                create_revision: kv.create_revision.unwrap_or(0),
                mod_revision: kv.mod_revision.unwrap_or(0),
                version: kv.version.unwrap_or(0),
                lease: kv.lease.unwrap_or(0),
            })
        })
        .collect()
}

/// One line naming the 0-based offset of the byte where serde_json stopped (it reports line/column).
fn json_error(json: &[u8], e: &serde_json::Error) -> String {
    let line_start: usize = json.split(|&b| b == b'\n').take(e.line().saturating_sub(1)).map(|l| l.len() + 1).sum();
    let offset = line_start + e.column().saturating_sub(1);
    let msg = e.to_string();
    let msg = msg.rfind(" at line ").map_or(msg.as_str(), |i| &msg[..i]);
    format!("delta snapshot JSON invalid at byte {offset}: {msg}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const GOLDEN: &[u8] = include_bytes!("../tests/golden/delta/upstream.delta");

    pub(crate) fn put(key: &[u8], value: &[u8], create: i64, rev: i64, version: i64, lease: i64) -> Event {
        Event {
            kind: EventKind::Put,
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: rev,
            version,
            lease,
        }
    }

    pub(crate) fn del(key: &[u8], rev: i64) -> Event {
        Event { kind: EventKind::Delete, key: key.to_vec(), mod_revision: rev, ..Event::default() }
    }

    /// The events and times of tests/golden/delta/gen.go.txt.
    fn golden_events() -> Vec<(Event, i64, u32)> {
        vec![
            (put(b"foo", b"bar", 5, 5, 1, 0), 1_704_164_645, 123_456_789),
            (put(b"lease-key", b"v", 6, 6, 1, 7_587_869_327_452_520_000), 1_709_251_199, 0),
            (del(b"foo", 7), 1_709_251_199, 120_000_000),
            (put(&[0xfb, 0xff, 0x00, 0x80, b'/'], b"", 8, 8, 1, 0), 0, 1000),
            (put(b"a", &[0xc3, 0x28, b'"', b'\\', b'<'], 9, 9, 1, 0), 951_782_400, 999_999_999),
            (del(b"lease-key", 9), 951_782_400, 999_999_999),
            (put(b"a", b"2", 9, 300, 2, 0), 4_102_444_799, 500),
        ]
    }

    /// A delta whose JSON is `json`, with a correct trailer.
    fn with_sha(json: &str) -> Vec<u8> {
        let mut v = json.as_bytes().to_vec();
        v.extend_from_slice(&Sha256::digest(json.as_bytes()));
        v
    }

    #[test]
    fn writer_matches_go_golden() {
        let mut w = Writer::new();
        assert!(w.is_empty());
        for (e, secs, nanos) in golden_events() {
            w.push(&e, secs, nanos);
        }
        assert_eq!(w.events(), 7);
        assert_eq!(w.first_revision(), Some(5));
        assert_eq!(w.last_revision(), Some(300));
        // len() is upstream's len(ssr.events): everything but "]" and the trailer.
        assert_eq!(w.len(), GOLDEN.len() - SHA_LEN - 1);
        let out = w.finish();
        assert_eq!(
            String::from_utf8_lossy(&out[..out.len() - 32]),
            String::from_utf8_lossy(&GOLDEN[..GOLDEN.len() - 32])
        );
        assert_eq!(out, GOLDEN);
    }

    #[test]
    fn parse_go_golden() {
        let want: Vec<Event> = golden_events().into_iter().map(|(e, ..)| e).collect();
        assert_eq!(parse(GOLDEN).unwrap(), want);
    }

    #[test]
    fn single_event_matches_documented_example() {
        let mut w = Writer::new();
        w.push(&put(b"foo", b"bar", 5, 5, 1, 0), 1_704_164_645, 123_456_789);
        let out = w.finish();
        let json = r#"[{"etcdEvent":{"kv":{"key":"Zm9v","create_revision":5,"mod_revision":5,"version":1,"value":"YmFy"}},"time":"2024-01-02T03:04:05.123456789Z"}]"#;
        assert_eq!(out, with_sha(json));
    }

    #[test]
    fn empty_writer_is_total() {
        let w = Writer::new();
        assert_eq!((w.len(), w.first_revision(), w.last_revision()), (0, None, None));
        let out = w.finish();
        assert_eq!(out, with_sha("[]"));
        assert_eq!(parse(&out).unwrap(), vec![]);
    }

    #[test]
    fn parse_rejects_tampered_byte() {
        let mut data = GOLDEN.to_vec();
        data[20] ^= 1;
        assert_eq!(parse(&data).unwrap_err(), "delta snapshot SHA-256 mismatch");
        let mut data = GOLDEN.to_vec();
        *data.last_mut().unwrap() ^= 0x80;
        assert_eq!(parse(&data).unwrap_err(), "delta snapshot SHA-256 mismatch");
    }

    #[test]
    fn parse_rejects_truncated() {
        for n in [0, 1, 31, 32] {
            let err = parse(&GOLDEN[..n]).unwrap_err();
            assert!(err.contains("missing hash"), "{n}: {err}");
        }
        let err = parse(&GOLDEN[..GOLDEN.len() - 1]).unwrap_err();
        assert_eq!(err, "delta snapshot SHA-256 mismatch");
        // Truncated JSON that still carries a valid trailer.
        let json = std::str::from_utf8(&GOLDEN[..100]).unwrap();
        let err = parse(&with_sha(json)).unwrap_err();
        assert!(err.starts_with("delta snapshot JSON invalid at byte 99: EOF"), "{err}");
    }

    #[test]
    fn parse_rejects_garbage() {
        let err = parse(&[0x42; 100]).unwrap_err();
        assert_eq!(err, "delta snapshot SHA-256 mismatch");
        let err = parse(&with_sha(r#"[{"etcdEvent":{"kv":{"key":"Zm9v"}}} x]"#)).unwrap_err();
        assert!(err.starts_with("delta snapshot JSON invalid at byte 37: "), "{err}");
        let err = parse(&with_sha("[] trailing")).unwrap_err();
        assert!(err.starts_with("delta snapshot JSON invalid at byte 3: trailing characters"), "{err}");
        let err = parse(&with_sha("{}")).unwrap_err();
        assert!(err.starts_with("delta snapshot JSON invalid at byte "), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn parse_ignores_prev_kv_and_unknown_members() {
        let json = r#"[{"etcdEvent":{"type":1,"kv":{"key":"Zm9v","mod_revision":7},"prev_kv":{"key":"Zm9v","create_revision":5,"mod_revision":5,"version":1,"value":"YmFy"},"extra":[1,{"a":null}]},"time":"2024-01-02T05:04:05.5+02:00","other":true}]"#;
        assert_eq!(parse(&with_sha(json)).unwrap(), vec![del(b"foo", 7)]);
    }

    #[test]
    fn parse_event_types() {
        let json = r#"[{"etcdEvent":{"type":0,"kv":{"key":"YQ==","mod_revision":2,"value":null,"lease":null}}},{"etcdEvent":{"type":1,"kv":{"key":"YQ==","mod_revision":3}}},{"etcdEvent":{"type":null,"kv":{}}}]"#;
        let got = parse(&with_sha(json)).unwrap();
        assert_eq!(got, vec![put(b"a", b"", 0, 2, 0, 0), del(b"a", 3), Event::default()]);

        let json = r#"[{"etcdEvent":{"kv":{"key":"YQ=="}}},{"etcdEvent":{"type":2,"kv":{"key":"YQ=="}}}]"#;
        assert_eq!(parse(&with_sha(json)).unwrap_err(), "delta event 1 has unknown event type 2");
    }

    #[test]
    fn parse_rejects_event_without_kv() {
        let json = r#"[{"etcdEvent":{"type":1},"time":"2024-01-02T03:04:05Z"}]"#;
        assert_eq!(parse(&with_sha(json)).unwrap_err(), "delta event 0 has no kv");
        let json = r#"[{"etcdEvent":{"kv":null}}]"#;
        assert_eq!(parse(&with_sha(json)).unwrap_err(), "delta event 0 has no kv");
        let json = r#"[{"time":"2024-01-02T03:04:05Z"}]"#;
        assert_eq!(parse(&with_sha(json)).unwrap_err(), "delta event 0 has no etcdEvent");
    }

    #[test]
    fn parse_rejects_invalid_base64() {
        let json = r#"[{"etcdEvent":{"kv":{"key":"Zm9v!"}}}]"#;
        let err = parse(&with_sha(json)).unwrap_err();
        assert!(err.starts_with("delta snapshot JSON invalid at byte 33: invalid base64 in key: "), "{err}");
        let json = r#"[{"etcdEvent":{"kv":{"key":"Zm9v","value":"YmF"}}}]"#;
        let err = parse(&with_sha(json)).unwrap_err();
        assert!(err.contains("invalid base64 in value"), "{err}");
        let json = r#"[{"etcdEvent":{"kv":{"key":5}}}]"#;
        let err = parse(&with_sha(json)).unwrap_err();
        assert!(err.contains("expected a base64 string for key"), "{err}");
    }

    #[test]
    fn parse_is_lenient_like_go() {
        // JSON escapes inside the string, and non-zero trailing bits ("YR==" is "a" to Go).
        let json = r#"[{"etcdEvent":{"kv":{"key":"Zm9\u0076","value":"YR=="}}}]"#;
        let got = parse(&with_sha(json)).unwrap();
        assert_eq!((got[0].key.as_slice(), got[0].value.as_slice()), (&b"foo"[..], &b"a"[..]));
    }

    #[test]
    fn events_etcd_can_produce_pass() {
        for (e, ..) in golden_events() {
            let rev = e.mod_revision as u64;
            assert_eq!(e.check(rev, rev), Ok(()), "{e:?}");
        }
        assert_eq!(put(b"k", b"", 3, 9, 4, 0).check(1, 9), Ok(()));
        assert_eq!(del(b"k", 9).check(9, 12), Ok(()));
    }

    #[test]
    fn events_etcd_cannot_produce_are_refused() {
        let cases = [
            (put(b"", b"v", 5, 5, 1, 0), "has an empty key"),
            (del(b"", 5), "has an empty key"),
            (put(b"k", b"v", 5, 0, 1, 0), "has revision 0; etcd's revisions start at 1"),
            (del(b"k", -4), "has revision -4"),
            (put(b"k", b"v", 4, 4, 1, 0), "is at revision 4, before the 5 its name starts at"),
            (put(b"k", b"v", 11, 11, 1, 0), "is at revision 11, past the 10 its name says"),
            (put(b"k", b"v", 5, 5, 0, 0), "is a PUT with version 0"),
            (put(b"k", b"v", 5, 5, -1, 0), "is a PUT with version -1"),
            (put(b"k", b"v", 0, 5, 2, 0), "create_revision 0, not in 1..=5"),
            (put(b"k", b"v", -1, 5, 2, 0), "create_revision -1"),
            (put(b"k", b"v", 6, 5, 2, 0), "create_revision 6, not in 1..=5"),
            (put(b"k", b"v", 3, 5, 1, 0), "version 1 exactly to the put that creates the key"),
            (put(b"k", b"v", 5, 5, 2, 0), "version 1 exactly to the put that creates the key"),
            (put(b"k", b"v", 5, 5, 1, -1), "has lease -1; etcd's lease IDs are positive"),
            (Event { value: b"x".to_vec(), ..del(b"k", 5) }, "is a DELETE with a value"),
            (Event { create_revision: 2, ..del(b"k", 5) }, "is a DELETE with"),
            (Event { version: 1, ..del(b"k", 5) }, "is a DELETE with"),
            (Event { lease: 7, ..del(b"k", 5) }, "is a DELETE with"),
        ];
        for (e, want) in cases {
            let got = e.check(5, 10).unwrap_err();
            assert!(got.contains(want), "{e:?}: {got}");
        }
    }

    #[test]
    fn large_delta_round_trip() {
        let value = vec![0xa5u8; 1024];
        let mut w = Writer::new();
        let mut want = Vec::new();
        let mut rev = 1;
        while w.len() < 10 << 20 {
            let e = put(format!("/registry/pods/ns/pod-{rev}").as_bytes(), &value, rev, rev, 1, 0);
            w.push(&e, 1_700_000_000 + rev, (rev as u32) * 7);
            want.push(e);
            rev += 1;
        }
        let data = w.finish();
        assert!(data.len() > 10 << 20);
        assert_eq!(parse(&data).unwrap(), want);
    }
}
