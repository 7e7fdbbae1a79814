//! Ports: the coordinator's view of the outside world, as traits speaking the domain.
//! Adapters live under `crate::adapters`; every port has a contract test suite that all
//! its adapters pass.

pub mod dispatcher;
pub mod election;
pub mod forge;
pub mod gate;
pub mod lander;
pub mod notifier;
pub mod spec_source;
pub mod state_store;
