//! Strict checks for documents people write (`event-bus state put`): fields the model does not
//! know (usually a typo), addresses that do not parse, service kinds Rancher does not have.
//! Readers stay lenient — a newer writer's fields are kept, not refused — so these checks run
//! only where a person typed the document.

use super::*;

/// One problem, with the field path it is at (`launch_config.health_check.prot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub reason: String,
}

pub trait Check {
    fn check(&self, path: &str, out: &mut Vec<Problem>);
}

fn at(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn unknown(extra: &Extra, path: &str, out: &mut Vec<Problem>) {
    for k in extra.keys() {
        out.push(Problem { field: at(path, k), reason: "unknown field (a typo?)".into() });
    }
}

fn ip(value: &str, field: String, out: &mut Vec<Problem>) {
    if !value.is_empty() && value.parse::<std::net::IpAddr>().is_err() {
        out.push(Problem { field, reason: format!("{value:?} is not an IP address") });
    }
}

fn each<T: Check>(items: &[T], path: &str, field: &str, out: &mut Vec<Problem>) {
    for (i, item) in items.iter().enumerate() {
        item.check(&format!("{}[{i}]", at(path, field)), out);
    }
}

fn opt<T: Check>(item: &Option<T>, path: &str, field: &str, out: &mut Vec<Problem>) {
    if let Some(item) = item {
        item.check(&at(path, field), out);
    }
}

impl Check for Environment {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
    }
}
impl Check for Fqdn {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
    }
}
impl Check for LbStatus {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
    }
}
impl Check for Lease {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
    }
}
impl Check for Stack {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
    }
}
impl Check for Host {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
        ip(&self.agent_ip, at(path, "agent_ip"), out);
    }
}
impl Check for HealthCheck {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
        if let Some(s) = &self.strategy {
            if !["none", "recreate", "recreateOnQuorum"].contains(&s.as_str()) {
                out.push(Problem {
                    field: at(path, "strategy"),
                    reason: format!("{s:?}: expected none, recreate or recreateOnQuorum"),
                });
            }
        }
        opt(&self.recreate_on_quorum_strategy_config, path, "recreate_on_quorum_strategy_config", out);
    }
}
impl Check for QuorumConfig {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
    }
}
impl Check for LaunchConfig {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
        opt(&self.health_check, path, "health_check", out);
    }
}
impl Check for PortRule {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
    }
}
impl Check for LbConfig {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
        each(&self.port_rules, path, "port_rules", out);
    }
}
impl Check for Service {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
        if let ServiceKind::Other(k) = &self.kind {
            out.push(Problem {
                field: at(path, "kind"),
                reason: format!(
                    "{k:?}: expected service, loadBalancerService, externalService, dnsService or kubernetesService"
                ),
            });
        }
        self.launch_config.check(&at(path, "launch_config"), out);
        each(&self.secondary_launch_configs, path, "secondary_launch_configs", out);
        for (i, a) in self.external_ips.iter().enumerate() {
            ip(a, format!("{}[{i}]", at(path, "external_ips")), out);
        }
        opt(&self.lb_config, path, "lb_config", out);
    }
}
impl Check for Container {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
        if let Some(p) = &self.primary_ip {
            ip(p, at(path, "primary_ip"), out);
        }
        for (i, a) in self.ips.iter().enumerate() {
            ip(a, format!("{}[{i}]", at(path, "ips")), out);
        }
        opt(&self.health_check, path, "health_check", out);
    }
}
impl Check for ContainerStatus {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
    }
}
impl Check for ContainerHealth {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
    }
}
impl Check for VolumeSnapshot {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
    }
}
impl Check for Volume {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
        each(&self.snapshots, path, "snapshots", out);
    }
}
impl Check for Certificate {
    fn check(&self, path: &str, out: &mut Vec<Problem>) {
        unknown(&self.extra, path, out);
    }
}
