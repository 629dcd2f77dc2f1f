//! The domain model: serde types whose JSON field names are Rancher's metadata field names
//! (`primary_ip`, `health_state`, `service_index`, `create_index`, `host_uuid`, …) so that
//! `rancher-metadata` can serve them without renaming.
//!
//! Every type keeps the fields it does not know in `extra`, so a value written by a newer
//! component survives a read-modify-write by an older one.

mod certificate;
mod check;
mod container;
mod environment;
mod health_check;
mod host;
mod lb_status;
mod service;
mod stack;
mod volume;

pub use certificate::{Certificate, PrivateKey};
pub use check::{Check, Problem};
pub use container::{Container, ContainerHealth, ContainerStatus};
pub use environment::{Environment, Fqdn, Lease};
pub use health_check::{
    defaults as health_check_defaults, CheckerState, HealthReport, Strategy, HEARTBEAT_EVENT, REPORT_EVENT,
    STATE_REQUEST,
};
pub use host::Host;
pub use lb_status::LbStatus;
pub use service::{HealthCheck, LaunchConfig, LbConfig, PortRule, QuorumConfig, Service, ServiceKind};
pub use stack::Stack;
pub use volume::{Volume, VolumeSnapshot};

use std::collections::BTreeMap;

/// Docker/Rancher labels.
pub type Labels = BTreeMap<String, String>;

/// Fields a type does not know, kept verbatim.
pub type Extra = serde_json::Map<String, serde_json::Value>;

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}
