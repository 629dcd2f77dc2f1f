use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{is_false, Extra, Labels};

/// The kinds of service Rancher knows. Unknown kinds are kept as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceKind {
    #[default]
    #[serde(rename = "service")]
    Service,
    #[serde(rename = "loadBalancerService")]
    LoadBalancer,
    #[serde(rename = "externalService")]
    External,
    /// An alias: a name that resolves to the containers of its linked services.
    #[serde(rename = "dnsService")]
    Alias,
    #[serde(rename = "kubernetesService")]
    Kubernetes,
    #[serde(untagged)]
    Other(String),
}

/// A service's desired spec. Key `service.<uuid>`, written by `deploy`.
///
/// A sidekick is a secondary launch config of its primary service (Rancher's
/// `secondary_launch_configs`); metadata shows each launch config as its own service entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub uuid: String,
    pub name: String,
    pub stack_uuid: String,
    #[serde(default)]
    pub kind: ServiceKind,
    /// Desired number of containers; `None` for global services and kinds without containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_index: Option<u64>,
    #[serde(default)]
    pub launch_config: LaunchConfig,
    /// Sidekicks: each has a `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secondary_launch_configs: Vec<LaunchConfig>,
    /// Free JSON from `metadata:` in rancher-compose.yml.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    /// Service links: `"<stack>/<service>"` → alias (alias may be empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, String>,
    /// externalService: target IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<String>,
    /// externalService: CNAME target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_config: Option<LbConfig>,
    /// Label selector over containers (`selector_container`), Rancher's `k=v,k2=v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector_container: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub system: bool,
    /// `active`, `inactive`, `removing`, …
    #[serde(default = "active")]
    pub state: String,
    /// The service's agent token: metadata shows it only to the service's own containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Service {
    /// An active plain service of scale 1 with an empty launch config.
    pub fn new(uuid: &str, stack_uuid: &str, name: &str) -> Service {
        Service {
            uuid: uuid.into(),
            name: name.into(),
            stack_uuid: stack_uuid.into(),
            kind: ServiceKind::Service,
            scale: Some(1),
            create_index: None,
            launch_config: LaunchConfig::default(),
            secondary_launch_configs: Vec::new(),
            metadata: serde_json::Value::Null,
            links: Default::default(),
            external_ips: Vec::new(),
            hostname: None,
            fqdn: None,
            vip: None,
            lb_config: None,
            selector_container: None,
            system: false,
            state: active(),
            token: None,
            extra: Extra::new(),
        }
    }
}

fn active() -> String {
    "active".to_string()
}

/// How to start one container of a service (Rancher's launch config, docker-compose keys).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LaunchConfig {
    /// Sidekick name; absent on the primary launch config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_point: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Published ports, `[ip:]public:private[/proto]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Ports reachable on the managed network only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// `managed` (default), `host`, `none`, `container:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes_from: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milli_cpu_reservation: Option<u64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Rancher's `instanceHealthCheck`; times in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Empty: TCP connect check. Otherwise e.g. `GET /healthz HTTP/1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_line: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initializing_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinitializing_timeout: Option<u64>,
    /// `none`, `recreate` or `recreateOnQuorum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreate_on_quorum_strategy_config: Option<QuorumConfig>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuorumConfig {
    pub quorum: u32,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A load balancer's configuration (rancher-compose v2 `lb_config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LbConfig {
    #[serde(default)]
    pub port_rules: Vec<PortRule>,
    /// Certificate uuids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness_policy: Option<serde_json::Value>,
    /// Custom HAProxy text merged into the generated configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// `http` (default), `https`, `tls`, `tcp`, `sni`, `udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `svc` or `stack/svc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(flatten)]
    pub extra: Extra,
}
