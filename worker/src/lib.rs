//! The hyperloop worker: runs agent sessions in git worktrees for a coordinator.
//!
//! The coordinator runs this library in-process for its local workers; `hyperloop-worker`
//! runs the same code on build machines. Layout:
//!
//! - [`serve`]: the worker's side of the stream: Hello/Registered, heartbeats, Assign →
//!   Accepted → Progress → StepResult (resent until ResultAck), Cancel, Drain;
//!   [`serve_links`] keeps steps running across reconnects.
//! - [`link`]: the bounded channel pair that carries the stream ([`Link`]).
//! - [`step`]: [`run_step`], one step from worktree to pushed branch, usable on its own.
//! - [`fence`]: the push fence: a step pushes only while the coordinator's grant holds.
//! - [`workspace`]: the per-worker mirror and per-step worktrees.
//! - [`env`]: the agent's environment allow-list.
//! - `runtime`: the `AgentRuntime` seam the step runner runs agents through, one file per
//!   runtime: [`claude`] (the Claude Code CLI: argv and stream-json parsing) and `command`.
//! - [`progress`]: bounded, lossy-not-blocking log streaming.
//! - `process`: agent processes in their own process group; timeout and cancel.
//! - [`shim`]: the supervisor each agent runs under: dies with its worker, takes every
//!   descendant with it, and confines the agent with Landlock.
//! - `git`: the git CLI with a controlled environment.
//!
//! Architecture Invariant: the worker never changes task state. It reports a verdict, a
//! cause and a branch head; the coordinator decides. Everything that goes wrong on the
//! worker becomes a failed `StepResult` with a [`v1::FailureCause`](hyperloop_proto::v1::FailureCause),
//! never a silent pass and never a panic.

pub mod env;
mod error;
pub mod fence;
mod git;
pub mod link;
pub mod logfmt;
pub mod options;
pub mod otel;
mod process;
pub mod progress;
mod runtime;
mod serve;
pub mod shim;
pub mod signals;
pub mod step;
pub mod workspace;

pub use error::WorkerError;
pub use fence::PushFence;
pub use git::GitError;
pub use link::Link;
pub use options::WorkerOptions;
pub use runtime::claude;
pub use serve::{serve, serve_links};
pub use step::{StepContext, StepReport, run_step};
pub use workspace::Workspace;
