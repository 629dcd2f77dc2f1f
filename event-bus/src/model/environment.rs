use serde::{Deserialize, Serialize};

use super::Extra;

/// One environment (Rancher: project). Key `environment.<name>`, written by `event-bus init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// Environment name as used in subjects and the bucket name (`default`).
    pub name: String,
    pub uuid: String,
    /// Rancher's `region_name` (cross-environment "regions"); empty when unused.
    #[serde(default)]
    pub region_name: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The FQDN external-dns published for a service. Key `fqdn.<service-uuid>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fqdn {
    pub service_uuid: String,
    pub fqdn: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A singleton's lease. Key `lease.<role>`; taken with create-if-absent, renewed and taken over
/// with compare-and-set, so it is the one family with several writers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The role the lease guards (`deploy-controller`, `external-dns`, …); equals the key id.
    pub role: String,
    /// Who holds it (host name + process id, or anything unique).
    pub holder: String,
    /// Unix time in milliseconds after which another process may take the lease.
    pub expires_at_ms: u64,
    #[serde(flatten)]
    pub extra: Extra,
}
