//! Key families: `<family>.<id>` keys, who writes each, and the typed [`Record`] each holds.
//!
//! The codec lives here too: a stored value is the document's JSON with a `schema_version`
//! field added; decoding removes it and reports the exact field path that did not match.

use std::fmt;
use std::str::FromStr;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::*;

/// The schema version this build writes. Values with a higher version are still read (unknown
/// fields are kept), values without one are taken as version 1.
pub const SCHEMA_VERSION: u64 = 1;
const SCHEMA_FIELD: &str = "schema_version";

macro_rules! families {
    ($( $variant:ident => $prefix:literal, $ty:ident, $id_field:ident, $writer:literal; )*) => {
        /// A key family. Every family has exactly one writer (see [`Family::writer`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum Family { $( $variant, )* }

        impl Family {
            pub const ALL: &'static [Family] = &[ $( Family::$variant, )* ];

            /// The key prefix, e.g. `container`.
            pub fn prefix(self) -> &'static str {
                match self { $( Family::$variant => $prefix, )* }
            }

            /// The component that owns writes to this family.
            pub fn writer(self) -> &'static str {
                match self { $( Family::$variant => $writer, )* }
            }

            /// The document field that must equal the key's id.
            pub fn id_field(self) -> &'static str {
                match self { $( Family::$variant => stringify!($id_field), )* }
            }
        }

        /// A decoded value of any family. Records are short-lived (decoded, then moved into an
        /// `Arc` in a snapshot), so their size difference does not matter.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum Record { $( $variant($ty), )* }

        impl Record {
            /// Strict problems (unknown fields, bad addresses, unknown kinds), for documents a person wrote.
            pub fn problems(&self) -> Vec<Problem> {
                let mut out = Vec::new();
                match self { $( Record::$variant(d) => d.check("", &mut out), )* }
                out
            }

            pub fn family(&self) -> Family {
                match self { $( Record::$variant(_) => Family::$variant, )* }
            }

            /// The id the document carries (the field named by [`Family::id_field`]).
            pub fn id(&self) -> &str {
                match self { $( Record::$variant(d) => &d.$id_field, )* }
            }

            /// Deserializes straight from `de` (no intermediate JSON value: this is the cache's hot path)
            /// and takes `schema_version` out of the unknown fields.
            fn decode_from<'de, D>(family: Family, key: &str, de: D) -> Result<Record>
            where
                D: serde::Deserializer<'de, Error = serde_json::Error>,
            {
                match family { $( Family::$variant => {
                    let mut d = decode_typed::<$ty, D>(family, key, de)?;
                    check_schema(family, key, d.extra.remove(SCHEMA_FIELD))?;
                    Ok(Record::$variant(d))
                } )* }
            }
        }

        $(
            impl Document for $ty {
                const FAMILY: Family = Family::$variant;
                fn id(&self) -> &str { &self.$id_field }
                fn into_record(self) -> Record { Record::$variant(self) }
                fn from_record(r: Record) -> Option<Self> {
                    match r { Record::$variant(d) => Some(d), _ => None }
                }
            }
        )*
    };
}

families! {
    Environment => "environment", Environment, name, "event-bus init";
    Host => "host", Host, uuid, "deploy agent (its own host)";
    Stack => "stack", Stack, uuid, "deploy";
    Service => "service", Service, uuid, "deploy";
    Container => "container", Container, uuid, "deploy controller";
    Status => "status", ContainerStatus, uuid, "deploy agent (the container's host)";
    Health => "health", ContainerHealth, uuid, "deploy controller";
    Volume => "volume", Volume, uuid, "convoy-nfs";
    Certificate => "certificate", Certificate, uuid, "deploy";
    Fqdn => "fqdn", Fqdn, service_uuid, "external-dns";
    Lease => "lease", Lease, role, "any singleton (compare-and-set)";
    LbStatus => "lbstatus", LbStatus, instance, "lb-haproxy (that instance)";
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

impl FromStr for Family {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Family::ALL.iter().copied().find(|f| f.prefix() == s).ok_or_else(|| Error::InvalidKey {
            key: s.to_string(),
            reason: format!("unknown family; expected one of {}", family_list()),
        })
    }
}

fn family_list() -> String {
    Family::ALL.iter().map(|f| f.prefix()).collect::<Vec<_>>().join(", ")
}

/// A typed document stored under one key family.
pub trait Document: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const FAMILY: Family;
    fn id(&self) -> &str;
    fn into_record(self) -> Record;
    fn from_record(r: Record) -> Option<Self>;
    fn key(&self) -> Key {
        Key { family: Self::FAMILY, id: self.id().to_string() }
    }
}

/// `<family>.<id>`. Ids are 1–200 characters of `A-Z a-z 0-9 _ - =` (no dots, so the split is unambiguous).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub family: Family,
    pub id: String,
}

impl Key {
    pub fn new(family: Family, id: impl Into<String>) -> Result<Key> {
        let id = id.into();
        validate_id(&format!("{}.{id}", family.prefix()), &id)?;
        Ok(Key { family, id })
    }
}

fn validate_id(key: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'='));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidKey {
            key: key.to_string(),
            reason: "the id must be 1-200 characters of A-Z a-z 0-9 _ - =".to_string(),
        })
    }
}

impl FromStr for Key {
    type Err = Error;
    fn from_str(s: &str) -> Result<Key> {
        let (family, id) = s.split_once('.').ok_or_else(|| Error::InvalidKey {
            key: s.to_string(),
            reason: format!("expected <family>.<id> with family one of {}", family_list()),
        })?;
        let family = family.parse::<Family>().map_err(|_| Error::InvalidKey {
            key: s.to_string(),
            reason: format!("unknown family {family:?}; expected one of {}", family_list()),
        })?;
        validate_id(s, id)?;
        Ok(Key { family, id: id.to_string() })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.family.prefix(), self.id)
    }
}

/// Encodes a document for storage: its JSON plus `schema_version`.
pub fn encode<T: Serialize>(doc: &T) -> Vec<u8> {
    let mut v = serde_json::to_value(doc).expect("model types always serialize");
    if let serde_json::Value::Object(map) = &mut v {
        map.insert(SCHEMA_FIELD.to_string(), SCHEMA_VERSION.into());
    }
    serde_json::to_vec(&v).expect("a JSON value always serializes")
}

/// Decodes the stored bytes of `key` into its typed record and checks that the id in the
/// document matches the key.
pub fn decode(key: &Key, bytes: &[u8]) -> Result<Record> {
    let key_str = key.to_string();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let record = Record::decode_from(key.family, &key_str, &mut de)?;
    de.end().map_err(|e| Error::InvalidDocument {
        family: key.family,
        key: key_str.clone(),
        field: "(document)".to_string(),
        reason: format!("not JSON: {e}"),
    })?;
    check_id(key, record)
}

/// Like [`decode`], from an already parsed JSON value (the CLI reads YAML too).
pub fn decode_value(key: &Key, value: serde_json::Value) -> Result<Record> {
    let key_str = key.to_string();
    if !value.is_object() {
        return Err(Error::InvalidDocument {
            family: key.family,
            key: key_str,
            field: "(document)".to_string(),
            reason: format!("expected a JSON object, found {}", json_kind(&value)),
        });
    }
    let record = Record::decode_from(key.family, &key_str, value)?;
    check_id(key, record)
}

fn check_schema(family: Family, key: &str, v: Option<serde_json::Value>) -> Result<()> {
    match v {
        None => Ok(()),
        Some(v) if v.as_u64().is_some() => Ok(()),
        Some(v) => Err(Error::InvalidDocument {
            family,
            key: key.to_string(),
            field: SCHEMA_FIELD.to_string(),
            reason: format!("expected a positive integer, found {v}"),
        }),
    }
}

fn check_id(key: &Key, record: Record) -> Result<Record> {
    if record.id() != key.id {
        return Err(Error::IdMismatch {
            key: key.to_string(),
            field: key.family.id_field(),
            expected: key.id.clone(),
            found: record.id().to_string(),
        });
    }
    Ok(record)
}

fn decode_typed<'de, T, D>(family: Family, key: &str, de: D) -> Result<T>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let syntax = inner.is_syntax() || inner.is_eof();
        Error::InvalidDocument {
            family,
            key: key.to_string(),
            field: if path == "." || syntax { "(document)".to_string() } else { path },
            reason: if syntax { format!("not JSON: {inner}") } else { inner.to_string() },
        }
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_parse_and_print() {
        let k: Key = "container.c-1".parse().unwrap();
        assert_eq!(k.family, Family::Container);
        assert_eq!(k.id, "c-1");
        assert_eq!(k.to_string(), "container.c-1");
        for bad in ["container", "nope.x", "container.", "container.a.b", "container.a b"] {
            assert!(matches!(bad.parse::<Key>(), Err(Error::InvalidKey { .. })), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let key: Key = "container.c1".parse().unwrap();
        let stored = json!({"uuid": "c1", "name": "app-web-1", "future_field": {"x": [1, 2]}, "schema_version": 7});
        let Record::Container(c) = decode(&key, stored.to_string().as_bytes()).unwrap() else { panic!() };
        assert_eq!(c.extra["future_field"], json!({"x": [1, 2]}));
        let again: serde_json::Value = serde_json::from_slice(&encode(&c)).unwrap();
        assert_eq!(again["future_field"], json!({"x": [1, 2]}));
        assert_eq!(again["schema_version"], json!(SCHEMA_VERSION));
    }

    #[test]
    fn a_wrong_field_is_named_by_its_path() {
        let key: Key = "service.s1".parse().unwrap();
        let bad = json!({"uuid": "s1", "name": "web", "stack_uuid": "st", "launch_config": {"health_check": {"port": "http"}}});
        match decode(&key, bad.to_string().as_bytes()) {
            Err(Error::InvalidDocument { field, .. }) => assert_eq!(field, "launch_config.health_check.port"),
            other => panic!("{other:?}"),
        }
        let missing = json!({"uuid": "s1", "stack_uuid": "st"});
        let err = decode(&key, missing.to_string().as_bytes()).unwrap_err().to_string();
        assert!(err.contains("missing field `name`"), "{err}");
    }

    #[test]
    fn containers_decode_with_derive_semantics() {
        let key: Key = "container.c1".parse().unwrap();
        let Record::Container(c) = decode(&key, br#"{"uuid":"c1","name":"n","primary_ip":null,"x\u0041":1}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((c.primary_ip, c.desired_state.as_str(), c.labels.len()), (None, "running", 0), "defaults apply");
        assert_eq!(c.extra["xA"], json!(1), "escaped unknown keys are kept");
        let err = decode(&key, br#"{"uuid":"c1","name":"n","ips":"10.0.0.1"}"#).unwrap_err();
        assert!(matches!(err, Error::InvalidDocument { ref field, .. } if field == "ips"), "{err}");
        let err = decode(&key, br#"{"uuid":"c1","labels":{"a":1}}"#).unwrap_err();
        assert!(matches!(err, Error::InvalidDocument { ref field, .. } if field == "labels.a"), "{err}");
        let err = decode(&key, br#"{"uuid":"c1"}"#).unwrap_err().to_string();
        assert!(err.contains("missing field `name`"), "{err}");
        let err = decode(&key, br#"["c1"]"#).unwrap_err().to_string();
        assert!(err.contains("Container"), "{err}");
    }

    #[test]
    fn the_document_id_must_match_the_key() {
        let key: Key = "host.h1".parse().unwrap();
        let err = decode(&key, br#"{"uuid":"h2","name":"one"}"#).unwrap_err();
        assert!(matches!(err, Error::IdMismatch { ref found, .. } if found == "h2"), "{err}");
    }

    #[test]
    fn service_kinds_keep_rancher_names() {
        let v = json!(["service", "loadBalancerService", "externalService", "dnsService", "somethingNew"]);
        let kinds: Vec<ServiceKind> = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(kinds[3], ServiceKind::Alias);
        assert_eq!(kinds[4], ServiceKind::Other("somethingNew".into()));
        assert_eq!(serde_json::to_value(&kinds).unwrap(), v);
    }
}
