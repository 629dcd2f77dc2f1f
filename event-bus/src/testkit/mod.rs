//! The test kit (feature `testkit`): real `nats-server` processes on loopback, one per test,
//! each with its own JetStream store, killed on drop; a 3-server cluster; fixture builders.

pub mod fixtures;
#[cfg(feature = "testkit")]
mod process;
#[cfg(feature = "testkit")]
mod server;

#[cfg(feature = "testkit")]
pub use process::Terminate;
#[cfg(feature = "testkit")]
pub use server::{find_nats_server, free_port, NatsCluster, NatsServer};
