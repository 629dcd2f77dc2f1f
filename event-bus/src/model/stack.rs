use serde::{Deserialize, Serialize};

use super::{is_false, Extra};

/// A stack (Rancher 1.x "environment" in the old UI wording). Key `stack.<uuid>`, written by `deploy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    pub uuid: String,
    pub name: String,
    #[serde(default)]
    pub environment_uuid: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub system: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `active`, `removing`, …
    #[serde(default = "active")]
    pub state: String,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Stack {
    /// An active stack with nothing else known yet.
    pub fn new(uuid: &str, name: &str) -> Stack {
        Stack {
            uuid: uuid.into(),
            name: name.into(),
            environment_uuid: String::new(),
            system: false,
            description: String::new(),
            state: active(),
            extra: Extra::new(),
        }
    }
}

fn active() -> String {
    "active".to_string()
}
