//! `healthcheck`: one per host. Checks the containers the deploy controller assigned to this
//! host with a private HAProxy, and reports every change of verdict over NATS. It observes; the
//! deploy controller decides (`deploy/src/health.rs`). It never restarts anything.
//!
//! - [`targets`]: which containers this host checks, and how (pure, from a state snapshot);
//! - [`render`]: the HAProxy configuration for those targets (pure);
//! - [`stats`]: HAProxy's `show stat` CSV, parsed;
//! - [`tracker`]: the verdict per container, and its transitions (pure);
//! - [`haproxy`]: the HAProxy master-worker process: validate, start, reload, ask;
//! - [`checker`]: the loop that ties them to the state cache and NATS;
//! - [`metrics`]: the `corral_healthcheck_` metrics.

pub mod checker;
pub mod haproxy;
pub mod metrics;
pub mod render;
pub mod stats;
pub mod targets;
pub mod tracker;
