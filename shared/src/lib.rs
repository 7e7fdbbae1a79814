//! hyperloop's pure core. Nothing in this crate performs I/O: callers pass in file contents,
//! snapshots of state and the current time, and get back values and decisions.
//!
//! - [`model`]: the domain vocabulary (tasks, spec refs, verdicts, reviews, proposals).
//! - [`config`]: `.hyperloop.yaml` parsing, environment overrides and validation.
//! - [`pipeline`]: the `kind: Process` DSL, its validation and the pure step executor.
//! - [`intake`]: accepting the PM's proposals as tasks.
//! - [`gaps`]: which spec gaps are open, and when a failing spec is given up.
//! - [`gates`]: where a gate stands, the leaves of an `all` gate, and consent to command gates.
//! - [`event`]: the typed domain events the journal keeps.
//! - [`decide`]: which tasks to dispatch now, given capacity and dependencies.
//! - [`compose`]: kustomize-semantics resolution of `kind: Agent` / `kind: Process` resources.
//! - [`base`]: the default agents and process shipped inside the binaries.
//! - [`result_file`]: parsing and validating an agent's `.hyperloop/result.md`.
//! - [`project`]: a composition read as validated agent templates plus the process.
//! - [`prompt`]: assembling the prompt an agent receives.
//! - [`origin`]: the etcd key prefix derived from a repository's origin URL.
//! - [`retry`]: the one backoff policy for transient failures, kept in task state.
//! - [`state`]: the reconcile state as values and the changes a write batch holds.
//! - [`duration`]: durations in messages (`144ms`, `1.5s`, `2m 30s`).
//! - [`reconcile`]: the reconcile loop's decisions, `Core::on(input, now) -> effects`.
//! - [`specs`]: spec versions, scan results and the view of which gaps are open.
//! - [`step`]: a step's order and report between coordinator and worker, in domain form.
//! - [`landing`]: landing requests and outcomes as the core sees them.

pub mod base;
pub mod compose;
pub mod config;
pub mod decide;
pub mod duration;
pub mod event;
pub mod gaps;
pub mod gates;
pub mod intake;
pub mod landing;
pub mod model;
pub mod origin;
pub mod pipeline;
pub mod project;
pub mod prompt;
pub mod reconcile;
pub mod result_file;
pub mod retry;
pub mod specs;
pub mod state;
pub mod step;
