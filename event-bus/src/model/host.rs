use serde::{Deserialize, Serialize};

use super::{Extra, Labels};

/// A host running a deploy agent. Key `host.<uuid>`, written by that agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub uuid: String,
    /// Rancher shows the host's name, or its hostname when it has none.
    pub name: String,
    #[serde(default)]
    pub hostname: String,
    /// The address other hosts reach this one at (the IPsec peer address).
    #[serde(default)]
    pub agent_ip: String,
    #[serde(default)]
    pub labels: Labels,
    /// `active`, `inactive`, …
    #[serde(default = "active")]
    pub state: String,
    #[serde(default = "active")]
    pub agent_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milli_cpu: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_storage_mb: Option<u64>,
    #[serde(default)]
    pub environment_uuid: String,
    /// Corral: this host's slice of the managed network, e.g. `10.42.1.0/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Corral: last heartbeat of the agent, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Host {
    /// An active host with nothing else known yet.
    pub fn new(uuid: &str, name: &str, agent_ip: &str) -> Host {
        Host {
            uuid: uuid.into(),
            name: name.into(),
            hostname: name.into(),
            agent_ip: agent_ip.into(),
            labels: Labels::new(),
            state: active(),
            agent_state: active(),
            memory: None,
            milli_cpu: None,
            local_storage_mb: None,
            environment_uuid: String::new(),
            subnet: None,
            heartbeat_ms: None,
            extra: Extra::new(),
        }
    }
}

fn active() -> String {
    "active".to_string()
}
