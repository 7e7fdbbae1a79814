//! The hyperloop coordinator: owns the reconcile cycle and drives workers.
//!
//! - [`cli`]: the commands behind the `hyperloop-coordinator` binary and their exit codes.
//! - [`settings`]: reads `.hyperloop.yaml` and the environment into a validated `Config`.
//! - [`compose`]: resolves the agent/process composition from the file system and remote
//!   git bases (with a local cache) through the pure resolver in `hyperloop_shared::compose`.
//! - [`ports`]: the traits adapters implement (state store, ...).
//! - [`specs`]: finds the spec files of a repository.

pub mod adapters;
pub mod cli;
pub mod compose;
pub mod lock;
pub mod ports;
pub mod settings;
pub mod specs;
