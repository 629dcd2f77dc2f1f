//! `deploy`: Rancher stack files → Corral's desired state.
//!
//! - [`yaml`]: YAML with line/column on every node;
//! - [`interp`]: compose-style `$VAR` interpolation;
//! - [`compose`]: docker-compose.yml + rancher-compose.yml → services;
//! - [`stackfile`]: loading and checking a whole stack, all-or-nothing;
//! - [`plan`]: the changes `up` makes, and applying them;
//! - [`problem`]: errors that point into the user's files.

pub mod compose;
pub mod interp;
pub mod plan;
pub mod problem;
pub mod stackfile;
pub mod yaml;
