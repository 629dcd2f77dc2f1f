//! What every Corral binary shares: flags, telemetry, the admin server, shutdown, allocator
//! settings.

pub mod admin;
pub mod args;
pub mod memory;
pub mod metrics;
pub mod natsd;
pub mod shutdown;
pub mod telemetry;
