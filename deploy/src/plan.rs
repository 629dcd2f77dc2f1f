//! What `deploy up` would change: the desired stack against what NATS holds, per service and
//! per field, and applying it.

use std::collections::BTreeMap;
use std::fmt;

use event_bus::model::Service;
use event_bus::{Document, Family, Key, StateStore};
use serde_json::Value as Json;

use crate::stackfile::Desired;

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Create(Box<Service>),
    /// The service, and each changed field as (path, before, after).
    Update(Box<Service>, Vec<(String, Json, Json)>),
    Delete(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub stack: String,
    pub create_stack: bool,
    pub changes: Vec<Change>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        !self.create_stack && self.changes.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "stack {}: up to date", self.stack);
        }
        writeln!(f, "stack {}{}", self.stack, if self.create_stack { ": create" } else { "" })?;
        for c in &self.changes {
            match c {
                Change::Create(s) => writeln!(f, "  + service {} (create)", s.name)?,
                Change::Delete(name) => writeln!(f, "  - service {name} (delete)")?,
                Change::Update(s, fields) => {
                    writeln!(f, "  ~ service {} (update)", s.name)?;
                    for (path, before, after) in fields {
                        writeln!(f, "      {path}: {} -> {}", short(before), short(after))?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn short(v: &Json) -> String {
    match v {
        Json::Null => "(none)".into(),
        other => other.to_string(),
    }
}

/// The changed leaves between two documents, by dotted path.
pub fn diff(before: &Json, after: &Json, path: &str, out: &mut Vec<(String, Json, Json)>) {
    match (before, after) {
        (Json::Object(a), Json::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff(a.get(k).unwrap_or(&Json::Null), b.get(k).unwrap_or(&Json::Null), &p, out);
            }
        }
        (a, b) if a != b => out.push((path.to_string(), a.clone(), b.clone())),
        _ => {}
    }
}

/// The services NATS holds for `stack` (ids `<stack>=<service>`).
pub async fn current(store: &StateStore, stack: &str) -> event_bus::Result<BTreeMap<String, Service>> {
    let prefix = format!("{stack}=");
    let mut out = BTreeMap::new();
    for key in store.keys(Some(Family::Service)).await? {
        if key.id.starts_with(&prefix) {
            if let Some(v) = store.get::<Service>(&key.id).await? {
                out.insert(v.value.name.clone(), v.value);
            }
        }
    }
    Ok(out)
}

/// Compares desired with current. As rancher-compose, `up` does not change the scale of a
/// service that exists (that is `deploy scale`'s job).
pub fn plan(desired: &Desired, stack_exists: bool, current: &BTreeMap<String, Service>) -> Plan {
    let mut changes = Vec::new();
    for svc in &desired.services {
        match current.get(&svc.name) {
            None => changes.push(Change::Create(Box::new(svc.clone()))),
            Some(old) => {
                let mut new = svc.clone();
                new.scale = old.scale;
                let mut fields = Vec::new();
                diff(
                    &serde_json::to_value(old).unwrap_or_default(),
                    &serde_json::to_value(&new).unwrap_or_default(),
                    "",
                    &mut fields,
                );
                if !fields.is_empty() {
                    changes.push(Change::Update(Box::new(new), fields));
                }
            }
        }
    }
    for name in current.keys() {
        if !desired.services.iter().any(|s| &s.name == name) {
            changes.push(Change::Delete(name.clone()));
        }
    }
    Plan { stack: desired.stack.name.clone(), create_stack: !stack_exists, changes }
}

/// Writes the plan.
pub async fn apply(store: &StateStore, desired: &Desired, plan: &Plan) -> event_bus::Result<()> {
    if plan.create_stack {
        store.put(&desired.stack).await?;
    }
    for c in &plan.changes {
        match c {
            Change::Create(s) | Change::Update(s, _) => {
                store.put(&**s).await?;
            }
            Change::Delete(name) => {
                let id = crate::compose::service_id(&plan.stack, name);
                store.delete(&Key::new(<Service as Document>::FAMILY, id)?).await?;
            }
        }
    }
    Ok(())
}
