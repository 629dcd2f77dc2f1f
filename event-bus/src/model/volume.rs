use serde::{Deserialize, Serialize};

use super::{Extra, Labels};

/// A volume managed by convoy-nfs. Key `volume.<uuid>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub uuid: String,
    pub name: String,
    #[serde(default)]
    pub driver: String,
    /// Host it is attached on, when attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_uuid: Option<String>,
    #[serde(default)]
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<VolumeSnapshot>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSnapshot {
    pub name: String,
    /// RFC 3339 time of creation.
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}
