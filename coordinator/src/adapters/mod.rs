//! Adapters: port implementations over concrete technology.
//!
//! - [`command_gate`]: the `GateEvaluator` that runs `command` gates in a throwaway worktree
//!   on the coordinator's host (other gate kinds wait for `hyperloopctl approve`).
//! - [`etcd_election`]: the `Election` over etcd's election API and a kept-alive lease.
//! - [`etcd_store`]: the `StateStore` in etcd, for several coordinators sharing one state.
//! - [`git`]: the spec source and the local lander, over the repository with git2 and the
//!   git CLI.
//! - [`github`]: the `Forge` of GitHub mode (pull requests) over octocrab.
//! - [`forge_gates`]: the `GateEvaluator` of GitHub mode: pull-request gates through the
//!   `Forge`, command gates through `command_gate`.
//! - [`git_store`]: the embedded `StateStore`, records on `refs/hyperloop/state` in the
//!   repository itself.
//! - [`local_election`]: the `Election` of a single host: leader at once.
//! - [`matrix`]: the `Notifier` that posts high-signal events to a Matrix room, a thread
//!   per task.
//! - [`memory_store`]: a `StateStore` in a map, for tests of the reconcile loop.
//! - [`memory_specs`], [`memory_lander`], [`memory_dispatcher`] and [`memory_gates`]: a
//!   `SpecSource`, a `Lander`, a `Dispatcher` and a `GateEvaluator` in memory, so tests drive
//!   the reconcile loop without git, streams or GitHub (test builds and the `testing` feature
//!   only).

pub mod command_gate;
pub mod etcd_election;
pub mod etcd_store;
pub mod forge_gates;
pub mod git;
pub mod git_store;
pub mod github;
pub mod local_election;
pub mod matrix;
#[cfg(any(test, feature = "testing"))]
pub mod memory_dispatcher;
#[cfg(any(test, feature = "testing"))]
pub mod memory_gates;
#[cfg(any(test, feature = "testing"))]
pub mod memory_lander;
#[cfg(any(test, feature = "testing"))]
pub mod memory_specs;
pub mod memory_store;
pub mod webhook;
