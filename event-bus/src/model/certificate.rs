use std::fmt;

use serde::{Deserialize, Serialize};

use super::Extra;

/// A TLS certificate for load balancers. Key `certificate.<uuid>`, written by `deploy`.
/// The private key is a [`PrivateKey`], whose `Debug` and `Display` never show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    pub uuid: String,
    pub name: String,
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key: stored, handed to load balancers, never served by metadata nor logged.
    pub key: PrivateKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cn: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alternative_names: Vec<String>,
    /// RFC 3339 end of validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A secret string that prints as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PrivateKey(pub String);

impl PrivateKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_key_never_prints() {
        let c = Certificate {
            uuid: "c1".into(),
            name: "example-com".into(),
            cert: "-----BEGIN CERTIFICATE-----".into(),
            key: PrivateKey("-----BEGIN PRIVATE KEY-----secret".into()),
            cn: None,
            subject_alternative_names: vec![],
            expires_at: None,
            extra: Default::default(),
        };
        let shown = format!("{c:?} {}", c.key);
        assert!(!shown.contains("secret"), "{shown}");
        assert!(serde_json::to_string(&c).unwrap().contains("secret"), "stored form keeps the key");
    }
}
