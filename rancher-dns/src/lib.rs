//! `rancher-dns`: Rancher's service-discovery DNS served from Corral's state.
//!
//! - [`answers`]: one generation of names, per caller;
//! - [`naming`]: Rancher's naming rules, from a state snapshot;
//! - [`file`]: the original answers-file format;
//! - [`resolve`]: local resolution with server-side search (pure);
//! - [`forward`] and [`cache`]: upstream forwarding and its TTL-honouring cache;
//! - [`server`]: the hickory-server handler, and binding UDP and TCP;
//! - [`udp`]: the UDP packet loop;
//! - [`source`]: keeping the answers current;
//! - [`metrics`]: the `corral_dns_` metrics.

pub mod answers;
pub mod cache;
pub mod file;
pub mod forward;
pub mod metrics;
pub mod naming;
pub mod resolve;
pub mod server;
pub mod source;
pub mod udp;
