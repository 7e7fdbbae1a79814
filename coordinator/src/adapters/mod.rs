//! Adapters: port implementations over concrete technology.
//!
//! - [`etcd_store`]: the `StateStore` in etcd, for several coordinators sharing one state.
//! - [`git`]: the spec source and the local lander, over the repository with git2 and the
//!   git CLI.
//! - [`git_store`]: the embedded `StateStore`, records on `refs/hyperloop/state` in the
//!   repository itself.
//! - [`memory_store`]: a `StateStore` in a map, for tests of the reconcile loop.

pub mod etcd_store;
pub mod git;
pub mod git_store;
pub mod memory_store;
