use serde::{Deserialize, Serialize};

use super::Extra;

/// What one lb-haproxy instance made of its load balancer service's configuration. Key
/// `lbstatus.<instance>`, written only by that instance: the LB container's uuid when the deploy
/// agent runs it, otherwise a name the instance was given (`--instance`). One key per instance
/// keeps the one-writer rule with several replicas, whose verdicts may differ (a port taken on
/// one host only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbStatus {
    pub instance: String,
    pub service_uuid: String,
    /// The host it runs on, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_uuid: Option<String>,
    /// The load balancer container it runs in, when the deploy agent started it (`None`: run by
    /// hand). Readers ignore the key once that container is gone or no longer wanted running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_uuid: Option<String>,
    /// HAProxy runs a configuration of this service (the newest one, unless `refused`).
    pub serving: bool,
    /// Why the newest `lb_config` was refused; HAProxy keeps the previous one meanwhile. The
    /// error names the rule, field or certificate and never contains key material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Unix time in milliseconds of the last change of `serving` / `refused`.
    pub since_ms: u64,
    #[serde(flatten)]
    pub extra: Extra,
}
