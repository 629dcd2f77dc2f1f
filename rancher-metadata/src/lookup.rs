//! Walking a caller's tree by path segments (spec §1.3–1.4).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::node::Node;

/// What one caller sees: its own entry (if it has one) over the shared default tree. The
/// default's top-level keys fill in only what the caller's entry lacks (a shallow merge), and a
/// path missing inside the caller's entry is not retried under the default.
pub struct View<'a> {
    pub own: Option<&'a Node>,
    pub default: &'a Node,
    /// The caller's stack name: `/services/<name>` picks that stack's service first (names are
    /// unique only within a stack; the original returned whichever came first).
    pub prefer_stack: Option<&'a str>,
}

impl<'a> View<'a> {
    /// Looks `segments` up, then once more lowercased, as the original did. The answer is a
    /// handle on the tree's node (cloning a node copies no data).
    pub fn get(&self, segments: &[String]) -> Option<Node> {
        self.get_exact(segments).or_else(|| {
            let lower: Vec<String> = segments.iter().map(|s| s.to_lowercase()).collect();
            if lower == segments {
                None
            } else {
                self.get_exact(&lower)
            }
        })
    }

    fn get_exact(&self, segments: &[String]) -> Option<Node> {
        let Some((first, rest)) = segments.split_first() else {
            return Some(self.root());
        };
        let top = match self.own.and_then(|o| o.get(first.as_str())) {
            Some(v) => v,
            None => self.default.get(first.as_str())?,
        };
        if let (true, Some(stack), Some((name, below)), Node::Array(list)) =
            (first == "services", self.prefer_stack, rest.split_first(), top)
        {
            let own_stack = list.iter().find(|e| {
                e.get("name").and_then(Node::as_str) == Some(name.as_str())
                    && e.get("stack_name").and_then(Node::as_str).is_some_and(|s| s.eq_ignore_ascii_case(stack))
            });
            if let Some(svc) = own_stack {
                return walk(svc, below).cloned();
            }
        }
        walk(top, rest).cloned()
    }

    /// The top level of the caller's view: the caller's own keys over the default's.
    fn root(&self) -> Node {
        let mut m: BTreeMap<&Arc<str>, &Node> =
            self.default.entries().map(|o| o.iter().map(|(k, v)| (k, v)).collect()).unwrap_or_default();
        if let Some(own) = self.own.and_then(Node::entries) {
            m.extend(own.iter().map(|(k, v)| (k, v)));
        }
        Node::object(m.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

/// Map: exact key. List: a decimal index in range, else the first map element whose `name` or
/// `uuid` equals the segment. Scalar: nothing below.
pub fn walk<'v>(mut v: &'v Node, segments: &[String]) -> Option<&'v Node> {
    for seg in segments {
        v = match v {
            Node::Object(_) => v.get(seg.as_str())?,
            Node::Array(a) => match seg.parse::<usize>().ok().filter(|_| seg.bytes().all(|b| b.is_ascii_digit())) {
                Some(i) => a.get(i)?,
                None => a.iter().find(|e| {
                    e.get("name").and_then(Node::as_str) == Some(seg.as_str())
                        || e.get("uuid").and_then(Node::as_str) == Some(seg.as_str())
                })?,
            },
            _ => return None,
        };
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn n(v: serde_json::Value) -> Node {
        Node::from(v)
    }

    fn segs(p: &str) -> Vec<String> {
        p.split('/').filter(|s| !s.is_empty()).map(String::from).collect()
    }

    #[test]
    fn lists_by_index_name_or_uuid_and_lowercase_retry() {
        let d = n(
            json!({"services": [{"name": "web", "uuid": "u1"}, {"name": "db", "uuid": "u2"}], "self": {"host": {"name": "h"}}}),
        );
        let view = View { own: None, default: &d, prefer_stack: None };
        assert_eq!(view.get(&segs("services/1/name")).unwrap(), n(json!("db")));
        assert_eq!(view.get(&segs("services/web/uuid")).unwrap(), n(json!("u1")));
        assert_eq!(view.get(&segs("services/u2/name")).unwrap(), n(json!("db")));
        assert_eq!(view.get(&segs("Services/WEB/Uuid")).unwrap(), n(json!("u1")));
        assert!(view.get(&segs("services/2")).is_none());
        assert!(view.get(&segs("services/web/uuid/more")).is_none());
    }

    #[test]
    fn own_entry_shadows_default_without_fallback_inside() {
        let d = n(json!({"self": {"host": {"name": "h"}}, "name": "env"}));
        let own = n(json!({"self": {"container": {"name": "c"}}}));
        let view = View { own: Some(&own), default: &d, prefer_stack: None };
        assert_eq!(view.get(&segs("self/container/name")).unwrap(), n(json!("c")));
        assert!(view.get(&segs("self/host")).is_none(), "no retry under default inside an own key");
        assert_eq!(view.get(&segs("name")).unwrap(), n(json!("env")));
        assert_eq!(view.get(&[]).unwrap().entries().unwrap().len(), 2);
    }

    #[test]
    fn service_names_prefer_the_callers_stack() {
        let d = n(
            json!({"services": [{"name": "web", "stack_name": "a", "uuid": "1"}, {"name": "web", "stack_name": "b", "uuid": "2"}]}),
        );
        let view = View { own: None, default: &d, prefer_stack: Some("b") };
        assert_eq!(view.get(&segs("services/web/uuid")).unwrap(), n(json!("2")));
        assert_eq!(view.get(&segs("services/0/uuid")).unwrap(), n(json!("1")), "indexes do not move");
        let view = View { own: None, default: &d, prefer_stack: None };
        assert_eq!(view.get(&segs("services/web/uuid")).unwrap(), n(json!("1")));
    }
}
