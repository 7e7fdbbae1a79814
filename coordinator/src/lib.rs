//! The hyperloop coordinator: owns the reconcile cycle and drives workers.
//!
//! - [`admin`]: the operator API (`hyperloop.v1.AdminService`) behind `hyperloopctl --server`.
//! - [`cli`]: the commands behind the `hyperloop-coordinator` binary and their exit codes.
//! - [`ctl`]: the read-only commands behind `hyperloopctl` (state, tasks, specs, events).
//! - [`run`]: wires store, spec source, lander, local workers and the reconcile loop.
//! - [`reconcile`]: the reconcile loop (COLLECT / INTAKE / ADVANCE / SPAWN).
//! - [`control`]: what the loop shares with the admin API (live view, operator commands).
//! - [`dispatch`]: the registry of connected workers.
//! - [`grpc`]: `WorkerService.Join` for remote workers and the relay every worker stream
//!   (remote or in-process) goes through.
//! - [`settings`]: reads `.hyperloop.yaml` and the environment into a validated `Config`.
//! - [`compose`]: resolves the agent/process composition from the file system and remote
//!   git bases (with a local cache) through the pure resolver in `hyperloop_shared::compose`.
//! - [`init`]: scaffolds a repository for hyperloop.
//! - [`lock`]: one coordinator per repository.
//! - [`discovery`]: the endpoint record `hyperloopctl` finds a repository's coordinator by,
//!   and the check that it acts only on its own repository.
//! - [`metrics`]: Prometheus `/metrics` from the journal and the live view.
//! - [`logs`]: recent agent output per task, for `hyperloopctl logs`.
//! - [`progress`]: live progress and the final summary `run`/`watch` show a person.
//! - log lines: `hyperloop_worker::logfmt` (console `key=value` or flat JSON), shared with
//!   the worker binary.
//! - [`ports`] and [`adapters`]: the traits the loop uses and their implementations.
//! - [`tls`]: TLS for the gRPC endpoint and for `hyperloopctl --server`.
//! - [`specs`]: the specs a run works on, and those of the working tree it will not see.

pub mod adapters;
pub mod admin;
pub mod cli;
pub mod compose;
pub mod control;
pub mod ctl;
pub mod discovery;
pub mod dispatch;
pub mod forge_driver;
pub mod grpc;
pub mod init;
pub mod lock;
pub mod logs;
pub mod metrics;
pub mod ports;
pub mod progress;
pub mod reconcile;
pub mod run;
pub mod settings;
pub mod specs;
pub mod tls;
