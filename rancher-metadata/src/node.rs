//! The value type of the metadata trees: JSON's shapes, but immutable and shared.
//!
//! A 5,000-container environment shows each container three times (`containers`,
//! `services[].containers`, `stacks[].services[].containers`) and each service entry twice. As
//! `serde_json::Value`s those were three deep copies with their own copy of every key string
//! (~100 MB for the latest tree). Here lists and maps are `Arc`s, so one container object is built
//! once and referenced from every place it appears, and strings are `Arc<str>` handed out by an
//! [`Interner`] while a tree is built, so the 30-odd field names (and repeated values such as
//! states and label keys) exist once per tree. Cloning a node is a reference-count bump.

use std::collections::HashSet;
use std::sync::Arc;

use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::{Number, Value};

/// One value of a metadata tree. Maps keep their keys sorted (the original rendered sorted keys)
/// and unique.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Number(Number),
    String(Arc<str>),
    Array(Arc<[Node]>),
    Object(Arc<[(Arc<str>, Node)]>),
}

impl Node {
    /// A map from entries in any order; a key given twice keeps its last value (as inserting
    /// into a map would).
    pub fn object(mut entries: Vec<(Arc<str>, Node)>) -> Node {
        entries.reverse();
        // Stable: of equal keys the last inserted comes first, and `dedup_by` keeps the first.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        Node::Object(entries.into())
    }

    pub fn array(items: Vec<Node>) -> Node {
        Node::Array(items.into())
    }

    /// A map's value for `key` (exact match), `None` for a missing key or a non-map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Object(entries) => entries.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok().map(|i| &entries[i].1),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Node::Null)
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Node::Object(_))
    }

    pub fn is_array(&self) -> bool {
        matches!(self, Node::Array(_))
    }

    pub fn entries(&self) -> Option<&[(Arc<str>, Node)]> {
        match self {
            Node::Object(entries) => Some(entries),
            _ => None,
        }
    }

    /// A JSON value as a node, its strings shared through `interner`.
    pub fn from_value(v: &Value, interner: &mut Interner) -> Node {
        match v {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(n.clone()),
            Value::String(s) => Node::String(interner.get(s)),
            Value::Array(a) => Node::array(a.iter().map(|v| Node::from_value(v, interner)).collect()),
            Value::Object(m) => {
                Node::object(m.iter().map(|(k, v)| (interner.get(k), Node::from_value(v, interner))).collect())
            }
        }
    }
}

impl From<Value> for Node {
    fn from(v: Value) -> Node {
        Node::from_value(&v, &mut Interner::default())
    }
}

/// Serializes exactly as `serde_json::Value` does (so JSON and YAML come out byte for byte as
/// they did when the trees were `Value`s).
impl serde::Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Number(n) => n.serialize(s),
            Node::String(v) => s.serialize_str(v),
            Node::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries.iter() {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

/// Hands out one `Arc<str>` per distinct string while a tree is built; dropped afterwards (the
/// tree keeps the strings alive).
#[derive(Default)]
pub struct Interner(HashSet<Arc<str>>);

impl Interner {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(known) = self.0.get(s) {
            return known.clone();
        }
        let new: Arc<str> = Arc::from(s);
        self.0.insert(new.clone());
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serializes_like_serde_json_values() {
        let v = json!({"b": [1, -2, 1.5, null, true], "a": {"z": "x\"y", "k": {}}, "c d": []});
        let mut sorted = v.clone();
        sorted.as_object_mut().unwrap().sort_keys();
        sorted["a"].as_object_mut().unwrap().sort_keys();
        let n = Node::from(v);
        assert_eq!(serde_json::to_string(&n).unwrap(), serde_json::to_string(&sorted).unwrap());
        assert_eq!(serde_norway::to_string(&n).unwrap(), serde_norway::to_string(&sorted).unwrap());
    }

    #[test]
    fn objects_are_sorted_unique_and_share_strings() {
        let mut i = Interner::default();
        let (a, a2) = (i.get("name"), i.get("name"));
        assert!(Arc::ptr_eq(&a, &a2));
        let o = Node::object(vec![
            (i.get("uuid"), Node::Null),
            (a, Node::Bool(false)),
            (a2, Node::Bool(true)),
            (i.get("b"), Node::Null),
        ]);
        let keys: Vec<&str> = o.entries().unwrap().iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["b", "name", "uuid"]);
        assert_eq!(o.get("name"), Some(&Node::Bool(true)), "the last value given wins");
        assert_eq!(o.get("nam"), None);
    }
}
