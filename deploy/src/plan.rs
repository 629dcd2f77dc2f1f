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
    /// The stack record itself goes away (`deploy rm`).
    pub delete_stack: bool,
    /// Fields of the stack record that change (`extra.volumes…`, `description`…).
    pub stack_changes: Vec<(String, Json, Json)>,
    pub changes: Vec<Change>,
    /// The stack's services once applied, in order: what the history keeps.
    pub result: Vec<Service>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        !self.create_stack && !self.delete_stack && self.stack_changes.is_empty() && self.changes.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "stack {}: up to date", self.stack);
        }
        let what = if self.create_stack {
            ": create"
        } else if self.delete_stack {
            ": remove"
        } else {
            ""
        };
        writeln!(f, "stack {}{what}", self.stack)?;
        for (path, before, after) in &self.stack_changes {
            writeln!(f, "      stack.{path}: {} -> {}", short(before), short(after))?;
        }
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

/// How `plan` treats the scale of services that exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// As rancher-compose, `up` keeps the scale of a service that exists (`deploy scale`
    /// changes it).
    Keep,
    /// Rollback and scale write the documents exactly as given.
    Exact,
}

/// Compares desired with current. Fields the stack files cannot express (`vip`, `fqdn`,
/// `token`, `create_index`, `system`, `state`, `selector_container`) are kept from the current
/// document, so `up` never erases them.
pub fn plan(
    desired: &Desired,
    current_stack: Option<&event_bus::model::Stack>,
    current: &BTreeMap<String, Service>,
    scale: Scale,
) -> Plan {
    let mut changes = Vec::new();
    let mut result = Vec::new();
    for svc in &desired.services {
        match current.get(&svc.name) {
            None => {
                changes.push(Change::Create(Box::new(svc.clone())));
                result.push(svc.clone());
            }
            Some(old) => {
                let mut new = svc.clone();
                if scale == Scale::Keep {
                    keep_unexpressed(old, &mut new);
                }
                let mut fields = Vec::new();
                diff(
                    &serde_json::to_value(old).unwrap_or_default(),
                    &serde_json::to_value(&new).unwrap_or_default(),
                    "",
                    &mut fields,
                );
                if !fields.is_empty() {
                    changes.push(Change::Update(Box::new(new.clone()), fields));
                }
                result.push(new);
            }
        }
    }
    for name in current.keys() {
        if !desired.services.iter().any(|s| &s.name == name) {
            changes.push(Change::Delete(name.clone()));
        }
    }
    let mut stack_changes = Vec::new();
    if let Some(old) = current_stack {
        diff(
            &serde_json::to_value(old).unwrap_or_default(),
            &serde_json::to_value(&desired.stack).unwrap_or_default(),
            "",
            &mut stack_changes,
        );
    }
    Plan {
        stack: desired.stack.name.clone(),
        create_stack: current_stack.is_none(),
        delete_stack: false,
        stack_changes,
        changes,
        result,
    }
}

/// What `up` keeps from a service that exists: its scale (as rancher-compose), and the fields
/// the stack files cannot express (`vip`, `fqdn`, `token`, `create_index`, `system`, `state`,
/// `selector_container`, an upgrade in progress).
pub fn keep_unexpressed(old: &Service, new: &mut Service) {
    new.scale = old.scale;
    new.vip = old.vip.clone();
    new.fqdn = old.fqdn.clone();
    new.token = old.token.clone();
    new.create_index = old.create_index;
    new.system = old.system;
    new.state = old.state.clone();
    new.selector_container = old.selector_container.clone();
    if let Some(u) = old.extra.get(crate::upgrade::UPGRADE) {
        new.extra.insert(crate::upgrade::UPGRADE.into(), u.clone());
    }
}

/// Removing a stack: every service, then the stack record.
pub fn removal(stack: &str, stack_exists: bool, current: &BTreeMap<String, Service>) -> Plan {
    Plan {
        stack: stack.to_string(),
        create_stack: false,
        delete_stack: stack_exists,
        stack_changes: Vec::new(),
        changes: current.keys().map(|n| Change::Delete(n.clone())).collect(),
        result: Vec::new(),
    }
}

/// Writes the plan: the stack first (so services never point at a missing stack), services,
/// and for a removal the stack last.
pub async fn apply(store: &StateStore, stack: Option<&event_bus::model::Stack>, plan: &Plan) -> event_bus::Result<()> {
    if let (true, Some(stack)) = (plan.create_stack || !plan.stack_changes.is_empty(), stack) {
        store.put(stack).await?;
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
    if plan.delete_stack {
        store.delete(&Key::new(Family::Stack, crate::compose::stack_id(&plan.stack))?).await?;
    }
    Ok(())
}
