//! Just enough XML for S3's and STS's responses: the text of `<Tag>`
//! elements, found by name whatever their namespace declaration (servers
//! differ there).

/// The raw content of each `<tag>` element, in document order.
pub fn elements<'a>(doc: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        match after.chars().next() {
            Some('>' | '/' | ' ' | '\t' | '\r' | '\n') => {}
            _ => {
                rest = after;
                continue;
            }
        }
        let Some(gt) = after.find('>') else { break };
        if after[..gt].ends_with('/') {
            out.push("");
            rest = &after[gt + 1..];
            continue;
        }
        let content = &after[gt + 1..];
        let Some(end) = content.find(&close) else { break };
        out.push(&content[..end]);
        rest = &content[end + close.len()..];
    }
    out
}

/// The unescaped text of the first `<tag>` element.
pub fn text(doc: &str, tag: &str) -> Option<String> {
    elements(doc, tag).first().map(|s| unescape(s))
}

pub fn unescape(s: &str) -> String {
    if let Some(inner) = s.trim().strip_prefix("<![CDATA[").and_then(|s| s.strip_suffix("]]>")) {
        return inner.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(semi) = after.find(';').filter(|&n| n <= 10) else {
            out.push('&');
            rest = &after[1..];
            continue;
        };
        let entity = &after[1..semi];
        let ch = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                .and_then(|r| r.ok())
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
