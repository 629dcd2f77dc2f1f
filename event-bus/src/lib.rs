//! `event-bus`: the contract every Corral component stands on.
//!
//! - [`model`]: hosts, stacks, services, containers… with Rancher's JSON field names;
//! - [`keys`]: the `<family>.<id>` key families, who writes each, and the value codec;
//! - [`bus`]: connecting to NATS (auth, TLS, reconnect with backoff) and the names of an environment;
//! - [`store`]: the typed JetStream KV bucket of an environment and its version;
//! - [`cache`]: the watch-driven, indexed, in-memory snapshot readers use;
//! - [`events`]: the Cattle-style event envelope, publish/subscribe/request-reply, replay;
//! - [`trace`]: W3C trace context across NATS;
//! - [`runtime`]: flags, telemetry, admin server and shutdown shared by every binary;
//! - [`testkit`] (feature `testkit`): real nats-servers for tests, and fixtures;
//! - [`cli`]: the `event-bus` command.

pub mod bus;
pub mod cache;
pub mod cli;
pub mod error;
pub mod events;
pub mod keys;
pub mod model;
pub mod runtime;
pub mod store;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod trace;

pub use bus::{Bus, NatsOptions};
pub use cache::{Snapshot, Stamp, StateCache};
pub use error::{Error, Result};
pub use events::{Event, Events, Received};
pub use keys::{Document, Family, Key, Record};
pub use store::{provision, Change, Provision, StateStore, Versioned};
