//! `deploy`: Rancher stack files → Corral's desired state.
//!
//! - [`yaml`]: YAML with line/column on every node;
//! - [`interp`]: compose-style `$VAR` interpolation;
//! - [`catalog`]: Rancher catalogs, templates, versions and questions;
//! - [`controller`]: the controller loop: the lease, placement, writes;
//! - [`health`]: health verdicts from checker reports, and the recovery strategies;
//! - [`compose`]: docker-compose.yml + rancher-compose.yml → services;
//! - [`schedule`]: the controller's placement: units, hosts, names, addresses;
//! - [`stackfile`]: loading and checking a whole stack, all-or-nothing;
//! - [`agent`]: the host agent: Docker does what the controller assigned;
//! - [`logs`]: `deploy logs`: container output from the agents;
//! - [`local`]: `deploy local up|down`: the processes of a one-machine stack;
//! - [`apply`]: one change end to end, with the history's claim;
//! - [`history`]: every applied revision, and the per-stack claim;
//! - [`plan`]: the changes `up` makes, and applying them;
//! - [`ports`]: compose port specs, for checks, port conflicts and Docker bindings;
//! - [`ps`]: what runs, for `deploy ps`;
//! - [`upgrade`]: in-service upgrades: versions, begin, confirm, rollback;
//! - [`template`]: the Go-template subset of catalog `.tpl` files;
//! - [`problem`]: errors that point into the user's files.

pub mod agent;
pub mod apply;
pub mod catalog;
pub mod compose;
pub mod controller;
pub mod health;
pub mod history;
pub mod interp;
pub mod local;
pub mod logs;
pub mod plan;
pub mod ports;
pub mod problem;
pub mod ps;
pub mod schedule;
pub mod stackfile;
pub mod template;
pub mod upgrade;
pub mod yaml;
