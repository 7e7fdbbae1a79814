//! Adapters: port implementations over concrete technology.
//!
//! - [`memory_store`]: a `StateStore` in a map, for tests of the reconcile loop.
//! - [`git_store`]: the embedded `StateStore`, records on `refs/hyperloop/state` in the
//!   repository itself.

pub mod git_store;
pub mod memory_store;
