//! `rancher-metadata`: Rancher's metadata HTTP API served from Corral's state.
//!
//! - [`tree`]: the metadata objects and trees of each API version, from a state snapshot;
//! - [`lookup`]: walking a caller's view by path;
//! - [`node`]: the shared, immutable values the trees are made of;
//! - [`render`]: text, JSON and YAML as the original rendered them;
//! - [`data`]: one generation of answers (from the state cache or an answers file);
//! - [`source`]: keeping the answers current;
//! - [`server`]: HTTP routing, canonical paths, caller identity, long-poll;
//! - [`local_caller`]: which container a caller on the host's network is (its socket's cgroup).

pub mod data;
pub mod local_caller;
pub mod lookup;
pub mod node;
pub mod render;
pub mod server;
pub mod source;
pub mod tree;
