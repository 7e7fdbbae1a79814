//! Git adapters: git2 for local object and ref work, the `git` CLI for remotes (credential
//! helpers and ssh config keep working) and for updating a user's working tree.

pub(crate) mod cli;
pub mod lander;
pub mod spec_source;

pub use lander::GitLander;
pub use spec_source::GitSpecSource;
