//! The hyperloop coordinator: owns the reconcile cycle and drives workers.
//!
//! - [`compose`]: resolves the agent/process composition from the file system and remote
//!   git bases (with a local cache) through the pure resolver in `hyperloop_shared::compose`.

pub mod compose;
