//! etcd cluster membership at bootstrap: `--initial-cluster` parsing, member
//! and cluster IDs, and the member JSON etcd stores, all computed exactly as
//! etcd does (membership.NewMember, RaftCluster.genID, types.NewURLs).

use sha1::{Digest, Sha1};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    /// Normalised and sorted, as etcd keeps them.
    pub peer_urls: Vec<String>,
}

/// The most members a restore can write: the raft snapshot's v2 store keeps
/// one event per member in its history of 1000 events (`raft_snap`).
pub const MAX_MEMBERS: usize = 1000;

/// `name=url,name=url,...` (a name may repeat to give several URLs) into
/// members sorted by ID, as etcd's NewClusterFromURLsMap builds them.
pub fn parse_initial_cluster(initial_cluster: &str, token: &str) -> Result<Vec<Member>, String> {
    let mut named: Vec<(String, Vec<String>)> = Vec::new();
    for entry in initial_cluster.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, url)) = entry.split_once('=') else {
            return Err(format!("{entry:?} is not name=url"));
        };
        if name.is_empty() {
            return Err(format!("{entry:?} has an empty member name"));
        }
        let url = parse_url(url).map_err(|e| format!("member {name}: {e}"))?;
        match named.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url),
            None => named.push((name.to_string(), vec![url])),
        }
    }
    if named.is_empty() {
        return Err("no members given".into());
    }
    if named.len() > MAX_MEMBERS {
        return Err(format!("{} members given, at most {MAX_MEMBERS} are possible", named.len()));
    }
    // etcd's VerifyBootstrap: one peer URL cannot belong to two places.
    let mut all: Vec<&String> = named.iter().flat_map(|(_, urls)| urls).collect();
    all.sort();
    if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("peer URL {} is given more than once", w[0]));
    }
    let mut members = Vec::with_capacity(named.len());
    for (name, mut peer_urls) in named {
        peer_urls.sort();
        let id = member_id(&peer_urls, token);
        if id == 0 {
            return Err(format!("member {name}: its URLs and the token give member ID 0, which etcd cannot use"));
        }
        if let Some(other) = members.iter().find(|m: &&Member| m.id == id) {
            return Err(format!("members {} and {name} have the same peer URLs (member ID {id:x})", other.name));
        }
        members.push(Member { id, name, peer_urls });
    }
    members.sort_by_key(|m| m.id);
    Ok(members)
}

/// The member named `name`, whose peer URLs must be exactly
/// `advertise_peer_urls` (comma separated, any order): etcd's VerifyBootstrap.
pub fn local_member<'a>(members: &'a [Member], name: &str, advertise_peer_urls: &str) -> Result<&'a Member, String> {
    let Some(member) = members.iter().find(|m| m.name == name) else {
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        return Err(format!("--name {name} is not a member of --initial-cluster (members: {})", names.join(", ")));
    };
    let mut advertised = Vec::new();
    for url in advertise_peer_urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        advertised.push(parse_url(url).map_err(|e| format!("--initial-advertise-peer-urls: {e}"))?);
    }
    advertised.sort();
    if advertised != member.peer_urls {
        return Err(format!(
            "--initial-advertise-peer-urls {} does not match the URLs of {name} in --initial-cluster ({})",
            advertised.join(","),
            member.peer_urls.join(",")
        ));
    }
    Ok(member)
}

/// sha1(sorted peer URLs concatenated ‖ token), first 8 bytes big-endian.
/// At bootstrap etcd adds no timestamp.
pub fn member_id(sorted_peer_urls: &[String], token: &str) -> u64 {
    let mut h = Sha1::new();
    for u in sorted_peer_urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    first_u64(&h.finalize())
}

/// sha1 of the big-endian member IDs in ascending order, first 8 bytes.
pub fn cluster_id(members: &[Member]) -> u64 {
    let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 digests are 20 bytes"))
}

/// Go's `json.Marshal(membership.Member)` for a voting member without
/// client URLs: `{"id":N,"peerURLs":[...],"name":"..."}`.
pub fn member_json(m: &Member) -> String {
    let urls: Vec<String> = m.peer_urls.iter().map(|u| go_json_string(u)).collect();
    let mut s = format!("{{\"id\":{},\"peerURLs\":[{}]", m.id, urls.join(","));
    // `name` is omitempty in etcd's Attributes.
    if !m.name.is_empty() {
        s.push_str(&format!(",\"name\":{}", go_json_string(&m.name)));
    }
    s.push('}');
    s
}

/// A JSON string as Go's encoding/json writes it: HTML-safe (`<`, `>`, `&`
/// escaped) and U+2028/U+2029 escaped.
pub fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A peer URL as etcd's types.NewURLs accepts it: scheme http, https, unix
/// or unixs (lower-cased, as Go's url.Parse does), host:port and no path;
/// etcdctl 3.4 and etcdutl 3.5 require host:port for unix URLs too.
fn parse_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Err(format!("{raw:?} is not a URL (scheme://host:port)"));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https" | "unix" | "unixs") {
        return Err(format!("{raw:?}: the scheme must be http, https, unix or unixs"));
    }
    let (host, path) = rest.find(['/', '?', '#']).map_or((rest, ""), |i| rest.split_at(i));
    if !path.is_empty() {
        return Err(format!("{raw:?}: a peer URL must not contain a path"));
    }
    if host.contains('@') {
        return Err(format!("{raw:?}: a peer URL must not contain user information"));
    }
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        v6.split_once("]:").unwrap_or((v6, ""))
    } else {
        host.rsplit_once(':').filter(|(h, _)| !h.contains(':')).unwrap_or((host, ""))
    };
    if name.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{raw:?}: the address is not of the form host:port"));
    }
    Ok(format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_reference_vectors() {
        let m = parse_initial_cluster("s1=http://127.0.0.1:24480", "tok-single").unwrap();
        assert_eq!(m[0].id, 0xc340e2006ae8e270);
        assert_eq!(cluster_id(&m), 0x482a263d31c02ea0);
    }

    #[test]
    fn more_members_than_a_restore_can_write_are_refused_at_parse_time() {
        let cluster =
            |n: usize| (0..n).map(|i| format!("m{i}=http://10.0.{}.{}:2380", i / 250, i % 250)).collect::<Vec<_>>();
        assert_eq!(parse_initial_cluster(&cluster(MAX_MEMBERS).join(","), "t").unwrap().len(), MAX_MEMBERS);
        let err = parse_initial_cluster(&cluster(5001).join(","), "t").unwrap_err();
        assert_eq!(err, "5001 members given, at most 1000 are possible");
    }

    #[test]
    fn several_urls_per_member_are_sorted_before_hashing() {
        let a = parse_initial_cluster("a=https://127.0.0.1:24490,a=http://127.0.0.1:24489", "t").unwrap();
        let b = parse_initial_cluster("a=http://127.0.0.1:24489,a=https://127.0.0.1:24490", "t").unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].peer_urls, ["http://127.0.0.1:24489", "https://127.0.0.1:24490"]);
        assert_eq!(a[0].id, member_id(&["http://127.0.0.1:24489".into(), "https://127.0.0.1:24490".into()], "t"));
    }

    #[test]
    fn members_come_sorted_by_id() {
        let m = parse_initial_cluster(
            "m1=http://127.0.0.1:24481,m2=http://127.0.0.1:24482,m3=http://127.0.0.1:24483",
            "tok-three",
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert!(m.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn member_json_is_gos() {
        let m =
            Member { id: 14069428135208403568, name: "s1".into(), peer_urls: vec!["http://127.0.0.1:24480".into()] };
        assert_eq!(member_json(&m), r#"{"id":14069428135208403568,"peerURLs":["http://127.0.0.1:24480"],"name":"s1"}"#);
        let odd = Member { id: 1, name: "a<b>&\"c\"\n\u{1}".into(), peer_urls: vec![] };
        assert_eq!(member_json(&odd), r#"{"id":1,"peerURLs":[],"name":"a\u003cb\u003e\u0026\"c\"\n\u0001"}"#);
    }

    #[test]
    fn bad_input_is_a_one_line_error() {
        for (ic, want) in [
            ("", "no members"),
            ("s1", "not name=url"),
            ("=http://127.0.0.1:1", "empty member name"),
            ("s1=ftp://127.0.0.1:1", "scheme must be"),
            ("s1=127.0.0.1:1", "not a URL"),
            ("s1=http://127.0.0.1", "host:port"),
            ("s1=http://127.0.0.1:x", "host:port"),
            ("s1=http://127.0.0.1:1/p", "path"),
            ("s1=http://127.0.0.1:1/", "path"),
            ("s1=http://u:pw@127.0.0.1:1", "user information"),
            ("s1=http://:1", "host:port"),
            ("s1=unix:///tmp/x.sock", "path"),
            ("s1=unixs://h", "host:port"),
            ("a=http://127.0.0.1:1,b=http://127.0.0.1:1", "more than once"),
            ("a=http://127.0.0.1:1,a=http://127.0.0.1:2,b=http://127.0.0.1:1", "more than once"),
        ] {
            let e = parse_initial_cluster(ic, "t").unwrap_err();
            assert!(e.contains(want) && !e.contains('\n'), "{ic:?}: {e}");
        }
        assert!(parse_initial_cluster("s1=http://[::1]:2380", "t").is_ok());
        assert!(parse_initial_cluster("s1=unix://sock:1", "t").is_ok());
    }

    #[test]
    fn the_local_member_must_match_its_advertised_urls() {
        let m = parse_initial_cluster("a=http://127.0.0.1:2,a=http://127.0.0.1:1,b=http://127.0.0.1:3", "t").unwrap();
        assert_eq!(local_member(&m, "a", "http://127.0.0.1:1,http://127.0.0.1:2").unwrap().name, "a");
        assert_eq!(local_member(&m, "a", "http://127.0.0.1:2, http://127.0.0.1:1").unwrap().name, "a");
        let e = local_member(&m, "c", "http://127.0.0.1:1").unwrap_err();
        assert!(e.contains("--name c") && e.contains("a, b") || e.contains("b, a"), "{e}");
        let e = local_member(&m, "b", "http://127.0.0.1:4").unwrap_err();
        assert!(e.contains("--initial-advertise-peer-urls"), "{e}");
    }
}
