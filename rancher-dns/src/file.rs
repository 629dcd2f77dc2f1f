//! The original `answers.json` / `answers.yaml` format (per caller IP, plus `default`), for
//! standalone use without NATS. The whole file is checked before it replaces anything; an error
//! names the file, the caller key, the record and what was expected.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use hickory_proto::rr::Name;
use serde::Deserialize;

use crate::answers::{fqdn, reverse_name, Answers, Entry, View};
use crate::naming::parse_upstream;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: {path}: {message}")]
    Syntax { file: String, path: String, message: String },
    #[error("{file}: {client}: {field} {key:?}: {expected}")]
    Invalid { file: String, client: String, field: &'static str, key: String, expected: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileView {
    #[serde(default)]
    recurse: Vec<String>,
    #[serde(default)]
    search: Vec<String>,
    /// The original's debug file spells it `authorative`.
    #[serde(default, alias = "authorative")]
    authoritative: Vec<String>,
    #[serde(default)]
    a: BTreeMap<String, FileRecord<Vec<String>>>,
    #[serde(default)]
    cname: BTreeMap<String, FileRecord<String>>,
    #[serde(default)]
    ptr: BTreeMap<String, FileRecord<String>>,
    #[serde(default)]
    txt: BTreeMap<String, FileRecord<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRecord<T> {
    answer: T,
    #[serde(default)]
    ttl: Option<u32>,
}

/// Reads and checks an answers file. `.json` files are read as JSON, anything else as YAML.
pub fn load(path: &Path, ttl: u32, serial: u32) -> Result<Answers, FileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read { file: file.clone(), source })?;
    parse(&file, &text, path.extension().is_some_and(|e| e == "json"), ttl, serial)
}

pub fn parse(file: &str, text: &str, json: bool, ttl: u32, serial: u32) -> Result<Answers, FileError> {
    let syntax = |path: String, message: String| FileError::Syntax { file: file.to_string(), path, message };
    let views: BTreeMap<String, FileView> = if json {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let inner = e.inner();
            let message = format!("{inner} (line {}, column {})", inner.line(), inner.column());
            syntax(e.path().to_string(), message)
        })?
    } else {
        let de = serde_norway::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| syntax(e.path().to_string(), e.inner().to_string()))?
    };

    let mut answers = Answers { serial, ttl, ..Default::default() };
    let mut clients = crate::answers::Clients::default();
    for (key, fv) in views {
        let invalid = |field: &'static str, k: &str, expected: &str| FileError::Invalid {
            file: file.to_string(),
            client: key.clone(),
            field,
            key: k.to_string(),
            expected: expected.to_string(),
        };
        let view = build_view(&fv, &invalid)?;
        if key == "default" {
            for zone in &fv.authoritative {
                name(zone).map_err(|_| invalid("authoritative", zone, "a domain name"))?;
                answers.authoritative.push(fqdn(zone).into());
            }
            answers.default = view;
        } else {
            let ip: IpAddr = key.parse().map_err(|_| invalid("client", &key, "an IP address or `default`"))?;
            if !fv.authoritative.is_empty() {
                return Err(invalid("authoritative", &fv.authoritative[0], "only under `default`"));
            }
            clients.insert(ip, view);
        }
    }
    answers.clients = Arc::new(clients);
    Ok(answers)
}

fn name(s: &str) -> Result<Name, ()> {
    let n = fqdn(s);
    if n == "." || n.contains("..") {
        return Err(());
    }
    Name::from_ascii(&n).map_err(|_| ())
}

fn build_view(fv: &FileView, invalid: &dyn Fn(&'static str, &str, &str) -> FileError) -> Result<View, FileError> {
    let mut recurse: Vec<SocketAddr> = Vec::new();
    for r in &fv.recurse {
        recurse.push(parse_upstream(r).ok_or_else(|| invalid("recurse", r, "an IP address, optionally with :port"))?);
    }
    let mut search: Vec<Box<str>> = Vec::new();
    for s in &fv.search {
        name(s).map_err(|_| invalid("search", s, "a domain name"))?;
        search.push(fqdn(s).into());
    }
    let mut names: HashMap<Box<str>, Entry> = HashMap::new();
    for (k, rec) in &fv.a {
        name(k).map_err(|_| invalid("a", k, "a domain name"))?;
        let mut a = Vec::new();
        for ip in &rec.answer {
            a.push(ip.parse::<Ipv4Addr>().map_err(|_| invalid("a", k, &format!("IPv4 addresses, got {ip:?}")))?);
        }
        let e = names.entry(fqdn(k).into()).or_default();
        e.a = a;
        e.ttl = rec.ttl.or(e.ttl);
    }
    for (k, rec) in &fv.cname {
        name(k).map_err(|_| invalid("cname", k, "a domain name"))?;
        let target = name(&rec.answer).map_err(|_| invalid("cname", k, "a domain name as the answer"))?;
        let e = names.entry(fqdn(k).into()).or_default();
        e.cname = Some(target);
        e.ttl = rec.ttl.or(e.ttl);
    }
    for (k, rec) in &fv.ptr {
        // Keys may be dotted addresses; they mean the reverse name.
        let owner = match k.parse::<Ipv4Addr>() {
            Ok(ip) => reverse_name(ip),
            Err(_) => {
                name(k).map_err(|_| invalid("ptr", k, "an IPv4 address or a reverse name"))?;
                fqdn(k)
            }
        };
        let target = name(&rec.answer).map_err(|_| invalid("ptr", k, "a domain name as the answer"))?;
        let e = names.entry(owner.into()).or_default();
        e.ptr = Some(target);
        e.ttl = rec.ttl.or(e.ttl);
    }
    for (k, rec) in &fv.txt {
        name(k).map_err(|_| invalid("txt", k, "a domain name"))?;
        if let Some(long) = rec.answer.iter().find(|t| t.len() > 255) {
            return Err(invalid("txt", k, &format!("strings of at most 255 bytes, one has {}", long.len())));
        }
        let e = names.entry(fqdn(k).into()).or_default();
        e.txt = rec.answer.clone();
        e.ttl = rec.ttl.or(e.ttl);
    }
    Ok(View {
        search: search.into(),
        recurse: recurse.into(),
        names: names.into_iter().map(|(k, v)| (Arc::from(k), Arc::new(v))).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = r#"{ "default":  { "recurse": ["127.0.0.1:5300"], "search": ["rancher.internal"], "authoritative": ["rancher.internal"],
                "a":     { "web.app.rancher.internal.": {"answer": ["10.42.1.5","10.42.1.6"], "ttl": 60} },
                "cname": { "ext.app.rancher.internal.": {"answer": "www.example.com."} },
                "ptr":   { "10.42.1.5": {"answer": "app-web-1.rancher.internal."} },
                "txt":   { "t.": {"answer": ["some text"]} } },
  "10.42.1.9": { "recurse": ["10.0.0.2"], "search": ["app.rancher.internal","web.app.rancher.internal","rancher.internal"],
                 "a": { "mysql.rancher.internal.": {"answer": ["10.42.7.7"]} }, "cname": {} } }"#;

    #[test]
    fn reads_the_original_format() {
        let a = parse("answers.json", ORIGINAL, true, 1, 7).unwrap();
        assert_eq!(&*a.authoritative, &["rancher.internal.".into()] as &[Box<str>]);
        let web = &a.default.names["web.app.rancher.internal."];
        assert_eq!(web.a.len(), 2);
        assert_eq!(web.ttl, Some(60));
        assert!(a.default.names.contains_key("5.1.42.10.in-addr.arpa."));
        let client = a.client("10.42.1.9".parse().unwrap()).unwrap();
        assert_eq!(client.search[0].as_ref(), "app.rancher.internal.");
        assert_eq!(client.recurse[0], "10.0.0.2:53".parse().unwrap());
        // YAML reads the same file.
        assert!(parse("answers.yaml", ORIGINAL, false, 1, 7).is_ok());
    }

    #[test]
    fn errors_name_the_place() {
        let bad = r#"{"default": {"a": {"web.": {"answer": ["10.0.0.300"]}}}}"#;
        let e = parse("f.json", bad, true, 1, 1).unwrap_err().to_string();
        assert!(e.contains("f.json") && e.contains("default") && e.contains("web.") && e.contains("10.0.0.300"), "{e}");

        let e = parse("f.json", r#"{"10.0.0.x": {}}"#, true, 1, 1).unwrap_err().to_string();
        assert!(e.contains("10.0.0.x") && e.contains("IP address"), "{e}");

        let e = parse("f.json", r#"{"default": {"aa": {}}}"#, true, 1, 1).unwrap_err().to_string();
        assert!(e.contains("default") && e.contains("unknown field `aa`"), "{e}");

        let long = "x".repeat(300);
        let e =
            parse("f.json", &format!(r#"{{"default": {{"txt": {{"t.": {{"answer": ["{long}"]}}}}}}}}"#), true, 1, 1)
                .unwrap_err()
                .to_string();
        assert!(e.contains("255"), "{e}");

        let e = parse("f.yaml", "default:\n  a: [1, 2\n", false, 1, 1).unwrap_err().to_string();
        assert!(e.contains("f.yaml") && e.contains("line"), "{e}");
    }
}
