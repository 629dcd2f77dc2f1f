//! Walking a caller's tree by path segments (spec §1.3–1.4).

use std::borrow::Cow;

use serde_json::{Map, Value};

/// What one caller sees: its own entry (if it has one) over the shared default tree. The
/// default's top-level keys fill in only what the caller's entry lacks (a shallow merge), and a
/// path missing inside the caller's entry is not retried under the default.
pub struct View<'a> {
    pub own: Option<&'a Value>,
    pub default: &'a Value,
    /// The caller's stack name: `/services/<name>` picks that stack's service first (names are
    /// unique only within a stack; the original returned whichever came first).
    pub prefer_stack: Option<&'a str>,
}

impl<'a> View<'a> {
    /// Looks `segments` up, then once more lowercased, as the original did.
    pub fn get(&self, segments: &[String]) -> Option<Cow<'a, Value>> {
        self.get_exact(segments).or_else(|| {
            let lower: Vec<String> = segments.iter().map(|s| s.to_lowercase()).collect();
            if lower == segments {
                None
            } else {
                self.get_exact(&lower)
            }
        })
    }

    fn get_exact(&self, segments: &[String]) -> Option<Cow<'a, Value>> {
        let Some((first, rest)) = segments.split_first() else {
            return Some(Cow::Owned(self.root()));
        };
        let top = match self.own.and_then(|o| o.get(first.as_str())) {
            Some(v) => v,
            None => self.default.get(first.as_str())?,
        };
        if let (true, Some(stack), Some((name, below)), Value::Array(list)) =
            (first == "services", self.prefer_stack, rest.split_first(), top)
        {
            let own_stack = list.iter().find(|e| {
                e.get("name").and_then(Value::as_str) == Some(name.as_str())
                    && e.get("stack_name").and_then(Value::as_str).is_some_and(|s| s.eq_ignore_ascii_case(stack))
            });
            if let Some(svc) = own_stack {
                return walk(svc, below).map(Cow::Borrowed);
            }
        }
        walk(top, rest).map(Cow::Borrowed)
    }

    fn root(&self) -> Value {
        Value::Object(self.root_entries().into_iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<Map<_, _>>())
    }

    /// The top level of the caller's view, borrowed: the caller's own keys over the default's.
    pub fn root_entries(&self) -> std::collections::BTreeMap<&'a str, &'a Value> {
        let mut m: std::collections::BTreeMap<&'a str, &'a Value> =
            self.default.as_object().map(|o| o.iter().map(|(k, v)| (k.as_str(), v)).collect()).unwrap_or_default();
        if let Some(Value::Object(own)) = self.own {
            m.extend(own.iter().map(|(k, v)| (k.as_str(), v)));
        }
        m
    }
}

/// Map: exact key. List: a decimal index in range, else the first map element whose `name` or
/// `uuid` equals the segment. Scalar: nothing below.
pub fn walk<'v>(mut v: &'v Value, segments: &[String]) -> Option<&'v Value> {
    for seg in segments {
        v = match v {
            Value::Object(m) => m.get(seg.as_str())?,
            Value::Array(a) => match seg.parse::<usize>().ok().filter(|_| seg.bytes().all(|b| b.is_ascii_digit())) {
                Some(i) => a.get(i)?,
                None => a.iter().find(|e| {
                    e.get("name").and_then(Value::as_str) == Some(seg.as_str())
                        || e.get("uuid").and_then(Value::as_str) == Some(seg.as_str())
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

    fn segs(p: &str) -> Vec<String> {
        p.split('/').filter(|s| !s.is_empty()).map(String::from).collect()
    }

    #[test]
    fn lists_by_index_name_or_uuid_and_lowercase_retry() {
        let d = json!({"services": [{"name": "web", "uuid": "u1"}, {"name": "db", "uuid": "u2"}], "self": {"host": {"name": "h"}}});
        let view = View { own: None, default: &d, prefer_stack: None };
        assert_eq!(view.get(&segs("services/1/name")).unwrap().as_ref(), &json!("db"));
        assert_eq!(view.get(&segs("services/web/uuid")).unwrap().as_ref(), &json!("u1"));
        assert_eq!(view.get(&segs("services/u2/name")).unwrap().as_ref(), &json!("db"));
        assert_eq!(view.get(&segs("Services/WEB/Uuid")).unwrap().as_ref(), &json!("u1"));
        assert!(view.get(&segs("services/2")).is_none());
        assert!(view.get(&segs("services/web/uuid/more")).is_none());
    }

    #[test]
    fn own_entry_shadows_default_without_fallback_inside() {
        let d = json!({"self": {"host": {"name": "h"}}, "name": "env"});
        let own = json!({"self": {"container": {"name": "c"}}});
        let view = View { own: Some(&own), default: &d, prefer_stack: None };
        assert_eq!(view.get(&segs("self/container/name")).unwrap().as_ref(), &json!("c"));
        assert!(view.get(&segs("self/host")).is_none(), "no retry under default inside an own key");
        assert_eq!(view.get(&segs("name")).unwrap().as_ref(), &json!("env"));
        assert_eq!(view.get(&[]).unwrap().as_object().unwrap().len(), 2);
    }

    #[test]
    fn service_names_prefer_the_callers_stack() {
        let d = json!({"services": [{"name": "web", "stack_name": "a", "uuid": "1"}, {"name": "web", "stack_name": "b", "uuid": "2"}]});
        let view = View { own: None, default: &d, prefer_stack: Some("b") };
        assert_eq!(view.get(&segs("services/web/uuid")).unwrap().as_ref(), &json!("2"));
        assert_eq!(view.get(&segs("services/0/uuid")).unwrap().as_ref(), &json!("1"), "indexes do not move");
        let view = View { own: None, default: &d, prefer_stack: None };
        assert_eq!(view.get(&segs("services/web/uuid")).unwrap().as_ref(), &json!("1"));
    }
}
