//! What a health check means when keys are omitted: Rancher's API stored no defaults (omitted
//! keys arrived as 0 and broke HAProxy, rancher/rancher#9840), so Corral reads an omitted or
//! zero value as the default Rancher's UI filled in. The checker (`healthcheck`) and the
//! decision (deploy controller) both read these, so they always agree.

use super::HealthCheck;

/// Rancher UI defaults, in milliseconds or counts.
pub mod defaults {
    pub const INTERVAL_MS: u64 = 2000;
    pub const RESPONSE_TIMEOUT_MS: u64 = 2000;
    pub const HEALTHY_THRESHOLD: u32 = 2;
    pub const UNHEALTHY_THRESHOLD: u32 = 3;
    pub const INITIALIZING_TIMEOUT_MS: u64 = 60000;
    pub const REINITIALIZING_TIMEOUT_MS: u64 = 60000;
    pub const QUORUM: u32 = 1;
}

/// What to do with an unhealthy container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Mark it, never act.
    None,
    /// Replace it (Rancher's schema default).
    Recreate,
    /// Replace it only while at least this many containers of the service are healthy.
    RecreateOnQuorum(u32),
}

fn positive<T: PartialOrd + Default + Copy>(v: Option<T>, default: T) -> T {
    v.filter(|v| *v > T::default()).unwrap_or(default)
}

impl HealthCheck {
    pub fn interval_ms(&self) -> u64 {
        positive(self.interval, defaults::INTERVAL_MS)
    }
    pub fn response_timeout_ms(&self) -> u64 {
        positive(self.response_timeout, defaults::RESPONSE_TIMEOUT_MS)
    }
    pub fn healthy_threshold_or_default(&self) -> u32 {
        positive(self.healthy_threshold, defaults::HEALTHY_THRESHOLD)
    }
    pub fn unhealthy_threshold_or_default(&self) -> u32 {
        positive(self.unhealthy_threshold, defaults::UNHEALTHY_THRESHOLD)
    }
    pub fn initializing_timeout_ms(&self) -> u64 {
        positive(self.initializing_timeout, defaults::INITIALIZING_TIMEOUT_MS)
    }
    pub fn reinitializing_timeout_ms(&self) -> u64 {
        positive(self.reinitializing_timeout, defaults::REINITIALIZING_TIMEOUT_MS)
    }
    /// The request line, when the check is HTTP (an empty line means a TCP connect check).
    pub fn http_request_line(&self) -> Option<&str> {
        self.request_line.as_deref().map(str::trim).filter(|l| !l.is_empty())
    }
    /// The strategy; an unknown name is taken as `recreate`, the schema default.
    pub fn strategy_kind(&self) -> Strategy {
        match self.strategy.as_deref() {
            Some("none") => Strategy::None,
            Some("recreateOnQuorum") => Strategy::RecreateOnQuorum(positive(
                self.recreate_on_quorum_strategy_config.as_ref().map(|q| q.quorum),
                defaults::QUORUM,
            )),
            _ => Strategy::Recreate,
        }
    }
}

/// The event a checker publishes for every change of its verdict on a container.
pub const REPORT_EVENT: &str = "healthcheck.report";
/// The event a checker publishes every few seconds to say it is alive (and how far it got).
pub const HEARTBEAT_EVENT: &str = "healthcheck.heartbeat";
/// The request a checker answers with its whole current view: `healthcheck.state.<host uuid>`.
pub const STATE_REQUEST: &str = "healthcheck.state";

/// `data` of a `healthcheck.report` event: one checker's verdict on one container.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HealthReport {
    pub container_uuid: String,
    /// The checking host.
    pub host_uuid: String,
    /// The container's start count the check was configured for (a restart starts afresh).
    #[serde(default)]
    pub start_count: u64,
    pub up: bool,
    /// HAProxy's server status (`UP`, `DOWN`) and check result (`L4OK`, `L7STS 503`, `L4TOUT`, `L4CON`).
    pub status: String,
    #[serde(default)]
    pub detail: String,
    /// This checker process's id; `seq` counts its reports from 1.
    pub boot: String,
    pub seq: u64,
}

/// `data` of a `healthcheck.heartbeat` event, and the reply to `healthcheck.state.<host>`
/// (which also carries `reports`: the current verdict on every container checked).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckerState {
    pub host_uuid: String,
    pub boot: String,
    /// The `seq` of the newest report this checker made.
    pub seq: u64,
    /// Containers configured in its HAProxy.
    pub checks: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<HealthReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omitted_and_zero_keys_get_rancher_ui_defaults() {
        let hc: HealthCheck = serde_json::from_str(r#"{"port": 80, "interval": 0}"#).unwrap();
        assert_eq!((hc.interval_ms(), hc.response_timeout_ms(), hc.healthy_threshold_or_default()), (2000, 2000, 2));
        assert_eq!((hc.unhealthy_threshold_or_default(), hc.initializing_timeout_ms()), (3, 60000));
        assert_eq!(hc.strategy_kind(), Strategy::Recreate);
        assert_eq!(hc.http_request_line(), None);
        let hc: HealthCheck = serde_json::from_str(
            r#"{"port": 80, "strategy": "recreateOnQuorum", "recreate_on_quorum_strategy_config": {"quorum": 2},
                "request_line": "GET /h HTTP/1.0"}"#,
        )
        .unwrap();
        assert_eq!(hc.strategy_kind(), Strategy::RecreateOnQuorum(2));
        assert_eq!(hc.http_request_line(), Some("GET /h HTTP/1.0"));
    }
}
