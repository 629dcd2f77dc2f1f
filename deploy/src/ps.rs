//! `deploy ps`: what runs, from a state snapshot.

use event_bus::Snapshot;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub stack: String,
    pub service: String,
    pub kind: String,
    pub scale: Option<u32>,
    /// `io.rancher.scheduler.global`: one unit per eligible host, whatever `scale` says.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub global: bool,
    pub state: String,
    /// Why the controller could not place (all of) it, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unplaceable: Option<String>,
    pub containers: Vec<ContainerRow>,
}

#[derive(Debug, Serialize)]
pub struct ContainerRow {
    pub name: String,
    pub host: String,
    pub ip: String,
    pub state: String,
    pub health: String,
    /// `running`, or `stopped` for an old container an upgrade stopped.
    pub desired_state: String,
    /// What went wrong, when the agent could not run it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A sidekick's container (not counted against `scale`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sidekick: bool,
}

/// Every service (of one stack, or all), ordered by stack and name, with its containers.
pub fn rows(snap: &Snapshot, stack: Option<&str>) -> Vec<ServiceRow> {
    let mut out = Vec::new();
    let book = snap.lease(crate::controller::ROLE).map(|l| crate::controller::Book::of(l)).unwrap_or_default();
    let mut stacks: Vec<_> = snap.stacks().filter(|s| stack.is_none_or(|n| n == s.name)).collect();
    stacks.sort_by(|a, b| a.name.cmp(&b.name));
    for st in stacks {
        let mut services: Vec<_> = snap.services_in_stack(&st.uuid).collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        for svc in services {
            let mut containers: Vec<_> = snap.containers_of_service(&svc.uuid).collect();
            // As observed (crate::upgrade::done): no old container runs, the new ones run.
            let state = match svc.state.as_str() {
                "upgrading" if crate::upgrade::done(snap, svc) => "upgraded".to_string(),
                "rolling-back" if crate::upgrade::done(snap, svc) => "active".to_string(),
                other => other.to_string(),
            };
            containers.sort_by(|a, b| (a.create_index, &a.name).cmp(&(b.create_index, &b.name)));
            out.push(ServiceRow {
                stack: st.name.clone(),
                service: svc.name.clone(),
                kind: serde_json::to_value(&svc.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                scale: svc.scale,
                global: svc.launch_config.labels.get(crate::schedule::GLOBAL).is_some_and(|v| v == "true"),
                state,
                unplaceable: book.unplaceable.get(&svc.uuid).cloned(),
                containers: containers
                    .iter()
                    .map(|c| ContainerRow {
                        name: c.name.clone(),
                        host: c
                            .host_uuid
                            .as_deref()
                            .and_then(|h| snap.host(h))
                            .map(|h| h.name.clone())
                            .unwrap_or_default(),
                        ip: c.primary_ip.clone().unwrap_or_default(),
                        state: snap.status(&c.uuid).map(|s| s.state.clone()).unwrap_or_else(|| "starting".into()),
                        health: snap.health(&c.uuid).map(|h| h.health_state.clone()).unwrap_or_default(),
                        desired_state: c.desired_state.clone(),
                        error: snap.status(&c.uuid).and_then(|s| s.error.clone()),
                        sidekick: c.launch_config_name.as_deref().is_some_and(|n| n != svc.name),
                    })
                    .collect(),
            });
        }
    }
    out
}

/// Whether every service of `rows` that runs containers has all its units placed, and every
/// container runs (and is healthy, where it is health-checked).
pub fn settled(rows: &[ServiceRow]) -> bool {
    rows.iter().filter(|r| !matches!(r.kind.as_str(), "externalService" | "dnsService")).all(|r| {
        let wanted: Vec<&ContainerRow> = r.containers.iter().filter(|c| c.desired_state != "stopped").collect();
        let primaries = wanted.iter().filter(|c| !c.sidekick).count();
        let enough = if r.global { primaries >= 1 } else { primaries >= r.scale.unwrap_or(1) as usize };
        r.unplaceable.is_none()
            && enough
            && wanted
                .iter()
                .all(|c| c.state == "running" && (c.health.is_empty() || crate::health::is_healthy(&c.health)))
    })
}

pub fn table(rows: &[ServiceRow]) -> String {
    let mut out = format!("{:<20} {:<24} {:<20} {:>5} {:<10}\n", "STACK", "SERVICE", "KIND", "SCALE", "STATE");
    for r in rows {
        let scale = r.scale.map(|s| s.to_string()).unwrap_or_default();
        out.push_str(&format!("{:<20} {:<24} {:<20} {:>5} {:<10}\n", r.stack, r.service, r.kind, scale, r.state));
        if let Some(why) = &r.unplaceable {
            out.push_str(&format!("  cannot be placed: {why}\n"));
        }
        for c in &r.containers {
            let error = c.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
            out.push_str(&format!(
                "  {:<40} {:<12} {:<15} {:<10} {}{error}\n",
                c.name, c.host, c.ip, c.state, c.health
            ));
        }
    }
    out
}
