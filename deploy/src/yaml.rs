//! YAML with positions: every node knows its line and column, so an error about a service's
//! `links` entry points at that entry in the user's file, not just at the file.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, SpannedEventReceiver};

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// A scalar as written; `quoted` scalars are always strings (`"1"` is not a number).
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Keys in file order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value under `key` in a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// Converts to JSON: plain scalars that look like YAML 1.2 numbers, booleans or null become
    /// those; quoted scalars stay strings.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Scalar { text, quoted: true } => serde_json::Value::String(text.clone()),
            Value::Scalar { text, quoted: false } => plain_scalar(text),
            Value::Seq(items) => serde_json::Value::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => serde_json::Value::Object(
                entries.iter().map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.to_json())).collect(),
            ),
        }
    }
}

fn plain_scalar(text: &str) -> serde_json::Value {
    match text {
        "true" | "True" | "TRUE" => return serde_json::Value::Bool(true),
        "false" | "False" | "FALSE" => return serde_json::Value::Bool(false),
        "null" | "Null" | "NULL" | "~" | "" => return serde_json::Value::Null,
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return serde_json::Value::from(i);
    }
    if text.chars().any(|c| c.is_ascii_digit()) && !text.starts_with('0') || text.starts_with("0.") {
        if let Ok(f) = text.parse::<f64>() {
            if f.is_finite() {
                return serde_json::Value::from(f);
            }
        }
    }
    serde_json::Value::String(text.to_string())
}

/// A YAML syntax error at a position.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document. An empty file is `Null`.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder =
        Builder { stack: Vec::new(), anchors: HashMap::new(), root: None, error: None, expanded: 0, documents: 0 };
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, true)
        .map_err(|e| SyntaxError { pos: pos(e.marker().line(), e.marker().col()), message: e.info().to_string() })?;
    if let Some(e) = builder.error {
        return Err(e);
    }
    Ok(builder.root.unwrap_or(Node { pos: Pos { line: 1, col: 1 }, value: Value::Null }))
}

fn pos(line: usize, col0: usize) -> Pos {
    Pos { line, col: col0 + 1 }
}

enum Open {
    Seq(Node, usize),
    /// A map, its anchor, a key waiting for its value, and maps merged in with `<<`.
    Map(Node, usize, Option<Node>, Vec<Node>),
}

struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    error: Option<SyntaxError>,
    /// Nodes copied through aliases so far: a file of nested aliases ("billion laughs") must
    /// not expand without bound.
    expanded: usize,
    documents: usize,
}

/// More alias copies than any real stack file makes.
const MAX_ALIAS_NODES: usize = 100_000;

fn size(n: &Node) -> usize {
    match &n.value {
        Value::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|(k, v)| size(k) + size(v)).sum::<usize>(),
        _ => 1,
    }
}

impl Builder {
    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq(seq, _)) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Some(Open::Map(map, _, pending, merges)) => match pending.take() {
                None => {
                    if node.as_str().is_none() && self.error.is_none() {
                        self.error = Some(SyntaxError {
                            pos: node.pos,
                            message: format!("keys must be strings, found {}", node.kind()),
                        });
                    }
                    *pending = Some(node)
                }
                Some(key) if key.as_str() == Some("<<") => {
                    // YAML merge key: applied when the map ends, for keys it does not set itself.
                    match node.value {
                        Value::Map(_) => merges.push(node),
                        Value::Seq(items) if items.iter().all(|i| matches!(i.value, Value::Map(_))) => {
                            merges.extend(items)
                        }
                        _ if self.error.is_none() => {
                            self.error = Some(SyntaxError { pos: key.pos, message: "`<<` merges maps only".into() });
                        }
                        _ => {}
                    }
                }
                Some(key) => {
                    if let Value::Map(entries) = &mut map.value {
                        if let Some(k) = key.as_str() {
                            if entries.iter().any(|(e, _)| e.as_str() == Some(k)) && self.error.is_none() {
                                self.error = Some(SyntaxError {
                                    pos: key.pos,
                                    message: format!("duplicate key {k:?} (each key may appear once in a map)"),
                                });
                            }
                        }
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        let p = pos(span.start.line(), span.start.col());
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                let value = if !quoted && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar { text: text.into_owned(), quoted }
                };
                self.push_value(Node { pos: p, value }, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Open::Seq(Node { pos: p, value: Value::Seq(vec![]) }, anchor))
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Map(Node { pos: p, value: Value::Map(vec![]) }, anchor, None, vec![]))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(open) = self.stack.pop() {
                    let (node, anchor) = match open {
                        Open::Seq(n, a) => (n, a),
                        Open::Map(mut n, a, _, merges) => {
                            if let Value::Map(entries) = &mut n.value {
                                for src in merges {
                                    if let Value::Map(more) = src.value {
                                        for (k, v) in more {
                                            if !entries.iter().any(|(e, _)| e.as_str() == k.as_str()) {
                                                entries.push((k, v));
                                            }
                                        }
                                    }
                                }
                            }
                            (n, a)
                        }
                    };
                    self.push_value(node, anchor);
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().unwrap_or(Node { pos: p, value: Value::Null });
                self.expanded += size(&node);
                if self.expanded > MAX_ALIAS_NODES {
                    if self.error.is_none() {
                        self.error = Some(SyntaxError {
                            pos: p,
                            message: format!("aliases expand to more than {MAX_ALIAS_NODES} nodes"),
                        });
                    }
                    return;
                }
                self.push_value(Node { pos: p, ..node }, 0);
            }
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 && self.error.is_none() {
                    self.error = Some(SyntaxError {
                        pos: p,
                        message: "more than one YAML document (`---`): a stack file is one document".into(),
                    });
                }
            }
            _ => {}
        }
    }
}

/// Position of every map key and list item, by path (`web.labels.io.rancher.sidekicks`,
/// `web.ports[1]`), for errors found after decoding.
pub fn index(node: &Node) -> HashMap<String, Pos> {
    fn walk(node: &Node, path: &str, out: &mut HashMap<String, Pos>) {
        match &node.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let key = k.as_str().unwrap_or_default();
                    let p = if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
                    out.insert(p.clone(), k.pos);
                    walk(v, &p, out);
                }
            }
            Value::Seq(items) => {
                for (i, v) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    out.insert(p.clone(), v.pos);
                    walk(v, &p, out);
                }
            }
            _ => {}
        }
    }
    let mut out = HashMap::new();
    walk(node, "", &mut out);
    out
}

/// The position of `path`, or of its nearest ancestor that has one.
pub fn locate(index: &HashMap<String, Pos>, path: &str) -> Pos {
    let mut p = path;
    loop {
        if let Some(pos) = index.get(p) {
            return *pos;
        }
        match p.rfind(['.', '[']) {
            Some(i) => p = &p[..i],
            None => return Pos { line: 1, col: 1 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_values() {
        let n = parse("services:\n  web:\n    image: \"nginx\"\n    ports: [80, '81']\n").unwrap();
        let web = n.get("services").unwrap().get("web").unwrap();
        let image = web.get("image").unwrap();
        assert_eq!(image.pos, Pos { line: 3, col: 12 });
        assert_eq!(image.as_str(), Some("nginx"));
        assert_eq!(web.get("ports").unwrap().to_json(), serde_json::json!([80, "81"]));
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("a: [1, 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!((e.pos, e.message.contains("duplicate")), (Pos { line: 2, col: 1 }, true));
    }

    #[test]
    fn merge_keys_and_limits() {
        let n = parse("base: &b {image: x, scale: 1}\nweb:\n  <<: *b\n  scale: 2\n").unwrap();
        assert_eq!(n.get("web").unwrap().to_json(), serde_json::json!({"scale": 2, "image": "x"}));
        let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            laughs.push_str(&format!(
                "{}: &{} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
                (b'a' + i) as char,
                (b'a' + i) as char,
                p = (b'a' + i - 1) as char
            ));
        }
        assert!(parse(&laughs).unwrap_err().message.contains("aliases expand"));
        assert!(parse("a: 1\n---\nb: 2\n").unwrap_err().message.contains("more than one YAML document"));
        assert!(parse("? [a]\n: 1\n").unwrap_err().message.contains("keys must be strings"));
    }

    #[test]
    fn anchors_are_copied() {
        let n = parse("x: &d {a: 1}\ny: *d\n").unwrap();
        assert_eq!(n.get("y").unwrap().to_json(), serde_json::json!({"a": 1}));
    }
}
