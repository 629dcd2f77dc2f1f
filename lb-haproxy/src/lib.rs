//! `lb-haproxy`: Rancher's built-in load balancer, driving a real HAProxy.
//!
//! Data flows one way: state cache snapshot → [`render`] (pure: [`rules`] → [`targets`],
//! [`certs`], [`custom`] → configuration text) → [`apply`] (membership through the runtime API,
//! structure through a checked, hitless reload of [`haproxy`]).
//!
//! - [`rules`]: port rules → frontends, routes in match order, backends; every refusal;
//! - [`targets`]: the containers serving each backend (running, healthy, local);
//! - [`certs`]: certificates checked and written privately;
//! - [`custom`]: the raw `lb_config.config` snippet, split into sections;
//! - [`render`]: the configuration text;
//! - [`haproxy`]: the master-worker process and its CLI;
//! - [`apply`]: keeping HAProxy in step with the state;
//! - [`metrics`]: the `corral_lb_` metrics;
//! - [`report`]: this instance's verdict in the state (`lbstatus.<instance>`).

pub mod apply;
pub mod certs;
pub mod custom;
pub mod error;
pub mod haproxy;
pub mod metrics;
pub mod render;
pub mod report;
pub mod rules;
pub mod targets;

pub use error::{ConfigError, HaproxyError};
