use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{is_false, Extra, HealthCheck, Labels};

/// Where a container runs and how it is named: key `container.<uuid>`, written by the deploy
/// controller. What it is doing lives in [`ContainerStatus`], how healthy it is in [`ContainerHealth`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub uuid: String,
    /// `<stack>-<service>-<n>`, sidekicks `<stack>-<service>-<sidekick>-<n>`.
    pub name: String,
    /// Owning service; absent for standalone containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_uuid: Option<String>,
    /// The launch config it was made from: absent for the primary, the sidekick name otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_config_name: Option<String>,
    /// Per service, never reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_index: Option<u64>,
    /// The numeric suffix of the name, as a string (Rancher's type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_index: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_mac_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milli_cpu_reservation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_from_container_uuid: Option<String>,
    /// Docker-style links: link name → target container uuid.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, String>,
    /// `running` (default), `stopped` or `removed`: what the controller wants.
    #[serde(default = "running")]
    pub desired_state: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub system: bool,
    #[serde(default)]
    pub environment_uuid: String,
    #[serde(flatten)]
    pub extra: Extra,
}

fn running() -> String {
    "running".to_string()
}

/// What the deploy agent on the container's host observes. Key `status.<container-uuid>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// The container's uuid.
    pub uuid: String,
    #[serde(default)]
    pub host_uuid: String,
    /// `starting`, `running`, `stopped`, `error`, …
    pub state: String,
    /// The Docker container id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default)]
    pub start_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The health verdict for a container. Key `health.<container-uuid>`, written by the deploy
/// controller from healthcheck reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerHealth {
    /// The container's uuid.
    pub uuid: String,
    /// `initializing`, `healthy`, `unhealthy`, `reinitializing`, `updating-healthy`, …
    pub health_state: String,
    /// Hosts that check this container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_check_hosts: Vec<String>,
    /// Last report per checking host: host uuid → `healthy` / `unhealthy`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reports: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Extra,
}
