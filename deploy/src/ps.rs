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
    /// A load balancer whose newest `lb_config` its lb-haproxy refused: `on <host>: <error>`, one
    /// per instance that refused it (HAProxy keeps the previous configuration meanwhile).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lb_refused: Vec<String>,
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
                lb_refused: lb_refused(snap, &svc.uuid),
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

/// What the lb-haproxy instances of a load balancer service refused. An instance the agent
/// started names its container; once that container is gone or no longer wanted running (killed
/// before it could delete its key, or stopped by an upgrade) its key is stale and not counted.
/// One without a container is lb-haproxy run by hand, and counts.
fn lb_refused(snap: &Snapshot, service_uuid: &str) -> Vec<String> {
    let current = |s: &event_bus::model::LbStatus| match &s.container_uuid {
        None => true,
        Some(c) => snap
            .container(c)
            .is_some_and(|c| c.service_uuid.as_deref() == Some(service_uuid) && c.desired_state == "running"),
    };
    let mut out: Vec<String> = snap
        .lb_statuses()
        .filter(|s| s.service_uuid == service_uuid && current(s))
        .filter_map(|s| {
            let why = s.refused.as_ref()?;
            let host = s.host_uuid.as_deref().map(|h| snap.host(h).map(|h| h.name.clone()).unwrap_or(h.to_string()));
            Some(format!("on {}: {why}", host.unwrap_or_else(|| s.instance.clone())))
        })
        .collect();
    out.sort();
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
            && r.lb_refused.is_empty()
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
        for why in &r.lb_refused {
            out.push_str(&format!("  load balancer configuration refused {why}\n"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use event_bus::keys::Record;
    use event_bus::model::{LbStatus, ServiceKind};
    use event_bus::testkit::fixtures;

    fn refusal(instance: &str, container: Option<&str>, service: &str, why: Option<&str>) -> Record {
        Record::LbStatus(LbStatus {
            instance: instance.into(),
            service_uuid: service.into(),
            host_uuid: Some("h1".into()),
            container_uuid: container.map(String::from),
            serving: true,
            refused: why.map(String::from),
            since_ms: 1,
            extra: Default::default(),
        })
    }

    #[test]
    fn a_refused_load_balancer_configuration_shows_under_its_service() {
        let mut lb = fixtures::service("lb", "st", "lb");
        lb.kind = ServiceKind::LoadBalancer;
        let mut old = fixtures::container("c0", "demo-lb-0", "lb", "st", "h1", "10.42.0.3");
        old.desired_state = "stopped".into();
        let mut manual = fixtures::service("manual", "st", "manual");
        manual.kind = ServiceKind::LoadBalancer;
        let records = vec![
            Record::Host(fixtures::host("h1", "host-1", "10.0.0.1")),
            Record::Stack(fixtures::stack("st", "demo")),
            Record::Service(lb),
            Record::Service(manual),
            Record::Container(fixtures::container("c1", "demo-lb-1", "lb", "st", "h1", "10.42.0.2")),
            Record::Status(fixtures::status("c1", "h1", "running")),
            refusal("c1", Some("c1"), "lb", Some("port_rules[1] overlaps port_rules[0]")),
            // A container killed before its lb-haproxy could delete its key.
            refusal("gone", Some("gone"), "lb", Some("an old complaint")),
            // One an upgrade stopped (kept for a rollback).
            Record::Container(old),
            refusal("c0", Some("c0"), "lb", Some("an older complaint")),
            // lb-haproxy run by hand, for a service without containers.
            refusal("myhost_demo_manual", None, "manual", Some("protocol udp is not supported by HAProxy")),
        ];
        let snap = Snapshot::from_records(1, records.clone());
        let got = rows(&snap, None);
        let lb = got.iter().find(|r| r.service == "lb").unwrap();
        assert_eq!(lb.lb_refused, vec!["on host-1: port_rules[1] overlaps port_rules[0]".to_string()]);
        let manual = got.iter().find(|r| r.service == "manual").unwrap();
        assert_eq!(manual.lb_refused, vec!["on host-1: protocol udp is not supported by HAProxy".to_string()]);
        assert!(table(&got).contains("  load balancer configuration refused on host-1: port_rules[1] overlaps"));
        assert!(!settled(std::slice::from_ref(lb)), "a refused configuration is not settled");

        // Accepted again: nothing shown, settled.
        let mut records = records;
        records[6] = refusal("c1", Some("c1"), "lb", None);
        records.truncate(7);
        let snap = Snapshot::from_records(2, records);
        let got = rows(&snap, None);
        assert!(got.iter().all(|r| r.lb_refused.is_empty()));
        let lb: Vec<_> = got.into_iter().filter(|r| r.service == "lb").collect();
        assert!(settled(&lb), "{}", table(&lb));
    }
}
