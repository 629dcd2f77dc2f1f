//! Rendering a metadata value as the original did: text (the format shell scripts and old confd
//! templates read), JSON (compact, sorted keys, no trailing newline) or YAML.

use crate::node::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Text,
    Json,
    Yaml,
}

impl Format {
    /// The original's negotiation (Go's goautoneg): each offer — text/plain, application/json,
    /// then the YAML types — gets the q-value of the Accept entry that matches it most
    /// specifically (`type/subtype` over `type/*` over `*/*`); the highest non-zero q wins, ties
    /// go to the earlier offer. No header, `*/*` or a browser's Accept give text.
    pub fn from_accept(accept: Option<&str>) -> Format {
        const OFFERS: [(&str, Format); 6] = [
            ("text/plain", Format::Text),
            ("application/json", Format::Json),
            ("application/yaml", Format::Yaml),
            ("application/x-yaml", Format::Yaml),
            ("text/yaml", Format::Yaml),
            ("text/x-yaml", Format::Yaml),
        ];
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else { return Format::Text };
        let ranges: Vec<(String, f32)> = accept
            .split(',')
            .filter_map(|part| {
                let mut it = part.split(';');
                let range = it.next()?.trim().to_ascii_lowercase();
                let q = it
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .filter_map(|q| q.trim().parse::<f32>().ok())
                    .next()
                    .unwrap_or(1.0);
                (!range.is_empty()).then_some((range, q))
            })
            .collect();
        let mut best = (Format::Text, 0.0f32);
        for (offer, format) in OFFERS {
            let (otype, _) = offer.split_once('/').expect("offers are type/subtype");
            // (specificity, q) of the most specific matching range.
            let matched = ranges
                .iter()
                .filter_map(|(r, q)| {
                    if r == offer {
                        Some((3, *q))
                    } else if r.split_once('/').is_some_and(|(t, s)| t == otype && s == "*") {
                        Some((2, *q))
                    } else if r == "*/*" {
                        Some((1, *q))
                    } else {
                        None
                    }
                })
                .max_by(|a, b| a.0.cmp(&b.0));
            if let Some((_, q)) = matched {
                if q > best.1 {
                    best = (format, q);
                }
            }
        }
        best.0
    }
}

pub fn render(v: &Node, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string(v).expect("JSON values always serialize"),
        Format::Yaml => serde_norway::to_string(v).unwrap_or_default(),
        Format::Text => text(v),
    }
}

fn text_map<'a>(entries: impl Iterator<Item = (&'a str, &'a Node)>) -> String {
    let mut lines: Vec<String> = entries
        .map(|(k, v)| {
            let slash = if v.is_object() || v.is_array() { "/" } else { "" };
            format!("{}{slash}\n", query_escape(k))
        })
        .collect();
    lines.sort();
    lines.concat()
}

/// The body of an error (404 "Not found", 404 "Invalid version", …) in the caller's format.
pub fn error_body(code: u16, message: &str, format: Format) -> String {
    match format {
        Format::Text => format!("{message}\n"),
        Format::Json => format!("{}\n", serde_json::json!({"code": code, "message": message, "type": "error"})),
        Format::Yaml => format!("code: {code}\nmessage: {message}\ntype: error\n"),
    }
}

/// Go's `%v` of a scalar, which is also what long-poll compares.
pub fn scalar_text(v: &Node) -> String {
    match v {
        Node::Null => String::new(),
        Node::String(s) => s.to_string(),
        Node::Bool(b) => b.to_string(),
        Node::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => {
                let s = format!("{f:.6}");
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            }
            _ => n.to_string(),
        },
        other => text(other),
    }
}

fn text(v: &Node) -> String {
    match v {
        Node::Object(m) => text_map(m.iter().map(|(k, v)| (k.as_ref(), v))),
        Node::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Node::Object(_) => match v.get("name").or_else(|| v.get("uuid")) {
                    Some(n) => format!("{i}={}\n", query_escape(&scalar_text(n))),
                    None => format!("{i}/\n"),
                },
                Node::Array(_) => format!("{i}/\n"),
                _ => format!("{i}\n"),
            })
            .collect(),
        scalar => scalar_text(scalar),
    }
}

/// Go's `url.QueryEscape`: unreserved bytes stay, space becomes `+`, the rest `%XX`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte; anything else after `%` is an error.
pub fn query_unescape(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) if hex.is_some_and(|h| h.bytes().all(|c| c.is_ascii_hexdigit())) => out.push(b),
                    _ => {
                        let bad: String = s[i..].chars().take(3).collect();
                        return Err(format!("invalid URL escape {bad:?}"));
                    }
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "invalid UTF-8 in URL escape".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trees in tests, written as JSON.
    macro_rules! json {
        ($($t:tt)+) => {
            Node::from(serde_json::json!($($t)+))
        };
    }

    #[test]
    fn text_rendering_follows_the_original() {
        assert_eq!(render(&json!(null), Format::Text), "");
        assert_eq!(render(&json!("10.42.1.5"), Format::Text), "10.42.1.5");
        assert_eq!(render(&json!(42), Format::Text), "42");
        assert_eq!(render(&json!(1.5), Format::Text), "1.5");
        assert_eq!(render(&json!(100.0), Format::Text), "100");
        assert_eq!(render(&json!(1.2345678), Format::Text), "1.234568");
        assert_eq!(render(&json!(true), Format::Text), "true");
        assert_eq!(
            render(&json!({"b": 1, "a": {"x": 1}, "stack/db": "x", "c d": []}), Format::Text),
            "a/\nb\nc+d/\nstack%2Fdb\n"
        );
        assert_eq!(
            render(&json!([{"name": "web"}, {"uuid": "u 1"}, {"x": 1}, [1], "s"]), Format::Text),
            "0=web\n1=u+1\n2/\n3/\n4\n"
        );
        assert_eq!(render(&json!(["10.42.0.2"]), Format::Text), "0\n");
    }

    #[test]
    fn json_is_compact_without_newline_and_errors_are_json() {
        assert_eq!(render(&json!({"a": [1, null]}), Format::Json), r#"{"a":[1,null]}"#);
        assert_eq!(render(&json!("v"), Format::Json), r#""v""#);
        let e: serde_json::Value = serde_json::from_str(&error_body(404, "Not found", Format::Json)).unwrap();
        assert_eq!(e, serde_json::json!({"code": 404, "message": "Not found", "type": "error"}));
        assert_eq!(error_body(404, "Not found", Format::Text), "Not found\n");
    }

    #[test]
    fn negotiation() {
        assert_eq!(Format::from_accept(None), Format::Text);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        assert_eq!(Format::from_accept(Some("text/html,application/xhtml+xml,*/*;q=0.8")), Format::Text);
        assert_eq!(Format::from_accept(Some("application/json")), Format::Json);
        assert_eq!(Format::from_accept(Some("application/x-yaml")), Format::Yaml);
        assert_eq!(
            Format::from_accept(Some("text/plain, application/json")),
            Format::Text,
            "ties go to the earlier offer"
        );
        assert_eq!(Format::from_accept(Some("application/json;q=0, text/plain")), Format::Text);
        assert_eq!(Format::from_accept(Some("application/json;q=0.5, text/plain;q=0.4")), Format::Json);
        assert_eq!(Format::from_accept(Some("application/*")), Format::Json);
        assert_eq!(Format::from_accept(Some("image/png")), Format::Text, "nothing acceptable: the default");
    }

    #[test]
    fn escaping_round_trips() {
        assert_eq!(query_escape("stack/db x"), "stack%2Fdb+x");
        assert_eq!(query_unescape("stack%2Fdb+x").unwrap(), "stack/db x");
        assert!(query_unescape("bad%zz").is_err());
        assert!(query_unescape("bad%").is_err());
        assert!(query_unescape("bad%4").is_err());
    }
}
